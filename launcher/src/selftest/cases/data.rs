//! Losses, embeddings (tokens, video patches, timesteps), pointwise arithmetic and the axis
//! swap of sequence parallelism.

use super::super::ctx::{random, Ctx};
use super::super::sizes::Sizes;
use anyhow::Result;
use weft_kernels::{CrossEntropyDims, DType, EmbeddingDims, Ops, PatchDims, SwapDims, TimestepDims};

/// Token-like ids in `0..v` (with repeats), from `seed`.
fn ids(seed: u64, n: usize, v: usize) -> Vec<i32> {
    random(seed, n, 1.0)
        .iter()
        .map(|u| (((u + 1.0) / 2.0 * v as f64) as usize).min(v - 1) as i32)
        .collect()
}

pub fn cross_entropy<B: Ops>(x: &mut Ctx<'_, B>, s: &Sizes) -> Result<()> {
    let d = CrossEntropyDims {
        n: s.rows,
        v: s.vocab,
        z_loss: 1e-4,
    };
    let logits = x.input(61, d.n * d.v, 4.0)?;
    // Every seventh row is padding (target −1, loss 0).
    let targets: Vec<i32> = ids(62, d.n, d.v)
        .into_iter()
        .enumerate()
        .map(|(i, t)| if i % 7 == 3 { -1 } else { t })
        .collect();
    let targets = x.ints(&targets)?;
    let (mut losses, mut lse) = (x.zeros(x.stat(), d.n)?, x.zeros(x.stat(), d.n)?);
    let be = x.be;
    be.cross_entropy_forward(
        B::view_mut(&mut losses),
        B::view_mut(&mut lse),
        B::view(&logits),
        B::view(&targets),
        d,
    )?;
    x.out("cross_entropy_forward", "losses", &losses)?;
    x.out("cross_entropy_forward", "lse", &lse)?;
    let dlosses = x.stat_input(&vec![1.0 / d.n as f64; d.n])?;
    let mut dlogits = x.zeros(x.act(), d.n * d.v)?;
    be.cross_entropy_backward(
        B::view_mut(&mut dlogits),
        B::view(&dlosses),
        B::view(&logits),
        B::view(&targets),
        B::view(&lse),
        d,
    )?;
    x.out("cross_entropy_backward", "dlogits", &dlogits)
}

pub fn mse<B: Ops>(x: &mut Ctx<'_, B>, s: &Sizes) -> Result<()> {
    let n = s.rows * s.c;
    let (pred, target) = (x.input(71, n, 1.0)?, x.input(72, n, 1.0)?);
    let mut loss = x.zeros(x.stat(), 1)?;
    let be = x.be;
    be.mse_forward(B::view_mut(&mut loss), B::view(&pred), B::view(&target), n)?;
    x.out("mse_forward", "loss", &loss)?;
    let dloss = x.stat_input(&[1.0])?;
    let mut dpred = x.zeros(x.act(), n)?;
    be.mse_backward(
        B::view_mut(&mut dpred),
        B::view(&dloss),
        B::view(&pred),
        B::view(&target),
        n,
    )?;
    x.out("mse_backward", "dpred", &dpred)
}

pub fn embedding<B: Ops>(x: &mut Ctx<'_, B>, s: &Sizes) -> Result<()> {
    let d = EmbeddingDims {
        n: s.rows,
        v: s.vocab / 4,
        c: s.c,
    };
    let ids = x.ints(&ids(81, d.n, d.v))?;
    let table = x.input(82, d.v * d.c, 1.0)?;
    let mut out = x.zeros(x.act(), d.n * d.c)?;
    let be = x.be;
    be.embedding_forward(B::view_mut(&mut out), B::view(&ids), B::view(&table), d)?;
    x.out("embedding_forward", "out", &out)?;
    let dout = x.input(83, d.n * d.c, 1.0)?;
    let mut dtable = x.zeros(x.grad(), d.v * d.c)?;
    be.embedding_backward(B::view_mut(&mut dtable), B::view(&dout), B::view(&ids), d)?;
    x.out("embedding_backward", "dtable", &dtable)
}

/// 3-D patchify and its inverse, forward and backward.
pub fn patches<B: Ops>(x: &mut Ctx<'_, B>, s: &Sizes) -> Result<()> {
    let [t, h, w, c] = s.video;
    let d = PatchDims {
        b: s.batch,
        t,
        h,
        w,
        c,
        pt: 2,
        ph: 2,
        pw: 2,
    };
    let n = d.numel();
    let (video, grad) = (x.input(91, n, 1.0)?, x.input(92, n, 1.0)?);
    let be = x.be;
    let mut out = x.zeros(x.act(), n)?;
    be.patchify_forward(B::view_mut(&mut out), B::view(&video), d)?;
    x.out("patchify_forward", "out", &out)?;
    be.patchify_backward(B::view_mut(&mut out), B::view(&grad), d)?;
    x.out("patchify_backward", "dx", &out)?;
    be.unpatchify_forward(B::view_mut(&mut out), B::view(&video), d)?;
    x.out("unpatchify_forward", "out", &out)?;
    be.unpatchify_backward(B::view_mut(&mut out), B::view(&grad), d)?;
    x.out("unpatchify_backward", "dtokens", &out)
}

/// DiT's sinusoidal timestep features (timesteps in [0, 1000)).
pub fn timestep<B: Ops>(x: &mut Ctx<'_, B>, s: &Sizes) -> Result<()> {
    let d = TimestepDims {
        n: s.batch * 8,
        dim: 256,
        max_period: 10_000.0,
    };
    let t: Vec<f64> = random(101, d.n, 500.0).iter().map(|v| v + 500.0).collect();
    let t = x.stat_input(&t)?;
    let mut out = x.zeros(x.act(), d.n * d.dim)?;
    let be = x.be;
    be.timestep_embedding_forward(B::view_mut(&mut out), B::view(&t), d)?;
    x.out("timestep_embedding_forward", "out", &out)?;
    let dout = x.input(102, d.n * d.dim, 1.0)?;
    let mut dt = x.zeros(x.stat(), d.n)?;
    be.timestep_embedding_backward(B::view_mut(&mut dt), B::view(&dout), B::view(&t), d)?;
    x.out("timestep_embedding_backward", "dt", &dt)
}

/// Add, scale, accumulate, fill and casts over a layer's activations.
pub fn elementwise<B: Ops>(x: &mut Ctx<'_, B>, s: &Sizes) -> Result<()> {
    let n = s.rows * s.c;
    let (a, b, dout) = (
        x.input(111, n, 1.0)?,
        x.input(112, n, 1.0)?,
        x.input(113, n, 1.0)?,
    );
    let be = x.be;
    let mut out = x.zeros(x.act(), n)?;
    be.add_forward(B::view_mut(&mut out), B::view(&a), B::view(&b), n)?;
    x.out("add_forward", "out", &out)?;
    let (mut da, mut db) = (x.input(114, n, 1.0)?, x.input(115, n, 1.0)?);
    be.add_backward(B::view_mut(&mut da), B::view_mut(&mut db), B::view(&dout), n)?;
    x.out("add_backward", "da", &da)?;
    x.out("add_backward", "db", &db)?;
    be.scale_forward(B::view_mut(&mut out), B::view(&a), 0.3, n)?;
    x.out("scale_forward", "out", &out)?;
    be.scale_backward(B::view_mut(&mut out), B::view(&dout), -1.7, n)?;
    x.out("scale_backward", "dx", &out)?;
    let mut acc = x.values(&random(116, n, 1.0), x.grad(), x.grad())?;
    be.accumulate(B::view_mut(&mut acc), B::view(&a), n)?;
    x.out("accumulate", "acc", &acc)?;
    be.fill(B::view_mut(&mut out), 0.37, n)?;
    x.out("fill", "out", &out)?;
    for to in [DType::BF16, DType::F32] {
        let mut cast = x.zeros(to, n)?;
        be.cast(B::view_mut(&mut cast), B::view(&a), n)?;
        x.out(
            "cast",
            if to == DType::BF16 { "to bf16" } else { "to f32" },
            &cast,
        )?;
    }
    Ok(())
}

/// Rank-major gathered rows `(ranks, B, T·C)` into `(B, ranks, T·C)`, and back.
pub fn swap_axes<B: Ops>(x: &mut Ctx<'_, B>, s: &Sizes) -> Result<()> {
    let d = SwapDims {
        a: 4,
        b: s.batch + 1,
        inner: s.c * 8,
    };
    let inp = x.input(121, d.numel(), 1.0)?;
    let be = x.be;
    let (mut out, mut back) = (x.zeros(x.act(), d.numel())?, x.zeros(x.act(), d.numel())?);
    be.swap_axes(B::view_mut(&mut out), B::view(&inp), d)?;
    x.out("swap_axes", "out", &out)?;
    be.swap_axes(B::view_mut(&mut back), B::view(&out), d.inverse())?;
    x.out("swap_axes", "inverse", &back)
}
