//! Collective communication.
//!
//! [`Comm`] is what the parallel layers call: all-gather, reduce-scatter, all-reduce,
//! all-to-all, broadcast and point-to-point, on a backend's buffers, blocking or started in the
//! background ([`Comm::start`] → [`Pending::wait`]) so communication overlaps compute.
//!
//! Host memory (the CPU backend) is moved by a [`Transport`]: ranks as threads in one process
//! ([`local`]) or processes over MPI ([`mpi`], feature `mpi`). On GPUs the NCCL communicator
//! ([`nccl`], feature `cuda`) implements [`Comm`] directly on device memory, one rank per
//! GPU; thread ranks that share one device use [`shared`] (copies in the device's memory).
//!
//! **Determinism.** Host reductions never use the transport's own reduction: a reduce-scatter
//! is an all-to-all followed by a sum over the ranks' contributions in rank order, and an
//! all-reduce is a reduce-scatter followed by an all-gather. For a fixed group the bits of every
//! result are therefore fixed, and the thread and MPI transports give identical bits. bf16 is
//! summed in f32 and rounded once, so no MPI user-defined operation is needed.

mod host;
pub mod local;
#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(any(feature = "cuda", feature = "cuda-12"))]
pub mod nccl;
pub mod shared;
pub mod watch;
#[cfg(any(feature = "cuda", feature = "cuda-12"))]
pub mod watchdog;

pub use host::{HostComm, Transport};

use crate::Result;
use weft_kernels::Backend;

/// A background collective's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Collective {
    /// `recv (size·n) ← concat_r send_r (n)`.
    AllGather,
    /// `recv (n) ← Σ_r send_r[rank·n..(rank+1)·n]`.
    ReduceScatter,
    /// `recv ← Σ_r send_r` (same length).
    AllReduce,
    /// `recv[r·n..] ← send_r[rank·n..]`.
    AllToAll,
    /// One step round the ring: `send` goes to rank `rank+1`, `recv` comes from `rank−1`
    /// (mod size); what ring attention does while it computes on the current block.
    Shift,
}

/// A group of ranks that talk to each other, on backend `B`'s buffers.
///
/// Every method is collective over the group (called by all of its ranks in the same order),
/// except `send`/`recv`.
pub trait Comm<B: Backend>: Send + Sync {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Split into sub-groups, like `MPI_Comm_split`: ranks with equal `color` form a group,
    /// ordered by `key` (ties by rank).
    fn split(&self, color: usize, key: usize) -> Result<Box<dyn Comm<B>>>;
    /// `recv (size·n) ← concat over ranks of send (n)`.
    fn all_gather(&self, be: &B, send: B::Ref<'_>, recv: B::Mut<'_>) -> Result<()>;
    /// `recv (n) ← Σ over ranks of this rank's block of send (size·n)`.
    fn reduce_scatter(&self, be: &B, send: B::Ref<'_>, recv: B::Mut<'_>) -> Result<()>;
    /// `buf ← Σ over ranks of buf`.
    fn all_reduce(&self, be: &B, buf: B::Mut<'_>) -> Result<()>;
    /// Block `r` of `send (size·n)` goes to rank `r`; block `r` of `recv` comes from rank `r`.
    fn all_to_all(&self, be: &B, send: B::Ref<'_>, recv: B::Mut<'_>) -> Result<()>;
    fn broadcast(&self, be: &B, buf: B::Mut<'_>, root: usize) -> Result<()>;
    fn send(&self, be: &B, buf: B::Ref<'_>, to: usize) -> Result<()>;
    fn recv(&self, be: &B, buf: B::Mut<'_>, from: usize) -> Result<()>;
    /// Send to `to` and receive from `from` at once (a ring step without deadlock).
    fn send_recv(&self, be: &B, send: B::Ref<'_>, to: usize, recv: B::Mut<'_>, from: usize) -> Result<()>;
    fn barrier(&self) -> Result<()>;
    /// Start `op` in the background on owned buffers; [`Pending::wait`] hands them back. Background
    /// collectives of one group run in the order they were started, on a communicator of
    /// their own, so they never interleave with the blocking calls above.
    fn start(&self, be: &B, op: Collective, send: B::Buffer, recv: B::Buffer) -> Result<Pending<B>>;
    /// The transport, for logs ("threads", "mpi", "nccl").
    fn kind(&self) -> &'static str;
}

type Finish<B> = Box<dyn FnOnce() -> Result<(<B as Backend>::Buffer, <B as Backend>::Buffer)> + Send>;

/// A collective in flight.
pub struct Pending<B: Backend> {
    finish: Finish<B>,
}

impl<B: Backend> Pending<B> {
    pub fn new(finish: Finish<B>) -> Self {
        Pending { finish }
    }
    /// Block until the collective is done; returns `(send, recv)`.
    pub fn wait(self) -> Result<(B::Buffer, B::Buffer)> {
        (self.finish)()
    }
}
