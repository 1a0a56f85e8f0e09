//! The NCCL watchdog (feature `cuda`): one thread per process that looks at every live NCCL
//! communicator four times a second. A communicator whose oldest collective has not finished
//! within the timeout, or that reports an asynchronous error (`ncclCommGetAsyncError`: a peer
//! died, a network failure), is aborted (`ncclCommAbort`), which ends the collectives blocked
//! on it with an error, so the rank fails and names the cause instead of hanging. The reason
//! is kept for the rank's heartbeat ([`failures`]).
//!
//! The timeout is `WEFT_NCCL_TIMEOUT_S` seconds (default 600), long enough for the first
//! collectives of a run, which wait for every rank to finish loading.

use cudarc::driver::CudaEvent;
use cudarc::nccl::{result, sys};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// A communicator's handle, while it lives.
struct Handle(sys::ncclComm_t);

// SAFETY: the handle is only used for `ncclCommGetAsyncError` and `ncclCommAbort` (which NCCL
// allows from another thread than the one issuing collectives) and for the final destroy, all
// under the lock that `close` takes.
unsafe impl Send for Handle {}

/// What the watchdog knows of one communicator: its handle and its collectives in flight.
pub(crate) struct Watched {
    /// What the communicator is (its rank and size), for the report.
    label: String,
    comm: Mutex<Option<Handle>>,
    /// `(enqueued at, an event after it)`, oldest first.
    in_flight: Mutex<VecDeque<(Instant, Arc<CudaEvent>)>>,
    aborted: Mutex<Option<String>>,
}

impl Watched {
    /// Register a communicator with the watchdog (started on first use).
    pub(crate) fn register(comm: sys::ncclComm_t, label: String) -> Arc<Watched> {
        let w = Arc::new(Watched {
            label,
            comm: Mutex::new(Some(Handle(comm))),
            in_flight: Mutex::new(VecDeque::new()),
            aborted: Mutex::new(None),
        });
        let dog = watchdog();
        dog.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(&w));
        w
    }

    /// A collective was enqueued; `done` is recorded after it.
    pub(crate) fn enqueued(&self, done: Arc<CudaEvent>) {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back((Instant::now(), done));
    }

    /// Why the watchdog aborted this communicator, if it did.
    pub(crate) fn aborted(&self) -> Option<String> {
        self.aborted.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The communicator is going: stop watching it and destroy it (unless it was aborted,
    /// which freed it), with no look of the watchdog in between.
    pub(crate) fn close(&self) {
        let mut h = self.comm.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(Handle(comm)) = h.take() {
            if self.aborted().is_none() {
                // SAFETY: the owner issues nothing more on it; the watchdog is locked out.
                let _ = unsafe { result::comm_destroy(comm) };
            }
        }
    }

    /// One look: drop finished collectives; abort on a timeout or an asynchronous error.
    fn check(&self, timeout: Duration) {
        let h = self.comm.lock().unwrap_or_else(|p| p.into_inner());
        let Some(Handle(comm)) = h.as_ref() else {
            return;
        };
        if self.aborted().is_some() {
            return;
        }
        let stuck = {
            let mut q = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            while q.front().is_some_and(|(_, e)| e.is_complete()) {
                q.pop_front();
            }
            q.front().map(|(t, _)| t.elapsed()).filter(|age| *age > timeout)
        };
        let mut state = sys::ncclResult_t::ncclSuccess;
        // SAFETY: a live communicator (`close` takes the handle under this lock).
        let queried = unsafe { sys::ncclCommGetAsyncError(*comm, &mut state) };
        let why = match (stuck, queried, state) {
            (Some(age), _, _) => Some(format!(
                "a collective has not finished after {:.0} s (WEFT_NCCL_TIMEOUT_S)",
                age.as_secs_f64()
            )),
            (_, sys::ncclResult_t::ncclSuccess, sys::ncclResult_t::ncclSuccess)
            | (_, sys::ncclResult_t::ncclSuccess, sys::ncclResult_t::ncclInProgress) => None,
            (_, sys::ncclResult_t::ncclSuccess, e) => Some(format!("asynchronous error {e:?}")),
            (_, e, _) => Some(format!("ncclCommGetAsyncError failed: {e:?}")),
        };
        if let Some(why) = why {
            let why = format!("nccl communicator {} aborted: {why}", self.label);
            tracing::error!("{why}");
            // SAFETY: as above; abort may be called while collectives are blocked on it.
            let _ = unsafe { result::comm_abort(*comm) };
            *self.aborted.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
            FAILURES.lock().unwrap_or_else(|p| p.into_inner()).push(why);
        }
    }
}

static FAILURES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// What the watchdog aborted in this process, and why (for the rank's heartbeat).
pub fn failures() -> Vec<String> {
    FAILURES.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

type Registry = Mutex<Vec<Weak<Watched>>>;

/// The registry, and the thread that looks at it.
fn watchdog() -> &'static Registry {
    static DOG: OnceLock<Arc<Registry>> = OnceLock::new();
    DOG.get_or_init(|| {
        let reg: Arc<Registry> = Arc::new(Mutex::new(Vec::new()));
        let timeout = Duration::from_secs_f64(
            std::env::var("WEFT_NCCL_TIMEOUT_S")
                .ok()
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|s| *s > 0.0)
                .unwrap_or(600.0),
        );
        let r = reg.clone();
        let spawned = std::thread::Builder::new()
            .name("weft-nccl-watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(250));
                let live: Vec<Arc<Watched>> = {
                    let mut v = r.lock().unwrap_or_else(|p| p.into_inner());
                    v.retain(|w| w.strong_count() > 0);
                    v.iter().filter_map(Weak::upgrade).collect()
                };
                for w in live {
                    w.check(timeout);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(
                "no NCCL watchdog (cannot start its thread: {e}); a hung collective will not be aborted"
            );
        }
        reg
    })
}
