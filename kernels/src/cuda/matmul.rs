//! CUDA implementation of the matmul op family.
//!
//! Matmuls run on cuBLASLt through cudarc's thin `result` layer, so the compute type is chosen
//! here: f32 inputs use `CUBLAS_COMPUTE_32F` (true f32; TF32 only with
//! [`CudaBackend::allow_tf32`]), 16-bit inputs accumulate in f32. cuBLASLt is column-major; a
//! row-major `D (m, n) = op(L)·op(R)` is issued as the column-major `Dᵀ = op(R)ᵀ·op(L)ᵀ`.
//! The algorithm is chosen knowing each operand's actual alignment (flat-buffer views may be
//! only 64-byte aligned), and the bias gradient is a deterministic two-stage column reduction
//! (`kernels/cuda/reduce.cu`).

use super::device::{cuda_err, grid_1d, CudaBackend, CudaMut, CudaRef, KArg};
use super::modules::Module;
use crate::backend::{Check, Slice};
use crate::ops::{ElementwiseOps, Gemm, MatmulDims, MatmulOps, Operand};
use crate::{DType, Error, Result};
use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::LaunchConfig;
use std::ffi::c_void;
use std::mem::size_of;

/// An owned cuBLASLt handle.
pub(crate) struct LtHandle(sys::cublasLtHandle_t);

// SAFETY: a cuBLASLt handle holds no per-call state (the stream is an argument of every call)
// and cuBLASLt's functions may be called from several host threads with one handle. What is
// shared between calls is the backend's one cuBLASLt workspace, and that is safe only because
// every matmul is enqueued on the backend's one stream (`CudaBackend::gemm` takes no stream),
// so two matmuls never run at the same time. A matmul on another stream would need a workspace
// of its own.
unsafe impl Send for LtHandle {}
unsafe impl Sync for LtHandle {}

impl LtHandle {
    pub(crate) fn new() -> Result<Self, lt::CublasError> {
        Ok(LtHandle(lt::create_handle()?))
    }
}

impl Drop for LtHandle {
    fn drop(&mut self) {
        // SAFETY: created by `create_handle`, destroyed once.
        let _ = unsafe { lt::destroy_handle(self.0) };
    }
}

/// RAII wrappers so every descriptor is destroyed on every path.
struct Layout(sys::cublasLtMatrixLayout_t);
impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by `create_matrix_layout`, destroyed once.
        let _ = unsafe { lt::destroy_matrix_layout(self.0) };
    }
}
struct Desc(sys::cublasLtMatmulDesc_t);
impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by `create_matmul_desc`, destroyed once.
        let _ = unsafe { lt::destroy_matmul_desc(self.0) };
    }
}
struct Pref(sys::cublasLtMatmulPreference_t);
impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by `create_matmul_pref`, destroyed once.
        let _ = unsafe { lt::destroy_matmul_pref(self.0) };
    }
}

fn cuda_type(op: &'static str, arg: &'static str, dt: DType) -> Result<sys::cudaDataType> {
    Ok(match dt {
        DType::F32 => sys::cudaDataType::CUDA_R_32F,
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
        got => {
            return Err(Error::DType {
                op,
                arg,
                expected: "one of f32, bf16, f16".into(),
                got,
            })
        }
    })
}

/// One column-major layout `(rows, cols, ld)` with optional strided batching.
fn layout(
    ty: sys::cudaDataType,
    rows: usize,
    cols: usize,
    ld: usize,
    batch: usize,
    stride: usize,
) -> Result<Layout, lt::CublasError> {
    let l = Layout(lt::create_matrix_layout(ty, rows as u64, cols as u64, ld as i64)?);
    if batch > 1 {
        let (count, stride) = (batch as i32, stride as i64);
        // SAFETY: attribute buffers have the sizes cuBLASLt documents for these attributes.
        unsafe {
            lt::set_matrix_layout_attribute(
                l.0,
                sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                (&count as *const i32).cast(),
                size_of::<i32>(),
            )?;
            lt::set_matrix_layout_attribute(
                l.0,
                sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                (&stride as *const i64).cast(),
                size_of::<i64>(),
            )?;
        }
    }
    Ok(l)
}

/// The largest power of two ≤ 256 dividing `addr` (256 for 0): the alignment cuBLASLt may
/// assume of an operand at `addr`.
pub(crate) fn alignment(addr: u64) -> u32 {
    1u32 << addr.trailing_zeros().min(8)
}

/// The alignment every matrix of a strided batch has: the base's and the stride's.
pub(crate) fn batch_alignment(ptr: CUdeviceptr, batch: usize, stride_bytes: usize) -> u32 {
    alignment(if batch > 1 { ptr | stride_bytes as u64 } else { ptr })
}

/// Rows of `dout` each block of the bias gradient's first stage sums (before capping the
/// number of chunks by the workspace).
const BIAS_ROWS_PER_CHUNK: usize = 256;

/// How the bias gradient splits `rows`: `(chunks, rows_per_chunk)`, at most `max_chunks`
/// chunks (the partial sums that fit the workspace) and 65535 (the grid's y limit), no empty
/// chunk. A function of its arguments only, so the summation order is fixed.
pub(crate) fn bias_chunks(rows: usize, max_chunks: usize) -> (usize, usize) {
    let chunks = rows
        .div_ceil(BIAS_ROWS_PER_CHUNK)
        .clamp(1, max_chunks.clamp(1, 65535));
    let per = rows.div_ceil(chunks).max(1);
    (rows.div_ceil(per).max(1), per)
}

impl CudaBackend {
    /// Execute one row-major GEMM of a matmul plan over `batch` items:
    /// `dst (m, n) (+)= op(lhs)·op(rhs)`, inputs of dtype `in_dt`, output of `out_dt`.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        g: &Gemm,
        batch: usize,
        in_dt: DType,
        out_dt: DType,
        dst: CUdeviceptr,
        lhs: CUdeviceptr,
        rhs: CUdeviceptr,
    ) -> Result<()> {
        let beta = if g.accumulate { 1.0 } else { 0.0 };
        self.gemm_scaled(g, batch, (in_dt, out_dt), (dst, lhs, rhs), (1.0, beta, dst))
    }

    /// As [`CudaBackend::gemm`] with cuBLASLt's scaling: `dst = alpha·op(lhs)·op(rhs) +
    /// beta·c`, `c` laid out as `dst` (it may be `dst`). `g.accumulate` is not read.
    pub(crate) fn gemm_scaled(
        &self,
        g: &Gemm,
        batch: usize,
        (in_dt, out_dt): (DType, DType),
        (dst, lhs, rhs): (CUdeviceptr, CUdeviceptr, CUdeviceptr),
        (alpha, beta, c): (f32, f32, CUdeviceptr),
    ) -> Result<()> {
        const OP: &str = "cublasLt matmul";
        if g.m == 0 || g.n == 0 || batch == 0 {
            return Ok(());
        }
        let (ti, to) = (cuda_type(OP, "a", in_dt)?, cuda_type(OP, "out", out_dt)?);
        let compute = match in_dt {
            DType::F32 if self.allow_tf32 => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
            _ => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        };
        let err = cuda_err(OP);
        let run = || -> Result<(), lt::CublasError> {
            let desc = Desc(lt::create_matmul_desc(compute, sys::cudaDataType::CUDA_R_32F)?);
            // Column-major view: A' = op(rhs)ᵀ (n × k), B' = op(lhs)ᵀ (k × m), D' = Dᵀ (n × m).
            let (ta, tb) = (g.rhs_t as i32, g.lhs_t as i32);
            // SAFETY: i32 flags, as cuBLASLt documents for TRANSA/TRANSB.
            unsafe {
                lt::set_matmul_desc_attribute(
                    desc.0,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                    (&ta as *const i32).cast(),
                    size_of::<i32>(),
                )?;
                lt::set_matmul_desc_attribute(
                    desc.0,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                    (&tb as *const i32).cast(),
                    size_of::<i32>(),
                )?;
            }
            let a = if g.rhs_t {
                layout(ti, g.k, g.n, g.k, batch, g.k * g.n)?
            } else {
                layout(ti, g.n, g.k, g.n, batch, g.k * g.n)?
            };
            let b = if g.lhs_t {
                layout(ti, g.m, g.k, g.m, batch, g.m * g.k)?
            } else {
                layout(ti, g.k, g.m, g.k, batch, g.m * g.k)?
            };
            let d = layout(to, g.n, g.m, g.n, batch, g.m * g.n)?;
            let pref = Pref(lt::create_matmul_pref()?);
            let (ws, ws_size) = self.workspace();
            use sys::cublasLtMatmulPreferenceAttributes_t as P;
            let (isz, osz) = (in_dt.size(), out_dt.size());
            let align = [
                (
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                    batch_alignment(rhs, batch, g.k * g.n * isz),
                ),
                (
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    batch_alignment(lhs, batch, g.m * g.k * isz),
                ),
                (
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                    batch_alignment(c, batch, g.m * g.n * osz),
                ),
                (
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                    batch_alignment(dst, batch, g.m * g.n * osz),
                ),
            ];
            // SAFETY: u64 for MAX_WORKSPACE_BYTES and u32 for MIN_ALIGNMENT_*, as cuBLASLt
            // documents.
            unsafe {
                let ws_bytes = ws_size as u64;
                lt::set_matmul_pref_attribute(
                    pref.0,
                    P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    (&ws_bytes as *const u64).cast(),
                    size_of::<u64>(),
                )?;
                for (attr, bytes) in &align {
                    lt::set_matmul_pref_attribute(
                        pref.0,
                        *attr,
                        (bytes as *const u32).cast(),
                        size_of::<u32>(),
                    )?;
                }
            }
            // SAFETY: descriptors are live; pointers cover the layouts' extents (checked by the
            // callers against the op's dims); alpha/beta are f32 matching the f32 scale type.
            unsafe {
                let heur = lt::get_matmul_algo_heuristic(self.lt.0, desc.0, a.0, b.0, d.0, d.0, pref.0)?;
                lt::matmul(
                    self.lt.0,
                    desc.0,
                    (&alpha as *const f32).cast::<c_void>(),
                    (&beta as *const f32).cast::<c_void>(),
                    rhs as *const c_void,
                    a.0,
                    lhs as *const c_void,
                    b.0,
                    c as *const c_void,
                    d.0,
                    dst as *mut c_void,
                    d.0,
                    &heur.algo,
                    ws as *mut c_void,
                    ws_size,
                    self.stream.cu_stream() as sys::cudaStream_t,
                )
            }
        };
        self.context_bind()?;
        run().map_err(err)
    }

    /// `dbias (n) += Σ_rows dout (rows, n)`: per-chunk partial sums into the workspace (or
    /// scratch memory when they do not fit), then one ordered sum per column.
    fn bias_grad(
        &self,
        op: &'static str,
        dbias: CudaMut<'_>,
        dout: CudaRef<'_>,
        rows: usize,
        n: usize,
    ) -> Result<()> {
        let c = Check { op };
        let partial = match c.dtype_in("dout", dout.dtype(), &[DType::F32, DType::BF16])? {
            DType::F32 => "bias_grad_partial_f32",
            _ => "bias_grad_partial_bf16",
        };
        let finish = match c.dtype_in("dbias", dbias.dtype(), &[DType::F32, DType::BF16])? {
            DType::F32 => "bias_grad_finish_f32",
            _ => "bias_grad_finish_bf16",
        };
        if rows == 0 || n == 0 {
            return Ok(());
        }
        let (ws, ws_bytes) = self.workspace();
        let (chunks, per) = bias_chunks(rows, ws_bytes / (n * 4));
        let col_tiles = u32::try_from(n.div_ceil(32)).map_err(|_| Error::Invalid {
            op,
            what: "n",
            why: format!("{n} bias columns exceed one launch"),
        })?;
        let run = |partials: CUdeviceptr| -> Result<()> {
            let (n64, rows64) = (n as u64, rows as u64);
            let stage1 = LaunchConfig {
                grid_dim: (col_tiles, chunks as u32, 1),
                block_dim: (32, 8, 1),
                shared_mem_bytes: 0,
            };
            let stage2 = LaunchConfig {
                grid_dim: (grid_1d(op, n)?, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: `partials` holds chunks·n f32; `dout` holds rows·n and `dbias` n elements
            // (checked by the caller); the kernels guard columns against n and rows against
            // `rows`, and `chunks · per ≥ rows`.
            unsafe {
                self.launch(
                    op,
                    Module::Reduce,
                    partial,
                    stage1,
                    &[
                        KArg::U64(partials),
                        KArg::U64(dout.ptr),
                        KArg::U64(rows64),
                        KArg::U64(n64),
                        KArg::U64(per as u64),
                    ],
                )?;
                self.launch(
                    op,
                    Module::Reduce,
                    finish,
                    stage2,
                    &[
                        KArg::U64(dbias.ptr),
                        KArg::U64(partials),
                        KArg::U64(n64),
                        KArg::U64(chunks as u64),
                    ],
                )
            }
        };
        let bytes = chunks * n * 4;
        if bytes <= ws_bytes {
            run(ws)
        } else {
            self.with_scratch(bytes, run)
        }
    }
}

impl MatmulOps for CudaBackend {
    fn matmul_forward(
        &self,
        out: CudaMut<'_>,
        a: CudaRef<'_>,
        b: CudaRef<'_>,
        bias: Option<CudaRef<'_>>,
        d: MatmulDims,
    ) -> Result<()> {
        const OP: &str = "matmul_forward";
        let (dt, odt) = d.check_forward(OP, &out, &a, &b, bias.as_ref())?;
        if bias.is_some() {
            Check { op: OP }.dtype_in("out", odt, &[DType::F32])?;
        }
        self.gemm(&d.forward_gemm(), d.batch, dt, odt, out.ptr, a.ptr, b.ptr)?;
        if let Some(bias) = bias {
            let (rows, n) = ((d.batch * d.m) as u64, d.n as u64);
            let args = [
                KArg::U64(out.ptr),
                KArg::U64(bias.ptr),
                KArg::U64(rows),
                KArg::U64(n),
            ];
            // SAFETY: `out` holds rows·n and `bias` n f32 (checked); the kernel guards its index.
            unsafe {
                self.launch_1d(
                    OP,
                    Module::Elementwise,
                    "bias_add_f32",
                    d.batch * d.m * d.n,
                    &args,
                )?
            };
        }
        Ok(())
    }

    fn matmul_backward(
        &self,
        da: Option<CudaMut<'_>>,
        db: Option<CudaMut<'_>>,
        dbias: Option<CudaMut<'_>>,
        dout: CudaRef<'_>,
        a: CudaRef<'_>,
        b: CudaRef<'_>,
        d: MatmulDims,
    ) -> Result<()> {
        const OP: &str = "matmul_backward";
        let (dt, odt) = d.check_backward(OP, da.as_ref(), db.as_ref(), dbias.as_ref(), &dout, &a, &b)?;
        let gemms = |dout_ptr: CUdeviceptr| -> Result<()> {
            let pick = |o: Operand| match o {
                Operand::A => a.ptr,
                Operand::B => b.ptr,
                Operand::DOut => dout_ptr,
            };
            if let Some(da) = &da {
                let g = d.da_gemm();
                self.gemm(&g, d.batch, dt, dt, da.ptr, pick(g.lhs), pick(g.rhs))?;
            }
            if let Some(db) = &db {
                // `db` may be f32 for bf16 inputs: cuBLASLt takes A/B bf16 with C/D f32.
                let g = d.db_gemm();
                self.gemm(&g, d.batch, dt, db.dtype(), db.ptr, pick(g.lhs), pick(g.rhs))?;
            }
            Ok(())
        };
        if da.is_some() || db.is_some() {
            if dt == odt {
                gemms(dout.ptr)?;
            } else {
                // cuBLASLt multiplies operands of one type: `dout` (f32) is narrowed to the
                // inputs' type in scratch memory, which the next op may reuse without waiting
                // (stream order), so nothing here synchronises.
                let len = dout.len();
                self.with_scratch(len * dt.size(), |tmp| {
                    // SAFETY: the scratch block holds `len` elements of `dt` and is used by
                    // nothing else until this closure returns.
                    let narrow = unsafe { CudaMut::from_raw(tmp, dt, len) };
                    self.cast(narrow, dout, len)?;
                    gemms(tmp)
                })?;
            }
        }
        if let Some(dbias) = dbias {
            self.bias_grad(OP, dbias, dout, d.batch * d.m, d.n)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_is_the_largest_power_of_two_up_to_256_dividing_the_address() {
        assert_eq!(alignment(0), 256);
        assert_eq!(alignment(0x7f00_0000_0000), 256);
        assert_eq!(alignment(0x7f00_0000_0040), 64, "a flat-buffer view 64 bytes in");
        assert_eq!(alignment(0x7f00_0000_0080), 128);
        assert_eq!(alignment(0x7f00_0000_0100), 256);
        assert_eq!(alignment(0x7f00_0000_0200), 256, "capped at 256");
        assert_eq!(alignment(0x7f00_0000_0002), 2, "a bf16 view one element in");
        assert_eq!(alignment(0x7f00_0000_0004), 4);
        assert_eq!(alignment(0x7f00_0000_0001), 1);
    }

    #[test]
    fn a_batch_is_as_aligned_as_its_base_and_its_stride() {
        let base = 0x7f00_0000_0000;
        assert_eq!(
            batch_alignment(base, 1, 6),
            256,
            "one matrix: the stride is unused"
        );
        assert_eq!(batch_alignment(base, 2, 6), 2, "matrix 1 starts 6 bytes in");
        assert_eq!(batch_alignment(base, 3, 33 * 4), 4);
        assert_eq!(batch_alignment(base + 64, 4, 1024), 64);
        assert_eq!(batch_alignment(base, 4, 4096), 256);
    }

    #[test]
    fn the_bias_gradient_split_covers_every_row_with_no_empty_chunk() {
        for &(rows, max) in &[
            (1, 100),
            (255, 100),
            (256, 100),
            (257, 100),
            (8192, 1365), // 6144 columns in a 32 MiB workspace
            (8192, 10),
            (100_000, 0), // partials do not fit the workspace: still one chunk
            (10_000_000, 1_000_000),
        ] {
            let (chunks, per) = bias_chunks(rows, max);
            assert!(chunks >= 1 && per >= 1, "{rows} {max}");
            assert!(
                chunks <= max.clamp(1, 65535),
                "{rows} rows, at most {max}: {chunks}"
            );
            assert!(chunks * per >= rows, "{rows}: {chunks} × {per} misses rows");
            assert!((chunks - 1) * per < rows, "{rows}: chunk {} is empty", chunks - 1);
        }
        assert_eq!(
            bias_chunks(8192, 1365),
            (32, 256),
            "C = 6144: 32 chunks × 192 column tiles"
        );
        assert_eq!(bias_chunks(8192, 10), (10, 820));
    }
}
