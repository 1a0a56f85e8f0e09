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
    coord::step_done();
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

/// Coordinate checks (`weft coord-check`): the mean |activation| of each layer type, per
/// step. Off unless switched on; the models' forward passes then report what they compute.
pub mod coord {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    static ON: AtomicBool = AtomicBool::new(false);
    /// This step's `(sum of means, count)` per layer type, and the finished steps.
    static NOW: Mutex<BTreeMap<&'static str, (f64, usize)>> = Mutex::new(BTreeMap::new());
    static STEPS: Mutex<Vec<BTreeMap<String, f64>>> = Mutex::new(Vec::new());

    /// Start recording (clearing what was recorded) or stop.
    pub fn enable(on: bool) {
        ON.store(on, Ordering::SeqCst);
        if let (Ok(mut n), Ok(mut s)) = (NOW.lock(), STEPS.lock()) {
            n.clear();
            s.clear();
        }
    }

    pub(crate) fn on() -> bool {
        ON.load(Ordering::Relaxed)
    }

    /// One layer's mean |activation| in this step.
    pub(crate) fn record(kind: &'static str, mean_abs: f64) {
        if let Ok(mut n) = NOW.lock() {
            let e = n.entry(kind).or_insert((0.0, 0));
            e.0 += mean_abs;
            e.1 += 1;
        }
    }

    /// Close the step: its averages per layer type join the list.
    pub(crate) fn step_done() {
        if !on() {
            return;
        }
        if let (Ok(mut n), Ok(mut s)) = (NOW.lock(), STEPS.lock()) {
            s.push(
                n.iter()
                    .map(|(k, (sum, c))| (k.to_string(), sum / *c as f64))
                    .collect(),
            );
            n.clear();
        }
    }

    /// Per step (in order), the mean |activation| of each layer type; clears the record.
    pub fn take() -> Vec<BTreeMap<String, f64>> {
        STEPS
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default()
    }
}
