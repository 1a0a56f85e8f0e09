//! Ranks as threads of one process: the transport of fast tests and single-process debugging.
//!
//! A group shares one slot per rank and a barrier: a collective writes its contribution,
//! waits for the group, reads what it needs and waits again. If any rank's thread fails,
//! [`run`] marks the world failed and every rank blocked in a collective returns an error
//! instead of waiting forever.

use super::host::{HostComm, Transport};
use crate::{Error, Result};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

struct World {
    failed: AtomicBool,
    /// The rank that failed first (its error is the one reported).
    first: AtomicUsize,
}

struct Group {
    size: usize,
    world: Arc<World>,
    slots: Mutex<Vec<Vec<u8>>>,
    /// (ranks arrived, generation) of the reusable barrier.
    gate: Mutex<(usize, u64)>,
    opened: Condvar,
    /// Point-to-point mailboxes, `from · size + to`.
    mail: Vec<(Mutex<VecDeque<Vec<u8>>>, Condvar)>,
    /// Sub-groups made by `split`, by (split sequence number, colour).
    children: Mutex<HashMap<(u64, usize), Arc<Group>>>,
}

impl Group {
    fn new(size: usize, world: Arc<World>) -> Arc<Group> {
        Arc::new(Group {
            size,
            world,
            slots: Mutex::new(vec![Vec::new(); size]),
            gate: Mutex::new((0, 0)),
            opened: Condvar::new(),
            mail: (0..size * size)
                .map(|_| (Mutex::new(VecDeque::new()), Condvar::new()))
                .collect(),
            children: Mutex::new(HashMap::new()),
        })
    }

    fn failed(&self) -> Result<()> {
        if self.world.failed.load(Ordering::SeqCst) {
            Err(Error::Comm(
                "another rank failed; abandoning the collective".into(),
            ))
        } else {
            Ok(())
        }
    }

    fn barrier(&self) -> Result<()> {
        let mut g = self.gate.lock().expect("gate");
        let gen = g.1;
        g.0 += 1;
        if g.0 == self.size {
            *g = (0, gen + 1);
            self.opened.notify_all();
            return Ok(());
        }
        while g.1 == gen {
            self.failed()?;
            g = self
                .opened
                .wait_timeout(g, Duration::from_millis(50))
                .expect("gate")
                .0;
        }
        Ok(())
    }

    /// Publish `mine`, wait for everyone, let `read` see all slots, wait again.
    fn exchange(&self, rank: usize, mine: Vec<u8>, read: impl FnOnce(&[Vec<u8>])) -> Result<()> {
        self.failed()?;
        self.slots.lock().expect("slots")[rank] = mine;
        self.barrier()?;
        read(&self.slots.lock().expect("slots"));
        self.barrier()
    }
}

/// One rank's end of a thread group.
pub struct LocalTransport {
    group: Arc<Group>,
    rank: usize,
    splits: AtomicU64,
}

fn check_len(op: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::Comm(format!(
            "{op}: ranks disagree on the message size ({got} vs {want} bytes)"
        )))
    }
}

impl Transport for LocalTransport {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.group.size
    }
    fn split(&self, color: usize, key: usize) -> Result<Box<dyn Transport>> {
        let seq = self.splits.fetch_add(1, Ordering::SeqCst);
        let mut me = color.to_le_bytes().to_vec();
        me.extend_from_slice(&key.to_le_bytes());
        let mut all = Vec::new();
        self.group.exchange(self.rank, me, |s| all = s.to_vec())?;
        let word =
            |b: &[u8], i: usize| usize::from_le_bytes(b[8 * i..8 * i + 8].try_into().expect("8 bytes"));
        let mut members: Vec<(usize, usize)> = (0..self.group.size)
            .filter(|&r| word(&all[r], 0) == color)
            .map(|r| (word(&all[r], 1), r))
            .collect();
        members.sort();
        let rank = members
            .iter()
            .position(|&(_, r)| r == self.rank)
            .expect("member of own colour");
        let child = self
            .group
            .children
            .lock()
            .expect("children")
            .entry((seq, color))
            .or_insert_with(|| Group::new(members.len(), self.group.world.clone()))
            .clone();
        Ok(Box::new(LocalTransport {
            group: child,
            rank,
            splits: AtomicU64::new(0),
        }))
    }
    fn all_gather(&self, send: &[u8], recv: &mut [u8]) -> Result<()> {
        check_len("all_gather", recv.len(), send.len() * self.group.size)?;
        let n = send.len();
        let mut res = Ok(());
        self.group.exchange(self.rank, send.to_vec(), |s| {
            for (r, slot) in s.iter().enumerate() {
                if slot.len() != n {
                    res = check_len("all_gather", slot.len(), n);
                    return;
                }
                recv[r * n..(r + 1) * n].copy_from_slice(slot);
            }
        })?;
        res
    }
    fn all_to_all(&self, send: &[u8], recv: &mut [u8]) -> Result<()> {
        check_len("all_to_all", recv.len(), send.len())?;
        let n = send.len() / self.group.size;
        let me = self.rank;
        let mut res = Ok(());
        self.group.exchange(self.rank, send.to_vec(), |s| {
            for (r, slot) in s.iter().enumerate() {
                if slot.len() != send.len() {
                    res = check_len("all_to_all", slot.len(), send.len());
                    return;
                }
                recv[r * n..(r + 1) * n].copy_from_slice(&slot[me * n..(me + 1) * n]);
            }
        })?;
        res
    }
    fn broadcast(&self, buf: &mut [u8], root: usize) -> Result<()> {
        let mine = if self.rank == root {
            buf.to_vec()
        } else {
            Vec::new()
        };
        let mut res = Ok(());
        self.group.exchange(self.rank, mine, |s| {
            res = check_len("broadcast", s[root].len(), buf.len());
            if res.is_ok() {
                buf.copy_from_slice(&s[root]);
            }
        })?;
        res
    }
    fn send(&self, buf: &[u8], to: usize) -> Result<()> {
        let (q, cv) = &self.group.mail[self.rank * self.group.size + to];
        q.lock().expect("mail").push_back(buf.to_vec());
        cv.notify_all();
        Ok(())
    }
    fn recv(&self, buf: &mut [u8], from: usize) -> Result<()> {
        let (q, cv) = &self.group.mail[from * self.group.size + self.rank];
        let mut g = q.lock().expect("mail");
        loop {
            if let Some(m) = g.pop_front() {
                check_len("recv", m.len(), buf.len())?;
                buf.copy_from_slice(&m);
                return Ok(());
            }
            self.group.failed()?;
            g = cv.wait_timeout(g, Duration::from_millis(50)).expect("mail").0;
        }
    }
    fn send_recv(&self, send: &[u8], to: usize, recv: &mut [u8], from: usize) -> Result<()> {
        self.send(send, to)?;
        self.recv(recv, from)
    }
    fn barrier(&self) -> Result<()> {
        self.group.barrier()
    }
    fn kind(&self) -> &'static str {
        "threads"
    }
}

/// Run `f(rank, world_comm)` on `n` threads, one per rank, and collect the results in rank
/// order. A rank that returns an error or panics fails the world, so the others stop too;
/// the first error is returned.
pub fn run<T: Send, E: From<Error> + Send>(
    n: usize,
    f: impl Fn(usize, HostComm) -> std::result::Result<T, E> + Sync,
) -> std::result::Result<Vec<T>, E> {
    let world = Arc::new(World {
        failed: AtomicBool::new(false),
        first: AtomicUsize::new(usize::MAX),
    });
    let group = Group::new(n, world.clone());
    let results: Vec<std::result::Result<T, E>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|rank| {
                let (group, world, f) = (group.clone(), world.clone(), &f);
                std::thread::Builder::new()
                    .name(format!("rank-{rank}"))
                    .spawn_scoped(s, move || {
                        let t = LocalTransport {
                            group,
                            rank,
                            splits: AtomicU64::new(0),
                        };
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            f(rank, HostComm::new(Box::new(t)))
                        }));
                        let r = match r {
                            Ok(r) => r,
                            Err(_) => Err(Error::Comm(format!("rank {rank} panicked")).into()),
                        };
                        if r.is_err() {
                            let _ = world.first.compare_exchange(
                                usize::MAX,
                                rank,
                                Ordering::SeqCst,
                                Ordering::SeqCst,
                            );
                            world.failed.store(true, Ordering::SeqCst);
                        }
                        r
                    })
                    .expect("spawn rank thread")
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect()
    });
    let first = world.first.load(Ordering::SeqCst);
    let mut out = Vec::with_capacity(n);
    let mut err = None;
    for (rank, r) in results.into_iter().enumerate() {
        match r {
            Ok(v) => out.push(v),
            Err(e) if rank == first || err.is_none() && first == usize::MAX => err = Some(e),
            Err(_) => {}
        }
    }
    match err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}
