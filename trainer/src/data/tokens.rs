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
//! any text files (creating the output's directory). [`TokenShard::open`] checks every header
//! field against the file's real size and the id width (checked arithmetic, before anything is
//! indexed) and every id against the vocabulary, and refuses bad files with the file named.

use super::{sample_rng, Source, Split, Stream};
use crate::model::TokenBatch;
use crate::{Error, Result};
use memmap2::Mmap;
use rand::Rng;
use std::io::Write;
use std::ops::Range;
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
    /// Map `path` and check it: every header field against the file's real size and the
    /// format's limits (the id width must hold every id below the vocabulary), then every id
    /// against the vocabulary. Errors name the file, the field and the rule.
    pub fn open(path: &Path) -> Result<TokenShard> {
        let f = std::fs::File::open(path).map_err(Error::io(path))?;
        // SAFETY: the file is opened read-only; weft never writes a shard it is reading.
        let map = unsafe { Mmap::map(&f) }.map_err(Error::io(path))?;
        let bad = |why: String| Error::data(path, why);
        let Some(header) = map.get(..HEADER) else {
            return Err(bad(format!(
                "truncated: {} bytes, the header alone is {HEADER}",
                map.len()
            )));
        };
        if &header[..8] != MAGIC {
            return Err(bad(
                "not a weft token shard (bad magic; write one with `weft data tokenize`)".into(),
            ));
        }
        let u32_at = |o: usize| u32::from_le_bytes([header[o], header[o + 1], header[o + 2], header[o + 3]]);
        let u64_at = |o: usize| u64::from_le_bytes(std::array::from_fn(|k| header[o + k]));
        if u32_at(8) != 1 {
            return Err(bad(format!("unsupported format version {}", u32_at(8))));
        }
        let width = match u32_at(12) {
            2 => 2usize,
            4 => 4,
            w => {
                return Err(bad(format!(
                    "token width must be 2 (u16) or 4 (u32) bytes, header says {w}"
                )))
            }
        };
        let vocab = u64_at(16);
        let max_vocab = 1u64 << (8 * width);
        if vocab == 0 || vocab > max_vocab {
            return Err(bad(format!(
                "header field `vocabulary size` is {vocab}; {width}-byte tokens need 1 ≤ vocabulary ≤ {max_vocab}"
            )));
        }
        let claimed = u64_at(24);
        let body = map.len() - HEADER;
        let len = usize::try_from(claimed)
            .ok()
            .filter(|&n| n.checked_mul(width) == Some(body))
            .ok_or_else(|| {
                let want = HEADER as u128 + claimed as u128 * width as u128;
                bad(format!(
                    "truncated or padded: header promises {claimed} tokens (field `number of tokens`), \
                     {want} bytes with {width}-byte tokens; the file has {} bytes",
                    map.len()
                ))
            })?;
        let shard = TokenShard {
            path: path.to_path_buf(),
            map,
            width,
            vocab,
            len,
        };
        let all = shard
            .ids(0..len)
            .ok_or_else(|| bad(format!("{len} tokens do not fit the file")))?;
        if let Some((i, id)) = all.enumerate().find(|&(_, id)| id as u64 >= vocab) {
            return Err(bad(format!(
                "token {i} is {id}, outside the vocabulary of {vocab}"
            )));
        }
        Ok(shard)
    }

    /// Id `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<u32> {
        self.ids(i..i.checked_add(1)?)?.next()
    }

    /// Ids `range`, or `None` when the range reaches past the end.
    pub fn ids(&self, range: Range<usize>) -> Option<impl Iterator<Item = u32> + '_> {
        let at = |i: usize| i.checked_mul(self.width)?.checked_add(HEADER);
        let bytes = self.map.get(at(range.start)?..at(range.end)?)?;
        let wide = self.width == 4;
        Some(bytes.chunks_exact(self.width).map(move |b| {
            if wide {
                u32::from_le_bytes([b[0], b[1], b[2], b[3]])
            } else {
                u16::from_le_bytes([b[0], b[1]]) as u32
            }
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Write a shard of `ids` with vocabulary `vocab` (u16 when it fits), fsynced; the parent
/// directory is created when missing.
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
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
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
/// validation windows tile the held-out part in order (the training part when nothing is
/// held out, `val_fraction = 0`).
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
        if shard.vocab > i32::MAX as u64 + 1 {
            return Err(Error::data(
                path,
                format!(
                    "vocabulary {} is larger than the model's i32 token ids allow ({})",
                    shard.vocab,
                    i32::MAX as u64 + 1
                ),
            ));
        }
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(Error::data(
                path,
                format!("data.val_fraction must be in [0, 1), got {val_fraction}"),
            ));
        }
        let held = ((shard.len as f64 * val_fraction) as usize).min(shard.len);
        let split_at = shard.len - held;
        let need = seq_len.saturating_add(1);
        if split_at < need || (val_fraction > 0.0 && held < need) {
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

    /// Where window `index` of `split` starts; a whole window `[start, start + seq_len + 1)`
    /// lies inside the shard (checked at [`Tokens::new`]).
    fn window(&self, split: Split, index: u64) -> usize {
        let need = self.seq_len + 1;
        match split {
            Split::Train => {
                sample_rng(self.seed, Stream::Content, index).random_range(0..=self.split_at - need)
            }
            Split::Val => {
                let held = self.shard.len - self.split_at;
                let (start, span) = if held >= need {
                    (self.split_at, held)
                } else {
                    (0, self.split_at)
                };
                let n = (span / need).max(1) as u64;
                start + (index % n) as usize * need
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
            let w: Vec<i32> = self
                .shard
                .ids(s..s + self.seq_len + 1)
                .ok_or_else(|| {
                    Error::data(
                        &self.shard.path,
                        format!("window {s}..{} reaches past the end", s + self.seq_len + 1),
                    )
                })?
                .map(|id| id as i32)
                .collect();
            b.ids.extend_from_slice(&w[..self.seq_len]);
            b.targets.extend_from_slice(&w[1..]);
        }
        Ok(b)
    }
}
