//! [`Comm`] on host memory over a byte [`Transport`], with rank-ordered reductions and a
//! background thread per group for [`Comm::start`].

use super::{Collective, Comm, Pending};
use crate::{Error, Result};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread::JoinHandle;
use weft_kernels::{bf16, bf16_to_f32, f32_to_bf16_rne, CpuBackend, DType, HostMut, HostRef, HostVec};

/// Moves bytes between the ranks of a group. Implemented by threads ([`super::local`]) and MPI.
pub trait Transport: Send + Sync + 'static {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    fn split(&self, color: usize, key: usize) -> Result<Box<dyn Transport>>;
    /// Every rank sends `send` (same length on all); `recv` is their concatenation in rank order.
    fn all_gather(&self, send: &[u8], recv: &mut [u8]) -> Result<()>;
    /// `send` and `recv` are `size` equal blocks; block `r` goes to / comes from rank `r`.
    fn all_to_all(&self, send: &[u8], recv: &mut [u8]) -> Result<()>;
    fn broadcast(&self, buf: &mut [u8], root: usize) -> Result<()>;
    fn send(&self, buf: &[u8], to: usize) -> Result<()>;
    fn recv(&self, buf: &mut [u8], from: usize) -> Result<()>;
    fn send_recv(&self, send: &[u8], to: usize, recv: &mut [u8], from: usize) -> Result<()>;
    fn barrier(&self) -> Result<()>;
    fn kind(&self) -> &'static str;
}

type Job = (
    Collective,
    HostVec,
    HostVec,
    mpsc::Sender<Result<(HostVec, HostVec)>>,
);

/// The background thread of a group, on its own duplicate of the group's transport.
struct Worker {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A group of ranks exchanging host buffers.
pub struct HostComm {
    t: Box<dyn Transport>,
    worker: Mutex<Option<Worker>>,
}

impl HostComm {
    pub fn new(t: Box<dyn Transport>) -> Self {
        HostComm {
            t,
            worker: Mutex::new(None),
        }
    }
    /// Every rank's `mine` (equal lengths), concatenated in rank order.
    pub(crate) fn gather_bytes(&self, mine: &[u8]) -> Result<Vec<u8>> {
        let mut all = vec![0u8; mine.len() * self.t.size()];
        self.t.all_gather(mine, &mut all)?;
        Ok(all)
    }
    pub(crate) fn send_bytes(&self, buf: &[u8], to: usize) -> Result<()> {
        self.t.send(buf, to)
    }
    pub(crate) fn recv_bytes(&self, buf: &mut [u8], from: usize) -> Result<()> {
        self.t.recv(buf, from)
    }
    /// [`Comm::split`] keeping the concrete type.
    pub fn split_host(&self, color: usize, key: usize) -> Result<HostComm> {
        Ok(HostComm::new(self.t.split(color, key)?))
    }
}

fn check(op: &str, ok: bool, why: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Comm(format!("{op}: {}", why())))
    }
}

fn same_dtype(op: &str, a: DType, b: DType) -> Result<()> {
    check(op, a == b, || format!("send is {a} but recv is {b}"))
}

/// `out ← Σ_r blocks[r]` in rank order, `blocks` being `size` equal blocks of `out.len()`.
fn sum_blocks(blocks: &[u8], out: HostMut<'_>) -> Result<()> {
    let n = out.len();
    macro_rules! sum {
        ($o:expr, $ty:ty, $zero:expr, $load:expr, $store:expr) => {{
            let w = std::mem::size_of::<$ty>();
            let parts = blocks.len() / (n * w);
            for (i, o) in $o.iter_mut().enumerate() {
                let mut acc = $zero;
                for r in 0..parts {
                    let at = (r * n + i) * w;
                    let mut b = [0u8; std::mem::size_of::<$ty>()];
                    b.copy_from_slice(&blocks[at..at + w]);
                    acc += $load(<$ty>::from_le_bytes(b));
                }
                *o = $store(acc);
            }
        }};
    }
    match out {
        HostMut::F32(o) => sum!(o, f32, 0.0f32, |x| x, |x| x),
        HostMut::F64(o) => sum!(o, f64, 0.0f64, |x| x, |x| x),
        HostMut::BF16(o) => sum!(
            o,
            u16,
            0.0f32,
            |x| bf16_to_f32(bf16::from_bits(x)),
            f32_to_bf16_rne
        ),
        other => return Err(Error::Comm(format!("cannot sum {} buffers", other.dtype()))),
    }
    Ok(())
}

impl HostComm {
    fn reduce_scatter_bytes(&self, send: HostRef<'_>, mut recv: HostMut<'_>) -> Result<()> {
        let op = "reduce_scatter";
        same_dtype(op, send.dtype(), recv.dtype())?;
        check(op, send.len() == recv.len() * self.size(), || {
            format!(
                "send has {} elements, expected size {} × recv {}",
                send.len(),
                self.size(),
                recv.len()
            )
        })?;
        let mut blocks = vec![0u8; send.as_bytes().len()];
        self.t.all_to_all(send.as_bytes(), &mut blocks)?;
        sum_blocks(&blocks, recv.rb())
    }

    fn all_reduce_host(&self, mut buf: HostMut<'_>) -> Result<()> {
        let (n, size, dt) = (buf.len(), self.size(), buf.dtype());
        if size == 1 {
            return Ok(());
        }
        let w = dt.size();
        let m = n.div_ceil(size);
        let mut padded = vec![0u8; m * size * w];
        padded[..n * w].copy_from_slice(buf.as_bytes_mut());
        let mut blocks = vec![0u8; padded.len()];
        self.t.all_to_all(&padded, &mut blocks)?;
        let mut mine = HostVec::zeros(dt, m);
        sum_blocks(&blocks, mine.view_mut())?;
        self.t.all_gather(mine.view().as_bytes(), &mut padded)?;
        buf.as_bytes_mut().copy_from_slice(&padded[..n * w]);
        Ok(())
    }

    fn run(&self, op: Collective, send: HostRef<'_>, recv: HostMut<'_>) -> Result<()> {
        match op {
            Collective::AllGather => self.gather_host(send, recv),
            Collective::ReduceScatter => self.reduce_scatter_bytes(send, recv),
            Collective::AllReduce => {
                let mut recv = recv;
                check("all_reduce", send.len() == recv.len(), || {
                    "send and recv differ in length".into()
                })?;
                recv.as_bytes_mut().copy_from_slice(send.as_bytes());
                self.all_reduce_host(recv)
            }
            Collective::AllToAll => self.all_to_all_host(send, recv),
            Collective::Shift => {
                let mut recv = recv;
                same_dtype("shift", send.dtype(), recv.dtype())?;
                check("shift", send.len() == recv.len(), || {
                    "send and recv differ in length".into()
                })?;
                let (r, n) = (self.rank(), self.size());
                let (to, from) = ((r + 1) % n, (r + n - 1) % n);
                self.t.send_recv(send.as_bytes(), to, recv.as_bytes_mut(), from)
            }
        }
    }

    fn gather_host(&self, send: HostRef<'_>, mut recv: HostMut<'_>) -> Result<()> {
        let op = "all_gather";
        same_dtype(op, send.dtype(), recv.dtype())?;
        check(op, recv.len() == send.len() * self.size(), || {
            format!(
                "recv has {} elements, expected size {} × send {}",
                recv.len(),
                self.size(),
                send.len()
            )
        })?;
        self.t.all_gather(send.as_bytes(), recv.as_bytes_mut())
    }

    fn all_to_all_host(&self, send: HostRef<'_>, mut recv: HostMut<'_>) -> Result<()> {
        let op = "all_to_all";
        same_dtype(op, send.dtype(), recv.dtype())?;
        check(
            op,
            send.len() == recv.len() && send.len().is_multiple_of(self.size()),
            || {
                format!(
                    "send ({}) and recv ({}) must be equal multiples of the group size {}",
                    send.len(),
                    recv.len(),
                    self.size()
                )
            },
        )?;
        self.t.all_to_all(send.as_bytes(), recv.as_bytes_mut())
    }

    fn worker(&self) -> Result<mpsc::Sender<Job>> {
        let mut w = self
            .worker
            .lock()
            .map_err(|_| Error::Comm("worker lock poisoned".into()))?;
        if w.is_none() {
            // A duplicate of this group, so background work never interleaves with blocking calls.
            let dup = HostComm::new(self.t.split(0, self.rank())?);
            let (tx, rx) = mpsc::channel::<Job>();
            let thread = std::thread::Builder::new()
                .name(format!("weft-comm-{}", self.rank()))
                .spawn(move || {
                    for (op, send, mut recv, reply) in rx {
                        let r = dup.run(op, send.view(), recv.view_mut()).map(|()| (send, recv));
                        let _ = reply.send(r);
                    }
                })
                .map_err(|e| Error::Comm(format!("cannot start the communication thread: {e}")))?;
            *w = Some(Worker {
                jobs: Some(tx),
                thread: Some(thread),
            });
        }
        Ok(w.as_ref().and_then(|w| w.jobs.clone()).expect("worker started"))
    }
}

impl Comm<CpuBackend> for HostComm {
    fn rank(&self) -> usize {
        self.t.rank()
    }
    fn size(&self) -> usize {
        self.t.size()
    }
    fn split(&self, color: usize, key: usize) -> Result<Box<dyn Comm<CpuBackend>>> {
        Ok(Box::new(HostComm::new(self.t.split(color, key)?)))
    }
    fn all_gather(&self, _: &CpuBackend, send: HostRef<'_>, recv: HostMut<'_>) -> Result<()> {
        self.gather_host(send, recv)
    }
    fn reduce_scatter(&self, _: &CpuBackend, send: HostRef<'_>, recv: HostMut<'_>) -> Result<()> {
        self.reduce_scatter_bytes(send, recv)
    }
    fn all_reduce(&self, _: &CpuBackend, buf: HostMut<'_>) -> Result<()> {
        self.all_reduce_host(buf)
    }
    fn all_to_all(&self, _: &CpuBackend, send: HostRef<'_>, recv: HostMut<'_>) -> Result<()> {
        self.all_to_all_host(send, recv)
    }
    fn broadcast(&self, _: &CpuBackend, mut buf: HostMut<'_>, root: usize) -> Result<()> {
        self.t.broadcast(buf.as_bytes_mut(), root)
    }
    fn send(&self, _: &CpuBackend, buf: HostRef<'_>, to: usize) -> Result<()> {
        self.t.send(buf.as_bytes(), to)
    }
    fn recv(&self, _: &CpuBackend, mut buf: HostMut<'_>, from: usize) -> Result<()> {
        self.t.recv(buf.as_bytes_mut(), from)
    }
    fn send_recv(
        &self,
        _: &CpuBackend,
        send: HostRef<'_>,
        to: usize,
        mut recv: HostMut<'_>,
        from: usize,
    ) -> Result<()> {
        same_dtype("send_recv", send.dtype(), recv.dtype())?;
        self.t.send_recv(send.as_bytes(), to, recv.as_bytes_mut(), from)
    }
    fn barrier(&self) -> Result<()> {
        self.t.barrier()
    }
    fn start(
        &self,
        _: &CpuBackend,
        op: Collective,
        send: HostVec,
        recv: HostVec,
    ) -> Result<Pending<CpuBackend>> {
        let jobs = self.worker()?;
        let (tx, rx) = mpsc::channel();
        jobs.send((op, send, recv, tx))
            .map_err(|_| Error::Comm("the communication thread has stopped".into()))?;
        Ok(Pending::new(Box::new(move || {
            rx.recv()
                .map_err(|_| Error::Comm("the communication thread has stopped".into()))?
        })))
    }
    fn kind(&self) -> &'static str {
        self.t.kind()
    }
}
