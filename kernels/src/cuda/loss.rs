//! CUDA implementation of the losses (`kernels/cuda/loss.cu`): f32 and bf16 logits and
//! predictions, f32 statistics, with the CPU backend's argument checks.
//!
//! Targets are read on the device only: a target `≥ V`, which the CPU refuses with
//! [`crate::Error::Index`], gives a NaN loss here (reading them would wait for the device).
//! The MSE is a deterministic two-stage sum: per-chunk partials in scratch, then one block
//! adds them in order.

use super::device::{grid_dim, suffix, CudaBackend, CudaMut, CudaRef, KArg, CUDA_FLOATS};
use super::modules::Module;
use crate::ops::{check, CrossEntropyDims, LossOps};
use crate::Result;
use cudarc::driver::LaunchConfig;

/// Elements per partial sum of the MSE forward (`MSE_CHUNK` in loss.cu).
const MSE_CHUNK: usize = 4096;

impl CudaBackend {
    /// A cross-entropy kernel: one block per row (blocks stride over the rows).
    fn cross_entropy(
        &self,
        op: &'static str,
        kernel: &str,
        d: &CrossEntropyDims,
        args: &[KArg],
    ) -> Result<()> {
        if d.n == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: (grid_dim(op, "n", d.n.min(1 << 20))?, 1, 1),
            block_dim: (if d.v <= 8192 { 256 } else { 1024 }, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: logits hold N·V, the per-row buffers N elements (checked); the kernel strides
        // over rows and guards columns and targets.
        unsafe { self.launch(op, Module::Loss, kernel, cfg, args) }
    }
}

impl LossOps for CudaBackend {
    fn cross_entropy_forward(
        &self,
        losses: CudaMut<'_>,
        lse: CudaMut<'_>,
        logits: CudaRef<'_>,
        targets: CudaRef<'_>,
        d: CrossEntropyDims,
    ) -> Result<()> {
        const OP: &str = "cross_entropy_forward";
        let dt = check::cross_entropy_forward(CUDA_FLOATS, &losses, &lse, &logits, &targets, &d)?;
        let args = [
            KArg::U64(losses.ptr),
            KArg::U64(lse.ptr),
            KArg::U64(logits.ptr),
            KArg::U64(targets.ptr),
            KArg::U64(d.n as u64),
            KArg::U64(d.v as u64),
            KArg::F32(d.z_loss as f32),
        ];
        self.cross_entropy(OP, &format!("{OP}_{}", suffix(dt)), &d, &args)
    }

    fn cross_entropy_backward(
        &self,
        dlogits: CudaMut<'_>,
        dlosses: CudaRef<'_>,
        logits: CudaRef<'_>,
        targets: CudaRef<'_>,
        lse: CudaRef<'_>,
        d: CrossEntropyDims,
    ) -> Result<()> {
        const OP: &str = "cross_entropy_backward";
        let dt = check::cross_entropy_backward(CUDA_FLOATS, &dlogits, &dlosses, &logits, &targets, &lse, &d)?;
        let args = [
            KArg::U64(dlogits.ptr),
            KArg::U64(dlosses.ptr),
            KArg::U64(logits.ptr),
            KArg::U64(targets.ptr),
            KArg::U64(lse.ptr),
            KArg::U64(d.n as u64),
            KArg::U64(d.v as u64),
            KArg::F32(d.z_loss as f32),
        ];
        self.cross_entropy(OP, &format!("{OP}_{}", suffix(dt)), &d, &args)
    }

    fn mse_forward(&self, loss: CudaMut<'_>, pred: CudaRef<'_>, target: CudaRef<'_>, n: usize) -> Result<()> {
        const OP: &str = "mse_forward";
        let dt = check::mse_forward(CUDA_FLOATS, &loss, &pred, &target, n)?;
        let parts = n.div_ceil(MSE_CHUNK);
        self.with_scratch(parts * 4, |partials| {
            if parts > 0 {
                let cfg = LaunchConfig {
                    grid_dim: (grid_dim(OP, "n", parts)?, 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                let args = [
                    KArg::U64(partials),
                    KArg::U64(pred.ptr),
                    KArg::U64(target.ptr),
                    KArg::U64(n as u64),
                ];
                // SAFETY: `pred`, `target` hold n elements; the scratch ceil(n / MSE_CHUNK) floats.
                unsafe {
                    let kernel = format!("mse_forward_partial_{}", suffix(dt));
                    self.launch(OP, Module::Loss, &kernel, cfg, &args)?
                };
            }
            let cfg = LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (1024, 1, 1),
                shared_mem_bytes: 0,
            };
            let args = [
                KArg::U64(loss.ptr),
                KArg::U64(partials),
                KArg::U64(parts as u64),
                KArg::U64(n as u64),
            ];
            // SAFETY: `loss` holds one f32; `parts` partials were written above.
            unsafe { self.launch(OP, Module::Loss, "mse_forward_finish_f32", cfg, &args) }
        })
    }

    fn mse_backward(
        &self,
        dpred: CudaMut<'_>,
        dloss: CudaRef<'_>,
        pred: CudaRef<'_>,
        target: CudaRef<'_>,
        n: usize,
    ) -> Result<()> {
        const OP: &str = "mse_backward";
        let dt = check::mse_backward(CUDA_FLOATS, &dpred, &dloss, &pred, &target, n)?;
        let args = [
            KArg::U64(dpred.ptr),
            KArg::U64(dloss.ptr),
            KArg::U64(pred.ptr),
            KArg::U64(target.ptr),
            KArg::U64(n as u64),
        ];
        // SAFETY: three views of n elements and a one-element `dloss` (checked).
        unsafe { self.launch_1d(OP, Module::Loss, &format!("{OP}_{}", suffix(dt)), n, &args) }
    }
}
