//! Comparisons against a bound per element, for kernels that sum in another order than the CPU
//! (block reductions, partial sums per block).
//!
//! The bounds follow the first-order error of a floating-point sum (Higham, *Accuracy and
//! Stability of Numerical Algorithms*, §4.2): summed in any order, n terms land within
//! (n − 1)·u·Σ|terms| of the exact sum, with u = 2⁻²⁴ for f32; two orders of one sum therefore
//! differ by at most [`sum_order`]`(n)`·Σ|terms|. A bf16 output is one rounding of an f32 value,
//! so on top of the f32 bound the two sides may land on neighbouring bf16 values: one bf16 ulp.

use weft_kernels::HostVec;

/// f32's unit roundoff, 2⁻²⁴.
pub const U: f64 = f32::EPSILON as f64 / 2.0;

/// How far apart two summation orders of `n` terms may be, per unit of Σ|terms|.
pub fn sum_order(n: usize) -> f64 {
    2.0 * n as f64 * U
}

/// The spacing of bf16 values at `v` (the subnormal spacing below the normal range).
pub fn bf16_ulp(v: f64) -> f64 {
    let a = v.abs();
    if a < f64::from(f32::MIN_POSITIVE) {
        return 2f64.powi(-133);
    }
    2f64.powi(a.log2().floor() as i32 - 7)
}

fn values(v: &HostVec) -> (Vec<f64>, bool) {
    match v {
        HostVec::F32(x) => (x.iter().map(|&v| v as f64).collect(), false),
        HostVec::BF16(x) => (x.iter().map(|v| v.to_f64()).collect(), true),
        _ => panic!("compare f32 or bf16 buffers"),
    }
}

/// Fails unless every `|got[i] − want[i]|` is within `bound(i)` (plus one bf16 ulp for bf16
/// buffers). Returns the largest difference and the largest difference / allowance, for the
/// record.
pub fn assert_within(what: &str, got: &HostVec, want: &HostVec, bound: impl Fn(usize) -> f64) -> (f64, f64) {
    let ((g, g16), (w, w16)) = (values(got), values(want));
    assert_eq!(g16, w16, "{what}: compare f32 with f32 or bf16 with bf16");
    assert_eq!(g.len(), w.len(), "{what}: lengths");
    let (mut worst, mut ratio) = (0f64, 0f64);
    for i in 0..g.len() {
        let mut allowed = bound(i);
        if g16 {
            allowed += bf16_ulp(g[i].abs().max(w[i].abs()));
        }
        let d = (g[i] - w[i]).abs();
        assert!(
            d <= allowed && g[i].is_finite() == w[i].is_finite(),
            "{what}: element {i} of {}: emulated kernel {}, CPU {} ({d:e} apart, at most {allowed:e} allowed)",
            g.len(),
            g[i],
            w[i]
        );
        worst = worst.max(d);
        if allowed > 0.0 {
            ratio = ratio.max(d / allowed);
        }
    }
    (worst, ratio)
}

/// Fails unless `got` and `want` hold the same bits.
pub fn assert_same_bits(what: &str, got: &HostVec, want: &HostVec) {
    let bits = |v: &HostVec| -> Vec<u32> {
        match v {
            HostVec::F32(x) => x.iter().map(|v| v.to_bits()).collect(),
            HostVec::BF16(x) => x.iter().map(|v| v.to_bits() as u32).collect(),
            _ => panic!("{what}: compare f32 or bf16 buffers"),
        }
    };
    let (g, w) = (bits(got), bits(want));
    assert_eq!(g.len(), w.len(), "{what}: lengths");
    if let Some(i) = (0..g.len()).find(|&i| g[i] != w[i]) {
        let ((gv, _), (wv, _)) = (values(got), values(want));
        panic!(
            "{what}: element {i} of {}: emulated kernel {}, CPU {} (not the same bits)",
            g.len(),
            gv[i],
            wv[i]
        );
    }
}
