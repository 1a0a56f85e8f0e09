//! The element-wise optimizers against an independent NumPy reference
//! (`tools/optim_reference.py`, fixture `fixtures/optim.json`): AdamW and AdEMAMix with its
//! α/β3 warm-up, per-tensor decay and global-norm clipping, step by step in f64 buffers.

use weft_kernels::{Backend, CpuBackend, DType, HostVec};
use weft_trainer::optim::AdamWState;
use weft_trainer::Config;

fn run(kind: &str) {
    let fx: serde_json::Value = serde_json::from_str(include_str!("fixtures/optim.json")).unwrap();
    let h = &fx["hyper"];
    let f = |k: &str| h[k].as_f64().unwrap();
    let cfg = Config::from_toml(&format!(
        "[job]\nname='x'\n[model]\nkind='gpt'\nwidth=8\ndepth=1\nheads=2\nvocab_size=4\nseq_len=4\n\
         [data]\nkind='tokens'\npath='x'\n[training]\nsteps=100\nmicro_batch=1\n\
         [optimizer]\nkind='{kind}'\nlr={}\nbeta1={}\nbeta2={}\neps={}\nweight_decay={}\ngrad_clip={}\n\
         beta3={}\nalpha={}\nmix_warmup_steps={}\nschedule='constant'",
        f("lr"),
        f("beta1"),
        f("beta2"),
        f("eps"),
        f("weight_decay"),
        f("grad_clip"),
        f("beta3"),
        f("alpha"),
        h["mix_warmup_steps"]
    ))
    .unwrap();
    let v = |x: &serde_json::Value| -> Vec<f64> {
        x.as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_f64().unwrap())
            .collect()
    };
    let be = CpuBackend::new();
    let p0 = v(&fx["params"]);
    let n = p0.len();
    let segs: Vec<(usize, bool, f64)> = fx["decays"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (1, d.as_bool().unwrap(), 1.0))
        .collect();
    let mut params = HostVec::from(p0);
    let mut adam = AdamWState::for_config(&be, DType::F64, n, &cfg).unwrap();
    for (step, (g, want)) in fx["grads"]
        .as_array()
        .unwrap()
        .iter()
        .zip(fx[kind].as_array().unwrap())
        .enumerate()
    {
        let g = HostVec::from(v(g));
        let norm = adam.sum_squares(&be, CpuBackend::view(&g)).unwrap().sqrt();
        let lr = cfg.optimizer.lr;
        adam.step_segments(
            &be,
            &cfg.optimizer,
            &segs,
            CpuBackend::view_mut(&mut params),
            CpuBackend::view(&g),
            lr,
            norm,
        )
        .unwrap();
        let HostVec::F64(got) = &params else {
            unreachable!()
        };
        for (i, (a, b)) in got.iter().zip(v(want)).enumerate() {
            // Hyper-parameters (lr, betas, the clip scale, this step's β3) reach the kernel as
            // f32: agreement to ~1e-8 relative; any wrong term is off by far more.
            assert!(
                (a - b).abs() < 1e-7 * b.abs() + 1e-12,
                "{kind} step {} element {i}: {a} vs {b}",
                step + 1
            );
        }
    }
}

#[test]
fn adamw_matches_the_numpy_reference() {
    run("adamw");
}

#[test]
fn ademamix_matches_the_numpy_reference() {
    run("ademamix");
}
