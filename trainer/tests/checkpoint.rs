//! Checkpoints in training: stopping and resuming gives the bits of an uninterrupted run (one
//! process and an 8-rank mesh), and a checkpoint saved on one mesh continues on others.

use crate::parallel::{dit, gpt, mesh_sets, reference, sharded};
use weft_kernels::HostVec;
use weft_trainer::ckpt::{self, ShardMap};
use weft_trainer::job::global_layout;
use weft_trainer::train::{train, TrainOptions};
use weft_trainer::Config;

type ModelFn = fn(&std::path::Path, &[&str]) -> Config;

fn with(model: ModelFn, dir: &std::path::Path, sets: &[String]) -> Config {
    let v: Vec<&str> = sets.iter().map(String::as_str).collect();
    model(dir, &v)
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn stop_and_resume_is_bitwise_in_one_process() {
    for model in [dit as ModelFn, gpt] {
        let dir = tempfile::tempdir().unwrap();
        let base = s(&["training.steps=4", "training.micro_batch=4"]);
        let (want_losses, want) = reference(&with(model, dir.path(), &base));
        let mut part = base.clone();
        part.extend(s(&["job.name=\"resumed\"", "training.exit_after=2"]));
        let first = train(&with(model, dir.path(), &part), TrainOptions::default()).unwrap();
        assert_eq!(first.losses, want_losses[..2]);
        part.push("checkpoint.resume=\"auto\"".into());
        let (rest, got) = reference(&with(model, dir.path(), &part));
        assert_eq!(rest, want_losses[2..], "losses after resume");
        assert!(got == want, "parameters after resume differ");
    }
}

#[test]
fn stop_and_resume_is_bitwise_on_an_8_rank_mesh() {
    for model in [dit as ModelFn, gpt] {
        let dir = tempfile::tempdir().unwrap();
        let mut base = mesh_sets(&[1, 2, 2, 2, 1]);
        base.push("training.steps=4".into());
        let straight = sharded(&with(model, dir.path(), &base));
        base.extend(s(&["job.name=\"resumed\"", "training.exit_after=2"]));
        let first = sharded(&with(model, dir.path(), &base));
        base.push("checkpoint.resume=\"auto\"".into());
        let rest = sharded(&with(model, dir.path(), &base));
        for ((a, b), c) in straight.iter().zip(&first).zip(&rest) {
            assert_eq!(b.losses, a.losses[..2]);
            assert_eq!(c.losses, a.losses[2..], "rank {} losses after resume", c.rank);
            assert!(
                c.params == a.params,
                "rank {} parameters after resume differ",
                c.rank
            );
        }
    }
}

/// The model tensors of a checkpoint, read whole.
fn saved_params(cfg: &Config, dir: &std::path::Path) -> Vec<f64> {
    let c = weft_checkpoint::Checkpoint::open(dir).unwrap();
    let layout = global_layout(cfg);
    let n = layout.len();
    let mut p = HostVec::from(vec![0f64; n]);
    ckpt::load(&c, &ShardMap::whole(&layout), &layout, vec![("model", &mut p)]).unwrap();
    match p {
        HostVec::F64(v) => v,
        _ => unreachable!(),
    }
}

#[test]
fn a_checkpoint_from_dp_shard_4_continues_on_other_meshes() {
    for model in [dit as ModelFn, gpt] {
        let dir = tempfile::tempdir().unwrap();
        let f64s = "training.dtype=\"f64\"".to_string();
        let one = |extra: &[String]| {
            let mut v = vec![
                f64s.clone(),
                "training.micro_batch=4".into(),
                "training.steps=4".into(),
            ];
            v.extend_from_slice(extra);
            with(model, dir.path(), &v)
        };
        let (want_losses, want) = reference(&one(&[]));
        // Save after 2 of 4 steps on dp_shard = 4.
        let mut src = mesh_sets(&[1, 4, 1, 1, 1]);
        src.extend([
            f64s.clone(),
            "training.steps=4".into(),
            "training.exit_after=2".into(),
        ]);
        src.push("job.name=\"src\"".into());
        let src_cfg = with(model, dir.path(), &src);
        sharded(&src_cfg);
        let saved = src_cfg.checkpoint_dir().join("step_00000002");
        let resume = format!("checkpoint.resume=\"{}\"", saved.display());
        let stored = saved_params(&src_cfg, &saved);
        for (name, dims) in [
            ("tp=2 × dp_shard=2", [1, 2, 1, 2, 1]),
            ("cp=2", [1, 1, 2, 1, 1]),
            ("one process", [1, 1, 1, 1, 1]),
        ] {
            let mut m = mesh_sets(&dims);
            m.extend([
                f64s.clone(),
                resume.clone(),
                format!("job.name=\"to{}\"", dims.iter().product::<usize>()),
            ]);
            // No steps: the loaded parameters are the stored ones, bit for bit.
            let mut none = m.clone();
            none.push("training.steps=2".into());
            let c = with(model, dir.path(), &none);
            let loaded: Vec<f32> = if dims == [1, 1, 1, 1, 1] {
                reference(&c).1
            } else {
                sharded(&c)[0].params.clone()
            };
            let stored32: Vec<f32> = stored.iter().map(|&x| x as f32).collect();
            assert!(
                loaded == stored32,
                "{name}: loaded parameters differ from the saved ones"
            );
            // Two more steps: the uninterrupted run's losses and parameters (f64 tolerance).
            m.push("training.steps=4".into());
            let c = with(model, dir.path(), &m);
            let (losses, params) = if dims == [1, 1, 1, 1, 1] {
                reference(&c)
            } else {
                let r = sharded(&c);
                (r[0].losses.clone(), r[0].params.clone())
            };
            for (a, b) in losses.iter().zip(&want_losses[2..]) {
                assert!((a - b).abs() <= 1e-12 * b.abs(), "{name}: loss {a} vs {b}");
            }
            let worst = params
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs() / (b.abs() + 1e-3))
                .fold(0f32, f32::max);
            assert!(worst < 1e-6, "{name}: parameters differ by {worst:e}");
        }
    }
}

#[test]
fn ademamix_checkpoints_its_slow_ema_and_shards_like_adamw() {
    let dir = tempfile::tempdir().unwrap();
    let mix = |extra: &[&str]| {
        let mut v = s(&[
            "optimizer.kind=\"ademamix\"",
            "optimizer.mix_warmup_steps=2",
            "training.steps=4",
        ]);
        v.extend(s(extra));
        v
    };
    let one = with(gpt, dir.path(), &mix(&["training.micro_batch=4"]));
    let (want_losses, want) = reference(&one);
    // Stop after 2 steps and resume: the slow EMA travels in the checkpoint (`optim.m2`).
    let mut part = mix(&[
        "training.micro_batch=4",
        "job.name=\"resumed\"",
        "training.exit_after=2",
    ]);
    train(&with(gpt, dir.path(), &part), TrainOptions::default()).unwrap();
    let saved = weft_checkpoint::latest_valid(&with(gpt, dir.path(), &part).checkpoint_dir())
        .unwrap()
        .unwrap();
    assert!(saved.manifest.tensor("optim.m2.tok_embed.table").is_some());
    part.push("checkpoint.resume=\"auto\"".into());
    let (rest, got) = reference(&with(gpt, dir.path(), &part));
    assert_eq!(rest, want_losses[2..]);
    assert!(got == want, "AdEMAMix parameters after resume differ");
    // Sharded over dp_shard = 2 × tp = 2: the update is element-wise on each shard.
    let mut m = mesh_sets(&[1, 2, 1, 2, 1]);
    m.extend(mix(&[]));
    let ranks = sharded(&with(gpt, dir.path(), &m));
    let mut losses = want_losses.clone();
    losses.truncate(4);
    crate::parallel::assert_equivalent("ademamix dp_shard=2 × tp=2", &(losses, want), &ranks, false);
}

/// Muon and Scion on both models: stop/resume is bitwise (the momentum is `optim.m`), and on
/// `dp_shard = 2 × tp = 2` — matrices cut by FSDP and split by tp, fused projections
/// orthogonalized per part on their owner rank — the run matches one process.
#[test]
fn muon_and_scion_resume_bitwise_and_shard_like_one_process() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, model, name) in [("muon", gpt as ModelFn, "gpt"), ("scion", dit as ModelFn, "dit")] {
        let opt = |extra: &[&str]| {
            let mut v = s(&[&format!("optimizer.kind=\"{kind}\""), "training.steps=4"]);
            v.push(format!("job.name=\"{kind}\""));
            v.extend(s(extra));
            v
        };
        let one = with(model, dir.path(), &opt(&["training.micro_batch=4"]));
        let (want_losses, want) = reference(&one);
        let mut part = opt(&["training.micro_batch=4", "training.exit_after=2"]);
        part.push(format!("job.name=\"{kind}-resumed\""));
        train(&with(model, dir.path(), &part), TrainOptions::default()).unwrap();
        part.push("checkpoint.resume=\"auto\"".into());
        let (rest, got) = reference(&with(model, dir.path(), &part));
        assert_eq!(rest, want_losses[2..], "{kind} {name}");
        assert!(got == want, "{kind} {name}: parameters after resume differ");
        let mut m = mesh_sets(&[1, 2, 1, 2, 1]);
        m.extend(opt(&[]));
        let ranks = sharded(&with(model, dir.path(), &m));
        let label = format!("{kind} {name} dp_shard=2 × tp=2");
        crate::parallel::assert_equivalent(&label, &(want_losses, want), &ranks, false);
    }
}
