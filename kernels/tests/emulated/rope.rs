//! kernels/cuda/rope.cu against the CPU backend: the rotary embedding forward and backward, f32
//! and bf16 activations with f32 angle tables, odd head dims' halves, token counts and pair
//! counts off the 256-thread block, and in place.
//!
//! Each output is one product minus (or plus) another, the CPU's operations in its order; a GPU
//! build may fuse one multiply into the add, skipping a rounding, so the results may differ by
//! 2u·(|x1·cos| + |x2·sin|) with u = 2⁻²⁴, and bf16 results by one bf16 ulp more (see `bounds`).
//! The emulator does not fuse: it measures 0.

use super::bounds::*;
use super::*;
use crate::harness::{cpu, f64s, host, rand_vec, zeros};
use weft_kernels::*;

fn lib() -> &'static Shim {
    shim("rope", &[])
}

/// (B, T, H, HD): one pair; small heads; a half head dim of 65; a larger batch.
const SHAPES: [(usize, usize, usize, usize); 4] =
    [(1, 1, 1, 2), (2, 5, 3, 16), (1, 7, 2, 130), (3, 11, 4, 64)];

/// The 1-D table: angle (t, i) = t · 10000^(−2i/HD), as f32 cos and sin.
fn tables(t: usize, hd: usize) -> (HostVec, HostVec) {
    let half = hd / 2;
    let angle = |k: usize| (k / half) as f64 * 10000f64.powf(-2.0 * (k % half) as f64 / hd as f64);
    let cos: Vec<f32> = (0..t * half).map(|k| angle(k).cos() as f32).collect();
    let sin: Vec<f32> = (0..t * half).map(|k| angle(k).sin() as f32).collect();
    (cos.into(), sin.into())
}

fn record(what: &str, (worst, ratio): (f64, f64)) {
    eprintln!("{what:<48} max |Δ| {worst:.3e}, max |Δ| / allowance {ratio:.3}");
}

#[test]
fn rope_forward_and_backward() {
    let c0 = cpu();
    for dt in [DType::F32, DType::BF16] {
        let sfx = if dt == DType::BF16 { "bf16" } else { "f32" };
        for &(b, t, h, hd) in &SHAPES {
            let d = RopeDims { b, t, h, hd };
            let (n, half) = (b * t * h * hd, hd / 2);
            let (mut cos, mut sin) = tables(t, hd);
            let (cs, ss) = (f64s(&cos), f64s(&sin));
            let mut x = host(&rand_vec(1, n), dt);
            let xs = f64s(&x);
            // Element e pairs with e ± HD/2 in its head; both see the same angle.
            let bound = |e: usize| {
                let (i, token) = (e % hd % half, e / (h * hd));
                let pair = if e % hd < half { e + half } else { e - half };
                let k = (token % t) * half + i;
                2.0 * U * ((xs[e] * cs[k]).abs() + (xs[pair] * ss[k]).abs())
            };
            let args = |out: &mut HostVec, inp: &mut HostVec, cos: &mut HostVec, sin: &mut HostVec| {
                let mut a = vec![buf(out), buf(inp), buf(cos), buf(sin)];
                a.extend([b, t, h, hd].map(|v| Arg::U64(v as u64)));
                a
            };
            for dir in ["forward", "backward"] {
                let mut want = zeros(dt, n);
                if dir == "forward" {
                    c0.rope_forward(want.view_mut(), x.view(), cos.view(), sin.view(), d)
                        .unwrap();
                } else {
                    c0.rope_backward(want.view_mut(), x.view(), cos.view(), sin.view(), d)
                        .unwrap();
                }
                let kernel = format!("rope_{dir}_{sfx}");
                let mut got = host(&rand_vec(2, n), dt);
                lib().launch_1d(&kernel, n / 2, &args(&mut got, &mut x, &mut cos, &mut sin));
                let what = format!("{kernel} ({b}, {t}, {h}, {hd})");
                record(&what, assert_within(&what, &got, &want, bound));
                // In place: `out` is `inp`.
                let mut inplace = x.clone();
                let ptr = buf(&mut inplace);
                let mut a = args(&mut got, &mut x, &mut cos, &mut sin);
                a[0] = ptr;
                a[1] = ptr;
                lib().launch_1d(&kernel, n / 2, &a);
                assert_same_bits(&format!("{what} in place"), &inplace, &got);
            }
        }
    }
}
