//! Buffers of FSDP's collectives, kept for reuse by dtype and length: every unit of a block
//! stack has the same size, so after the first micro-batch a gather, a full gradient or a
//! reduce-scatter takes a buffer a finished one gave back instead of allocating (and, on a
//! GPU, instead of a trip through the allocator per unit and per micro-batch).

use crate::Result;
use std::collections::HashMap;
use weft_kernels::{Backend, DType, Slice};

/// Free buffers by `(dtype, length)`.
pub struct Pool<B: Backend> {
    free: HashMap<(DType, usize), Vec<B::Buffer>>,
    /// Buffers allocated so far (not taken from the pool).
    pub allocated: usize,
}

impl<B: Backend> Default for Pool<B> {
    fn default() -> Self {
        Pool {
            free: HashMap::new(),
            allocated: 0,
        }
    }
}

impl<B: Backend> Pool<B> {
    /// A buffer of `len` elements of `dtype`: a given-back one (its contents are the last
    /// user's), or a new one (zero-filled).
    pub fn take(&mut self, be: &B, dtype: DType, len: usize) -> Result<B::Buffer> {
        match self.free.get_mut(&(dtype, len)).and_then(Vec::pop) {
            Some(b) => Ok(b),
            None => {
                self.allocated += 1;
                crate::alloc::alloc(be, "an FSDP communication buffer", dtype, len)
            }
        }
    }

    /// Keep `buf` for the next [`Pool::take`] of its dtype and length.
    pub fn give(&mut self, buf: B::Buffer) {
        let v = B::view(&buf);
        let key = (v.dtype(), v.len());
        self.free.entry(key).or_default().push(buf);
    }
}
