//! kernels/cuda/norm.cu against the CPU backend: LayerNorm and RMSNorm, forward and backward,
//! f32 and bf16 activations (statistics f32; parameter gradients f32 or bf16), with and without
//! weight and bias, on rows and widths that are not multiples of the block, under launches with
//! one row per block, several rows per block and more blocks than rows.
//!
//! Both sides do the same f32 operations per element; only the row sums (a block reduction here,
//! left to right on the CPU) and the column sums of the parameter gradients (per-block partials
//! summed in block order here, rows in order on the CPU) run in another order, and a GPU build
//! may fuse a multiply and an add. With u = 2⁻²⁴, m = mean|x| over the row, and the CPU's
//! statistics μ, r (the backward takes the same saved statistics on both sides):
//! - mean: (2C + 2)·u·m =: Bμ; rstd: r·((C + 4)·u + Bμ·r) =: Br (the variance's sum order, the
//!   mean's error carried through (x − μ)², half of it through the square root, 4 roundings);
//! - LayerNorm out: |w|·(Bμ·r + |x − μ|·Br) + 4u·(|x̂·w| + |y|);
//!   RMSNorm: rstd r·(C + 6)·u, out |y|·(C + 8)·u;
//! - LayerNorm dinp: r·(Δs1 + |x̂|·Δs2) + 4u·r·(|g| + |s1| + |x̂·s2|) with g = dout·w,
//!   Δs1 = (2C + 2)·u·mean|g|, Δs2 = (2C + 2)·u·mean|g·x̂|; RMSNorm dinp: r·|x̂|·Δdot +
//!   4u·r·(|g| + |x̂·dot|), Δdot = (2C + 2)·u·mean|g·x̂|;
//! - dweight, dbias (+= over N rows): (2N + 4)·u·(|acc| + Σ_rows |term|);
//! - bf16 outputs and gradients: the f32 bound plus one bf16 ulp (see `bounds`).
//!
//! Measured (emulator, this suite): see the report printed with `--nocapture`; every ratio of
//! difference to allowance is printed per kernel.

use super::bounds::*;
use super::*;
use crate::harness::{cpu, f64s, host, rand_vec, zeros};
use weft_kernels::*;

fn lib() -> &'static Shim {
    shim("norm", &[])
}

const DTYPES: [DType; 2] = [DType::F32, DType::BF16];
const EPS: f64 = 1e-5;

/// (rows, width): a single element, widths below, around and well past the blocks used.
const SHAPES: [(usize, usize); 5] = [(1, 1), (3, 31), (5, 257), (2, 1000), (7, 100)];

/// (grid, block) of the row kernels for the shape with `n` rows, cycled through the shapes:
/// every row in one block, a few rows per block, one row per block and a block with none.
fn launch(k: usize, n: usize) -> (u32, u32) {
    [(1, 64), (3, 96), (n as u32 + 1, 256)][k % 3]
}

fn suffix(dt: DType) -> &'static str {
    if dt == DType::BF16 {
        "bf16"
    } else {
        "f32"
    }
}

/// The weight/bias cases: both, neither, weight only.
const AFFINE: [(bool, bool); 3] = [(true, true), (false, false), (true, false)];

fn null() -> Arg {
    Arg::Ptr(std::ptr::null_mut())
}

fn opt_buf(v: &mut Option<HostVec>) -> Arg {
    v.as_mut().map_or(null(), buf)
}

/// One row's inputs as f64.
fn row(v: &[f64], r: usize, c: usize) -> &[f64] {
    &v[r * c..(r + 1) * c]
}

fn mean_abs(v: impl Iterator<Item = f64>, c: usize) -> f64 {
    v.map(f64::abs).sum::<f64>() / c as f64
}

/// Prints what a comparison measured.
fn record(what: &str, (worst, ratio): (f64, f64)) {
    eprintln!("{what:<48} max |Δ| {worst:.3e}, max |Δ| / allowance {ratio:.3}");
}

/// The parameter-gradient dtypes of a call with activations `dt`.
fn grad_dtypes(dt: DType) -> &'static [DType] {
    if dt == DType::BF16 {
        &[DType::F32, DType::BF16]
    } else {
        &[DType::F32]
    }
}

/// `acc += Σ partials` through param_grad_sum_*, as the host follows a backward row kernel.
fn sum_partials(acc: &mut HostVec, partials: &mut HostVec, parts: usize, c: usize) {
    let kernel = if acc.dtype() == DType::BF16 {
        "param_grad_sum_bf16_f32"
    } else {
        "param_grad_sum_f32"
    };
    let args = [
        buf(acc),
        buf(partials),
        Arg::U64(parts as u64),
        Arg::U64(c as u64),
    ];
    lib().launch_1d(kernel, c, &args);
}

/// The bound on a `+=` over `n` rows of `terms(row, j)` into `acc`.
fn column_bound(acc: &HostVec, n: usize, c: usize, terms: impl Fn(usize, usize) -> f64) -> Vec<f64> {
    let a = f64s(acc);
    (0..c)
        .map(|j| sum_order(n + 2) * (a[j].abs() + (0..n).map(|r| terms(r, j).abs()).sum::<f64>()))
        .collect()
}

/// `x` (mean 0.5) and a `dout` that leans on it, as a loss's gradient does: the sums over a row
/// of `dout · x̂` are then of the size of their terms, not cancelled down to noise, so an error
/// in them shows above the bounds.
fn correlated(seed: u64, len: usize, dt: DType) -> (HostVec, HostVec) {
    let (a, b) = (rand_vec(seed, len), rand_vec(seed + 1, len));
    let x: Vec<f64> = a.iter().map(|v| 0.5 + 1.5 * v).collect();
    let dy: Vec<f64> = a.iter().zip(&b).map(|(u, v)| 0.8 * u + 0.2 * v).collect();
    (host(&x, dt), host(&dy, dt))
}

#[test]
fn layernorm_forward() {
    let c0 = cpu();
    for dt in DTYPES {
        for (k, &(n, c)) in SHAPES.iter().enumerate() {
            for (has_w, has_b) in AFFINE {
                let d = NormDims { n, c, eps: EPS };
                let xs: Vec<f64> = rand_vec(1, n * c).iter().map(|v| 0.5 + 1.5 * v).collect();
                let mut x = host(&xs, dt);
                let mut w = has_w.then(|| {
                    host(
                        &rand_vec(2, c).iter().map(|v| 1.0 + 0.5 * v).collect::<Vec<_>>(),
                        dt,
                    )
                });
                let mut b = has_b.then(|| host(&rand_vec(3, c), dt));
                let (mut out, mut mean, mut rstd) =
                    (zeros(dt, n * c), zeros(DType::F32, n), zeros(DType::F32, n));
                c0.layernorm_forward(
                    out.view_mut(),
                    mean.view_mut(),
                    rstd.view_mut(),
                    x.view(),
                    w.as_ref().map(|w| w.view()),
                    b.as_ref().map(|b| b.view()),
                    d,
                )
                .unwrap();

                let (mut gout, mut gmean, mut grstd) =
                    (zeros(dt, n * c), zeros(DType::F32, n), zeros(DType::F32, n));
                let (grid, block) = launch(k, n);
                let kernel = format!("layernorm_forward_{}", suffix(dt));
                let args = [
                    buf(&mut gout),
                    buf(&mut gmean),
                    buf(&mut grstd),
                    buf(&mut x),
                    opt_buf(&mut w),
                    opt_buf(&mut b),
                    Arg::U64(n as u64),
                    Arg::U64(c as u64),
                    Arg::F32(EPS as f32),
                ];
                lib().launch(&kernel, dim(grid), dim(block), 0, &args);

                let xs = f64s(&x);
                let (mu, rs) = (f64s(&mean), f64s(&rstd));
                let (wv, bv, ys) = (w.as_ref().map(f64s), b.as_ref().map(f64s), f64s(&out));
                let bmu = |r: usize| sum_order(c + 1) * mean_abs(row(&xs, r, c).iter().copied(), c);
                let brs = |r: usize| rs[r] * ((c + 4) as f64 * U + bmu(r) * rs[r]);
                let what = format!("{kernel} ({n}, {c}) w={has_w} b={has_b}");
                record(
                    &format!("{what} mean"),
                    assert_within(&format!("{what} mean"), &gmean, &mean, bmu),
                );
                record(
                    &format!("{what} rstd"),
                    assert_within(&format!("{what} rstd"), &grstd, &rstd, brs),
                );
                let out_bound = |i: usize| {
                    let (r, j) = (i / c, i % c);
                    let wj = wv.as_ref().map_or(1.0, |w| w[j]).abs();
                    let xc = (xs[i] - mu[r]).abs();
                    wj * (bmu(r) * rs[r] + xc * brs(r))
                        + 4.0 * U * (xc * rs[r] * wj + ys[i].abs())
                        + bv.as_ref().map_or(0.0, |b| 2.0 * U * b[j].abs())
                };
                record(
                    &format!("{what} out"),
                    assert_within(&format!("{what} out"), &gout, &out, out_bound),
                );
            }
        }
    }
}

#[test]
fn layernorm_backward() {
    let c0 = cpu();
    for dt in DTYPES {
        for &gdt in grad_dtypes(dt) {
            for (k, &(n, c)) in SHAPES.iter().enumerate() {
                for (has_w, has_b) in AFFINE {
                    let d = NormDims { n, c, eps: EPS };
                    let (mut x, mut dy) = correlated(4, n * c, dt);
                    let mut w = has_w.then(|| {
                        host(
                            &rand_vec(6, c).iter().map(|v| 1.0 + 0.5 * v).collect::<Vec<_>>(),
                            dt,
                        )
                    });
                    // Saved statistics from the CPU forward, the same on both sides.
                    let (mut out, mut mean, mut rstd) =
                        (zeros(dt, n * c), zeros(DType::F32, n), zeros(DType::F32, n));
                    c0.layernorm_forward(
                        out.view_mut(),
                        mean.view_mut(),
                        rstd.view_mut(),
                        x.view(),
                        w.as_ref().map(|w| w.view()),
                        None,
                        d,
                    )
                    .unwrap();
                    // dweight always (it is computed with or without a weight), dbias with a bias.
                    let acc0 = host(&rand_vec(7, c), gdt);
                    let (mut dw, mut db) = (acc0.clone(), has_b.then(|| host(&rand_vec(8, c), gdt)));
                    let mut dx = zeros(dt, n * c);
                    c0.layernorm_backward(
                        dx.view_mut(),
                        Some(dw.view_mut()),
                        db.as_mut().map(|v| v.view_mut()),
                        dy.view(),
                        x.view(),
                        w.as_ref().map(|w| w.view()),
                        mean.view(),
                        rstd.view(),
                        d,
                    )
                    .unwrap();

                    let (grid, block) = launch(k, n);
                    let parts = grid as usize;
                    let (mut gdw, mut gdb) = (acc0.clone(), has_b.then(|| host(&rand_vec(8, c), gdt)));
                    let db0 = gdb.clone();
                    // The backward overwrites dinp and the partials: start from garbage.
                    let mut gdx = host(&rand_vec(9, n * c), dt);
                    let mut dw_part = host(&rand_vec(10, parts * c), DType::F32);
                    let mut db_part = has_b.then(|| host(&rand_vec(11, parts * c), DType::F32));
                    let kernel = format!("layernorm_backward_{}", suffix(dt));
                    let args = [
                        buf(&mut gdx),
                        buf(&mut dw_part),
                        opt_buf(&mut db_part),
                        buf(&mut dy),
                        buf(&mut x),
                        opt_buf(&mut w),
                        buf(&mut mean),
                        buf(&mut rstd),
                        Arg::U64(n as u64),
                        Arg::U64(c as u64),
                    ];
                    lib().launch(&kernel, dim(grid), dim(block), 8 * c, &args);
                    sum_partials(&mut gdw, &mut dw_part, parts, c);
                    if let (Some(acc), Some(part)) = (gdb.as_mut(), db_part.as_mut()) {
                        sum_partials(acc, part, parts, c);
                    }

                    let (xs, dys) = (f64s(&x), f64s(&dy));
                    let (mu, rs, wv) = (f64s(&mean), f64s(&rstd), w.as_ref().map(f64s));
                    let g = |i: usize| dys[i] * wv.as_ref().map_or(1.0, |w| w[i % c]);
                    let xhat = |i: usize| (xs[i] - mu[i / c]) * rs[i / c];
                    let (mut ds1, mut ds2, mut s2) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
                    for r in 0..n {
                        let rows = r * c..(r + 1) * c;
                        ds1[r] = sum_order(c + 1) * mean_abs(rows.clone().map(g), c);
                        ds2[r] = sum_order(c + 1) * mean_abs(rows.clone().map(|i| g(i) * xhat(i)), c);
                        s2[r] = rows.map(|i| g(i) * xhat(i)).sum::<f64>() / c as f64;
                    }
                    let s1: Vec<f64> = (0..n)
                        .map(|r| (r * c..(r + 1) * c).map(g).sum::<f64>() / c as f64)
                        .collect();
                    let dx_bound = |i: usize| {
                        let r = i / c;
                        rs[r] * (ds1[r] + xhat(i).abs() * ds2[r])
                            + 4.0 * U * rs[r] * (g(i).abs() + s1[r].abs() + (xhat(i) * s2[r]).abs())
                    };
                    let what = format!("{kernel} ({n}, {c}) w={has_w} b={has_b} grads {gdt}");
                    record(
                        &format!("{what} dinp"),
                        assert_within(&format!("{what} dinp"), &gdx, &dx, dx_bound),
                    );
                    let bw = column_bound(&acc0, n, c, |r, j| dys[r * c + j] * xhat(r * c + j));
                    record(
                        &format!("{what} dweight"),
                        assert_within(&format!("{what} dweight"), &gdw, &dw, |j| bw[j]),
                    );
                    if let (Some(got), Some(want), Some(db0)) = (&gdb, &db, &db0) {
                        let bb = column_bound(db0, n, c, |r, j| dys[r * c + j]);
                        record(
                            &format!("{what} dbias"),
                            assert_within(&format!("{what} dbias"), got, want, |j| bb[j]),
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn rmsnorm_forward() {
    let c0 = cpu();
    for dt in DTYPES {
        for (k, &(n, c)) in SHAPES.iter().enumerate() {
            for has_w in [true, false] {
                let d = NormDims { n, c, eps: EPS };
                let mut x = host(
                    &rand_vec(12, n * c)
                        .iter()
                        .map(|v| 0.5 + 1.5 * v)
                        .collect::<Vec<_>>(),
                    dt,
                );
                let mut w = has_w.then(|| {
                    host(
                        &rand_vec(13, c).iter().map(|v| 1.0 + 0.5 * v).collect::<Vec<_>>(),
                        dt,
                    )
                });
                let (mut out, mut rstd) = (zeros(dt, n * c), zeros(DType::F32, n));
                c0.rmsnorm_forward(
                    out.view_mut(),
                    rstd.view_mut(),
                    x.view(),
                    w.as_ref().map(|w| w.view()),
                    d,
                )
                .unwrap();
                let (mut gout, mut grstd) = (zeros(dt, n * c), zeros(DType::F32, n));
                let (grid, block) = launch(k, n);
                let kernel = format!("rmsnorm_forward_{}", suffix(dt));
                let args = [
                    buf(&mut gout),
                    buf(&mut grstd),
                    buf(&mut x),
                    opt_buf(&mut w),
                    Arg::U64(n as u64),
                    Arg::U64(c as u64),
                    Arg::F32(EPS as f32),
                ];
                lib().launch(&kernel, dim(grid), dim(block), 0, &args);
                let (rs, ys) = (f64s(&rstd), f64s(&out));
                let what = format!("{kernel} ({n}, {c}) w={has_w}");
                let rs_bound = |r: usize| rs[r] * (c + 6) as f64 * U;
                record(
                    &format!("{what} rstd"),
                    assert_within(&format!("{what} rstd"), &grstd, &rstd, rs_bound),
                );
                let out_bound = |i: usize| ys[i].abs() * (c + 8) as f64 * U;
                record(
                    &format!("{what} out"),
                    assert_within(&format!("{what} out"), &gout, &out, out_bound),
                );
            }
        }
    }
}

#[test]
fn rmsnorm_backward() {
    let c0 = cpu();
    for dt in DTYPES {
        for &gdt in grad_dtypes(dt) {
            for (k, &(n, c)) in SHAPES.iter().enumerate() {
                for (has_w, has_dw) in [(true, true), (false, true), (true, false)] {
                    let d = NormDims { n, c, eps: EPS };
                    let (mut x, mut dy) = correlated(14, n * c, dt);
                    let mut w = has_w.then(|| {
                        host(
                            &rand_vec(16, c).iter().map(|v| 1.0 + 0.5 * v).collect::<Vec<_>>(),
                            dt,
                        )
                    });
                    let (mut out, mut rstd) = (zeros(dt, n * c), zeros(DType::F32, n));
                    c0.rmsnorm_forward(
                        out.view_mut(),
                        rstd.view_mut(),
                        x.view(),
                        w.as_ref().map(|w| w.view()),
                        d,
                    )
                    .unwrap();
                    let acc0 = host(&rand_vec(17, c), gdt);
                    let mut dw = has_dw.then(|| acc0.clone());
                    let mut dx = zeros(dt, n * c);
                    c0.rmsnorm_backward(
                        dx.view_mut(),
                        dw.as_mut().map(|v| v.view_mut()),
                        dy.view(),
                        x.view(),
                        w.as_ref().map(|w| w.view()),
                        rstd.view(),
                        d,
                    )
                    .unwrap();

                    let (grid, block) = launch(k, n);
                    let parts = grid as usize;
                    let mut gdw = has_dw.then(|| acc0.clone());
                    let mut gdx = host(&rand_vec(18, n * c), dt);
                    let mut part = has_dw.then(|| host(&rand_vec(19, parts * c), DType::F32));
                    let kernel = format!("rmsnorm_backward_{}", suffix(dt));
                    let args = [
                        buf(&mut gdx),
                        opt_buf(&mut part),
                        buf(&mut dy),
                        buf(&mut x),
                        opt_buf(&mut w),
                        buf(&mut rstd),
                        Arg::U64(n as u64),
                        Arg::U64(c as u64),
                    ];
                    let shmem = if has_dw { 4 * c } else { 0 };
                    lib().launch(&kernel, dim(grid), dim(block), shmem, &args);
                    if let (Some(acc), Some(part)) = (gdw.as_mut(), part.as_mut()) {
                        sum_partials(acc, part, parts, c);
                    }

                    let (xs, dys, rs, wv) = (f64s(&x), f64s(&dy), f64s(&rstd), w.as_ref().map(f64s));
                    let g = |i: usize| dys[i] * wv.as_ref().map_or(1.0, |w| w[i % c]);
                    let xhat = |i: usize| xs[i] * rs[i / c];
                    let dot: Vec<f64> = (0..n)
                        .map(|r| (r * c..(r + 1) * c).map(|i| g(i) * xhat(i)).sum::<f64>() / c as f64)
                        .collect();
                    let ddot: Vec<f64> = (0..n)
                        .map(|r| sum_order(c + 1) * mean_abs((r * c..(r + 1) * c).map(|i| g(i) * xhat(i)), c))
                        .collect();
                    let dx_bound = |i: usize| {
                        let r = i / c;
                        rs[r] * xhat(i).abs() * ddot[r]
                            + 4.0 * U * rs[r] * (g(i).abs() + (xhat(i) * dot[r]).abs())
                    };
                    let what = format!("{kernel} ({n}, {c}) w={has_w} dw={has_dw} grads {gdt}");
                    record(
                        &format!("{what} dinp"),
                        assert_within(&format!("{what} dinp"), &gdx, &dx, dx_bound),
                    );
                    if let (Some(got), Some(want)) = (&gdw, &dw) {
                        let bw = column_bound(&acc0, n, c, |r, j| dys[r * c + j] * xhat(r * c + j));
                        record(
                            &format!("{what} dweight"),
                            assert_within(&format!("{what} dweight"), got, want, |j| bw[j]),
                        );
                    }
                }
            }
        }
    }
}

/// QK-norm: RMSNorm over the head dim of (B, T, NH, HD) queries, rows of N = B·T·NH, with a
/// warp per row (block 32) and many rows per block.
#[test]
fn qk_norm_is_rmsnorm_over_heads() {
    let c0 = cpu();
    let (b, t, nh, hd) = (2, 5, 3, 24);
    let (n, c) = (b * t * nh, hd);
    for dt in DTYPES {
        let d = NormDims { n, c, eps: 1e-6 };
        let mut q = host(&rand_vec(20, n * c), dt);
        let mut w = host(
            &rand_vec(21, c).iter().map(|v| 1.0 + 0.5 * v).collect::<Vec<_>>(),
            dt,
        );
        let (mut out, mut rstd) = (zeros(dt, n * c), zeros(DType::F32, n));
        c0.rmsnorm_forward(out.view_mut(), rstd.view_mut(), q.view(), Some(w.view()), d)
            .unwrap();
        let (mut gout, mut grstd) = (zeros(dt, n * c), zeros(DType::F32, n));
        let kernel = format!("rmsnorm_forward_{}", suffix(dt));
        let args = [
            buf(&mut gout),
            buf(&mut grstd),
            buf(&mut q),
            buf(&mut w),
            Arg::U64(n as u64),
            Arg::U64(c as u64),
            Arg::F32(1e-6),
        ];
        lib().launch(&kernel, dim(7), dim(32), 0, &args);
        let (rs, ys) = (f64s(&rstd), f64s(&out));
        record(
            &format!("{kernel} qk-norm rstd"),
            assert_within(&format!("{kernel} qk-norm rstd"), &grstd, &rstd, |r| {
                rs[r] * (c + 6) as f64 * U
            }),
        );
        record(
            &format!("{kernel} qk-norm out"),
            assert_within(&format!("{kernel} qk-norm out"), &gout, &out, |i| {
                ys[i].abs() * (c + 8) as f64 * U
            }),
        );
    }
}
