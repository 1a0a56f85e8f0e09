//! The [`Backend`] trait: a device, its buffers, views into them, copies and a queue.

use crate::{DType, Error, HostMut, HostRef, Result};
use std::ops::Range;

/// A view of device memory: a dtype and a length, splittable without copying.
///
/// Views are how one flat buffer (all parameters, all gradients) hands out the ranges that
/// each layer reads or writes. Splitting a mutable view yields two disjoint mutable views, so a
/// backward pass can write `dweight` and `dbias` into the same gradient buffer in one call.
pub trait Slice: Sized {
    fn dtype(&self) -> DType;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `[..mid]` and `[mid..]`. Panics when `mid > len`, like `slice::split_at`.
    fn split_at(self, mid: usize) -> (Self, Self);
    /// The sub-range `range`. Panics when out of bounds, like slice indexing.
    fn range(self, range: Range<usize>) -> Self {
        let (_, tail) = self.split_at(range.start);
        tail.split_at(range.end - range.start).0
    }
}

/// A compute device with its own memory and an in-order work queue.
///
/// Every op call is *enqueued* on the backend's queue and ordered after the calls before it.
/// The CPU backend runs each op to completion before returning; the CUDA backend only launches
/// it on its stream. Results become visible to the host through [`Backend::download`] (which
/// waits for the queue) or after [`Backend::synchronize`].
///
/// Side work — a collective on a communication stream — goes on other in-order queues
/// ([`Backend::Stream`], made by [`Backend::new_stream`]), ordered against the main queue by
/// events and never by blocking the host:
///
/// ```text
/// let ready = be.record(None)?;        // after the gradients are computed (main queue)
/// be.wait(Some(&comm), &ready)?;       // the stream starts no later work before that
/// /* enqueue the reduce-scatter on `comm` */
/// let done = be.record(Some(&comm))?;  // after the collective
/// be.wait(None, &done)?;               // the optimizer, queued next, reads its result
/// ```
///
/// A backend whose ops complete when they return (the CPU) implements these as no-ops.
///
/// The ops themselves live in the op-family traits of [`crate::ops`]; [`crate::Ops`] is all of
/// them together.
pub trait Backend: Send + Sync + 'static {
    /// An owned allocation of `len` elements of one dtype.
    type Buffer: Send + Sync + 'static;
    /// A shared view of (part of) a buffer.
    type Ref<'a>: Slice + Copy + Send + Sync;
    /// An exclusive view of (part of) a buffer.
    type Mut<'a>: Slice + Send;

    /// A human-readable description of the device ("cpu (2 threads)", "cuda:0 NVIDIA H100").
    fn name(&self) -> String;
    /// Allocate `len` zero-filled elements.
    fn alloc(&self, dtype: DType, len: usize) -> Result<Self::Buffer>;
    /// The whole buffer as a shared view.
    fn view(buf: &Self::Buffer) -> Self::Ref<'_>;
    /// The whole buffer as an exclusive view.
    fn view_mut(buf: &mut Self::Buffer) -> Self::Mut<'_>;
    /// A shorter-lived exclusive view of the same memory (so a view can be used twice).
    fn rb<'b>(v: &'b mut Self::Mut<'_>) -> Self::Mut<'b>;
    /// A shared view of the memory behind an exclusive view.
    fn freeze<'b>(v: &'b Self::Mut<'_>) -> Self::Ref<'b>;
    /// A shorter-lived copy of a shared view.
    fn share<'b>(v: &'b Self::Ref<'_>) -> Self::Ref<'b>;
    /// Copy host memory into `dst` (same dtype and length). Returns once `src` may be reused;
    /// the copy is ordered before every op queued after it, but may not have finished yet.
    fn upload(&self, src: HostRef<'_>, dst: Self::Mut<'_>) -> Result<()>;
    /// Copy `src` into host memory (same dtype and length); waits for queued work first.
    fn download(&self, src: Self::Ref<'_>, dst: HostMut<'_>) -> Result<()>;
    /// Wait until every queued op has finished.
    fn synchronize(&self) -> Result<()>;

    /// Where a view starts: with its dtype and length, what another rank of this process that
    /// shares the device needs to read it ([`Backend::view_at`]).
    fn address(v: &Self::Ref<'_>) -> usize;
    /// The view of `len` elements of `dtype` at `address`.
    ///
    /// # Safety
    /// `address` must be the [`Backend::address`] of a live view of this backend's device
    /// holding at least `len` elements of `dtype`, whose memory is neither freed nor written
    /// while this view, or work enqueued through it, lives.
    unsafe fn view_at<'a>(address: usize, dtype: DType, len: usize) -> Self::Ref<'a>;

    /// A second in-order queue on this device, for work that may overlap the main queue.
    type Stream: Send + Sync;
    /// A point in a queue: everything enqueued on it before the event was recorded.
    type Event: Send + Sync;
    /// A new stream. Work on it is unordered with the main queue except through
    /// [`Backend::record`] and [`Backend::wait`].
    fn new_stream(&self) -> Result<Self::Stream>;
    /// An event after all work enqueued so far on `on` (`None`: the main queue).
    fn record(&self, on: Option<&Self::Stream>) -> Result<Self::Event>;
    /// Make all work enqueued on `on` (`None`: the main queue) after this call wait for the
    /// work before `event`. Does not block the host.
    fn wait(&self, on: Option<&Self::Stream>, event: &Self::Event) -> Result<()>;
    /// Block the host until the work before `event` has finished.
    fn sync_event(&self, event: &Self::Event) -> Result<()>;

    /// `(bytes in use, bytes in all)` of the device's own memory, as its driver reports it
    /// (every process's use of it); `None` for a device whose memory is the host's.
    fn device_memory(&self) -> Result<Option<(usize, usize)>> {
        Ok(None)
    }
}

/// Argument validation shared by every backend, so all of them refuse the same calls with the
/// same messages. Nothing is ever broadcast implicitly: a length must match exactly.
pub(crate) struct Check {
    pub op: &'static str,
}

impl Check {
    /// `arg` must be one of the float dtypes in `allowed`.
    pub fn dtype_in(&self, arg: &'static str, got: DType, allowed: &[DType]) -> Result<DType> {
        if allowed.contains(&got) {
            Ok(got)
        } else {
            let names: Vec<_> = allowed.iter().map(|d| d.name()).collect();
            let expected = match names.as_slice() {
                [one] => one.to_string(),
                _ => format!("one of {}", names.join(", ")),
            };
            Err(Error::DType {
                op: self.op,
                arg,
                expected,
                got,
            })
        }
    }

    /// `arg` must have dtype `want` and exactly `len` elements; `shape` names the dimensions.
    pub fn arg<S: Slice>(
        &self,
        arg: &'static str,
        v: &S,
        want: DType,
        len: usize,
        shape: impl FnOnce() -> String,
    ) -> Result<()> {
        if v.dtype() != want {
            return Err(Error::DType {
                op: self.op,
                arg,
                expected: want.name().to_string(),
                got: v.dtype(),
            });
        }
        self.len(arg, v.len(), len, shape)
    }

    /// `arg` holds `got` elements and must hold exactly `len`; `shape` names the dimensions.
    pub fn len(
        &self,
        arg: &'static str,
        got: usize,
        len: usize,
        shape: impl FnOnce() -> String,
    ) -> Result<()> {
        if got != len {
            return Err(Error::Shape {
                op: self.op,
                arg,
                expected: format!("{len} elements {}", shape()),
                got: format!("{got} elements"),
            });
        }
        Ok(())
    }

    /// Like [`Check::arg`] for an optional argument.
    pub fn opt<S: Slice>(
        &self,
        arg: &'static str,
        v: Option<&S>,
        want: DType,
        len: usize,
        shape: impl FnOnce() -> String,
    ) -> Result<()> {
        match v {
            Some(v) => self.arg(arg, v, want, len, shape),
            None => Ok(()),
        }
    }

    /// A dimension rule that must hold (`what` names the dimension).
    pub fn rule(&self, ok: bool, what: &'static str, why: impl FnOnce() -> String) -> Result<()> {
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid {
                op: self.op,
                what,
                why: why(),
            })
        }
    }
}
