//! Latent shards: safetensors files of pre-encoded video.
//!
//! Each file holds `latents [N, T, H, W, C]` (f32, f16 or bf16), optionally `labels [N]`
//! (i32 or i64; class ids) and `embeddings [N, E]` (float; pooled text embeddings). Files are
//! memory-mapped and validated against the model config at load; the last `val_fraction` of
//! all samples is held out. A training sample index picks a uniformly random sample.

use super::{sample_rng, Clips, Source, Split, Stream};
use crate::config::DitConfig;
use crate::model::DitBatch;
use crate::{Error, Result};
use memmap2::Mmap;
use rand::Rng;
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

struct Shard {
    path: PathBuf,
    map: Mmap,
    n: usize,
}

pub struct Latents {
    cfg: DitConfig,
    seed: u64,
    shards: Vec<Shard>,
    total: usize,
    split_at: usize,
}

fn floats(path: &Path, name: &str, v: &safetensors::tensor::TensorView<'_>) -> Result<Vec<f32>> {
    let d = v.data();
    Ok(match v.dtype() {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(Error::data(
                path,
                format!("`{name}` has dtype {other:?}; expected F32, F16 or BF16"),
            ))
        }
    })
}

impl Latents {
    /// `path`: one `.safetensors` file or a directory of them (sorted by name).
    pub fn new(path: &Path, cfg: &DitConfig, val_fraction: f64, seed: u64) -> Result<Self> {
        let mut files: Vec<PathBuf> = if path.is_dir() {
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
        let mut shards = vec![];
        for p in files.drain(..) {
            let f = std::fs::File::open(&p).map_err(Error::io(&p))?;
            // SAFETY: read-only mapping of a file weft does not modify.
            let map = unsafe { Mmap::map(&f) }.map_err(Error::io(&p))?;
            let st = SafeTensors::deserialize(&map)
                .map_err(|e| Error::data(&p, format!("not a safetensors file: {e}")))?;
            let lat = st
                .tensor("latents")
                .map_err(|_| Error::data(&p, "no `latents` tensor"))?;
            let shape = lat.shape().to_vec();
            let want = cfg.latent;
            if shape.len() != 5 || shape[1..] != want {
                return Err(Error::data(
                    &p,
                    format!(
                        "`latents` has shape {shape:?}; model.latent wants [N, {}, {}, {}, {}]",
                        want[0], want[1], want[2], want[3]
                    ),
                ));
            }
            floats(&p, "latents", &lat)?;
            let n = shape[0];
            if let Ok(l) = st.tensor("labels") {
                if l.shape() != [n] || !matches!(l.dtype(), Dtype::I32 | Dtype::I64) {
                    return Err(Error::data(
                        &p,
                        format!(
                            "`labels` must be i32/i64 of shape [{n}], got {:?} {:?}",
                            l.dtype(),
                            l.shape()
                        ),
                    ));
                }
                if let Some(bad) = labels(&l)
                    .into_iter()
                    .find(|&k| k < 0 || k as usize >= cfg.num_classes)
                {
                    return Err(Error::data(
                        &p,
                        format!("label {bad} is outside model.num_classes = {}", cfg.num_classes),
                    ));
                }
            }
            match (st.tensor("embeddings"), cfg.text_dim) {
                (Ok(e), d) if e.shape() != [n, d] => {
                    return Err(Error::data(
                        &p,
                        format!(
                            "`embeddings` has shape {:?}; model.text_dim wants [{n}, {d}]",
                            e.shape()
                        ),
                    ))
                }
                (Err(_), d) if d > 0 => {
                    return Err(Error::data(
                        &p,
                        format!("model.text_dim = {d} but the file has no `embeddings`"),
                    ))
                }
                _ => {}
            }
            shards.push(Shard { path: p, map, n });
        }
        let total: usize = shards.iter().map(|s| s.n).sum();
        let split_at = total - (total as f64 * val_fraction) as usize;
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

    fn sample(&self, mut i: usize) -> Result<(Vec<f32>, i32, Option<Vec<f32>>)> {
        for s in &self.shards {
            if i < s.n {
                let st = SafeTensors::deserialize(&s.map).map_err(|e| Error::data(&s.path, e.to_string()))?;
                let lat = st.tensor("latents").expect("checked at load");
                let per = lat.data().len() / s.n;
                let one = safetensors::tensor::TensorView::new(
                    lat.dtype(),
                    self.cfg.latent.to_vec(),
                    &lat.data()[i * per..(i + 1) * per],
                )
                .map_err(|e| Error::data(&s.path, e.to_string()))?;
                let x = floats(&s.path, "latents", &one)?;
                let label = st.tensor("labels").map(|l| labels(&l)[i] as i32).unwrap_or(0);
                let emb = match st.tensor("embeddings") {
                    Ok(e) => {
                        let d = self.cfg.text_dim;
                        Some(floats(&s.path, "embeddings", &e)?[i * d..(i + 1) * d].to_vec())
                    }
                    Err(_) => None,
                };
                return Ok((x, label, emb));
            }
            i -= s.n;
        }
        unreachable!("sample index within total")
    }
}

fn labels(l: &safetensors::tensor::TensorView<'_>) -> Vec<i64> {
    match l.dtype() {
        Dtype::I64 => l
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        _ => l
            .data()
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64)
            .collect(),
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
