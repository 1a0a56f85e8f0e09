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
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
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
    pub fn numel(&self) -> u64 {
        self.len * self.count
    }
    /// `(start, len)` of each run, in storage order.
    pub fn runs(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        (0..self.count).map(move |i| (self.start + i * self.stride, self.len))
    }
    /// One past the last element covered.
    pub fn end(&self) -> u64 {
        if self.count == 0 {
            self.start
        } else {
            self.start + (self.count - 1) * self.stride + self.len
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
    /// exactly once.
    pub fn verify(&self, dir: &Path, file_sizes: Option<&HashMap<String, u64>>) -> Result<()> {
        let bad = |why: String| Err(invalid(dir, why));
        if self.version != VERSION {
            return bad(format!(
                "format version {} (this weft reads version {VERSION})",
                self.version
            ));
        }
        let mut tensors: HashMap<&str, &TensorMeta> = HashMap::new();
        for t in &self.tensors {
            if tensors.insert(&t.key, t).is_some() {
                return bad(format!("tensor `{}` is listed twice", t.key));
            }
        }
        let mut runs: HashMap<&str, Vec<(u64, u64)>> = HashMap::new();
        for p in &self.pieces {
            let Some(t) = tensors.get(p.tensor.as_str()) else {
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
            if e.end() > t.numel() {
                return bad(format!(
                    "piece of `{}` reaches element {} of {} ({e:?})",
                    p.tensor,
                    e.end(),
                    t.numel()
                ));
            }
            if p.bytes != e.numel() * t.dtype.size() as u64 {
                return bad(format!(
                    "piece of `{}` has {} bytes for {} {:?} elements",
                    p.tensor,
                    p.bytes,
                    e.numel(),
                    t.dtype
                ));
            }
            if let Some(sizes) = file_sizes {
                match sizes.get(&p.file) {
                    None => return bad(format!("file {} is missing", p.file)),
                    Some(&n) if p.offset + p.bytes > n => {
                        return bad(format!(
                            "piece of `{}` needs bytes {}..{} of {}, which has {n} (truncated?)",
                            p.tensor,
                            p.offset,
                            p.offset + p.bytes,
                            p.file
                        ))
                    }
                    _ => {}
                }
            }
            runs.entry(p.tensor.as_str()).or_default().extend(e.runs());
        }
        for t in &self.tensors {
            let mut r = runs.remove(t.key.as_str()).unwrap_or_default();
            r.retain(|&(_, n)| n > 0);
            r.sort_unstable();
            let mut at = 0;
            for (s, n) in r {
                if s < at {
                    return bad(format!("tensor `{}`: element {s} is stored twice", t.key));
                }
                if s > at {
                    return bad(format!("tensor `{}`: elements {at}..{s} are not stored", t.key));
                }
                at = s + n;
            }
            if at != t.numel() {
                return bad(format!(
                    "tensor `{}`: elements {at}..{} are not stored",
                    t.key,
                    t.numel()
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
}
