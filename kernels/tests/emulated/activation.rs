//! kernels/cuda/activation.cu against the CPU backend, f32 and bf16, forward and backward.
//!
//! The kernels write the CPU's formulas in the CPU's order, and the emulator's `expf`/`tanhf`
//! are the C library's, which the CPU backend calls too; a GPU's differ by an ulp or two. So
//! f32 results may differ by [`F32_ULPS`], and a bf16 result, one rounding of such an f32
//! value, by one bf16 ulp (the rounding may land on the neighbour).

use super::*;
use crate::harness::{cpu, rand_vec, zeros};
use weft_kernels::*;

const F32_ULPS: u64 = 2;

fn lib() -> &'static Shim {
    shim("activation", &[])
}

fn max_ulps(dt: DType) -> u64 {
    if dt == DType::BF16 {
        1
    } else {
        F32_ULPS
    }
}

/// `n` inputs of `dt` (bf16-exact for bf16) over about [-6, 6), with zeros, tiny values and
/// values far enough out that exp and tanh saturate mixed in.
fn inputs(seed: u64, n: usize, dt: DType) -> HostVec {
    const SPECIAL: [f64; 12] = [
        0.0, -0.0, 1e-3, -1e-3, 8.0, -8.0, 20.0, -20.0, 90.0, -90.0, 1e4, -1e4,
    ];
    let x: Vec<f64> = rand_vec(seed, n)
        .iter()
        .enumerate()
        .map(|(i, v)| {
            if i % 7 == 3 {
                SPECIAL[(i / 7) % SPECIAL.len()]
            } else {
                6.0 * v
            }
        })
        .collect();
    match dt {
        DType::F32 => x.iter().map(|&v| v as f32).collect::<Vec<_>>().into(),
        DType::BF16 => bf16s(&x).into(),
        _ => unreachable!(),
    }
}

fn suffix(dt: DType) -> &'static str {
    if dt == DType::BF16 {
        "bf16"
    } else {
        "f32"
    }
}

type Unary = fn(&CpuBackend, HostMut<'_>, HostRef<'_>, usize) -> Result<()>;
type UnaryGrad = fn(&CpuBackend, HostMut<'_>, HostRef<'_>, HostRef<'_>, usize) -> Result<()>;

fn unary(name: &str, fwd: Unary, bwd: UnaryGrad) {
    let c = cpu();
    for dt in [DType::F32, DType::BF16] {
        for n in ODD_SIZES {
            let (mut x, mut dout) = (inputs(1, n, dt), inputs(2, n, dt));
            let kernel = format!("{name}_forward_{}", suffix(dt));
            let mut want = zeros(dt, n);
            fwd(&c, want.view_mut(), x.view(), n).unwrap();
            let mut got = zeros(dt, n);
            lib().launch_1d(&kernel, n, &[buf(&mut got), buf(&mut x), Arg::U64(n as u64)]);
            assert_close(&format!("{kernel} n={n}"), &got, &want, max_ulps(dt));

            let kernel = format!("{name}_backward_{}", suffix(dt));
            let mut want = zeros(dt, n);
            bwd(&c, want.view_mut(), dout.view(), x.view(), n).unwrap();
            // The backward overwrites: start from garbage.
            let mut got = inputs(3, n, dt);
            let args = [buf(&mut got), buf(&mut dout), buf(&mut x), Arg::U64(n as u64)];
            lib().launch_1d(&kernel, n, &args);
            assert_close(&format!("{kernel} n={n}"), &got, &want, max_ulps(dt));
        }
    }
}

#[test]
fn gelu() {
    unary("gelu", CpuBackend::gelu_forward, CpuBackend::gelu_backward);
}

#[test]
fn silu() {
    unary("silu", CpuBackend::silu_forward, CpuBackend::silu_backward);
}

#[test]
fn swiglu() {
    let c = cpu();
    for dt in [DType::F32, DType::BF16] {
        for (rows, h) in [(1, 1), (3, 100), (7, 255), (2, 513), (1, 1000)] {
            let d = SwigluDims { n: rows, h };
            let (mut x, mut dout) = (inputs(4, rows * 2 * h, dt), inputs(5, rows * h, dt));
            let sizes = [Arg::U64(rows as u64), Arg::U64(h as u64)];
            let kernel = format!("swiglu_forward_{}", suffix(dt));
            let mut want = zeros(dt, rows * h);
            c.swiglu_forward(want.view_mut(), x.view(), d).unwrap();
            let mut got = zeros(dt, rows * h);
            lib().launch_1d(
                &kernel,
                rows * h,
                &[buf(&mut got), buf(&mut x), sizes[0], sizes[1]],
            );
            assert_close(&format!("{kernel} ({rows}, {h})"), &got, &want, max_ulps(dt));

            let kernel = format!("swiglu_backward_{}", suffix(dt));
            let mut want = zeros(dt, rows * 2 * h);
            c.swiglu_backward(want.view_mut(), dout.view(), x.view(), d)
                .unwrap();
            let mut got = inputs(6, rows * 2 * h, dt);
            let args = [buf(&mut got), buf(&mut dout), buf(&mut x), sizes[0], sizes[1]];
            lib().launch_1d(&kernel, rows * h, &args);
            assert_close(&format!("{kernel} ({rows}, {h})"), &got, &want, max_ulps(dt));
        }
    }
}
