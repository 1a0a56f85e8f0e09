//! Memory before start: what one rank of a config will hold, from the config alone, checked
//! against the machine before anything is allocated (allocations that fail with an error
//! naming the buffer are [`crate::alloc`]'s).
//!
//! Per rank (`parallel.dp_shard` ranks share the parameters, gradients and optimizer state
//! under FSDP; `tp` splits them further):
//! - parameters, gradients: the rank's shard (the whole model in one process), in the master
//!   dtype `training.dtype`;
//! - optimizer state: AdamW keeps 2 values per parameter (first and second moment), AdEMAMix
//!   3 (plus the slow EMA), Muon and Scion 2 (momentum, and AdamW's second moment for the
//!   tensors AdamW updates) plus, while stepping, two shard-sized directions and the largest
//!   matrix's Newton–Schulz work;
//! - activations of one micro-batch: exactly what the model allocates
//!   ([`Gpt::activation_bytes_of`], [`Dit::activation_bytes_of`]);
//! - the gathered units (in `training.param_dtype`) and the full gradients (in
//!   `training.reduce_dtype`) in flight at their peak (the input and output layers stay
//!   gathered for a micro-batch; every unit's gradient waits in its reduce-scatter until the
//!   micro-batch ends); one process is a mesh of one and gathers too;
//! - transients: the initial weights drawn in f32 at start (before the optimizer state
//!   exists), and assembling or exporting the weights at the end.
//!
//! The peak is the largest of start, training and end. All ranks on one machine share its
//! memory (threads of one process, or local MPI processes), and a margin of
//! [`MARGIN_FRACTION`] of the total plus [`MARGIN_FIXED`] bytes covers the runtime, thread
//! stacks, data batches and the allocator. Byte counts are `f64`: a config far beyond any
//! machine is refused with its numbers, never overflowed.

use crate::config::ModelConfig;
pub use crate::error::human;
use crate::mesh::{layout_tp, seq_split};
use crate::model::{Dit, Gpt};
use crate::{Config, Error, Result};
use std::fmt;
use weft_kernels::CpuBackend;

/// The margin over the counted bytes, as a fraction of them.
pub const MARGIN_FRACTION: f64 = 0.10;
/// The fixed part of the margin (runtime, thread stacks, data batches): 256 MiB.
pub const MARGIN_FIXED: f64 = 256.0 * 1024.0 * 1024.0;

/// What one rank of a run holds, in bytes, and what the ranks on this machine hold together.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Estimate {
    /// Parameters of the whole model.
    pub parameters: f64,
    /// Ranks whose memory this machine holds.
    pub ranks_here: usize,
    pub params: f64,
    pub grads: f64,
    pub optimizer: f64,
    /// Muon's and Scion's working memory while stepping.
    pub optimizer_scratch: f64,
    pub activations: f64,
    /// FSDP: gathered units and gradients in flight, at their peak.
    pub in_flight: f64,
    /// Extra at start: the initial weights in f32 (freed before the optimizer state exists).
    pub at_start: f64,
    /// Extra at the end: assembling (several ranks) or exporting (one process) the weights.
    pub at_end: f64,
    /// The largest of start, training and end, for one rank.
    pub per_rank: f64,
    /// `ranks_here × per_rank` plus the margin.
    pub total: f64,
    pub margin: f64,
    #[serde(skip)]
    notes: Notes,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct Notes {
    dtype: String,
    state: &'static str,
    optimizer: String,
    activations: String,
    mesh: String,
}

/// The memory of this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HostMemory {
    pub total: u64,
    pub available: u64,
    /// The cgroup's (container's, SLURM job's) limit, when there is one below the host's.
    pub cgroup_limit: Option<u64>,
}

/// Host RAM (and the cgroup's limit, when lower) via sysinfo; `None` when it cannot be read.
pub fn host_memory() -> Option<HostMemory> {
    let mut s = sysinfo::System::new().ok()?;
    s.refresh_memory();
    let (mut total, mut available) = (s.total_memory(), s.available_memory());
    if total == 0 {
        return None;
    }
    let mut cgroup_limit = None;
    if let Some(cg) = s.cgroup_limits() {
        if cg.total_memory > 0 && cg.total_memory < total {
            cgroup_limit = Some(cg.total_memory);
            total = cg.total_memory;
            available = available.min(cg.free_memory);
        }
    }
    Some(HostMemory {
        total,
        available,
        cgroup_limit,
    })
}

impl fmt::Display for HostMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "this machine: {} available of {} total ({})",
            human(self.available as f64),
            human(self.total as f64),
            match self.cgroup_limit {
                Some(_) => "the cgroup's limit",
                None => "host RAM",
            }
        )
    }
}

/// How many ranks of `cfg` share this machine's memory: every rank when they are threads of
/// this process; under MPI (`under_mpi`) the launcher's count of local ranks, or 1 when it
/// gives none.
pub fn ranks_here(cfg: &Config, under_mpi: bool) -> usize {
    if !under_mpi {
        return cfg.parallel.world();
    }
    [
        "OMPI_COMM_WORLD_LOCAL_SIZE",
        "MPI_LOCALNRANKS",
        "SLURM_NTASKS_PER_NODE",
    ]
    .iter()
    .filter_map(|v| std::env::var(v).ok())
    .find_map(|s| {
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<usize>().ok().filter(|&n| n > 0)
    })
    .unwrap_or(1)
}

/// Elements of `e` as `f64` (exact below 2⁵³, never overflowing).
fn numel(e: &crate::Entry) -> f64 {
    e.shape.iter().map(|&d| d as f64).product()
}

/// The memory of one rank of `cfg` when `ranks_here` ranks share this machine (see the
/// module documentation for what is counted).
pub fn estimate(cfg: &Config, ranks_here: usize) -> Estimate {
    let p = &cfg.parallel;
    let t = &cfg.training;
    let prec = crate::job::Precision::of(cfg);
    let dt = prec.master.size() as f64;
    let (pd, rd) = (prec.param.size() as f64, prec.reduce.size() as f64);
    let (tp, ds) = (p.tp, p.dp_shard);
    let sharded = p.world() > 1;
    let global = layout_tp(cfg, 1);
    let local = if tp > 1 {
        layout_tp(cfg, tp)
    } else {
        global.clone()
    };
    let parameters: f64 = global.entries.iter().map(numel).sum();
    let local_n: f64 = local.entries.iter().map(numel).sum();
    // Each unit's shard (`ceil(len / dp_shard)`), as the FSDP store cuts them.
    let units: Vec<f64> = if local.overflows() {
        vec![local_n / ds as f64]
    } else {
        local
            .units()
            .iter()
            .map(|u| u.len().div_ceil(ds) as f64)
            .collect()
    };
    let shard: f64 = units.iter().sum();
    let moments = if cfg.optimizer.kind == "ademamix" {
        3.0
    } else {
        2.0
    };
    let matrix = ["muon", "scion"].contains(&cfg.optimizer.kind.as_str());
    // The largest tensor an optimizer step assembles whole (Muon: hidden matrices; Scion:
    // every tensor): the whole target, the iterate and its update (r × k each), the Gram
    // matrix and its polynomial (r × r each), and the pieces sent to and from its owner.
    let scratch = if matrix {
        let largest = global
            .entries
            .iter()
            .filter(|e| {
                cfg.optimizer.kind == "scion" || (e.role == crate::Role::Hidden && e.shape.len() == 2)
            })
            .map(|e| {
                let (a, b) = (
                    e.shape[0] as f64,
                    e.shape[1..].iter().map(|&d| d as f64).product::<f64>(),
                );
                let (r, k) = (a.min(b), a.max(b));
                6.0 * r * k + 2.0 * r * r
            })
            .fold(0.0, f64::max);
        (2.0 * shard + largest) * dt
    } else {
        0.0
    };
    let split = seq_split(cfg);
    let activations = match &cfg.model {
        ModelConfig::Dit(m) => {
            Dit::<CpuBackend>::activation_bytes_of(m, t.micro_batch, prec.param, t.recompute, split)
        }
        ModelConfig::Gpt(m) => {
            Gpt::<CpuBackend>::activation_bytes_of(m, t.micro_batch, prec.param, t.recompute, split)
        }
    };
    // Gathered units (in the compute dtype) and gradients in flight: every unit's full
    // gradient and its received shard wait in the reduce dtype until the micro-batch ends
    // (the unit being cast to it also in the master dtype); the input and output layers stay
    // gathered; the current block and the next one being fetched. One process is a mesh of
    // one and holds the same buffers.
    let in_flight = {
        let d = ds as f64;
        let all: f64 = units.iter().map(|m| m * (d + 1.0)).sum();
        let largest = units.iter().copied().fold(0.0, f64::max);
        let outer = units.first().copied().unwrap_or(0.0) + units.last().copied().unwrap_or(0.0);
        let block = if units.len() > 2 {
            units[1..units.len() - 1].iter().copied().fold(0.0, f64::max)
        } else {
            0.0
        };
        let casting = if rd != dt { d * largest * dt } else { 0.0 };
        all * rd + casting + (d * outer + 2.0 * (d + 1.0) * block) * pd
    };
    let largest_draw = global.entries.iter().map(numel).fold(0.0, f64::max);
    // Start: the initial weights drawn in f32 (this rank's tp piece, and the tensor being
    // drawn whole), plus the host copy of the shard under FSDP.
    let (local_len, global_len) = (local.len() as f64, global.len() as f64);
    let at_start = 4.0 * (local_len + largest_draw + shard);
    // End: several ranks all-gather the f32 weights (and over tp); one process copies them
    // to f32 and writes the export (its bytes, and the serialized file).
    let at_end = 4.0 * (shard * (ds as f64 + 1.0) + local_len)
        + if tp > 1 {
            4.0 * (local_len * tp as f64 + global_len)
        } else {
            0.0
        };
    let (params, grads, optimizer) = (shard * dt, shard * dt, moments * shard * dt);
    let held = params + grads + activations;
    let per_rank = (held + at_start)
        .max(held + optimizer + in_flight + scratch)
        .max(held + optimizer + at_end);
    let counted = ranks_here as f64 * per_rank;
    let margin = MARGIN_FRACTION * counted + MARGIN_FIXED;
    let (b, tokens) = (t.micro_batch, split.t);
    let notes = Notes {
        dtype: if prec.param == prec.master {
            t.dtype.clone()
        } else {
            format!("{} (computing in {})", prec.master, prec.param)
        },
        state: if sharded {
            "this rank's shard"
        } else {
            "the whole model"
        },
        optimizer: match cfg.optimizer.kind.as_str() {
            "adamw" => "AdamW: 2 moments per parameter".into(),
            "ademamix" => "AdEMAMix: 3 moments per parameter".into(),
            k => format!(
                "{}: momentum and AdamW's second moment",
                if k == "muon" { "Muon" } else { "Scion" }
            ),
        },
        activations: format!(
            "micro-batch {b} × {tokens} tokens{}{}",
            if split.tp * split.ring * split.ulysses > 1 {
                format!(", this rank's {} tokens", split.local_len())
            } else {
                String::new()
            },
            if t.recompute {
                ", recomputed per block"
            } else {
                ", kept for every block"
            }
        ),
        mesh: format!(
            "{} rank{} (dp_replicate {} × dp_shard {} × cp {} × tp {})",
            p.world(),
            if p.world() == 1 { "" } else { "s" },
            p.dp_replicate,
            p.dp_shard,
            p.cp,
            p.tp
        ),
    };
    Estimate {
        parameters,
        ranks_here,
        params,
        grads,
        optimizer,
        optimizer_scratch: scratch,
        activations,
        in_flight,
        at_start,
        at_end,
        per_rank,
        total: counted + margin,
        margin,
        notes,
    }
}

impl fmt::Display for Estimate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "memory per rank (estimate; {} parameters in {}; {}):",
            count(self.parameters),
            self.notes.dtype,
            self.notes.mesh
        )?;
        let rows = [
            ("parameters", self.params, self.notes.state),
            ("gradients", self.grads, self.notes.state),
            ("optimizer state", self.optimizer, self.notes.optimizer.as_str()),
            (
                "optimizer scratch",
                self.optimizer_scratch,
                "directions and the largest matrix's orthogonalization, while stepping",
            ),
            ("activations", self.activations, self.notes.activations.as_str()),
            (
                "FSDP in flight",
                self.in_flight,
                "gathered units and gradients being reduced, at their peak",
            ),
            (
                "+ at start",
                self.at_start,
                "initial weights drawn in f32, freed before the optimizer state",
            ),
            (
                "+ at the end",
                self.at_end,
                "assembling and exporting the weights",
            ),
        ];
        for (what, bytes, note) in rows {
            if bytes > 0.0 {
                writeln!(f, "  {what:<18} {:>11}  ({note})", human(bytes))?;
            }
        }
        writeln!(
            f,
            "  {:<18} {:>11}  (the largest of start, training and end)",
            "peak per rank",
            human(self.per_rank)
        )?;
        write!(
            f,
            "total for {} rank{} on this machine: {} + margin {} ({:.0}% + {}: runtime, data, allocator) = {}",
            self.ranks_here,
            if self.ranks_here == 1 { "" } else { "s" },
            human(self.ranks_here as f64 * self.per_rank),
            human(self.margin),
            MARGIN_FRACTION * 100.0,
            human(MARGIN_FIXED),
            human(self.total)
        )
    }
}

/// What to change when a run does not fit.
pub const ADVICE: &str = "lower training.micro_batch, set training.recompute = true, shard over more \
                          machines (parallel.dp_shard, parallel.tp), or set \
                          training.skip_memory_check = true to start anyway";

/// Whether `est` fits in `host` (`None`: unknown, taken as fitting); `Err` says by how much
/// it does not.
pub fn fits(est: &Estimate, host: Option<&HostMemory>) -> std::result::Result<(), String> {
    if !est.total.is_finite() || est.total >= u64::MAX as f64 {
        return Err(format!(
            "needs {}, more than any machine can address",
            human(est.total)
        ));
    }
    match host {
        Some(h) if est.total > h.available as f64 => Err(format!(
            "needs {}; {h}: {} short",
            human(est.total),
            human(est.total - h.available as f64)
        )),
        _ => Ok(()),
    }
}

/// Check the mesh against the model ([`crate::mesh::check_mesh`]), estimate `cfg` for
/// `ranks_here` ranks on this machine and refuse it, with the breakdown, when it cannot fit
/// (unless `training.skip_memory_check`).
pub fn check(cfg: &Config, ranks_here: usize) -> Result<Estimate> {
    crate::mesh::check_mesh(cfg, cfg.parallel.world())?;
    let est = estimate(cfg, ranks_here);
    if cfg.training.skip_memory_check {
        return Ok(est);
    }
    fits(&est, host_memory().as_ref()).map_err(|why| Error::DoesNotFit(format!("{est}\n{why}\n{ADVICE}")))?;
    Ok(est)
}

/// A count in words (`8.03 B`, `124.4 M`, `42.9 T`).
fn count(n: f64) -> String {
    match n {
        n if n >= 1e12 => format!("{:.1} T", n / 1e12),
        n if n >= 1e9 => format!("{:.2} B", n / 1e9),
        n if n >= 1e6 => format!("{:.1} M", n / 1e6),
        n => format!("{n:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_in_binary_units() {
        assert_eq!(human(512.0), "512 B");
        assert_eq!(human(1.5 * 1024.0 * 1024.0 * 1024.0), "1.50 GiB");
        assert_eq!(human(3.0 * 1024f64.powi(4)), "3.00 TiB");
        assert!(human(1e30).ends_with(" B"), "{}", human(1e30));
    }
}
