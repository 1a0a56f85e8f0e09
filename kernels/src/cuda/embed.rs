//! CUDA implementation of the embedding family (`kernels/cuda/embed.cu`): f32 and bf16
//! activations, f32 timesteps, i32 ids, with the CPU backend's argument checks.
//!
//! Ids are read on the device only: an id outside `0..V`, which the CPU refuses with
//! [`crate::Error::Index`], gives a zero row in the lookup and is skipped by the backward here
//! (reading them would wait for the device).
//!
//! The embedding backward sorts the tokens by (id, position) on the device — packed `u64` keys
//! in scratch memory, a bitonic sort launched as [`super::sort::plan`] says — and then adds each
//! table row's `dout` rows in token order, as the CPU does: deterministic, without atomics, and
//! equal to the CPU bit for bit.

use super::device::{grid_dim, suffix, CudaBackend, CudaMut, CudaRef, KArg, CUDA_FLOATS};
use super::modules::Module;
use super::sort;
use crate::backend::Slice;
use crate::ops::{check, EmbedOps, EmbeddingDims, PatchDims, TimestepDims};
use crate::{DType, Error, Result};
use cudarc::driver::LaunchConfig;

/// The most tokens one `embedding_backward` sorts: a key holds a token's position in 32 bits,
/// and position `u32::MAX` would tie with the padding keys.
const MAX_TOKENS: usize = u32::MAX as usize - 1;

impl CudaBackend {
    /// One of the four patch permutations, one thread per element.
    fn patch(&self, op: &'static str, dt: DType, dst: u64, src: u64, d: &PatchDims) -> Result<()> {
        let mut args = vec![KArg::U64(dst), KArg::U64(src)];
        args.extend([d.b, d.t, d.h, d.w, d.c, d.pt, d.ph, d.pw].map(|v| KArg::U64(v as u64)));
        // SAFETY: both views hold B·T·H·W·C elements (checked, with the patch sizes dividing
        // their extents); the kernel guards its index.
        unsafe {
            self.launch_1d(
                op,
                Module::Embed,
                &format!("{op}_{}", suffix(dt)),
                d.numel(),
                &args,
            )
        }
    }
}

impl EmbedOps for CudaBackend {
    fn embedding_forward(
        &self,
        out: CudaMut<'_>,
        ids: CudaRef<'_>,
        table: CudaRef<'_>,
        d: EmbeddingDims,
    ) -> Result<()> {
        const OP: &str = "embedding_forward";
        let dt = check::embedding_forward(CUDA_FLOATS, &out, &ids, &table, &d)?;
        let args = [
            KArg::U64(out.ptr),
            KArg::U64(ids.ptr),
            KArg::U64(table.ptr),
            KArg::U64(d.n as u64),
            KArg::U64(d.v as u64),
            KArg::U64(d.c as u64),
        ];
        // SAFETY: `out` holds N·C, `ids` N and `table` V·C elements (checked); the kernel guards
        // its index and each id.
        unsafe {
            self.launch_1d(
                OP,
                Module::Embed,
                &format!("{OP}_{}", suffix(dt)),
                d.n * d.c,
                &args,
            )
        }
    }

    fn embedding_backward(
        &self,
        dtable: CudaMut<'_>,
        dout: CudaRef<'_>,
        ids: CudaRef<'_>,
        d: EmbeddingDims,
    ) -> Result<()> {
        const OP: &str = "embedding_backward";
        let dt = check::embedding_backward(CUDA_FLOATS, &dtable, &dout, &ids, &d)?;
        if d.n > MAX_TOKENS {
            return Err(Error::Invalid {
                op: OP,
                what: "n",
                why: format!(
                    "{} tokens: the CUDA backend sorts at most {MAX_TOKENS} (a token's position \
                     is a 32-bit key)",
                    d.n
                ),
            });
        }
        if d.n == 0 {
            return Ok(());
        }
        let kernel = match (dtable.dtype(), dt) {
            (DType::F32, DType::BF16) => format!("{OP}_f32_bf16"),
            _ => format!("{OP}_{}", suffix(dt)),
        };
        let (n, p) = (d.n as u64, sort::padded_len(d.n as u64));
        self.with_scratch(p as usize * 8, |keys| {
            let args = [KArg::U64(keys), KArg::U64(ids.ptr), KArg::U64(n), KArg::U64(p)];
            // SAFETY: the scratch holds P keys, `ids` N i32 (checked); one thread per key.
            unsafe { self.launch_1d(OP, Module::Embed, "sort_keys_pack", p as usize, &args)? };
            for l in sort::plan(p, sort::TILE) {
                let cfg = LaunchConfig {
                    grid_dim: (grid_dim(OP, "n", l.grid as usize)?, 1, 1),
                    block_dim: (l.block, 1, 1),
                    shared_mem_bytes: 0,
                };
                let mut args = vec![KArg::U64(keys)];
                args.extend(l.scalars().into_iter().map(KArg::U64));
                // SAFETY: the scratch holds the plan's P keys; the plan's grid and block are
                // the kernel's `// Launch:` line for TILE (embed.cu's default, sort::TILE).
                unsafe { self.launch(OP, Module::Embed, l.kernel(), cfg, &args)? };
            }
            let cfg = LaunchConfig {
                // Blocks stride over the keys: any grid is valid.
                grid_dim: (d.n.min(i32::MAX as usize) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            let args = [
                KArg::U64(dtable.ptr),
                KArg::U64(dout.ptr),
                KArg::U64(keys),
                KArg::U64(n),
                KArg::U64(d.v as u64),
                KArg::U64(d.c as u64),
            ];
            // SAFETY: `dtable` holds V·C and `dout` N·C elements (checked), the scratch N
            // sorted keys (read up to N); the kernel skips ids >= V and positions >= N.
            unsafe { self.launch(OP, Module::Embed, &kernel, cfg, &args) }
        })
    }

    fn patchify_forward(&self, out: CudaMut<'_>, x: CudaRef<'_>, d: PatchDims) -> Result<()> {
        const OP: &str = "patchify_forward";
        let dt = check::patch(OP, CUDA_FLOATS, &out, true, &x, ("out", "x"), &d)?;
        self.patch(OP, dt, out.ptr, x.ptr, &d)
    }

    fn patchify_backward(&self, dx: CudaMut<'_>, dout: CudaRef<'_>, d: PatchDims) -> Result<()> {
        const OP: &str = "patchify_backward";
        let dt = check::patch(OP, CUDA_FLOATS, &dx, false, &dout, ("dx", "dout"), &d)?;
        self.patch(OP, dt, dx.ptr, dout.ptr, &d)
    }

    fn unpatchify_forward(&self, out: CudaMut<'_>, tokens: CudaRef<'_>, d: PatchDims) -> Result<()> {
        const OP: &str = "unpatchify_forward";
        let dt = check::patch(OP, CUDA_FLOATS, &out, false, &tokens, ("out", "tokens"), &d)?;
        self.patch(OP, dt, out.ptr, tokens.ptr, &d)
    }

    fn unpatchify_backward(&self, dtokens: CudaMut<'_>, dout: CudaRef<'_>, d: PatchDims) -> Result<()> {
        const OP: &str = "unpatchify_backward";
        let dt = check::patch(OP, CUDA_FLOATS, &dtokens, true, &dout, ("dtokens", "dout"), &d)?;
        self.patch(OP, dt, dtokens.ptr, dout.ptr, &d)
    }

    fn timestep_embedding_forward(&self, out: CudaMut<'_>, t: CudaRef<'_>, d: TimestepDims) -> Result<()> {
        const OP: &str = "timestep_embedding_forward";
        let dt = check::timestep_embedding_forward(CUDA_FLOATS, &out, &t, &d)?;
        let args = [
            KArg::U64(out.ptr),
            KArg::U64(t.ptr),
            KArg::U64(d.n as u64),
            KArg::U64(d.dim as u64),
            // The frequencies are computed in f64 from the op's own value, as the CPU's.
            KArg::F64(d.max_period),
        ];
        // SAFETY: `out` holds N·DIM and `t` N elements (checked); one thread per output.
        unsafe {
            self.launch_1d(
                OP,
                Module::Embed,
                &format!("{OP}_{}", suffix(dt)),
                d.n * d.dim,
                &args,
            )
        }
    }

    fn timestep_embedding_backward(
        &self,
        dt_: CudaMut<'_>,
        dout: CudaRef<'_>,
        t: CudaRef<'_>,
        d: TimestepDims,
    ) -> Result<()> {
        const OP: &str = "timestep_embedding_backward";
        let dt = check::timestep_embedding_backward(CUDA_FLOATS, &dt_, &dout, &t, &d)?;
        let args = [
            KArg::U64(dt_.ptr),
            KArg::U64(dout.ptr),
            KArg::U64(t.ptr),
            KArg::U64(d.n as u64),
            KArg::U64(d.dim as u64),
            KArg::F64(d.max_period),
        ];
        // SAFETY: `dout` holds N·DIM, `t` and `dt` N elements (checked); one thread per row.
        unsafe { self.launch_1d(OP, Module::Embed, &format!("{OP}_{}", suffix(dt)), d.n, &args) }
    }
}
