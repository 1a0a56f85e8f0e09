//! The CUDA backend (feature `cuda`).
//!
//! Built on cudarc with dynamic loading: the binary links no CUDA library and looks for the
//! driver, cuBLASLt and NVRTC when [`CudaBackend::new`] is called. Without the feature, or on a
//! machine without them, `new` returns [`crate::Error::CudaNotCompiled`] or
//! [`crate::Error::CudaUnavailable`] — never a panic — so callers need no `cfg`.

#[cfg(feature = "cuda")]
mod device;
#[cfg(feature = "cuda")]
mod ops;

#[cfg(feature = "cuda")]
pub use device::{CudaBackend, CudaBuffer, CudaMut, CudaRef};

#[cfg(not(feature = "cuda"))]
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

        /// The device description (unreachable: no value of this type exists).
        pub fn name(&self) -> String {
            match self.never {}
        }
    }
}

#[cfg(not(feature = "cuda"))]
pub use stand_in::CudaBackend;

/// Whether CUDA support was compiled into this build.
pub const COMPILED: bool = cfg!(feature = "cuda");
