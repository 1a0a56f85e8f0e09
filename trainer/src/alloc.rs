//! Allocations that fail with an error naming the buffer and its size, instead of aborting
//! the process.

use crate::{Error, Result};
use weft_kernels::{Backend, DType};

/// `be.alloc(dt, n)`, failing with an error that names `what` and its size.
pub fn alloc<B: Backend>(be: &B, what: &str, dt: DType, n: usize) -> Result<B::Buffer> {
    be.alloc(dt, n).map_err(|e| Error::Alloc {
        what: what.into(),
        bytes: n as u128 * dt.size() as u128,
        why: e.to_string(),
    })
}

/// A host vector of `n` default values, failing with an error that names `what` and its size
/// instead of aborting.
pub fn host_zeros<T: Clone + Default>(what: &str, n: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|e| Error::Alloc {
        what: what.into(),
        bytes: n as u128 * std::mem::size_of::<T>() as u128,
        why: e.to_string(),
    })?;
    v.resize(n, T::default());
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_kernels::CpuBackend;

    #[test]
    fn impossible_allocations_are_errors_naming_the_buffer() {
        let e = host_zeros::<f32>("the test buffer", usize::MAX / 2).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("the test buffer") && msg.contains("bytes"), "{msg}");
        let be = CpuBackend::new();
        // Fits in the address space's arithmetic but not in any machine (1 EiB).
        let e = alloc(&be, "gradients (shard)", DType::F32, 1 << 58).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("gradients (shard)") && msg.contains("1152921504606846976 bytes"),
            "{msg}"
        );
    }
}
