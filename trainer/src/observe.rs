//! Notifications for whoever supervises the run: `weft launch` turns them into heartbeats
//! (step, step time) and failure reports (a checkpoint save that failed) to its driver.
//! Without a hook they cost nothing.

use std::sync::OnceLock;

/// Called after every optimizer step with `(rank, steps completed, step seconds, seconds of
/// it blocked in collectives)`.
pub type StepHook = Box<dyn Fn(usize, u64, f64, f64) + Send + Sync>;

static HOOK: OnceLock<StepHook> = OnceLock::new();

/// Install the hook (once per process); `false` if one is already installed.
pub fn set_step_hook(hook: StepHook) -> bool {
    HOOK.set(hook).is_ok()
}

pub(crate) fn step_done(rank: usize, step: u64, seconds: f64, comm: f64) {
    if let Some(h) = HOOK.get() {
        h(rank, step, seconds, comm)
    }
}

/// Called with `(rank, step, error)` when a rank's checkpoint save failed (training goes on).
pub type SaveHook = Box<dyn Fn(usize, u64, &str) + Send + Sync>;

static SAVE_HOOK: OnceLock<SaveHook> = OnceLock::new();

/// Install the save-failure hook (once per process); `false` if one is already installed.
pub fn set_save_hook(hook: SaveHook) -> bool {
    SAVE_HOOK.set(hook).is_ok()
}

pub(crate) fn save_failed(rank: usize, step: u64, error: &str) {
    if let Some(h) = SAVE_HOOK.get() {
        h(rank, step, error)
    }
}

/// Each rank's collective activity (registered by whoever wraps its communicator in
/// [`weft_parallel::comm::watch::Watched`]).
static ACTIVITY: std::sync::Mutex<Vec<(usize, std::sync::Arc<weft_parallel::comm::watch::Activity>)>> =
    std::sync::Mutex::new(Vec::new());

/// Record `rank`'s collective activity for [`activity`].
pub fn set_activity(rank: usize, a: std::sync::Arc<weft_parallel::comm::watch::Activity>) {
    if let Ok(mut v) = ACTIVITY.lock() {
        v.retain(|(r, _)| *r != rank);
        v.push((rank, a));
    }
}

/// `(rank, collectives completed, blocked in one now)` of every registered rank.
pub fn activity() -> Vec<(usize, u64, bool)> {
    use std::sync::atomic::Ordering;
    ACTIVITY
        .lock()
        .map(|v| {
            v.iter()
                .map(|(r, a)| (*r, a.completed.load(Ordering::SeqCst), a.is_blocked()))
                .collect()
        })
        .unwrap_or_default()
}
