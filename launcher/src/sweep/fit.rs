//! Least-squares fits for scaling studies: the saturating power law `L = E + A·x^(−α)` with
//! standard errors, and the parabola in log learning rate that locates the best rate.
//!
//! The power law is fitted by Levenberg–Marquardt on `(E, ln A, α)` with the data's `x`
//! rescaled by its geometric mean (so `A` is well conditioned), starting from a grid over `α`
//! where the model is linear in `(E, A)`. Standard errors come from `s²·(JᵀJ)⁻¹` at the
//! optimum, with `s² = RSS/(n − 3)`.

/// A fitted `L = E + A·x^(−α)`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PowerLaw {
    pub e: f64,
    pub a: f64,
    pub alpha: f64,
    /// Standard errors of `e`, `a`, `alpha`.
    pub se: [f64; 3],
    /// Coefficient of determination.
    pub r2: f64,
}

impl PowerLaw {
    pub fn at(&self, x: f64) -> f64 {
        self.e + self.a * x.powf(-self.alpha)
    }
}

/// Solve the 3×3 system `m·x = b` (Gaussian elimination with partial pivoting); `None` if
/// singular.
fn solve3(mut m: [[f64; 3]; 3], mut b: [f64; 3]) -> Option<[f64; 3]> {
    for c in 0..3 {
        let p = (c..3).max_by(|&i, &j| m[i][c].abs().total_cmp(&m[j][c].abs()))?;
        if m[p][c].abs() < 1e-300 {
            return None;
        }
        m.swap(c, p);
        b.swap(c, p);
        for r in c + 1..3 {
            let f = m[r][c] / m[c][c];
            let pivot = m[c];
            for (x, p) in m[r].iter_mut().zip(pivot).skip(c) {
                *x -= f * p;
            }
            b[r] -= f * b[c];
        }
    }
    let mut x = [0.0; 3];
    for c in (0..3).rev() {
        x[c] = (b[c] - (c + 1..3).map(|k| m[c][k] * x[k]).sum::<f64>()) / m[c][c];
    }
    Some(x)
}

/// Fit `y = E + A·x^(−α)` to at least 4 points with `x > 0`.
pub fn power_law(x: &[f64], y: &[f64]) -> Option<PowerLaw> {
    let n = x.len();
    if n < 4 || y.len() != n || x.iter().any(|&v| v <= 0.0 || !v.is_finite()) {
        return None;
    }
    // Work on u = x / geomean(x): then A' = A·g^(−α).
    let g = (x.iter().map(|v| v.ln()).sum::<f64>() / n as f64).exp();
    let u: Vec<f64> = x.iter().map(|v| v / g).collect();
    let rss = |p: &[f64; 3]| -> f64 {
        u.iter()
            .zip(y)
            .map(|(&ui, &yi)| (yi - p[0] - p[1].exp() * ui.powf(-p[2])).powi(2))
            .sum()
    };
    // Start: for each α on a grid, (E, A) by linear least squares; keep the best with A > 0.
    let mut best: Option<([f64; 3], f64)> = None;
    for k in 1..=200 {
        let alpha = k as f64 * 0.01;
        let z: Vec<f64> = u.iter().map(|ui| ui.powf(-alpha)).collect();
        let (mz, my) = (z.iter().sum::<f64>() / n as f64, y.iter().sum::<f64>() / n as f64);
        let szz: f64 = z.iter().map(|v| (v - mz).powi(2)).sum();
        let a = z.iter().zip(y).map(|(zi, yi)| (zi - mz) * (yi - my)).sum::<f64>() / szz;
        if a <= 0.0 || !a.is_finite() {
            continue;
        }
        let p = [my - a * mz, a.ln(), alpha];
        let r = rss(&p);
        if best.is_none_or(|(_, b)| r < b) {
            best = Some((p, r));
        }
    }
    let (mut p, mut cost) = best?;
    // Levenberg–Marquardt.
    let jac = |p: &[f64; 3], ui: f64| -> [f64; 3] {
        let t = p[1].exp() * ui.powf(-p[2]);
        [1.0, t, -t * ui.ln()]
    };
    let normal = |p: &[f64; 3]| -> ([[f64; 3]; 3], [f64; 3]) {
        let (mut jtj, mut jtr) = ([[0.0; 3]; 3], [0.0; 3]);
        for (&ui, &yi) in u.iter().zip(y) {
            let j = jac(p, ui);
            let r = yi - p[0] - p[1].exp() * ui.powf(-p[2]);
            for a in 0..3 {
                jtr[a] += j[a] * r;
                for b in 0..3 {
                    jtj[a][b] += j[a] * j[b];
                }
            }
        }
        (jtj, jtr)
    };
    let mut lambda = 1e-3;
    for _ in 0..200 {
        let (jtj, jtr) = normal(&p);
        let mut m = jtj;
        (0..3).for_each(|i| m[i][i] *= 1.0 + lambda);
        let Some(step) = solve3(m, jtr) else { break };
        let q = [p[0] + step[0], p[1] + step[1], p[2] + step[2]];
        let c = rss(&q);
        if c < cost {
            let done = (cost - c) <= 1e-15 * cost.max(1e-300);
            (p, cost, lambda) = (q, c, lambda * 0.3);
            if done {
                break;
            }
        } else {
            lambda *= 10.0;
            if lambda > 1e12 {
                break;
            }
        }
    }
    // Back to x: A = A'·g^α. Covariance of (E, ln A', α) → (E, A, α) by the delta method.
    let (jtj, _) = normal(&p);
    let s2 = cost / (n as f64 - 3.0);
    let inv = |col: usize| {
        let mut e = [0.0; 3];
        e[col] = 1.0;
        solve3(jtj, e)
    };
    let cov: Vec<[f64; 3]> = (0..3).map(inv).collect::<Option<_>>()?;
    let alpha = p[2];
    let a = p[1].exp() * g.powf(alpha);
    // A = exp(l)·g^α: ∂A/∂l = A, ∂A/∂α = A·ln g.
    let grad = [0.0, a, a * g.ln()];
    let var_a: f64 = (0..3)
        .flat_map(|i| (0..3).map(move |j| (i, j)))
        .map(|(i, j)| grad[i] * cov[i][j] * grad[j])
        .sum();
    let my = y.iter().sum::<f64>() / n as f64;
    let tss: f64 = y.iter().map(|v| (v - my).powi(2)).sum();
    Some(PowerLaw {
        e: p[0],
        a,
        alpha,
        se: [
            (s2 * cov[0][0]).sqrt(),
            (s2 * var_a).sqrt(),
            (s2 * cov[2][2]).sqrt(),
        ],
        r2: 1.0 - cost / tss,
    })
}

/// The minimum of a curve sampled at `x > 0` (learning rates, model sizes).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Minimum {
    pub x: f64,
    /// The fitted value at `x` (or the lowest sample when not fitted).
    pub y: f64,
    /// Whether `x` is the vertex of the parabola; otherwise it is the lowest sample.
    pub fitted: bool,
}

/// The minimum of `y` over `ln x`: a parabola fitted by least squares to the lowest finite
/// sample and up to two neighbours on each side (far from the minimum, loss against log
/// learning rate or log size is not parabolic), without neighbours above 1.5× the lowest
/// value while 3 points remain; its vertex when it opens upwards and lies inside the fitted
/// range, else the lowest sample. Non-finite `y` (diverged runs) are left out.
pub fn log_parabola_min(x: &[f64], y: &[f64]) -> Option<Minimum> {
    let mut pts: Vec<(f64, f64)> = x
        .iter()
        .zip(y)
        .filter(|(r, l)| l.is_finite() && **r > 0.0)
        .map(|(r, l)| (r.ln(), *l))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let i = (0..pts.len()).min_by(|&a, &b| pts[a].1.total_cmp(&pts[b].1))?;
    let lowest = Minimum {
        x: pts[i].0.exp(),
        y: pts[i].1,
        fitted: false,
    };
    // Up to two neighbours each side, leaving out blown-up points (more than 1.5× the
    // lowest: diverging or stalled runs), which a parabola cannot follow.
    let window = &pts[i.saturating_sub(2)..(i + 3).min(pts.len())];
    let kept: Vec<(f64, f64)> = window.iter().copied().filter(|p| p.1 <= 1.5 * pts[i].1).collect();
    let near: &[(f64, f64)] = if kept.len() >= 3 { &kept } else { window };
    if near.len() < 3 {
        return Some(lowest);
    }
    // Normal equations for y = c0 + c1·u + c2·u², centred (u = x − mean) for conditioning.
    let mx = near.iter().map(|p| p.0).sum::<f64>() / near.len() as f64;
    let (mut m, mut b) = ([[0.0; 3]; 3], [0.0; 3]);
    for &(x, y) in near {
        let u = x - mx;
        let v = [1.0, u, u * u];
        for i in 0..3 {
            b[i] += v[i] * y;
            for j in 0..3 {
                m[i][j] += v[i] * v[j];
            }
        }
    }
    let Some(c) = solve3(m, b) else {
        return Some(lowest);
    };
    let (lo, hi) = (near[0].0 - mx, near[near.len() - 1].0 - mx);
    let vertex = -c[1] / (2.0 * c[2]);
    if c[2] > 0.0 && (lo..=hi).contains(&vertex) {
        Some(Minimum {
            x: (vertex + mx).exp(),
            y: c[0] + c[1] * vertex + c[2] * vertex * vertex,
            fitted: true,
        })
    } else {
        Some(lowest)
    }
}

/// A fitted line `ln y = ln k + a·ln x`, i.e. `y = k·x^a`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct LogLine {
    pub k: f64,
    pub a: f64,
    /// Standard error of `a` (NaN with fewer than 3 points).
    pub se_a: f64,
    /// Coefficient of determination in log space.
    pub r2: f64,
}

/// Least-squares fit of `y = k·x^a` in log–log space (at least 2 points, all positive).
pub fn log_line(x: &[f64], y: &[f64]) -> Option<LogLine> {
    let n = x.len();
    if n < 2 || y.len() != n || x.iter().chain(y).any(|&v| v <= 0.0 || !v.is_finite()) {
        return None;
    }
    let (lx, ly): (Vec<f64>, Vec<f64>) = x.iter().zip(y).map(|(a, b)| (a.ln(), b.ln())).unzip();
    let (mx, my) = (
        lx.iter().sum::<f64>() / n as f64,
        ly.iter().sum::<f64>() / n as f64,
    );
    let sxx: f64 = lx.iter().map(|v| (v - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let a = lx.iter().zip(&ly).map(|(u, v)| (u - mx) * (v - my)).sum::<f64>() / sxx;
    let b = my - a * mx;
    let rss: f64 = lx.iter().zip(&ly).map(|(u, v)| (v - b - a * u).powi(2)).sum();
    let tss: f64 = ly.iter().map(|v| (v - my).powi(2)).sum();
    Some(LogLine {
        k: b.exp(),
        a,
        se_a: if n > 2 {
            (rss / (n - 2) as f64 / sxx).sqrt()
        } else {
            f64::NAN
        },
        r2: if tss > 0.0 { 1.0 - rss / tss } else { 1.0 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn recovers_a_known_power_law_from_noisy_data() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        // Compute budgets 1e15..2e18 FLOPs; the reducible term falls from ~1 to ~0.09.
        let (e, a, alpha) = (1.7, 6.3e4, 0.32);
        let x: Vec<f64> = (0..12).map(|i| 1e15 * 2f64.powi(i)).collect();
        for noise in [0.0, 0.002] {
            let y: Vec<f64> = x
                .iter()
                .map(|&v| e + a * v.powf(-alpha) + noise * (rng.random::<f64>() * 2.0 - 1.0))
                .collect();
            let f = power_law(&x, &y).unwrap();
            if noise == 0.0 {
                assert!((f.e - e).abs() < 1e-6 && (f.alpha - alpha).abs() < 1e-6, "{f:?}");
                assert!((f.a / a - 1.0).abs() < 1e-4, "{f:?}");
            } else {
                // Within four standard errors, and the errors are honest (not huge).
                assert!((f.e - e).abs() < 4.0 * f.se[0] && f.se[0] < 0.05, "{f:?}");
                assert!((f.alpha - alpha).abs() < 4.0 * f.se[2] && f.se[2] < 0.05, "{f:?}");
                assert!((f.a - a).abs() < 4.0 * f.se[1], "{f:?}");
                assert!(f.r2 > 0.99, "{f:?}");
            }
        }
    }

    #[test]
    fn the_best_learning_rate_is_the_parabola_vertex() {
        let lr: Vec<f64> = (0..7).map(|i| 1e-3 * 2f64.powi(i)).collect();
        let loss: Vec<f64> = lr
            .iter()
            .map(|r: &f64| 2.0 + 0.3 * (r.ln() - 0.01f64.ln()).powi(2))
            .collect();
        let Minimum { x: best, fitted, .. } = log_parabola_min(&lr, &loss).unwrap();
        assert!(fitted && (best / 0.01 - 1.0).abs() < 1e-9, "{best}");
        // Diverged runs (infinite loss) are left out; a monotone curve gives the lowest point.
        let loss: Vec<f64> = lr
            .iter()
            .enumerate()
            .map(|(i, _)| {
                if i == 6 {
                    f64::INFINITY
                } else {
                    3.0 - i as f64 * 0.1
                }
            })
            .collect();
        let Minimum { x: best, fitted, .. } = log_parabola_min(&lr, &loss).unwrap();
        assert!(!fitted && (best / lr[5] - 1.0).abs() < 1e-12, "{best}");
    }

    #[test]
    fn the_parabola_uses_the_points_near_the_minimum() {
        // Parabolic near 0.01, flat far out (as real loss curves are): a global parabola
        // would be pulled off; the window around the lowest point is not.
        let lr: Vec<f64> = (0..9).map(|i| 1e-3 * 2f64.powi(i)).collect();
        let loss: Vec<f64> = lr
            .iter()
            .map(|r: &f64| {
                let d = r.ln() - 0.012f64.ln();
                if d.abs() < 1.5 {
                    1.0 + 0.2 * d * d
                } else {
                    1.0 + 0.3 * d.abs()
                }
            })
            .collect();
        let m = log_parabola_min(&lr, &loss).unwrap();
        assert!(
            m.fitted && (m.x / 0.012 - 1.0).abs() < 0.05 && (m.y - 1.0).abs() < 0.02,
            "{m:?}"
        );
    }

    #[test]
    fn a_log_line_recovers_its_exponent() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let x: Vec<f64> = (0..8).map(|i| 1e12 * 3f64.powi(i)).collect();
        let y: Vec<f64> = x
            .iter()
            .map(|v| 0.08 * v.powf(0.49) * (1.0 + 0.03 * (rng.random::<f64>() * 2.0 - 1.0)))
            .collect();
        let f = log_line(&x, &y).unwrap();
        assert!(
            (f.a - 0.49).abs() < 4.0 * f.se_a && f.se_a < 0.01 && f.r2 > 0.999,
            "{f:?}"
        );
        assert!(log_line(&[1.0], &[2.0]).is_none() && log_line(&[1.0, 1.0], &[2.0, 3.0]).is_none());
    }
}
