//! The CUDA device: context, stream, memory, views and the NVRTC-compiled kernels.

use crate::backend::{Backend, Check, Slice};
use crate::{DType, Error, HostMut, HostRef, Result};
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use std::marker::PhantomData;
use std::sync::Arc;

/// NVRTC source of the elementwise kernels (`kernels/cuda/elementwise.cu`).
const ELEMENTWISE_CU: &str = include_str!("../../cuda/elementwise.cu");

/// Kernels compiled from [`ELEMENTWISE_CU`], looked up once.
pub(crate) struct Kernels {
    pub add_f32: CudaFunction,
    pub accumulate_f32: CudaFunction,
    pub scale_f32: CudaFunction,
    pub fill_f32: CudaFunction,
    pub cast_f32_bf16: CudaFunction,
    pub cast_bf16_f32: CudaFunction,
    pub bias_add_f32: CudaFunction,
    pub bias_grad_f32: CudaFunction,
}

/// A kernel argument.
pub(crate) enum KArg {
    U64(u64),
    F32(f32),
}

/// One CUDA device with one in-order stream. Every op is launched on that stream.
pub struct CudaBackend {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) lt: super::ops::LtHandle,
    pub(crate) workspace: CudaSlice<u8>,
    pub(crate) kernels: Kernels,
    /// Let f32 matmuls use TF32 tensor cores (off by default: f32 means f32).
    pub allow_tf32: bool,
    name: String,
}

/// Device memory of `len` elements of one dtype.
pub struct CudaBuffer {
    mem: CudaSlice<u8>,
    dtype: DType,
    len: usize,
}

/// A shared view of device memory.
#[derive(Clone, Copy, Debug)]
pub struct CudaRef<'a> {
    pub(crate) ptr: CUdeviceptr,
    dtype: DType,
    len: usize,
    _borrow: PhantomData<&'a CudaBuffer>,
}

impl CudaRef<'_> {
    /// The device address of the first element (for libraries such as NCCL).
    pub fn device_ptr(&self) -> CUdeviceptr {
        self.ptr
    }
}

impl CudaMut<'_> {
    /// The device address of the first element (for libraries such as NCCL).
    pub fn device_ptr(&self) -> CUdeviceptr {
        self.ptr
    }
}

impl CudaBackend {
    /// The stream every op of this backend is launched on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}

/// An exclusive view of device memory.
#[derive(Debug)]
pub struct CudaMut<'a> {
    pub(crate) ptr: CUdeviceptr,
    dtype: DType,
    len: usize,
    _borrow: PhantomData<&'a mut CudaBuffer>,
}

/// Both view kinds are a device pointer, a dtype and a length; splitting is pointer arithmetic.
macro_rules! device_view {
    ($view:ident) => {
        impl Slice for $view<'_> {
            fn dtype(&self) -> DType {
                self.dtype
            }
            fn len(&self) -> usize {
                self.len
            }
            fn split_at(self, mid: usize) -> (Self, Self) {
                assert!(mid <= self.len, "split at {mid} of a view of {}", self.len);
                let (ptr, dtype, len) = (self.ptr, self.dtype, self.len);
                let off = (mid * dtype.size()) as CUdeviceptr;
                (
                    $view {
                        ptr,
                        dtype,
                        len: mid,
                        _borrow: PhantomData,
                    },
                    $view {
                        ptr: ptr + off,
                        dtype,
                        len: len - mid,
                        _borrow: PhantomData,
                    },
                )
            }
        }
    };
}
device_view!(CudaRef);
device_view!(CudaMut);

/// `map_err` adapter: any CUDA library error becomes [`Error::Cuda`] naming the op.
pub(crate) fn cuda_err<E: std::fmt::Display>(op: &'static str) -> impl Fn(E) -> Error {
    move |e| Error::Cuda {
        op,
        msg: e.to_string(),
    }
}

/// Refuse early, with a message a user can act on, when a CUDA library is missing
/// (cudarc would panic on first use).
fn probe_libraries() -> Result<()> {
    // SAFETY: these only try to dlopen the libraries.
    let (driver, lt, nvrtc) = unsafe {
        (
            cudarc::driver::sys::is_culib_present(),
            cudarc::cublaslt::sys::is_culib_present(),
            cudarc::nvrtc::sys::is_culib_present(),
        )
    };
    let missing = |what: &str, lib: &str, fix: &str| {
        Error::CudaUnavailable(format!("{what} ({lib}) was not found; {fix}"))
    };
    if !driver {
        return Err(missing(
            "the NVIDIA driver",
            "libcuda.so",
            "this machine has no NVIDIA GPU driver installed",
        ));
    }
    if !lt {
        return Err(missing(
            "cuBLASLt",
            "libcublasLt.so",
            "install the CUDA toolkit libraries or add them to LD_LIBRARY_PATH",
        ));
    }
    if !nvrtc {
        return Err(missing(
            "NVRTC",
            "libnvrtc.so",
            "install the CUDA toolkit libraries or add them to LD_LIBRARY_PATH",
        ));
    }
    Ok(())
}

impl CudaBackend {
    /// Open device `ordinal`, create a stream and a cuBLASLt handle, and compile the kernels.
    pub fn new(ordinal: usize) -> Result<Self> {
        probe_libraries()?;
        // A driver too old for a symbol cudarc resolves would panic inside cudarc; report it.
        std::panic::catch_unwind(|| Self::open(ordinal)).unwrap_or_else(|p| {
            let why = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            Err(Error::CudaUnavailable(format!(
                "CUDA initialisation failed: {}",
                why.unwrap_or_default()
            )))
        })
    }

    fn open(ordinal: usize) -> Result<Self> {
        let unavailable =
            |e: cudarc::driver::DriverError| Error::CudaUnavailable(format!("device {ordinal}: {e}"));
        let ctx = CudaContext::new(ordinal).map_err(unavailable)?;
        let stream = ctx.new_stream().map_err(unavailable)?;
        let dev_name = ctx.name().map_err(unavailable)?;
        let (major, minor) = ctx.compute_capability().map_err(unavailable)?;
        let lt = super::ops::LtHandle::new().map_err(|e| Error::CudaUnavailable(format!("cuBLASLt: {e}")))?;
        // 32 MiB on Hopper and newer, 4 MiB before (NVIDIA's recommendation).
        let ws = if major >= 9 { 32 << 20 } else { 4 << 20 };
        let workspace = stream.alloc_zeros::<u8>(ws).map_err(unavailable)?;
        let ptx = cudarc::nvrtc::compile_ptx(ELEMENTWISE_CU).map_err(|e| Error::Cuda {
            op: "nvrtc compile of elementwise.cu",
            msg: e.to_string(),
        })?;
        let module = ctx.load_module(ptx).map_err(cuda_err("load_module"))?;
        let f = |name: &str| {
            module.load_function(name).map_err(|e| Error::Cuda {
                op: "load_function",
                msg: format!("{name}: {e}"),
            })
        };
        let kernels = Kernels {
            add_f32: f("add_f32")?,
            accumulate_f32: f("accumulate_f32")?,
            scale_f32: f("scale_f32")?,
            fill_f32: f("fill_f32")?,
            cast_f32_bf16: f("cast_f32_bf16")?,
            cast_bf16_f32: f("cast_bf16_f32")?,
            bias_add_f32: f("bias_add_f32")?,
            bias_grad_f32: f("bias_grad_f32")?,
        };
        Ok(CudaBackend {
            ctx,
            stream,
            lt,
            workspace,
            kernels,
            allow_tf32: false,
            name: format!("cuda:{ordinal} {dev_name} (sm_{major}{minor})"),
        })
    }

    /// The workspace pointer and size for cuBLASLt.
    pub(crate) fn workspace(&self) -> (CUdeviceptr, usize) {
        let (ptr, _sync) = self.workspace.device_ptr(&self.stream);
        (ptr, self.workspace.len())
    }

    /// Launch a one-dimensional kernel with one thread per element of `n`, passing `args` in
    /// order (device pointers and counts as `u64`, scalars as `f32`).
    pub(crate) fn launch_1d(
        &self,
        op: &'static str,
        f: &CudaFunction,
        n: usize,
        args: &[KArg],
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let blocks = u32::try_from(n.div_ceil(256)).map_err(|_| Error::Invalid {
            op,
            what: "n",
            why: format!("{n} elements exceed one launch"),
        })?;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(f);
        for a in args {
            match a {
                KArg::U64(v) => b.arg(v),
                KArg::F32(v) => b.arg(v),
            };
        }
        // SAFETY: every kernel in elementwise.cu guards its index against `n`, and callers pass
        // pointers to views whose lengths were checked against `n`.
        unsafe { b.launch(cfg) }.map_err(|e| Error::Cuda {
            op,
            msg: e.to_string(),
        })?;
        Ok(())
    }
}

impl Backend for CudaBackend {
    type Buffer = CudaBuffer;
    type Ref<'a> = CudaRef<'a>;
    type Mut<'a> = CudaMut<'a>;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn alloc(&self, dtype: DType, len: usize) -> Result<CudaBuffer> {
        // Never a zero-byte allocation; the view still reports `len`.
        let bytes = (len * dtype.size()).max(1);
        let mem = self.stream.alloc_zeros::<u8>(bytes).map_err(cuda_err("alloc"))?;
        Ok(CudaBuffer { mem, dtype, len })
    }

    fn view(buf: &CudaBuffer) -> CudaRef<'_> {
        let (ptr, _sync) = buf.mem.device_ptr(buf.mem.stream());
        CudaRef {
            ptr,
            dtype: buf.dtype,
            len: buf.len,
            _borrow: PhantomData,
        }
    }

    fn view_mut(buf: &mut CudaBuffer) -> CudaMut<'_> {
        let (ptr, _sync) = buf.mem.device_ptr(buf.mem.stream());
        CudaMut {
            ptr,
            dtype: buf.dtype,
            len: buf.len,
            _borrow: PhantomData,
        }
    }

    fn rb<'b>(v: &'b mut CudaMut<'_>) -> CudaMut<'b> {
        CudaMut {
            ptr: v.ptr,
            dtype: v.dtype,
            len: v.len,
            _borrow: PhantomData,
        }
    }

    fn share<'b>(v: &'b CudaRef<'_>) -> CudaRef<'b> {
        *v
    }
    fn freeze<'b>(v: &'b CudaMut<'_>) -> CudaRef<'b> {
        CudaRef {
            ptr: v.ptr,
            dtype: v.dtype,
            len: v.len,
            _borrow: PhantomData,
        }
    }

    fn upload(&self, src: HostRef<'_>, dst: CudaMut<'_>) -> Result<()> {
        Check { op: "upload" }.arg("dst", &dst, src.dtype(), src.len(), || {
            "(the length of `src`)".into()
        })?;
        let bytes = src.as_bytes();
        if bytes.is_empty() {
            return Ok(());
        }
        self.ctx.bind_to_thread().map_err(cuda_err("upload"))?;
        // SAFETY: `dst` covers exactly `bytes.len()` bytes of live device memory; the host
        // slice outlives the copy because we wait for the stream before returning.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst.ptr, bytes, self.stream.cu_stream()) }
            .map_err(cuda_err("upload"))?;
        self.synchronize()
    }

    fn download(&self, src: CudaRef<'_>, mut dst: HostMut<'_>) -> Result<()> {
        Check { op: "download" }.arg("dst", &dst, src.dtype(), src.len(), || {
            "(the length of `src`)".into()
        })?;
        let bytes = dst.as_bytes_mut();
        if bytes.is_empty() {
            return Ok(());
        }
        self.ctx.bind_to_thread().map_err(cuda_err("download"))?;
        // SAFETY: as in `upload`; the stream is drained before `bytes` is read.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(bytes, src.ptr, self.stream.cu_stream()) }
            .map_err(cuda_err("download"))?;
        self.synchronize()
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(cuda_err("synchronize"))
    }

    type Stream = Arc<CudaStream>;
    type Event = CudaEvent;

    /// A new non-blocking stream, starting after the work queued so far on the main stream.
    fn new_stream(&self) -> Result<Arc<CudaStream>> {
        self.stream.fork().map_err(cuda_err("new_stream"))
    }

    fn record(&self, on: Option<&Arc<CudaStream>>) -> Result<CudaEvent> {
        on.unwrap_or(&self.stream)
            .record_event(None)
            .map_err(cuda_err("record"))
    }

    fn wait(&self, on: Option<&Arc<CudaStream>>, event: &CudaEvent) -> Result<()> {
        on.unwrap_or(&self.stream).wait(event).map_err(cuda_err("wait"))
    }

    fn sync_event(&self, event: &CudaEvent) -> Result<()> {
        event.synchronize().map_err(cuda_err("sync_event"))
    }
}
