//! CUDA implementation of the layout moves (`kernels/cuda/shape.cu`): f32 and bf16, with the
//! CPU backend's argument checks.

use super::device::{suffix, CudaBackend, CudaMut, CudaRef, KArg, CUDA_FLOATS};
use super::modules::Module;
use crate::ops::{check, ShapeOps, SwapDims};
use crate::Result;

impl ShapeOps for CudaBackend {
    fn swap_axes(&self, out: CudaMut<'_>, x: CudaRef<'_>, d: SwapDims) -> Result<()> {
        const OP: &str = "swap_axes";
        let dt = check::swap_axes(CUDA_FLOATS, &out, &x, &d)?;
        let args = [
            KArg::U64(out.ptr),
            KArg::U64(x.ptr),
            KArg::U64(d.a as u64),
            KArg::U64(d.b as u64),
            KArg::U64(d.inner as u64),
        ];
        // SAFETY: both views hold A·B·inner elements of `dt` (checked); one thread per element.
        unsafe {
            self.launch_1d(
                OP,
                Module::Shape,
                &format!("{OP}_{}", suffix(dt)),
                d.numel(),
                &args,
            )
        }
    }
}
