//! Attention: forward and backward on grouped-query heads (causal self-attention, a causal
//! chunk whose queries start past the keys, full cross-attention with `Tq ≠ Tk`), and the
//! ring-attention merge of two key blocks.

use super::super::ctx::Ctx;
use super::super::sizes::Sizes;
use anyhow::Result;
use weft_kernels::{AttnDims, Ops, Slice};

/// Forward and backward at three masks and query/key layouts.
pub fn attention<B: Ops>(x: &mut Ctx<'_, B>, s: &Sizes) -> Result<()> {
    let self_causal = AttnDims::new(s.batch, s.t, s.nh, s.nkv, s.hd, true);
    // A context-parallel chunk: the last `tq` queries of the sequence against every key.
    let (tq, tk) = (s.t / 2 + 3, s.t + 5);
    let chunk = AttnDims {
        tq,
        tk,
        q_start: tk - tq,
        ..self_causal
    };
    let cross = AttnDims {
        tq,
        tk,
        causal: false,
        ..self_causal
    };
    for (i, d) in [self_causal, chunk, cross].into_iter().enumerate() {
        forward_backward(x, d, 100 + 10 * i as u64)?;
    }
    Ok(())
}

fn forward_backward<B: Ops>(x: &mut Ctx<'_, B>, d: AttnDims, seed: u64) -> Result<()> {
    let (nq, nkv, nl) = (
        d.b * d.tq * d.nh * d.hd,
        d.b * d.tk * d.nkv * d.hd,
        d.b * d.nh * d.tq,
    );
    let q = x.input(seed, nq, 2.0)?;
    let k = x.input(seed + 1, nkv, 1.0)?;
    let v = x.input(seed + 2, nkv, 1.0)?;
    let (mut out, mut lse) = (x.zeros(x.act(), nq)?, x.zeros(x.stat(), nl)?);
    let be = x.be;
    be.attention_forward(
        B::view_mut(&mut out),
        B::view_mut(&mut lse),
        B::view(&q),
        B::view(&k),
        B::view(&v),
        d,
    )?;
    x.out("attention_forward", "out", &out)?;
    x.out("attention_forward", "lse", &lse)?;
    let dout = x.input(seed + 3, nq, 1.0)?;
    let (mut dq, mut dk, mut dv) = (
        x.zeros(x.act(), nq)?,
        x.zeros(x.act(), nkv)?,
        x.zeros(x.act(), nkv)?,
    );
    be.attention_backward(
        B::view_mut(&mut dq),
        B::view_mut(&mut dk),
        B::view_mut(&mut dv),
        B::view(&dout),
        B::view(&q),
        B::view(&k),
        B::view(&v),
        B::view(&out),
        B::view(&lse),
        d,
    )?;
    x.out("attention_backward", "dq", &dq)?;
    x.out("attention_backward", "dk", &dk)?;
    x.out("attention_backward", "dv", &dv)
}

/// Causal attention over two key blocks (as two ring steps), merged.
pub fn merge<B: Ops>(x: &mut Ctx<'_, B>, s: &Sizes) -> Result<()> {
    let half = s.t / 2;
    let d = AttnDims::new(1, s.t, s.nh, s.nkv, s.hd, true);
    let (nq, nl, row) = (d.tq * d.nh * d.hd, d.nh * d.tq, d.nkv * d.hd);
    let q = x.input(200, nq, 2.0)?;
    let k = x.input(201, d.tk * row, 1.0)?;
    let v = x.input(202, d.tk * row, 1.0)?;
    let be = x.be;
    let run = |keys: std::ops::Range<usize>| -> Result<(B::Buffer, B::Buffer)> {
        let di = AttnDims {
            tk: keys.len(),
            k_start: keys.start,
            ..d
        };
        let (mut out, mut lse) = (x.zeros(x.act(), nq)?, x.zeros(x.stat(), nl)?);
        let span = keys.start * row..keys.end * row;
        be.attention_forward(
            B::view_mut(&mut out),
            B::view_mut(&mut lse),
            B::view(&q),
            B::view(&k).range(span.clone()),
            B::view(&v).range(span),
            di,
        )?;
        Ok((out, lse))
    };
    let (mut out, mut lse) = run(0..half)?;
    let (part, part_lse) = run(half..d.tk)?;
    be.attention_merge(
        B::view_mut(&mut out),
        B::view_mut(&mut lse),
        B::view(&part),
        B::view(&part_lse),
        d,
    )?;
    x.out("attention_merge", "out", &out)?;
    x.out("attention_merge", "lse", &lse)
}
