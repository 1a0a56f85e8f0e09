//! The matrix optimizers' ops (Muon, Scion) on the CPU backend, against what they are meant to
//! compute: `newton_schulz` by its action on singular values, `matrix_normalize`,
//! `momentum_update` and `apply_direction` by host formulas in f64, and the calls they refuse.
//!
//! Newton–Schulz: in exact arithmetic each step maps `X = UΣVᵀ` to `U·p(Σ)·Vᵀ` with
//! `p(σ) = aσ + bσ³ + cσ⁵`, so after `s` steps the result is `scale·U·pˢ(Σ₀)·Vᵀ`, `Σ₀` the
//! singular values of `G/(‖G‖_F + 10⁻⁷)`. The tests check exactly that: the result's singular
//! values (eigenvalues of `X·Xᵀ` by Jacobi's method, in f64) against `p⁵` of the input's, and
//! its singular vectors through the symmetry of `X·Gᵀ = U·p⁵(Σ₀)·Σ·Uᵀ`. Rounding enters each
//! step as a perturbation `E`; `p` is Lipschitz with `L ≈ 3.9` on `[0, 1.21]` (its derivative
//! is 3.44 at 0 and 3.9 at 1.21), and a Lipschitz function of the singular values is Lipschitz
//! in the Frobenius norm with the same constant (through the Hermitian dilation), so after five
//! steps the error is at most `Σ L^(5−t)·‖E_t‖_F ≤ 340·max‖E_t‖_F`. In f32 each step's products
//! over `k ≤ 300` terms give an `‖E_t‖_F` of about `√k·2⁻²⁴·‖X‖_F` (rounding errors of random
//! sign), ~10⁻⁶ here, so the f32 allowance for a singular value (and for the asymmetry of
//! `X·Gᵀ`, relative to `‖G‖_F`) is 10⁻⁴, the f64 one 10⁻¹⁰. Measured: 1.3·10⁻⁶ in f32,
//! 3·10⁻¹³ in f64.
//!
//! The band: for `σ ∈ [0.01, 1]` (a normalized matrix has `σ ≤ 1`), `p⁵(σ) ∈ [0.6818, 1.1344]`
//! (checked here on a fine grid); every singular value of a matrix whose smallest normalized
//! one is at least 0.01 lands in `[0.68, 1.135]`.

use crate::harness::*;
use weft_kernels::*;

const F: [DType; 2] = [DType::F32, DType::F64];

/// The scalar map of one Newton–Schulz step.
fn p(s: f64) -> f64 {
    let (a, b, c) = NewtonSchulz::COEFFICIENTS;
    a * s + b * s.powi(3) + c * s.powi(5)
}

fn p_steps(mut s: f64, steps: usize) -> f64 {
    for _ in 0..steps {
        s = p(s);
    }
    s
}

/// The eigenvalues of the symmetric `n × n` matrix `a` (row-major), by cyclic Jacobi
/// rotations in f64. The trace and the Frobenius norm, which rotations keep, are checked.
fn eigenvalues(mut a: Vec<f64>, n: usize) -> Vec<f64> {
    let trace: f64 = (0..n).map(|i| a[i * n + i]).sum();
    let frob: f64 = a.iter().map(|v| v * v).sum();
    for _ in 0..100 {
        let off: f64 = (0..n * n).filter(|i| i / n != i % n).map(|i| a[i] * a[i]).sum();
        if off <= 1e-30 * frob {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (kp, kq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * kp - s * kq;
                    a[k * n + q] = s * kp + c * kq;
                }
                for k in 0..n {
                    let (pk, qk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * pk - s * qk;
                    a[q * n + k] = s * pk + c * qk;
                }
            }
        }
    }
    let eig: Vec<f64> = (0..n).map(|i| a[i * n + i]).collect();
    let (t, f): (f64, f64) = (eig.iter().sum(), eig.iter().map(|v| v * v).sum());
    assert!(
        (t - trace).abs() <= 1e-10 * frob.sqrt().max(1e-300),
        "Jacobi: trace {t} vs {trace}"
    );
    assert!((f - frob).abs() <= 1e-10 * frob, "Jacobi: ‖·‖² {f} vs {frob}");
    eig
}

/// `x·yᵀ` for `x (rows, cols)` and `y (m, cols)`, in f64.
fn mul_t(x: &[f64], y: &[f64], rows: usize, cols: usize, m: usize) -> Vec<f64> {
    let mut out = vec![0.0; rows * m];
    for i in 0..rows {
        for j in 0..m {
            out[i * m + j] = (0..cols).map(|k| x[i * cols + k] * y[j * cols + k]).sum();
        }
    }
    out
}

fn transpose(x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    (0..rows * cols)
        .map(|i| x[(i % rows) * cols + i / rows])
        .collect()
}

/// The singular values of `x (rows, cols)`, largest first.
fn singular_values(x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let (r, wide) = if rows <= cols {
        (rows, x.to_vec())
    } else {
        (cols, transpose(x, rows, cols))
    };
    let k = rows.max(cols);
    let mut s: Vec<f64> = eigenvalues(mul_t(&wide, &wide, r, k, r), r)
        .into_iter()
        .map(|l| l.max(0.0).sqrt())
        .collect();
    s.sort_by(|a, b| b.total_cmp(a));
    s
}

/// `newton_schulz` of `g` on the CPU in `dt`, widened back to f64.
fn ns(g: &[f64], rows: usize, cols: usize, steps: usize, scale: f64, dt: DType) -> Vec<f64> {
    let d = NewtonSchulz {
        rows,
        cols,
        steps,
        scale,
    };
    let mut x = host(g, dt);
    let mut work = zeros(dt, d.work_len());
    cpu().newton_schulz(x.view_mut(), work.view_mut(), d).unwrap();
    f64s(&x)
}

/// Applies the Householder reflection `I − 2vvᵀ/vᵀv` to the rows (`left`) or the columns of
/// `x (rows, cols)`.
fn reflect(x: &mut [f64], rows: usize, cols: usize, v: &[f64], left: bool) {
    let vv: f64 = v.iter().map(|a| a * a).sum();
    if left {
        for j in 0..cols {
            let d: f64 = (0..rows).map(|i| v[i] * x[i * cols + j]).sum();
            (0..rows).for_each(|i| x[i * cols + j] -= 2.0 * d / vv * v[i]);
        }
    } else {
        for i in 0..rows {
            let d: f64 = (0..cols).map(|j| v[j] * x[i * cols + j]).sum();
            (0..cols).for_each(|j| x[i * cols + j] -= 2.0 * d / vv * v[j]);
        }
    }
}

/// A `(rows, cols)` matrix `U·diag(σ)·Vᵀ` with `σ` from 7 down to 0.35, geometrically, and
/// `U`, `V` products of three random reflections each.
fn conditioned(seed: u64, rows: usize, cols: usize) -> Vec<f64> {
    let r = rows.min(cols);
    let mut x = vec![0.0; rows * cols];
    for i in 0..r {
        x[i * cols + i] = 7.0 * 0.05f64.powf(i as f64 / (r - 1).max(1) as f64);
    }
    for t in 0..3 {
        reflect(&mut x, rows, cols, &rand_vec(seed + t, rows), true);
        reflect(&mut x, rows, cols, &rand_vec(seed + 10 + t, cols), false);
    }
    x
}

fn frobenius(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum::<f64>().sqrt()
}

#[test]
fn five_quintic_steps_map_the_unit_interval_into_the_band() {
    let (mut lo, mut hi) = (f64::INFINITY, 0f64);
    for i in 0..=1_000_000 {
        let s = 0.01 + 0.99 * i as f64 / 1e6;
        let y = p_steps(s, 5);
        (lo, hi) = (lo.min(y), hi.max(y));
    }
    assert!(lo > 0.6818 && hi < 1.1344, "p⁵([0.01, 1]) = [{lo}, {hi}]");
}

#[test]
fn newton_schulz_lands_singular_values_in_the_band() {
    for (rows, cols) in [(24, 96), (96, 24), (32, 32), (16, 64), (64, 16)] {
        // Random matrices are well conditioned when far from square; square ones are built so.
        let g = if rows == cols || rows == 24 || cols == 24 {
            conditioned(1, rows, cols)
        } else {
            rand_vec(2, rows * cols)
        };
        let s0 = singular_values(&g, rows, cols);
        let smallest = s0.last().unwrap() / frobenius(&g);
        assert!(
            smallest >= 0.01,
            "({rows}, {cols}): σ_min/‖G‖_F = {smallest}: not a band case"
        );
        for dt in F {
            let slack = if dt == DType::F32 { 1e-4 } else { 1e-10 };
            let s = singular_values(&ns(&g, rows, cols, 5, 1.0, dt), rows, cols);
            assert!(
                s.iter().all(|&v| (0.68 - slack..=1.135 + slack).contains(&v)),
                "({rows}, {cols}) [{dt}]: singular values {:?}..{:?} outside [0.68, 1.135]",
                s.last(),
                s.first()
            );
        }
    }
}

#[test]
fn newton_schulz_acts_on_singular_values_alone() {
    let mut worst = [0f64; 2];
    for (seed, (rows, cols)) in [(1, 1), (1, 300), (300, 1), (37, 53), (53, 37), (64, 64), (12, 40)]
        .into_iter()
        .enumerate()
    {
        let g: Vec<f64> = rand_vec(30 + seed as u64, rows * cols)
            .iter()
            .map(|v| 4.0 * v)
            .collect();
        for (k, dt) in F.into_iter().enumerate() {
            // The input as the op sees it.
            let g = f64s(&host(&g, dt));
            let norm = frobenius(&g) + NewtonSchulz::EPS;
            let tol = if dt == DType::F32 { 1e-4 } else { 1e-10 };
            let x = ns(&g, rows, cols, 5, 1.0, dt);
            let mut want: Vec<f64> = singular_values(&g, rows, cols)
                .iter()
                .map(|&s| p_steps(s / norm, 5))
                .collect();
            want.sort_by(|a, b| b.total_cmp(a));
            let got = singular_values(&x, rows, cols);
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(
                err <= tol,
                "({rows}, {cols}) [{dt}]: singular values {got:?}, p⁵ of the input's {want:?} ({err:e} apart)"
            );
            // Same singular vectors: X·Gᵀ (wide) or Xᵀ·G (tall) is symmetric.
            let r = rows.min(cols);
            let (xw, gw) = if rows <= cols {
                (x.clone(), g.clone())
            } else {
                (transpose(&x, rows, cols), transpose(&g, rows, cols))
            };
            let m = mul_t(&xw, &gw, r, rows.max(cols), r);
            let asym = (0..r * r)
                .map(|i| (m[i] - m[(i % r) * r + i / r]).abs())
                .fold(0.0, f64::max);
            assert!(
                asym <= tol * frobenius(&g),
                "({rows}, {cols}) [{dt}]: X·Gᵀ is not symmetric ({asym:e})"
            );
            worst[k] = worst[k].max(err).max(asym / frobenius(&g));
        }
    }
    eprintln!(
        "newton_schulz: worst error f32 {:e}, f64 {:e}",
        worst[0], worst[1]
    );
}

#[test]
fn newton_schulz_scale_multiplies_and_tall_is_the_transposed_wide() {
    for dt in F {
        let (rows, cols) = (19, 45);
        let g = f64s(&host(&rand_vec(50, rows * cols), dt));
        let one = ns(&g, rows, cols, 5, 1.0, dt);
        let s = f64s(&host(&[2.5], dt))[0];
        let scaled = ns(&g, rows, cols, 5, 2.5, dt);
        let want: Vec<f64> = one.iter().map(|v| f64s(&host(&[s * v], dt))[0]).collect();
        assert_eq!(scaled, want, "[{dt}]: scale 2.5 is not 2.5 × scale 1");
        let tall = ns(&transpose(&g, rows, cols), cols, rows, 5, 2.5, dt);
        assert_eq!(
            tall,
            transpose(&scaled, rows, cols),
            "[{dt}]: the tall input's result is not the wide one's transpose"
        );
    }
}

#[test]
fn newton_schulz_without_steps_normalizes() {
    for dt in F {
        let (rows, cols) = (7, 5);
        let g = f64s(&host(&rand_vec(60, rows * cols), dt));
        let got = ns(&g, rows, cols, 0, 3.0, dt);
        let k = 3.0 / (frobenius(&g) + NewtonSchulz::EPS);
        // Two roundings of the factor and two of the products.
        let u = if dt == DType::F32 {
            2f64.powi(-24)
        } else {
            2f64.powi(-53)
        };
        for (i, (&x, &y)) in g.iter().zip(&got).enumerate() {
            assert!(
                (y - k * x).abs() <= 5.0 * u * (k * x).abs(),
                "[{dt}] element {i}: {y}, G/‖G‖·3 = {}",
                k * x
            );
        }
    }
}

#[test]
fn matrix_normalize_modes_match_host_math() {
    let c = cpu();
    for (rows, cols) in [(1, 1), (1, 300), (300, 1), (37, 53), (64, 64)] {
        // A zero row and a zero column (parts of norm 0), and random values.
        let mut g = rand_vec(70, rows * cols);
        for (i, v) in g.iter_mut().enumerate() {
            if (rows > 3 && i / cols == 2) || (cols > 3 && i % cols == 1) {
                *v = 0.0;
            }
        }
        for dt in F {
            let g = f64s(&host(&g, dt));
            let u = if dt == DType::F32 {
                2f64.powi(-24)
            } else {
                2f64.powi(-53)
            };
            for mode in [
                Normalize::Frobenius,
                Normalize::Rows,
                Normalize::Cols,
                Normalize::Sign,
            ] {
                for (scale, eps) in [(1.0, 1e-7), (0.37, 0.0), (3.0, 1e-3)] {
                    let d = NormalizeDims {
                        rows,
                        cols,
                        mode,
                        scale,
                        eps,
                    };
                    let mut x = host(&g, dt);
                    c.matrix_normalize(x.view_mut(), d).unwrap();
                    let got = f64s(&x);
                    let part_norm = |i: usize| -> f64 {
                        let (r, j) = (i / cols, i % cols);
                        let sq = |k: usize| g[k] * g[k];
                        match mode {
                            Normalize::Frobenius => (0..rows * cols).map(sq).sum::<f64>(),
                            Normalize::Rows => (0..cols).map(|k| sq(r * cols + k)).sum(),
                            _ => (0..rows).map(|k| sq(k * cols + j)).sum(),
                        }
                        .sqrt()
                    };
                    for i in 0..rows * cols {
                        let want = match mode {
                            Normalize::Sign if g[i] == 0.0 => 0.0,
                            Normalize::Sign => scale.copysign(g[i]),
                            _ if g[i] == 0.0 => 0.0,
                            _ => g[i] * scale / (part_norm(i) + eps),
                        };
                        // The factor and the product rounded once each; f64 sums of squares.
                        let tol = (2.5 * u + (rows * cols + 8) as f64 * 2f64.powi(-53)) * want.abs();
                        assert!(
                            (got[i] - want).abs() <= tol,
                            "{mode:?} ({rows}, {cols}) [{dt}] scale={scale} eps={eps}: element {i} is {}, want {want}",
                            got[i]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn momentum_update_matches_its_formula() {
    let c = cpu();
    let n = 257;
    for (mu, dampening, nesterov, grad_scale) in [
        (0.95, 1.0, true, 1.0),
        (0.95, 1.0, false, 0.7),
        (0.9, 0.1, false, 0.5),
        (0.9, 0.1, true, 1.3),
    ] {
        let h = Momentum {
            mu,
            dampening,
            nesterov,
            grad_scale,
        };
        for dt in F {
            let (m0, g) = (
                f64s(&host(&rand_vec(80, n), dt)),
                f64s(&host(&rand_vec(81, n), dt)),
            );
            let (mut m, mut u) = (host(&m0, dt), host(&rand_vec(82, n), dt));
            c.momentum_update(m.view_mut(), u.view_mut(), host(&g, dt).view(), h, n)
                .unwrap();
            let (m, u) = (f64s(&m), f64s(&u));
            let ulp = if dt == DType::F32 {
                2f64.powi(-24)
            } else {
                2f64.powi(-53)
            };
            for i in 0..n {
                let gi = grad_scale * g[i];
                let want_m = mu * m0[i] + dampening * gi;
                let want_u = if nesterov { gi + mu * want_m } else { want_m };
                // Rounded scalars and 3 (m) or 5 (u) roundings, against the terms' magnitude.
                let mag_m = (mu * m0[i]).abs() + (dampening * gi).abs();
                let mag_u = gi.abs() + mu * mag_m;
                let what = format!("mu={mu} dampening={dampening} nesterov={nesterov} [{dt}] element {i}");
                assert!(
                    (m[i] - want_m).abs() <= 5.0 * ulp * mag_m,
                    "{what}: m {} vs {want_m}",
                    m[i]
                );
                assert!(
                    (u[i] - want_u).abs() <= 8.0 * ulp * mag_u,
                    "{what}: u {} vs {want_u}",
                    u[i]
                );
            }
        }
    }
}

#[test]
fn apply_direction_matches_its_formula() {
    let c = cpu();
    let n = 300;
    for (lr, keep) in [(0.02, 1.0 - 0.02 * 0.1), (0.05, 0.95), (1e-3, 1.0)] {
        for dt in F {
            let (p0, d) = (
                f64s(&host(&rand_vec(90, n), dt)),
                f64s(&host(&rand_vec(91, n), dt)),
            );
            let mut p = host(&p0, dt);
            c.apply_direction(p.view_mut(), host(&d, dt).view(), lr, keep, n)
                .unwrap();
            let got = f64s(&p);
            let ulp = if dt == DType::F32 {
                2f64.powi(-24)
            } else {
                2f64.powi(-53)
            };
            for i in 0..n {
                let want = keep * p0[i] - lr * d[i];
                let mag = (keep * p0[i]).abs() + (lr * d[i]).abs();
                assert!(
                    (got[i] - want).abs() <= 5.0 * ulp * mag,
                    "lr={lr} keep={keep} [{dt}] element {i}: {} vs {want}",
                    got[i]
                );
            }
        }
    }
}

fn refusal(r: Result<()>) -> String {
    r.expect_err("the call must be refused").to_string()
}

#[test]
fn bad_calls_are_refused_naming_the_argument() {
    let c = cpu();
    let f = DType::F32;
    let h = Momentum {
        mu: 0.9,
        dampening: 1.0,
        nesterov: true,
        grad_scale: 1.0,
    };
    let (mut m, mut u, g) = (zeros(f, 10), zeros(f, 9), zeros(f, 10));
    assert_eq!(
        refusal(c.momentum_update(m.view_mut(), u.view_mut(), g.view(), h, 10)),
        "momentum_update: argument `u` has the wrong size: expected 10 elements (n=10), got 9 elements"
    );
    let mut u = zeros(f, 10);
    for mu in [1.0, 1.5, -0.1, f64::NAN] {
        let e = refusal(c.momentum_update(m.view_mut(), u.view_mut(), g.view(), Momentum { mu, ..h }, 10));
        assert!(
            e.starts_with("momentum_update: invalid `mu`: momentum must be in [0, 1)"),
            "{e}"
        );
    }
    let gb = zeros(DType::BF16, 10);
    assert_eq!(
        refusal(c.momentum_update(m.view_mut(), u.view_mut(), gb.view(), h, 10)),
        "momentum_update: argument `grads` has dtype bf16, expected one of f32, f64"
    );
    let mut m64 = zeros(DType::F64, 10);
    assert_eq!(
        refusal(c.momentum_update(m64.view_mut(), u.view_mut(), g.view(), h, 10)),
        "momentum_update: argument `m` has dtype f64, expected f32"
    );

    let d = NewtonSchulz {
        rows: 3,
        cols: 5,
        steps: 5,
        scale: 1.0,
    };
    assert_eq!(d.work_len(), 2 * 3 * 5 + 2 * 9);
    let (mut x, mut work) = (zeros(f, 15), zeros(f, d.work_len() - 1));
    assert_eq!(
        refusal(c.newton_schulz(x.view_mut(), work.view_mut(), d)),
        "newton_schulz: argument `work` has the wrong size: expected 48 elements (2·r·k + 2·r² with r=3, k=5), got 47 elements"
    );
    let (mut x14, mut work) = (zeros(f, 14), zeros(f, d.work_len()));
    let e = refusal(c.newton_schulz(x14.view_mut(), work.view_mut(), d));
    assert!(
        e.starts_with("newton_schulz: argument `x` has the wrong size"),
        "{e}"
    );
    let mut xb = zeros(DType::BF16, 15);
    let e = refusal(c.newton_schulz(xb.view_mut(), work.view_mut(), d));
    assert_eq!(
        e,
        "newton_schulz: argument `x` has dtype bf16, expected one of f32, f64"
    );

    let nd = NormalizeDims {
        rows: 3,
        cols: 5,
        mode: Normalize::Rows,
        scale: 1.0,
        eps: -1e-7,
    };
    let e = refusal(c.matrix_normalize(x.view_mut(), nd));
    assert!(e.starts_with("matrix_normalize: invalid `eps`"), "{e}");
    let e = refusal(c.matrix_normalize(x14.view_mut(), NormalizeDims { eps: 0.0, ..nd }));
    assert_eq!(
        e,
        "matrix_normalize: argument `x` has the wrong size: expected 15 elements (rows=3, cols=5), got 14 elements"
    );
    let e = refusal(c.matrix_normalize(xb.view_mut(), NormalizeDims { eps: 0.0, ..nd }));
    assert!(e.contains("argument `x` has dtype bf16"), "{e}");

    let (mut p, dir) = (zeros(f, 10), zeros(f, 11));
    assert_eq!(
        refusal(c.apply_direction(p.view_mut(), dir.view(), 0.1, 1.0, 10)),
        "apply_direction: argument `dir` has the wrong size: expected 10 elements (n=10), got 11 elements"
    );
    let (mut pb, dir) = (zeros(DType::BF16, 10), zeros(DType::BF16, 10));
    let e = refusal(c.apply_direction(pb.view_mut(), dir.view(), 0.1, 1.0, 10));
    assert!(e.contains("argument `dir` has dtype bf16"), "{e}");
}
