//! Host ↔ device copies through a reusable ring of pinned host buffers.
//!
//! A copy from pageable memory makes the driver stage it itself and, for a device-to-host
//! copy, synchronise. Here every copy is cut into chunks of at most [`CHUNK`] bytes that go
//! through [`SLOTS`] page-locked buffers, allocated once (on the first copy), each with an
//! event recorded after the copy that last used it:
//!
//! - **upload**: copy a chunk into a free slot, enqueue the DMA, record the slot's event, and
//!   return without waiting. The caller's slice may be reused at once (its bytes are already in
//!   the slot); the host only waits when it needs a slot whose previous DMA is still queued.
//! - **download**: enqueue the DMA of chunk `i` into one slot, then wait for chunk `i − 1` and
//!   copy it out of the other, so the DMA and the host copy overlap. The host waits for the
//!   last chunk: that wait is the download itself (the data must have arrived before the
//!   caller reads it), and it is on the chunk's event, not on the whole device.
//!
//! Copies are enqueued on the backend's one stream, so they are ordered with the kernels
//! around them. The ring is behind a mutex, so copies from several threads take turns.

use super::device::cuda_err;
use crate::Result;
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaContext, CudaEvent, CudaStream, PinnedHostSlice};
use std::sync::{Arc, Mutex};

/// Bytes per slot.
pub(crate) const CHUNK: usize = 4 << 20;
/// Slots in the ring (two: one filling or draining on the host while the other's DMA runs).
pub(crate) const SLOTS: usize = 2;

struct Slot {
    /// Owns the page-locked bytes (freed on drop, after [`Staging`]'s drop waited for `done`).
    _mem: PinnedHostSlice<u8>,
    /// `mem`'s address, taken once (reading it through `PinnedHostSlice` waits on an event).
    ptr: *mut u8,
    /// Recorded after the last copy that used this slot.
    done: CudaEvent,
}

// SAFETY: `ptr` points into `_mem`, which is page-locked host memory valid on any thread; the
// ring's mutex serialises every access to it.
unsafe impl Send for Slot {}

impl Slot {
    fn bytes(&mut self, len: usize) -> &mut [u8] {
        debug_assert!(len <= CHUNK);
        // SAFETY: `ptr` is the start of `_mem`, `CHUNK` bytes, and `len <= CHUNK`; callers wait
        // on `done` first, so no DMA is reading or writing the bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, len) }
    }
}

/// The ring of pinned buffers of one backend.
pub(crate) struct Staging {
    ctx: Arc<CudaContext>,
    ring: Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    slots: Vec<Slot>,
    next: usize,
}

impl Ring {
    fn take(&mut self, ctx: &Arc<CudaContext>) -> Result<&mut Slot> {
        if self.slots.is_empty() {
            for _ in 0..SLOTS {
                // Cacheable (not write-combined): the host reads downloads back from it.
                // SAFETY: the bytes are uninitialised until a copy writes them, and nothing
                // reads a slot before writing it.
                let mut mem = unsafe { ctx.alloc_pinned_with_flags::<u8>(CHUNK, 0) }
                    .map_err(cuda_err("pinned host allocation"))?;
                let ptr = mem.as_mut_ptr().map_err(cuda_err("pinned host allocation"))?;
                let done = ctx.new_event(None).map_err(cuda_err("pinned host allocation"))?;
                self.slots.push(Slot { _mem: mem, ptr, done });
            }
        }
        let i = self.next;
        self.next = (i + 1) % SLOTS;
        let slot = &mut self.slots[i];
        // The slot's previous copy must be finished before its bytes are touched.
        slot.done.synchronize().map_err(cuda_err("staging wait"))?;
        Ok(slot)
    }
}

impl Staging {
    pub(crate) fn new(ctx: Arc<CudaContext>) -> Self {
        Staging {
            ctx,
            ring: Mutex::new(Ring::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enqueue `dst[..src.len()] = src` on `stream` and return without waiting for it.
    pub(crate) fn upload(&self, stream: &CudaStream, src: &[u8], dst: CUdeviceptr) -> Result<()> {
        let mut ring = self.lock();
        self.ctx.bind_to_thread().map_err(cuda_err("upload"))?;
        for (i, chunk) in src.chunks(CHUNK).enumerate() {
            let slot = ring.take(&self.ctx)?;
            let staged = slot.bytes(chunk.len());
            staged.copy_from_slice(chunk);
            let at = dst + (i * CHUNK) as CUdeviceptr;
            // SAFETY: `staged` is pinned and stays untouched until `done` (recorded right after
            // the copy) completes; the caller checked that `dst` covers `src.len()` bytes.
            unsafe { cudarc::driver::result::memcpy_htod_async(at, &*staged, stream.cu_stream()) }
                .map_err(cuda_err("upload"))?;
            slot.done.record(stream).map_err(cuda_err("upload"))?;
        }
        Ok(())
    }

    /// `dst = src[..dst.len()]`, after every copy and kernel enqueued before it on `stream`.
    pub(crate) fn download(&self, stream: &CudaStream, src: CUdeviceptr, dst: &mut [u8]) -> Result<()> {
        let mut ring = self.lock();
        self.ctx.bind_to_thread().map_err(cuda_err("download"))?;
        let chunks = dst.len().div_ceil(CHUNK);
        // The chunk whose DMA is in flight: (slot index, offset, length).
        let mut pending: Option<(usize, usize, usize)> = None;
        for i in 0..chunks {
            let (off, len) = (i * CHUNK, CHUNK.min(dst.len() - i * CHUNK));
            let slot_index = ring.next;
            let slot = ring.take(&self.ctx)?;
            let staged = slot.bytes(len);
            // SAFETY: `staged` is pinned and no other copy uses it until `done` completes; the
            // caller checked that `src` covers `dst.len()` bytes.
            unsafe {
                cudarc::driver::result::memcpy_dtoh_async(
                    &mut *staged,
                    src + off as CUdeviceptr,
                    stream.cu_stream(),
                )
            }
            .map_err(cuda_err("download"))?;
            slot.done.record(stream).map_err(cuda_err("download"))?;
            if let Some(p) = pending.replace((slot_index, off, len)) {
                Self::drain(&mut ring, p, dst)?;
            }
        }
        if let Some(p) = pending {
            Self::drain(&mut ring, p, dst)?;
        }
        Ok(())
    }

    /// Wait for a downloaded chunk and copy it out of its slot.
    fn drain(ring: &mut Ring, (slot, off, len): (usize, usize, usize), dst: &mut [u8]) -> Result<()> {
        let slot = &mut ring.slots[slot];
        slot.done.synchronize().map_err(cuda_err("download"))?;
        dst[off..off + len].copy_from_slice(slot.bytes(len));
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // A queued DMA may still use a slot: let it finish before the memory is freed.
        for slot in &self.lock().slots {
            let _ = slot.done.synchronize();
        }
    }
}
