//! The CUDA device: context, stream, memory, views, and the launch of NVRTC-compiled kernels.
//!
//! # Synchronisation
//!
//! cudarc's per-allocation event tracking is off (it would record an event for every view
//! made, before any kernel used it). This backend orders its work itself, by one rule: every
//! op, copy, allocation and free is enqueued on the backend's **one stream**, in call order, so
//! stream order is the only order needed. In particular a temporary or the cuBLASLt workspace
//! can be reused by the next op without waiting: the next op runs after this one. Two
//! consequences for callers:
//!
//! - Work on a side stream ([`Backend::new_stream`]) is ordered with the main stream only by
//!   [`Backend::record`] and [`Backend::wait`].
//! - A buffer's memory is freed in the main stream's order when it is dropped. A buffer that a
//!   side stream uses must stay alive until the main stream has waited on an event recorded on
//!   that side stream after the use.

use super::cache::{self, DiskCache};
use super::modules::{Module, Modules};
use super::staging::Staging;
use crate::backend::{Backend, Check, Slice};
use crate::{DType, Error, HostMut, HostRef, Result};
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

/// A kernel argument.
pub(crate) enum KArg {
    U64(u64),
    F32(f32),
    F64(f64),
}

impl KArg {
    /// An optional buffer: its address, or a null pointer (the op's `None`).
    pub(crate) fn opt(ptr: Option<CUdeviceptr>) -> KArg {
        KArg::U64(ptr.unwrap_or(0))
    }
}

/// The activation dtypes the CUDA kernels compute in (f32 math inside; no f64 kernels).
pub(crate) const CUDA_FLOATS: &[DType] = &[DType::F32, DType::BF16];

/// The symbol suffix of an f32 or bf16 kernel (`gelu_forward_bf16`).
pub(crate) fn suffix(dt: DType) -> &'static str {
    match dt {
        DType::BF16 => "bf16",
        _ => "f32",
    }
}

/// The dynamic shared memory a kernel may use without raising its limit.
const DEFAULT_SHARED: u32 = 48 << 10;

/// The most dynamic shared memory a block may have on sm_80 and sm_90 (227 KiB).
pub(crate) const MAX_SHARED: u32 = 227 << 10;

/// One CUDA device with one in-order stream. Every op is launched on that stream (see the
/// module documentation for the ordering rule).
pub struct CudaBackend {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) lt: super::matmul::LtHandle,
    workspace: DeviceBytes,
    /// Device memory reused by ops that need a temporary (grown on demand, never shrunk).
    scratch: Mutex<Option<DeviceBytes>>,
    modules: Modules,
    staging: Staging,
    /// Let f32 matmuls use TF32 tensor cores (off by default: f32 means f32).
    pub allow_tf32: bool,
    name: String,
}

/// Device bytes and their address, taken once.
pub(crate) struct DeviceBytes {
    mem: CudaSlice<u8>,
    ptr: CUdeviceptr,
}

impl DeviceBytes {
    fn alloc(
        stream: &Arc<CudaStream>,
        bytes: usize,
    ) -> std::result::Result<Self, cudarc::driver::DriverError> {
        let mem = stream.alloc_zeros::<u8>(bytes.max(1))?;
        // With event tracking off, the guard records nothing.
        let ptr = {
            let (ptr, _no_event) = mem.device_ptr(stream);
            ptr
        };
        Ok(DeviceBytes { mem, ptr })
    }

    pub(crate) fn ptr(&self) -> CUdeviceptr {
        self.ptr
    }

    pub(crate) fn len(&self) -> usize {
        self.mem.len()
    }
}

/// Device memory of `len` elements of one dtype.
pub struct CudaBuffer {
    mem: DeviceBytes,
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
    /// A view of `len` elements of `dtype` at `ptr`.
    ///
    /// # Safety
    /// `ptr` must address `len` elements of device memory that stay allocated, and are used by
    /// nothing else, while the view (and work enqueued through it) lives.
    pub(crate) unsafe fn from_raw(ptr: CUdeviceptr, dtype: DType, len: usize) -> Self {
        CudaMut {
            ptr,
            dtype,
            len,
            _borrow: PhantomData,
        }
    }

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

    /// The CUDA context (event tracking off: see the module documentation).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The directory compiled kernels are cached in (`None`: no cache, compiled on every
    /// first use).
    pub fn kernel_cache_dir(&self) -> Option<&std::path::Path> {
        self.modules.cache_dir()
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

impl CudaBackend {
    /// Open device `ordinal`, create a stream and a cuBLASLt handle. The kernel modules are
    /// compiled (or read from the disk cache, see [`CudaBackend::kernel_cache_dir`]) on their
    /// first use, not here.
    pub fn new(ordinal: usize) -> Result<Self> {
        Self::with_kernel_cache(ordinal, cache::default_dir())
    }

    /// [`CudaBackend::new`] with compiled kernels cached in `dir` rather than the default
    /// location (`None`: no disk cache).
    pub fn with_kernel_cache(ordinal: usize, dir: Option<std::path::PathBuf>) -> Result<Self> {
        super::libraries::probe()?;
        // A driver too old for a symbol cudarc resolves would panic inside cudarc; report it.
        std::panic::catch_unwind(|| {
            super::libraries::check_versions()?;
            Self::open(ordinal, dir)
        })
        .unwrap_or_else(|p| {
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

    fn open(ordinal: usize, dir: Option<std::path::PathBuf>) -> Result<Self> {
        let unavailable =
            |e: cudarc::driver::DriverError| Error::CudaUnavailable(format!("device {ordinal}: {e}"));
        let ctx = CudaContext::new(ordinal).map_err(unavailable)?;
        // SAFETY: set before this backend creates any stream or allocation, so no slice it
        // owns has events; the ordering rule of the module documentation (one stream; side
        // streams ordered by `record`/`wait`, buffers outliving their side-stream uses) takes
        // the place of the tracking. The flag is per context: cudarc slices other code makes in
        // this (primary) context afterwards are untracked as well.
        unsafe { ctx.disable_event_tracking() };
        keep_freed_memory(&ctx).map_err(unavailable)?;
        let stream = ctx.new_stream().map_err(unavailable)?;
        let dev_name = ctx.name().map_err(unavailable)?;
        let (major, minor) = ctx.compute_capability().map_err(unavailable)?;
        let lt =
            super::matmul::LtHandle::new().map_err(|e| Error::CudaUnavailable(format!("cuBLASLt: {e}")))?;
        // 32 MiB on Hopper and newer, 4 MiB before (NVIDIA's recommendation).
        let ws = if major >= 9 { 32 << 20 } else { 4 << 20 };
        let workspace = DeviceBytes::alloc(&stream, ws).map_err(unavailable)?;
        let modules = Modules::new((major, minor), dir.map(DiskCache::new))?;
        let target = modules.target().arch.clone();
        Ok(CudaBackend {
            staging: Staging::new(ctx.clone()),
            ctx,
            stream,
            lt,
            workspace,
            scratch: Mutex::new(None),
            modules,
            allow_tf32: false,
            name: format!("cuda:{ordinal} {dev_name} (sm_{major}{minor}, kernels for {target})"),
        })
    }

    /// Make this backend's context current on the calling thread (before raw driver calls).
    pub(crate) fn context_bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(cuda_err("bind context"))
    }

    /// The workspace pointer and size for cuBLASLt (and for the partial sums of reductions:
    /// every user is on the one stream, so uses never overlap).
    pub(crate) fn workspace(&self) -> (CUdeviceptr, usize) {
        (self.workspace.ptr(), self.workspace.len())
    }

    /// Run `f` with at least `bytes` of scratch device memory. The memory is reused by the next
    /// caller without waiting: what `f` enqueues on the stream runs before anything a later
    /// caller enqueues. Growing frees the old block in stream order.
    pub(crate) fn with_scratch<T>(
        &self,
        bytes: usize,
        f: impl FnOnce(CUdeviceptr) -> Result<T>,
    ) -> Result<T> {
        let mut s = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        if s.as_ref().is_none_or(|b| b.len() < bytes) {
            *s = None;
            *s = Some(DeviceBytes::alloc(&self.stream, bytes).map_err(cuda_err("scratch alloc"))?);
        }
        f(s.as_ref().map_or(0, DeviceBytes::ptr))
    }

    /// Launch kernel `name` of module `m` with `cfg`, passing `args` in order (device pointers
    /// and counts as `u64`, scalars as `f32`). The module is loaded on first use.
    ///
    /// # Safety
    /// `cfg` and `args` must match the kernel's signature and bounds: every pointer covers what
    /// the kernel reads or writes for these arguments.
    pub(crate) unsafe fn launch(
        &self,
        op: &'static str,
        m: Module,
        name: &str,
        cfg: LaunchConfig,
        args: &[KArg],
    ) -> Result<()> {
        let f = self.modules.function(&self.ctx, m, name)?;
        if cfg.shared_mem_bytes > DEFAULT_SHARED {
            use cudarc::driver::sys::CUfunction_attribute as A;
            let bytes = cfg.shared_mem_bytes.min(MAX_SHARED) as i32;
            f.set_attribute(A::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes)
                .map_err(|e| Error::Cuda {
                    op,
                    msg: format!("{name}: {} bytes of shared memory: {e}", cfg.shared_mem_bytes),
                })?;
        }
        let mut b = self.stream.launch_builder(f);
        for a in args {
            match a {
                KArg::U64(v) => b.arg(v),
                KArg::F32(v) => b.arg(v),
                KArg::F64(v) => b.arg(v),
            };
        }
        // SAFETY: the caller's contract.
        unsafe { b.launch(cfg) }.map_err(|e| Error::Cuda {
            op,
            msg: format!("{name}: {e}"),
        })?;
        Ok(())
    }

    /// Launch a one-dimensional kernel of module `m` with one thread per element of `n`
    /// (grid (ceil(n / 256)), block (256), no shared memory); nothing when `n` is 0.
    ///
    /// # Safety
    /// As [`CudaBackend::launch`]: the kernel's `// Launch:` line is this configuration, it
    /// guards its index against `n`, and `args` match its signature with pointers to views
    /// whose lengths were checked against the op's dimensions.
    pub(crate) unsafe fn launch_1d(
        &self,
        op: &'static str,
        m: Module,
        name: &str,
        n: usize,
        args: &[KArg],
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: (grid_1d(op, n)?, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the caller's contract.
        unsafe { self.launch(op, m, name, cfg, args) }
    }

    /// Enqueue a copy of `src` to device address `dst` through the pinned staging ring
    /// (returns without waiting; `src` may be reused at once).
    pub(crate) fn upload_bytes(&self, src: &[u8], dst: CUdeviceptr) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        self.staging.upload(&self.stream, src, dst)
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // Queued work may still use the modules, the workspace, the scratch block or the
        // staging ring, all freed after this: let it finish first.
        let _ = self.stream.synchronize();
    }
}

/// Let the device's stream-ordered memory pool keep what is freed (its release threshold is 0
/// by default: every synchronization hands freed memory back to the driver, and the next
/// step's allocations pay for it again). Memory stays with the process, as in PyTorch's
/// caching allocator.
fn keep_freed_memory(ctx: &CudaContext) -> std::result::Result<(), cudarc::driver::DriverError> {
    use cudarc::driver::sys;
    ctx.bind_to_thread()?;
    let mut pool = std::mem::MaybeUninit::uninit();
    let mut keep = u64::MAX;
    // SAFETY: a live device of this context; the attribute takes a u64 (cuuint64_t).
    unsafe {
        sys::cuDeviceGetDefaultMemPool(pool.as_mut_ptr(), ctx.cu_device()).result()?;
        sys::cuMemPoolSetAttribute(
            pool.assume_init(),
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut keep as *mut u64).cast(),
        )
        .result()
    }
}

/// Blocks of 256 threads covering `n`, or an error when one launch cannot.
pub(crate) fn grid_1d(op: &'static str, n: usize) -> Result<u32> {
    grid_dim(op, "n", n.div_ceil(256))
}

/// `blocks` as a grid dimension, or an error naming the dimension `what` when one launch
/// cannot hold them (x: 2³¹ − 1 blocks; y and z: 65 535, which callers check with
/// [`grid_yz`]).
pub(crate) fn grid_dim(op: &'static str, what: &'static str, blocks: usize) -> Result<u32> {
    u32::try_from(blocks)
        .ok()
        .filter(|&b| b < 1 << 31)
        .ok_or_else(|| Error::Invalid {
            op,
            what,
            why: format!("{blocks} blocks exceed one launch"),
        })
}

/// A grid's y or z dimension (at most 65 535 blocks).
pub(crate) fn grid_yz(op: &'static str, what: &'static str, blocks: usize) -> Result<u32> {
    match u32::try_from(blocks) {
        Ok(b) if b <= 65535 => Ok(b),
        _ => Err(Error::Invalid {
            op,
            what,
            why: format!("{blocks} exceeds the 65535 blocks of a grid's y or z dimension"),
        }),
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
        let mem = DeviceBytes::alloc(&self.stream, len * dtype.size()).map_err(cuda_err("alloc"))?;
        Ok(CudaBuffer { mem, dtype, len })
    }

    fn view(buf: &CudaBuffer) -> CudaRef<'_> {
        CudaRef {
            ptr: buf.mem.ptr(),
            dtype: buf.dtype,
            len: buf.len,
            _borrow: PhantomData,
        }
    }

    fn view_mut(buf: &mut CudaBuffer) -> CudaMut<'_> {
        CudaMut {
            ptr: buf.mem.ptr(),
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
    fn address(v: &CudaRef<'_>) -> usize {
        v.ptr as usize
    }
    unsafe fn view_at<'a>(address: usize, dtype: DType, len: usize) -> CudaRef<'a> {
        CudaRef {
            ptr: address as CUdeviceptr,
            dtype,
            len,
            _borrow: PhantomData,
        }
    }
    fn freeze<'b>(v: &'b CudaMut<'_>) -> CudaRef<'b> {
        CudaRef {
            ptr: v.ptr,
            dtype: v.dtype,
            len: v.len,
            _borrow: PhantomData,
        }
    }

    /// Enqueues the copy (through the pinned staging ring) and returns without waiting: `src`
    /// may be reused at once, and later ops see the data by stream order.
    fn upload(&self, src: HostRef<'_>, dst: CudaMut<'_>) -> Result<()> {
        Check { op: "upload" }.arg("dst", &dst, src.dtype(), src.len(), || {
            "(the length of `src`)".into()
        })?;
        let bytes = src.as_bytes();
        if bytes.is_empty() {
            return Ok(());
        }
        self.staging.upload(&self.stream, bytes, dst.ptr)
    }

    /// Waits for the work enqueued before it (the data must have arrived before `dst` is
    /// read), through the pinned staging ring: on the copy's own events, not the device.
    fn download(&self, src: CudaRef<'_>, mut dst: HostMut<'_>) -> Result<()> {
        Check { op: "download" }.arg("dst", &dst, src.dtype(), src.len(), || {
            "(the length of `src`)".into()
        })?;
        let bytes = dst.as_bytes_mut();
        if bytes.is_empty() {
            return Ok(());
        }
        self.staging.download(&self.stream, src.ptr, bytes)
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

    fn device_memory(&self) -> Result<Option<(usize, usize)>> {
        self.context_bind()?;
        let (free, total) = cudarc::driver::result::mem_get_info().map_err(cuda_err("device_memory"))?;
        Ok(Some((total - free, total)))
    }
}
