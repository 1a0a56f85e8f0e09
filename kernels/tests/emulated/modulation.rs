//! kernels/cuda/modulation.cu against the CPU backend: modulate and gate, forward and backward,
//! f32 and bf16, with separate (B, C) conditioning buffers and with strided chunks of a fused
//! AdaLN projection, the token sums split into one chunk, a few, and more chunks than tokens.
//!
//! Tolerances, with u = 2⁻²⁴ (and one bf16 ulp more for bf16 results, see `bounds`):
//! - `dx = dout·(1 + scale)` and `dy = dout·gate` are the CPU's operations with nothing to fuse:
//!   the same bits.
//! - `out = x·(1 + scale) + shift` and `residual += gate·y`: a GPU build may fuse the multiply
//!   and the add, skipping one rounding: u·|x·(1 + scale)|, u·|gate·y|.
//! - dshift, dscale, dgate: T terms summed in chunks, the chunks in order (the CPU: in order):
//!   two orders of one sum, plus a fused multiply-add per term, (2T + 2)·u·Σ_t|term|. With one
//!   chunk the order is the CPU's, and the emulator (no fusing) gives the same bits.
//!
//! Entries of the strided gradient buffers between the conditioning rows must keep their bits.

use super::bounds::*;
use super::*;
use crate::harness::{cpu, f64s, host, rand_vec, zeros};
use weft_kernels::*;

fn lib() -> &'static Shim {
    shim("modulation", &[])
}

const DTYPES: [DType; 2] = [DType::F32, DType::BF16];

/// (B, T, C, cond_stride): one element; separate buffers; fused 6C chunks; a stride that is
/// no multiple of C; widths and token counts off the 256-thread block.
const SHAPES: [(usize, usize, usize, usize); 5] = [
    (1, 1, 1, 1),
    (2, 5, 37, 37),
    (3, 17, 100, 600),
    (2, 33, 300, 307),
    (1, 64, 257, 6 * 257),
];

/// The token chunks P of the backward for case `k` of a stream of `t` tokens.
fn chunks(k: usize, t: usize) -> usize {
    [1, 3, t + 2][k % 3]
}

fn suffix(dt: DType) -> &'static str {
    if dt == DType::BF16 {
        "bf16"
    } else {
        "f32"
    }
}

fn record(what: &str, (worst, ratio): (f64, f64)) {
    eprintln!("{what:<48} max |Δ| {worst:.3e}, max |Δ| / allowance {ratio:.3}");
}

fn sizes(d: &ModDims) -> [Arg; 4] {
    [d.b, d.t, d.c, d.cond_stride].map(|v| Arg::U64(v as u64))
}

/// The conditioning row entry of stream element `i`, and whether buffer index `k` lies on a row.
fn cond_at(d: &ModDims, i: usize) -> usize {
    i / (d.t * d.c) * d.cond_stride + i % d.c
}

fn on_row(d: &ModDims, k: usize) -> bool {
    k % d.cond_stride < d.c
}

/// Every entry between the rows still holds its bits from `before`.
fn gaps_untouched(what: &str, got: &HostVec, before: &HostVec, d: &ModDims) {
    let (g, b) = (f64s(got), f64s(before));
    for k in (0..g.len()).filter(|&k| !on_row(d, k)) {
        assert!(
            g[k].to_bits() == b[k].to_bits(),
            "{what}: entry {k}, between conditioning rows, was written"
        );
    }
}

/// The second kernel of a conditioning gradient.
fn sum_cond(dcond: &mut HostVec, part: &mut HostVec, parts: usize, d: &ModDims) {
    let kernel = if dcond.dtype() == DType::BF16 {
        "cond_grad_sum_bf16_f32"
    } else {
        "cond_grad_sum_f32"
    };
    let [b, _, c, stride] = sizes(d);
    let grid = Dim3 {
        x: d.c.div_ceil(256) as u32,
        y: d.b as u32,
        z: 1,
    };
    lib().launch(
        kernel,
        grid,
        dim(256),
        0,
        &[buf(dcond), buf(part), Arg::U64(parts as u64), b, c, stride],
    );
}

/// The bound on a conditioning gradient: Σ_t |term(b, t, i)| per row entry, 0 in the gaps.
fn token_sum_bound(d: &ModDims, term: impl Fn(usize) -> f64) -> Vec<f64> {
    let mut bound = vec![0.0; d.cond_len()];
    for i in 0..d.b * d.t * d.c {
        bound[cond_at(d, i)] += term(i).abs();
    }
    bound.iter().map(|s| sum_order(d.t + 1) * s).collect()
}

#[test]
fn modulate_and_gate_forward() {
    let c0 = cpu();
    for dt in DTYPES {
        for &(b, t, c, stride) in &SHAPES {
            let d = ModDims {
                b,
                t,
                c,
                cond_stride: stride,
            };
            let n = b * t * c;
            let mut x = host(&rand_vec(1, n), dt);
            let mut shift = host(&rand_vec(2, d.cond_len()), dt);
            let mut scale = host(&rand_vec(3, d.cond_len()), dt);
            let mut want = zeros(dt, n);
            c0.modulate_forward(want.view_mut(), x.view(), shift.view(), scale.view(), d)
                .unwrap();
            let mut got = host(&rand_vec(4, n), dt);
            let kernel = format!("modulate_forward_{}", suffix(dt));
            let mut args = vec![buf(&mut got), buf(&mut x), buf(&mut shift), buf(&mut scale)];
            args.extend(sizes(&d));
            lib().launch_1d(&kernel, n, &args);
            let (xs, sc) = (f64s(&x), f64s(&scale));
            let what = format!("{kernel} ({b}, {t}, {c}) stride {stride}");
            record(
                &what,
                assert_within(&what, &got, &want, |i| {
                    U * (xs[i] * (1.0 + sc[cond_at(&d, i)])).abs()
                }),
            );

            let mut gate = host(&rand_vec(5, d.cond_len()), dt);
            let mut y = host(&rand_vec(6, n), dt);
            let mut want = host(&rand_vec(7, n), dt);
            let mut got = want.clone();
            c0.gate_forward(want.view_mut(), gate.view(), y.view(), d)
                .unwrap();
            let kernel = format!("gate_forward_{}", suffix(dt));
            let mut args = vec![buf(&mut got), buf(&mut gate), buf(&mut y)];
            args.extend(sizes(&d));
            lib().launch_1d(&kernel, n, &args);
            let (gs, ys) = (f64s(&gate), f64s(&y));
            let what = format!("{kernel} ({b}, {t}, {c}) stride {stride}");
            record(
                &what,
                assert_within(&what, &got, &want, |i| U * (gs[cond_at(&d, i)] * ys[i]).abs()),
            );
        }
    }
}

#[test]
fn modulate_backward() {
    let c0 = cpu();
    for dt in DTYPES {
        for (k, &(b, t, c, stride)) in SHAPES.iter().enumerate() {
            let d = ModDims {
                b,
                t,
                c,
                cond_stride: stride,
            };
            let n = b * t * c;
            let (mut dout, mut x) = (host(&rand_vec(8, n), dt), host(&rand_vec(9, n), dt));
            let mut scale = host(&rand_vec(10, d.cond_len()), dt);
            // Gradients start as garbage: dx and the conditioning rows are overwritten, the
            // entries between the rows kept.
            let (dsh0, dsc0) = (
                host(&rand_vec(11, d.cond_len()), dt),
                host(&rand_vec(12, d.cond_len()), dt),
            );
            let (mut dx, mut dshift, mut dscale) = (zeros(dt, n), dsh0.clone(), dsc0.clone());
            c0.modulate_backward(
                dx.view_mut(),
                dshift.view_mut(),
                dscale.view_mut(),
                dout.view(),
                x.view(),
                scale.view(),
                d,
            )
            .unwrap();

            let parts = chunks(k, t);
            let (mut gdx, mut gdsh, mut gdsc) = (host(&rand_vec(13, n), dt), dsh0.clone(), dsc0.clone());
            let mut sh_part = host(&rand_vec(14, b * parts * c), DType::F32);
            let mut sc_part = host(&rand_vec(15, b * parts * c), DType::F32);
            let kernel = format!("modulate_backward_{}", suffix(dt));
            let mut args = vec![
                buf(&mut gdx),
                buf(&mut sh_part),
                buf(&mut sc_part),
                buf(&mut dout),
                buf(&mut x),
                buf(&mut scale),
            ];
            args.extend(sizes(&d));
            let grid = Dim3 {
                x: c.div_ceil(128) as u32,
                y: parts as u32,
                z: b as u32,
            };
            lib().launch(&kernel, grid, dim(128), 0, &args);
            sum_cond(&mut gdsh, &mut sh_part, parts, &d);
            sum_cond(&mut gdsc, &mut sc_part, parts, &d);

            let what = format!("{kernel} ({b}, {t}, {c}) stride {stride}, {parts} chunks");
            assert_same_bits(&format!("{what} dx"), &gdx, &dx);
            let (dys, xs) = (f64s(&dout), f64s(&x));
            let bsh = token_sum_bound(&d, |i| dys[i]);
            let bsc = token_sum_bound(&d, |i| dys[i] * xs[i]);
            record(
                &format!("{what} dshift"),
                assert_within(&format!("{what} dshift"), &gdsh, &dshift, |j| bsh[j]),
            );
            record(
                &format!("{what} dscale"),
                assert_within(&format!("{what} dscale"), &gdsc, &dscale, |j| bsc[j]),
            );
            gaps_untouched(&format!("{what} dshift"), &gdsh, &dsh0, &d);
            gaps_untouched(&format!("{what} dscale"), &gdsc, &dsc0, &d);
        }
    }
}

#[test]
fn gate_backward() {
    let c0 = cpu();
    for dt in DTYPES {
        for (k, &(b, t, c, stride)) in SHAPES.iter().enumerate() {
            let d = ModDims {
                b,
                t,
                c,
                cond_stride: stride,
            };
            let n = b * t * c;
            let (mut dout, mut y) = (host(&rand_vec(16, n), dt), host(&rand_vec(17, n), dt));
            let mut gate = host(&rand_vec(18, d.cond_len()), dt);
            let dg0 = host(&rand_vec(19, d.cond_len()), dt);
            let (mut dy, mut dgate) = (zeros(dt, n), dg0.clone());
            c0.gate_backward(
                dy.view_mut(),
                dgate.view_mut(),
                dout.view(),
                gate.view(),
                y.view(),
                d,
            )
            .unwrap();

            let parts = chunks(k + 1, t);
            let (mut gdy, mut gdg) = (host(&rand_vec(20, n), dt), dg0.clone());
            let mut part = host(&rand_vec(21, b * parts * c), DType::F32);
            let kernel = format!("gate_backward_{}", suffix(dt));
            let mut args = vec![
                buf(&mut gdy),
                buf(&mut part),
                buf(&mut dout),
                buf(&mut gate),
                buf(&mut y),
            ];
            args.extend(sizes(&d));
            let grid = Dim3 {
                x: c.div_ceil(64) as u32,
                y: parts as u32,
                z: b as u32,
            };
            lib().launch(&kernel, grid, dim(64), 0, &args);
            sum_cond(&mut gdg, &mut part, parts, &d);

            let what = format!("{kernel} ({b}, {t}, {c}) stride {stride}, {parts} chunks");
            assert_same_bits(&format!("{what} dy"), &gdy, &dy);
            let (dos, ys) = (f64s(&dout), f64s(&y));
            let bg = token_sum_bound(&d, |i| dos[i] * ys[i]);
            record(
                &format!("{what} dgate"),
                assert_within(&format!("{what} dgate"), &gdg, &dgate, |j| bg[j]),
            );
            gaps_untouched(&format!("{what} dgate"), &gdg, &dg0, &d);
        }
    }
}
