//! Sharded training against the single-process trainer — FSDP, HSDP, tensor + sequence
//! parallel, context parallel (ring, Ulysses, both) and their combinations up to 8 ranks:
//! same losses and final parameters within f32 tolerance, bitwise repeatable for a fixed
//! mesh, memory falling as 1/dp_shard, and bad meshes refused before any rank starts.

use weft_kernels::CpuBackend;
use weft_parallel::comm::local;
use weft_parallel::{Comm, HostComm};
use weft_trainer::mesh::check_mesh;
use weft_trainer::train::{train, TrainOptions};
use weft_trainer::train::{train_rank, RankOutcome};
use weft_trainer::{export, Config, Error};

pub(crate) fn cfg(base: &str, dir: &std::path::Path, sets: &[String]) -> Config {
    let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs")).join(base);
    let mut all = sets.to_vec();
    all.push(format!("job.out_dir=\"{}\"", dir.display()));
    Config::load(&path, &all).unwrap()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// The tiny DiT, 3 steps of 2 micro-batches of 4 clips.
pub(crate) fn dit(dir: &std::path::Path, extra: &[&str]) -> Config {
    let mut v = s(&[
        "job.name=\"eq\"",
        "model.width=32",
        "model.depth=2",
        "model.heads=2",
        "model.latent=[4, 8, 8, 3]",
        "model.patch=[2, 4, 4]",
        "training.steps=3",
        "training.grad_accum=2",
        "training.val_batches=1",
        "training.val_every=0",
        "training.peak_flops=1e11",
        "optimizer.warmup_steps=1",
        "optimizer.lr=1e-2",
    ]);
    v.extend(s(extra));
    cfg("dit-tiny.toml", dir, &v)
}

pub(crate) fn gpt(dir: &std::path::Path, extra: &[&str]) -> Config {
    let text = dir.join("t.txt");
    if !text.exists() {
        std::fs::write(&text, "the quick brown fox jumps over the lazy dog. ".repeat(100)).unwrap();
        weft_trainer::data::tokens::tokenize(&[text], &dir.join("t.tok")).unwrap();
    }
    let mut v = s(&[
        "job.name=\"eq\"",
        "model.width=32",
        "model.depth=2",
        "model.heads=4",
        "model.kv_heads=2",
        "model.seq_len=16",
        "training.steps=3",
        "training.grad_accum=2",
        "training.val_batches=1",
        "training.val_every=0",
        "training.peak_flops=1e11",
        "optimizer.warmup_steps=1",
        "optimizer.lr=1e-2",
    ]);
    v.push(format!("data.path=\"{}\"", dir.join("t.tok").display()));
    v.extend(s(extra));
    cfg("gpt-tiny.toml", dir, &v)
}

/// Single-process losses and final parameters.
pub(crate) fn reference(c: &Config) -> (Vec<f64>, Vec<f32>) {
    let sum = train(c, TrainOptions::default()).unwrap();
    let (_, params) = export::load(&sum.weights, weft_trainer::job::layout_of).unwrap();
    (sum.losses, params)
}

pub(crate) fn sharded(c: &Config) -> Vec<RankOutcome> {
    let world = c.parallel.world();
    local::run(world, |_, comm: HostComm| {
        train_rank(c, &comm as &dyn Comm<CpuBackend>, true)
    })
    .unwrap()
}

/// Largest |a − b| / (|b| + 1e-3) over all values.
fn rel(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs() / (y.abs() as f64 + 1e-3))
        .fold(0.0, f64::max)
}

/// Tolerances against one process. Only the order of floating-point sums differs, so in f64
/// losses agree to 1e-12 and parameters to 1e-9 (relative to |p| + 1e-3). In f32, losses agree
/// to 1e-5; parameters to 2e-2 of the largest possible change (lr × steps): Adam divides by
/// √v, so where a gradient is near zero a few ulps of reordering noise become a visible step.
/// Any wrong reduction (a missing 1/dp, a dropped shard) moves parameters by ~lr and fails.
pub(crate) fn assert_equivalent(
    what: &str,
    reference: &(Vec<f64>, Vec<f32>),
    ranks: &[RankOutcome],
    f64: bool,
) {
    let (loss_tol, lr_steps) = (if f64 { 1e-12 } else { 1e-5 }, 1e-2 * 3.0);
    let (losses, params) = reference;
    for r in ranks {
        assert_eq!(r.losses.len(), losses.len());
        for (a, b) in r.losses.iter().zip(losses) {
            assert!(
                (a - b).abs() <= loss_tol * b.abs(),
                "{what} rank {}: loss {a} vs {b}",
                r.rank
            );
        }
        let e = rel(&r.params, params);
        let abs = r
            .params
            .iter()
            .zip(params)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let worst = r
            .params
            .iter()
            .zip(params)
            .enumerate()
            .max_by(|x, y| ((x.1 .0 - x.1 .1).abs()).total_cmp(&(y.1 .0 - y.1 .1).abs()))
            .map(|(i, _)| i);
        if f64 {
            assert!(
                e < 1e-9,
                "{what} rank {}: parameters differ by {e:.2e} (at {worst:?})",
                r.rank
            );
        } else {
            assert!(
                abs < 2e-2 * lr_steps,
                "{what} rank {}: parameters differ by {abs:.2e} (at {worst:?})",
                r.rank
            );
        }
    }
}

fn mesh(dp_replicate: usize, dp_shard: usize, mb: usize) -> Vec<String> {
    vec![
        format!("parallel.dp_replicate={dp_replicate}"),
        format!("parallel.dp_shard={dp_shard}"),
        format!("training.micro_batch={mb}"),
    ]
}

/// `[dp_replicate, dp_shard, cp, tp, ulysses]`, named as in the matrix.
const MATRIX: &[(&str, [usize; 5])] = &[
    ("dp_shard=4", [1, 4, 1, 1, 1]),
    ("dp_replicate=2 × dp_shard=2", [2, 2, 1, 1, 1]),
    ("tp=2 (sequence parallel)", [1, 1, 1, 2, 1]),
    ("cp=2 ring", [1, 1, 2, 1, 1]),
    ("cp=2 Ulysses", [1, 1, 2, 1, 2]),
    ("cp=4 = ring 2 × Ulysses 2", [1, 1, 4, 1, 2]),
    ("dp_shard=2 × tp=2", [1, 2, 1, 2, 1]),
    ("dp_shard=2 × cp=2 × tp=2", [1, 2, 2, 2, 1]),
];

pub(crate) fn mesh_sets(&[rep, sh, cp, tp, u]: &[usize; 5]) -> Vec<String> {
    let mut m = mesh(rep, sh, 4 / (rep * sh));
    m.extend([
        format!("parallel.cp={cp}"),
        format!("parallel.tp={tp}"),
        format!("parallel.ulysses={u}"),
    ]);
    m
}

fn run_matrix(model: fn(&std::path::Path, &[&str]) -> Config, dtype: &str) {
    let dir = tempfile::tempdir().unwrap();
    let dt = format!("training.dtype=\"{dtype}\"");
    let one = model(dir.path(), &["training.micro_batch=4", &dt]);
    let want = reference(&one);
    for (name, dims) in MATRIX {
        let mut m = mesh_sets(dims);
        m.push(dt.clone());
        let sets: Vec<&str> = m.iter().map(String::as_str).collect();
        let c = model(dir.path(), &sets);
        let a = sharded(&c);
        assert_equivalent(name, &want, &a, dtype == "f64");
        eprintln!("{name} ({dtype}): {} ranks match one process", a.len());
        // Same mesh again: the same bits.
        let b = sharded(&c);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.losses, y.losses, "{name}: losses not repeatable");
            assert!(x.params == y.params, "{name}: parameters not repeatable");
        }
    }
}

#[test]
fn dit_meshes_match_one_process() {
    run_matrix(dit, "f32");
    run_matrix(dit, "f64");
}

#[test]
fn gpt_meshes_match_one_process() {
    run_matrix(gpt, "f32");
    run_matrix(gpt, "f64");
}

#[test]
fn sharded_state_falls_as_one_over_dp_shard() {
    let dir = tempfile::tempdir().unwrap();
    let n = weft_trainer::job::layout_of(&gpt(dir.path(), &[])).len();
    let mut last = 0;
    for sh in [1, 2, 4] {
        let m = mesh(1, sh, 4 / sh);
        let sets: Vec<&str> = m.iter().map(String::as_str).collect();
        let c = gpt(dir.path(), &[&sets[..], &["training.steps=1"]].concat());
        let out = sharded(&c);
        let mem = out[0].memory;
        let held = mem.params + mem.grads + mem.optimizer;
        // 4 f32 copies (params, grads, 2 moments) of 1/dp_shard of the model, plus padding of
        // under one element per unit and copy.
        let ideal = 16 * n / sh;
        let units = 2 + 2; // input layers, 2 blocks, output layers
        assert!(
            held >= ideal && held <= ideal + 16 * units,
            "dp_shard={sh}: {held} vs {ideal}"
        );
        assert!(mem.comm_peak > 0);
        if sh > 1 {
            assert!(held < last);
        }
        last = held;
    }
}

#[test]
fn a_bad_mesh_is_refused_before_any_rank_starts() {
    let dir = tempfile::tempdir().unwrap();
    let c = gpt(dir.path(), &["parallel.dp_shard=3"]);
    let e = check_mesh(&c, 4).unwrap_err().to_string();
    assert!(e.contains("must equal the number of ranks (4)"), "{e}");
    // The config loader already refuses it; the launcher checks the loaded config against the
    // world size too.
    let e = Config::load(std::path::Path::new("/nonexistent"), &[]).unwrap_err();
    assert!(e.to_string().contains("nonexistent"));
    let mut c = gpt(dir.path(), &[]);
    c.parallel.tp = 4;
    match check_mesh(&c, 4) {
        Err(Error::Config { key, rule }) => {
            assert!(
                key == "parallel.tp" && rule.contains("key/value heads (2)"),
                "{key} {rule}"
            )
        }
        other => panic!("{other:?}"),
    }
    // Ulysses splits heads: 4 query / 2 kv heads cannot go 4 ways.
    let mut c = gpt(dir.path(), &[]);
    (c.parallel.cp, c.parallel.ulysses) = (4, 4);
    let e = check_mesh(&c, 4).unwrap_err().to_string();
    assert!(
        e.contains("parallel.ulysses") && e.contains("key/value heads per tp rank (2)"),
        "{e}"
    );
}

#[test]
fn tensor_parallel_splits_the_weights_and_sp_cp_split_the_activations() {
    use weft_trainer::layout::TpSplit;
    let dir = tempfile::tempdir().unwrap();
    let global = weft_trainer::job::layout_of(&gpt(dir.path(), &[]));
    let run = |dims: [usize; 5]| {
        let m = mesh_sets(&dims);
        let sets: Vec<&str> = m.iter().map(String::as_str).collect();
        let c = gpt(dir.path(), &[&sets[..], &["training.steps=1"]].concat());
        sharded(&c)[0].memory
    };
    let one = run([1, 1, 1, 1, 1]);
    let tp = run([1, 1, 1, 2, 1]);
    let cp = run([1, 1, 2, 1, 1]);
    // tp = 2: split tensors are halved, replicated ones (norms, embeddings) are whole; 4 f32
    // copies (params, grads, 2 moments) of the tp rank's buffer (its tensors and their
    // alignment), no shard padding with dp_shard = 1.
    let tp_layout = weft_trainer::mesh::layout_tp(&gpt(dir.path(), &[]), 2);
    let local: usize = global
        .entries
        .iter()
        .map(|e| {
            if e.tp == TpSplit::Replicated {
                e.numel()
            } else {
                e.numel() / 2
            }
        })
        .sum();
    assert_eq!(tp_layout.params(), local);
    assert_eq!(tp.params + tp.grads + tp.optimizer, 16 * tp_layout.len());
    assert_eq!(one.params + one.grads + one.optimizer, 16 * global.len());
    assert!(local < global.params() && tp_layout.len() < global.len());
    // Sequence parallelism halves the residual stream, tp the heads and hidden units, cp the
    // tokens of every activation.
    assert!(tp.activations < one.activations, "{tp:?} vs {one:?}");
    assert!(cp.activations * 10 < one.activations * 6, "{cp:?} vs {one:?}");
}

/// The meshes a single GPU runs with thread ranks sharing it.
const ONE_DEVICE: &[(&str, [usize; 5])] = &[
    ("dp_shard=2", [1, 2, 1, 1, 1]),
    ("tp=2", [1, 1, 1, 2, 1]),
    ("cp=2 ring", [1, 1, 2, 1, 1]),
    ("cp=2 Ulysses", [1, 1, 2, 1, 2]),
    ("dp_shard=2 × cp=2 × tp=2", [1, 2, 2, 2, 1]),
];

/// The mesh of `c` on thread ranks whose data communicator is the shared-device one (what a
/// mesh on one GPU runs with), here on the CPU backend.
fn sharded_on_one_device(c: &Config) -> Vec<RankOutcome> {
    use weft_parallel::comm::shared::{self, SharedComm};
    use weft_trainer::train::train_rank_on;
    let opts = TrainOptions {
        progress: false,
        prefetch: true,
    };
    shared::run(
        c.parallel.world(),
        |_, control: HostComm, data: SharedComm<CpuBackend>| {
            train_rank_on(c, &CpuBackend, &control, &data, opts)
        },
    )
    .unwrap()
}

/// Every gather, reduce-scatter, all-reduce, all-to-all and ring step of a step through the
/// shared-device communicator gives the host communicator's bits: the same losses and final
/// parameters, for the DiT and the GPT, in f32 and bf16.
#[test]
fn meshes_on_one_shared_device_equal_the_host_transport_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    for model in [dit as fn(&std::path::Path, &[&str]) -> Config, gpt] {
        for prec in [
            &[][..],
            &["training.param_dtype=\"bf16\"", "training.reduce_dtype=\"bf16\""][..],
        ] {
            for (name, dims) in ONE_DEVICE {
                let mut m = mesh_sets(dims);
                m.extend(prec.iter().map(|s| s.to_string()));
                let sets: Vec<&str> = m.iter().map(String::as_str).collect();
                let c = model(dir.path(), &sets);
                let host = sharded(&c);
                let dev = sharded_on_one_device(&c);
                for (h, d) in host.iter().zip(&dev) {
                    assert_eq!(h.losses, d.losses, "{name} {prec:?}: losses");
                    assert!(h.params == d.params, "{name} {prec:?}: parameters");
                }
            }
        }
    }
}
