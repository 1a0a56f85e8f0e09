//! The preflight of every attempt: each rank reports its node's free memory, free disk where
//! the checkpoints go, and a short matmul rate when it joins; the driver evicts a node that is
//! short of memory or disk, or much slower than the median node, before any step.

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
        let why = if h.mem_free_gib < l.min_free_mem_gib {
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
