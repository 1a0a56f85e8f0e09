//! The ops of a transformer layer outside attention: matmul, norms, activations, AdaLN
//! modulation and rotary embedding. Each case runs forward, then backward on the forward's
//! own saved statistics, and reads back every output.

use super::super::ctx::Ctx;
use super::super::sizes::Sizes;
use anyhow::Result;
use weft_kernels::{MatmulDims, ModDims, NormDims, Ops, RopeDims, RopeTable, SwigluDims};

/// A `Linear` with bias (`trans_b`), the QKV projection's shape.
pub fn matmul_linear<B: Ops>(x: &mut Ctx<'_, B>, s: &Sizes) -> Result<()> {
    let (m, k, n) = (s.rows, s.c, 3 * s.c);
    matmul(x, MatmulDims::linear(m, k, n))
}

/// A batched product with `a` transposed (the layout of a backward GEMM).
pub fn matmul_batched<B: Ops>(x: &mut Ctx<'_, B>, s: &Sizes) -> Result<()> {
    let d = MatmulDims {
        batch: 2,
        m: s.rows / 2 + 3,
        n: s.c / 2 + 5,
        k: s.c + 7,
        trans_a: true,
        trans_b: false,
    };
    matmul(x, d)
}

fn matmul<B: Ops>(x: &mut Ctx<'_, B>, d: MatmulDims) -> Result<()> {
    let (na, nb, no) = (d.batch * d.m * d.k, d.batch * d.k * d.n, d.batch * d.m * d.n);
    let a = x.input(1, na, 1.0)?;
    let w = x.input(2, nb, 1.0 / (d.k as f64).sqrt())?;
    let bias = x.input(3, d.n, 1.0)?;
    let mut out = x.zeros(x.act(), no)?;
    let be = x.be;
    be.matmul_forward(
        B::view_mut(&mut out),
        B::view(&a),
        B::view(&w),
        Some(B::view(&bias)),
        d,
    )?;
    x.out("matmul_forward", "out", &out)?;
    let dout = x.input(4, no, 1.0)?;
    let (mut da, mut db, mut dbias) = (
        x.zeros(x.act(), na)?,
        x.zeros(x.grad(), nb)?,
        x.zeros(x.grad(), d.n)?,
    );
    be.matmul_backward(
        Some(B::view_mut(&mut da)),
        Some(B::view_mut(&mut db)),
        Some(B::view_mut(&mut dbias)),
        B::view(&dout),
        B::view(&a),
        B::view(&w),
        d,
    )?;
    x.out("matmul_backward", "da", &da)?;
    x.out("matmul_backward", "db", &db)?;
    x.out("matmul_backward", "dbias", &dbias)
}

/// `1 + 0.1·U[-1, 1)`: a trained norm weight.
fn norm_weight(seed: u64, n: usize) -> Vec<f64> {
    super::super::ctx::random(seed, n, 0.1)
        .iter()
        .map(|v| 1.0 + v)
        .collect()
}

pub fn layernorm<B: Ops>(x: &mut Ctx<'_, B>, s: &Sizes) -> Result<()> {
    let d = NormDims {
        n: s.rows,
        c: s.c,
        eps: 1e-5,
    };
    let inp = x.input(1, d.n * d.c, 2.0)?;
    let weight = x.act_values(&norm_weight(2, d.c))?;
    let bias = x.input(3, d.c, 0.1)?;
    let (mut out, mut mean, mut rstd) = (
        x.zeros(x.act(), d.n * d.c)?,
        x.zeros(x.stat(), d.n)?,
        x.zeros(x.stat(), d.n)?,
    );
    let be = x.be;
    be.layernorm_forward(
        B::view_mut(&mut out),
        B::view_mut(&mut mean),
        B::view_mut(&mut rstd),
        B::view(&inp),
        Some(B::view(&weight)),
        Some(B::view(&bias)),
        d,
    )?;
    x.out("layernorm_forward", "out", &out)?;
    x.out("layernorm_forward", "mean", &mean)?;
    x.out("layernorm_forward", "rstd", &rstd)?;
    let dout = x.input(4, d.n * d.c, 1.0)?;
    let (mut dinp, mut dw, mut db) = (
        x.zeros(x.act(), d.n * d.c)?,
        x.zeros(x.grad(), d.c)?,
        x.zeros(x.grad(), d.c)?,
    );
    be.layernorm_backward(
        B::view_mut(&mut dinp),
        Some(B::view_mut(&mut dw)),
        Some(B::view_mut(&mut db)),
        B::view(&dout),
        B::view(&inp),
        Some(B::view(&weight)),
        B::view(&mean),
        B::view(&rstd),
        d,
    )?;
    x.out("layernorm_backward", "dinp", &dinp)?;
    x.out("layernorm_backward", "dweight", &dw)?;
    x.out("layernorm_backward", "dbias", &db)
}

/// RMSNorm over model rows, and as QK-norm over heads of 128.
pub fn rmsnorm<B: Ops>(x: &mut Ctx<'_, B>, s: &Sizes) -> Result<()> {
    for d in [
        NormDims {
            n: s.rows,
            c: s.c,
            eps: 1e-6,
        },
        NormDims {
            n: s.rows * s.nh,
            c: s.hd,
            eps: 1e-6,
        },
    ] {
        let inp = x.input(11, d.n * d.c, 2.0)?;
        let weight = x.act_values(&norm_weight(12, d.c))?;
        let (mut out, mut rstd) = (x.zeros(x.act(), d.n * d.c)?, x.zeros(x.stat(), d.n)?);
        let be = x.be;
        be.rmsnorm_forward(
            B::view_mut(&mut out),
            B::view_mut(&mut rstd),
            B::view(&inp),
            Some(B::view(&weight)),
            d,
        )?;
        x.out("rmsnorm_forward", "out", &out)?;
        x.out("rmsnorm_forward", "rstd", &rstd)?;
        let dout = x.input(13, d.n * d.c, 1.0)?;
        let (mut dinp, mut dw) = (x.zeros(x.act(), d.n * d.c)?, x.zeros(x.grad(), d.c)?);
        be.rmsnorm_backward(
            B::view_mut(&mut dinp),
            Some(B::view_mut(&mut dw)),
            B::view(&dout),
            B::view(&inp),
            Some(B::view(&weight)),
            B::view(&rstd),
            d,
        )?;
        x.out("rmsnorm_backward", "dinp", &dinp)?;
        x.out("rmsnorm_backward", "dweight", &dw)?;
    }
    Ok(())
}

pub fn gelu_silu<B: Ops>(x: &mut Ctx<'_, B>, s: &Sizes) -> Result<()> {
    let n = s.rows * s.hidden;
    let inp = x.input(21, n, 4.0)?;
    let dout = x.input(22, n, 1.0)?;
    let be = x.be;
    let mut out = x.zeros(x.act(), n)?;
    let mut dinp = x.zeros(x.act(), n)?;
    be.gelu_forward(B::view_mut(&mut out), B::view(&inp), n)?;
    x.out("gelu_forward", "out", &out)?;
    be.gelu_backward(B::view_mut(&mut dinp), B::view(&dout), B::view(&inp), n)?;
    x.out("gelu_backward", "dinp", &dinp)?;
    be.silu_forward(B::view_mut(&mut out), B::view(&inp), n)?;
    x.out("silu_forward", "out", &out)?;
    be.silu_backward(B::view_mut(&mut dinp), B::view(&dout), B::view(&inp), n)?;
    x.out("silu_backward", "dinp", &dinp)
}

pub fn swiglu<B: Ops>(x: &mut Ctx<'_, B>, s: &Sizes) -> Result<()> {
    let d = SwigluDims {
        n: s.rows,
        h: s.hidden,
    };
    let inp = x.input(31, d.n * 2 * d.h, 3.0)?;
    let mut out = x.zeros(x.act(), d.n * d.h)?;
    let be = x.be;
    be.swiglu_forward(B::view_mut(&mut out), B::view(&inp), d)?;
    x.out("swiglu_forward", "out", &out)?;
    let dout = x.input(32, d.n * d.h, 1.0)?;
    let mut dinp = x.zeros(x.act(), d.n * 2 * d.h)?;
    be.swiglu_backward(B::view_mut(&mut dinp), B::view(&dout), B::view(&inp), d)?;
    x.out("swiglu_backward", "dinp", &dinp)
}

/// AdaLN: modulate and the gated residual on a `(B, T, C)` stream.
pub fn modulation<B: Ops>(x: &mut Ctx<'_, B>, s: &Sizes) -> Result<()> {
    let d = ModDims::new(s.batch, s.rows / s.batch, s.c);
    let (n, nc) = (d.b * d.t * d.c, d.cond_len());
    let inp = x.input(41, n, 2.0)?;
    let (shift, scale, gate) = (
        x.input(42, nc, 0.5)?,
        x.input(43, nc, 0.5)?,
        x.input(44, nc, 0.5)?,
    );
    let be = x.be;
    let mut out = x.zeros(x.act(), n)?;
    be.modulate_forward(
        B::view_mut(&mut out),
        B::view(&inp),
        B::view(&shift),
        B::view(&scale),
        d,
    )?;
    x.out("modulate_forward", "out", &out)?;
    let dout = x.input(45, n, 1.0)?;
    let (mut dx, mut dshift, mut dscale) =
        (x.zeros(x.act(), n)?, x.zeros(x.act(), nc)?, x.zeros(x.act(), nc)?);
    be.modulate_backward(
        B::view_mut(&mut dx),
        B::view_mut(&mut dshift),
        B::view_mut(&mut dscale),
        B::view(&dout),
        B::view(&inp),
        B::view(&scale),
        d,
    )?;
    x.out("modulate_backward", "dx", &dx)?;
    x.out("modulate_backward", "dshift", &dshift)?;
    x.out("modulate_backward", "dscale", &dscale)?;
    let mut residual = x.input(46, n, 1.0)?;
    be.gate_forward(B::view_mut(&mut residual), B::view(&gate), B::view(&out), d)?;
    x.out("gate_forward", "residual", &residual)?;
    let (mut dy, mut dgate) = (x.zeros(x.act(), n)?, x.zeros(x.act(), nc)?);
    be.gate_backward(
        B::view_mut(&mut dy),
        B::view_mut(&mut dgate),
        B::view(&dout),
        B::view(&gate),
        B::view(&out),
        d,
    )?;
    x.out("gate_backward", "dy", &dy)?;
    x.out("gate_backward", "dgate", &dgate)
}

/// 1-D RoPE (text) over query heads.
pub fn rope<B: Ops>(x: &mut Ctx<'_, B>, s: &Sizes) -> Result<()> {
    let d = RopeDims {
        b: s.batch,
        t: s.t,
        h: s.nh,
        hd: s.hd,
    };
    let positions: Vec<usize> = (0..d.t).collect();
    let table = RopeTable::one_d(&positions, d.hd, 10_000.0);
    let (cos, sin) = (x.stat_input(&table.cos)?, x.stat_input(&table.sin)?);
    let n = d.b * d.t * d.h * d.hd;
    let inp = x.input(51, n, 1.0)?;
    let be = x.be;
    let mut out = x.zeros(x.act(), n)?;
    be.rope_forward(
        B::view_mut(&mut out),
        B::view(&inp),
        B::view(&cos),
        B::view(&sin),
        d,
    )?;
    x.out("rope_forward", "out", &out)?;
    let dout = x.input(52, n, 1.0)?;
    let mut dinp = x.zeros(x.act(), n)?;
    be.rope_backward(
        B::view_mut(&mut dinp),
        B::view(&dout),
        B::view(&cos),
        B::view(&sin),
        d,
    )?;
    x.out("rope_backward", "dinp", &dinp)
}
