//! The training loop of one rank: build → resume → steps ([`crate::step::Step`]), with
//! checkpoints, metrics, validation and a progress bar → the final weights.
//!
//! One process is a mesh of one ([`train`]); every rank of a mesh runs the same loop
//! ([`train_rank`], or [`train_rank_on`] for any backend). Rank 0 appends one JSON line per
//! step to `<run>/metrics.jsonl` (loss, grad norm, lr, samples/s, tokens/s, FLOP/s, MFU,
//! time in collectives), validation lines (`val_loss` against the best constant predictor on
//! the same held-out samples) and a `diverged` event when the loss stops being a number; it
//! writes the final weights to `<run>/model.safetensors`. The peak used for MFU is
//! `training.peak_flops`, or the f32 GEMM rate measured on this machine at start; the log says
//! which.

use crate::ckpt::{self, Checkpointer};
use crate::data::Source;
use crate::job::{global_layout, with_model, Baseline, ModelJob};
use crate::mesh::{assemble, check_mesh, comm_err, par_of, Groups, Memory};
use crate::metrics::{diverged, MeshReport};
use crate::model::Model;
use crate::step::Step;
use crate::{eval, export, Config, Error, Layout, Result};
use std::borrow::Cow;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use weft_kernels::{Backend, CpuBackend, HostVec, Ops, Slice};
use weft_parallel::{Comm, Dim, Mesh};

/// How the loop reports.
#[derive(Clone, Copy, Debug)]
pub struct TrainOptions {
    /// Draw a progress bar on rank 0 when stderr is a terminal (otherwise plain log lines).
    pub progress: bool,
    /// Start the next FSDP unit's gather while the current one computes.
    pub prefetch: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            progress: false,
            prefetch: true,
        }
    }
}

/// What one rank reports at the end of a run.
#[derive(Clone, Debug)]
pub struct RankOutcome {
    pub rank: usize,
    /// Steps completed (the resumed ones included).
    pub steps: u64,
    /// Mean training loss of every step of this attempt (identical on all ranks).
    pub losses: Vec<f64>,
    /// The last validation loss (NaN when none ran) and the constant predictor's.
    pub val_loss: f64,
    pub val_baseline: f64,
    /// The full parameter vector after the last step (assembled from the shards).
    pub params: Vec<f32>,
    /// Where rank 0 wrote them.
    pub weights: PathBuf,
    pub memory: Memory,
    /// Time blocked waiting for parameter gathers, and how many there were.
    pub gather_wait: Duration,
    pub gathers: usize,
    /// Wall time of the training steps.
    pub step_time: Duration,
}

/// What a finished single-process run reports.
#[derive(Clone, Debug)]
pub struct Summary {
    pub dir: PathBuf,
    pub steps: u64,
    /// Every step's training loss (of this attempt: from the resumed step on).
    pub losses: Vec<f64>,
    pub val_loss: f64,
    pub val_baseline: f64,
    pub weights: PathBuf,
}

/// Train `cfg` in this process (a mesh of one) and export the final weights.
pub fn train(cfg: &Config, opts: TrainOptions) -> Result<Summary> {
    if cfg.parallel.world() != 1 {
        return Err(Error::config(
            "parallel",
            format!(
                "describes {} ranks; a single process runs with every size 1",
                cfg.parallel.world()
            ),
        ));
    }
    let mut outs = match crate::device::check(cfg)? {
        crate::device::Device::Cpu => {
            weft_parallel::comm::local::run(1, |_, comm| train_rank_on(cfg, &CpuBackend, &comm, &comm, opts))?
        }
        crate::device::Device::Cuda(n) => on_cuda(cfg, n, opts)?,
    };
    let o = outs.pop().expect("one rank");
    Ok(Summary {
        dir: cfg.run_dir(),
        steps: o.steps,
        losses: o.losses,
        val_loss: o.val_loss,
        val_baseline: o.val_baseline,
        weights: o.weights,
    })
}

/// Train on this rank of `world` on the CPU. Every rank of the mesh calls this with the same
/// config. (Ranks on CUDA devices start through [`crate::on_cuda`], which needs a device data
/// communicator.)
pub fn train_rank(cfg: &Config, world: &dyn Comm<CpuBackend>, prefetch: bool) -> Result<RankOutcome> {
    cpu_device(cfg)?;
    let opts = TrainOptions {
        progress: false,
        prefetch,
    };
    train_rank_on(cfg, &CpuBackend, world, world, opts)
}

/// Refuse a config whose `training.device` is not the CPU, for the entry points that run the
/// CPU backend only (benchmarks of the CPU step, [`train_rank`]).
pub fn cpu_device(cfg: &Config) -> Result<()> {
    match crate::device::resolve(cfg)? {
        crate::device::Device::Cpu => Ok(()),
        crate::device::Device::Cuda(n) => Err(Error::config(
            "training.device",
            format!("is cuda:{n}, but this entry point runs the CPU backend; set training.device = \"cpu\""),
        )),
    }
}

/// One process on CUDA device `n`.
#[cfg(any(feature = "cuda", feature = "cuda-12"))]
fn on_cuda(cfg: &Config, n: usize, opts: TrainOptions) -> Result<Vec<RankOutcome>> {
    crate::on_cuda::threads(cfg, n, |_, be, control, data| {
        train_rank_on(cfg, be, &control, data, opts)
    })
}

#[cfg(not(any(feature = "cuda", feature = "cuda-12")))]
fn on_cuda(_: &Config, _: usize, _: TrainOptions) -> Result<Vec<RankOutcome>> {
    unreachable!("device::check refuses CUDA in a build without it")
}

/// Train on this rank with backend `be`: `control` carries host scalars and decisions, `data`
/// (a communicator over the same ranks, on `be`'s buffers) parameters and gradients.
pub fn train_rank_on<B: Ops>(
    cfg: &Config,
    be: &B,
    control: &dyn Comm<CpuBackend>,
    data: &dyn Comm<B>,
    opts: TrainOptions,
) -> Result<RankOutcome> {
    let mesh = check_mesh(cfg, control.size())?;
    let rank = control.rank();
    tracing::debug!(rank, transport = data.kind(), "rank starting");
    let (groups, cp) = Groups::split(&mesh, control, data)?;
    let par = par_of(cfg, &mesh, rank, &groups, cp)?;
    let job = Loop {
        cfg,
        mesh,
        groups: &groups,
        opts,
    };
    with_model(cfg, be, Some(par), job)
}

struct Loop<'a, B: Ops> {
    cfg: &'a Config,
    mesh: Mesh,
    groups: &'a Groups<B>,
    opts: TrainOptions,
}

impl<B: Ops> ModelJob<B> for Loop<'_, B> {
    type Out = RankOutcome;
    fn run<M, S>(self, be: &B, model: M, src: &S, baseline: Baseline<M::Batch>) -> Result<RankOutcome>
    where
        M: Model<B>,
        S: Source<Batch = M::Batch>,
    {
        run(self, be, model, src, baseline)
    }
}

fn run<B, M, S>(
    Loop {
        cfg,
        mesh,
        groups,
        opts,
    }: Loop<'_, B>,
    be: &B,
    mut model: M,
    src: &S,
    baseline: Baseline<M::Batch>,
) -> Result<RankOutcome>
where
    B: Ops,
    M: Model<B>,
    S: Source<Batch = M::Batch>,
{
    let rank = groups.world.rank();
    let t = &cfg.training;
    let layout = cfg.parametrize(model.layout().clone());
    let mut st = Step::new(cfg, be, groups, (mesh, rank), &layout, opts.prefetch)?;
    let (start, mut saver) = checkpoints(cfg, be, (&mesh, groups), &layout, &mut st)?;
    let (dp, dp_rank) = (mesh.dp(), mesh.dp_rank(rank));
    let (b, tokens) = model.batch_shape();
    // Each rank evaluates its share of the held-out batches one process with the global
    // micro-batch evaluates; rank 0 reports, against the constant predictor of all of them.
    let val = eval::val_batches(src, t.val_batches, b, (dp_rank, dp))?;
    let mut report = if rank == 0 {
        let dir = cfg.run_dir();
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        let path = dir.join("config.toml");
        std::fs::write(&path, cfg.to_toml()).map_err(Error::io(&path))?;
        let all = eval::val_batches(src, t.val_batches, b * dp, (0, 1))?;
        Some(MeshReport::start(
            cfg,
            be,
            baseline(&all),
            (b, tokens),
            start > 0,
        )?)
    } else {
        None
    };
    let bar = (report.is_some() && opts.progress && std::io::stderr().is_terminal()).then(|| {
        let pb = indicatif::ProgressBar::new(t.steps);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ETA {eta} {msg}",
            )
            .expect("valid template"),
        );
        pb.set_position(start);
        pb
    });
    let started = Instant::now();
    let log_every = (t.steps / 20).max(1);
    let mut losses = Vec::with_capacity(t.steps as usize);
    for step in start..t.steps {
        let t_step = Instant::now();
        let s = match st.run(cfg, be, &mut model, src, step) {
            Ok(s) => s,
            Err(e) => {
                if let (Some(r), Some(line)) = (report.as_mut(), diverged(step, &e)) {
                    r.metrics.write(line)?;
                }
                return Err(e);
            }
        };
        losses.push(s.loss);
        let state = ckpt::State {
            step: step + 1,
            adam_step: st.adam.step,
            samples_seen: (step + 1) * (b * t.grad_accum * dp) as u64,
        };
        crate::observe::step_done(
            rank,
            step + 1,
            t_step.elapsed().as_secs_f64(),
            s.comm.as_secs_f64(),
        );
        let exit = step + 1 < t.steps && ((t.exit_after > 0 && step + 1 - start >= t.exit_after) || s.stop);
        // A save's training stall: the copy of the device's state to the host (none on the
        // CPU backend) and the staging below; the writer does the rest in the background.
        let t_copy = Instant::now();
        let host = if saver.due(step + 1) || exit {
            on_host(be, st.adam.buffers().into_iter().chain([&st.store.params]))?
        } else {
            vec![]
        };
        saver.stall += t_copy.elapsed();
        let bufs: Vec<_> = match host.split_last() {
            Some((params, optim)) => {
                ckpt::named(cfg, params.as_ref(), optim.iter().map(|c| c.as_ref()).collect())
            }
            None => vec![],
        };
        saver.after_step(state, &bufs, exit)?;
        if let Some(r) = report.as_mut() {
            let secs = t_step.elapsed().as_secs_f64();
            let elapsed = started.elapsed().as_secs_f64();
            let mut line = r
                .rate
                .step_line(step + 1, s.loss, s.grad_norm, s.lr, secs, elapsed);
            line["step_s"] = secs.into();
            line["comm_s"] = s.comm.as_secs_f64().into();
            r.metrics.write(line)?;
            let mfu = 100.0 * r.rate.mfu(secs);
            match &bar {
                Some(pb) => {
                    let per_s = r.rate.samples / secs;
                    pb.set_message(format!(
                        "loss {:.4} | {per_s:.0} samples/s | MFU {mfu:.1}%",
                        s.loss
                    ));
                    pb.inc(1);
                }
                None if (step + 1) % log_every == 0 || step + 1 == t.steps => tracing::info!(
                    step = step + 1,
                    loss = format!("{:.4}", s.loss),
                    grad_norm = format!("{:.3}", s.grad_norm),
                    lr = format!("{:.2e}", s.lr),
                    samples_per_s = format!("{:.1}", r.rate.samples / secs),
                    mfu = format!("{mfu:.1}%"),
                    "train"
                ),
                None => {}
            }
        }
        if eval::due(t, step + 1) && !exit {
            let mine = eval::validate(be, &mut model, &mut st.store, &val)?;
            // Free the gathered input and output layers: the next step must gather the
            // updated parameters.
            st.store.finish_micro_batch(be)?;
            // The cp·tp shares of a replica add up to its loss on its slice of the batches;
            // the mean over the replicas is the loss on all of them.
            let mut v = vec![mine / dp as f64];
            groups
                .world
                .all_reduce(&CpuBackend, (&mut v).into())
                .map_err(comm_err)?;
            if let Some(r) = report.as_mut() {
                let msg = r.validated(step + 1, v[0])?;
                match &bar {
                    Some(pb) => pb.println(format!("step {}: {msg}", step + 1)),
                    None => tracing::info!(step = step + 1, "{msg}"),
                }
            }
        }
        if exit {
            if rank == 0 {
                tracing::info!(
                    step = step + 1,
                    "stopping early (training.exit_after or a stop signal)"
                );
            }
            break;
        }
    }
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
    saver.finish();
    if saver.saves > 0 && rank == 0 {
        tracing::info!(
            saves = saver.saves,
            "checkpoints stalled training {:.1} ms per save (the copy to the host and staging; \
             the writer runs in the background)",
            saver.stall.as_secs_f64() * 1e3 / saver.saves as f64
        );
    }
    let step_time = started.elapsed();
    let done = start + losses.len() as u64;
    let params = whole_weights(cfg, be, &st, &layout, (&mesh, groups))?;
    let weights = cfg.run_dir().join("model.safetensors");
    let (mut val_loss, mut val_baseline) = (f64::NAN, f64::NAN);
    if let Some(r) = &report {
        export::save(&weights, &global_layout(cfg), &params, cfg, done)?;
        (val_loss, val_baseline) = (r.val_loss, r.val_baseline);
        tracing::info!(
            "done in {:.1}s: {}; weights {}",
            step_time.as_secs_f64(),
            eval::versus_baseline(val_loss, val_baseline),
            weights.display()
        );
    }
    let n = st.store.shard_len();
    let dt = st.store.master_dtype();
    let device = be.device_memory()?;
    let memory = Memory {
        params: n * dt.size(),
        grads: n * dt.size(),
        optimizer: st.adam.buffers().len() * n * dt.size(),
        activations: model.activation_bytes(),
        comm_peak: st.store.peak,
        gathered_peak: st.store.gathered_peak,
        device_in_use: device.map(|d| d.0),
        device_total: device.map(|d| d.1),
    };
    Ok(RankOutcome {
        rank,
        steps: done,
        losses,
        val_loss,
        val_baseline,
        params,
        weights,
        memory,
        gather_wait: st.store.time.gather_wait,
        gathers: st.store.time.gathers,
        step_time,
    })
}

/// The state buffers as host vectors for the checkpointer: the buffers themselves on the CPU,
/// copies downloaded from a device.
fn on_host<'a, B: Backend>(
    be: &B,
    bufs: impl IntoIterator<Item = &'a B::Buffer>,
) -> Result<Vec<Cow<'a, HostVec>>> {
    bufs.into_iter()
        .map(|b| match (b as &dyn std::any::Any).downcast_ref::<HostVec>() {
            Some(h) => Ok(Cow::Borrowed(h)),
            None => {
                let v = B::view(b);
                let mut h = HostVec::zeros(v.dtype(), v.len());
                be.download(v, h.view_mut())?;
                Ok(Cow::Owned(h))
            }
        })
        .collect()
}

/// Rank 0's `text` on every rank of `world`.
fn share_text(world: &dyn Comm<CpuBackend>, text: &str) -> Result<String> {
    let mut len = vec![text.len() as i32];
    world
        .broadcast(&CpuBackend, (&mut len).into(), 0)
        .map_err(comm_err)?;
    let mut bytes: Vec<i32> = text.bytes().map(i32::from).collect();
    bytes.resize(len[0].max(0) as usize, 0);
    world
        .broadcast(&CpuBackend, (&mut bytes).into(), 0)
        .map_err(comm_err)?;
    Ok(String::from_utf8_lossy(&bytes.iter().map(|&b| b as u8).collect::<Vec<_>>()).into_owned())
}

/// Load this rank's part of checkpoint `c` into `bufs` (the optimizer's buffers, then the
/// parameters): in place on the CPU, through host copies on a device.
fn load_into<B: Backend>(
    be: &B,
    c: &weft_checkpoint::Checkpoint,
    (map, layout): (&ckpt::ShardMap, &Layout),
    cfg: &Config,
    mut bufs: Vec<&mut B::Buffer>,
) -> Result<ckpt::State> {
    use std::any::{Any, TypeId};
    if TypeId::of::<B::Buffer>() == TypeId::of::<HostVec>() {
        let mut host: Vec<&mut HostVec> = bufs
            .into_iter()
            .map(|b| {
                (b as &mut dyn Any)
                    .downcast_mut::<HostVec>()
                    .expect("the CPU backend's buffer")
            })
            .collect();
        let params = host.pop().expect("parameters");
        return ckpt::load(c, map, layout, ckpt::named(cfg, params, host));
    }
    let mut host: Vec<HostVec> = on_host(be, bufs.iter().map(|b| &**b))?
        .into_iter()
        .map(Cow::into_owned)
        .collect();
    let (params, optim) = host.split_last_mut().expect("parameters");
    let s = ckpt::load(
        c,
        map,
        layout,
        ckpt::named(cfg, params, optim.iter_mut().collect()),
    )?;
    for (h, b) in host.iter().zip(bufs.iter_mut()) {
        be.upload(h.view(), B::view_mut(b))?;
    }
    Ok(s)
}

/// The whole model's weights (f32) on every rank: the shards all-gathered over the shard
/// group, then the tp ranks' shares over the tp group.
fn whole_weights<B: Ops>(
    cfg: &Config,
    be: &B,
    st: &Step<'_, B>,
    layout: &Layout,
    (mesh, groups): (&Mesh, &Groups<B>),
) -> Result<Vec<f32>> {
    let local = assemble(be, &st.store, layout, groups.host_shard.as_ref())?;
    let tp = mesh.size(Dim::Tp);
    if tp == 1 {
        return Ok(local);
    }
    let mut all: Vec<f32> =
        crate::alloc::host_zeros("the tp ranks' weights (f32)", local.len().saturating_mul(tp))?;
    groups
        .host_tp
        .all_gather(&CpuBackend, (&local).into(), (&mut all).into())
        .map_err(comm_err)?;
    let global = global_layout(cfg);
    let mut out: Vec<f32> = crate::alloc::host_zeros("the whole model's weights (f32)", global.len())?;
    for (r, piece) in all.chunks(local.len()).enumerate() {
        layout.place_tp(&global, piece, tp, r, &mut out);
    }
    Ok(out)
}

/// Resume this rank's shard (master parameters and optimizer state) if `checkpoint.resume`
/// asks for it, and set up its saves. Rank 0 picks the checkpoint (verifying every byte,
/// falling back past damaged ones) and the others open the one it picked; any mesh can load
/// any checkpoint. Returns the first step to run.
fn checkpoints<B: Ops>(
    cfg: &Config,
    be: &B,
    (mesh, groups): (&Mesh, &Groups<B>),
    layout: &Layout,
    st: &mut Step<'_, B>,
) -> Result<(u64, Checkpointer)> {
    let world = groups.world.as_ref();
    let rank = world.rank();
    let (tp, tp_rank) = (mesh.size(Dim::Tp), mesh.coord(rank, Dim::Tp));
    let writer = mesh.coord(rank, Dim::Replicate) == 0 && mesh.coord(rank, Dim::Cp) == 0;
    let map = ckpt::ShardMap::sharded(layout, &st.store.pieces(layout), tp, tp_rank, writer);
    // Rank 0 chooses (and clears half-written saves of a crashed attempt) and names this
    // attempt's saves; the all-reduce tells the others, and keeps them from saving before the
    // clean-up.
    // A failure on rank 0 is announced (-1) rather than left for the others to wait on.
    let mut chosen = vec![0f64; 2];
    let mine = if rank == 0 {
        let found = weft_checkpoint::clean_partial(&cfg.checkpoint_dir())
            .map_err(Error::from)
            .and_then(|_| ckpt::find_resume(cfg));
        match &found {
            Ok(c) => chosen[0] = c.as_ref().map_or(0.0, |c| (c.manifest.step + 1) as f64),
            Err(_) => chosen[0] = -1.0,
        }
        chosen[1] = weft_checkpoint::new_attempt() as f64;
        Some(found)
    } else {
        None
    };
    world
        .all_reduce(&CpuBackend, (&mut chosen).into())
        .map_err(comm_err)?;
    if chosen[0] < 0.0 {
        // Every rank reports rank 0's reason.
        let why = match &mine {
            Some(Err(e)) => e.to_string(),
            _ => String::new(),
        };
        return Err(match (mine, share_text(world, &why)?) {
            (Some(Err(e)), _) => e,
            (_, why) => Error::Other(why),
        });
    }
    let mine = mine.transpose()?.flatten();
    let mut start = 0;
    if chosen[0] > 0.0 {
        let c = match mine {
            Some(c) => c,
            None => ckpt::open_step(cfg, chosen[0] as u64 - 1)?,
        };
        let mut targets = st.adam.buffers_mut();
        targets.push(&mut st.store.params);
        let s = load_into(be, &c, (&map, layout), cfg, targets)?;
        (start, st.adam.step) = (s.step, s.adam_step);
        if rank == 0 {
            tracing::info!(step = start, mesh = ?c.manifest.mesh, from = %c.dir.display(), "resumed");
        }
    }
    let head = (rank == 0).then(|| {
        let p = &cfg.parallel;
        let sizes = vec![p.dp_replicate, p.dp_shard, p.cp, p.tp];
        Checkpointer::head(cfg, &global_layout(cfg), sizes)
    });
    let saver = Checkpointer::new(cfg, layout, map, rank, world.size(), head).with_attempt(chosen[1] as u64);
    Ok((start, saver))
}
