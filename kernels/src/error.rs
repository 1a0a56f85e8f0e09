//! The error type of every fallible call in this crate.

use crate::DType;

/// What went wrong, with the op and argument named so the caller can fix the call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A buffer has the wrong number of elements for the dimensions given to the op.
    #[error("{op}: argument `{arg}` has the wrong size: expected {expected}, got {got}")]
    Shape {
        op: &'static str,
        arg: &'static str,
        expected: String,
        got: String,
    },
    /// A buffer has a dtype the op does not accept (or that differs from its companions).
    #[error("{op}: argument `{arg}` has dtype {got}, expected {expected}")]
    DType {
        op: &'static str,
        arg: &'static str,
        expected: String,
        got: DType,
    },
    /// The dimensions themselves are impossible (odd head dim for RoPE, zero heads, ...).
    #[error("{op}: invalid `{what}`: {why}")]
    Invalid {
        op: &'static str,
        what: &'static str,
        why: String,
    },
    /// An index (token id, target) lies outside its table.
    #[error("{op}: `{arg}` holds {index} at position {pos}, outside 0..{bound}")]
    Index {
        op: &'static str,
        arg: &'static str,
        index: i64,
        pos: usize,
        bound: usize,
    },
    /// A buffer could not be allocated (`bytes`: what it needed).
    #[error("out of memory: cannot allocate {len} × {dtype} ({bytes} bytes)")]
    Alloc { dtype: DType, len: usize, bytes: u128 },
    /// weft was compiled without the `cuda` feature.
    #[error("this weft was built without CUDA support; rebuild with `--features cuda`")]
    CudaNotCompiled,
    /// CUDA support is compiled in, but the machine cannot run it (no driver, no device, ...).
    #[error("CUDA is not available on this machine: {0}")]
    CudaUnavailable(String),
    /// A CUDA driver, cuBLASLt or NVRTC call failed.
    #[error("CUDA error in {op}: {msg}")]
    Cuda { op: &'static str, msg: String },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
