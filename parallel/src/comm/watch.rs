//! A [`Comm`] that reports what its rank is doing, for a supervisor: how many collectives it
//! has completed and whether it is blocked in one right now. When a run hangs, the rank that
//! is *not* waiting in a collective (or has completed the fewest) is the one the others wait
//! for.

use super::{Collective, Comm, Pending};
use crate::Result;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use weft_kernels::Backend;

/// A rank's collective activity, shared by all of its groups.
#[derive(Debug, Default)]
pub struct Activity {
    /// Collectives completed.
    pub completed: AtomicU64,
    /// Collectives this rank is blocked in now (0 = computing).
    pub blocked: AtomicUsize,
}

impl Activity {
    fn enter(&self) {
        self.blocked.fetch_add(1, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.blocked.fetch_sub(1, Ordering::SeqCst);
        self.completed.fetch_add(1, Ordering::SeqCst);
    }
    pub fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::SeqCst) > 0
    }
}

/// `inner`, with every blocking call recorded in `activity`.
pub struct Watched<B: Backend> {
    inner: Box<dyn Comm<B>>,
    activity: Arc<Activity>,
}

impl<B: Backend> Watched<B> {
    pub fn new(inner: Box<dyn Comm<B>>, activity: Arc<Activity>) -> Self {
        Watched { inner, activity }
    }
    fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        self.activity.enter();
        let out = f();
        self.activity.leave();
        out
    }
}

impl<B: Backend + 'static> Comm<B> for Watched<B> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn split(&self, color: usize, key: usize) -> Result<Box<dyn Comm<B>>> {
        let inner = self.run(|| self.inner.split(color, key))?;
        Ok(Box::new(Watched::new(inner, self.activity.clone())))
    }
    fn all_gather(&self, be: &B, send: B::Ref<'_>, recv: B::Mut<'_>) -> Result<()> {
        self.run(|| self.inner.all_gather(be, send, recv))
    }
    fn reduce_scatter(&self, be: &B, send: B::Ref<'_>, recv: B::Mut<'_>) -> Result<()> {
        self.run(|| self.inner.reduce_scatter(be, send, recv))
    }
    fn all_reduce(&self, be: &B, buf: B::Mut<'_>) -> Result<()> {
        self.run(|| self.inner.all_reduce(be, buf))
    }
    fn all_to_all(&self, be: &B, send: B::Ref<'_>, recv: B::Mut<'_>) -> Result<()> {
        self.run(|| self.inner.all_to_all(be, send, recv))
    }
    fn broadcast(&self, be: &B, buf: B::Mut<'_>, root: usize) -> Result<()> {
        self.run(|| self.inner.broadcast(be, buf, root))
    }
    fn send(&self, be: &B, buf: B::Ref<'_>, to: usize) -> Result<()> {
        self.run(|| self.inner.send(be, buf, to))
    }
    fn recv(&self, be: &B, buf: B::Mut<'_>, from: usize) -> Result<()> {
        self.run(|| self.inner.recv(be, buf, from))
    }
    fn send_recv(&self, be: &B, send: B::Ref<'_>, to: usize, recv: B::Mut<'_>, from: usize) -> Result<()> {
        self.run(|| self.inner.send_recv(be, send, to, recv, from))
    }
    fn barrier(&self) -> Result<()> {
        self.run(|| self.inner.barrier())
    }
    fn start(&self, be: &B, op: Collective, send: B::Buffer, recv: B::Buffer) -> Result<Pending<B>> {
        let p = self.inner.start(be, op, send, recv)?;
        let a = self.activity.clone();
        // Waiting for a background collective is blocking too.
        Ok(Pending::new(Box::new(move || {
            a.enter();
            let out = p.wait();
            a.leave();
            out
        })))
    }
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
}
