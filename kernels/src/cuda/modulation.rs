//! CUDA implementation of AdaLN modulation and gated residuals (`kernels/cuda/modulation.cu`):
//! f32 and bf16, with the CPU backend's argument checks.
//!
//! The conditioning gradients (`dshift`, `dscale`, `dgate`: sums over the tokens) are
//! deterministic: the backward kernel leaves one partial sum per token chunk in a scratch of
//! `B·P·C` floats per gradient and `cond_grad_sum_*` adds them in chunk order, with `P` a
//! function of `T` alone ([`token_chunks`]).

use super::device::{grid_dim, grid_yz, suffix, CudaBackend, CudaMut, CudaRef, KArg, CUDA_FLOATS};
use super::modules::Module;
use crate::ops::{check, ModDims, ModulationOps};
use crate::{DType, Result};
use cudarc::driver::LaunchConfig;

/// Token chunks `P` of the backward: one per 256 tokens, 1 to 64.
pub(crate) fn token_chunks(t: usize) -> usize {
    t.div_ceil(256).clamp(1, 64)
}

impl CudaBackend {
    /// `residual`-style forward over the `(B, T, C)` stream: one thread per element.
    fn modulation_forward(&self, op: &'static str, dt: DType, ptrs: &[u64], d: &ModDims) -> Result<()> {
        let mut args: Vec<KArg> = ptrs.iter().map(|&p| KArg::U64(p)).collect();
        args.extend([d.b, d.t, d.c, d.cond_stride].map(|v| KArg::U64(v as u64)));
        // SAFETY: the stream views hold B·T·C elements and the conditioning views
        // (B−1)·stride + C (checked); the kernel guards its index.
        unsafe {
            self.launch_1d(
                op,
                Module::Modulation,
                &format!("{op}_{}", suffix(dt)),
                d.b * d.t * d.c,
                &args,
            )
        }
    }

    /// The backward: `kernel(…partials…)` over (column tiles, P, B), then each conditioning
    /// gradient in `conds` sums its partials. `args(parts)` gives the kernel's arguments.
    fn modulation_backward(
        &self,
        op: &'static str,
        dt: DType,
        conds: &[u64],
        d: &ModDims,
        args: impl FnOnce(&[u64]) -> Vec<KArg>,
    ) -> Result<()> {
        if d.b == 0 || d.c == 0 {
            return Ok(());
        }
        let p = token_chunks(d.t);
        let (cols, samples) = (grid_dim(op, "c", d.c.div_ceil(256))?, grid_yz(op, "b", d.b)?);
        let part = d.b * p * d.c * 4;
        self.with_scratch(part * conds.len(), |scratch| {
            let parts: Vec<u64> = (0..conds.len()).map(|i| scratch + (i * part) as u64).collect();
            let cfg = LaunchConfig {
                grid_dim: (cols, p as u32, samples),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the views were checked against (B, T, C) and the strided rows; the
            // partials hold B·P·C floats each; the kernel guards columns and samples.
            unsafe {
                self.launch(
                    op,
                    Module::Modulation,
                    &format!("{op}_{}", suffix(dt)),
                    cfg,
                    &args(&parts),
                )?
            };
            let sum = match dt {
                DType::BF16 => "cond_grad_sum_bf16_f32",
                _ => "cond_grad_sum_f32",
            };
            let cfg = LaunchConfig {
                grid_dim: (cols, samples, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            for (&dcond, &partials) in conds.iter().zip(&parts) {
                let args = [
                    KArg::U64(dcond),
                    KArg::U64(partials),
                    KArg::U64(p as u64),
                    KArg::U64(d.b as u64),
                    KArg::U64(d.c as u64),
                    KArg::U64(d.cond_stride as u64),
                ];
                // SAFETY: `dcond` holds (B−1)·stride + C elements (checked); the kernel writes
                // only the first C of each row.
                unsafe { self.launch(op, Module::Modulation, sum, cfg, &args)? };
            }
            Ok(())
        })
    }
}

fn sizes(d: &ModDims) -> [KArg; 4] {
    [d.b, d.t, d.c, d.cond_stride].map(|v| KArg::U64(v as u64))
}

impl ModulationOps for CudaBackend {
    fn modulate_forward(
        &self,
        out: CudaMut<'_>,
        x: CudaRef<'_>,
        shift: CudaRef<'_>,
        scale: CudaRef<'_>,
        d: ModDims,
    ) -> Result<()> {
        let dt = check::modulate_forward(CUDA_FLOATS, &out, &x, &shift, &scale, &d)?;
        self.modulation_forward(
            "modulate_forward",
            dt,
            &[out.ptr, x.ptr, shift.ptr, scale.ptr],
            &d,
        )
    }

    fn modulate_backward(
        &self,
        dx: CudaMut<'_>,
        dshift: CudaMut<'_>,
        dscale: CudaMut<'_>,
        dout: CudaRef<'_>,
        x: CudaRef<'_>,
        scale: CudaRef<'_>,
        d: ModDims,
    ) -> Result<()> {
        let dt = check::modulate_backward(CUDA_FLOATS, &dx, &dshift, &dscale, &dout, &x, &scale, &d)?;
        self.modulation_backward("modulate_backward", dt, &[dshift.ptr, dscale.ptr], &d, |parts| {
            let mut a = vec![
                KArg::U64(dx.ptr),
                KArg::U64(parts[0]),
                KArg::U64(parts[1]),
                KArg::U64(dout.ptr),
                KArg::U64(x.ptr),
                KArg::U64(scale.ptr),
            ];
            a.extend(sizes(&d));
            a
        })
    }

    fn gate_forward(
        &self,
        residual: CudaMut<'_>,
        gate: CudaRef<'_>,
        y: CudaRef<'_>,
        d: ModDims,
    ) -> Result<()> {
        let dt = check::gate_forward(CUDA_FLOATS, &residual, &gate, &y, &d)?;
        self.modulation_forward("gate_forward", dt, &[residual.ptr, gate.ptr, y.ptr], &d)
    }

    fn gate_backward(
        &self,
        dy: CudaMut<'_>,
        dgate: CudaMut<'_>,
        dout: CudaRef<'_>,
        gate: CudaRef<'_>,
        y: CudaRef<'_>,
        d: ModDims,
    ) -> Result<()> {
        let dt = check::gate_backward(CUDA_FLOATS, &dy, &dgate, &dout, &gate, &y, &d)?;
        self.modulation_backward("gate_backward", dt, &[dgate.ptr], &d, |parts| {
            let mut a = vec![
                KArg::U64(dy.ptr),
                KArg::U64(parts[0]),
                KArg::U64(dout.ptr),
                KArg::U64(gate.ptr),
                KArg::U64(y.ptr),
            ];
            a.extend(sizes(&d));
            a
        })
    }
}
