//! CUDA implementation of rotary position embedding (`kernels/cuda/rope.cu`): f32 and bf16
//! activations, f32 angle tables, with the CPU backend's argument checks.

use super::device::{suffix, CudaBackend, CudaMut, CudaRef, KArg, CUDA_FLOATS};
use super::modules::Module;
use crate::ops::{check, RopeDims, RopeOps};
use crate::{DType, Result};

impl CudaBackend {
    /// One thread per rotated pair: `(B·T·H·HD/2)` threads.
    fn rope(&self, op: &'static str, dt: DType, ptrs: [u64; 4], d: &RopeDims) -> Result<()> {
        let mut args: Vec<KArg> = ptrs.iter().map(|&p| KArg::U64(p)).collect();
        args.extend([d.b, d.t, d.h, d.hd].map(|v| KArg::U64(v as u64)));
        let pairs = d.b * d.t * d.h * (d.hd / 2);
        // SAFETY: the activations hold B·T·H·HD and the tables T·HD/2 elements (checked; HD
        // even); the kernel guards its pair index.
        unsafe { self.launch_1d(op, Module::Rope, &format!("{op}_{}", suffix(dt)), pairs, &args) }
    }
}

impl RopeOps for CudaBackend {
    fn rope_forward(
        &self,
        out: CudaMut<'_>,
        inp: CudaRef<'_>,
        cos: CudaRef<'_>,
        sin: CudaRef<'_>,
        d: RopeDims,
    ) -> Result<()> {
        let dt = check::rope(false, CUDA_FLOATS, &out, &inp, &cos, &sin, &d)?;
        self.rope("rope_forward", dt, [out.ptr, inp.ptr, cos.ptr, sin.ptr], &d)
    }

    fn rope_backward(
        &self,
        dinp: CudaMut<'_>,
        dout: CudaRef<'_>,
        cos: CudaRef<'_>,
        sin: CudaRef<'_>,
        d: RopeDims,
    ) -> Result<()> {
        let dt = check::rope(true, CUDA_FLOATS, &dinp, &dout, &cos, &sin, &d)?;
        self.rope("rope_backward", dt, [dinp.ptr, dout.ptr, cos.ptr, sin.ptr], &d)
    }
}
