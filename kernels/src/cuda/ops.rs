//! CUDA implementations of the matmul and elementwise op families.
//!
//! Matmuls run on cuBLASLt through cudarc's thin `result` layer, so the compute type is chosen
//! here: f32 inputs use `CUBLAS_COMPUTE_32F` (true f32; TF32 only with
//! [`CudaBackend::allow_tf32`]), 16-bit inputs accumulate in f32. cuBLASLt is column-major; a
//! row-major `D (m, n) = op(L)·op(R)` is issued as the column-major `Dᵀ = op(R)ᵀ·op(L)ᵀ`.

use super::device::{cuda_err, CudaBackend, CudaMut, CudaRef, KArg};
use crate::backend::{Backend, Check, Slice};
use crate::ops::{check_cast, check_pointwise, ElementwiseOps, Gemm, MatmulDims, MatmulOps, Operand};
use crate::{DType, Error, Result};
use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::sys::CUdeviceptr;
use std::ffi::c_void;
use std::mem::size_of;

/// An owned cuBLASLt handle.
pub(crate) struct LtHandle(sys::cublasLtHandle_t);

// SAFETY: a cuBLASLt handle may be used from any thread (not concurrently; the backend
// serialises use through `&self` calls on one stream).
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
            // SAFETY: u64 buffer for MAX_WORKSPACE_BYTES.
            unsafe {
                let ws_bytes = ws_size as u64;
                lt::set_matmul_pref_attribute(
                    pref.0,
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    (&ws_bytes as *const u64).cast(),
                    size_of::<u64>(),
                )?;
            }
            // SAFETY: descriptors are live; pointers cover the layouts' extents (checked by the
            // callers against the op's dims); alpha/beta are f32 matching the f32 scale type.
            unsafe {
                let heur = lt::get_matmul_algo_heuristic(self.lt.0, desc.0, a.0, b.0, d.0, d.0, pref.0)?;
                let (alpha, beta) = (1f32, if g.accumulate { 1f32 } else { 0f32 });
                lt::matmul(
                    self.lt.0,
                    desc.0,
                    (&alpha as *const f32).cast::<c_void>(),
                    (&beta as *const f32).cast::<c_void>(),
                    rhs as *const c_void,
                    a.0,
                    lhs as *const c_void,
                    b.0,
                    dst as *const c_void,
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

    fn context_bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(cuda_err("bind context"))
    }

    /// `dst = cast(src)` for f32 → bf16 (the only narrowing the matmul path needs).
    fn cast_to(&self, src: CudaRef<'_>, to: DType) -> Result<crate::cuda::CudaBuffer> {
        let mut tmp = self.alloc(to, src.len())?;
        self.cast(CudaBackend::view_mut(&mut tmp), src, src.len())?;
        Ok(tmp)
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
            self.launch_1d(
                OP,
                &self.kernels.bias_add_f32,
                d.batch * d.m * d.n,
                &[
                    KArg::U64(out.ptr),
                    KArg::U64(bias.ptr),
                    KArg::U64(rows),
                    KArg::U64(n),
                ],
            )?;
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
        // cuBLASLt multiplies operands of one type: bring an f32 `dout` down to the inputs' type.
        let narrowed = if dt != odt {
            Some(self.cast_to(dout, dt)?)
        } else {
            None
        };
        let dout_ptr = narrowed.as_ref().map_or(dout.ptr, |t| CudaBackend::view(t).ptr);
        let pick = |o: Operand| match o {
            Operand::A => a.ptr,
            Operand::B => b.ptr,
            Operand::DOut => dout_ptr,
        };
        if let Some(da) = da {
            let g = d.da_gemm();
            self.gemm(&g, d.batch, dt, dt, da.ptr, pick(g.lhs), pick(g.rhs))?;
        }
        if let Some(db) = db {
            // `db` may be f32 for bf16 inputs: cuBLASLt takes A/B bf16 with C/D f32.
            let g = d.db_gemm();
            self.gemm(&g, d.batch, dt, db.dtype(), db.ptr, pick(g.lhs), pick(g.rhs))?;
        }
        if let Some(dbias) = dbias {
            Check { op: OP }.dtype_in("dbias", dbias.dtype(), &[DType::F32])?;
            let (rows, n) = ((d.batch * d.m) as u64, d.n as u64);
            self.launch_1d(
                OP,
                &self.kernels.bias_grad_f32,
                d.n,
                &[
                    KArg::U64(dbias.ptr),
                    KArg::U64(dout.ptr),
                    KArg::U64(rows),
                    KArg::U64(n),
                ],
            )?;
        }
        if narrowed.is_some() {
            // The temporary must outlive the queued GEMMs that read it.
            self.synchronize()?;
        }
        Ok(())
    }
}

const F32_ONLY: &[DType] = &[DType::F32];

impl ElementwiseOps for CudaBackend {
    fn add_forward(&self, out: CudaMut<'_>, a: CudaRef<'_>, b: CudaRef<'_>, n: usize) -> Result<()> {
        const OP: &str = "add_forward";
        check_pointwise(OP, F32_ONLY, &[("out", &out)], &[("a", &a), ("b", &b)], n)?;
        let n64 = n as u64;
        self.launch_1d(
            OP,
            &self.kernels.add_f32,
            n,
            &[
                KArg::U64(out.ptr),
                KArg::U64(a.ptr),
                KArg::U64(b.ptr),
                KArg::U64(n64),
            ],
        )
    }

    fn add_backward(&self, da: CudaMut<'_>, db: CudaMut<'_>, dout: CudaRef<'_>, n: usize) -> Result<()> {
        const OP: &str = "add_backward";
        check_pointwise(OP, F32_ONLY, &[("da", &da), ("db", &db)], &[("dout", &dout)], n)?;
        let n64 = n as u64;
        for acc in [da.ptr, db.ptr] {
            self.launch_1d(
                OP,
                &self.kernels.accumulate_f32,
                n,
                &[KArg::U64(acc), KArg::U64(dout.ptr), KArg::U64(n64)],
            )?;
        }
        Ok(())
    }

    fn scale_forward(&self, out: CudaMut<'_>, x: CudaRef<'_>, alpha: f64, n: usize) -> Result<()> {
        const OP: &str = "scale_forward";
        check_pointwise(OP, F32_ONLY, &[("out", &out)], &[("x", &x)], n)?;
        let n64 = n as u64;
        self.launch_1d(
            OP,
            &self.kernels.scale_f32,
            n,
            &[
                KArg::U64(out.ptr),
                KArg::U64(x.ptr),
                // The f32 kernel converts the scalar once.
                KArg::F32(alpha as f32),
                KArg::U64(n64),
            ],
        )
    }

    fn scale_backward(&self, dx: CudaMut<'_>, dout: CudaRef<'_>, alpha: f64, n: usize) -> Result<()> {
        self.scale_forward(dx, dout, alpha, n)
    }

    fn accumulate(&self, acc: CudaMut<'_>, x: CudaRef<'_>, n: usize) -> Result<()> {
        const OP: &str = "accumulate";
        check_pointwise(OP, F32_ONLY, &[("acc", &acc)], &[("x", &x)], n)?;
        let args = [KArg::U64(acc.ptr), KArg::U64(x.ptr), KArg::U64(n as u64)];
        self.launch_1d(OP, &self.kernels.accumulate_f32, n, &args)
    }

    fn fill(&self, out: CudaMut<'_>, value: f64, n: usize) -> Result<()> {
        const OP: &str = "fill";
        let none: &[(&str, &CudaRef<'_>)] = &[];
        check_pointwise(OP, F32_ONLY, &[("out", &out)], none, n)?;
        let args = [KArg::U64(out.ptr), KArg::F32(value as f32), KArg::U64(n as u64)];
        self.launch_1d(OP, &self.kernels.fill_f32, n, &args)
    }

    fn cast(&self, out: CudaMut<'_>, x: CudaRef<'_>, n: usize) -> Result<()> {
        const OP: &str = "cast";
        let (din, dout) = check_cast(OP, &[DType::F32, DType::BF16], &out, &x, n)?;
        let n64 = n as u64;
        let kernel = match (din, dout) {
            (DType::F32, DType::BF16) => &self.kernels.cast_f32_bf16,
            (DType::BF16, DType::F32) => &self.kernels.cast_bf16_f32,
            _ => {
                if n > 0 {
                    self.context_bind()?;
                    // SAFETY: both views cover n·size bytes (checked above); same stream.
                    unsafe {
                        cudarc::driver::result::memcpy_dtod_async(
                            out.ptr,
                            x.ptr,
                            n * din.size(),
                            self.stream.cu_stream(),
                        )
                    }
                    .map_err(cuda_err(OP))?;
                }
                return Ok(());
            }
        };
        self.launch_1d(
            OP,
            kernel,
            n,
            &[KArg::U64(out.ptr), KArg::U64(x.ptr), KArg::U64(n64)],
        )
    }
}
