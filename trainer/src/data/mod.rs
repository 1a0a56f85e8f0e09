//! Training data, deterministic from `(seed, global sample index)`.
//!
//! The training loop turns `(step, micro-batch, dp_rank, dp_size)` into global sample indices
//! with [`sample_indices`]: step `s` consumes samples `[s·G, (s+1)·G)` of the global order
//! (`G` = global batch), so a resumed run, or one with a different data-parallel size but the
//! same global batch, sees exactly the same samples. Everything random about a sample (which
//! clip, which window, its noise and timestep) comes from [`sample_rng`] of its index.
//!
//! [`baseline`]: the constant predictor validation losses are quoted against.
//!
//! Sources: [`shapes`] (procedural video), [`latents`] (safetensors latent shards), [`tokens`]
//! (memory-mapped token shards); [`tensorfile`] reads safetensors headers (latent shards,
//! exported weights) with every size checked against the file.

pub mod baseline;
pub mod latents;
pub mod shapes;
pub mod tensorfile;
pub mod tokens;

use crate::config::DitConfig;
use crate::model::DitBatch;
use crate::rng::normal;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Questions about the data section.
pub trait DataConfigExt {
    /// The built-in moving-shapes clips.
    fn is_shapes(&self) -> bool;
}

impl DataConfigExt for crate::config::DataConfig {
    fn is_shapes(&self) -> bool {
        matches!(self, crate::config::DataConfig::Shapes)
    }
}

/// Training or held-out samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
}

/// Independent random streams derived from one seed.
#[derive(Clone, Copy, Debug)]
pub enum Stream {
    /// What a sample is (clip content, window position).
    Content = 1,
    /// Flow-matching noise, timestep and class dropout.
    Noise = 2,
    /// Held-out content.
    ValContent = 3,
    ValNoise = 4,
}

/// The generator of sample `index` in `stream`.
pub fn sample_rng(seed: u64, stream: Stream, index: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed ^ (stream as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    r.set_stream(index);
    r
}

/// Global sample indices of micro-batch `micro` of `dp_rank` at `step`.
pub fn sample_indices(
    step: u64,
    micro: usize,
    grad_accum: usize,
    dp_rank: usize,
    dp_size: usize,
    mb: usize,
) -> Vec<u64> {
    let global = (mb * grad_accum * dp_size) as u64;
    let start = step * global + ((micro * dp_size + dp_rank) * mb) as u64;
    (start..start + mb as u64).collect()
}

/// Where a model's micro-batches come from.
pub trait Source: Send {
    type Batch;
    /// The samples with these global indices.
    fn batch(&self, split: Split, indices: &[u64]) -> crate::Result<Self::Batch>;
}

/// Clean clips and their conditioning, before flow-matching noise.
pub struct Clips {
    /// `(B, T, H, W, C)`.
    pub x0: Vec<f32>,
    pub class: Vec<i32>,
    pub text: Option<Vec<f32>>,
}

/// Turn clean clips into a flow-matching micro-batch: per sample (from its noise stream)
/// a logit-normal `t`, Gaussian `ε`, `x_t = (1−t)·x0 + t·ε`, target `v = ε − x0` (or the
/// preconditioned target), and class dropout in training.
pub fn flow_batch(cfg: &DitConfig, seed: u64, split: Split, indices: &[u64], clips: Clips) -> DitBatch {
    let per = cfg.latent.iter().product::<usize>();
    let stream = if split == Split::Train {
        Stream::Noise
    } else {
        Stream::ValNoise
    };
    let mut b = DitBatch {
        x: Vec::with_capacity(clips.x0.len()),
        t: vec![],
        class: clips.class,
        text: clips.text,
        target: Vec::with_capacity(clips.x0.len()),
    };
    for (i, &idx) in indices.iter().enumerate() {
        let mut r = sample_rng(seed, stream, idx);
        let t = 1.0 / (1.0 + (-(cfg.t_mean + cfg.t_std * normal(&mut r))).exp());
        if split == Split::Train && r.random::<f64>() < cfg.class_dropout {
            b.class[i] = cfg.num_classes as i32;
        }
        let (c_in, c_skip, c_out) = if cfg.precondition {
            crate::model::dit::precondition(t, cfg.sigma_data)
        } else {
            (1.0, 0.0, 1.0)
        };
        for &x0 in &clips.x0[i * per..(i + 1) * per] {
            let (x0, eps) = (x0 as f64, normal(&mut r));
            let xt = (1.0 - t) * x0 + t * eps;
            b.x.push((c_in * xt) as f32);
            b.target.push((((eps - x0) - c_skip * xt) / c_out) as f32);
        }
        b.t.push(t as f32);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_global_batch_is_the_same_samples_for_any_dp_size() {
        let all = |dp: usize, mb: usize, accum: usize| {
            let mut v: Vec<u64> = (0..accum)
                .flat_map(|m| (0..dp).flat_map(move |r| sample_indices(3, m, accum, r, dp, mb)))
                .collect();
            v.sort();
            v
        };
        let want: Vec<u64> = (24..32).collect();
        assert_eq!(all(1, 8, 1), want);
        assert_eq!(all(2, 4, 1), want);
        assert_eq!(all(4, 1, 2), want);
    }

    #[test]
    fn streams_are_reproducible_and_independent() {
        let a: u64 = sample_rng(1, Stream::Noise, 5).random();
        assert_eq!(a, sample_rng(1, Stream::Noise, 5).random::<u64>());
        assert_ne!(a, sample_rng(1, Stream::Noise, 6).random::<u64>());
        assert_ne!(a, sample_rng(1, Stream::Content, 5).random::<u64>());
        assert_ne!(a, sample_rng(2, Stream::Noise, 5).random::<u64>());
    }
}
