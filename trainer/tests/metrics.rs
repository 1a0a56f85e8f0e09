//! `metrics.jsonl`: a sharded run writes the single-process run's fields (validation loss,
//! throughput, MFU), and a loss made non-finite by the data is blamed on the data.

use crate::parallel::dit;
use std::collections::HashMap;
use weft_kernels::CpuBackend;
use weft_parallel::comm::local;
use weft_parallel::{Comm, HostComm};
use weft_trainer::train::train_rank;
use weft_trainer::train::{train, TrainOptions};

fn lines(run: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The numeric field `key` of every line that has it.
fn field(v: &[serde_json::Value], key: &str) -> Vec<f64> {
    v.iter().filter_map(|l| l.get(key)?.as_f64()).collect()
}

#[test]
fn a_two_rank_run_writes_validation_throughput_and_mfu() {
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // In f64, where the mesh changes the parameters by rounding only; one process with the
    // global micro-batch.
    let sets = [
        "training.val_every=2",
        "training.steps=4",
        "training.dtype=\"f64\"",
    ];
    let single = dit(one.path(), &[&sets[..], &["training.micro_batch=8"]].concat());
    train(&single, TrainOptions::default()).unwrap();
    let c = dit(
        two.path(),
        &[&sets[..], &["parallel.dp_shard=2", "training.micro_batch=4"]].concat(),
    );
    local::run(2, |_, comm: HostComm| {
        train_rank(&c, &comm as &dyn Comm<CpuBackend>, true)
    })
    .unwrap();
    let (want, got) = (lines(&single.run_dir()), lines(&c.run_dir()));
    for key in ["tokens_per_s", "samples_per_s", "flops_per_s", "mfu"] {
        let v = field(&got, key);
        assert_eq!(v.len(), 4, "{key} on every step: {got:?}");
        assert!(v.iter().all(|x| x.is_finite() && *x > 0.0), "{key}: {v:?}");
    }
    // Validation at steps 2 and 4, on the single-process run's held-out samples, against the
    // same constant predictor.
    let (vw, vg) = (field(&want, "val_loss"), field(&got, "val_loss"));
    assert_eq!(vg.len(), 2, "{got:?}");
    for (a, b) in vg.iter().zip(&vw) {
        assert!((a - b).abs() <= 1e-9 * b.abs(), "val loss {a} vs one process {b}");
    }
    assert_eq!(field(&got, "val_baseline"), field(&want, "val_baseline"));
    // The start event carries the whole model's FLOPs of the global batch, as one process
    // counts them.
    let start = |v: &[serde_json::Value]| v[0]["flops_per_step"].as_f64().unwrap();
    assert_eq!(got[0]["event"], "start");
    assert!((start(&got) - start(&want)).abs() < 1e-9 * start(&want));
}

fn write_latents_with_nan(path: &std::path::Path, n: usize, shape: [usize; 4]) {
    let per: usize = shape.iter().product();
    let data: Vec<u8> = (0..n * per)
        .map(|i| {
            if i % per == 5 {
                f32::NAN
            } else {
                (i % 7) as f32 * 0.1
            }
        })
        .flat_map(f32::to_le_bytes)
        .collect();
    let full = vec![n, shape[0], shape[1], shape[2], shape[3]];
    let t = HashMap::from([(
        "latents".to_string(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, full, &data).unwrap(),
    )]);
    safetensors::serialize_to_file(t, None, path).unwrap();
}

#[test]
fn nan_in_the_data_is_blamed_on_the_data_not_the_learning_rate() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("nan.safetensors");
    write_latents_with_nan(&shard, 40, [4, 8, 8, 3]);
    let c = dit(
        dir.path(),
        &[
            "data.kind=\"latents\"",
            &format!("data.path=\"{}\"", shard.display()),
            "model.num_classes=1",
        ],
    );
    let e = train(&c, TrainOptions::default()).unwrap_err().to_string();
    assert!(
        e.contains("non-finite values in the input data") && e.contains("nan.safetensors"),
        "{e}"
    );
    assert!(!e.contains("optimizer.lr"), "{e}");
    let m = lines(&c.run_dir());
    let last = m.last().unwrap();
    assert_eq!(last["event"], "diverged");
    assert_eq!(last["cause"], "non-finite input data");
    // The same under a mesh.
    let c = dit(
        dir.path(),
        &[
            "data.kind=\"latents\"",
            &format!("data.path=\"{}\"", shard.display()),
            "model.num_classes=1",
            "parallel.dp_shard=2",
        ],
    );
    let outs = local::run(2, |_, comm: HostComm| {
        train_rank(&c, &comm as &dyn Comm<CpuBackend>, true)
    });
    let e = outs.unwrap_err().to_string();
    assert!(e.contains("non-finite values in the input data"), "{e}");
}
