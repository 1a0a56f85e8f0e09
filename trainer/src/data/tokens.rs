//! Token shards: a 32-byte header and a flat array of little-endian token ids, memory-mapped.
//!
//! ```text
//! offset 0   magic  b"WEFTTOK1"
//!        8   u32    format version (1)
//!        12  u32    bytes per token (2 = u16, 4 = u32)
//!        16  u64    vocabulary size (every id is < this)
//!        24  u64    number of tokens
//!        32  ids…
//! ```
//! [`tokenize`] writes byte-level shards (vocab 257: bytes, and 256 = end of document) from
//! any text files. [`TokenShard::open`] refuses truncated files, wrong headers or widths, and
//! ids outside the vocabulary, with the file named.

use super::{sample_rng, Source, Split, Stream};
use crate::model::TokenBatch;
use crate::{Error, Result};
use memmap2::Mmap;
use rand::Rng;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 8] = b"WEFTTOK1";
pub const HEADER: usize = 32;
/// The end-of-document id of byte-level shards.
pub const EOD: u32 = 256;

/// A memory-mapped, validated token shard.
pub struct TokenShard {
    path: PathBuf,
    map: Mmap,
    width: usize,
    pub vocab: u64,
    pub len: usize,
}

impl TokenShard {
    pub fn open(path: &Path) -> Result<TokenShard> {
        let f = std::fs::File::open(path).map_err(Error::io(path))?;
        // SAFETY: the file is opened read-only; weft never writes a shard it is reading.
        let map = unsafe { Mmap::map(&f) }.map_err(Error::io(path))?;
        let bad = |why: String| Error::data(path, why);
        if map.len() < HEADER {
            return Err(bad(format!(
                "truncated: {} bytes, the header alone is {HEADER}",
                map.len()
            )));
        }
        if &map[..8] != MAGIC {
            return Err(bad(
                "not a weft token shard (bad magic; write one with `weft data tokenize`)".into(),
            ));
        }
        let u32_at = |o: usize| u32::from_le_bytes(map[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(map[o..o + 8].try_into().unwrap());
        if u32_at(8) != 1 {
            return Err(bad(format!("unsupported format version {}", u32_at(8))));
        }
        let width = u32_at(12) as usize;
        if width != 2 && width != 4 {
            return Err(bad(format!(
                "token width must be 2 (u16) or 4 (u32) bytes, header says {width}"
            )));
        }
        let (vocab, len) = (u64_at(16), u64_at(24) as usize);
        if width == 2 && vocab > 1 << 16 {
            return Err(bad(format!("vocabulary {vocab} does not fit u16 tokens")));
        }
        let want = HEADER + len * width;
        if map.len() != want {
            return Err(bad(format!(
                "truncated or padded: header promises {len} tokens ({want} bytes), file has {} bytes",
                map.len()
            )));
        }
        let shard = TokenShard {
            path: path.to_path_buf(),
            map,
            width,
            vocab,
            len,
        };
        if let Some((i, id)) = (0..len)
            .map(|i| (i, shard.get(i)))
            .find(|&(_, id)| id as u64 >= vocab)
        {
            return Err(bad(format!(
                "token {i} is {id}, outside the vocabulary of {vocab}"
            )));
        }
        Ok(shard)
    }

    pub fn get(&self, i: usize) -> u32 {
        let o = HEADER + i * self.width;
        match self.width {
            2 => u16::from_le_bytes([self.map[o], self.map[o + 1]]) as u32,
            _ => u32::from_le_bytes(self.map[o..o + 4].try_into().unwrap()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Write a shard of `ids` with vocabulary `vocab` (u16 when it fits), fsynced.
pub fn write_shard(path: &Path, ids: &[u32], vocab: u64) -> Result<()> {
    let width: u32 = if vocab <= 1 << 16 { 2 } else { 4 };
    let mut buf = Vec::with_capacity(HEADER + ids.len() * width as usize);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&1u32.to_le_bytes());
    buf.extend_from_slice(&width.to_le_bytes());
    buf.extend_from_slice(&vocab.to_le_bytes());
    buf.extend_from_slice(&(ids.len() as u64).to_le_bytes());
    for &id in ids {
        if width == 2 {
            buf.extend_from_slice(&(id as u16).to_le_bytes());
        } else {
            buf.extend_from_slice(&id.to_le_bytes());
        }
    }
    let mut f = std::fs::File::create(path).map_err(Error::io(path))?;
    f.write_all(&buf).map_err(Error::io(path))?;
    f.sync_all().map_err(Error::io(path))
}

/// Byte-level tokenization of text files into one shard; documents end with [`EOD`].
/// Returns the number of tokens.
pub fn tokenize(inputs: &[PathBuf], out: &Path) -> Result<usize> {
    let mut ids = vec![];
    for p in inputs {
        let bytes = std::fs::read(p).map_err(Error::io(p))?;
        ids.extend(bytes.iter().map(|&b| b as u32));
        ids.push(EOD);
    }
    write_shard(out, &ids, EOD as u64 + 1)?;
    Ok(ids.len())
}

/// Sequences of `seq_len + 1` tokens from a shard: the last `val_fraction` of the shard is
/// held out; training windows start at a uniform position drawn from the sample's stream,
/// validation windows tile the held-out part in order.
pub struct Tokens {
    shard: TokenShard,
    seq_len: usize,
    seed: u64,
    split_at: usize,
}

impl Tokens {
    pub fn new(path: &Path, seq_len: usize, vocab: usize, val_fraction: f64, seed: u64) -> Result<Self> {
        let shard = TokenShard::open(path)?;
        if shard.vocab > vocab as u64 {
            return Err(Error::data(
                path,
                format!(
                    "vocabulary {} is larger than model.vocab_size = {vocab}",
                    shard.vocab
                ),
            ));
        }
        let split_at = shard.len - (shard.len as f64 * val_fraction) as usize;
        let need = seq_len + 1;
        if split_at < need || (val_fraction > 0.0 && shard.len - split_at < need) {
            return Err(Error::data(
                path,
                format!(
                    "{} tokens are too few for windows of {need} in both splits",
                    shard.len
                ),
            ));
        }
        Ok(Tokens {
            shard,
            seq_len,
            seed,
            split_at,
        })
    }

    fn window(&self, split: Split, index: u64) -> usize {
        let need = self.seq_len + 1;
        match split {
            Split::Train => {
                sample_rng(self.seed, Stream::Content, index).random_range(0..=self.split_at - need)
            }
            Split::Val => {
                let n = ((self.shard.len - self.split_at) / need).max(1) as u64;
                self.split_at + (index % n) as usize * need
            }
        }
    }
}

impl Source for Tokens {
    type Batch = TokenBatch;
    fn batch(&self, split: Split, indices: &[u64]) -> Result<TokenBatch> {
        let mut b = TokenBatch::default();
        for &i in indices {
            let s = self.window(split, i);
            b.ids
                .extend((s..s + self.seq_len).map(|j| self.shard.get(j) as i32));
            b.targets
                .extend((s + 1..s + 1 + self.seq_len).map(|j| self.shard.get(j) as i32));
        }
        Ok(b)
    }
}
