//! CUDA implementation of the elementwise op family (`kernels/cuda/elementwise.cu`): f32 and
//! bf16, with the CPU backend's argument checks.

use super::device::{cuda_err, suffix, CudaBackend, CudaMut, CudaRef, KArg, CUDA_FLOATS};
use super::modules::Module;
use crate::backend::Slice;
use crate::ops::{check_args, check_cast, check_pointwise, Arg, ElementwiseOps};
use crate::{DType, Result};

impl CudaBackend {
    /// `acc += x` over `n` elements (an f32 `acc` may take a bf16 `x`).
    fn accumulate_into(&self, op: &'static str, acc: (u64, DType), x: (u64, DType), n: usize) -> Result<()> {
        let kernel = match (acc.1, x.1) {
            (DType::F32, DType::BF16) => "accumulate_f32_bf16".to_string(),
            (dt, _) => format!("accumulate_{}", suffix(dt)),
        };
        let args = [KArg::U64(acc.0), KArg::U64(x.0), KArg::U64(n as u64)];
        // SAFETY: both views hold `n` elements of the kernel's dtypes (checked by the caller).
        unsafe { self.launch_1d(op, Module::Elementwise, &kernel, n, &args) }
    }

    /// `out = alpha·x`.
    fn scale(&self, op: &'static str, dt: DType, out: u64, x: u64, alpha: f64, n: usize) -> Result<()> {
        let args = [
            KArg::U64(out),
            KArg::U64(x),
            // The kernel converts nothing: the f64 scalar becomes f32 once, here.
            KArg::F32(alpha as f32),
            KArg::U64(n as u64),
        ];
        let kernel = format!("scale_{}", suffix(dt));
        // SAFETY: `out` and `x` hold `n` elements of `dt` (checked by the caller).
        unsafe { self.launch_1d(op, Module::Elementwise, &kernel, n, &args) }
    }
}

impl ElementwiseOps for CudaBackend {
    fn add_forward(&self, out: CudaMut<'_>, a: CudaRef<'_>, b: CudaRef<'_>, n: usize) -> Result<()> {
        const OP: &str = "add_forward";
        let dt = check_pointwise(OP, CUDA_FLOATS, &[("out", &out)], &[("a", &a), ("b", &b)], n)?;
        let args = [
            KArg::U64(out.ptr),
            KArg::U64(a.ptr),
            KArg::U64(b.ptr),
            KArg::U64(n as u64),
        ];
        // SAFETY: three views of `n` elements of `dt`.
        unsafe { self.launch_1d(OP, Module::Elementwise, &format!("add_{}", suffix(dt)), n, &args) }
    }

    fn add_backward(&self, da: CudaMut<'_>, db: CudaMut<'_>, dout: CudaRef<'_>, n: usize) -> Result<()> {
        const OP: &str = "add_backward";
        let dt = check_pointwise(
            OP,
            CUDA_FLOATS,
            &[("da", &da), ("db", &db)],
            &[("dout", &dout)],
            n,
        )?;
        for acc in [da.ptr, db.ptr] {
            self.accumulate_into(OP, (acc, dt), (dout.ptr, dt), n)?;
        }
        Ok(())
    }

    fn scale_forward(&self, out: CudaMut<'_>, x: CudaRef<'_>, alpha: f64, n: usize) -> Result<()> {
        const OP: &str = "scale_forward";
        let dt = check_pointwise(OP, CUDA_FLOATS, &[("out", &out)], &[("x", &x)], n)?;
        self.scale(OP, dt, out.ptr, x.ptr, alpha, n)
    }

    fn scale_backward(&self, dx: CudaMut<'_>, dout: CudaRef<'_>, alpha: f64, n: usize) -> Result<()> {
        const OP: &str = "scale_backward";
        let dt = check_pointwise(OP, CUDA_FLOATS, &[("dx", &dx)], &[("dout", &dout)], n)?;
        self.scale(OP, dt, dx.ptr, dout.ptr, alpha, n)
    }

    fn accumulate(&self, acc: CudaMut<'_>, x: CudaRef<'_>, n: usize) -> Result<()> {
        const OP: &str = "accumulate";
        let s = format!("(n={n})");
        let dt = check_args(
            OP,
            CUDA_FLOATS,
            &[
                Arg::act("x", Some(&x), n, &s),
                Arg::grad("acc", Some(&acc), n, &s),
            ],
        )?;
        self.accumulate_into(OP, (acc.ptr, acc.dtype()), (x.ptr, dt), n)
    }

    fn fill(&self, out: CudaMut<'_>, value: f64, n: usize) -> Result<()> {
        const OP: &str = "fill";
        let none: &[(&str, &CudaRef<'_>)] = &[];
        let dt = check_pointwise(OP, CUDA_FLOATS, &[("out", &out)], none, n)?;
        // The f64 value becomes f32 once (and the bf16 kernel rounds that f32 once), as the CPU.
        let args = [KArg::U64(out.ptr), KArg::F32(value as f32), KArg::U64(n as u64)];
        // SAFETY: `out` holds `n` elements of `dt`.
        unsafe { self.launch_1d(OP, Module::Elementwise, &format!("fill_{}", suffix(dt)), n, &args) }
    }

    fn cast(&self, out: CudaMut<'_>, x: CudaRef<'_>, n: usize) -> Result<()> {
        const OP: &str = "cast";
        let (din, dout) = check_cast(OP, CUDA_FLOATS, &out, &x, n)?;
        let kernel = match (din, dout) {
            (DType::F32, DType::BF16) => "cast_f32_bf16",
            (DType::BF16, DType::F32) => "cast_bf16_f32",
            _ => {
                if n > 0 {
                    self.context_bind()?;
                    // SAFETY: both views cover n·size bytes (checked above); same stream.
                    unsafe {
                        cudarc::driver::result::memcpy_dtod_async(
                            out.ptr,
                            x.ptr,
                            n * din.size(),
                            self.stream.cu_stream(),
                        )
                    }
                    .map_err(cuda_err(OP))?;
                }
                return Ok(());
            }
        };
        let args = [KArg::U64(out.ptr), KArg::U64(x.ptr), KArg::U64(n as u64)];
        // SAFETY: `x` and `out` hold `n` elements of the kernel's dtypes.
        unsafe { self.launch_1d(OP, Module::Elementwise, kernel, n, &args) }
    }
}
