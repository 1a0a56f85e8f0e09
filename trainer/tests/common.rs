//! Tiny configs and helpers shared by the tests.

use std::cell::RefCell;
use weft_kernels::gradcheck::SplitMix;
use weft_kernels::{Backend, CpuBackend, DType, HostVec};
use weft_trainer::config::{DitConfig, GptConfig};
use weft_trainer::model::{DitBatch, Model, TokenBatch};

pub fn tiny_dit() -> DitConfig {
    DitConfig {
        width: 16,
        depth: 2,
        heads: 2,
        mlp_ratio: 2.0,
        latent: [2, 4, 4, 3],
        patch: [1, 2, 2],
        num_classes: 3,
        text_dim: 5,
        qk_norm: true,
        class_dropout: 0.0,
        rope_theta: 100.0,
        precondition: false,
        sigma_data: 0.5,
        t_mean: 0.0,
        t_std: 1.0,
        attn_base_hd: None,
    }
}

pub fn tiny_gpt() -> GptConfig {
    GptConfig {
        width: 16,
        depth: 2,
        heads: 4,
        kv_heads: Some(2),
        vocab_size: 11,
        seq_len: 6,
        mlp_hidden: Some(24),
        tie_embeddings: false,
        z_loss: 1e-2,
        rope_theta: 100.0,
        attn_base_hd: None,
    }
}

pub fn dit_batch(cfg: &DitConfig, b: usize, seed: u64) -> DitBatch {
    let mut r = SplitMix::new(seed);
    let n = b * cfg.latent.iter().product::<usize>();
    DitBatch {
        x: r.vec(n).iter().map(|&v| v as f32).collect(),
        t: (0..b).map(|_| (0.5 + 0.45 * r.uniform()) as f32).collect(),
        class: (0..b).map(|i| (i % (cfg.num_classes + 1)) as i32).collect(),
        text: (cfg.text_dim > 0).then(|| r.vec(b * cfg.text_dim).iter().map(|&v| v as f32).collect()),
        target: r.vec(n).iter().map(|&v| v as f32).collect(),
    }
}

pub fn token_batch(cfg: &GptConfig, b: usize, seed: u64) -> TokenBatch {
    let mut r = SplitMix::new(seed);
    let n = b * cfg.seq_len;
    let v = cfg.vocab_size as u64;
    let ids: Vec<i32> = (0..n).map(|_| (r.next_u64() % v) as i32).collect();
    let mut targets: Vec<i32> = (0..n).map(|_| (r.next_u64() % v) as i32).collect();
    targets[1] = -1; // one ignored position
    TokenBatch { ids, targets }
}

/// Parameters drawn uniformly in `[-scale, scale)`: away from the zero initialization of
/// AdaLN-Zero, so every tensor has a non-trivial gradient.
pub fn random_params(n: usize, seed: u64, scale: f64) -> Vec<f64> {
    SplitMix::new(seed).vec(n).iter().map(|v| v * scale).collect()
}

/// Loss and flat gradient of one forward/backward in the model's dtype.
pub fn loss_and_grad<M: Model<CpuBackend>>(
    m: &RefCell<M>,
    params: &[f64],
    batch: &M::Batch,
    dloss: f64,
) -> (f64, Vec<f64>) {
    let be = CpuBackend::new();
    let p = HostVec::from(params.to_vec());
    let mut g = HostVec::zeros(DType::F64, params.len());
    let mut m = m.borrow_mut();
    let loss = m.forward(&be, p.view(), batch).unwrap();
    m.backward(&be, p.view(), CpuBackend::view_mut(&mut g), dloss)
        .unwrap();
    match g {
        HostVec::F64(v) => (loss, v),
        _ => unreachable!(),
    }
}
