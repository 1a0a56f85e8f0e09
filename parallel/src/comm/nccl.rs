//! NCCL on device memory (feature `cuda`): one communicator per mesh group. Each is created
//! with `ncclCommInitRank` from a unique id that the group's first rank makes and shares over
//! the matching host bootstrap group (MPI or threads); `split` splits the bootstrap group the
//! same way and repeats that.
//!
//! Collectives are enqueued on the backend's stream, so they are ordered with the compute
//! around them; [`Comm::start`] returns as soon as the collective is enqueued.

use super::{Collective, Comm, HostComm, Pending};
use crate::{Error, Result};
use cudarc::nccl::{result, sys};
use std::ffi::c_void;
use weft_kernels::cuda::{CudaBackend, CudaBuffer, CudaMut, CudaRef};
use weft_kernels::{Backend, CpuBackend, DType, ElementwiseOps, Slice};

/// One rank's end of an NCCL communicator.
pub struct NcclComm {
    comm: sys::ncclComm_t,
    rank: usize,
    size: usize,
    stream: sys::cudaStream_t,
    host: HostComm,
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
        Self::init(be.stream().cu_stream() as sys::cudaStream_t, host)
    }

    fn init(stream: sys::cudaStream_t, host: HostComm) -> Result<NcclComm> {
        // SAFETY: only probes whether the library can be loaded.
        if !unsafe { cudarc::nccl::sys::is_culib_present() } {
            return Err(Error::Comm(
                "libnccl.so was not found (install NCCL and make `libnccl.so` point at libnccl.so.2)".into(),
            ));
        }
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
        Ok(NcclComm {
            comm,
            rank: host.rank(),
            size: host.size(),
            stream,
            host,
        })
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
        // SAFETY: the communicator is not used after this.
        unsafe {
            let _ = result::comm_destroy(self.comm);
        }
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
        Ok(Box::new(NcclComm::init(self.stream, host)?))
    }
    fn all_gather(&self, _: &CudaBackend, send: CudaRef<'_>, recv: CudaMut<'_>) -> Result<()> {
        check(
            recv.len() == send.len() * self.size,
            "all_gather: recv must be size × send",
        )?;
        // SAFETY: both views are live device memory of the stated lengths.
        unsafe {
            result::all_gather(
                rptr(&send),
                mptr(&recv),
                send.len(),
                dtype(send.dtype())?,
                self.comm,
                self.stream,
            )
        }
        .map(drop)
        .map_err(|e| nccl_err("all_gather", e))
    }
    fn reduce_scatter(&self, _: &CudaBackend, send: CudaRef<'_>, recv: CudaMut<'_>) -> Result<()> {
        check(
            send.len() == recv.len() * self.size,
            "reduce_scatter: send must be size × recv",
        )?;
        let sum = sys::ncclRedOp_t::ncclSum;
        // SAFETY: both views are live device memory of the stated lengths.
        unsafe {
            result::reduce_scatter(
                rptr(&send),
                mptr(&recv),
                recv.len(),
                dtype(send.dtype())?,
                sum,
                self.comm,
                self.stream,
            )
        }
        .map(drop)
        .map_err(|e| nccl_err("reduce_scatter", e))
    }
    fn all_reduce(&self, _: &CudaBackend, buf: CudaMut<'_>) -> Result<()> {
        let p = mptr(&buf);
        let sum = sys::ncclRedOp_t::ncclSum;
        // SAFETY: in place on live device memory.
        unsafe { result::all_reduce(p, p, buf.len(), dtype(buf.dtype())?, sum, self.comm, self.stream) }
            .map(drop)
            .map_err(|e| nccl_err("all_reduce", e))
    }
    fn all_to_all(&self, _: &CudaBackend, send: CudaRef<'_>, recv: CudaMut<'_>) -> Result<()> {
        check(
            send.len() == recv.len() && send.len().is_multiple_of(self.size),
            "all_to_all: equal multiples of size",
        )?;
        let (n, dt, w) = (send.len() / self.size, dtype(send.dtype())?, send.dtype().size());
        self.grouped(|| {
            for r in 0..self.size {
                let off = (r * n * w) as u64;
                // SAFETY: block `r` of each view is in bounds.
                unsafe {
                    let s = (send.device_ptr() + off) as *const c_void;
                    result::send(s, n, dt, r as i32, self.comm, self.stream)
                        .map_err(|e| nccl_err("send", e))?;
                    let d = (recv.device_ptr() + off) as *mut c_void;
                    result::recv(d, n, dt, r as i32, self.comm, self.stream)
                        .map_err(|e| nccl_err("recv", e))?;
                }
            }
            Ok(())
        })
    }
    fn broadcast(&self, _: &CudaBackend, buf: CudaMut<'_>, root: usize) -> Result<()> {
        let p = mptr(&buf);
        // SAFETY: in place on live device memory.
        unsafe {
            result::broadcast(
                p,
                p,
                buf.len(),
                dtype(buf.dtype())?,
                root as i32,
                self.comm,
                self.stream,
            )
        }
        .map(drop)
        .map_err(|e| nccl_err("broadcast", e))
    }
    fn send(&self, _: &CudaBackend, buf: CudaRef<'_>, to: usize) -> Result<()> {
        // SAFETY: live device memory.
        unsafe {
            result::send(
                rptr(&buf),
                buf.len(),
                dtype(buf.dtype())?,
                to as i32,
                self.comm,
                self.stream,
            )
        }
        .map(drop)
        .map_err(|e| nccl_err("send", e))
    }
    fn recv(&self, _: &CudaBackend, buf: CudaMut<'_>, from: usize) -> Result<()> {
        // SAFETY: live device memory.
        unsafe {
            result::recv(
                mptr(&buf),
                buf.len(),
                dtype(buf.dtype())?,
                from as i32,
                self.comm,
                self.stream,
            )
        }
        .map(drop)
        .map_err(|e| nccl_err("recv", e))
    }
    fn send_recv(
        &self,
        be: &CudaBackend,
        send: CudaRef<'_>,
        to: usize,
        recv: CudaMut<'_>,
        from: usize,
    ) -> Result<()> {
        self.grouped(|| {
            self.send(be, send, to)?;
            self.recv(be, recv, from)
        })
    }
    fn barrier(&self) -> Result<()> {
        Err(Error::Comm(
            "nccl has no barrier; synchronize the backend and use an all-reduce".into(),
        ))
    }
    fn start(
        &self,
        be: &CudaBackend,
        op: Collective,
        send: CudaBuffer,
        mut recv: CudaBuffer,
    ) -> Result<Pending<CudaBackend>> {
        {
            let (s, r) = (CudaBackend::view(&send), CudaBackend::view_mut(&mut recv));
            match op {
                Collective::AllGather => self.all_gather(be, s, r)?,
                Collective::ReduceScatter => self.reduce_scatter(be, s, r)?,
                Collective::AllToAll => self.all_to_all(be, s, r)?,
                Collective::AllReduce => {
                    be.cast(r, s, s.len())?;
                    self.all_reduce(be, CudaBackend::view_mut(&mut recv))?;
                }
                Collective::Shift => {
                    let (rank, n) = (self.rank(), self.size());
                    self.send_recv(be, s, (rank + 1) % n, r, (rank + n - 1) % n)?;
                }
            }
        }
        // Enqueued on the stream: later work on the stream is ordered after it.
        Ok(Pending::new(Box::new(move || Ok((send, recv)))))
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
