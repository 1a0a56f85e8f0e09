//! kernels/cuda/optim.cu against the CPU backend (the optimizer is f32; Σx² also reads bf16).
//!
//! - AdamW and AdEMAMix over a segment table: each segment must step exactly as the CPU's
//!   update over its range with `lr · lr_scale` and its weight decay on or off. The kernels
//!   derive the per-segment constants in f64 and round them once, then run the CPU's f32
//!   operations in its order: bitwise. (A GPU may contract `a·b + c` into an FMA: an ulp or
//!   two per step there.) Elements in no segment must stay as they were.
//! - Σx²: every square of an f32 or bf16 value is exact in f64 and both sides add in f64, the
//!   CPU in chunks of 16384 in sequence, the kernel per thread, over a butterfly of 5 + 5
//!   levels, and over the partials. The two f64 sums differ by at most
//!   `(k_cpu + k_kernel)·2⁻⁵³·Σ` with `k_cpu = min(n, 16384) + ⌈n/16384⌉` and
//!   `k_kernel = 8192/B + 10 + ⌈parts/256⌉ + 10 + 1`; far below an f32 ulp, so an f32 `acc`
//!   is within one ulp (a rounding boundary between the two), an f64 one within that bound.
//! - l2norm: the forward rounds `√Σ` (f64) to f32 once: within one ulp; the backward is
//!   `(dout/‖x‖)·x` in f32 as the CPU: bitwise.
//!
//! Measured (this suite, emulated): the updates and the l2norm backward bitwise; Σx² and the
//! l2norm forward bitwise in f32, Σx² into f64 equal to the CPU's; the partials within 1.8e-16
//! relative of their chunk's sum.

use super::*;
use crate::harness::{cpu, host, rand_vec, zeros};
use weft_kernels::*;

const SUM_CHUNK: usize = 8192;

fn lib() -> &'static Shim {
    shim("optim", &[])
}

/// One entry of the device segment table.
#[derive(Clone, Copy, Debug)]
struct Segment {
    offset: usize,
    length: usize,
    lr_scale: f32,
    decay: bool,
}

/// The table as the kernels read it: 24 bytes per segment (u64 offset, u64 length, f32
/// lr_scale, u32 decay, little-endian), as u64 words so it is 8-byte aligned.
fn table(segs: &[Segment]) -> Vec<u64> {
    segs.iter()
        .flat_map(|s| {
            [
                s.offset as u64,
                s.length as u64,
                s.lr_scale.to_bits() as u64 | (s.decay as u64) << 32,
            ]
        })
        .collect()
}

/// A shard of 5000 elements: a segment, a one-element one without decay, an empty one, a gap,
/// one with a small lr, another without decay, and an uncovered tail.
fn segments() -> (usize, Vec<Segment>) {
    let s = |offset, length, lr_scale, decay| Segment {
        offset,
        length,
        lr_scale,
        decay,
    };
    (
        5000,
        vec![
            s(0, 1700, 1.0, true),
            s(1700, 1, 0.5, false),
            s(1701, 0, 3.0, true),
            s(1709, 2200, 0.1, true),
            s(3909, 1000, 2.0, false),
        ],
    )
}

fn f32s(v: &HostVec) -> &[f32] {
    match v {
        HostVec::F32(x) => x,
        _ => panic!("not f32"),
    }
}

/// `[lo, hi)` of a buffer as its own vector.
fn part(v: &HostVec, lo: usize, hi: usize) -> HostVec {
    f32s(v)[lo..hi].to_vec().into()
}

fn put(v: &mut HostVec, lo: usize, x: &HostVec) {
    let HostVec::F32(v) = v else { panic!("not f32") };
    v[lo..lo + x.len()].copy_from_slice(f32s(x));
}

/// The hyper-parameters of step `step`.
fn hyper(step: u32) -> AdamW {
    AdamW {
        lr: 3e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        step,
        grad_scale: 0.75,
    }
}

/// (block, grid) for a shard of n: the documented launch, small blocks so chunks of 16·B
/// elements cut through segments, and fewer blocks than chunks (blocks stride).
fn configs(n: usize) -> [(u32, u32); 3] {
    [
        (256, n.div_ceil(16 * 256) as u32),
        (32, n.div_ceil(16 * 32) as u32),
        (64, 2),
    ]
}

/// Steps `state` (params, m, [m2,] v) three times on the CPU, segment by segment, and with the
/// kernel over the whole table, comparing every buffer bitwise after each step.
fn run_updates(mix: Option<Mix>) {
    let c = cpu();
    let (n, segs) = segments();
    let mut tab = table(&segs);
    for (block, grid) in configs(n) {
        let nbuf: usize = if mix.is_some() { 4 } else { 3 };
        let mut want: Vec<HostVec> = (0..nbuf)
            .map(|i| host(&rand_vec(20 + i as u64, n), DType::F32))
            .collect();
        // Second moments start non-negative.
        let vi = nbuf - 1;
        want[vi] = host(
            &rand_vec(30, n).iter().map(|x| x.abs() * 1e-3).collect::<Vec<_>>(),
            DType::F32,
        );
        let mut got = want.clone();
        for step in 1..=3 {
            let h = hyper(step);
            let mut grads = host(&rand_vec(40 + step as u64, n), DType::F32);
            for s in &segs {
                let (lo, hi) = (s.offset, s.offset + s.length);
                let hs = AdamW {
                    lr: h.lr * s.lr_scale as f64,
                    weight_decay: if s.decay { h.weight_decay } else { 0.0 },
                    ..h
                };
                let mut p: Vec<HostVec> = want.iter().map(|b| part(b, lo, hi)).collect();
                let g = part(&grads, lo, hi);
                match (mix, &mut p[..]) {
                    (None, [pp, m, v]) => {
                        c.adamw_update(pp.view_mut(), m.view_mut(), v.view_mut(), g.view(), hs, hi - lo)
                    }
                    (Some(x), [pp, m, m2, v]) => c.ademamix_update(
                        pp.view_mut(),
                        m.view_mut(),
                        m2.view_mut(),
                        v.view_mut(),
                        g.view(),
                        hs,
                        x,
                        hi - lo,
                    ),
                    _ => unreachable!(),
                }
                .unwrap();
                for (b, p) in want.iter_mut().zip(&p) {
                    put(b, lo, p);
                }
            }
            let (b1, b2) = (h.beta1, h.beta2);
            let bc1 = 1.0 - b1.powi(step as i32);
            let bc2_sqrt = ((1.0 - b2.powi(step as i32)).sqrt()) as f32;
            let mut args: Vec<Arg> = got.iter_mut().map(buf).collect();
            args.extend([
                buf(&mut grads),
                Arg::Ptr(tab.as_mut_ptr().cast()),
                Arg::U64(segs.len() as u64),
                Arg::U64(n as u64),
                Arg::F64(h.lr),
                Arg::F64(h.weight_decay),
            ]);
            let kernel = match mix {
                None => {
                    args.extend([Arg::F64(bc1), Arg::F32(b1 as f32), Arg::F32(b2 as f32)]);
                    "adamw_update_f32"
                }
                Some(x) => {
                    args.extend(
                        [bc1 as f32, b1 as f32, b2 as f32, x.beta3 as f32, x.alpha as f32].map(Arg::F32),
                    );
                    "ademamix_update_f32"
                }
            };
            args.extend([h.eps as f32, bc2_sqrt, h.grad_scale as f32].map(Arg::F32));
            lib().launch(kernel, dim(grid), dim(block), 0, &args);
            let names = if mix.is_some() {
                ["params", "m", "m2", "v"].as_slice()
            } else {
                ["params", "m", "v"].as_slice()
            };
            for ((g, w), name) in got.iter().zip(&want).zip(names) {
                assert_close(
                    &format!("{kernel} step {step} {name} (block {block}, grid {grid})"),
                    g,
                    w,
                    0,
                );
            }
        }
    }
}

#[test]
fn adamw_over_a_segment_table() {
    run_updates(None);
}

/// A segment that runs past the shard (`n`) steps only its part inside; nothing past `n` is
/// touched.
#[test]
fn a_segment_past_the_shard_stops_at_its_end() {
    let c = cpu();
    let (n, len) = (100usize, 140usize);
    let h = hyper(1);
    let seg = Segment {
        offset: 90,
        length: 50,
        lr_scale: 1.0,
        decay: true,
    };
    let mut tab = table(&[seg]);
    let mut got: Vec<HostVec> = (0..3).map(|i| host(&rand_vec(70 + i, len), DType::F32)).collect();
    got[2] = host(&vec![1e-3; len], DType::F32);
    let mut grads = host(&rand_vec(73, len), DType::F32);
    let mut want = got.clone();
    let mut p: Vec<HostVec> = want.iter().map(|b| part(b, 90, n)).collect();
    let [pp, m, v] = &mut p[..] else { unreachable!() };
    let g = part(&grads, 90, n);
    c.adamw_update(pp.view_mut(), m.view_mut(), v.view_mut(), g.view(), h, n - 90)
        .unwrap();
    for (b, p) in want.iter_mut().zip(&p) {
        put(b, 90, p);
    }
    let mut args: Vec<Arg> = got.iter_mut().map(buf).collect();
    args.extend([
        buf(&mut grads),
        Arg::Ptr(tab.as_mut_ptr().cast()),
        Arg::U64(1),
        Arg::U64(n as u64),
        Arg::F64(h.lr),
        Arg::F64(h.weight_decay),
        Arg::F64(1.0 - h.beta1),
    ]);
    let bc2_sqrt = (1.0 - h.beta2).sqrt() as f32;
    args.extend(
        [
            h.beta1 as f32,
            h.beta2 as f32,
            h.eps as f32,
            bc2_sqrt,
            h.grad_scale as f32,
        ]
        .map(Arg::F32),
    );
    lib().launch("adamw_update_f32", dim(1), dim(32), 0, &args);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_close(&format!("adamw_update_f32 buffer {i}"), g, w, 0);
    }
}

#[test]
fn ademamix_over_a_segment_table() {
    run_updates(Some(Mix {
        beta3: 0.9999,
        alpha: 5.0,
    }));
}

/// The first pass of Σx² over `x` (f32 or bf16) on `grid` blocks of 256 (ceil(n / SUM_CHUNK)
/// when None). Checks each partial against the sum of its chunk's squares (each exact in f64,
/// summed with compensation): within `(8192/256 + 10)·2⁻⁵³` relative, which the f64
/// accumulation guarantees and an f32 one would not.
fn sum_squares_partials(x: &mut HostVec, n: usize, grid: Option<u32>) -> HostVec {
    let parts = n.div_ceil(SUM_CHUNK);
    // Garbage partials: every one must be written.
    let mut partials: HostVec = vec![f64::NAN; parts].into();
    if n > 0 {
        let partial = if x.dtype() == DType::BF16 {
            "sum_squares_partial_bf16"
        } else {
            "sum_squares_partial_f32"
        };
        let grid = grid.unwrap_or(parts as u32);
        lib().launch(
            partial,
            dim(grid),
            dim(256),
            0,
            &[buf(&mut partials), buf(x), Arg::U64(n as u64)],
        );
    }
    let xs = crate::harness::f64s(x);
    let HostVec::F64(got) = &partials else {
        unreachable!()
    };
    for (b, chunk) in xs.chunks(SUM_CHUNK).enumerate() {
        let exact = neumaier_sum(chunk.iter().map(|v| v * v));
        let tol = (SUM_CHUNK / 256 + 10) as f64 * f64::EPSILON / 2.0 * exact;
        assert!(
            (got[b] - exact).abs() <= tol,
            "sum_squares_partial [{}] n={n}: partial {b} is {}, the chunk's Σx² {exact} (at most {tol:e} apart)",
            x.dtype(),
            got[b]
        );
    }
    partials
}

/// Σ of non-negative `terms` to within an f64 rounding (Neumaier's compensated sum).
fn neumaier_sum(terms: impl Iterator<Item = f64>) -> f64 {
    let (mut s, mut c) = (0.0f64, 0.0f64);
    for t in terms {
        let u = s + t;
        c += if s >= t { (s - u) + t } else { (t - u) + s };
        s = u;
    }
    s + c
}

/// Σx² of `x` (f32 or bf16) into `acc` (f32 or f64) with both kernels: the partials, then the
/// one-block finish `finish`.
fn sum_squares_kernel(finish: &str, acc: &mut HostVec, x: &mut HostVec, n: usize, grid: Option<u32>) {
    let mut partials = sum_squares_partials(x, n, grid);
    let parts = n.div_ceil(SUM_CHUNK) as u64;
    lib().launch(
        finish,
        dim(1),
        dim(256),
        0,
        &[buf(acc), buf(&mut partials), Arg::U64(parts)],
    );
}

const SUM_SIZES: [(usize, Option<u32>); 7] = [
    (0, None),
    (1, None),
    (255, None),
    (8192, None),
    (8193, None),
    (3 * 8192 + 131, Some(2)),
    (50000, None),
];

#[test]
fn sum_squares_two_pass() {
    let c = cpu();
    // (acc, x) dtypes, the CPU's contract.
    for (adt, xdt, finish) in [
        (DType::F32, DType::F32, "sum_squares_finish_f32"),
        (DType::F32, DType::BF16, "sum_squares_finish_f32"),
        (DType::F64, DType::BF16, "sum_squares_finish_f64"),
    ] {
        for (n, grid) in SUM_SIZES {
            let mut x = host(&rand_vec(50, n).iter().map(|v| 3.0 * v).collect::<Vec<_>>(), xdt);
            // acc accumulates: start from a value.
            let mut want = host(&[1.5], adt);
            c.sum_squares(want.view_mut(), x.view(), n).unwrap();
            let mut got = host(&[1.5], adt);
            sum_squares_kernel(finish, &mut got, &mut x, n, grid);
            let what = format!("{finish} x [{xdt}] n={n}");
            match (&got, &want) {
                (HostVec::F64(g), HostVec::F64(w)) => {
                    let parts = n.div_ceil(SUM_CHUNK);
                    let k_cpu = n.min(16384) + n.div_ceil(16384);
                    let k_kernel = SUM_CHUNK / 256 + 10 + parts.div_ceil(256) + 11;
                    let tol = (k_cpu + k_kernel) as f64 * f64::EPSILON / 2.0 * w[0].abs();
                    assert!(
                        (g[0] - w[0]).abs() <= tol,
                        "{what}: emulated kernel {}, CPU {} (at most {tol:e} apart)",
                        g[0],
                        w[0]
                    );
                }
                _ => assert_close(&what, &got, &want, 1),
            }
        }
    }
}

/// `sum` (acc += alpha·Σx) with its two kernels against the CPU: signed values, so the bound
/// is absolute, in units of `|alpha|·Σ|x|`: both sum in f64, the CPU in chunks of 16384
/// (`k_cpu` roundings on a path), the kernels per thread, then a block tree, then the
/// partials (`k_kernel`); an f32 `acc` adds one f32 rounding of the result.
#[test]
fn sum_two_pass() {
    let c = cpu();
    for (adt, xdt) in [
        (DType::F32, DType::F32),
        (DType::F64, DType::F32),
        (DType::F32, DType::BF16),
        (DType::F64, DType::BF16),
    ] {
        for (n, grid) in SUM_SIZES {
            let alpha = -0.37;
            let mut x = host(&rand_vec(51, n).iter().map(|v| 3.0 * v).collect::<Vec<_>>(), xdt);
            let mut want = host(&[1.5], adt);
            c.sum(want.view_mut(), x.view(), alpha, n).unwrap();
            let parts = n.div_ceil(SUM_CHUNK);
            let mut partials: HostVec = vec![f64::NAN; parts].into();
            if n > 0 {
                let partial = if xdt == DType::BF16 {
                    "sum_partial_bf16"
                } else {
                    "sum_partial_f32"
                };
                let g = grid.unwrap_or(parts as u32);
                lib().launch(
                    partial,
                    dim(g),
                    dim(256),
                    0,
                    &[buf(&mut partials), buf(&mut x), Arg::U64(n as u64)],
                );
            }
            let mut got = host(&[1.5], adt);
            let finish = if adt == DType::F64 {
                "sum_finish_f64"
            } else {
                "sum_finish_f32"
            };
            lib().launch(
                finish,
                dim(1),
                dim(256),
                0,
                &[
                    buf(&mut got),
                    buf(&mut partials),
                    Arg::U64(parts as u64),
                    Arg::F64(alpha),
                ],
            );
            let (g, w) = (crate::harness::f64s(&got)[0], crate::harness::f64s(&want)[0]);
            let abs: f64 = crate::harness::f64s(&x).iter().map(|v| v.abs()).sum::<f64>() * alpha.abs() + 1.5;
            let k_cpu = n.min(16384) + n.div_ceil(16384) + 2;
            let k_kernel = SUM_CHUNK / 256 + 10 + parts.div_ceil(256) + 13;
            let mut tol = (k_cpu + k_kernel) as f64 * f64::EPSILON / 2.0 * abs;
            if adt == DType::F32 {
                tol += w.abs() * f32::EPSILON as f64;
            }
            assert!(
                (g - w).abs() <= tol,
                "{finish} x [{xdt}] n={n}: emulated kernel {g}, CPU {w} (at most {tol:e} apart)"
            );
            // The sum is weighted: without alpha it would be far off.
            if n > 1000 {
                let unweighted = 1.5 + crate::harness::f64s(&x).iter().sum::<f64>();
                assert!(
                    (g - unweighted).abs() > 100.0 * tol,
                    "{finish}: alpha not applied"
                );
            }
        }
    }
}

#[test]
fn l2norm_forward_and_backward() {
    let c = cpu();
    for (n, grid) in SUM_SIZES {
        let zero = n == 8193; // ‖x‖ = 0: the backward writes zeros
        let x: Vec<f64> = if zero { vec![0.0; n] } else { rand_vec(60, n) };
        let mut x = host(&x, DType::F32);
        let mut want = zeros(DType::F32, 1);
        c.l2norm_forward(want.view_mut(), x.view(), n).unwrap();
        let parts = n.div_ceil(SUM_CHUNK);
        let mut partials = sum_squares_partials(&mut x, n, grid);
        let mut norm: HostVec = vec![f32::NAN].into();
        let args = [buf(&mut norm), buf(&mut partials), Arg::U64(parts as u64)];
        lib().launch("l2norm_forward_finish_f32", dim(1), dim(256), 0, &args);
        assert_close(&format!("l2norm_forward n={n}"), &norm, &want, 1);

        let mut dout: HostVec = vec![-1.25f32].into();
        let mut want_dx = zeros(DType::F32, n);
        c.l2norm_backward(want_dx.view_mut(), dout.view(), x.view(), norm.view(), n)
            .unwrap();
        let mut got_dx = host(&rand_vec(61, n), DType::F32);
        let args = [
            buf(&mut got_dx),
            buf(&mut dout),
            buf(&mut x),
            buf(&mut norm),
            Arg::U64(n as u64),
        ];
        lib().launch_1d("l2norm_backward_f32", n, &args);
        assert_close(&format!("l2norm_backward n={n}"), &got_dx, &want_dx, 0);
    }
}
