//! CUDA implementation of the embedding family (`kernels/cuda/embed.cu`): f32 and bf16
//! activations, f32 timesteps, i32 ids, with the CPU backend's argument checks.
//!
//! Ids are read on the device only: an id outside `0..V`, which the CPU refuses with
//! [`crate::Error::Index`], gives a zero row here (reading them would wait for the device).
//! The embedding backward is refused: see [`EMBEDDING_BACKWARD`].

use super::device::{suffix, CudaBackend, CudaMut, CudaRef, KArg, CUDA_FLOATS};
use super::modules::Module;
use crate::ops::{check, EmbedOps, EmbeddingDims, PatchDims, TimestepDims};
use crate::{DType, Error, Result};

/// Why `embedding_backward` has no CUDA launch: embed.cu's deterministic scatter-add takes the
/// ids sorted (`sorted_ids`, `positions`), sorted by a host that holds them; the op receives
/// the ids in device memory, and neither a device sort nor an unsorted deterministic kernel
/// exists to bridge the two (reading the ids back would wait for the device inside an op).
pub(crate) const EMBEDDING_BACKWARD: &str = "not supported on the CUDA backend: embed.cu's \
     embedding_backward kernels take the ids sorted on the host (sorted_ids, positions), while \
     the op's ids are in device memory and embed.cu has no kernel that sorts them there";

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
        check::embedding_backward(CUDA_FLOATS, &dtable, &dout, &ids, &d)?;
        Err(Error::Cuda {
            op: OP,
            msg: EMBEDDING_BACKWARD.into(),
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
