//! `[launch]`: how `weft launch` supervises a run.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Failure detection, preflight and restart policy of `weft launch`. Every key is optional.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Launch {
    /// A rank whose step has not advanced for this long is hung.
    pub hang_timeout_s: f64,
    /// How long ranks may take from start to their first step.
    pub startup_timeout_s: f64,
    /// Attempts after the first, at most.
    pub max_restarts: usize,
    /// Wait before attempt `k` is `backoff_s · 2^(k−1)`.
    pub backoff_s: f64,
    /// A rank whose median compute time over the last `straggler_window` steps exceeds
    /// `straggler_factor ×` the median of all ranks is a straggler.
    pub straggler_factor: f64,
    pub straggler_window: usize,
    /// Preflight at every attempt: a node with less free memory, or less free disk where the
    /// checkpoints go, is unhealthy and evicted before any step.
    pub min_free_mem_gib: f64,
    pub min_free_disk_gib: f64,
    /// A node whose matmul rate in the preflight is below this fraction of the median node's
    /// is slow and evicted before any step.
    pub slow_node_factor: f64,
    /// Preflight: the ranks all-reduce a known vector before the first step; a wrong sum, or
    /// a bus bandwidth below this many GB/s (0: report only), fails the attempt.
    pub min_allreduce_gbps: f64,
    /// A GPU at this temperature or above (°C), as NVML reads it at the preflight or during
    /// the run, makes its node unhealthy (so do uncorrected ECC errors, critical Xids, pages
    /// waiting for retirement and hardware slowdown).
    pub max_gpu_temp_c: f64,
    /// With no spare node left, continue on fewer nodes: `dp_shard` shrinks and
    /// `grad_accum` grows so the global batch stays the same (the checkpoint reshards).
    pub allow_shrink: bool,
    /// A rank that hears nothing from its driver for this long (the driver pings every
    /// quarter second; its connection closed or went silent) saves and stops; under SLURM it
    /// also requeues the job. If it is still running this long again (stuck in a collective),
    /// it exits at once with status 75. Values under a second risk stopping a busy run.
    pub orphan_timeout_s: f64,
}

impl Default for Launch {
    fn default() -> Self {
        Launch {
            hang_timeout_s: 60.0,
            startup_timeout_s: 300.0,
            max_restarts: 3,
            backoff_s: 1.0,
            straggler_factor: 3.0,
            straggler_window: 5,
            min_free_mem_gib: 1.0,
            min_free_disk_gib: 1.0,
            slow_node_factor: 0.5,
            min_allreduce_gbps: 0.0,
            max_gpu_temp_c: 87.0,
            allow_shrink: false,
            orphan_timeout_s: 60.0,
        }
    }
}

impl Launch {
    /// Each key's range; the error names the key.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("launch.hang_timeout_s", self.hang_timeout_s),
            ("launch.startup_timeout_s", self.startup_timeout_s),
            ("launch.straggler_factor", self.straggler_factor),
            ("launch.max_gpu_temp_c", self.max_gpu_temp_c),
            ("launch.orphan_timeout_s", self.orphan_timeout_s),
        ];
        for (key, v) in positive {
            if !(v > 0.0 && v.is_finite()) {
                return Err(Error::config(key, format!("must be positive, got {v}")));
            }
        }
        let non_negative = [
            ("launch.backoff_s", self.backoff_s),
            ("launch.min_free_mem_gib", self.min_free_mem_gib),
            ("launch.min_free_disk_gib", self.min_free_disk_gib),
            ("launch.min_allreduce_gbps", self.min_allreduce_gbps),
        ];
        for (key, v) in non_negative {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(Error::config(key, format!("must be ≥ 0, got {v}")));
            }
        }
        if !(0.0..=1.0).contains(&self.slow_node_factor) {
            return Err(Error::config(
                "launch.slow_node_factor",
                format!("must be in [0, 1], got {}", self.slow_node_factor),
            ));
        }
        if self.straggler_window == 0 {
            return Err(Error::config("launch.straggler_window", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_orphan_timeout_must_be_positive() {
        assert!(Launch::default().validate().is_ok());
        for bad in [0.0, -3.0, f64::NAN, f64::INFINITY] {
            let l = Launch {
                orphan_timeout_s: bad,
                ..Launch::default()
            };
            let e = l.validate().unwrap_err().to_string();
            assert!(
                e.contains("launch.orphan_timeout_s") && e.contains("positive"),
                "{e}"
            );
        }
    }
}
