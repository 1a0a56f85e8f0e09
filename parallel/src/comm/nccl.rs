//! NCCL on device memory (feature `cuda`): one communicator per mesh group. Each is created
//! with `ncclCommInitRank` from a unique id that the group's first rank makes and shares over
//! the matching host bootstrap group (MPI or threads); `split` splits the bootstrap group the
//! same way and repeats that.
//!
//! Every communicator has a stream of its own. A collective waits there for the compute work
//! queued before it (an event), runs, and records an event after itself: a blocking call makes
//! the compute stream wait for that event (the host never blocks), and a background one
//! ([`Comm::start`]) leaves it to [`super::Pending::wait`], so FSDP's prefetched gathers,
//! early reduce-scatters and ring attention's K/V passes overlap the compute queued meanwhile.
//! The watchdog ([`super::watchdog`]) aborts a communicator whose collective hangs or that
//! reports an asynchronous error.
//!
//! **Bitwise restarts** need NCCL to pick the same algorithm and protocol each run: set
//! `NCCL_ALGO` and `NCCL_PROTO` (e.g. `Ring` and `Simple`) in the environment of every rank;
//! otherwise NCCL may choose by message size and topology, and sums may round differently.

use super::watchdog::Watched;
use super::{Collective, Comm, HostComm, Pending};
use crate::{Error, Result};
use cudarc::driver::{CudaEvent, CudaStream};
use cudarc::nccl::{result, sys};
use std::ffi::c_void;
use std::sync::Arc;
use weft_kernels::cuda::{CudaBackend, CudaBuffer, CudaMut, CudaRef};
use weft_kernels::{Backend, CpuBackend, DType, Slice};

/// One rank's end of an NCCL communicator.
pub struct NcclComm {
    comm: sys::ncclComm_t,
    rank: usize,
    size: usize,
    /// This communicator's own stream.
    stream: Arc<CudaStream>,
    host: HostComm,
    watch: Arc<Watched>,
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it are not
// concurrent; weft issues every call of a rank from the thread that owns its backend.
unsafe impl Send for NcclComm {}
unsafe impl Sync for NcclComm {}

fn nccl_err(what: &str, e: result::NcclError) -> Error {
    Error::Comm(format!("nccl {what}: {e:?}"))
}

fn dtype(d: DType) -> Result<sys::ncclDataType_t> {
    Ok(match d {
        DType::F32 => sys::ncclDataType_t::ncclFloat32,
        DType::F64 => sys::ncclDataType_t::ncclFloat64,
        DType::F16 => sys::ncclDataType_t::ncclFloat16,
        DType::BF16 => sys::ncclDataType_t::ncclBfloat16,
        DType::I32 => sys::ncclDataType_t::ncclInt32,
        other => return Err(Error::Comm(format!("nccl has no {other} collectives"))),
    })
}

fn rptr(v: &CudaRef<'_>) -> *const c_void {
    v.device_ptr() as *const c_void
}
fn mptr(v: &CudaMut<'_>) -> *mut c_void {
    v.device_ptr() as *mut c_void
}

impl NcclComm {
    /// Create the world communicator. `host` is the bootstrap group (same ranks), used once
    /// to share rank 0's unique id.
    pub fn world(be: &CudaBackend, host: HostComm) -> Result<NcclComm> {
        // NCCL binds the communicator to the device current on this thread.
        be.context()
            .bind_to_thread()
            .map_err(|e| Error::Comm(format!("binding the rank's device: {e}")))?;
        Self::init(be.stream(), host)
    }

    /// A communicator over `host`'s ranks, its stream forked from `parent`.
    fn init(parent: &Arc<CudaStream>, host: HostComm) -> Result<NcclComm> {
        // SAFETY: only probes whether the library can be loaded.
        if !unsafe { cudarc::nccl::sys::is_culib_present() } {
            return Err(Error::Comm(
                "libnccl.so was not found (install NCCL and make `libnccl.so` point at libnccl.so.2)".into(),
            ));
        }
        let stream = parent
            .fork()
            .map_err(|e| Error::Comm(format!("a stream for the communicator: {e}")))?;
        let cpu = CpuBackend::new();
        let mut id = if host.rank() == 0 {
            result::get_uniqueid().map_err(|e| nccl_err("get_uniqueid", e))?
        } else {
            sys::ncclUniqueId { internal: [0; 128] }
        };
        let mut bytes: Vec<u16> = id.internal.iter().map(|&c| c as u8 as u16).collect();
        host.broadcast(&cpu, (&mut bytes).into(), 0)?;
        for (d, s) in id.internal.iter_mut().zip(&bytes) {
            *d = *s as u8 as std::ffi::c_char;
        }
        let mut comm = std::mem::MaybeUninit::uninit();
        // SAFETY: `comm` is written by ncclCommInitRank before it is read.
        let comm = unsafe {
            result::comm_init_rank(comm.as_mut_ptr(), host.size() as i32, id, host.rank() as i32)
                .map_err(|e| nccl_err("comm_init_rank", e))?;
            comm.assume_init()
        };
        let label = format!("(rank {} of {})", host.rank(), host.size());
        Ok(NcclComm {
            comm,
            rank: host.rank(),
            size: host.size(),
            stream,
            host,
            watch: Watched::register(comm, label),
        })
    }

    /// Run `enqueue` on this communicator's stream after the compute work queued so far;
    /// returns the event after it (handed to the watchdog). `back`: the compute stream waits
    /// for it too (a blocking call).
    fn on_stream(
        &self,
        be: &CudaBackend,
        back: bool,
        enqueue: impl FnOnce(sys::cudaStream_t) -> Result<()>,
    ) -> Result<Arc<CudaEvent>> {
        if let Some(why) = self.watch.aborted() {
            return Err(Error::Comm(why));
        }
        let ready = be.record(None)?;
        be.wait(Some(&self.stream), &ready)?;
        enqueue(self.stream.cu_stream() as sys::cudaStream_t)?;
        let done = Arc::new(be.record(Some(&self.stream))?);
        self.watch.enqueued(done.clone());
        if back {
            be.wait(None, &done)?;
        }
        Ok(done)
    }

    /// A blocking collective: on this communicator's stream, the compute stream after it.
    fn blocking(
        &self,
        be: &CudaBackend,
        enqueue: impl FnOnce(sys::cudaStream_t) -> Result<()>,
    ) -> Result<()> {
        self.on_stream(be, true, enqueue).map(drop)
    }

    /// `recv ← Σ_r send_r`, out of place.
    fn all_reduce_into(
        &self,
        send: &CudaRef<'_>,
        recv: &CudaMut<'_>,
        stream: sys::cudaStream_t,
    ) -> Result<()> {
        check(
            send.len() == recv.len() && send.dtype() == recv.dtype(),
            "all_reduce: send and recv differ",
        )?;
        let sum = sys::ncclRedOp_t::ncclSum;
        // SAFETY: both views are live device memory of the stated length.
        unsafe {
            result::all_reduce(
                rptr(send),
                mptr(recv),
                send.len(),
                dtype(send.dtype())?,
                sum,
                self.comm,
                stream,
            )
        }
        .map(drop)
        .map_err(|e| nccl_err("all_reduce", e))
    }

    fn grouped(&self, f: impl FnOnce() -> Result<()>) -> Result<()> {
        result::group_start().map_err(|e| nccl_err("group_start", e))?;
        let r = f();
        result::group_end().map_err(|e| nccl_err("group_end", e))?;
        r
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // Collectives still queued use the communicator: let them finish (an aborted one
        // already has), then destroy it with the watchdog locked out.
        let _ = self.stream.synchronize();
        self.watch.close();
    }
}

/// The collectives, enqueued on a given stream.
impl NcclComm {
    fn enq_all_gather(
        &self,
        send: &CudaRef<'_>,
        recv: &CudaMut<'_>,
        stream: sys::cudaStream_t,
    ) -> Result<()> {
        check(
            recv.len() == send.len() * self.size && recv.dtype() == send.dtype(),
            "all_gather: recv must be size × send",
        )?;
        // SAFETY: both views are live device memory of the stated lengths.
        unsafe {
            result::all_gather(
                rptr(send),
                mptr(recv),
                send.len(),
                dtype(send.dtype())?,
                self.comm,
                stream,
            )
        }
        .map(drop)
        .map_err(|e| nccl_err("all_gather", e))
    }

    fn enq_reduce_scatter(
        &self,
        send: &CudaRef<'_>,
        recv: &CudaMut<'_>,
        stream: sys::cudaStream_t,
    ) -> Result<()> {
        check(
            send.len() == recv.len() * self.size && recv.dtype() == send.dtype(),
            "reduce_scatter: send must be size × recv",
        )?;
        let sum = sys::ncclRedOp_t::ncclSum;
        // SAFETY: both views are live device memory of the stated lengths.
        unsafe {
            result::reduce_scatter(
                rptr(send),
                mptr(recv),
                recv.len(),
                dtype(send.dtype())?,
                sum,
                self.comm,
                stream,
            )
        }
        .map(drop)
        .map_err(|e| nccl_err("reduce_scatter", e))
    }

    fn enq_all_to_all(
        &self,
        send: &CudaRef<'_>,
        recv: &CudaMut<'_>,
        stream: sys::cudaStream_t,
    ) -> Result<()> {
        check(
            send.len() == recv.len() && send.len().is_multiple_of(self.size) && send.dtype() == recv.dtype(),
            "all_to_all: equal multiples of size",
        )?;
        let (n, dt, w) = (send.len() / self.size, dtype(send.dtype())?, send.dtype().size());
        self.grouped(|| {
            for r in 0..self.size {
                let off = (r * n * w) as u64;
                // SAFETY: block `r` of each view is in bounds.
                unsafe {
                    let s = (send.device_ptr() + off) as *const c_void;
                    result::send(s, n, dt, r as i32, self.comm, stream).map_err(|e| nccl_err("send", e))?;
                    let d = (recv.device_ptr() + off) as *mut c_void;
                    result::recv(d, n, dt, r as i32, self.comm, stream).map_err(|e| nccl_err("recv", e))?;
                }
            }
            Ok(())
        })
    }

    fn enq_send(&self, buf: &CudaRef<'_>, to: usize, stream: sys::cudaStream_t) -> Result<()> {
        // SAFETY: live device memory.
        unsafe {
            result::send(
                rptr(buf),
                buf.len(),
                dtype(buf.dtype())?,
                to as i32,
                self.comm,
                stream,
            )
        }
        .map(drop)
        .map_err(|e| nccl_err("send", e))
    }

    fn enq_recv(&self, buf: &CudaMut<'_>, from: usize, stream: sys::cudaStream_t) -> Result<()> {
        // SAFETY: live device memory.
        unsafe {
            result::recv(
                mptr(buf),
                buf.len(),
                dtype(buf.dtype())?,
                from as i32,
                self.comm,
                stream,
            )
        }
        .map(drop)
        .map_err(|e| nccl_err("recv", e))
    }

    fn enq_send_recv(
        &self,
        (send, to): (&CudaRef<'_>, usize),
        (recv, from): (&CudaMut<'_>, usize),
        stream: sys::cudaStream_t,
    ) -> Result<()> {
        check(
            send.dtype() == recv.dtype(),
            "send_recv: send and recv differ in dtype",
        )?;
        self.grouped(|| {
            self.enq_send(send, to, stream)?;
            self.enq_recv(recv, from, stream)
        })
    }
}

impl Comm<CudaBackend> for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn split(&self, color: usize, key: usize) -> Result<Box<dyn Comm<CudaBackend>>> {
        let host = self.host.split_host(color, key)?;
        Ok(Box::new(NcclComm::init(&self.stream, host)?))
    }
    fn all_gather(&self, be: &CudaBackend, send: CudaRef<'_>, recv: CudaMut<'_>) -> Result<()> {
        self.blocking(be, |st| self.enq_all_gather(&send, &recv, st))
    }
    fn reduce_scatter(&self, be: &CudaBackend, send: CudaRef<'_>, recv: CudaMut<'_>) -> Result<()> {
        self.blocking(be, |st| self.enq_reduce_scatter(&send, &recv, st))
    }
    fn all_reduce(&self, be: &CudaBackend, buf: CudaMut<'_>) -> Result<()> {
        // In place: NCCL allows the same buffer as input and output.
        let input = CudaBackend::freeze(&buf);
        self.blocking(be, |st| self.all_reduce_into(&input, &buf, st))
    }
    fn all_to_all(&self, be: &CudaBackend, send: CudaRef<'_>, recv: CudaMut<'_>) -> Result<()> {
        self.blocking(be, |st| self.enq_all_to_all(&send, &recv, st))
    }
    fn broadcast(&self, be: &CudaBackend, buf: CudaMut<'_>, root: usize) -> Result<()> {
        check(root < self.size, "broadcast: root is not a rank of the group")?;
        let p = mptr(&buf);
        self.blocking(be, |st| {
            // SAFETY: in place on live device memory.
            unsafe { result::broadcast(p, p, buf.len(), dtype(buf.dtype())?, root as i32, self.comm, st) }
                .map(drop)
                .map_err(|e| nccl_err("broadcast", e))
        })
    }
    fn send(&self, be: &CudaBackend, buf: CudaRef<'_>, to: usize) -> Result<()> {
        self.blocking(be, |st| self.enq_send(&buf, to, st))
    }
    fn recv(&self, be: &CudaBackend, buf: CudaMut<'_>, from: usize) -> Result<()> {
        self.blocking(be, |st| self.enq_recv(&buf, from, st))
    }
    fn send_recv(
        &self,
        be: &CudaBackend,
        send: CudaRef<'_>,
        to: usize,
        recv: CudaMut<'_>,
        from: usize,
    ) -> Result<()> {
        self.blocking(be, |st| self.enq_send_recv((&send, to), (&recv, from), st))
    }
    fn barrier(&self) -> Result<()> {
        Err(Error::Comm(
            "nccl has no barrier; synchronize the backend and use an all-reduce".into(),
        ))
    }
    /// Enqueued on this communicator's stream after the compute queued so far; the compute
    /// stream waits for it only at [`Pending::wait`], so the work queued in between overlaps.
    fn start(
        &self,
        be: &CudaBackend,
        op: Collective,
        send: CudaBuffer,
        mut recv: CudaBuffer,
    ) -> Result<Pending<CudaBackend>> {
        let done = {
            let (s, r) = (CudaBackend::view(&send), CudaBackend::view_mut(&mut recv));
            let (rank, n) = (self.rank, self.size);
            self.on_stream(be, false, |st| match op {
                Collective::AllGather => self.enq_all_gather(&s, &r, st),
                Collective::ReduceScatter => self.enq_reduce_scatter(&s, &r, st),
                Collective::AllToAll => self.enq_all_to_all(&s, &r, st),
                Collective::AllReduce => self.all_reduce_into(&s, &r, st),
                Collective::Shift => self.enq_send_recv((&s, (rank + 1) % n), (&r, (rank + n - 1) % n), st),
            })?
        };
        let compute = be.stream().clone();
        Ok(Pending::new(Box::new(move || {
            compute
                .wait(&done)
                .map_err(|e| Error::Comm(format!("waiting for a collective: {e}")))?;
            Ok((send, recv))
        })))
    }
    fn kind(&self) -> &'static str {
        "nccl"
    }
}

fn check(ok: bool, what: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Comm(what.to_string()))
    }
}
