//! The CUDA backend (feature `cuda-13`, or `cuda-12`; `cuda` is `cuda-13`).
//!
//! Built on cudarc with dynamic loading: the binary links no CUDA library and looks for the
//! driver, cuBLASLt and NVRTC when [`CudaBackend::new`] is called. The CUDA major version is
//! chosen at build time, because the libraries' ABI is per major version: `cuda-13` binds
//! `libcublasLt.so.13` and `libnvrtc.so.13`, `cuda-12` the `.so.12` ones (the driver is
//! `libcuda.so.1` for both). Without a CUDA feature, or on a machine without the libraries,
//! `new` returns [`crate::Error::CudaNotCompiled`] or [`crate::Error::CudaUnavailable`] —
//! never a panic — so callers need no `cfg`.
//!
//! Kernels: one NVRTC module per `kernels/cuda/*.cu` family (the table in `modules.rs`), compiled
//! into a cubin for the device's architecture on the module's first use and cached on disk
//! (`cache.rs`: `$WEFT_KERNEL_CACHE`, else `$XDG_CACHE_HOME/weft/kernels`, else `~/.cache/weft/kernels`).
//!
//! [`sort`], the launch plan of the device key sort behind `embedding_backward`, is plain data
//! and present in every build, so the emulated tests run the kernels with the backend's plan.

#[cfg(all(feature = "cuda-12", feature = "cuda-13"))]
compile_error!(
    "weft-kernels: features `cuda-12` and `cuda-13` are exclusive (one CUDA major version per \
     build; `cuda` means `cuda-13`). Build with `--features cuda-12` alone for CUDA 12.x \
     libraries, or `--features cuda` for CUDA 13.x, and not with `--all-features`."
);

#[cfg(any(feature = "cuda-12", feature = "cuda-13"))]
mod activation;
#[cfg(any(feature = "cuda-12", feature = "cuda-13"))]
mod attention;
#[cfg(any(feature = "cuda-12", feature = "cuda-13"))]
mod cache;
#[cfg(any(feature = "cuda-12", feature = "cuda-13"))]
mod device;
#[cfg(any(feature = "cuda-12", feature = "cuda-13"))]
mod elementwise;
#[cfg(any(feature = "cuda-12", feature = "cuda-13"))]
mod embed;
#[cfg(any(feature = "cuda-12", feature = "cuda-13"))]
mod libraries;
#[cfg(any(feature = "cuda-12", feature = "cuda-13"))]
mod loss;
#[cfg(any(feature = "cuda-12", feature = "cuda-13"))]
mod matmul;
#[cfg(any(feature = "cuda-12", feature = "cuda-13"))]
mod modulation;
#[cfg(any(feature = "cuda-12", feature = "cuda-13"))]
mod modules;
#[cfg(any(feature = "cuda-12", feature = "cuda-13"))]
mod norm;
#[cfg(any(feature = "cuda-12", feature = "cuda-13"))]
mod nvrtc;
#[cfg(any(feature = "cuda-12", feature = "cuda-13"))]
mod optim;
#[cfg(any(feature = "cuda-12", feature = "cuda-13"))]
mod rope;
#[cfg(any(feature = "cuda-12", feature = "cuda-13"))]
mod shape;
pub mod sort;
#[cfg(any(feature = "cuda-12", feature = "cuda-13"))]
mod staging;

#[cfg(any(feature = "cuda-12", feature = "cuda-13"))]
pub use device::{CudaBackend, CudaBuffer, CudaMut, CudaRef};

#[cfg(not(any(feature = "cuda-12", feature = "cuda-13")))]
mod stand_in {
    use crate::{Error, Result};

    /// Stand-in for the CUDA backend in builds without the `cuda` feature. It cannot be
    /// constructed (its field is uninhabited), so code written against it compiles unchanged
    /// and its methods can never run.
    #[derive(Debug)]
    pub struct CudaBackend {
        never: std::convert::Infallible,
    }

    impl CudaBackend {
        /// Always [`Error::CudaNotCompiled`] in this build.
        pub fn new(_ordinal: usize) -> Result<Self> {
            Err(Error::CudaNotCompiled)
        }

        /// Always [`Error::CudaNotCompiled`] in this build.
        pub fn with_kernel_cache(_ordinal: usize, _dir: Option<std::path::PathBuf>) -> Result<Self> {
            Err(Error::CudaNotCompiled)
        }

        /// The device description (unreachable: no value of this type exists).
        pub fn name(&self) -> String {
            match self.never {}
        }
    }
}

#[cfg(not(any(feature = "cuda-12", feature = "cuda-13")))]
pub use stand_in::CudaBackend;

/// Whether CUDA support was compiled into this build.
pub const COMPILED: bool = cfg!(any(feature = "cuda-12", feature = "cuda-13"));

/// The CUDA major version this build's bindings are for (`None` without CUDA support).
pub const CUDA_MAJOR: Option<u32> = if cfg!(feature = "cuda-13") {
    Some(13)
} else if cfg!(feature = "cuda-12") {
    Some(12)
} else {
    None
};
