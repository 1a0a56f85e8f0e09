//! The manifest: what a checkpoint holds and where each byte is.

use crate::{invalid, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// The format version this crate writes and reads.
pub const VERSION: u32 = 1;

/// Element type of a stored tensor (little-endian IEEE 754).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F64,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
        }
    }
}

/// A global tensor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorMeta {
    pub key: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
}

impl TensorMeta {
    /// Elements of the tensor (saturating at `u64::MAX`; [`Manifest::verify`] refuses a shape
    /// whose product does not fit).
    pub fn numel(&self) -> u64 {
        self.checked_numel().unwrap_or(u64::MAX)
    }
    /// Elements of the tensor, or `None` if the shape's product overflows 64 bits.
    pub fn checked_numel(&self) -> Option<u64> {
        self.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
    }
}

/// Elements of a tensor's flattened global form: `count` runs of `len` elements, run `i`
/// starting at `start + i·stride`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub start: u64,
    pub len: u64,
    pub count: u64,
    pub stride: u64,
}

impl Extent {
    /// One run of `len` elements from `start`.
    pub fn run(start: u64, len: u64) -> Self {
        Extent {
            start,
            len,
            count: 1,
            stride: len,
        }
    }
    /// Elements covered (saturating; [`Manifest::verify`] refuses an extent that overflows).
    pub fn numel(&self) -> u64 {
        self.checked_numel().unwrap_or(u64::MAX)
    }
    /// Elements covered, or `None` if `len × count` overflows 64 bits.
    pub fn checked_numel(&self) -> Option<u64> {
        self.len.checked_mul(self.count)
    }
    /// `(start, len)` of each run, in storage order (positions saturate; a verified extent
    /// never reaches them).
    pub fn runs(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        (0..self.count).map(move |i| (self.start.saturating_add(i.saturating_mul(self.stride)), self.len))
    }
    /// One past the last element covered (saturating).
    pub fn end(&self) -> u64 {
        self.checked_end().unwrap_or(u64::MAX)
    }
    /// One past the last element covered, or `None` if that overflows 64 bits.
    pub fn checked_end(&self) -> Option<u64> {
        if self.count == 0 {
            Some(self.start)
        } else {
            (self.count - 1)
                .checked_mul(self.stride)?
                .checked_add(self.start)?
                .checked_add(self.len)
        }
    }
}

/// One stored piece of a tensor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    pub tensor: String,
    pub extent: Extent,
    /// A file name inside the checkpoint directory.
    pub file: String,
    /// Byte offset and length in `file` (the extent's elements, in run order).
    pub offset: u64,
    pub bytes: u64,
    pub crc32: u32,
}

/// Everything a checkpoint holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub step: u64,
    /// A hash of the run's config (model and optimizer), to refuse a mismatched resume.
    pub config_hash: String,
    /// The mesh at save, `[dp_replicate, dp_shard, cp, tp]`.
    pub mesh: Vec<usize>,
    /// The trainer's state beyond tensors (data position, optimizer step count, …).
    pub state: serde_json::Value,
    pub tensors: Vec<TensorMeta>,
    pub pieces: Vec<Piece>,
}

/// A file name that stays inside its directory.
pub(crate) fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

impl Manifest {
    pub fn tensor(&self, key: &str) -> Option<&TensorMeta> {
        self.tensors.iter().find(|t| t.key == key)
    }

    /// Check the manifest on its own (and against the sizes of its files when given): version,
    /// file names, piece sizes and ranges, and that every element of every tensor is stored
    /// exactly once. Every size is computed with checked arithmetic, and pieces may not share
    /// bytes of a file, so a manifest that passes describes no more data than its files hold
    /// (when their sizes are given) and no more than its tensors' shapes.
    pub fn verify(&self, dir: &Path, file_sizes: Option<&HashMap<String, u64>>) -> Result<()> {
        let bad = |why: String| Err(invalid(dir, why));
        if self.version != VERSION {
            return bad(format!(
                "format version {} (this weft reads version {VERSION})",
                self.version
            ));
        }
        // Each tensor's element count, checked.
        let mut tensors: HashMap<&str, (&TensorMeta, u64)> = HashMap::new();
        let mut elements = 0u64;
        for t in &self.tensors {
            let Some(n) = t
                .checked_numel()
                .filter(|n| n.checked_mul(t.dtype.size() as u64).is_some())
            else {
                return bad(format!(
                    "tensor `{}` has shape {:?}, whose size overflows 64 bits",
                    t.key, t.shape
                ));
            };
            if tensors.insert(&t.key, (t, n)).is_some() {
                return bad(format!("tensor `{}` is listed twice", t.key));
            }
            let Some(sum) = elements.checked_add(n) else {
                return bad("the tensors' sizes add up to more than 64 bits".into());
            };
            elements = sum;
        }
        let mut stored = 0u64;
        let mut by_file: HashMap<&str, Vec<(u64, u64)>> = HashMap::new();
        let mut by_tensor: HashMap<&str, Vec<&Extent>> = HashMap::new();
        for p in &self.pieces {
            let Some(&(t, numel)) = tensors.get(p.tensor.as_str()) else {
                return bad(format!("a piece refers to unknown tensor `{}`", p.tensor));
            };
            if !safe_name(&p.file) {
                return bad(format!(
                    "piece of `{}` names file {:?}, which is not a plain file name inside the \
                     checkpoint directory",
                    p.tensor, p.file
                ));
            }
            let e = &p.extent;
            if e.count > 1 && e.stride < e.len {
                return bad(format!("piece of `{}` has overlapping runs ({e:?})", p.tensor));
            }
            let (Some(end), Some(n)) = (e.checked_end(), e.checked_numel()) else {
                return bad(format!(
                    "piece of `{}` has an extent that overflows 64 bits ({e:?})",
                    p.tensor
                ));
            };
            if end > numel {
                return bad(format!(
                    "piece of `{}` reaches element {end} of {numel} ({e:?})",
                    p.tensor
                ));
            }
            // `n ≤ end ≤ numel`, whose byte size was checked above.
            if p.bytes != n * t.dtype.size() as u64 {
                return bad(format!(
                    "piece of `{}` has {} bytes for {n} {:?} elements",
                    p.tensor, p.bytes, t.dtype
                ));
            }
            let Some(byte_end) = p.offset.checked_add(p.bytes) else {
                return bad(format!(
                    "piece of `{}` has a byte range that overflows 64 bits (offset {}, {} bytes)",
                    p.tensor, p.offset, p.bytes
                ));
            };
            if let Some(sizes) = file_sizes {
                match sizes.get(&p.file) {
                    None => return bad(format!("file {} is missing", p.file)),
                    Some(&size) if byte_end > size => {
                        return bad(format!(
                            "piece of `{}` needs bytes {}..{byte_end} of {}, which has {size} \
                             (truncated?)",
                            p.tensor, p.offset, p.file
                        ))
                    }
                    _ => {}
                }
            }
            let Some(sum) = stored.checked_add(n).filter(|&s| s <= elements) else {
                return bad(format!(
                    "the pieces store more elements than the tensors have ({elements})"
                ));
            };
            stored = sum;
            if n > 0 {
                by_file.entry(&p.file).or_default().push((p.offset, byte_end));
                by_tensor.entry(&p.tensor).or_default().push(e);
            }
        }
        // No two pieces share bytes: the pieces' bytes are then no more than the files hold.
        for (file, mut ranges) in by_file {
            ranges.sort_unstable();
            for w in ranges.windows(2) {
                if w[1].0 < w[0].1 {
                    return bad(format!(
                        "pieces share bytes {}..{} of {file}",
                        w[1].0,
                        w[0].1.min(w[1].1)
                    ));
                }
            }
        }
        // Exact coverage, one tensor at a time (its runs number at most its elements).
        for t in &self.tensors {
            let numel = tensors[t.key.as_str()].1;
            let mut r: Vec<(u64, u64)> = by_tensor
                .remove(t.key.as_str())
                .unwrap_or_default()
                .into_iter()
                .flat_map(|e| e.runs())
                .filter(|&(_, n)| n > 0)
                .collect();
            r.sort_unstable();
            let mut at = 0;
            for (s, n) in r {
                if s < at {
                    return bad(format!("tensor `{}`: element {s} is stored twice", t.key));
                }
                if s > at {
                    return bad(format!("tensor `{}`: elements {at}..{s} are not stored", t.key));
                }
                // `s + n ≤ end ≤ numel`, checked per piece.
                at = s + n;
            }
            if at != numel {
                return bad(format!(
                    "tensor `{}`: elements {at}..{numel} are not stored",
                    t.key
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m() -> Manifest {
        let piece = |e: Extent, off: u64| Piece {
            tensor: "w".into(),
            extent: e,
            file: "rank_00000.bin".into(),
            offset: off,
            bytes: e.numel() * 4,
            crc32: 0,
        };
        Manifest {
            version: VERSION,
            step: 3,
            config_hash: "x".into(),
            mesh: vec![1, 1, 1, 2],
            state: serde_json::Value::Null,
            tensors: vec![TensorMeta {
                key: "w".into(),
                dtype: DType::F32,
                shape: vec![3, 4],
            }],
            // Column halves of a (3, 4) matrix: two strided pieces.
            pieces: vec![
                piece(
                    Extent {
                        start: 0,
                        len: 2,
                        count: 3,
                        stride: 4,
                    },
                    0,
                ),
                piece(
                    Extent {
                        start: 2,
                        len: 2,
                        count: 3,
                        stride: 4,
                    },
                    24,
                ),
            ],
        }
    }

    #[test]
    fn coverage_gaps_overlaps_and_escapes_are_refused() {
        let dir = Path::new("/ckpt");
        m().verify(dir, None).unwrap();
        let mut gap = m();
        gap.pieces[1].extent.count = 2;
        gap.pieces[1].bytes = 16;
        let e = gap.verify(dir, None).unwrap_err().to_string();
        assert!(e.contains("elements 10..12 are not stored"), "{e}");
        let mut twice = m();
        twice.pieces[1].extent.start = 1;
        assert!(twice
            .verify(dir, None)
            .unwrap_err()
            .to_string()
            .contains("stored twice"));
        let mut escape = m();
        escape.pieces[0].file = "../../etc/passwd".into();
        assert!(escape
            .verify(dir, None)
            .unwrap_err()
            .to_string()
            .contains("not a plain file name"));
        let sizes = HashMap::from([("rank_00000.bin".to_string(), 40)]);
        let e = m().verify(dir, Some(&sizes)).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let mut v = m();
        v.version = 99;
        assert!(v
            .verify(dir, None)
            .unwrap_err()
            .to_string()
            .contains("format version 99"));
    }

    #[test]
    fn sizes_that_overflow_64_bits_are_refused_with_an_error() {
        let dir = Path::new("/ckpt");
        let sizes = HashMap::from([("rank_00000.bin".to_string(), 48)]);
        let err = |m: Manifest| m.verify(dir, Some(&sizes)).unwrap_err().to_string();
        // Runs whose end wraps around to inside the tensor.
        let mut wrap = m();
        wrap.pieces[0].extent = Extent {
            start: 0,
            len: 2,
            count: (1 << 63) + 1,
            stride: 2,
        };
        let e = err(wrap);
        assert!(e.contains("overflows 64 bits"), "{e}");
        // `len × count` wraps to a small element count and byte size.
        let mut numel = m();
        numel.pieces[0].extent = Extent {
            start: 0,
            len: 1 << 32,
            count: 1 << 32,
            stride: 1 << 32,
        };
        numel.pieces[0].bytes = 0;
        let e = err(numel);
        assert!(e.contains("overflows 64 bits"), "{e}");
        // A shape whose product wraps.
        let mut shape = m();
        shape.tensors[0].shape = vec![1 << 32, 1 << 32, 3];
        let e = err(shape);
        assert!(e.contains("overflows 64 bits"), "{e}");
        // A byte range past the end of the address space.
        let mut offset = m();
        offset.pieces[1].offset = u64::MAX - 4;
        let e = err(offset);
        assert!(e.contains("byte range that overflows"), "{e}");
        // A huge shape covered by nothing the files hold.
        let mut huge = m();
        huge.tensors[0].shape = vec![1 << 40];
        huge.pieces[1].extent = Extent::run(6, (1 << 40) - 6);
        huge.pieces[1].bytes = ((1 << 40) - 6) * 4;
        let e = err(huge);
        assert!(e.contains("truncated"), "{e}");
        // Two pieces claiming the same bytes of a file.
        let mut shared = m();
        shared.pieces[1].offset = 8;
        let e = err(shared);
        assert!(e.contains("pieces share bytes 8..24"), "{e}");
    }
}
