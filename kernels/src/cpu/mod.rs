//! The CPU backend: the reference implementation of every op.
//!
//! Kernels are written once, generic over [`Real`] (`f32` and `f64`), so the same code that runs
//! in training is what the f64 finite-difference checks differentiate. bf16 activations run the
//! f32 kernels on widened copies and are rounded back once (`widen.rs`). Work is spread over the
//! rayon pool by rows (never by reduction order), so results are bitwise deterministic for any
//! thread count. Matmuls go to the `gemm` crate (blocked, SIMD, multi-threaded).

mod activation;
mod attention;
mod elementwise;
mod embed;
mod loss;
pub mod matmul;
mod modulation;
pub mod norm;
mod optim;
mod rope;
mod shape;
pub(crate) mod widen;

use crate::backend::{Backend, Slice};
use crate::{DType, HostMut, HostRef, HostVec, Result};
use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{AddAssign, MulAssign, SubAssign};

/// The CPU device. Cheap to clone; ops run on the global rayon pool.
#[derive(Clone, Debug, Default)]
pub struct CpuBackend;

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend
    }
}

impl Slice for HostRef<'_> {
    fn dtype(&self) -> DType {
        HostRef::dtype(self)
    }
    fn len(&self) -> usize {
        HostRef::len(self)
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        HostRef::split_at(self, mid)
    }
}

impl Slice for HostMut<'_> {
    fn dtype(&self) -> DType {
        HostMut::dtype(self)
    }
    fn len(&self) -> usize {
        HostMut::len(self)
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        HostMut::split_at(self, mid)
    }
}

impl Backend for CpuBackend {
    type Buffer = HostVec;
    type Ref<'a> = HostRef<'a>;
    type Mut<'a> = HostMut<'a>;

    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }
    fn alloc(&self, dtype: DType, len: usize) -> Result<HostVec> {
        HostVec::try_zeros(dtype, len).ok_or(crate::Error::Alloc {
            dtype,
            len,
            bytes: len as u128 * dtype.size() as u128,
        })
    }
    fn view(buf: &HostVec) -> HostRef<'_> {
        buf.view()
    }
    fn view_mut(buf: &mut HostVec) -> HostMut<'_> {
        buf.view_mut()
    }
    fn rb<'b>(v: &'b mut HostMut<'_>) -> HostMut<'b> {
        v.rb()
    }
    fn freeze<'b>(v: &'b HostMut<'_>) -> HostRef<'b> {
        v.as_ref()
    }
    fn share<'b>(v: &'b HostRef<'_>) -> HostRef<'b> {
        *v
    }
    fn address(v: &HostRef<'_>) -> usize {
        v.address()
    }
    unsafe fn view_at<'a>(address: usize, dtype: DType, len: usize) -> HostRef<'a> {
        // SAFETY: the caller's contract.
        unsafe { HostRef::at(address, dtype, len) }
    }
    fn upload(&self, src: HostRef<'_>, mut dst: HostMut<'_>) -> Result<()> {
        copy_checked("upload", src, dst.rb())
    }
    fn download(&self, src: HostRef<'_>, dst: HostMut<'_>) -> Result<()> {
        copy_checked("download", src, dst)
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    // Every op has finished when its call returns, so every queue is always drained: streams
    // and events carry nothing and waiting is immediate.
    type Stream = ();
    type Event = ();
    fn new_stream(&self) -> Result<()> {
        Ok(())
    }
    fn record(&self, _on: Option<&()>) -> Result<()> {
        Ok(())
    }
    fn wait(&self, _on: Option<&()>, _event: &()) -> Result<()> {
        Ok(())
    }
    fn sync_event(&self, _event: &()) -> Result<()> {
        Ok(())
    }
}

fn copy_checked(op: &'static str, src: HostRef<'_>, mut dst: HostMut<'_>) -> Result<()> {
    let c = crate::backend::Check { op };
    c.arg("dst", &dst, src.dtype(), src.len(), || {
        "(the length of `src`)".into()
    })?;
    dst.as_bytes_mut().copy_from_slice(src.as_bytes());
    Ok(())
}

/// The float types the reference kernels are written over.
pub trait Real:
    num_traits::Float + Default + Debug + Send + Sync + 'static + AddAssign + SubAssign + MulAssign + Sum
{
    /// Convert from f64 (constants, hyper-parameters).
    fn of(x: f64) -> Self;
    /// Widen to f64.
    fn f64(self) -> f64;
    /// The typed slice behind a view already checked to hold `Self`.
    fn get(v: HostRef<'_>) -> &[Self];
    /// The typed mutable slice behind a view already checked to hold `Self`.
    fn get_mut(v: HostMut<'_>) -> &mut [Self];
}

macro_rules! real {
    ($t:ty, $v:ident) => {
        impl Real for $t {
            #[inline(always)]
            fn of(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn f64(self) -> f64 {
                self as f64
            }
            fn get(v: HostRef<'_>) -> &[Self] {
                match v {
                    HostRef::$v(s) => s,
                    other => unreachable!("dtype {} passed the argument checks", other.dtype()),
                }
            }
            fn get_mut(v: HostMut<'_>) -> &mut [Self] {
                match v {
                    HostMut::$v(s) => s,
                    other => unreachable!("dtype {} passed the argument checks", other.dtype()),
                }
            }
        }
    };
}
real!(f32, F32);
real!(f64, F64);

/// Runs `$body` with `$T` bound to the Rust type of the (already validated) float dtype `$dt`.
macro_rules! with_real {
    ($dt:expr, $T:ident => $body:expr) => {
        match $dt {
            $crate::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::DType::F64 => {
                type $T = f64;
                $body
            }
            other => unreachable!("dtype {other} passed the argument checks"),
        }
    };
}
pub(crate) use widen::with_float;
pub(crate) use with_real;

/// `Option<view>` → `Option<typed slice>`.
pub(crate) fn opt<T: Real>(v: Option<HostRef<'_>>) -> Option<&[T]> {
    v.map(T::get)
}

/// `Option<mut view>` → `Option<typed mut slice>`.
pub(crate) fn opt_mut<T: Real>(v: Option<HostMut<'_>>) -> Option<&mut [T]> {
    v.map(T::get_mut)
}

/// Checks an i32 index argument (`n` values, each `< bound`; negatives allowed only when
/// `negative_ok`, as for ignored targets) and returns it as a slice.
pub(crate) fn indices<'a>(
    op: &'static str,
    arg: &'static str,
    v: HostRef<'a>,
    n: usize,
    bound: usize,
    negative_ok: bool,
) -> Result<&'a [i32]> {
    crate::ops::check::ids(op, arg, &v, n)?;
    let HostRef::I32(s) = v else {
        unreachable!("dtype checked above")
    };
    let bad = |&(_, &x): &(usize, &i32)| (x < 0 && !negative_ok) || (x >= 0 && x as usize >= bound);
    if let Some((pos, &x)) = s.iter().enumerate().find(bad) {
        return Err(crate::Error::Index {
            op,
            arg,
            index: x as i64,
            pos,
            bound,
        });
    }
    Ok(s)
}

/// Rows per rayon task for row-parallel kernels: enough work per task to amortize scheduling.
pub(crate) fn rows_per_task(row_len: usize) -> usize {
    (16384 / row_len.max(1)).max(1)
}
