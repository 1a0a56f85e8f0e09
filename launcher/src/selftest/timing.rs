//! Timing device work from the host, and the run's time limit.

use anyhow::Result;
use std::time::{Duration, Instant};
use weft_kernels::Backend;

/// The time after which no new case starts (cases not started are reported as skipped).
pub struct Deadline {
    start: Instant,
    limit: Duration,
}

impl Deadline {
    pub fn new(limit: Duration) -> Self {
        Deadline {
            start: Instant::now(),
            limit,
        }
    }
    pub fn passed(&self) -> bool {
        self.start.elapsed() >= self.limit
    }
    /// Seconds since the run started.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

/// Seconds per call of `f`, which enqueues work on `be`: one warm-up call, one timed call, then
/// (when a call is short against `min`) three batches of calls filling about `min` together,
/// keeping the best batch's mean. The queue is drained before and after each timed span, so
/// the time is the device's, not the launch's.
pub fn per_call<B: Backend>(be: &B, min: Duration, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    be.synchronize()?;
    let t = Instant::now();
    f()?;
    be.synchronize()?;
    let one = t.elapsed().as_secs_f64().max(1e-9);
    let mut best = one;
    let budget = min.as_secs_f64() / 3.0;
    if one < budget {
        let reps = ((budget / one).ceil() as usize).clamp(1, 1000);
        for _ in 0..3 {
            let t = Instant::now();
            for _ in 0..reps {
                f()?;
            }
            be.synchronize()?;
            best = best.min(t.elapsed().as_secs_f64() / reps as f64);
        }
    }
    Ok(best)
}

/// `flops` done in `seconds`, in TFLOP/s.
pub fn tflops(flops: f64, seconds: f64) -> f64 {
    flops / seconds / 1e12
}
