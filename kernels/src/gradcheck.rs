//! Finite-difference gradient checking in f64, and per-dtype comparison tolerances.
//!
//! [`check_gradients`] contracts an op's output with fixed random weights `w`
//! (`L = Σ w ⊙ out`), asks the op's backward for `∂L/∂input` with `dout = w`, and compares every
//! probed element against the central difference `(L(x + h) − L(x − h)) / 2h`, all in f64.
//! It returns an error (never panics, never passes silently) on the first element out of
//! tolerance. [`compare`] holds a lower-precision run to the f64 reference.

use crate::DType;

/// `|got − want| ≤ atol + rtol·max(|got|, |want|)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub atol: f64,
    pub rtol: f64,
}

impl Tolerance {
    /// Analytic backward vs central finite differences, both in f64 with `h = 1e-5`
    /// (truncation error ~h², round-off ~1e-16/h).
    pub const FINITE_DIFF: Tolerance = Tolerance {
        atol: 1e-7,
        rtol: 1e-6,
    };

    /// An op computed in `dtype` against the same op computed in f64.
    ///
    /// | dtype | atol | rtol | why |
    /// |---|---|---|---|
    /// | f64 | 1e-12 | 1e-10 | reassociation only |
    /// | f32 | 1e-5 | 1e-4 | 24-bit mantissa, sums of up to ~10³ terms |
    /// | f16 | 2e-3 | 5e-3 | 11-bit mantissa inputs, f32 accumulation |
    /// | bf16 | 2e-2 | 3e-2 | 8-bit mantissa inputs, f32 accumulation |
    pub fn for_dtype(dtype: DType) -> Tolerance {
        match dtype {
            DType::F64 => Tolerance {
                atol: 1e-12,
                rtol: 1e-10,
            },
            DType::F32 => Tolerance {
                atol: 1e-5,
                rtol: 1e-4,
            },
            DType::F16 => Tolerance {
                atol: 2e-3,
                rtol: 5e-3,
            },
            DType::BF16 => Tolerance {
                atol: 2e-2,
                rtol: 3e-2,
            },
            DType::I32 | DType::U16 => Tolerance { atol: 0.0, rtol: 0.0 },
        }
    }

    pub fn ok(&self, got: f64, want: f64) -> bool {
        (got - want).abs() <= self.atol + self.rtol * got.abs().max(want.abs())
    }
}

/// How much of each input to probe.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Finite-difference step.
    pub h: f64,
    /// At most this many elements per input are perturbed (evenly spread); all when smaller.
    pub max_probes: usize,
    pub tol: Tolerance,
    /// Seed of the contraction weights.
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            h: 1e-5,
            max_probes: 96,
            tol: Tolerance::FINITE_DIFF,
            seed: 0x5eed,
        }
    }
}

/// What a passing check measured.
#[derive(Clone, Debug)]
pub struct Report {
    pub probes: usize,
    pub max_abs_err: f64,
}

/// SplitMix64: a tiny, well-known deterministic generator for test weights.
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `[-1, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
    pub fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.uniform()).collect()
    }
}

/// Check `backward` against finite differences of `forward`.
///
/// * `forward(inputs) → output`;
/// * `backward(inputs, dout) → one entry per input`: `Some(gradient)` for inputs to check,
///   `None` for inputs without a gradient (ids, tables of constants).
pub fn check_gradients(
    name: &str,
    inputs: &[Vec<f64>],
    forward: impl Fn(&[Vec<f64>]) -> Vec<f64>,
    backward: impl Fn(&[Vec<f64>], &[f64]) -> Vec<Option<Vec<f64>>>,
    opts: Options,
) -> Result<Report, String> {
    let out = forward(inputs);
    let w = SplitMix::new(opts.seed).vec(out.len());
    let loss = |x: &[Vec<f64>]| -> f64 { forward(x).iter().zip(&w).map(|(o, w)| o * w).sum() };
    let grads = backward(inputs, &w);
    if grads.len() != inputs.len() {
        return Err(format!(
            "{name}: backward returned {} gradients for {} inputs",
            grads.len(),
            inputs.len()
        ));
    }
    let mut report = Report {
        probes: 0,
        max_abs_err: 0.0,
    };
    let mut x = inputs.to_vec();
    for (i, g) in grads.iter().enumerate() {
        let Some(g) = g else { continue };
        if g.len() != inputs[i].len() {
            return Err(format!(
                "{name}: gradient {i} has {} elements, input has {}",
                g.len(),
                inputs[i].len()
            ));
        }
        let n = g.len();
        let stride = n.div_ceil(opts.max_probes.max(1)).max(1);
        for j in (0..n).step_by(stride) {
            let x0 = x[i][j];
            x[i][j] = x0 + opts.h;
            let lp = loss(&x);
            x[i][j] = x0 - opts.h;
            let lm = loss(&x);
            x[i][j] = x0;
            let numeric = (lp - lm) / (2.0 * opts.h);
            let err = (g[j] - numeric).abs();
            report.max_abs_err = report.max_abs_err.max(err);
            report.probes += 1;
            if !opts.tol.ok(g[j], numeric) {
                return Err(format!(
                    "{name}: gradient of input {i} at element {j}: analytic {:.9e}, finite difference {:.9e} (|err| {err:.3e}, tolerance {:?})",
                    g[j], numeric, opts.tol
                ));
            }
        }
    }
    Ok(report)
}

/// Element-wise comparison of a run against a reference; `Err` names the first bad element.
pub fn compare(name: &str, got: &[f64], want: &[f64], tol: Tolerance) -> Result<f64, String> {
    if got.len() != want.len() {
        return Err(format!(
            "{name}: {} elements, reference has {}",
            got.len(),
            want.len()
        ));
    }
    let mut max_err = 0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if g.is_nan() != w.is_nan() || (g.is_infinite() || w.is_infinite()) && g != w {
            return Err(format!("{name}[{i}]: got {g}, reference {w}"));
        }
        if g.is_finite() && w.is_finite() {
            if !tol.ok(g, w) {
                return Err(format!(
                    "{name}[{i}]: got {g:.9e}, reference {w:.9e} (tolerance {tol:?})"
                ));
            }
            max_err = max_err.max((g - w).abs());
        }
    }
    Ok(max_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `y = x²·a` elementwise, with a correct and a deliberately wrong backward.
    fn fwd(x: &[Vec<f64>]) -> Vec<f64> {
        x[0].iter().zip(&x[1]).map(|(x, a)| x * x * a).collect()
    }

    #[test]
    fn a_correct_backward_passes() {
        let mut r = SplitMix::new(1);
        let inputs = vec![r.vec(17), r.vec(17)];
        let rep = check_gradients(
            "square",
            &inputs,
            fwd,
            |x, w| {
                let dx = (0..17).map(|i| 2.0 * x[0][i] * x[1][i] * w[i]).collect();
                let da = (0..17).map(|i| x[0][i] * x[0][i] * w[i]).collect();
                vec![Some(dx), Some(da)]
            },
            Options::default(),
        )
        .unwrap();
        assert_eq!(rep.probes, 34);
    }

    #[test]
    fn a_wrong_backward_fails() {
        let mut r = SplitMix::new(2);
        let inputs = vec![r.vec(9), r.vec(9)];
        // Forgot the factor 2 of d(x²)/dx.
        let err = check_gradients(
            "square",
            &inputs,
            fwd,
            |x, w| vec![Some((0..9).map(|i| x[0][i] * x[1][i] * w[i]).collect()), None],
            Options::default(),
        )
        .unwrap_err();
        assert!(err.contains("gradient of input 0"), "{err}");
    }

    #[test]
    fn a_subtly_wrong_layernorm_backward_fails() {
        // The real LayerNorm forward with a backward that drops the mean-gradient term — the
        // classic bug. The checker must catch it even though the result "looks" plausible.
        let d = crate::NormDims {
            n: 3,
            c: 5,
            eps: 1e-5,
        };
        let mut r = SplitMix::new(3);
        let inputs = vec![r.vec(15)];
        let fwd = |x: &[Vec<f64>]| {
            let (mut out, mut mean, mut rstd) = (vec![0.0; 15], vec![0.0; 3], vec![0.0; 3]);
            crate::cpu::norm::layernorm_forward::<f64>(&mut out, &mut mean, &mut rstd, &x[0], None, None, &d);
            out
        };
        let wrong = |x: &[Vec<f64>], w: &[f64]| {
            let (mut out, mut mean, mut rstd) = (vec![0.0; 15], vec![0.0; 3], vec![0.0; 3]);
            crate::cpu::norm::layernorm_forward::<f64>(&mut out, &mut mean, &mut rstd, &x[0], None, None, &d);
            let mut dx = vec![0.0; 15];
            for row in 0..3 {
                let s2: f64 = (0..5).map(|i| w[row * 5 + i] * out[row * 5 + i]).sum::<f64>() / 5.0;
                for i in 0..5 {
                    dx[row * 5 + i] = (w[row * 5 + i] - out[row * 5 + i] * s2) * rstd[row];
                }
            }
            vec![Some(dx)]
        };
        assert!(check_gradients("layernorm (wrong)", &inputs, fwd, wrong, Options::default()).is_err());
    }

    #[test]
    fn compare_flags_the_first_bad_element() {
        let tol = Tolerance::for_dtype(DType::F32);
        assert!(compare("x", &[1.0, 2.0], &[1.0, 2.0 + 1e-6], tol).is_ok());
        let e = compare("x", &[1.0, 2.1], &[1.0, 2.0], tol).unwrap_err();
        assert!(e.starts_with("x[1]"), "{e}");
        assert!(compare("x", &[f64::NAN], &[1.0], tol).is_err());
    }
}
