//! CUDA implementation of the activation op family (`kernels/cuda/activation.cu`): f32 and
//! bf16, one thread per element, with the CPU backend's argument checks.

use super::device::{suffix, CudaBackend, CudaMut, CudaRef, KArg, CUDA_FLOATS};
use super::modules::Module;
use crate::ops::{check, ActivationOps, SwigluDims};
use crate::Result;

impl CudaBackend {
    /// `<name>_<dtype>(out, inp, n)` or `(dinp, dout, inp, n)` over `n` elements.
    fn pointwise(
        &self,
        op: &'static str,
        name: &str,
        dt: crate::DType,
        ptrs: &[u64],
        n: usize,
    ) -> Result<()> {
        let mut args: Vec<KArg> = ptrs.iter().map(|&p| KArg::U64(p)).collect();
        args.push(KArg::U64(n as u64));
        let kernel = format!("{name}_{}", suffix(dt));
        // SAFETY: every view holds `n` elements of `dt` (checked by the caller).
        unsafe { self.launch_1d(op, Module::Activation, &kernel, n, &args) }
    }
}

impl ActivationOps for CudaBackend {
    fn gelu_forward(&self, out: CudaMut<'_>, inp: CudaRef<'_>, n: usize) -> Result<()> {
        const OP: &str = "gelu_forward";
        let dt = check::unary(OP, CUDA_FLOATS, &out, &inp, n)?;
        self.pointwise(OP, OP, dt, &[out.ptr, inp.ptr], n)
    }

    fn gelu_backward(&self, dinp: CudaMut<'_>, dout: CudaRef<'_>, inp: CudaRef<'_>, n: usize) -> Result<()> {
        const OP: &str = "gelu_backward";
        let dt = check::unary_grad(OP, CUDA_FLOATS, &dinp, &dout, &inp, n)?;
        self.pointwise(OP, OP, dt, &[dinp.ptr, dout.ptr, inp.ptr], n)
    }

    fn silu_forward(&self, out: CudaMut<'_>, inp: CudaRef<'_>, n: usize) -> Result<()> {
        const OP: &str = "silu_forward";
        let dt = check::unary(OP, CUDA_FLOATS, &out, &inp, n)?;
        self.pointwise(OP, OP, dt, &[out.ptr, inp.ptr], n)
    }

    fn silu_backward(&self, dinp: CudaMut<'_>, dout: CudaRef<'_>, inp: CudaRef<'_>, n: usize) -> Result<()> {
        const OP: &str = "silu_backward";
        let dt = check::unary_grad(OP, CUDA_FLOATS, &dinp, &dout, &inp, n)?;
        self.pointwise(OP, OP, dt, &[dinp.ptr, dout.ptr, inp.ptr], n)
    }

    fn swiglu_forward(&self, out: CudaMut<'_>, inp: CudaRef<'_>, d: SwigluDims) -> Result<()> {
        const OP: &str = "swiglu_forward";
        let dt = check::swiglu_forward(CUDA_FLOATS, &out, &inp, &d)?;
        let args = [
            KArg::U64(out.ptr),
            KArg::U64(inp.ptr),
            KArg::U64(d.n as u64),
            KArg::U64(d.h as u64),
        ];
        // SAFETY: `inp` holds N·2H and `out` N·H elements of `dt`; one thread per output.
        unsafe {
            self.launch_1d(
                OP,
                Module::Activation,
                &format!("{OP}_{}", suffix(dt)),
                d.n * d.h,
                &args,
            )
        }
    }

    fn swiglu_backward(
        &self,
        dinp: CudaMut<'_>,
        dout: CudaRef<'_>,
        inp: CudaRef<'_>,
        d: SwigluDims,
    ) -> Result<()> {
        const OP: &str = "swiglu_backward";
        let dt = check::swiglu_backward(CUDA_FLOATS, &dinp, &dout, &inp, &d)?;
        let args = [
            KArg::U64(dinp.ptr),
            KArg::U64(dout.ptr),
            KArg::U64(inp.ptr),
            KArg::U64(d.n as u64),
            KArg::U64(d.h as u64),
        ];
        // SAFETY: `inp`, `dinp` hold N·2H and `dout` N·H elements of `dt`; one thread per
        // element of `dout`.
        unsafe {
            self.launch_1d(
                OP,
                Module::Activation,
                &format!("{OP}_{}", suffix(dt)),
                d.n * d.h,
                &args,
            )
        }
    }
}
