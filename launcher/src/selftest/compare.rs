//! How far a run's output is from the reference, and the limit per dtype.
//!
//! The error of an output is its largest element error relative to the reference's largest
//! magnitude, `max |got − want| / max |want|`: a normwise measure that a few reference elements
//! near zero (a cancellation in a gradient) cannot blow up, and that reads directly as "bits
//! lost against the scale of the tensor".

use weft_kernels::DType;

/// The largest error a passing output may have, per activation dtype.
///
/// - f32: the CPU's f32 kernels against f64 lose ~1e-6 on these shapes (sums of up to ~10⁴
///   terms); 1e-4 leaves room for another summation order, and catches a kernel that drops to
///   TF32 or bf16 internally (~1e-3).
/// - bf16: one rounding of an output costs 2⁻⁹ ≈ 2e-3 of the element; backward ops that read
///   bf16-rounded forward outputs (attention's `out`, a norm's input) add a few of those.
///   2e-2 is ten times that, and below what a wrong scale, a dropped term or a lost
///   accumulation in bf16 gives.
pub fn limit(dt: DType) -> f64 {
    match dt {
        DType::F64 => 1e-10,
        DType::F32 => 1e-4,
        DType::F16 => 5e-3,
        _ => 2e-2,
    }
}

/// The comparison of one output with its reference.
#[derive(Clone, Debug, PartialEq)]
pub struct Measure {
    /// `max |got − want| / max |want|` over finite elements (infinite on a mismatch).
    pub rel: f64,
    /// `max |got − want|`.
    pub abs: f64,
    /// The first element that is non-finite on one side only, or a length mismatch.
    pub mismatch: Option<String>,
}

/// Compares `got` with `want`: non-finite values must match exactly (an `lse` of `−∞` for a row
/// without keys), finite ones are measured.
pub fn measure(got: &[f64], want: &[f64]) -> Measure {
    if got.len() != want.len() {
        return Measure {
            rel: f64::INFINITY,
            abs: f64::INFINITY,
            mismatch: Some(format!(
                "{} elements, the reference has {}",
                got.len(),
                want.len()
            )),
        };
    }
    let scale = want
        .iter()
        .filter(|w| w.is_finite())
        .fold(0f64, |m, w| m.max(w.abs()));
    let scale = if scale > 0.0 { scale } else { 1.0 };
    let mut abs = 0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let same_special = (g.is_nan() && w.is_nan()) || (g.is_infinite() && g == w);
        if w.is_finite() && g.is_finite() {
            abs = abs.max((g - w).abs());
        } else if !same_special {
            return Measure {
                rel: f64::INFINITY,
                abs: f64::INFINITY,
                mismatch: Some(format!("element {i} is {g}, the reference {w}")),
            };
        }
    }
    Measure {
        rel: abs / scale,
        abs,
        mismatch: None,
    }
}

/// Whether a measured error passes for activation dtype `dt`.
pub fn passes(m: &Measure, dt: DType) -> bool {
    m.mismatch.is_none() && m.rel <= limit(dt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> Vec<f64> {
        (0..1000).map(|i| ((i as f64) * 0.37).sin() * 3.0).collect()
    }

    #[test]
    fn a_faithful_run_passes() {
        let want = reference();
        // f32 rounding and bf16 rounding of the same values.
        let f32s: Vec<f64> = want.iter().map(|&v| v as f32 as f64).collect();
        let bf16s: Vec<f64> = want
            .iter()
            .map(|&v| weft_kernels::bf16::from_f64(v).to_f64())
            .collect();
        let m = measure(&f32s, &want);
        assert!(passes(&m, DType::F32), "{m:?}");
        assert!(m.rel > 0.0 && m.rel < 1e-7, "{m:?}");
        let m = measure(&bf16s, &want);
        assert!(passes(&m, DType::BF16), "{m:?}");
        assert!(m.rel > 1e-4, "{m:?}");
        // bf16 error is far outside the f32 limit.
        assert!(!passes(&m, DType::F32));
    }

    #[test]
    fn a_wrong_reference_is_flagged() {
        let got = reference();
        // One element off by 5 %, of the largest magnitude.
        let mut want = got.clone();
        let i = (0..want.len())
            .max_by(|&a, &b| want[a].abs().total_cmp(&want[b].abs()))
            .unwrap();
        want[i] *= 1.05;
        let m = measure(&got, &want);
        assert!(!passes(&m, DType::F32) && !passes(&m, DType::BF16), "{m:?}");
        assert!((m.rel - 0.05 / 1.05).abs() < 1e-3, "{m:?}");
        // A wrong scale of the whole tensor.
        let scaled: Vec<f64> = got.iter().map(|v| v * 1.1).collect();
        assert!(!passes(&measure(&got, &scaled), DType::BF16));
        // A sign error on the largest element.
        let mut flipped = got.clone();
        flipped[i] = -flipped[i];
        assert!(!passes(&measure(&flipped, &got), DType::BF16));
    }

    #[test]
    fn special_values_must_match_exactly() {
        let want = vec![1.0, f64::NEG_INFINITY, 2.0];
        assert!(passes(
            &measure(&[1.0, f64::NEG_INFINITY, 2.0], &want),
            DType::F32
        ));
        let m = measure(&[1.0, -1e30, 2.0], &want);
        assert!(m.mismatch.as_deref().unwrap().contains("element 1"), "{m:?}");
        assert!(!passes(
            &measure(&[f64::NAN, f64::NEG_INFINITY, 2.0], &want),
            DType::BF16
        ));
        assert!(!passes(&measure(&[1.0, 2.0], &want), DType::F32));
        // An all-zero reference is measured in absolute terms.
        assert_eq!(measure(&[0.0, 1e-3], &[0.0, 0.0]).rel, 1e-3);
    }
}
