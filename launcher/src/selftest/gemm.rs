//! GEMM throughput at transformer shapes, as a fraction of the device's own large square bf16
//! GEMM measured in the same run (through the same matmul op).

use super::ctx::tiled;
use super::sizes::Sizes;
use super::timing::{per_call, tflops, Deadline};
use anyhow::Result;
use serde::Serialize;
use std::time::Duration;
use weft_kernels::{DType, MatmulDims, MatmulOps};

/// The reference: `n × n × n` in bf16.
#[derive(Clone, Debug, Serialize)]
pub struct Peak {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub dtype: &'static str,
    pub tflops: f64,
}

/// One layer GEMM `(rows × in) · (in → out)`: forward, and backward (`da` and `db`, twice the
/// forward's FLOPs).
#[derive(Clone, Debug, Serialize)]
pub struct GemmRow {
    pub model: &'static str,
    pub layer: &'static str,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub fwd_tflops: Option<f64>,
    pub bwd_tflops: Option<f64>,
    pub fwd_pct_of_peak: Option<f64>,
    pub bwd_pct_of_peak: Option<f64>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct GemmReport {
    pub peak: Option<Peak>,
    pub rows: Vec<GemmRow>,
}

/// Layer GEMMs of Llama-3-8B (width 4096, 32 query and 8 key/value heads of 128, MLP 14336)
/// and DiT-XL (width 1152, MLP 4608): `(model, layer, in, out)`.
const LAYERS: &[(&str, &str, usize, usize)] = &[
    ("llama3-8b", "qkv", 4096, 6144),
    ("llama3-8b", "attn out", 4096, 4096),
    ("llama3-8b", "mlp gate+up", 4096, 28672),
    ("llama3-8b", "mlp down", 14336, 4096),
    ("dit-xl", "qkv", 1152, 3456),
    ("dit-xl", "attn out", 1152, 1152),
    ("dit-xl", "mlp up", 1152, 4608),
    ("dit-xl", "mlp down", 4608, 1152),
];

pub fn run<B: MatmulOps>(
    be: &B,
    s: &Sizes,
    deadline: &Deadline,
    skipped: &mut Vec<String>,
) -> Result<GemmReport> {
    let min = Duration::from_millis(s.min_ms);
    let p = s.peak;
    // Measured first and again last (clocks settle), keeping the better.
    let peak_dims = MatmulDims::linear(p, p, p);
    if deadline.passed() {
        skipped.push("gemm: every shape (time limit)".into());
        return Ok(GemmReport {
            peak: None,
            rows: Vec::new(),
        });
    }
    let first = forward(be, peak_dims, min)?;
    let mut rows = Vec::new();
    for &(model, layer, inp, out) in LAYERS {
        let (k, n) = (inp / s.gemm_shrink, out / s.gemm_shrink);
        if deadline.passed() {
            skipped.push(format!("gemm: {model} {layer} (time limit)"));
            continue;
        }
        let d = MatmulDims::linear(s.gemm_rows, k, n);
        let flops = 2.0 * (d.m * d.n * d.k) as f64;
        let mut row = GemmRow {
            model,
            layer,
            m: d.m,
            n,
            k,
            fwd_tflops: None,
            bwd_tflops: None,
            fwd_pct_of_peak: None,
            bwd_pct_of_peak: None,
            error: None,
        };
        match forward(be, d, min).and_then(|f| Ok((f, backward(be, d, min)?))) {
            Ok((tf, tb)) => {
                row.fwd_tflops = Some(tflops(flops, tf));
                row.bwd_tflops = Some(tflops(2.0 * flops, tb));
            }
            Err(e) => row.error = Some(format!("{e:#}")),
        }
        rows.push(row);
    }
    let peak_s = if deadline.passed() {
        first
    } else {
        first.min(forward(be, peak_dims, min)?)
    };
    let peak = tflops(2.0 * (p * p * p) as f64, peak_s);
    for r in &mut rows {
        r.fwd_pct_of_peak = r.fwd_tflops.map(|t| 100.0 * t / peak);
        r.bwd_pct_of_peak = r.bwd_tflops.map(|t| 100.0 * t / peak);
    }
    Ok(GemmReport {
        peak: Some(Peak {
            m: p,
            n: p,
            k: p,
            dtype: "bf16",
            tflops: peak,
        }),
        rows,
    })
}

/// Seconds per bf16 forward (bf16 output).
fn forward<B: MatmulOps>(be: &B, d: MatmulDims, min: Duration) -> Result<f64> {
    let a = tiled(be, DType::BF16, d.m * d.k, 1)?;
    let w = tiled(be, DType::BF16, d.n * d.k, 2)?;
    let mut out = be.alloc(DType::BF16, d.m * d.n)?;
    per_call(be, min, || {
        Ok(be.matmul_forward(B::view_mut(&mut out), B::view(&a), B::view(&w), None, d)?)
    })
}

/// Seconds per bf16 backward: `da` in bf16, `db` accumulated in f32 (master-weight gradients).
fn backward<B: MatmulOps>(be: &B, d: MatmulDims, min: Duration) -> Result<f64> {
    let a = tiled(be, DType::BF16, d.m * d.k, 1)?;
    let w = tiled(be, DType::BF16, d.n * d.k, 2)?;
    let dout = tiled(be, DType::BF16, d.m * d.n, 3)?;
    let mut da = be.alloc(DType::BF16, d.m * d.k)?;
    let mut dw = be.alloc(DType::F32, d.n * d.k)?;
    per_call(be, min, || {
        Ok(be.matmul_backward(
            Some(B::view_mut(&mut da)),
            Some(B::view_mut(&mut dw)),
            None,
            B::view(&dout),
            B::view(&a),
            B::view(&w),
            d,
        )?)
    })
}
