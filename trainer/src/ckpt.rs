//! Training state in checkpoints ([`weft_checkpoint`]): which elements of which global tensor
//! each rank's flat buffers hold ([`ShardMap`]), saving them in the background
//! ([`Checkpointer`]) and loading them on any mesh ([`load`]).
//!
//! A run's state is three buffers in the model's layout — parameters (`model.<name>`) and the
//! AdamW moments (`optim.m.<name>`, `optim.v.<name>`) — plus the step and the optimizer's
//! step count. The data position needs nothing more: every sample is a function of the seed
//! and its global index, and the global order does not depend on the mesh.

use crate::shard::Run;
pub use crate::shard::ShardMap;
use crate::{Config, Error, Layout, Result};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use weft_checkpoint as ck;
use weft_kernels::{DType, HostVec};

mod resume;
pub use resume::{find_resume, open_step};

/// Set (by the launcher's SIGTERM/SIGUSR1 handler) to ask the training loop to save and stop
/// at the next step boundary — how SLURM preemption ends a job without losing steps.
pub fn stop_flag() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    static FLAG: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
        std::sync::OnceLock::new();
    FLAG.get_or_init(Default::default).clone()
}

/// Whether a stop was requested in this process.
pub fn stop_requested() -> bool {
    stop_flag().load(std::sync::atomic::Ordering::SeqCst)
}

/// The tensors of a run's state: the parameters and the optimizer's buffers (AdamW's moments,
/// and AdEMAMix's slow EMA), in the order [`crate::optim::AdamWState::buffers`] gives them.
pub fn parts(cfg: &Config) -> Vec<&'static str> {
    let mut p = vec!["model", "optim.m", "optim.v"];
    if cfg.optimizer.kind == "ademamix" {
        p.push("optim.m2");
    }
    p
}

/// `model` and the optimizer's buffers, each with its part name.
pub fn named<T>(cfg: &Config, model: T, optim: Vec<T>) -> Vec<(&'static str, T)> {
    parts(cfg)
        .into_iter()
        .zip(std::iter::once(model).chain(optim))
        .collect()
}

/// The runs `map`'s rank writes, merged into strided extents where they line up (a column
/// slice of a matrix is one extent): `(entry, extent, local offset)`.
fn extents(map: &ShardMap) -> Vec<(usize, ck::Extent, usize)> {
    let mut out: Vec<(usize, ck::Extent, usize)> = vec![];
    for (r, _) in map.runs.iter().zip(&map.writes).filter(|(_, &w)| w) {
        if let Some((entry, e, local)) = out.last_mut() {
            let next_local = *local + (e.numel() as usize);
            let stride = if e.count == 1 {
                r.global.wrapping_sub(e.start)
            } else {
                e.stride
            };
            if *entry == r.entry
                && e.len == r.len
                && r.local == next_local
                && stride >= e.len
                && r.global == e.start + e.count * stride
            {
                e.stride = stride;
                e.count += 1;
                continue;
            }
        }
        out.push((r.entry, ck::Extent::run(r.global, r.len), r.local));
    }
    out
}

/// Every global tensor of the state (`global`: the model at `tp = 1`).
pub fn tensor_metas(global: &Layout, dtype: DType, parts: &[&str]) -> Vec<ck::TensorMeta> {
    let dt = match dtype {
        DType::F64 => ck::DType::F64,
        _ => ck::DType::F32,
    };
    parts
        .iter()
        .flat_map(|part| {
            global.entries.iter().map(move |e| ck::TensorMeta {
                key: format!("{part}.{}", e.name),
                dtype: dt,
                shape: e.shape.iter().map(|&d| d as u64).collect(),
            })
        })
        .collect()
}

/// A hash of what a checkpoint's tensors depend on: the model and the parameter dtype.
pub fn config_hash(cfg: &Config) -> String {
    let text = format!(
        "{}\n{}",
        toml::to_string(&cfg.model).expect("the model config serializes"),
        cfg.training.dtype
    );
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016x}")
}

// The format is little-endian; the staging copy is a plain memory copy.
#[cfg(not(target_endian = "little"))]
compile_error!("weft checkpoints are written from little-endian memory");

fn le_bytes(buf: &HostVec, local: usize, n: usize, out: &mut Vec<u8>) -> Result<()> {
    match buf {
        HostVec::F32(v) => out.extend_from_slice(bytemuck::cast_slice(&v[local..local + n])),
        HostVec::F64(v) => out.extend_from_slice(bytemuck::cast_slice(&v[local..local + n])),
        other => return Err(Error::Other(format!("cannot checkpoint {} state", other.dtype()))),
    }
    Ok(())
}

/// The saved state besides tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct State {
    /// Optimizer steps completed.
    pub step: u64,
    /// AdamW's step count (bias correction).
    pub adam_step: u32,
    /// Samples consumed (`step × global batch`), the data position.
    pub samples_seen: u64,
}

/// Load this rank's elements of `bufs` (see [`named`]) from `c`.
pub fn load(
    c: &ck::Checkpoint,
    map: &ShardMap,
    layout: &Layout,
    bufs: Vec<(&str, &mut HostVec)>,
) -> Result<State> {
    load_parts(c, map, layout, bufs)?;
    serde_json::from_value(c.manifest.state.clone())
        .map_err(|e| Error::Other(format!("checkpoint {}: state: {e}", c.dir.display())))
}

fn load_parts(
    c: &ck::Checkpoint,
    map: &ShardMap,
    layout: &Layout,
    bufs: Vec<(&str, &mut HostVec)>,
) -> Result<()> {
    for (part, buf) in bufs {
        for (i, e) in layout.entries.iter().enumerate() {
            let key = format!("{part}.{}", e.name);
            let runs: Vec<&Run> = map.runs.iter().filter(|r| r.entry == i).collect();
            if runs.is_empty() {
                continue;
            }
            let meta = c.manifest.tensor(&key).ok_or_else(|| {
                Error::Other(format!("checkpoint {} has no tensor `{key}`", c.dir.display()))
            })?;
            let es = match meta.dtype {
                ck::DType::F32 => 4,
                ck::DType::F64 => 8,
            };
            let want: Vec<(u64, u64)> = runs.iter().map(|r| (r.global, r.len)).collect();
            let total: u64 = want.iter().map(|w| w.1).sum();
            let mut bytes = vec![0u8; (total as usize) * es];
            c.read(&key, &want, &mut bytes)?;
            let mut at = 0;
            for r in runs {
                let src = &bytes[at * es..(at + r.len as usize) * es];
                let vals = src.chunks(es).map(|b| match es {
                    4 => f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64,
                    _ => f64::from_le_bytes(b.try_into().expect("8 bytes")),
                });
                match buf {
                    HostVec::F32(v) => v[r.local..r.local + r.len as usize]
                        .iter_mut()
                        .zip(vals)
                        .for_each(|(d, s)| *d = s as f32),
                    HostVec::F64(v) => v[r.local..r.local + r.len as usize]
                        .iter_mut()
                        .zip(vals)
                        .for_each(|(d, s)| *d = s),
                    other => return Err(Error::Other(format!("cannot load {} state", other.dtype()))),
                }
                at += r.len as usize;
            }
        }
    }
    Ok(())
}

/// The config a checkpoint was saved with (checked by [`Config::validate`]).
pub fn saved_config(c: &ck::Checkpoint) -> Result<Config> {
    let text = c.manifest.state["config"]
        .as_str()
        .ok_or_else(|| Error::Other(format!("checkpoint {} carries no config", c.dir.display())))?;
    let cfg: Config = toml::from_str(text)
        .map_err(|e| Error::Other(format!("checkpoint {}: its config: {e}", c.dir.display())))?;
    cfg.validate()
        .map_err(|e| Error::Other(format!("checkpoint {}: its config: {e}", c.dir.display())))?;
    Ok(cfg)
}

/// The model parameters of a checkpoint, whole (for export), with their layout and config.
/// Every parameter tensor of the config's layout must be stored with the same shape: the
/// manifest verified against the files' sizes, so nothing larger than the files is allocated.
pub fn read_model(c: &ck::Checkpoint) -> Result<(Config, Layout, Vec<f32>)> {
    let cfg = saved_config(c)?;
    let layout = crate::job::layout_of(&cfg);
    for e in &layout.entries {
        let key = format!("model.{}", e.name);
        let want: Vec<u64> = e.shape.iter().map(|&d| d as u64).collect();
        match c.manifest.tensor(&key) {
            Some(t) if t.shape == want => {}
            found => {
                return Err(Error::Other(format!(
                    "checkpoint {}: its config has `{key}` of shape {want:?}, the checkpoint {}",
                    c.dir.display(),
                    found.map_or("does not store it".into(), |t| format!("stores {:?}", t.shape))
                )))
            }
        }
    }
    let n = layout.len();
    let mut p = HostVec::from(vec![0f64; n]);
    load_parts(c, &ShardMap::whole(&layout), &layout, vec![("model", &mut p)])?;
    let HostVec::F64(p) = p else {
        unreachable!("allocated as f64")
    };
    Ok((cfg, layout, p.iter().map(|&x| x as f32).collect()))
}

/// Saves a rank's state every `checkpoint.interval` steps through the background writer, and
/// reports when each save is durable (or failed: training goes on and the next interval
/// tries again).
pub struct Checkpointer {
    saver: ck::Saver,
    staging: Vec<ck::RankPiece>,
    map: ShardMap,
    names: Vec<String>,
    root: PathBuf,
    /// The attempt id of this run's saves, the same on every rank.
    attempt: u64,
    rank: usize,
    ranks: usize,
    head: Option<ck::Head>,
    interval: u64,
    /// Time the training loop spent staging and waiting for saves.
    pub stall: Duration,
    pub saves: usize,
}

impl Checkpointer {
    /// `head`: set on the committing rank (world rank 0).
    pub fn new(
        cfg: &Config,
        layout: &Layout,
        map: ShardMap,
        rank: usize,
        ranks: usize,
        head: Option<ck::Head>,
    ) -> Self {
        Checkpointer {
            saver: ck::Saver::new(),
            staging: vec![],
            names: layout.entries.iter().map(|e| e.name.clone()).collect(),
            map,
            root: cfg.checkpoint_dir(),
            attempt: ck::new_attempt(),
            rank,
            ranks,
            head,
            interval: cfg.checkpoint.interval,
            stall: Duration::ZERO,
            saves: 0,
        }
    }

    /// Save under attempt id `attempt` (one that every rank of the run was given) instead of
    /// this process's own.
    pub fn with_attempt(mut self, attempt: u64) -> Self {
        self.attempt = attempt;
        self
    }

    /// The attempt id this rank's saves use.
    pub fn attempt(&self) -> u64 {
        self.attempt
    }

    /// The committing rank's fixed part of every manifest.
    pub fn head(cfg: &Config, global: &Layout, mesh: Vec<usize>) -> ck::Head {
        ck::Head {
            config_hash: config_hash(cfg),
            mesh,
            // The run's config travels with its checkpoints (export, inspection).
            state: serde_json::json!({ "config": cfg.to_toml() }),
            tensors: tensor_metas(global, crate::job::dtype_of(cfg), &parts(cfg)),
            keep: cfg.checkpoint.keep,
            timeout: Duration::from_secs_f64(cfg.checkpoint.commit_timeout_s),
        }
    }

    /// Whether a save is due after `step` completed steps (every `checkpoint.interval`).
    pub fn due(&self, step: u64) -> bool {
        self.interval > 0 && step.is_multiple_of(self.interval)
    }

    /// After step `state.step` (completed steps): stage and hand off a save if it is due (or
    /// `force`d, before an exit). `bufs` are read only then.
    pub fn after_step(&mut self, state: State, bufs: &[(&str, &HostVec)], force: bool) -> Result<()> {
        if let Some(r) = self.saver.poll() {
            self.report(r);
        }
        if !self.due(state.step) && !force {
            return Ok(());
        }
        let t = Instant::now();
        // Staging reuses the previous save's buffers (the writer hands them back).
        let mut staging = std::mem::take(&mut self.staging);
        let extents = extents(&self.map);
        staging.resize_with(extents.len() * bufs.len(), || ck::RankPiece {
            tensor: String::new(),
            extent: ck::Extent::run(0, 0),
            data: vec![],
        });
        staging.truncate(extents.len() * bufs.len());
        let mut k = 0;
        for &(part, buf) in bufs {
            for &(entry, extent, local) in &extents {
                let p = &mut staging[k];
                p.tensor = format!("{part}.{}", self.names[entry]);
                p.extent = extent;
                p.data.clear();
                le_bytes(buf, local, extent.numel() as usize, &mut p.data)?;
                k += 1;
            }
        }
        let commit = self.head.clone().map(|mut h| {
            let s = serde_json::to_value(state).expect("state serializes");
            if let (Some(dst), serde_json::Value::Object(src)) = (h.state.as_object_mut(), s) {
                dst.extend(src);
            }
            h
        });
        let job = ck::SaveJob {
            root: self.root.clone(),
            step: state.step,
            attempt: self.attempt,
            rank: self.rank,
            ranks: self.ranks,
            pieces: staging,
            commit,
        };
        let prev = self.saver.submit(job)?;
        self.stall += t.elapsed();
        if let Some(r) = prev {
            self.report(r);
        }
        Ok(())
    }

    fn report(&mut self, r: ck::SaveReport) {
        match &r.result {
            Ok(Some(dir)) => {
                self.saves += 1;
                tracing::info!(
                    step = r.step,
                    dir = %dir.display(),
                    "checkpoint durable ({:.2} MiB from this rank in {:.2} s)",
                    r.bytes as f64 / (1 << 20) as f64,
                    r.seconds
                )
            }
            Ok(None) => {
                self.saves += 1;
                tracing::debug!(step = r.step, rank = self.rank, "checkpoint pieces durable")
            }
            Err(e) => {
                tracing::warn!(
                    step = r.step,
                    "checkpoint save failed ({e}); training continues and the next interval saves again"
                );
                crate::observe::save_failed(self.rank, r.step, &e.to_string());
            }
        }
        self.staging = r.pieces;
    }

    /// Wait for the save in flight (at the end of training).
    pub fn finish(&mut self) {
        let t = Instant::now();
        if let Some(r) = self.saver.wait() {
            self.report(r);
        }
        self.stall += t.elapsed();
    }
}
