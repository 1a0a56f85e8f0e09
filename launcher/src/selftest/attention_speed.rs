//! Attention throughput in bf16 at long sequences, with FLOPs counted as flash-attention's
//! benchmarks count them: forward `4·B·NH·T²·HD` (halved under a causal mask), backward 2.5×
//! the forward (five matmuls of the same size against the forward's two).

use super::ctx::tiled;
use super::sizes::Sizes;
use super::timing::{per_call, tflops, Deadline};
use anyhow::Result;
use serde::Serialize;
use std::time::Duration;
use weft_kernels::{stat_dtype, AttentionOps, AttnDims, DType};

#[derive(Clone, Debug, Serialize)]
pub struct AttentionRow {
    pub b: usize,
    pub t: usize,
    pub nh: usize,
    pub hd: usize,
    pub causal: bool,
    pub dtype: &'static str,
    pub fwd_flops: f64,
    pub bwd_flops: f64,
    pub fwd_ms: Option<f64>,
    pub bwd_ms: Option<f64>,
    pub fwd_tflops: Option<f64>,
    pub bwd_tflops: Option<f64>,
    pub error: Option<String>,
}

/// Forward FLOPs under flash-attention's convention.
pub fn forward_flops(b: usize, t: usize, nh: usize, hd: usize, causal: bool) -> f64 {
    let full = 4.0 * (b * nh * hd) as f64 * (t as f64) * (t as f64);
    if causal {
        full / 2.0
    } else {
        full
    }
}

pub fn run<B: AttentionOps>(
    be: &B,
    s: &Sizes,
    deadline: &Deadline,
    skipped: &mut Vec<String>,
) -> Result<Vec<AttentionRow>> {
    let min = Duration::from_millis(s.min_ms);
    let mut rows = Vec::new();
    for &t in &s.attn_t {
        for causal in [true, false] {
            let mask = if causal { "causal" } else { "full" };
            if deadline.passed() {
                skipped.push(format!("attention: T={t} {mask} (time limit)"));
                continue;
            }
            let b = (s.attn_tokens / t).max(1);
            let (nh, hd) = (s.attn_heads, s.attn_hd);
            let fwd_flops = forward_flops(b, t, nh, hd, causal);
            let mut row = AttentionRow {
                b,
                t,
                nh,
                hd,
                causal,
                dtype: "bf16",
                fwd_flops,
                bwd_flops: 2.5 * fwd_flops,
                fwd_ms: None,
                bwd_ms: None,
                fwd_tflops: None,
                bwd_tflops: None,
                error: None,
            };
            match measure(be, AttnDims::new(b, t, nh, nh, hd, causal), min) {
                Ok((tf, tb)) => {
                    row.fwd_ms = Some(tf * 1e3);
                    row.bwd_ms = Some(tb * 1e3);
                    row.fwd_tflops = Some(tflops(row.fwd_flops, tf));
                    row.bwd_tflops = Some(tflops(row.bwd_flops, tb));
                }
                Err(e) => row.error = Some(format!("{e:#}")),
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Seconds per forward and per backward.
fn measure<B: AttentionOps>(be: &B, d: AttnDims, min: Duration) -> Result<(f64, f64)> {
    let n = d.b * d.tq * d.nh * d.hd;
    let (q, k, v, dout) = (
        tiled(be, DType::BF16, n, 11)?,
        tiled(be, DType::BF16, n, 12)?,
        tiled(be, DType::BF16, n, 13)?,
        tiled(be, DType::BF16, n, 14)?,
    );
    let mut out = be.alloc(DType::BF16, n)?;
    let mut lse = be.alloc(stat_dtype(DType::BF16), d.b * d.nh * d.tq)?;
    let tf = per_call(be, min, || {
        Ok(be.attention_forward(
            B::view_mut(&mut out),
            B::view_mut(&mut lse),
            B::view(&q),
            B::view(&k),
            B::view(&v),
            d,
        )?)
    })?;
    let (mut dq, mut dk, mut dv) = (
        be.alloc(DType::BF16, n)?,
        be.alloc(DType::BF16, n)?,
        be.alloc(DType::BF16, n)?,
    );
    let tb = per_call(be, min, || {
        Ok(be.attention_backward(
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
        )?)
    })?;
    Ok((tf, tb))
}
