//! Opening, verifying and reading a checkpoint, on any mesh.

use crate::manifest::{safe_name, Manifest};
use crate::{invalid, io, Result};
use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A committed checkpoint whose manifest verified.
#[derive(Debug)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Checkpoint {
    /// Open `dir` and verify its manifest against its files (sizes, coverage, names).
    pub fn open(dir: &Path) -> Result<Self> {
        let mpath = dir.join("manifest.json");
        let bytes = match fs::read(&mpath) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(invalid(
                    dir,
                    "no manifest.json: the checkpoint was never committed",
                ))
            }
            Err(e) => return Err(io(&mpath)(e)),
        };
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(&mpath, format!("unreadable manifest: {e}")))?;
        let mut sizes = HashMap::new();
        for p in &manifest.pieces {
            if sizes.contains_key(&p.file) || !safe_name(&p.file) {
                continue;
            }
            if let Ok(m) = fs::metadata(dir.join(&p.file)) {
                sizes.insert(p.file.clone(), m.len());
            }
        }
        manifest.verify(dir, Some(&sizes))?;
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    fn piece_bytes(&self, i: usize, files: &mut HashMap<String, File>) -> Result<Vec<u8>> {
        let p = &self.manifest.pieces[i];
        let path = self.dir.join(&p.file);
        if !files.contains_key(&p.file) {
            files.insert(p.file.clone(), File::open(&path).map_err(io(&path))?);
        }
        let f = &files[&p.file];
        // The manifest verified against the file sizes at open; the file may have changed since.
        let size = f.metadata().map_err(io(&path))?.len();
        let end = p.offset.checked_add(p.bytes);
        let len = usize::try_from(p.bytes).ok();
        let (Some(end), Some(len)) = (end.filter(|&e| e <= size), len) else {
            return Err(invalid(
                &self.dir,
                format!(
                    "piece of `{}` needs bytes {}..+{} of {}, which has {size}",
                    p.tensor, p.offset, p.bytes, p.file
                ),
            ));
        };
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, p.offset).map_err(io(&path))?;
        if crc32fast::hash(&buf) != p.crc32 {
            return Err(invalid(
                &self.dir,
                format!(
                    "piece of `{}` in {} (bytes {}..{end}) fails its checksum",
                    p.tensor, p.file, p.offset
                ),
            ));
        }
        Ok(buf)
    }

    /// Read every piece and check its checksum.
    pub fn verify_data(&self) -> Result<u64> {
        let mut files = HashMap::new();
        let mut n = 0u64;
        for i in 0..self.manifest.pieces.len() {
            n = n.saturating_add(self.piece_bytes(i, &mut files)?.len() as u64);
        }
        Ok(n)
    }

    /// Read elements of tensor `key`: `want` lists `(global start, len)` runs of its flattened
    /// form; their bytes go to `out` back to back, in the tensor's stored dtype. Every piece
    /// touched is read whole and its checksum checked.
    pub fn read(&self, key: &str, want: &[(u64, u64)], out: &mut [u8]) -> Result<()> {
        let t = self
            .manifest
            .tensor(key)
            .ok_or_else(|| invalid(&self.dir, format!("no tensor `{key}`")))?;
        let es = t.dtype.size() as u64;
        let numel = t.numel();
        let outside = |s: u64, n: u64| {
            crate::Error::Other(format!(
                "read `{key}`: elements {s}..+{n} are outside its {numel} elements"
            ))
        };
        // Wanted runs sorted by start, with their offsets in `out`.
        let mut sorted: Vec<(u64, u64, u64)> = Vec::with_capacity(want.len());
        let mut total = 0u64;
        for &(s, n) in want {
            if s.checked_add(n).is_none_or(|e| e > numel) {
                return Err(outside(s, n));
            }
            sorted.push((s, n, total));
            // Each run lies inside the tensor, whose byte size fits (verified).
            total = total.checked_add(n).ok_or_else(|| outside(s, n))?;
        }
        if total.checked_mul(es) != Some(out.len() as u64) {
            return Err(crate::Error::Other(format!(
                "read `{key}`: {} output bytes for {total} elements",
                out.len()
            )));
        }
        sorted.sort_unstable();
        let mut files = HashMap::new();
        let mut filled = 0u64;
        for (i, p) in self.manifest.pieces.iter().enumerate() {
            if p.tensor != key {
                continue;
            }
            let mut data: Option<Vec<u8>> = None;
            let mut pos = 0u64; // element offset within the piece
            for (rs, rn) in p.extent.runs() {
                let re = rs.saturating_add(rn);
                let first = sorted.partition_point(|w| w.0 + w.1 <= rs);
                for &(ws, wn, wo) in sorted[first..].iter().take_while(|w| w.0 < re) {
                    let (lo, hi) = (ws.max(rs), (ws + wn).min(re));
                    if lo >= hi {
                        continue;
                    }
                    if data.is_none() {
                        data = Some(self.piece_bytes(i, &mut files)?);
                    }
                    let src = (pos + lo - rs) * es;
                    let dst = (wo + lo - ws) * es;
                    let n = (hi - lo) * es;
                    let from = data
                        .as_deref()
                        .and_then(|d| d.get(src as usize..(src + n) as usize))
                        .ok_or_else(|| {
                            invalid(
                                &self.dir,
                                format!("piece of `{key}` in {} is shorter than its extent", p.file),
                            )
                        })?;
                    out[dst as usize..(dst + n) as usize].copy_from_slice(from);
                    filled += hi - lo;
                }
                pos = pos.saturating_add(rn);
            }
        }
        if filled != total {
            return Err(invalid(
                &self.dir,
                format!("`{key}`: {filled} of {total} wanted elements are stored"),
            ));
        }
        Ok(())
    }
}

/// Committed checkpoints under `root` (`step_<N>` with a manifest), oldest first.
pub fn list(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let Ok(entries) = fs::read_dir(root) else {
        return Ok(vec![]);
    };
    let mut out = vec![];
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(n) = name.strip_prefix("step_") else {
            continue;
        };
        if let Ok(step) = n.parse::<u64>() {
            if e.path().join("manifest.json").exists() {
                out.push((step, e.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}
