//! Element types and the host-side views every backend copies from and to.

use half::{bf16, f16};
use std::fmt;

/// Element type of a buffer.
///
/// `F64` exists for the CPU reference and the finite-difference checks; training uses `F32`
/// master weights with `BF16` / `F16` compute copies. `I32` holds token ids and targets, `U16`
/// holds raw 16-bit payloads (token shards, bf16 bit patterns on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F64,
    F32,
    BF16,
    F16,
    I32,
    U16,
}

impl DType {
    /// Every dtype, in declaration order.
    pub const ALL: [DType; 6] = [
        DType::F64,
        DType::F32,
        DType::BF16,
        DType::F16,
        DType::I32,
        DType::U16,
    ];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::BF16 | DType::F16 | DType::U16 => 2,
        }
    }

    /// True for the floating-point types.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::BF16 | DType::F16)
    }

    /// The lower-case name used in configs and messages (`"bf16"`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "f64",
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::I32 => "i32",
            DType::U16 => "u16",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Round an f32 to bf16 with round-to-nearest-even; NaN stays NaN (quiet), infinities stay
/// infinite, values past the largest bf16 round to infinity exactly as IEEE rounding does.
/// The CUDA kernels' `f32_to_bf16_rne` (`kernels/cuda/prelude.cuh`) is the same bit recipe.
#[inline]
pub fn f32_to_bf16_rne(x: f32) -> bf16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return bf16::from_bits(((bits >> 16) as u16) | 0x0040);
    }
    let lsb = (bits >> 16) & 1;
    bf16::from_bits((bits.wrapping_add(0x7fff + lsb) >> 16) as u16)
}

/// Round an f64 to bf16 with a single round-to-nearest-even.
///
/// Going through f32 with ordinary rounding would round twice (1 + 2⁻⁸ + 2⁻³⁰ would land on
/// 1.0 instead of 1 + 2⁻⁷). Rounding to f32 *to odd* first keeps the information the second
/// rounding needs, because f32 carries 16 more mantissa bits than bf16 at every exponent.
pub fn f64_to_bf16_rne(x: f64) -> bf16 {
    if x.is_nan() {
        return bf16::NAN;
    }
    let f = x as f32;
    let mut bits = f.to_bits();
    if f as f64 != x {
        if (f as f64).abs() > x.abs() {
            bits -= 1; // step toward zero (sign-magnitude), then mark inexact with the low bit
        }
        bits |= 1;
    }
    f32_to_bf16_rne(f32::from_bits(bits))
}

/// Widen a bf16 to f32 (exact).
#[inline]
pub fn bf16_to_f32(x: bf16) -> f32 {
    f32::from_bits((x.to_bits() as u32) << 16)
}

macro_rules! host_views {
    ($($variant:ident => $ty:ty),* $(,)?) => {
        /// A borrowed, typed slice of host memory. It is also the CPU backend's read view.
        #[derive(Clone, Copy, Debug)]
        pub enum HostRef<'a> { $($variant(&'a [$ty])),* }

        /// A mutable, typed slice of host memory. It is also the CPU backend's write view.
        #[derive(Debug)]
        pub enum HostMut<'a> { $($variant(&'a mut [$ty])),* }

        /// An owned, typed host vector: the CPU backend's buffer.
        #[derive(Clone, Debug, PartialEq)]
        pub enum HostVec { $($variant(Vec<$ty>)),* }

        impl<'a> HostRef<'a> {
            pub fn dtype(&self) -> DType { match self { $(HostRef::$variant(_) => DType::$variant),* } }
            pub fn len(&self) -> usize { match self { $(HostRef::$variant(s) => s.len()),* } }
            pub fn is_empty(&self) -> bool { self.len() == 0 }
            /// Split into `[..mid]` and `[mid..]`; panics if `mid > len` (as slices do).
            pub fn split_at(self, mid: usize) -> (Self, Self) {
                match self { $(HostRef::$variant(s) => { let (a, b) = s.split_at(mid); (HostRef::$variant(a), HostRef::$variant(b)) }),* }
            }
            /// The raw bytes (native endian).
            pub fn as_bytes(&self) -> &'a [u8] {
                match *self { $(HostRef::$variant(s) => bytes_of(s)),* }
            }
            /// The address of the first element.
            pub fn address(&self) -> usize {
                match *self { $(HostRef::$variant(s) => s.as_ptr() as usize),* }
            }
            /// The view of `len` elements of `dtype` at `address`.
            ///
            /// # Safety
            /// `address` must be the [`HostRef::address`] of a view of at least `len` elements
            /// of `dtype` whose memory stays allocated and unwritten for `'a`.
            pub unsafe fn at(address: usize, dtype: DType, len: usize) -> HostRef<'a> {
                match dtype {
                    // SAFETY: the caller's contract.
                    $(DType::$variant => HostRef::$variant(unsafe { std::slice::from_raw_parts(address as *const $ty, len) })),*
                }
            }
        }

        impl<'a> HostMut<'a> {
            pub fn dtype(&self) -> DType { match self { $(HostMut::$variant(_) => DType::$variant),* } }
            pub fn len(&self) -> usize { match self { $(HostMut::$variant(s) => s.len()),* } }
            pub fn is_empty(&self) -> bool { self.len() == 0 }
            pub fn split_at(self, mid: usize) -> (Self, Self) {
                match self { $(HostMut::$variant(s) => { let (a, b) = s.split_at_mut(mid); (HostMut::$variant(a), HostMut::$variant(b)) }),* }
            }
            /// A shorter-lived mutable view of the same memory.
            pub fn rb(&mut self) -> HostMut<'_> {
                match self { $(HostMut::$variant(s) => HostMut::$variant(&mut **s)),* }
            }
            /// A read view of the same memory.
            pub fn as_ref(&self) -> HostRef<'_> {
                match self { $(HostMut::$variant(s) => HostRef::$variant(&**s)),* }
            }
            /// The raw bytes (native endian).
            pub fn as_bytes_mut(&mut self) -> &mut [u8] {
                match self { $(HostMut::$variant(s) => bytes_of_mut(s)),* }
            }
        }

        impl HostVec {
            /// A zero-filled vector of `len` elements.
            pub fn zeros(dtype: DType, len: usize) -> Self {
                match dtype { $(DType::$variant => HostVec::$variant(vec![<$ty>::default(); len])),* }
            }
            /// [`HostVec::zeros`], or `None` when the memory cannot be had (instead of
            /// aborting the process).
            pub fn try_zeros(dtype: DType, len: usize) -> Option<Self> {
                match dtype { $(DType::$variant => Some(HostVec::$variant(try_zeroed::<$ty>(len)?))),* }
            }
            pub fn dtype(&self) -> DType { self.view().dtype() }
            pub fn len(&self) -> usize { self.view().len() }
            pub fn is_empty(&self) -> bool { self.len() == 0 }
            pub fn view(&self) -> HostRef<'_> { match self { $(HostVec::$variant(v) => HostRef::$variant(v)),* } }
            pub fn view_mut(&mut self) -> HostMut<'_> { match self { $(HostVec::$variant(v) => HostMut::$variant(v)),* } }
        }

        $(
            impl<'a> From<&'a [$ty]> for HostRef<'a> { fn from(s: &'a [$ty]) -> Self { HostRef::$variant(s) } }
            impl<'a> From<&'a Vec<$ty>> for HostRef<'a> { fn from(s: &'a Vec<$ty>) -> Self { HostRef::$variant(s) } }
            impl<'a> From<&'a mut [$ty]> for HostMut<'a> { fn from(s: &'a mut [$ty]) -> Self { HostMut::$variant(s) } }
            impl<'a> From<&'a mut Vec<$ty>> for HostMut<'a> { fn from(s: &'a mut Vec<$ty>) -> Self { HostMut::$variant(s) } }
            impl From<Vec<$ty>> for HostVec { fn from(v: Vec<$ty>) -> Self { HostVec::$variant(v) } }
        )*
    };
}

host_views!(F64 => f64, F32 => f32, BF16 => bf16, F16 => f16, I32 => i32, U16 => u16);

/// A vector of `len` zeros from the allocator's zeroed memory (untouched pages stay
/// uncommitted, as with `vec![0; len]`), or `None` when it cannot be had.
fn try_zeroed<T: Copy>(len: usize) -> Option<Vec<T>> {
    let layout = std::alloc::Layout::array::<T>(len).ok()?;
    if layout.size() == 0 {
        return Some(Vec::new());
    }
    // SAFETY: the layout has a non-zero size; the element types above are plain old data for
    // which all-zero bytes are a valid value (0, +0.0).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<T>();
    if ptr.is_null() {
        return None;
    }
    // SAFETY: `ptr` was allocated by the global allocator with exactly this layout, holds
    // `len` initialized elements, and is owned by nothing else.
    Some(unsafe { Vec::from_raw_parts(ptr, len, len) })
}

fn bytes_of<T: Copy>(s: &[T]) -> &[u8] {
    // SAFETY: every element type above is plain old data without padding; u8 has alignment 1.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), std::mem::size_of_val(s)) }
}

fn bytes_of_mut<T: Copy>(s: &mut [T]) -> &mut [u8] {
    // SAFETY: as in `bytes_of`; every bit pattern is a valid value of these element types.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(s)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_matches_ieee_round_to_nearest_even() {
        // Walk a spread of bit patterns (every exponent, many mantissas, both signs) and compare
        // against `half`'s independent conversion.
        let mut checked = 0;
        for hi in 0u32..=0xffff {
            for lo in [0u32, 1, 0x7fff, 0x8000, 0x8001, 0xffff, 0x1234, 0xc000] {
                let x = f32::from_bits((hi << 16) | lo);
                let ours = f32_to_bf16_rne(x);
                let theirs = bf16::from_f32(x);
                if x.is_nan() {
                    assert!(ours.is_nan());
                } else {
                    assert_eq!(ours.to_bits(), theirs.to_bits(), "x = {x:e} ({:#x})", x.to_bits());
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 65536 * 8);
        // Ties go to even: 1 + 2^-8 is exactly halfway between two bf16 values.
        assert_eq!(
            f32_to_bf16_rne(1.0 + 2f32.powi(-8)).to_bits(),
            bf16::from_f32(1.0).to_bits()
        );
        assert_eq!(bf16_to_f32(f32_to_bf16_rne(3.0)), 3.0);
    }

    #[test]
    fn f64_to_bf16_rounds_once() {
        // Just above a tie: must round up, although the f32 nearest is exactly the tie.
        assert_eq!(
            f64_to_bf16_rne(1.0 + 2f64.powi(-8) + 2f64.powi(-30)).to_f64(),
            1.0 + 2f64.powi(-7)
        );
        assert_eq!(
            f64_to_bf16_rne(-(1.0 + 2f64.powi(-8) + 2f64.powi(-30))).to_f64(),
            -(1.0 + 2f64.powi(-7))
        );
        // Exact ties still go to even.
        assert_eq!(f64_to_bf16_rne(1.0 + 2f64.powi(-8)).to_f64(), 1.0);
        // Values exactly representable in f32 agree with the f32 path.
        for x in [0.0, -0.0, 1.5, -3.25e-3, 6.5e4, 1e-40, f64::INFINITY] {
            assert_eq!(
                f64_to_bf16_rne(x).to_bits(),
                f32_to_bf16_rne(x as f32).to_bits(),
                "{x}"
            );
        }
        // Beyond f32's range: infinity; far below the smallest subnormal: zero.
        assert!(f64_to_bf16_rne(1e300).is_infinite());
        assert_eq!(f64_to_bf16_rne(1e-300).to_f64(), 0.0);
        assert!(f64_to_bf16_rne(f64::NAN).is_nan());
        // Against exact arithmetic: the result is the nearest bf16 on a sweep of inputs.
        let mut x = 1.0e-3f64;
        while x < 1.0e3 {
            let r = f64_to_bf16_rne(x).to_f64();
            let (lo, hi) = (
                bf16::from_bits(f64_to_bf16_rne(x).to_bits() - 1).to_f64(),
                bf16::from_bits(f64_to_bf16_rne(x).to_bits() + 1).to_f64(),
            );
            assert!(
                (r - x).abs() <= (lo - x).abs() && (r - x).abs() <= (hi - x).abs(),
                "{x}"
            );
            x *= 1.000_37;
        }
    }

    #[test]
    fn views_split_and_report_dtype() {
        let v = vec![1.0f32, 2.0, 3.0];
        let r = HostRef::from(&v);
        let (a, b) = r.split_at(1);
        assert_eq!((a.len(), b.len(), b.dtype()), (1, 2, DType::F32));
        assert_eq!(r.as_bytes().len(), 12);
    }
}
