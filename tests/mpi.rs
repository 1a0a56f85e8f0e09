//! `weft train` as real MPI processes (`mpirun -n 4` and `-n 8`), against the same mesh on
//! threads: the rank-ordered reductions make the two transports agree bit for bit (and
//! `weft-trainer`'s tests prove the thread runs equal to one process).

use std::path::Path;
use std::process::Command;

fn summary(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("eq/sharded.json")).expect("sharded.json written");
    serde_json::from_str(&text).unwrap()
}

fn sets(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "job.name=\"eq\"",
        "model.depth=2",
        "model.width=32",
        "model.heads=2",
        "training.steps=3",
        "training.grad_accum=2",
        "optimizer.warmup_steps=1",
        "training.peak_flops=1e11",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v.push(format!("job.out_dir=\"{}\"", out.display()));
    v.into_iter().flat_map(|s| ["--set".to_string(), s]).collect()
}

fn check(config: &str, ranks: usize, extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (threads, mpi) = (dir.path().join("threads"), dir.path().join("mpi"));
    let cfg = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs")).join(config);
    let bin = env!("CARGO_BIN_EXE_weft");
    let out = Command::new(bin)
        .arg("train")
        .arg(&cfg)
        .args(sets(&threads, extra))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new("mpirun")
        .args([
            "--allow-run-as-root",
            "--oversubscribe",
            "-n",
            &ranks.to_string(),
            bin,
            "train",
        ])
        .arg(&cfg)
        .args(sets(&mpi, extra))
        .output()
        .expect("mpirun is installed (apt-get install openmpi-bin)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Every rank reports what it holds.
    for r in 0..ranks {
        assert!(
            stderr.contains(&format!("rank={r}"))
                || stderr.contains(&format!("rank\u{1b}[0m\u{1b}[2m=\u{1b}[0m{r}")),
            "{stderr}"
        );
    }
    let (a, b) = (summary(&threads), summary(&mpi));
    assert_eq!(a["transport"], "threads");
    assert_eq!(b["transport"], "mpi");
    assert_eq!(a["losses"], b["losses"]);
    assert_eq!(a["params_digest"], b["params_digest"]);
}

/// The 4- and 8-rank meshes of the equivalence matrix (`weft-trainer`'s
/// `parallel::MATRIX`), each with the per-dp-rank micro-batch that keeps 4 samples per step.
const MESHES: &[&[&str]] = &[
    &["parallel.dp_shard=4", "training.micro_batch=1"],
    &[
        "parallel.dp_replicate=2",
        "parallel.dp_shard=2",
        "training.micro_batch=1",
    ],
    &["parallel.dp_shard=2", "parallel.tp=2", "training.micro_batch=2"],
    &["parallel.cp=4", "parallel.ulysses=2", "training.micro_batch=4"],
    &[
        "parallel.dp_shard=2",
        "parallel.cp=2",
        "parallel.tp=2",
        "training.micro_batch=2",
    ],
];

fn world(mesh: &[&str]) -> usize {
    mesh.iter()
        .filter(|s| s.starts_with("parallel.") && !s.starts_with("parallel.ulysses"))
        .map(|s| s.rsplit('=').next().unwrap().parse::<usize>().unwrap())
        .product()
}

#[test]
fn dit_meshes_over_mpi_match_threads_bitwise() {
    for mesh in MESHES {
        check("dit-tiny.toml", world(mesh), mesh);
    }
}

/// A token file and the `data.path` setting that reads it.
fn tokens(dir: &Path) -> String {
    let text = dir.join("t.txt");
    std::fs::write(&text, "the quick brown fox jumps over the lazy dog. ".repeat(100)).unwrap();
    let tok = dir.join("t.tok");
    weft_trainer::data::tokens::tokenize(&[text], &tok).unwrap();
    format!("data.path=\"{}\"", tok.display())
}

#[test]
fn gpt_meshes_over_mpi_match_threads_bitwise() {
    let dir = tempfile::tempdir().unwrap();
    let path = tokens(dir.path());
    for mesh in MESHES {
        let mut sets = mesh.to_vec();
        sets.extend(["model.seq_len=16", "model.kv_heads=2", &path]);
        check("gpt-tiny.toml", world(mesh), &sets);
    }
}

#[test]
fn a_checkpoint_written_by_mpi_ranks_resumes_bitwise_on_threads() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs")).join("dit-tiny.toml");
    let bin = env!("CARGO_BIN_EXE_weft");
    let mesh = [
        "parallel.dp_shard=2",
        "parallel.tp=2",
        "training.micro_batch=2",
        "training.steps=4",
    ];
    let run = |out: &Path, mpi: bool, extra: &[&str]| {
        let mut all = mesh.to_vec();
        all.extend_from_slice(extra);
        let mut cmd = if mpi {
            let mut c = Command::new("mpirun");
            c.args(["--allow-run-as-root", "--oversubscribe", "-n", "4", bin]);
            c
        } else {
            Command::new(bin)
        };
        let o = cmd.arg("train").arg(&cfg).args(sets(out, &all)).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let (straight, pre) = (dir.path().join("straight"), dir.path().join("pre"));
    run(&straight, false, &[]);
    run(&pre, true, &["training.exit_after=2"]);
    assert!(pre.join("eq/checkpoints/step_00000002/manifest.json").exists());
    run(&pre, false, &["checkpoint.resume=\"auto\""]);
    assert_eq!(
        summary(&straight)["params_digest"],
        summary(&pre)["params_digest"]
    );
}
