//! Latent shards: safetensors files of pre-encoded video.
//!
//! Each file holds `latents [N, T, H, W, C]` (f32, f16 or bf16), optionally `labels [N]`
//! (i32 or i64; class ids) and `embeddings [N, E]` (float; pooled text embeddings). Files are
//! memory-mapped and validated against the model config at load; the last `val_fraction` of
//! all samples is held out. A training sample index picks a uniformly random sample.

use super::tensorfile::{Header, Tensor};
use super::{sample_rng, Clips, Source, Split, Stream};
use crate::config::DitConfig;
use crate::model::DitBatch;
use crate::{Error, Result};
use memmap2::Mmap;
use rand::Rng;
use safetensors::Dtype;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One file: its mapping, sample count, and where each tensor's bytes are (checked at load).
struct Shard {
    path: PathBuf,
    map: Mmap,
    n: usize,
    latents: Tensor,
    labels: Option<Tensor>,
    embeddings: Option<Tensor>,
}

pub struct Latents {
    cfg: DitConfig,
    seed: u64,
    shards: Vec<Shard>,
    total: usize,
    split_at: usize,
}

/// Decode floats of a dtype accepted by [`float_dtype`].
fn floats(dtype: Dtype, d: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => d
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
    }
}

fn float_dtype(path: &Path, name: &str, t: &Tensor) -> Result<()> {
    match t.dtype {
        Dtype::F32 | Dtype::F16 | Dtype::BF16 => Ok(()),
        other => Err(Error::data(
            path,
            format!("`{name}` has dtype {other:?}; expected F32, F16 or BF16"),
        )),
    }
}

/// Label `i` of an i32/i64 `labels` tensor, `None` when outside the file.
fn label_at(map: &[u8], t: &Tensor, i: usize) -> Option<i64> {
    let w = t.elem_bytes();
    let at = t.bytes.start.checked_add(i.checked_mul(w)?)?;
    let b = map.get(at..at.checked_add(w)?)?;
    Some(match b.len() {
        8 => i64::from_le_bytes(std::array::from_fn(|k| b[k])),
        _ => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
    })
}

/// The byte range of sample `i` of a tensor whose samples are `per` elements each.
fn sample_bytes(t: &Tensor, i: usize, per: usize) -> Option<Range<usize>> {
    let len = per.checked_mul(t.elem_bytes())?;
    let start = t.bytes.start.checked_add(i.checked_mul(len)?)?;
    let end = start.checked_add(len)?;
    (end <= t.bytes.end).then_some(start..end)
}

/// Check one file against the model: dtypes, shapes (with checked element counts), labels.
fn open_shard(p: PathBuf, cfg: &DitConfig) -> Result<Shard> {
    let f = std::fs::File::open(&p).map_err(Error::io(&p))?;
    // SAFETY: read-only mapping of a file weft does not modify.
    let map = unsafe { Mmap::map(&f) }.map_err(Error::io(&p))?;
    let h = Header::read(&p, &map)?;
    let lat = h
        .tensor("latents")
        .ok_or_else(|| Error::data(&p, "no `latents` tensor"))?;
    let want = cfg.latent;
    if lat.shape.len() != 5 || lat.shape[1..] != want {
        return Err(Error::data(
            &p,
            format!(
                "`latents` has shape {:?}; model.latent wants [N, {}, {}, {}, {}]",
                lat.shape, want[0], want[1], want[2], want[3]
            ),
        ));
    }
    float_dtype(&p, "latents", &lat)?;
    let n = lat.shape[0];
    let per = want.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let bytes = per
        .and_then(|per| per.checked_mul(n))
        .and_then(|x| x.checked_mul(lat.elem_bytes()));
    if bytes != Some(lat.bytes.len()) || lat.bytes.end > map.len() {
        return Err(Error::data(
            &p,
            format!(
                "`latents` {:?} {:?} does not match its {} bytes in the file",
                lat.dtype,
                lat.shape,
                lat.bytes.len()
            ),
        ));
    }
    let labels = h.tensor("labels");
    if let Some(l) = &labels {
        if l.shape != [n] || !matches!(l.dtype, Dtype::I32 | Dtype::I64) || l.bytes.end > map.len() {
            return Err(Error::data(
                &p,
                format!(
                    "`labels` must be i32/i64 of shape [{n}], got {:?} {:?}",
                    l.dtype, l.shape
                ),
            ));
        }
        let classes = cfg.num_classes.min(i32::MAX as usize) as i64;
        if let Some((i, bad)) = (0..n)
            .map(|i| (i, label_at(&map, l, i)))
            .find(|&(_, k)| !k.is_some_and(|k| (0..classes).contains(&k)))
        {
            return Err(Error::data(
                &p,
                match bad {
                    Some(k) => format!(
                        "label {k} is outside model.num_classes = {} (sample {i})",
                        cfg.num_classes
                    ),
                    None => format!("the label of sample {i} lies outside the file"),
                },
            ));
        }
    }
    let embeddings = h.tensor("embeddings");
    match (&embeddings, cfg.text_dim) {
        (Some(e), d) if e.shape != [n, d] => {
            return Err(Error::data(
                &p,
                format!(
                    "`embeddings` has shape {:?}; model.text_dim wants [{n}, {d}]",
                    e.shape
                ),
            ))
        }
        (Some(e), _) => {
            float_dtype(&p, "embeddings", e)?;
            if e.bytes.end > map.len() {
                return Err(Error::data(&p, "`embeddings` lie outside the file"));
            }
        }
        (None, d) if d > 0 => {
            return Err(Error::data(
                &p,
                format!("model.text_dim = {d} but the file has no `embeddings`"),
            ))
        }
        _ => {}
    }
    Ok(Shard {
        path: p,
        map,
        n,
        latents: lat,
        labels,
        embeddings,
    })
}

impl Latents {
    /// `path`: one `.safetensors` file or a directory of them (sorted by name).
    pub fn new(path: &Path, cfg: &DitConfig, val_fraction: f64, seed: u64) -> Result<Self> {
        let files: Vec<PathBuf> = if path.is_dir() {
            let rd = std::fs::read_dir(path).map_err(Error::io(path))?;
            let mut v: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                .collect();
            v.sort();
            v
        } else {
            vec![path.to_path_buf()]
        };
        if files.is_empty() {
            return Err(Error::data(path, "no .safetensors files"));
        }
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(Error::data(
                path,
                format!("data.val_fraction must be in [0, 1), got {val_fraction}"),
            ));
        }
        let shards = files
            .into_iter()
            .map(|p| open_shard(p, cfg))
            .collect::<Result<Vec<_>>>()?;
        let total = shards
            .iter()
            .try_fold(0usize, |a, s| a.checked_add(s.n))
            .ok_or_else(|| Error::data(path, "sample counts overflow"))?;
        let split_at = total - ((total as f64 * val_fraction) as usize).min(total);
        if split_at == 0 || (val_fraction > 0.0 && split_at == total) {
            return Err(Error::data(
                path,
                format!("{total} samples are too few to hold out {val_fraction}"),
            ));
        }
        Ok(Latents {
            cfg: cfg.clone(),
            seed,
            shards,
            total,
            split_at,
        })
    }

    fn sample(&self, index: usize) -> Result<(Vec<f32>, i32, Option<Vec<f32>>)> {
        let mut i = index;
        for s in &self.shards {
            if i < s.n {
                let outside =
                    |what: &str| Error::data(&s.path, format!("sample {i}: {what} outside the file"));
                let per = self.cfg.latent.iter().product::<usize>();
                let x = sample_bytes(&s.latents, i, per)
                    .and_then(|r| s.map.get(r))
                    .ok_or_else(|| outside("the latents"))?;
                let x = floats(s.latents.dtype, x);
                let label = match &s.labels {
                    Some(l) => label_at(&s.map, l, i).ok_or_else(|| outside("the label"))? as i32,
                    None => 0,
                };
                let emb = match &s.embeddings {
                    Some(e) => {
                        let b = sample_bytes(e, i, self.cfg.text_dim)
                            .and_then(|r| s.map.get(r))
                            .ok_or_else(|| outside("the embeddings"))?;
                        Some(floats(e.dtype, b))
                    }
                    None => None,
                };
                return Ok((x, label, emb));
            }
            i -= s.n;
        }
        Err(Error::data(
            &self.shards[0].path,
            format!("sample {index} is past the {} samples", self.total),
        ))
    }
}

impl Source for Latents {
    type Batch = DitBatch;
    fn batch(&self, split: Split, indices: &[u64]) -> Result<DitBatch> {
        let mut c = Clips {
            x0: vec![],
            class: vec![],
            text: (self.cfg.text_dim > 0).then(Vec::new),
        };
        for &idx in indices {
            let i = match split {
                Split::Train => sample_rng(self.seed, Stream::Content, idx).random_range(0..self.split_at),
                Split::Val => self.split_at + (idx as usize) % (self.total - self.split_at).max(1),
            };
            let (x, label, emb) = self.sample(i.min(self.total - 1))?;
            c.x0.extend(x);
            c.class.push(label);
            if let (Some(t), Some(e)) = (c.text.as_mut(), emb) {
                t.extend(e);
            }
        }
        Ok(super::flow_batch(&self.cfg, self.seed, split, indices, c))
    }
}
