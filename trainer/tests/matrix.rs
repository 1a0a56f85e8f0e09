//! Muon and Scion against an independent NumPy reference (`tools/matrix_reference.py`,
//! fixture `fixtures/matrix.json`) on a small model — a lookup table, a hidden matrix, a fused
//! projection, a read-out and a vector — over four steps with clipping; and the distributed
//! form (matrices dealt round robin over 4 ranks holding uneven shards) equal to one process
//! bit for bit.

use weft_kernels::{CpuBackend, DType, HostVec};
use weft_trainer::layout::{Init, TpSplit};
use weft_trainer::optim::matrix::MatrixOpt;
use weft_trainer::optim::AdamWState;
use weft_trainer::shard::ShardMap;
use weft_trainer::{Config, Layout, Role};

fn fixture() -> serde_json::Value {
    serde_json::from_str(include_str!("fixtures/matrix.json")).unwrap()
}

fn floats(x: &serde_json::Value) -> Vec<f64> {
    x.as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_f64().unwrap())
        .collect()
}

fn layout(fx: &serde_json::Value) -> Layout {
    let mut l = Layout::default();
    for t in fx["tensors"].as_array().unwrap() {
        let shape: Vec<usize> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let role = match t["role"].as_str().unwrap() {
            "embedding" => Role::Embedding,
            "hidden" => Role::Hidden,
            "output" => Role::Output,
            _ => Role::Vector,
        };
        let split = match t["groups"].as_array() {
            Some(g) => TpSplit::Rows(g.iter().map(|x| x.as_u64().unwrap() as usize).collect()),
            None => TpSplit::Replicated,
        };
        l.add_split(t["name"].as_str().unwrap(), &shape, role, Init::Zeros, split);
    }
    l
}

/// The flat buffer of `per_tensor` (a name → values map) in layout order (the alignment
/// padding zero).
fn flat(l: &Layout, per_tensor: &serde_json::Value) -> Vec<f64> {
    let mut out = vec![0.0; l.len()];
    for e in &l.entries {
        out[e.range()].copy_from_slice(&floats(&per_tensor[&e.name]));
    }
    out
}

fn config(kind: &str, case: Option<&serde_json::Value>) -> Config {
    let fx = fixture();
    let h = &fx["hyper"];
    let f = |k: &str| h[k].as_f64().unwrap();
    let mut text = format!(
        "[job]\nname='x'\n[model]\nkind='gpt'\nwidth=8\ndepth=1\nheads=2\nvocab_size=4\nseq_len=4\n\
         [data]\nkind='tokens'\npath='x'\n[training]\nsteps=100\nmicro_batch=1\n\
         [optimizer]\nkind='{kind}'\nlr={}\nbeta1={}\nbeta2={}\neps={}\nweight_decay={}\ngrad_clip={}\n\
         schedule='constant'\n",
        f("lr"),
        f("beta1"),
        f("beta2"),
        f("eps"),
        f("weight_decay"),
        f("grad_clip"),
    );
    if kind == "muon" {
        text += &format!("[optimizer.muon]\nmomentum={}\n", f("momentum"));
    } else if let Some(c) = case {
        let r = &c["radii"];
        text += &format!(
            "[optimizer.scion]\nmomentum={}\nconstrained={}\nembedding='{}'\noutput='{}'\n\
             radius_hidden={}\nradius_embedding={}\nradius_output={}\nradius_vector={}\n",
            f("momentum"),
            c["constrained"].as_bool().unwrap_or(false),
            c["embedding"].as_str().unwrap(),
            c["output"].as_str().unwrap(),
            r["hidden"],
            r["embedding"],
            r["output"],
            r["vector"]
        );
    }
    Config::from_toml(&text).unwrap()
}

fn compare(kind: &str, case: Option<&serde_json::Value>, after: &serde_json::Value) {
    let fx = fixture();
    let l = layout(&fx);
    let cfg = config(kind, case);
    let be = CpuBackend::new();
    let mut adam = AdamWState::for_config(&be, DType::F64, l.len(), &cfg).unwrap();
    adam.set_matrix(
        MatrixOpt::new(
            &be,
            &l,
            &cfg.optimizer,
            vec![ShardMap::whole(&l).runs],
            0,
            (DType::F64, l.len()),
        )
        .unwrap(),
    );
    let mut params = HostVec::from(flat(&l, &fx["params"]));
    for (step, (g, want)) in fx["grads"]
        .as_array()
        .unwrap()
        .iter()
        .zip(after.as_array().unwrap())
        .enumerate()
    {
        let g = HostVec::from(flat(&l, g));
        adam.step_matrix(&be, None, &cfg.optimizer, &mut params, &g, cfg.optimizer.lr, None)
            .unwrap();
        let HostVec::F64(got) = &params else {
            unreachable!()
        };
        for (i, (a, b)) in got.iter().zip(flat(&l, want)).enumerate() {
            // AdamW's hyper-parameters reach its kernel as f32 (exact here, but not the clip
            // factor); the rest is f64. A wrong term is off by ~lr = 1.6e-2.
            assert!(
                (a - b).abs() < 1e-7 * b.abs() + 1e-8,
                "{kind} step {} element {i}: {a} vs {b}",
                step + 1
            );
        }
    }
}

#[test]
fn muon_matches_the_numpy_reference() {
    compare("muon", None, &fixture()["muon"]);
}

#[test]
fn scion_matches_the_numpy_reference_in_every_geometry() {
    let fx = fixture();
    for case in ["scion_unconstrained", "scion_constrained", "scion_spectral"] {
        let mut c = fx[case].clone();
        c["constrained"] = serde_json::json!(case == "scion_constrained");
        compare("scion", Some(&c), &c["after"]);
    }
}

/// One process vs 4 ranks, each holding a contiguous, uneven quarter of the flat buffer
/// (cutting through matrices, as FSDP does): the same bits.
#[test]
fn distributed_newton_schulz_on_4_ranks_equals_one_process() {
    let fx = fixture();
    let l = layout(&fx);
    let n = l.len();
    for kind in ["muon", "scion"] {
        let cfg = config(kind, Some(&fx["scion_spectral"]));
        let grads: Vec<Vec<f64>> = fx["grads"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| flat(&l, g))
            .collect();
        let p0 = flat(&l, &fx["params"]);
        // One process.
        let be = CpuBackend::new();
        let mut adam = AdamWState::for_config(&be, DType::F64, n, &cfg).unwrap();
        adam.set_matrix(
            MatrixOpt::new(
                &be,
                &l,
                &cfg.optimizer,
                vec![ShardMap::whole(&l).runs],
                0,
                (DType::F64, n),
            )
            .unwrap(),
        );
        let mut params = HostVec::from(p0.clone());
        let norm = |g: &[f64]| g.iter().map(|x| x * x).sum::<f64>().sqrt();
        for g in &grads {
            let gn = norm(g);
            let g = HostVec::from(g.clone());
            adam.step_matrix(
                &be,
                None,
                &cfg.optimizer,
                &mut params,
                &g,
                cfg.optimizer.lr,
                Some(gn),
            )
            .unwrap();
        }
        let HostVec::F64(want) = params else {
            unreachable!()
        };
        // Four ranks: cut points inside the hidden matrices and the fused projection.
        let at = |name: &str| l.get(name).unwrap().offset;
        let cuts = [
            0,
            at("h.weight") + 3,
            at("h.weight") + 21,
            at("head.weight") + 2,
            n,
        ];
        let shard = |r: usize| {
            let range = cuts[r]..cuts[r + 1];
            let mut pieces: Vec<(usize, bool, Option<std::ops::Range<usize>>)> = vec![];
            let mut pos = range.start;
            for e in &l.entries {
                let (a, b) = (e.offset.max(range.start), (e.offset + e.numel()).min(range.end));
                if a < b {
                    if a > pos {
                        pieces.push((a - pos, false, None));
                    }
                    pieces.push((b - a, true, Some(a..b)));
                    pos = b;
                }
            }
            ShardMap::sharded(&l, &pieces, 1, 0, false).runs
        };
        let members: Vec<_> = (0..4).map(shard).collect();
        let parts = weft_parallel::comm::local::run(4, |rank, comm| {
            let be = CpuBackend::new();
            let mine = cuts[rank]..cuts[rank + 1];
            let mut adam = AdamWState::for_config(&be, DType::F64, mine.len(), &cfg).unwrap();
            let opt = MatrixOpt::new(
                &be,
                &l,
                &cfg.optimizer,
                members.clone(),
                rank,
                (DType::F64, mine.len()),
            )?;
            adam.set_matrix(opt);
            let mut params = HostVec::from(p0[mine.clone()].to_vec());
            for g in &grads {
                // The clip needs the global norm: every rank knows it here.
                let gn = norm(g);
                let g = HostVec::from(g[mine.clone()].to_vec());
                let c: &dyn weft_parallel::Comm<CpuBackend> = &comm;
                adam.step_matrix(
                    &be,
                    Some(c),
                    &cfg.optimizer,
                    &mut params,
                    &g,
                    cfg.optimizer.lr,
                    Some(gn),
                )?;
            }
            let HostVec::F64(p) = params else { unreachable!() };
            Ok::<_, weft_trainer::Error>(p)
        })
        .unwrap();
        let got: Vec<f64> = parts.concat();
        assert_eq!(got.len(), want.len());
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{kind} element {i}: {a} vs {b}");
        }
    }
}

/// muP is written relative to its base: at `model.width = mup.base_width` training is the
/// standard parametrization's, bit for bit; at twice the width it is not.
#[test]
fn mup_at_its_base_width_is_exactly_sp() {
    use crate::parallel::{dit, reference};
    let dir = tempfile::tempdir().unwrap();
    for kind in ["adamw", "muon"] {
        let opt = format!("optimizer.kind=\"{kind}\"");
        let sp = reference(&dit(dir.path(), &[&opt, "job.name=\"sp\""]));
        let mup = reference(&dit(
            dir.path(),
            &[&opt, "job.name=\"mup\"", "mup.enabled=true", "mup.base_width=32"],
        ));
        assert_eq!(sp.0, mup.0, "{kind}: losses");
        assert!(sp.1 == mup.1, "{kind}: parameters");
        let wide = reference(&dit(
            dir.path(),
            &[
                &opt,
                "job.name=\"mup16\"",
                "mup.enabled=true",
                "mup.base_width=16",
            ],
        ));
        assert!(
            wide.1 != sp.1,
            "{kind}: a base of half the width must change the run"
        );
    }
}
