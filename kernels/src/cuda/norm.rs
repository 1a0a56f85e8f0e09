//! CUDA implementation of LayerNorm and RMSNorm (`kernels/cuda/norm.cu`): f32 and bf16
//! activations, f32 statistics, with the CPU backend's argument checks.
//!
//! Row kernels run `G` blocks of `K` threads, block `b` handling rows `b, b + G, …`. The
//! parameter gradients are deterministic: each block leaves its column sums in a scratch of
//! `G·C` floats per gradient, which `param_grad_sum_*` adds in block order, so `G` is a function
//! of the shape alone ([`backward_blocks`]).

use super::device::{grid_dim, suffix, CudaBackend, CudaMut, CudaRef, KArg, CUDA_FLOATS, MAX_SHARED};
use super::modules::Module;
use crate::backend::Slice;
use crate::ops::{check, NormDims, NormOps};
use crate::{DType, Error, Result};
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::LaunchConfig;

/// Blocks of a backward launch that writes parameter-gradient partials: enough to fill a
/// GPU, few enough that the `G·C` partials stay small.
const PARTIAL_BLOCKS: usize = 264;

/// Threads per row: the row's width rounded up to whole warps, 32 to 256.
fn block_for(c: usize) -> u32 {
    (c.div_ceil(32) * 32).clamp(32, 256) as u32
}

/// Blocks of a backward launch over `n` rows (fixed by the shape, so the summation order is).
pub(crate) fn backward_blocks(n: usize, partials: bool) -> usize {
    if partials {
        n.min(PARTIAL_BLOCKS)
    } else {
        n.min(1 << 20)
    }
}

/// A parameter gradient to finish: its buffer and dtype.
type Grad = Option<(CUdeviceptr, DType)>;

impl CudaBackend {
    /// A row kernel of norm.cu over `n` rows of `c`, with `shared` bytes of dynamic shared memory.
    fn norm_rows(
        &self,
        op: &'static str,
        kernel: &str,
        blocks: usize,
        c: usize,
        shared: usize,
        args: &[KArg],
    ) -> Result<()> {
        if shared > MAX_SHARED as usize {
            return Err(Error::Invalid {
                op,
                what: "c",
                why: format!(
                    "the parameter gradients of {c} channels need {shared} bytes of shared memory per block, \
                     more than the {MAX_SHARED} a block may have"
                ),
            });
        }
        let cfg = LaunchConfig {
            grid_dim: (grid_dim(op, "n", blocks)?, 1, 1),
            block_dim: (block_for(c), 1, 1),
            shared_mem_bytes: shared as u32,
        };
        // SAFETY: the views were checked against (N, C) by the shared checks; the kernels stride
        // over the rows of any grid and guard the columns; `shared` is what the launch line asks.
        unsafe { self.launch(op, Module::Norm, kernel, cfg, args) }
    }

    /// The backward of either norm: `rows(parts)` launches the row kernel with the partial
    /// buffers at `parts` (null when unused), then each wanted gradient sums its partials.
    fn norm_backward(
        &self,
        op: &'static str,
        d: &NormDims,
        grads: [Grad; 2],
        rows: impl FnOnce(usize, [u64; 2]) -> Result<()>,
    ) -> Result<()> {
        if d.n == 0 {
            return Ok(());
        }
        let wanted = grads.iter().filter(|g| g.is_some()).count();
        let blocks = backward_blocks(d.n, wanted > 0);
        if wanted == 0 {
            return rows(blocks, [0, 0]);
        }
        let part = blocks * d.c * 4;
        self.with_scratch(part * wanted, |scratch| {
            let mut next = scratch;
            let mut parts = [0u64; 2];
            for (p, g) in parts.iter_mut().zip(&grads) {
                if g.is_some() {
                    *p = next;
                    next += part as u64;
                }
            }
            rows(blocks, parts)?;
            for (p, g) in parts.iter().zip(grads) {
                if let Some((acc, dt)) = g {
                    let kernel = match dt {
                        DType::BF16 => "param_grad_sum_bf16_f32",
                        _ => "param_grad_sum_f32",
                    };
                    let args = [
                        KArg::U64(acc),
                        KArg::U64(*p),
                        KArg::U64(blocks as u64),
                        KArg::U64(d.c as u64),
                    ];
                    // SAFETY: `acc` holds C elements (checked), the partials `blocks·C` floats.
                    unsafe { self.launch_1d(op, Module::Norm, kernel, d.c, &args)? };
                }
            }
            Ok(())
        })
    }
}

fn opt_ptr(v: &Option<CudaRef<'_>>) -> KArg {
    KArg::opt(v.as_ref().map(|v| v.ptr))
}

fn grad(v: &Option<CudaMut<'_>>) -> Grad {
    v.as_ref().map(|v| (v.ptr, v.dtype()))
}

impl NormOps for CudaBackend {
    fn layernorm_forward(
        &self,
        out: CudaMut<'_>,
        mean: CudaMut<'_>,
        rstd: CudaMut<'_>,
        inp: CudaRef<'_>,
        weight: Option<CudaRef<'_>>,
        bias: Option<CudaRef<'_>>,
        d: NormDims,
    ) -> Result<()> {
        const OP: &str = "layernorm_forward";
        let dt = check::layernorm_forward(
            CUDA_FLOATS,
            &out,
            &mean,
            &rstd,
            &inp,
            weight.as_ref(),
            bias.as_ref(),
            &d,
        )?;
        if d.n == 0 {
            return Ok(());
        }
        let args = [
            KArg::U64(out.ptr),
            KArg::U64(mean.ptr),
            KArg::U64(rstd.ptr),
            KArg::U64(inp.ptr),
            opt_ptr(&weight),
            opt_ptr(&bias),
            KArg::U64(d.n as u64),
            KArg::U64(d.c as u64),
            KArg::F32(d.eps as f32),
        ];
        self.norm_rows(
            OP,
            &format!("{OP}_{}", suffix(dt)),
            d.n.min(1 << 20),
            d.c,
            0,
            &args,
        )
    }

    fn layernorm_backward(
        &self,
        dinp: CudaMut<'_>,
        dweight: Option<CudaMut<'_>>,
        dbias: Option<CudaMut<'_>>,
        dout: CudaRef<'_>,
        inp: CudaRef<'_>,
        weight: Option<CudaRef<'_>>,
        mean: CudaRef<'_>,
        rstd: CudaRef<'_>,
        d: NormDims,
    ) -> Result<()> {
        const OP: &str = "layernorm_backward";
        let dt = check::layernorm_backward(
            CUDA_FLOATS,
            &dinp,
            dweight.as_ref(),
            dbias.as_ref(),
            &dout,
            &inp,
            weight.as_ref(),
            &mean,
            &rstd,
            &d,
        )?;
        let kernel = format!("{OP}_{}", suffix(dt));
        let grads = [grad(&dweight), grad(&dbias)];
        let shared = if grads.iter().any(Option::is_some) {
            8 * d.c
        } else {
            0
        };
        self.norm_backward(OP, &d, grads, |blocks, [dw, db]| {
            let args = [
                KArg::U64(dinp.ptr),
                KArg::U64(dw),
                KArg::U64(db),
                KArg::U64(dout.ptr),
                KArg::U64(inp.ptr),
                opt_ptr(&weight),
                KArg::U64(mean.ptr),
                KArg::U64(rstd.ptr),
                KArg::U64(d.n as u64),
                KArg::U64(d.c as u64),
            ];
            self.norm_rows(OP, &kernel, blocks, d.c, shared, &args)
        })
    }

    fn rmsnorm_forward(
        &self,
        out: CudaMut<'_>,
        rstd: CudaMut<'_>,
        inp: CudaRef<'_>,
        weight: Option<CudaRef<'_>>,
        d: NormDims,
    ) -> Result<()> {
        const OP: &str = "rmsnorm_forward";
        let dt = check::rmsnorm_forward(CUDA_FLOATS, &out, &rstd, &inp, weight.as_ref(), &d)?;
        if d.n == 0 {
            return Ok(());
        }
        let args = [
            KArg::U64(out.ptr),
            KArg::U64(rstd.ptr),
            KArg::U64(inp.ptr),
            opt_ptr(&weight),
            KArg::U64(d.n as u64),
            KArg::U64(d.c as u64),
            KArg::F32(d.eps as f32),
        ];
        self.norm_rows(
            OP,
            &format!("{OP}_{}", suffix(dt)),
            d.n.min(1 << 20),
            d.c,
            0,
            &args,
        )
    }

    fn rmsnorm_backward(
        &self,
        dinp: CudaMut<'_>,
        dweight: Option<CudaMut<'_>>,
        dout: CudaRef<'_>,
        inp: CudaRef<'_>,
        weight: Option<CudaRef<'_>>,
        rstd: CudaRef<'_>,
        d: NormDims,
    ) -> Result<()> {
        const OP: &str = "rmsnorm_backward";
        let dt = check::rmsnorm_backward(
            CUDA_FLOATS,
            &dinp,
            dweight.as_ref(),
            &dout,
            &inp,
            weight.as_ref(),
            &rstd,
            &d,
        )?;
        let kernel = format!("{OP}_{}", suffix(dt));
        let grads = [grad(&dweight), None];
        let shared = if grads[0].is_some() { 4 * d.c } else { 0 };
        self.norm_backward(OP, &d, grads, |blocks, [dw, _]| {
            let args = [
                KArg::U64(dinp.ptr),
                KArg::U64(dw),
                KArg::U64(dout.ptr),
                KArg::U64(inp.ptr),
                opt_ptr(&weight),
                KArg::U64(rstd.ptr),
                KArg::U64(d.n as u64),
                KArg::U64(d.c as u64),
            ];
            self.norm_rows(OP, &kernel, blocks, d.c, shared, &args)
        })
    }
}
