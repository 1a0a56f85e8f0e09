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

/// The best learning rate from losses at several rates: a parabola in `ln lr` fitted by least
/// squares, its vertex when it opens upwards and lies inside the tried range, else the rate
/// with the lowest loss. Returns `(lr, from the parabola)`.
pub fn best_lr(lr: &[f64], loss: &[f64]) -> Option<(f64, bool)> {
    let pts: Vec<(f64, f64)> = lr
        .iter()
        .zip(loss)
        .filter(|(_, l)| l.is_finite())
        .map(|(r, l)| (r.ln(), *l))
        .collect();
    let lowest = pts.iter().min_by(|a, b| a.1.total_cmp(&b.1))?.0.exp();
    if pts.len() < 3 {
        return Some((lowest, false));
    }
    // Normal equations for y = c0 + c1·x + c2·x².
    let (mut m, mut b) = ([[0.0; 3]; 3], [0.0; 3]);
    for &(x, y) in &pts {
        let v = [1.0, x, x * x];
        for i in 0..3 {
            b[i] += v[i] * y;
            for j in 0..3 {
                m[i][j] += v[i] * v[j];
            }
        }
    }
    let c = solve3(m, b)?;
    let (lo, hi) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), p| (l.min(p.0), h.max(p.0)));
    let vertex = -c[1] / (2.0 * c[2]);
    if c[2] > 0.0 && (lo..=hi).contains(&vertex) {
        Some((vertex.exp(), true))
    } else {
        Some((lowest, false))
    }
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
        let (best, fitted) = best_lr(&lr, &loss).unwrap();
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
        let (best, fitted) = best_lr(&lr, &loss).unwrap();
        assert!(!fitted && (best / lr[5] - 1.0).abs() < 1e-12, "{best}");
    }
}
