//! CUDA implementation of attention (`kernels/cuda/attention.cu`): fused forward, a
//! deterministic three-launch backward (delta, dk/dv, dq) and the ring-attention merge; f32 and
//! bf16 activations, f32 `lse`, with the CPU backend's argument checks.
//!
//! The kernels' limits, refused here with [`Error::Invalid`] before any launch: f32 takes a
//! head dim of 1 to 128; bf16 (tensor cores) one of 16, 32, …, 128, and buffers 16-byte
//! aligned (its tiles are loaded in 16-byte pieces).

use super::device::{grid_dim, grid_yz, suffix, CudaBackend, CudaMut, CudaRef, KArg, CUDA_FLOATS};
use super::modules::Module;
use crate::ops::{check, AttentionOps, AttnDims};
use crate::{DType, Error, Result};
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::LaunchConfig;

/// Which attention kernel: its rows per block and its dynamic shared memory.
#[derive(Clone, Copy)]
enum Kernel {
    Forward,
    Dq,
    Dkdv,
}

impl Kernel {
    /// The kernel's name, less its dtype.
    fn name(self) -> &'static str {
        match self {
            Kernel::Forward => "attention_forward",
            Kernel::Dq => "attention_backward_dq",
            Kernel::Dkdv => "attention_backward_dkdv",
        }
    }

    /// Query (or, for dk/dv, key) rows per block.
    fn rows(self, dt: DType) -> usize {
        match (self, dt) {
            (Kernel::Forward, DType::F32) => 32,
            (_, DType::F32) => 16,
            _ => 64,
        }
    }

    /// Dynamic shared memory bytes (the `// Launch:` lines of attention.cu).
    fn shared(self, dt: DType, hd: usize) -> usize {
        let (hdp, hds) = (hd.div_ceil(4) * 4, hd.div_ceil(32) * 32);
        match (self, dt) {
            (Kernel::Forward, DType::F32) => 4 * 32 * (2 * hdp + hds),
            (_, DType::F32) => 4 * (32 * hdp + 64 * hds),
            (Kernel::Forward, _) => 4 * 64 * (hd + 8),
            (Kernel::Dq, _) => 2 * 64 * (hd + 8),
            (Kernel::Dkdv, _) => 2 * 160 * (hd + 8) + 128,
        }
    }
}

/// The head dims and alignment the kernels of dtype `dt` take.
fn check_limits(op: &'static str, dt: DType, hd: usize, ptrs: &[(&'static str, CUdeviceptr)]) -> Result<()> {
    let invalid = |what, why: String| Err(Error::Invalid { op, what, why });
    if dt == DType::F32 {
        if hd > 128 {
            return invalid(
                "hd",
                format!("the f32 CUDA kernels take a head dim of at most 128, got {hd}"),
            );
        }
        return Ok(());
    }
    if !(hd.is_multiple_of(16) && (16..=128).contains(&hd)) {
        return invalid(
            "hd",
            format!("the bf16 CUDA kernels take a head dim of 16, 32, 48, 64, 80, 96, 112 or 128, got {hd}"),
        );
    }
    if let Some((name, p)) = ptrs.iter().find(|(_, p)| p % 16 != 0) {
        return invalid(
            "alignment",
            format!("the bf16 CUDA kernels need 16-byte aligned buffers; `{name}` is at {p:#x}"),
        );
    }
    Ok(())
}

/// The problem's sizes as the kernels take them, then the f32 scale.
fn sizes(d: &AttnDims) -> Vec<KArg> {
    let mut a: Vec<KArg> = [
        d.b,
        d.tq,
        d.tk,
        d.nh,
        d.nkv,
        d.hd,
        d.causal as usize,
        d.q_start,
        d.k_start,
    ]
    .iter()
    .map(|&v| KArg::U64(v as u64))
    .collect();
    a.push(KArg::F32(d.scale as f32));
    a
}

impl CudaBackend {
    /// Launch kernel `k` over `rows` (query or key rows) × `heads` × B with the given buffers.
    fn attention_launch(
        &self,
        op: &'static str,
        k: Kernel,
        dt: DType,
        (rows, heads): (usize, usize),
        d: &AttnDims,
        ptrs: &[CUdeviceptr],
    ) -> Result<()> {
        if rows == 0 || heads == 0 || d.b == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: (
                grid_dim(op, "tq", rows.div_ceil(k.rows(dt)))?,
                grid_yz(op, "nh", heads)?,
                grid_yz(op, "b", d.b)?,
            ),
            block_dim: (128, 1, 1),
            shared_mem_bytes: k.shared(dt, d.hd) as u32,
        };
        let mut args: Vec<KArg> = ptrs.iter().map(|&p| KArg::U64(p)).collect();
        args.extend(sizes(d));
        // SAFETY: every buffer was checked against the dims; the head dim and alignment against
        // the kernels' limits; the kernels guard rows past TQ/TK.
        unsafe {
            self.launch(
                op,
                Module::Attention,
                &format!("{}_{}", k.name(), suffix(dt)),
                cfg,
                &args,
            )
        }
    }
}

impl AttentionOps for CudaBackend {
    fn attention_forward(
        &self,
        out: CudaMut<'_>,
        lse: CudaMut<'_>,
        q: CudaRef<'_>,
        k: CudaRef<'_>,
        v: CudaRef<'_>,
        d: AttnDims,
    ) -> Result<()> {
        const OP: &str = "attention_forward";
        let dt = check::attention_forward(CUDA_FLOATS, &out, &lse, &q, &k, &v, &d)?;
        check_limits(
            OP,
            dt,
            d.hd,
            &[("q", q.ptr), ("k", k.ptr), ("v", v.ptr), ("out", out.ptr)],
        )?;
        let ptrs = [out.ptr, lse.ptr, q.ptr, k.ptr, v.ptr];
        self.attention_launch(OP, Kernel::Forward, dt, (d.tq, d.nh), &d, &ptrs)
    }

    fn attention_merge(
        &self,
        out: CudaMut<'_>,
        lse: CudaMut<'_>,
        part: CudaRef<'_>,
        part_lse: CudaRef<'_>,
        d: AttnDims,
    ) -> Result<()> {
        const OP: &str = "attention_merge";
        let dt = check::attention_merge(CUDA_FLOATS, &out, &lse, &part, &part_lse, &d)?;
        let args = [
            KArg::U64(out.ptr),
            KArg::U64(lse.ptr),
            KArg::U64(part.ptr),
            KArg::U64(part_lse.ptr),
            KArg::U64(d.b as u64),
            KArg::U64(d.tq as u64),
            KArg::U64(d.nh as u64),
            KArg::U64(d.hd as u64),
        ];
        // One warp per (b, t, h) row: 32 threads a row, 8 rows per block of 256.
        let threads = d.b * d.tq * d.nh * 32;
        // SAFETY: `out`, `part` hold B·TQ·NH·HD and the log-sum-exps B·NH·TQ elements (checked);
        // the kernel guards its row.
        unsafe {
            self.launch_1d(
                OP,
                Module::Attention,
                &format!("{OP}_{}", suffix(dt)),
                threads,
                &args,
            )
        }
    }

    fn attention_backward(
        &self,
        dq: CudaMut<'_>,
        dk: CudaMut<'_>,
        dv: CudaMut<'_>,
        dout: CudaRef<'_>,
        q: CudaRef<'_>,
        k: CudaRef<'_>,
        v: CudaRef<'_>,
        out: CudaRef<'_>,
        lse: CudaRef<'_>,
        d: AttnDims,
    ) -> Result<()> {
        const OP: &str = "attention_backward";
        let dt = check::attention_backward(CUDA_FLOATS, &dq, &dk, &dv, &dout, &q, &k, &v, &out, &lse, &d)?;
        check_limits(
            OP,
            dt,
            d.hd,
            &[
                ("q", q.ptr),
                ("k", k.ptr),
                ("v", v.ptr),
                ("out", out.ptr),
                ("dout", dout.ptr),
                ("dq", dq.ptr),
                ("dk", dk.ptr),
                ("dv", dv.ptr),
            ],
        )?;
        let rows = d.b * d.nh * d.tq;
        self.with_scratch(rows * 4, |delta| {
            let args = [
                KArg::U64(delta),
                KArg::U64(dout.ptr),
                KArg::U64(out.ptr),
                KArg::U64(d.b as u64),
                KArg::U64(d.tq as u64),
                KArg::U64(d.nh as u64),
                KArg::U64(d.hd as u64),
            ];
            let kernel = format!("attention_backward_delta_{}", suffix(dt));
            // SAFETY: `dout`, `out` hold B·TQ·NH·HD elements, the scratch B·NH·TQ floats; one
            // warp per row, guarded.
            unsafe { self.launch_1d(OP, Module::Attention, &kernel, rows * 32, &args)? };
            let shared = [dout.ptr, q.ptr, k.ptr, v.ptr, lse.ptr, delta];
            let mut ptrs = vec![dk.ptr, dv.ptr];
            ptrs.extend(shared);
            self.attention_launch(OP, Kernel::Dkdv, dt, (d.tk, d.nkv), &d, &ptrs)?;
            let mut ptrs = vec![dq.ptr];
            ptrs.extend(shared);
            self.attention_launch(OP, Kernel::Dq, dt, (d.tq, d.nh), &d, &ptrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_memory_is_the_launch_lines() {
        // The sizes attention.cu states at HD = 128.
        assert_eq!(Kernel::Forward.shared(DType::F32, 128), 48 << 10);
        assert_eq!(Kernel::Dq.shared(DType::F32, 128), 48 << 10);
        assert_eq!(Kernel::Forward.shared(DType::BF16, 128), 34816);
        assert_eq!(Kernel::Dq.shared(DType::BF16, 128), 17408);
        assert_eq!(Kernel::Dkdv.shared(DType::BF16, 128), 2 * 160 * 136 + 128);
    }

    #[test]
    fn the_kernels_limits_are_refused_by_name() {
        assert!(check_limits("op", DType::F32, 128, &[]).is_ok());
        let e = check_limits("op", DType::F32, 129, &[]).unwrap_err().to_string();
        assert!(e.contains("at most 128, got 129"), "{e}");
        let e = check_limits("op", DType::BF16, 40, &[]).unwrap_err().to_string();
        assert!(e.contains("got 40"), "{e}");
        let e = check_limits("op", DType::BF16, 64, &[("q", 0x1000), ("k", 0x1008)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`k` is at 0x1008"), "{e}");
        assert!(check_limits("op", DType::BF16, 64, &[("q", 0x1000), ("k", 0x1010)]).is_ok());
    }
}
