//! Mixed precision on the CPU backend: bf16 parameters and activations over f32 master
//! weights, gradients and optimizer state (`training.param_dtype = "bf16"`).

use crate::parallel::{dit, gpt, mesh_sets, reference, sharded};
use weft_trainer::train::{train, TrainOptions};
use weft_trainer::Config;

type ModelFn = fn(&std::path::Path, &[&str]) -> Config;

const BF16: &str = "training.param_dtype=\"bf16\"";

fn with(model: ModelFn, dir: &std::path::Path, sets: &[String]) -> Config {
    let v: Vec<&str> = sets.iter().map(String::as_str).collect();
    model(dir, &v)
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// bf16's unit roundoff: rounding to nearest moves a value by at most 2⁻⁹ of itself.
const U: f64 = 1.0 / 512.0;

/// bf16 rounding stages on the longest path from the inputs to the loss: every op that writes a
/// bf16 activation rounds once. A DiT block writes 14 (norm, modulate, q/k/v, qk-norm, rope,
/// attention, projection, gated residual; norm, modulate, fc1, GELU, fc2, gated residual), a GPT
/// block 12 (norm, q/k/v, rope, attention, projection, residual; norm, fc1, SwiGLU, fc2,
/// residual, and the grouped heads' copy), plus 2 under tp (the two row-parallel partial sums);
/// the input and output layers 8 more at most.
fn rounding_stages(cfg: &Config) -> f64 {
    let (depth, per_block) = match &cfg.model {
        weft_trainer::config::ModelConfig::Dit(m) => (m.depth, 14),
        weft_trainer::config::ModelConfig::Gpt(m) => (m.depth, 12),
    };
    let per_block = per_block + if cfg.parallel.tp > 1 { 2 } else { 0 };
    (depth * per_block + 8) as f64
}

#[test]
fn bf16_reaches_the_validation_loss_of_f32() {
    for model in [dit as ModelFn, gpt] {
        let dir = tempfile::tempdir().unwrap();
        let base = s(&[
            "training.steps=40",
            "training.grad_accum=1",
            "training.val_batches=2",
            "optimizer.lr=3e-3",
            "optimizer.warmup_steps=5",
        ]);
        let f32 = train(&with(model, dir.path(), &base), TrainOptions::default()).unwrap();
        let mut b = base.clone();
        b.extend(s(&[BF16, "job.name=\"bf16\""]));
        let bf16 = train(&with(model, dir.path(), &b), TrainOptions::default()).unwrap();
        let rel = (bf16.val_loss - f32.val_loss).abs() / f32.val_loss;
        assert!(
            rel <= 0.02,
            "validation loss: bf16 {} vs f32 {} ({:.2}% apart)",
            bf16.val_loss,
            f32.val_loss,
            100.0 * rel
        );
        // It learned (the comparison is not between two untrained models) ...
        assert!(
            bf16.val_loss < 0.9 * bf16.val_baseline || bf16.losses[39] < 0.9 * bf16.losses[0],
            "bf16 did not learn: {:?}",
            bf16.losses
        );
        // ... and really computed in bf16: the runs differ.
        assert_ne!(bf16.losses, f32.losses);
        // The exported weights evaluate in the run's compute dtype (as a sweep does), close
        // to the same weights evaluated in f32.
        let (cfg, weights) = weft_trainer::export::load(&bf16.weights, weft_trainer::job::layout_of).unwrap();
        let in_bf16 = weft_trainer::eval::evaluate(&cfg, &weights, 16).unwrap();
        let mut as_f32 = cfg.clone();
        as_f32.training.param_dtype = None;
        let in_f32 = weft_trainer::eval::evaluate(&as_f32, &weights, 16).unwrap();
        assert!(
            (in_bf16.loss - in_f32.loss).abs() <= 0.02 * in_f32.loss,
            "{in_bf16:?} vs {in_f32:?}"
        );
    }
}

/// A bf16 mesh against the bf16 single process. Both compute every op in f32 and round the
/// same values to bf16; they differ in the order of f32 sums (the ring's blocks, reductions),
/// a few f32 ulps, and under tp in one more rounding: each row-parallel matmul's partial sum
/// is bf16 before the tp all-reduce. Either changes a bf16 value by at most one bf16 ulp (2u),
/// and each of the `D` rounding stages on the path to the loss adds at most that, so to first
/// order the losses of a step agree to `D · 2u` relative. Any wrong reduction
/// or split (a missing 1/dp, a dropped shard, a wrong tp sum) moves the loss by far more.
#[test]
fn a_bf16_mesh_matches_the_bf16_single_process_within_the_rounding_bound() {
    for model in [dit as ModelFn, gpt] {
        for mesh in [[1, 2, 1, 2, 1], [1, 1, 2, 1, 1]] {
            let dir = tempfile::tempdir().unwrap();
            let one = with(
                model,
                dir.path(),
                &s(&[BF16, "optimizer.lr=1e-3", "training.micro_batch=4"]),
            );
            let (want, _) = reference(&one);
            let mut sets = mesh_sets(&mesh);
            sets.extend(s(&[BF16, "optimizer.lr=1e-3", "job.name=\"mesh\""]));
            let c = with(model, dir.path(), &sets);
            let tol = rounding_stages(&c) * 2.0 * U;
            for r in sharded(&c) {
                for (step, (a, b)) in r.losses.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= tol * b.abs(),
                        "mesh {mesh:?} rank {} step {step}: loss {a} vs {b} (bound {tol:.3} relative)",
                        r.rank
                    );
                }
                assert_eq!(r.losses.len(), want.len());
            }
        }
    }
}

#[test]
fn a_bf16_run_stopped_and_resumed_is_bitwise_equal_to_one_that_was_not() {
    for model in [dit as ModelFn, gpt] {
        let dir = tempfile::tempdir().unwrap();
        let base = s(&[BF16, "training.steps=4", "training.micro_batch=4"]);
        let (want_losses, want) = reference(&with(model, dir.path(), &base));
        let mut part = base.clone();
        part.extend(s(&["job.name=\"resumed\"", "training.exit_after=2"]));
        let first = train(&with(model, dir.path(), &part), TrainOptions::default()).unwrap();
        assert_eq!(first.losses, want_losses[..2]);
        // The checkpoint holds the f32 master weights and moments, never a bf16 copy.
        let c = with(model, dir.path(), &part);
        let found = walk(&c.checkpoint_dir())
            .into_iter()
            .find(|p| p.ends_with("manifest.json"));
        let text = std::fs::read_to_string(found.expect("a manifest")).unwrap();
        let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
        let tensors = manifest["tensors"].as_array().expect("tensors");
        assert!(!tensors.is_empty());
        assert!(tensors.iter().all(|t| t["dtype"] == "f32"), "{tensors:?}");
        part.push("checkpoint.resume=\"auto\"".into());
        let (rest, got) = reference(&with(model, dir.path(), &part));
        assert_eq!(rest, want_losses[2..], "losses after resume");
        assert!(got == want, "parameters after resume differ");
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The per-rank memory report: under bf16 the gathered units take half the bytes of f32, and
/// master weights + gradients + AdamW's two moments take 16 bytes per parameter of the rank's
/// shard, the shard being each unit's parameters ÷ `dp_shard` (rounded up per unit).
#[test]
fn bf16_gathers_half_the_bytes_and_keeps_16_bytes_of_state_per_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let sets = s(&["parallel.dp_shard=2"]);
    let f32 = sharded(&with(gpt, dir.path(), &sets));
    let mut b = sets.clone();
    b.extend(s(&[BF16, "job.name=\"bf16\""]));
    let c = with(gpt, dir.path(), &b);
    let bf16 = sharded(&c);
    let layout = weft_trainer::job::global_layout(&c);
    let shard: usize = layout.units().iter().map(|u| u.len().div_ceil(2)).sum();
    for (x, y) in f32.iter().zip(&bf16) {
        assert!(y.memory.gathered_peak > 0);
        assert_eq!(
            2 * y.memory.gathered_peak,
            x.memory.gathered_peak,
            "rank {}",
            y.rank
        );
        let state = y.memory.params + y.memory.grads + y.memory.optimizer;
        assert_eq!(state, 16 * shard, "rank {}", y.rank);
        assert_eq!(state, x.memory.params + x.memory.grads + x.memory.optimizer);
        // ÷ dp_shard: the buffer (the parameters and their alignment) halved, up to the
        // padding of each unit's last shard.
        let len = layout.len() as f64;
        assert!((state as f64 - 16.0 * len / 2.0).abs() <= 16.0 * layout.units().len() as f64);
        assert!(layout.len() - layout.params() < weft_trainer::layout::ALIGN * layout.entries.len());
    }
    // The estimate before start says the same.
    let est = weft_trainer::memory::estimate(&c, 2);
    assert_eq!(est.params + est.grads + est.optimizer, 16.0 * shard as f64);
}

/// Gradients reduced in bf16 (`training.reduce_dtype`) still train within the bound.
#[test]
fn bf16_reductions_stay_within_the_rounding_bound() {
    let dir = tempfile::tempdir().unwrap();
    let one = with(
        dit,
        dir.path(),
        &s(&[BF16, "optimizer.lr=1e-3", "training.micro_batch=4"]),
    );
    let (want, _) = reference(&one);
    let mut sets = mesh_sets(&[1, 2, 1, 1, 1]);
    let reduce = "training.reduce_dtype=\"bf16\"";
    sets.extend(s(&[BF16, reduce, "optimizer.lr=1e-3", "job.name=\"r\""]));
    let c = with(dit, dir.path(), &sets);
    let tol = rounding_stages(&c) * 2.0 * U;
    for r in sharded(&c) {
        for (a, b) in r.losses.iter().zip(&want) {
            assert!((a - b).abs() <= tol * b.abs(), "loss {a} vs {b}");
        }
    }
}
