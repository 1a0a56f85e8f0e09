//! Memory before start: the config-only activation and FLOP counts agree with the built
//! models', the estimate matches what a sharded run holds, a model beyond any machine is
//! refused with its numbers, and an impossible allocation is an error naming its buffer.

use crate::common::{tiny_dit, tiny_gpt};
use crate::parallel::{dit, gpt};
use weft_kernels::{CpuBackend, DType};
use weft_parallel::comm::local;
use weft_parallel::{Comm, HostComm, SeqSplit};
use weft_trainer::memory::{estimate, fits, HostMemory};
use weft_trainer::mesh::check_mesh;
use weft_trainer::model::{Dit, Gpt, Model, Par};
use weft_trainer::train::train_rank;
use weft_trainer::train::{train, TrainOptions};
use weft_trainer::Config;

/// A rank's split without communicators (construction reads only the split and the ranks).
fn par(t: usize, ring: usize, ulysses: usize, tp: usize, causal: bool) -> Par<CpuBackend> {
    let mut p = Par::single(t, causal);
    p.split = SeqSplit {
        t,
        ring,
        ulysses,
        tp,
        causal,
    };
    p
}

#[test]
fn activation_bytes_from_the_config_equal_the_built_models() {
    let be = CpuBackend::new();
    let splits = [(1, 1, 1), (1, 1, 2), (2, 1, 1), (1, 2, 1), (2, 2, 2)];
    for recompute in [false, true] {
        for (ring, uly, tp) in splits {
            for dt in [DType::F32, DType::F64] {
                let mut d = tiny_dit();
                d.qk_norm = !recompute;
                d.text_dim = if tp > 1 { 0 } else { 5 };
                let t = 2 * 2 * 2; // latent [2,4,4] over patch [1,2,2]
                let m = Dit::new_par(&be, &d, 3, dt, recompute, par(t, ring, uly, tp, false)).unwrap();
                let want = m.activation_bytes() as f64;
                let split = par(t, ring, uly, tp, false).split;
                let got = Dit::<CpuBackend>::activation_bytes_of(&d, 3, dt, recompute, split);
                assert_eq!(
                    got, want,
                    "DiT ring {ring} ulysses {uly} tp {tp} recompute {recompute}"
                );

                let mut g = tiny_gpt();
                g.seq_len = 8;
                g.tie_embeddings = recompute;
                let m = Gpt::new_par(&be, &g, 2, dt, recompute, par(8, ring, uly, tp, true)).unwrap();
                let split = par(8, ring, uly, tp, true).split;
                let got = Gpt::<CpuBackend>::activation_bytes_of(&g, 2, dt, recompute, split);
                assert_eq!(
                    got,
                    m.activation_bytes() as f64,
                    "GPT ring {ring} ulysses {uly} tp {tp}"
                );
            }
        }
    }
}

#[test]
fn flops_from_the_config_equal_the_built_models() {
    let be = CpuBackend::new();
    let d = tiny_dit();
    let m = Dit::new(&be, &d, 3, DType::F32, false).unwrap();
    assert_eq!(Dit::<CpuBackend>::flops_of(&d, 3), m.flops_per_micro_batch());
    let g = tiny_gpt();
    let m = Gpt::new(&be, &g, 2, DType::F32, false).unwrap();
    assert_eq!(Gpt::<CpuBackend>::flops_of(&g, 2), m.flops_per_micro_batch());
}

/// A 2-rank FSDP run holds what the estimate says: parameters, gradients, optimizer state
/// and activations exactly, the gathers in flight at most as estimated (and not far below).
#[test]
fn the_estimate_matches_what_a_sharded_run_holds() {
    for (name, opt) in [("adamw", 2), ("ademamix", 3)] {
        let dir = tempfile::tempdir().unwrap();
        let kind = format!("optimizer.kind=\"{name}\"");
        for c in [
            dit(dir.path(), &["parallel.dp_shard=2", &kind]),
            gpt(dir.path(), &["parallel.dp_shard=2", "parallel.tp=2", &kind]),
        ] {
            let est = estimate(&c, 4);
            let outs = local::run(c.parallel.world(), |_, comm: HostComm| {
                train_rank(&c, &comm as &dyn Comm<CpuBackend>, true)
            })
            .unwrap();
            for o in &outs {
                let m = o.memory;
                assert_eq!(est.params, m.params as f64, "{name}");
                assert_eq!(est.grads, m.grads as f64);
                assert_eq!(est.optimizer, (opt * m.params) as f64);
                assert_eq!(est.activations, m.activations as f64);
                let peak = m.comm_peak as f64;
                assert!(
                    est.in_flight >= peak && est.in_flight <= 2.0 * peak,
                    "in flight: estimated {} for a measured peak of {peak}",
                    est.in_flight
                );
            }
            assert!(est.per_rank >= est.params + est.grads + est.optimizer + est.activations);
            assert_eq!(est.total, est.margin + 4.0 * est.per_rank);
        }
    }
}

fn huge(dir: &std::path::Path, extra: &[&str]) -> Config {
    let mut sets = vec![
        "model.width=131072",
        "model.depth=577",
        "model.heads=1024",
        "model.kv_heads=1024",
        "model.mlp_hidden=14336",
        "training.micro_batch=1",
        "training.recompute=true",
    ];
    sets.extend(extra);
    gpt(dir, &sets)
}

#[test]
fn a_model_beyond_any_machine_is_refused_with_its_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let c = huge(dir.path(), &[]);
    let est = estimate(&c, 1);
    assert!((est.parameters - 42.9e12).abs() < 0.1e12, "{}", est.parameters);
    // Even a machine of 512 TiB cannot hold 16 bytes per parameter of 42.9 T parameters.
    let host = HostMemory {
        total: 1 << 49,
        available: 1 << 49,
        cgroup_limit: None,
    };
    let why = fits(&est, Some(&host)).unwrap_err();
    assert!(
        why.contains("available of 512.00 TiB total") && why.contains("short"),
        "{why}"
    );
    let text = est.to_string();
    for want in [
        "42.9 T parameters",
        "parameters ",
        "gradients",
        "optimizer state",
        "activations",
        "peak per rank",
    ] {
        assert!(text.contains(want), "no `{want}` in:\n{text}");
    }
    let e = weft_trainer::memory::check(&c, 1).unwrap_err().to_string();
    assert!(
        e.contains("does not fit in memory") && e.contains("this machine:"),
        "{e}"
    );
    // The bypass key starts it anyway: then the first buffer fails with its name and size,
    // not an abort.
    let c = huge(dir.path(), &["training.skip_memory_check=true"]);
    assert!(weft_trainer::memory::check(&c, 1).is_ok());
    let e = train(&c, TrainOptions::default()).unwrap_err().to_string();
    assert!(
        e.contains("cannot allocate the initial weights") && e.contains("bytes"),
        "{e}"
    );
}

#[test]
fn a_shard_group_larger_than_a_unit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = gpt(dir.path(), &["parallel.dp_shard=100000"]);
    let e = check_mesh(&c, 100000).unwrap_err().to_string();
    assert!(
        e.contains("`parallel.dp_shard` (100000) must not exceed the length of the smallest FSDP unit"),
        "{e}"
    );
    // The smallest unit of the tiny GPT (tied: the output layers hold only norm_f, 32).
    let c = gpt(dir.path(), &["parallel.dp_shard=32"]);
    assert!(check_mesh(&c, 32).is_ok());
    let c = gpt(dir.path(), &["parallel.dp_shard=33"]);
    assert!(check_mesh(&c, 33).is_err());
}

/// FSDP's gathers, full gradients and reduce-scatters reuse their buffers: after the first
/// step (two micro-batches, every unit gathered twice), later steps allocate none.
#[test]
fn fsdp_buffers_are_reused_after_the_first_step() {
    use weft_trainer::data::shapes::Shapes;
    use weft_trainer::mesh::Groups;
    use weft_trainer::step::Step;
    let dir = tempfile::tempdir().unwrap();
    for reduce in ["f32", "bf16"] {
        let r = format!("training.reduce_dtype=\"{reduce}\"");
        let c = dit(
            dir.path(),
            &["parallel.dp_shard=2", "training.param_dtype=\"bf16\"", &r],
        );
        let weft_trainer::config::ModelConfig::Dit(m) = &c.model else {
            unreachable!()
        };
        let counts = local::run(2, |rank, comm: HostComm| {
            let be = CpuBackend::new();
            let mesh = check_mesh(&c, 2)?;
            let (groups, _) = Groups::split(&mesh, &comm, &comm)?;
            let mut model = Dit::new(&be, m, c.training.micro_batch, DType::BF16, false)?;
            let layout = c.parametrize(model.layout().clone());
            let mut st = Step::new(&c, &be, &groups, (mesh, rank), &layout, true)?;
            let src = Shapes {
                cfg: m.clone(),
                seed: 0,
            };
            let mut after = vec![];
            for step in 0..3 {
                st.run(&c, &be, &mut model, &src, step)?;
                after.push(st.store.buffers_allocated());
            }
            Ok::<_, weft_trainer::Error>(after)
        })
        .unwrap();
        for after in counts {
            assert!(after[0] > 0, "{reduce}: {after:?}");
            assert_eq!(
                after[0], after[2],
                "{reduce}: allocations after each step {after:?}"
            );
        }
    }
}
