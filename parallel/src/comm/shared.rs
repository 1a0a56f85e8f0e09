//! Ranks as threads of one process that share one device: collectives as copies and sums in
//! the device's own memory, for a whole mesh on one GPU (NCCL refuses two ranks on one
//! device) and for the same mesh on the CPU backend, where it is tested.
//!
//! A collective is two meetings of the group on a host transport (the threads' own):
//! 1. each rank drains its queue, so what it hands out is written, and the ranks swap the
//!    address, dtype and length of the view each hands out ([`Backend::address`]);
//! 2. each rank enqueues the copies (and sums) that fill *its own* output from the others'
//!    views ([`Backend::view_at`]), drains its queue again, and meets the others, so nobody
//!    writes a view before every rank has finished reading it.
//!
//! Nothing is written into another rank's memory, and sums add the ranks' contributions in
//! rank order from zero, bf16 in f32 rounded once: the bits of [`super::HostComm`] over
//! threads or MPI. Background collectives ([`Comm::start`]) run at once: this communicator is
//! for correctness on one device, not for overlap.

use super::{Collective, Comm, HostComm, Pending};
use crate::{Error, Result};
use std::marker::PhantomData;
use weft_kernels::{Backend, DType, Ops, Slice};

/// One rank's end of a group of thread ranks sharing a device of backend `B`.
pub struct SharedComm<B: Backend> {
    host: HostComm,
    _device: PhantomData<fn() -> B>,
}

/// What a rank hands out: a view's address, dtype and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Posted {
    address: usize,
    dtype: DType,
    len: usize,
}

const POSTED_BYTES: usize = 17;

impl Posted {
    fn of<B: Backend>(v: &B::Ref<'_>) -> Posted {
        Posted {
            address: B::address(v),
            dtype: v.dtype(),
            len: v.len(),
        }
    }
    fn bytes(&self) -> [u8; POSTED_BYTES] {
        let mut b = [0u8; POSTED_BYTES];
        b[..8].copy_from_slice(&(self.address as u64).to_le_bytes());
        b[8..16].copy_from_slice(&(self.len as u64).to_le_bytes());
        b[16] = DType::ALL.iter().position(|&d| d == self.dtype).expect("a dtype") as u8;
        b
    }
    fn parse(b: &[u8]) -> Result<Posted> {
        let word = |i: usize| u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().expect("8 bytes"));
        let dtype = *DType::ALL
            .get(b[16] as usize)
            .ok_or_else(|| Error::Comm(format!("shared: a rank posted dtype number {}", b[16])))?;
        Ok(Posted {
            address: word(0) as usize,
            dtype,
            len: word(1) as usize,
        })
    }
    /// The view this describes.
    ///
    /// # Safety
    /// The posting rank keeps the memory alive and unwritten until the group meets again.
    unsafe fn view<'a, B: Backend>(&self) -> B::Ref<'a> {
        // SAFETY: the caller's contract; the address came from `Backend::address` of a live
        // view of this dtype and length on the same device.
        unsafe { B::view_at(self.address, self.dtype, self.len) }
    }
}

fn check(op: &str, ok: bool, why: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Comm(format!("{op}: {}", why())))
    }
}

impl<B: Ops> SharedComm<B> {
    /// The device group over the same ranks as `host` (a group of thread ranks).
    pub fn new(host: HostComm) -> Self {
        SharedComm {
            host,
            _device: PhantomData,
        }
    }

    /// Meeting 1: drain this rank's queue and swap what every rank hands out.
    fn post(&self, be: &B, v: &B::Ref<'_>) -> Result<Vec<Posted>> {
        be.synchronize()?;
        let all = self.host.gather_bytes(&Posted::of::<B>(v).bytes())?;
        all.chunks(POSTED_BYTES).map(Posted::parse).collect()
    }

    /// Meeting 2: this rank's reads are done; after it, every rank's are.
    fn done(&self, be: &B) -> Result<()> {
        be.synchronize()?;
        Comm::<weft_kernels::CpuBackend>::barrier(&self.host)
    }

    /// Post `v`, run `fill` with every rank's view, and meet again.
    fn collective(&self, be: &B, v: &B::Ref<'_>, fill: impl FnOnce(&[Posted]) -> Result<()>) -> Result<()> {
        let peers = self.post(be, v)?;
        let agree = peers.iter().all(|p| p.dtype == v.dtype() && p.len == v.len());
        let r = if agree {
            fill(&peers)
        } else {
            Err(Error::Comm(format!(
                "shared: ranks disagree on the message ({peers:?})"
            )))
        };
        // Meet even after an error, so the others are not left waiting for this rank.
        let d = self.done(be);
        r.and(d)
    }

    /// `out ← Σ parts` in rank order from zero; bf16 summed in f32 and rounded once.
    fn sum_into(&self, be: &B, mut out: B::Mut<'_>, parts: &[B::Ref<'_>]) -> Result<()> {
        let n = out.len();
        match out.dtype() {
            DType::BF16 => {
                let mut acc = be.alloc(DType::F32, n)?;
                let mut wide = be.alloc(DType::F32, n)?;
                be.fill(B::view_mut(&mut acc), 0.0, n)?;
                for p in parts {
                    be.cast(B::view_mut(&mut wide), *p, n)?;
                    be.accumulate(B::view_mut(&mut acc), B::view(&wide), n)?;
                }
                be.cast(out, B::view(&acc), n)?;
            }
            _ => {
                be.fill(B::rb(&mut out), 0.0, n)?;
                for p in parts {
                    be.accumulate(B::rb(&mut out), *p, n)?;
                }
            }
        }
        Ok(())
    }

    /// Point to point: hand `send` to `to` (when given), fill `recv` from `from` (when given),
    /// and wait until `to` has read it.
    fn exchange(
        &self,
        be: &B,
        send: Option<(B::Ref<'_>, usize)>,
        recv: Option<(B::Mut<'_>, usize)>,
    ) -> Result<()> {
        be.synchronize()?;
        if let Some((s, to)) = &send {
            self.host.send_bytes(&Posted::of::<B>(s).bytes(), *to)?;
        }
        if let Some((mut r, from)) = recv {
            let mut b = [0u8; POSTED_BYTES];
            self.host.recv_bytes(&mut b, from)?;
            let p = Posted::parse(&b)?;
            check("recv", p.dtype == r.dtype() && p.len == r.len(), || {
                format!(
                    "rank {from} sent {} {}, expected {} {}",
                    p.len,
                    p.dtype,
                    r.len(),
                    r.dtype()
                )
            })?;
            // SAFETY: `from` keeps its view alive and unwritten until this rank's receipt.
            be.cast(B::rb(&mut r), unsafe { p.view::<B>() }, p.len)?;
            be.synchronize()?;
            self.host.send_bytes(&[1], from)?;
        }
        if let Some((_, to)) = send {
            let mut ack = [0u8; 1];
            self.host.recv_bytes(&mut ack, to)?;
        }
        Ok(())
    }
}

impl<B: Ops> Comm<B> for SharedComm<B> {
    fn rank(&self) -> usize {
        Comm::<weft_kernels::CpuBackend>::rank(&self.host)
    }
    fn size(&self) -> usize {
        Comm::<weft_kernels::CpuBackend>::size(&self.host)
    }
    fn split(&self, color: usize, key: usize) -> Result<Box<dyn Comm<B>>> {
        Ok(Box::new(SharedComm::<B>::new(self.host.split_host(color, key)?)))
    }
    fn all_gather(&self, be: &B, send: B::Ref<'_>, mut recv: B::Mut<'_>) -> Result<()> {
        let (n, size) = (send.len(), self.size());
        check(
            "all_gather",
            recv.len() == n * size && recv.dtype() == send.dtype(),
            || {
                format!(
                    "recv ({} {}) must be size {size} × send ({n} {})",
                    recv.len(),
                    recv.dtype(),
                    send.dtype()
                )
            },
        )?;
        self.collective(be, &send, |peers| {
            for (r, p) in peers.iter().enumerate() {
                // SAFETY: rank r keeps its view until the group meets again.
                be.cast(
                    B::rb(&mut recv).range(r * n..(r + 1) * n),
                    unsafe { p.view::<B>() },
                    n,
                )?;
            }
            Ok(())
        })
    }
    fn reduce_scatter(&self, be: &B, send: B::Ref<'_>, recv: B::Mut<'_>) -> Result<()> {
        let (n, size, me) = (recv.len(), self.size(), self.rank());
        check(
            "reduce_scatter",
            send.len() == n * size && recv.dtype() == send.dtype(),
            || {
                format!(
                    "send ({} {}) must be size {size} × recv ({n} {})",
                    send.len(),
                    send.dtype(),
                    recv.dtype()
                )
            },
        )?;
        self.collective(be, &send, |peers| {
            // SAFETY: as in all_gather.
            let parts: Vec<B::Ref<'_>> = peers
                .iter()
                .map(|p| unsafe { p.view::<B>() }.range(me * n..(me + 1) * n))
                .collect();
            self.sum_into(be, recv, &parts)
        })
    }
    fn all_reduce(&self, be: &B, mut buf: B::Mut<'_>) -> Result<()> {
        let (n, dt) = (buf.len(), buf.dtype());
        if self.size() == 1 {
            return Ok(());
        }
        // The others read `buf` until the second meeting: sum into a copy first.
        let mut sum = be.alloc(dt, n)?;
        self.collective(be, &B::freeze(&buf), |peers| {
            // SAFETY: as in all_gather.
            let parts: Vec<B::Ref<'_>> = peers.iter().map(|p| unsafe { p.view::<B>() }).collect();
            self.sum_into(be, B::view_mut(&mut sum), &parts)
        })?;
        be.cast(B::rb(&mut buf), B::view(&sum), n)?;
        Ok(())
    }
    fn all_to_all(&self, be: &B, send: B::Ref<'_>, mut recv: B::Mut<'_>) -> Result<()> {
        let (size, me) = (self.size(), self.rank());
        check(
            "all_to_all",
            send.len() == recv.len() && send.len().is_multiple_of(size) && recv.dtype() == send.dtype(),
            || {
                format!(
                    "send ({}) and recv ({}) must be equal multiples of the group size {size}",
                    send.len(),
                    recv.len()
                )
            },
        )?;
        let n = send.len() / size;
        self.collective(be, &send, |peers| {
            for (r, p) in peers.iter().enumerate() {
                // SAFETY: as in all_gather.
                let block = unsafe { p.view::<B>() }.range(me * n..(me + 1) * n);
                be.cast(B::rb(&mut recv).range(r * n..(r + 1) * n), block, n)?;
            }
            Ok(())
        })
    }
    fn broadcast(&self, be: &B, mut buf: B::Mut<'_>, root: usize) -> Result<()> {
        let me = self.rank();
        check("broadcast", root < self.size(), || {
            format!("root {root} is not a rank of {}", self.size())
        })?;
        let n = buf.len();
        let mine = B::freeze(&buf);
        let peers = self.post(be, &mine)?;
        let r = if peers[root].dtype != mine.dtype() || peers[root].len != n {
            Err(Error::Comm(format!(
                "broadcast: rank {root} sent {:?}",
                peers[root]
            )))
        } else if me != root {
            // SAFETY: the root keeps its view until the group meets again.
            be.cast(B::rb(&mut buf), unsafe { peers[root].view::<B>() }, n)
                .map_err(Error::from)
        } else {
            Ok(())
        };
        let d = self.done(be);
        r.and(d)
    }
    fn send(&self, be: &B, buf: B::Ref<'_>, to: usize) -> Result<()> {
        self.exchange(be, Some((buf, to)), None)
    }
    fn recv(&self, be: &B, buf: B::Mut<'_>, from: usize) -> Result<()> {
        self.exchange(be, None, Some((buf, from)))
    }
    fn send_recv(&self, be: &B, send: B::Ref<'_>, to: usize, recv: B::Mut<'_>, from: usize) -> Result<()> {
        self.exchange(be, Some((send, to)), Some((recv, from)))
    }
    fn barrier(&self) -> Result<()> {
        Comm::<weft_kernels::CpuBackend>::barrier(&self.host)
    }
    fn start(&self, be: &B, op: Collective, send: B::Buffer, mut recv: B::Buffer) -> Result<Pending<B>> {
        {
            let (s, r) = (B::view(&send), B::view_mut(&mut recv));
            match op {
                Collective::AllGather => self.all_gather(be, s, r)?,
                Collective::ReduceScatter => self.reduce_scatter(be, s, r)?,
                Collective::AllToAll => self.all_to_all(be, s, r)?,
                Collective::AllReduce => {
                    be.cast(r, s, s.len())?;
                    self.all_reduce(be, B::view_mut(&mut recv))?;
                }
                Collective::Shift => {
                    let (rank, n) = (self.rank(), self.size());
                    self.send_recv(be, s, (rank + 1) % n, r, (rank + n - 1) % n)?;
                }
            }
        }
        Ok(Pending::new(Box::new(move || Ok((send, recv)))))
    }
    fn kind(&self) -> &'static str {
        "shared-device"
    }
}

/// Run `f(rank, control, data)` on `n` thread ranks: `control` a host group of the ranks,
/// `data` a [`SharedComm`] over the same ranks (a group of its own). As
/// [`super::local::run`], a failing rank stops the others.
pub fn run<B: Ops, T: Send, E: From<Error> + Send>(
    n: usize,
    f: impl Fn(usize, HostComm, SharedComm<B>) -> std::result::Result<T, E> + Sync,
) -> std::result::Result<Vec<T>, E> {
    super::local::run(n, |rank, control| {
        let data = SharedComm::new(control.split_host(0, rank)?);
        f(rank, control, data)
    })
}
