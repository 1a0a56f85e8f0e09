//! CUDA implementation of the elementwise op family (`kernels/cuda/elementwise.cu`).

use super::device::{cuda_err, CudaBackend, CudaMut, CudaRef, KArg};
use crate::ops::{check_cast, check_pointwise, ElementwiseOps};
use crate::{DType, Result};

const F32_ONLY: &[DType] = &[DType::F32];

impl ElementwiseOps for CudaBackend {
    fn add_forward(&self, out: CudaMut<'_>, a: CudaRef<'_>, b: CudaRef<'_>, n: usize) -> Result<()> {
        const OP: &str = "add_forward";
        check_pointwise(OP, F32_ONLY, &[("out", &out)], &[("a", &a), ("b", &b)], n)?;
        let n64 = n as u64;
        self.launch_1d(
            OP,
            "add_f32",
            n,
            &[
                KArg::U64(out.ptr),
                KArg::U64(a.ptr),
                KArg::U64(b.ptr),
                KArg::U64(n64),
            ],
        )
    }

    fn add_backward(&self, da: CudaMut<'_>, db: CudaMut<'_>, dout: CudaRef<'_>, n: usize) -> Result<()> {
        const OP: &str = "add_backward";
        check_pointwise(OP, F32_ONLY, &[("da", &da), ("db", &db)], &[("dout", &dout)], n)?;
        let n64 = n as u64;
        for acc in [da.ptr, db.ptr] {
            self.launch_1d(
                OP,
                "accumulate_f32",
                n,
                &[KArg::U64(acc), KArg::U64(dout.ptr), KArg::U64(n64)],
            )?;
        }
        Ok(())
    }

    fn scale_forward(&self, out: CudaMut<'_>, x: CudaRef<'_>, alpha: f64, n: usize) -> Result<()> {
        const OP: &str = "scale_forward";
        check_pointwise(OP, F32_ONLY, &[("out", &out)], &[("x", &x)], n)?;
        let n64 = n as u64;
        self.launch_1d(
            OP,
            "scale_f32",
            n,
            &[
                KArg::U64(out.ptr),
                KArg::U64(x.ptr),
                // The f32 kernel converts the scalar once.
                KArg::F32(alpha as f32),
                KArg::U64(n64),
            ],
        )
    }

    fn scale_backward(&self, dx: CudaMut<'_>, dout: CudaRef<'_>, alpha: f64, n: usize) -> Result<()> {
        self.scale_forward(dx, dout, alpha, n)
    }

    fn accumulate(&self, acc: CudaMut<'_>, x: CudaRef<'_>, n: usize) -> Result<()> {
        const OP: &str = "accumulate";
        check_pointwise(OP, F32_ONLY, &[("acc", &acc)], &[("x", &x)], n)?;
        let args = [KArg::U64(acc.ptr), KArg::U64(x.ptr), KArg::U64(n as u64)];
        self.launch_1d(OP, "accumulate_f32", n, &args)
    }

    fn fill(&self, out: CudaMut<'_>, value: f64, n: usize) -> Result<()> {
        const OP: &str = "fill";
        let none: &[(&str, &CudaRef<'_>)] = &[];
        check_pointwise(OP, F32_ONLY, &[("out", &out)], none, n)?;
        let args = [KArg::U64(out.ptr), KArg::F32(value as f32), KArg::U64(n as u64)];
        self.launch_1d(OP, "fill_f32", n, &args)
    }

    fn cast(&self, out: CudaMut<'_>, x: CudaRef<'_>, n: usize) -> Result<()> {
        const OP: &str = "cast";
        let (din, dout) = check_cast(OP, &[DType::F32, DType::BF16], &out, &x, n)?;
        let n64 = n as u64;
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
        self.launch_1d(
            OP,
            kernel,
            n,
            &[KArg::U64(out.ptr), KArg::U64(x.ptr), KArg::U64(n64)],
        )
    }
}
