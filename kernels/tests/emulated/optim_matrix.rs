//! The matrix optimizers' kernels of kernels/cuda/optim.cu (Muon's and Scion's pieces) against
//! the CPU backend in f32, launched as `kernels/src/cuda/optim.rs` launches them.
//!
//! - `momentum_update_f32`, `apply_direction_f32`: the hyper-parameters rounded to f32 once,
//!   then the CPU's f32 operations in its order: bitwise. (The emulator does not contract
//!   `a·b + c` into an FMA; a GPU may: an ulp there.)
//! - `normalize_cols_f32`: a thread adds its column's squares (each exact in f64) in row order,
//!   as the CPU does: the same factor, bitwise. `normalize_sign_f32`: bitwise.
//! - `normalize_frobenius_f32` (after `sum_squares_partial_f32`) and `normalize_rows_f32` add
//!   the same exact squares in another order than the CPU (partials of 8192 elements and a
//!   block's butterfly; the CPU chunks of 16384 and a row, each in sequence). Two f64 sums of
//!   `n` non-negative terms are each within `(n − 1)·2⁻⁵³` relative of the exact sum; `√`
//!   halves that, and the `√`, the `+ eps` and the division of `scale/(√Σ + eps)` round once
//!   each on each side, so the two f64 quotients differ by under `(n + 5)·2⁻⁵³` relative — below 2⁻³³ for `n < 10⁶`, while an f32
//!   ulp is at least 2⁻²⁴ relative. The f32 factor is therefore the CPU's, or, when the quotient
//!   lies within 2⁻³³ of a rounding boundary, its neighbour: the tolerance is **one ulp of the
//!   factor**, the products then bitwise. The test asks, per part (the matrix, or a row), that
//!   every element be exactly `x·s` for ONE f32 factor `s` within one ulp of the CPU's. (A
//!   per-element bound would have to allow 3 ulps — `x·s` and `x·s'` one factor-ulp apart can
//!   round 3 ulps apart at a binade edge — and could not tell a factor off by one ulp from a
//!   kernel that scales each element differently.)
//! - `transpose_scaled_f32`: `f32(scale)·x`, moved: bitwise against a host transpose.
//!
//! Measured (this suite, emulated): all bitwise; the Frobenius and row factors equal to the
//! CPU's in every part (the neighbour allowance unused).

use super::*;
use crate::harness::{cpu, host, rand_vec};
use weft_kernels::*;

const SUM_CHUNK: usize = 8192;

fn lib() -> &'static Shim {
    shim("optim", &[])
}

/// Matrices `(rows, cols)`: one element, a row, a column, odd shapes both ways, a square, and
/// one of several Σx² partials (29197 elements).
const MATRICES: [(usize, usize); 7] = [
    (1, 1),
    (1, 300),
    (300, 1),
    (37, 53),
    (53, 37),
    (64, 64),
    (97, 301),
];

fn f32s(v: &HostVec) -> &[f32] {
    match v {
        HostVec::F32(x) => x,
        _ => panic!("not f32"),
    }
}

/// `n` values `scale·U[-1, 1)` from `seed`, as f32.
fn rand_f32(seed: u64, n: usize, scale: f64) -> HostVec {
    host(
        &rand_vec(seed, n).iter().map(|v| scale * v).collect::<Vec<_>>(),
        DType::F32,
    )
}

/// The momentum settings: Muon's (dampening 1, Nesterov on and off), Scion's (`1 − mu`), and
/// gradient scales other than 1.
fn momenta() -> [Momentum; 4] {
    let m = |mu: f64, dampening, nesterov, grad_scale| Momentum {
        mu,
        dampening,
        nesterov,
        grad_scale,
    };
    [
        m(0.95, 1.0, true, 1.0),
        m(0.95, 1.0, false, 0.7),
        m(0.9, 1.0 - 0.9, false, 0.5),
        m(0.9, 1.0 - 0.9, true, 1.3),
    ]
}

#[test]
fn momentum_update_is_bitwise_the_cpus() {
    let c = cpu();
    for n in ODD_SIZES {
        for (k, h) in momenta().into_iter().enumerate() {
            let mut want_m = rand_f32(1, n, 0.1);
            let mut want_u = rand_f32(2, n, 1.0);
            let (mut got_m, mut got_u) = (want_m.clone(), want_u.clone());
            // Two steps: the second starts from the momentum the first wrote.
            for step in 0..2u64 {
                let mut grads = rand_f32(10 + step, n, 3.0);
                c.momentum_update(want_m.view_mut(), want_u.view_mut(), grads.view(), h, n)
                    .unwrap();
                let args = [
                    buf(&mut got_m),
                    buf(&mut got_u),
                    buf(&mut grads),
                    Arg::U64(n as u64),
                    Arg::F64(h.mu),
                    Arg::F64(h.dampening),
                    Arg::F64(h.grad_scale),
                    Arg::U64(h.nesterov as u64),
                ];
                lib().launch_1d("momentum_update_f32", n, &args);
                let what = format!("momentum_update_f32 n={n} setting {k} ({h:?}) step {step}");
                assert_close(&format!("{what}: m"), &got_m, &want_m, 0);
                assert_close(&format!("{what}: u"), &got_u, &want_u, 0);
            }
        }
    }
}

#[test]
fn apply_direction_is_bitwise_the_cpus() {
    let c = cpu();
    // Decoupled weight decay (keep = 1 − lr·wd), Scion's constraint (1 − lr), none.
    let steps = [(0.02, 1.0 - 0.02 * 0.1), (0.05, 1.0 - 0.05), (1e-3, 1.0)];
    for n in ODD_SIZES {
        for (lr, keep) in steps {
            let mut want = rand_f32(3, n, 1.0);
            let mut got = want.clone();
            let mut dir = rand_f32(4, n, 2.0);
            c.apply_direction(want.view_mut(), dir.view(), lr, keep, n)
                .unwrap();
            let args = [
                buf(&mut got),
                buf(&mut dir),
                Arg::U64(n as u64),
                Arg::F64(lr),
                Arg::F64(keep),
            ];
            lib().launch_1d("apply_direction_f32", n, &args);
            assert_close(
                &format!("apply_direction_f32 n={n} lr={lr} keep={keep}"),
                &got,
                &want,
                0,
            );
        }
    }
}

/// A random `(rows, cols)` matrix with its third row and second column zero (where it has
/// them): parts whose norm is 0.
fn matrix(seed: u64, rows: usize, cols: usize) -> HostVec {
    let mut x = rand_vec(seed, rows * cols);
    for j in 0..cols {
        for i in 0..rows {
            if (i == 2 && rows > 3) || (j == 1 && cols > 3) {
                x[i * cols + j] = 0.0;
            }
        }
    }
    host(&x, DType::F32)
}

/// `x` scaled in place by the kernels of `mode`, launched as the CUDA backend does; Rows also
/// with fewer blocks than rows (blocks stride).
fn normalize_kernel(x: &mut HostVec, d: &NormalizeDims, rows_grid: Option<u32>) {
    let (rows, cols, n) = (d.rows, d.cols, d.rows * d.cols);
    let (scale, eps) = (Arg::F64(d.scale), Arg::F64(d.eps));
    let (r, c) = (Arg::U64(rows as u64), Arg::U64(cols as u64));
    match d.mode {
        Normalize::Frobenius => {
            let parts = n.div_ceil(SUM_CHUNK);
            let mut partials: HostVec = vec![f64::NAN; parts].into();
            let args = [buf(&mut partials), buf(x), Arg::U64(n as u64)];
            lib().launch("sum_squares_partial_f32", dim(parts as u32), dim(256), 0, &args);
            let args = [
                buf(x),
                Arg::U64(n as u64),
                buf(&mut partials),
                Arg::U64(parts as u64),
                scale,
                eps,
            ];
            lib().launch_1d("normalize_frobenius_f32", n, &args);
        }
        Normalize::Rows => {
            let grid = rows_grid.unwrap_or(rows.min(65535) as u32);
            let args = [buf(x), r, c, scale, eps];
            lib().launch("normalize_rows_f32", dim(grid), dim(256), 0, &args);
        }
        Normalize::Cols => lib().launch_1d("normalize_cols_f32", cols, &[buf(x), r, c, scale, eps]),
        Normalize::Sign => lib().launch_1d("normalize_sign_f32", n, &[buf(x), Arg::U64(n as u64), scale]),
    }
}

/// The one f32 factor `s` within an ulp of `near` with `out[i] == x[i]·s` for every element of
/// the part, if there is one.
fn factor_of(x: &[f32], out: &[f32], near: f32) -> Option<f32> {
    [near, near.next_up(), near.next_down()]
        .into_iter()
        .find(|&s| x.iter().zip(out).all(|(&x, &o)| (x * s).to_bits() == o.to_bits()))
}

/// Checks that the kernel scaled each part of `x` (the matrix, or each row) by one factor
/// within an ulp of the CPU's (see the module's note); returns how many parts' factors
/// differ.
fn same_factor_per_part(what: &str, x: &[f32], got: &[f32], want: &[f32], d: &NormalizeDims) -> usize {
    let len = if d.mode == Normalize::Rows {
        d.cols
    } else {
        x.len()
    };
    let mut moved = 0;
    for (p, ((x, g), w)) in x
        .chunks(len)
        .zip(got.chunks(len))
        .zip(want.chunks(len))
        .enumerate()
    {
        let sq: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
        // A zero part has any factor; 0 stands for it.
        let guess = if sq > 0.0 {
            (d.scale / (sq.sqrt() + d.eps)) as f32
        } else {
            0.0
        };
        let cpu = factor_of(x, w, guess).unwrap_or_else(|| {
            panic!("{what}: part {p}: the CPU's output is not x·s for one s near {guess:e}")
        });
        let kernel = factor_of(x, g, cpu).unwrap_or_else(|| {
            let i = (0..x.len())
                .find(|&i| (x[i] * cpu).to_bits() != g[i].to_bits())
                .unwrap();
            panic!(
                "{what}: part {p} is not x·s for one factor s within an ulp of the CPU's {cpu:e}: \
                 element {i}: x {:e}, emulated kernel {:e}, CPU {:e}",
                x[i], g[i], w[i]
            )
        });
        moved += (kernel != cpu) as usize;
    }
    moved
}

#[test]
fn normalize_matches_the_cpu() {
    let c = cpu();
    // (scale, eps): unit, a Scion-like radius, eps 0 (a zero part must stay zero), one per
    // matrix and mode in turn (the emulated block reductions are slow): each mode meets each,
    // and eps 0 meets a zero row (53, 37) and a zero column (37, 53).
    let settings = [(1.0, 1e-7), (0.37, 1e-3), (3.0, 0.0)];
    let modes = [
        Normalize::Frobenius,
        Normalize::Rows,
        Normalize::Cols,
        Normalize::Sign,
    ];
    let mut moved = 0;
    for (seed, (rows, cols)) in MATRICES.into_iter().enumerate() {
        for (k, mode) in modes.into_iter().enumerate() {
            let (scale, eps) = settings[(seed + k) % settings.len()];
            let d = NormalizeDims {
                rows,
                cols,
                mode,
                scale,
                eps,
            };
            let x = matrix(20 + seed as u64, rows, cols);
            let mut want = x.clone();
            c.matrix_normalize(want.view_mut(), d).unwrap();
            let mut got = x.clone();
            normalize_kernel(&mut got, &d, None);
            let what = format!("matrix_normalize {mode:?} ({rows}, {cols}) scale={scale} eps={eps}");
            assert!(
                f32s(&got).iter().all(|v| v.is_finite()),
                "{what}: non-finite output"
            );
            match mode {
                Normalize::Cols | Normalize::Sign => assert_close(&what, &got, &want, 0),
                Normalize::Frobenius | Normalize::Rows => {
                    moved += same_factor_per_part(&what, f32s(&x), f32s(&got), f32s(&want), &d)
                }
            }
            if mode == Normalize::Rows && rows <= 64 {
                // Fewer blocks than rows: each row is still one block's, the same bits.
                let mut strided = x.clone();
                normalize_kernel(&mut strided, &d, Some(3));
                assert_close(&format!("{what}, grid 3"), &strided, &got, 0);
            }
        }
    }
    eprintln!("normalize: {moved} parts whose f32 factor is the CPU's neighbour");
}

#[test]
fn transpose_scaled_is_a_scaled_transpose() {
    for (seed, (rows, cols)) in MATRICES.into_iter().enumerate() {
        for scale in [1.0, 2.0, -0.3] {
            let mut x = rand_f32(40 + seed as u64, rows * cols, 1.0);
            let s = scale as f32;
            let xs = f32s(&x);
            let want: HostVec = (0..rows * cols)
                .map(|i| {
                    let (c, r) = (i / rows, i % rows);
                    s * xs[r * cols + c]
                })
                .collect::<Vec<f32>>()
                .into();
            let mut got: HostVec = vec![f32::NAN; rows * cols].into();
            let args = [
                buf(&mut got),
                buf(&mut x),
                Arg::U64(rows as u64),
                Arg::U64(cols as u64),
                Arg::F64(scale),
            ];
            lib().launch_1d("transpose_scaled_f32", rows * cols, &args);
            let what = format!("transpose_scaled_f32 ({rows}, {cols}) scale={scale}");
            assert_close(&what, &got, &want, 0);
            if rows == 1 {
                // Newton–Schulz's scaled copy.
                let copy: HostVec = f32s(&x).iter().map(|&v| s * v).collect::<Vec<f32>>().into();
                assert_close(&format!("{what}: copy"), &got, &copy, 0);
            }
        }
    }
}
