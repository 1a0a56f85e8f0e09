//! One rank per process over MPI (rsmpi): started with `mpirun -n N weft train …` on one
//! machine or `srun --mpi=pmix weft train …` on SLURM.
//!
//! Sub-groups are `MPI_Comm_split`; each group's background collectives run on an
//! `MPI_Comm_split` duplicate from their own thread, so MPI is initialized with
//! `MPI_THREAD_MULTIPLE`. Reductions are done by weft in rank order on top of
//! `MPI_Alltoall` (see [`super`]), which is also why bf16 needs no user-defined MPI operation.

use super::host::{HostComm, Transport};
use crate::{Error, Result};
use mpi::environment::Universe;
use mpi::topology::{Color, Communicator, SimpleCommunicator};
use mpi::traits::*;
use mpi::Threading;

/// The MPI environment of this process. Dropping it finalizes MPI, so it must outlive every
/// communicator made from it.
pub struct MpiWorld {
    universe: Universe,
}

impl MpiWorld {
    /// Initialize MPI with full thread support. Fails with a clear error when the process was
    /// not started by an MPI launcher that provides it.
    pub fn init() -> Result<MpiWorld> {
        let (universe, level) = mpi::initialize_with_threading(Threading::Multiple)
            .ok_or_else(|| Error::Comm("MPI was already initialized in this process".into()))?;
        if level < Threading::Multiple {
            return Err(Error::Comm(format!(
                "this MPI library provides thread level {level:?}; weft needs MPI_THREAD_MULTIPLE \
                 (background collectives run on their own thread)"
            )));
        }
        Ok(MpiWorld { universe })
    }
    /// The world communicator.
    pub fn comm(&self) -> HostComm {
        HostComm::new(Box::new(MpiTransport {
            comm: self.universe.world(),
        }))
    }
    pub fn rank(&self) -> usize {
        self.universe.world().rank() as usize
    }
    pub fn size(&self) -> usize {
        self.universe.world().size() as usize
    }
}

/// An MPI communicator as a byte transport.
pub struct MpiTransport {
    comm: SimpleCommunicator,
}

// SAFETY: MPI is initialized with MPI_THREAD_MULTIPLE (checked in `MpiWorld::init`), under
// which a communicator handle may be used from any thread. weft never issues two collectives
// on one communicator concurrently: background work runs on a split duplicate.
unsafe impl Send for MpiTransport {}
unsafe impl Sync for MpiTransport {}

fn rank_i32(r: usize) -> i32 {
    i32::try_from(r).expect("rank fits in i32")
}

impl Transport for MpiTransport {
    fn rank(&self) -> usize {
        self.comm.rank() as usize
    }
    fn size(&self) -> usize {
        self.comm.size() as usize
    }
    fn split(&self, color: usize, key: usize) -> Result<Box<dyn Transport>> {
        let color = Color::with_value(
            i32::try_from(color).map_err(|_| Error::Comm("split colour too large".into()))?,
        );
        let comm = self
            .comm
            .split_by_color_with_key(color, rank_i32(key))
            .ok_or_else(|| Error::Comm("MPI_Comm_split returned no communicator".into()))?;
        Ok(Box::new(MpiTransport { comm }))
    }
    fn all_gather(&self, send: &[u8], recv: &mut [u8]) -> Result<()> {
        self.comm.all_gather_into(send, recv);
        Ok(())
    }
    fn all_to_all(&self, send: &[u8], recv: &mut [u8]) -> Result<()> {
        self.comm.all_to_all_into(send, recv);
        Ok(())
    }
    fn broadcast(&self, buf: &mut [u8], root: usize) -> Result<()> {
        self.comm.process_at_rank(rank_i32(root)).broadcast_into(buf);
        Ok(())
    }
    fn send(&self, buf: &[u8], to: usize) -> Result<()> {
        self.comm.process_at_rank(rank_i32(to)).send(buf);
        Ok(())
    }
    fn recv(&self, buf: &mut [u8], from: usize) -> Result<()> {
        self.comm.process_at_rank(rank_i32(from)).receive_into(buf);
        Ok(())
    }
    fn send_recv(&self, send: &[u8], to: usize, recv: &mut [u8], from: usize) -> Result<()> {
        let (dst, src) = (
            self.comm.process_at_rank(rank_i32(to)),
            self.comm.process_at_rank(rank_i32(from)),
        );
        mpi::point_to_point::send_receive_into(send, &dst, recv, &src);
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        self.comm.barrier();
        Ok(())
    }
    fn kind(&self) -> &'static str {
        "mpi"
    }
}
