//! # weft-kernels
//!
//! weft's compute engine: buffers on a device and every operation a transformer or a diffusion
//! transformer needs, each as an explicit `<op>_forward` / `<op>_backward` pair (no autograd).
//!
//! - [`Backend`]: a device with buffers ([`Backend::Buffer`]), splittable views
//!   ([`Backend::Ref`], [`Backend::Mut`]), host copies, an in-order queue, and side streams
//!   ordered by events ([`Backend::record`], [`Backend::wait`]).
//! - [`ops`]: the op families ([`MatmulOps`], [`NormOps`], [`AttentionOps`], …) and their
//!   dimension structs; [`Ops`] is all of them.
//! - [`CpuBackend`]: the reference implementation, generic over `f32`/`f64` (bf16 activations
//!   computed in f32), multi-threaded, deterministic. It runs all of CI.
//! - [`cuda::CudaBackend`] (feature `cuda`): cuBLASLt matmuls and NVRTC-compiled kernels from
//!   `kernels/cuda/`. Without the feature, or without a driver, its constructor returns a clear
//!   [`Error`].
//! - [`gradcheck`]: the finite-difference checker every backward is tested with.
//!
//! ```
//! use weft_kernels::{Backend, CpuBackend, DType, MatmulDims, MatmulOps, HostVec};
//!
//! let cpu = CpuBackend::new();
//! let x = HostVec::from(vec![1.0f32, 2.0, 3.0, 4.0]); // (2, 2)
//! let w = HostVec::from(vec![1.0f32, 0.0, 0.0, 1.0]); // (out=2, in=2), identity
//! let mut y = cpu.alloc(DType::F32, 4)?;
//! let d = MatmulDims::linear(2, 2, 2);
//! cpu.matmul_forward(CpuBackend::view_mut(&mut y), x.view(), w.view(), None, d)?;
//! assert_eq!(y, HostVec::from(vec![1.0f32, 2.0, 3.0, 4.0]));
//! # Ok::<(), weft_kernels::Error>(())
//! ```

mod backend;
pub mod cpu;
pub mod cuda;
mod dtype;
mod error;
pub mod gradcheck;
pub mod ops;

pub use backend::{Backend, Slice};
pub use cpu::CpuBackend;
pub use dtype::{bf16_to_f32, f32_to_bf16_rne, f64_to_bf16_rne, DType, HostMut, HostRef, HostVec};
pub use error::{Error, Result};
pub use half::{bf16, f16};
pub use ops::*;
