//! The preflight of every attempt: each rank reports its node's free memory, free disk where
//! the checkpoints go, a short matmul rate and its GPUs' health (NVML) when it joins, then the
//! result of an all-reduce check; the driver evicts a node that is short of memory or disk,
//! much slower than the median node, or has an unhealthy GPU, and refuses a run whose
//! all-reduce is wrong or slower than the floor — all before any step.

use crate::launch::median;
use crate::store::Board;

/// The first rank whose node fails the preflight: too little free memory or disk, or a matmul
/// rate well below the median node's.
pub fn preflight(
    b: &Board,
    l: &weft_trainer::config::Launch,
) -> Option<(usize, String, &'static str, String)> {
    // A node's rate is its best rank's (ranks of one node measure at the same time and share
    // its cores); nodes are compared with the median node.
    let mut per_host: std::collections::BTreeMap<&str, f64> = Default::default();
    for r in b.ranks.values() {
        if let Some(h) = &r.health {
            let e = per_host.entry(r.host.as_str()).or_insert(0.0);
            *e = e.max(h.gemm_gflops);
        }
    }
    let mid = median(&mut per_host.values().copied().collect::<Vec<_>>());
    let mut ranks: Vec<_> = b.ranks.iter().collect();
    ranks.sort_by_key(|(&k, _)| k);
    for (&k, r) in ranks {
        let Some(h) = &r.health else { continue };
        let gpu = h
            .gpus
            .iter()
            .find_map(|g| crate::gpu::problem(g, l.max_gpu_temp_c));
        let why = if let Some(gpu) = gpu {
            Some(("gpu_health", gpu))
        } else if h.mem_free_gib < l.min_free_mem_gib {
            Some((
                "unhealthy",
                format!(
                    "{:.2} GiB of memory free < launch.min_free_mem_gib = {}",
                    h.mem_free_gib, l.min_free_mem_gib
                ),
            ))
        } else if h.disk_free_gib < l.min_free_disk_gib {
            Some((
                "unhealthy",
                format!(
                    "{:.2} GiB free where checkpoints go < launch.min_free_disk_gib = {}",
                    h.disk_free_gib, l.min_free_disk_gib
                ),
            ))
        } else if per_host[r.host.as_str()] < l.slow_node_factor * mid {
            let rate = per_host[r.host.as_str()];
            Some((
                "slow_node",
                format!("matmul at {rate:.1} GFLOP/s vs the median node's {mid:.1}"),
            ))
        } else {
            None
        };
        if let Some((kind, detail)) = why {
            return Some((k, r.host.clone(), kind, format!("preflight: {detail}")));
        }
    }
    None
}

/// Once every rank has reported its all-reduce check: the first rank that saw a wrong sum, or
/// the slowest rank when the bus bandwidth is below `launch.min_allreduce_gbps`.
/// `None` while reports are missing or when all is well.
pub fn comm_preflight(
    b: &Board,
    l: &weft_trainer::config::Launch,
    world: usize,
) -> Option<(usize, String, &'static str, String)> {
    let checks: Vec<(usize, &str, &crate::store::CommCheck)> = b
        .ranks
        .iter()
        .filter_map(|(&k, r)| Some((k, r.host.as_str(), r.comm.as_ref()?)))
        .collect();
    if checks.len() < world {
        return None;
    }
    if let Some((k, host, _)) = checks.iter().filter(|c| !c.2.ok).min_by_key(|c| c.0) {
        let detail = format!("preflight: rank {k}'s all-reduce of a known vector gave a wrong sum");
        return Some((*k, host.to_string(), "unhealthy", detail));
    }
    let (k, host, c) = checks
        .iter()
        .min_by(|a, b| a.2.busbw_gbps.total_cmp(&b.2.busbw_gbps))?;
    (c.busbw_gbps < l.min_allreduce_gbps).then(|| {
        let detail = format!(
            "preflight: all-reduce bus bandwidth {:.2} GB/s < launch.min_allreduce_gbps = {}",
            c.busbw_gbps, l.min_allreduce_gbps
        );
        (*k, host.to_string(), "slow_network", detail)
    })
}

/// A rank whose node's GPUs went bad during the run (NVML readings every few seconds).
pub fn gpu_during_run(b: &Board, l: &weft_trainer::config::Launch) -> Option<(usize, String, String)> {
    let mut ranks: Vec<_> = b.ranks.iter().collect();
    ranks.sort_by_key(|(&k, _)| k);
    ranks.into_iter().find_map(|(&k, r)| {
        let why = r
            .gpus
            .iter()
            .find_map(|g| crate::gpu::problem(g, l.max_gpu_temp_c))?;
        Some((k, r.host.clone(), why))
    })
}
