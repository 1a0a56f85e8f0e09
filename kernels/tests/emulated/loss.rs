//! kernels/cuda/loss.cu against the CPU backend, f32 and bf16 logits/predictions (f32
//! statistics), with ignored targets, odd vocabulary sizes up to a few thousand and several
//! block sizes.
//!
//! Tolerances (u = 2⁻²⁴, the f32 unit roundoff; the emulator's `expf`/`logf` are the C
//! library's, which the CPU backend calls too, so every exponential is the same f32 value on
//! both sides and only the order of the sums differs):
//! - Cross-entropy forward. Both sides sum the same positive terms `exp(x − max)`: the CPU in
//!   sequence (at most `V − 1` roundings on any path), the kernel per thread and then over a
//!   butterfly of 5 + 5 levels (at most `k = ⌈V/B⌉ + 9`). Against the exact f64 sum `s` of
//!   those f32 terms, the kernel's `lse` is within `tol_l = 1.01·k·u + 2u·|ln s| + u·|lse|`
//!   (the sum, `logf` within an ulp, and the final add), and its loss
//!   `lse − x_y + z·lse²` within `tol_l·(1 + 2z|lse| + z·tol_l) + u·(|lse − x_y| + 3z·lse² +
//!   |loss|)`. Against the CPU the bound adds the CPU's own (`k = V − 1`).
//! - Cross-entropy backward and MSE backward: the same f32 operations in the same order
//!   (`g·exp(x − lse)·zf`, then `− g` at the target, one rounding to bf16), so bitwise. A GPU
//!   may contract `a·b + c` into an FMA and its `expf` is within 2 ulps: an ulp or two there.
//! - MSE forward: the same f32 terms `(p − t)²`; the kernel adds at most 16 + 10 per chunk and
//!   `⌈parts/256⌉ + 10` over the partials, then divides by n: within `(k + 1)·u` relative of
//!   the exact sum of the terms over n, and within `(k + n)·u` relative of the CPU.
//!
//! Measured (this suite, emulated): `lse` within 5.6e-7 of the f64 reference (a third of its
//! bound) and 1.9e-6 of the CPU, losses within 1.2e-6 and 2.9e-6; the MSE within 1.3e-7
//! relative of the exact mean and 1.3e-5 of the CPU, whose sequential f32 sum is the less
//! accurate of the two (n = 20000); both backwards bitwise.

use super::*;
use crate::harness::{cpu, rand_vec, zeros};
use weft_kernels::*;

const U: f64 = 1.0 / (1u64 << 24) as f64;
const MSE_CHUNK: usize = 4096;

fn lib() -> &'static Shim {
    shim("loss", &[])
}

fn suffix(dt: DType) -> &'static str {
    if dt == DType::BF16 {
        "bf16"
    } else {
        "f32"
    }
}

/// `x` stored in `dt` (f32 or bf16).
fn store(x: &[f64], dt: DType) -> HostVec {
    match dt {
        DType::F32 => x.iter().map(|&v| v as f32).collect::<Vec<_>>().into(),
        _ => bf16s(x).into(),
    }
}

/// The values a kernel loads from `v`, as f32.
fn loaded(v: &HostVec) -> Vec<f32> {
    match v {
        HostVec::F32(x) => x.clone(),
        HostVec::BF16(x) => x.iter().map(|v| v.to_f32()).collect(),
        _ => unreachable!(),
    }
}

fn f32s(v: &HostVec) -> &[f32] {
    match v {
        HostVec::F32(x) => x,
        _ => panic!("not f32"),
    }
}

fn within(what: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: emulated kernel {got:e}, reference {want:e}: {:e} apart, at most {tol:e} allowed",
        (got - want).abs()
    );
}

/// Logits over [-4, 4) with some over [-8, 8) (no single logit dominates a row, so every
/// term of the sum matters at the tolerance), and targets: every third row ignored, the others
/// spread over the row, first and last column included.
fn ce_inputs(n: usize, v: usize, dt: DType) -> (HostVec, HostVec) {
    let x: Vec<f64> = rand_vec(11 + v as u64, n * v)
        .iter()
        .enumerate()
        .map(|(i, r)| if i % 97 == 5 { 8.0 * r } else { 4.0 * r })
        .collect();
    let targets: Vec<i32> = (0..n)
        .map(|r| match r % 3 {
            1 => -1,
            0 => ((r * 7919) % v) as i32,
            _ => (if r % 2 == 0 { 0 } else { v - 1 }) as i32,
        })
        .collect();
    (store(&x, dt), HostVec::I32(targets))
}

/// `(N, V, block, grid)`: one column, tiny rows, a non-power-of-two block, rows longer than
/// the block, fewer blocks than rows (blocks stride), and a long row.
const CE_SHAPES: [(usize, usize, u32, u32); 7] = [
    (1, 1, 32, 1),
    (3, 7, 32, 3),
    (5, 33, 64, 5),
    (4, 257, 96, 4),
    (7, 1000, 256, 3),
    (3, 1000, 256, 3),
    (2, 4099, 512, 2),
];

#[test]
fn cross_entropy_forward() {
    let c = cpu();
    for dt in [DType::F32, DType::BF16] {
        for (n, v, block, grid) in CE_SHAPES {
            for z in [0.0, 1e-2] {
                let what = format!(
                    "cross_entropy_forward_{} (N={n}, V={v}, block {block}, z={z})",
                    suffix(dt)
                );
                let (mut logits, mut targets) = ce_inputs(n, v, dt);
                let d = CrossEntropyDims { n, v, z_loss: z };
                let (mut want_l, mut want_lse) = (zeros(DType::F32, n), zeros(DType::F32, n));
                c.cross_entropy_forward(
                    want_l.view_mut(),
                    want_lse.view_mut(),
                    logits.view(),
                    targets.view(),
                    d,
                )
                .unwrap();
                // Outputs start as garbage: every element must be written.
                let mut got_l: HostVec = vec![f32::NAN; n].into();
                let mut got_lse: HostVec = vec![f32::NAN; n].into();
                let args = [
                    buf(&mut got_l),
                    buf(&mut got_lse),
                    buf(&mut logits),
                    buf(&mut targets),
                    Arg::U64(n as u64),
                    Arg::U64(v as u64),
                    Arg::F32(z as f32),
                ];
                let kernel = format!("cross_entropy_forward_{}", suffix(dt));
                lib().launch(&kernel, dim(grid), dim(block), 0, &args);

                let x = loaded(&logits);
                let HostVec::I32(y) = &targets else { unreachable!() };
                let k = v.div_ceil(block as usize) as f64 + 9.0;
                for r in 0..n {
                    let row = &x[r * v..(r + 1) * v];
                    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                    let s: f64 = row.iter().map(|&xi| (xi - m).exp() as f64).sum();
                    let lse = m as f64 + s.ln();
                    let ulp_terms = 2.0 * U * s.ln().abs() + U * lse.abs();
                    let tol_l = 1.01 * k * U + ulp_terms;
                    let tol_cpu = tol_l + 1.01 * (v as f64 - 1.0) * U + ulp_terms;
                    let (gl, wl) = (f32s(&got_lse)[r] as f64, f32s(&want_lse)[r] as f64);
                    within(&format!("{what} lse[{r}]"), gl, lse, tol_l);
                    within(&format!("{what} lse[{r}] against the CPU"), gl, wl, tol_cpu);

                    let (gloss, wloss) = (f32s(&got_l)[r] as f64, f32s(&want_l)[r] as f64);
                    if y[r] < 0 {
                        assert_eq!(
                            gloss.to_bits(),
                            0f64.to_bits(),
                            "{what}: ignored row {r} has loss {gloss}"
                        );
                        continue;
                    }
                    let xy = row[y[r] as usize] as f64;
                    let loss = lse - xy + z * lse * lse;
                    let spread = |t: f64| t * (1.0 + 2.0 * z * lse.abs() + z * t);
                    let rounding = U * ((lse - xy).abs() + 3.0 * z * lse * lse + loss.abs());
                    within(
                        &format!("{what} loss[{r}]"),
                        gloss,
                        loss,
                        spread(tol_l) + rounding,
                    );
                    within(
                        &format!("{what} loss[{r}] against the CPU"),
                        gloss,
                        wloss,
                        spread(tol_cpu) + 2.0 * rounding,
                    );
                }
            }
        }
    }
}

#[test]
fn cross_entropy_backward() {
    let c = cpu();
    for dt in [DType::F32, DType::BF16] {
        for (n, v, block, grid) in CE_SHAPES {
            let z = 1e-2;
            let (mut logits, mut targets) = ce_inputs(n, v, dt);
            let d = CrossEntropyDims { n, v, z_loss: z };
            let (mut losses, mut lse) = (zeros(DType::F32, n), zeros(DType::F32, n));
            c.cross_entropy_forward(
                losses.view_mut(),
                lse.view_mut(),
                logits.view(),
                targets.view(),
                d,
            )
            .unwrap();
            let mut dlosses: HostVec = rand_vec(5, n)
                .iter()
                .map(|&g| (1.0 + g) as f32)
                .collect::<Vec<_>>()
                .into();
            let mut want = zeros(dt, n * v);
            c.cross_entropy_backward(
                want.view_mut(),
                dlosses.view(),
                logits.view(),
                targets.view(),
                lse.view(),
                d,
            )
            .unwrap();
            // dlogits is overwritten: start from garbage.
            let mut got = store(&rand_vec(6, n * v), dt);
            let kernel = format!("cross_entropy_backward_{}", suffix(dt));
            let args = [
                buf(&mut got),
                buf(&mut dlosses),
                buf(&mut logits),
                buf(&mut targets),
                buf(&mut lse),
                Arg::U64(n as u64),
                Arg::U64(v as u64),
                Arg::F32(z as f32),
            ];
            lib().launch(&kernel, dim(grid), dim(block), 0, &args);
            assert_close(&format!("{kernel} (N={n}, V={v}, block {block})"), &got, &want, 0);
        }
    }
}

/// A target the host's checks refuse (`>= V`) gives a NaN loss, not a read past the row.
#[test]
fn cross_entropy_target_out_of_range_is_nan() {
    let (n, v) = (2usize, 5usize);
    let mut logits = store(&rand_vec(7, n * v), DType::F32);
    let mut targets = HostVec::I32(vec![v as i32, 2]);
    let (mut losses, mut lse) = (zeros(DType::F32, n), zeros(DType::F32, n));
    let args = [
        buf(&mut losses),
        buf(&mut lse),
        buf(&mut logits),
        buf(&mut targets),
        Arg::U64(n as u64),
        Arg::U64(v as u64),
        Arg::F32(0.0),
    ];
    lib().launch("cross_entropy_forward_f32", dim(n as u32), dim(32), 0, &args);
    let l = f32s(&losses);
    assert!(
        l[0].is_nan() && l[1].is_finite(),
        "cross_entropy_forward_f32: losses {l:?}"
    );
}

/// Runs both MSE forward kernels: partials over ceil(n / MSE_CHUNK) chunks on `grid` blocks of
/// 256, then the one-block finish.
fn mse_forward_kernel(
    dt: DType,
    pred: &mut HostVec,
    target: &mut HostVec,
    n: usize,
    grid: Option<u32>,
) -> f32 {
    let parts = n.div_ceil(MSE_CHUNK);
    // Garbage partials: every one must be written.
    let mut partials: HostVec = vec![f32::NAN; parts].into();
    if n > 0 {
        let grid = grid.unwrap_or(parts as u32);
        let args = [buf(&mut partials), buf(pred), buf(target), Arg::U64(n as u64)];
        lib().launch(
            &format!("mse_forward_partial_{}", suffix(dt)),
            dim(grid),
            dim(256),
            0,
            &args,
        );
    }
    let mut loss: HostVec = vec![f32::NAN].into();
    let args = [
        buf(&mut loss),
        buf(&mut partials),
        Arg::U64(parts as u64),
        Arg::U64(n as u64),
    ];
    lib().launch("mse_forward_finish_f32", dim(1), dim(256), 0, &args);
    f32s(&loss)[0]
}

#[test]
fn mse_forward() {
    let c = cpu();
    for dt in [DType::F32, DType::BF16] {
        for (n, grid) in [
            (0, None),
            (1, None),
            (255, None),
            (4096, None),
            (4097, None),
            (3 * 4096 + 131, Some(2)),
            (20000, None),
        ] {
            let what = format!("mse_forward [{dt}] n={n}");
            let (mut pred, mut target) = (store(&rand_vec(1, n), dt), store(&rand_vec(2, n), dt));
            let mut want = zeros(DType::F32, 1);
            c.mse_forward(want.view_mut(), pred.view(), target.view(), n)
                .unwrap();
            let got = mse_forward_kernel(dt, &mut pred, &mut target, n, grid) as f64;
            let (p, t) = (loaded(&pred), loaded(&target));
            let exact: f64 = p
                .iter()
                .zip(&t)
                .map(|(&p, &t)| ((p - t) * (p - t)) as f64)
                .sum::<f64>()
                / n.max(1) as f64;
            let parts = n.div_ceil(MSE_CHUNK);
            let k = (MSE_CHUNK / 256) as f64 + 10.0 + parts.div_ceil(256) as f64 + 10.0;
            within(&what, got, exact, 1.01 * (k + 1.0) * U * exact);
            within(
                &format!("{what} against the CPU"),
                got,
                f32s(&want)[0] as f64,
                1.01 * (k + n as f64 + 1.0) * U * exact,
            );
        }
    }
}

#[test]
fn mse_backward() {
    let c = cpu();
    for dt in [DType::F32, DType::BF16] {
        for n in ODD_SIZES {
            let (mut pred, mut target) = (store(&rand_vec(3, n), dt), store(&rand_vec(4, n), dt));
            let mut dloss: HostVec = vec![0.7f32].into();
            let mut want = zeros(dt, n);
            c.mse_backward(want.view_mut(), dloss.view(), pred.view(), target.view(), n)
                .unwrap();
            let mut got = store(&rand_vec(5, n), dt);
            let kernel = format!("mse_backward_{}", suffix(dt));
            let args = [
                buf(&mut got),
                buf(&mut dloss),
                buf(&mut pred),
                buf(&mut target),
                Arg::U64(n as u64),
            ];
            lib().launch_1d(&kernel, n, &args);
            assert_close(&format!("{kernel} n={n}"), &got, &want, 0);
        }
    }
}
