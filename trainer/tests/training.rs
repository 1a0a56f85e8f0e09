//! End-to-end training in one process: bitwise determinism, learning, export and sampling.

use weft_trainer::train::{train, TrainOptions};
use weft_trainer::Config;

fn cfg(base: &str, dir: &std::path::Path, sets: &[&str]) -> Config {
    let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs")).join(base);
    let mut all: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    all.push(format!("job.out_dir=\"{}\"", dir.display()));
    Config::load(&path, &all).unwrap()
}

const SMALL_DIT: &[&str] = &[
    "model.width=32",
    "model.depth=2",
    "model.heads=2",
    "model.latent=[4, 8, 8, 3]",
    "model.patch=[2, 4, 4]",
    "training.micro_batch=4",
    "training.val_batches=2",
    "training.val_every=0",
    "optimizer.warmup_steps=2",
    "training.peak_flops=1e11",
];

#[test]
fn same_seed_gives_bitwise_identical_losses() {
    let dir = tempfile::tempdir().unwrap();
    let mut sets = SMALL_DIT.to_vec();
    sets.extend(["training.steps=6", "training.grad_accum=2"]);
    let a = train(
        &cfg(
            "dit-tiny.toml",
            dir.path(),
            &[&sets[..], &["job.name=a"]].concat(),
        ),
        TrainOptions::default(),
    )
    .unwrap();
    let b = train(
        &cfg(
            "dit-tiny.toml",
            dir.path(),
            &[&sets[..], &["job.name=b"]].concat(),
        ),
        TrainOptions::default(),
    )
    .unwrap();
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a.losses), bits(&b.losses));
    assert_eq!(a.val_loss.to_bits(), b.val_loss.to_bits());
    let load = |p: &std::path::Path| {
        weft_trainer::export::load(p, weft_trainer::job::layout_of)
            .unwrap()
            .1
    };
    let (wa, wb) = (load(&a.weights), load(&b.weights));
    assert!(
        wa.iter().zip(&wb).all(|(x, y)| x.to_bits() == y.to_bits()),
        "identical final weights"
    );
    let c = train(
        &cfg(
            "dit-tiny.toml",
            dir.path(),
            &[&sets[..], &["job.name=c", "job.seed=1"]].concat(),
        ),
        TrainOptions::default(),
    )
    .unwrap();
    assert_ne!(
        bits(&a.losses),
        bits(&c.losses),
        "a different seed changes the run"
    );
}

#[test]
fn dit_learns_and_samples_from_its_exported_weights() {
    let dir = tempfile::tempdir().unwrap();
    let mut sets = SMALL_DIT.to_vec();
    sets.extend([
        "job.name=d",
        "model.width=64",
        "model.latent=[4, 16, 16, 3]",
        "training.steps=150",
        "training.micro_batch=16",
        "optimizer.lr=2e-3",
        "optimizer.warmup_steps=10",
    ]);
    let s = train(&cfg("dit-tiny.toml", dir.path(), &sets), TrainOptions::default()).unwrap();
    assert!(
        s.val_loss < 0.8 * s.val_baseline,
        "val {} vs constant predictor {}",
        s.val_loss,
        s.val_baseline
    );
    // Metrics: one line per step plus the start and validation lines.
    let lines = std::fs::read_to_string(s.dir.join("metrics.jsonl")).unwrap();
    let steps = lines.lines().filter(|l| l.contains("\"grad_norm\"")).count();
    assert_eq!(steps, 150);
    assert!(lines.contains("\"mfu\"") && lines.contains("\"val_baseline\""));
    let opts = weft_trainer::sample::SampleOptions {
        classes: vec![1, 6],
        per_class: 1,
        steps: 4,
        guidance: 2.0,
        prompt: String::new(),
        tokens: 0,
        temperature: 0.0,
        seed: 0,
    };
    let out = dir.path().join("samples");
    let written = weft_trainer::sample::sample(&s.weights, &out, &opts).unwrap();
    assert_eq!(written.len(), 3);
    let gif = std::fs::read(out.join("samples.gif")).unwrap();
    assert_eq!(&gif[..6], b"GIF89a");
    assert_eq!(&std::fs::read(out.join("samples.png")).unwrap()[1..4], b"PNG");
}

#[test]
fn gpt_learns_bytes_and_generates() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("t.txt");
    std::fs::write(&text, "the quick brown fox jumps over the lazy dog. ".repeat(200)).unwrap();
    let shard = dir.path().join("t.tok");
    weft_trainer::data::tokens::tokenize(&[text], &shard).unwrap();
    let c = cfg(
        "gpt-tiny.toml",
        dir.path(),
        &[
            "job.name=g",
            &format!("data.path=\"{}\"", shard.display()),
            "model.width=32",
            "model.depth=2",
            "model.heads=2",
            "model.kv_heads=1",
            "model.seq_len=32",
            "training.micro_batch=8",
            "training.steps=80",
            "optimizer.warmup_steps=5",
            "training.val_batches=2",
            "training.peak_flops=1e11",
        ],
    );
    let s = train(&c, TrainOptions::default()).unwrap();
    assert!(
        s.val_loss < 0.5 * s.val_baseline,
        "val {} vs unigram {}",
        s.val_loss,
        s.val_baseline
    );
    let (_, flat) = weft_trainer::export::load(&s.weights, weft_trainer::job::layout_of).unwrap();
    let weft_trainer::config::ModelConfig::Gpt(m) = &c.model else {
        panic!()
    };
    let out = weft_trainer::sample::generate_text(m, &flat, "the quick", 20, 0.0, 0).unwrap();
    assert!(out.starts_with("the quick") && out.len() > 20, "{out}");
}

#[test]
fn a_diverging_run_stops_with_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let mut sets = SMALL_DIT.to_vec();
    sets.extend([
        "job.name=n",
        "training.steps=30",
        "optimizer.lr=1e6",
        "optimizer.grad_clip=0",
        "optimizer.warmup_steps=0",
    ]);
    let e = train(&cfg("dit-tiny.toml", dir.path(), &sets), TrainOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("non-finite") && e.contains("at step"), "{e}");
}
