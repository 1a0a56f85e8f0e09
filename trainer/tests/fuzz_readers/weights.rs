//! Exported weights: random bytes, damaged files, embedded configs that claim another (or a
//! huge) model, and missing tensors.

use super::{apply, config, mutations, nasty_u64};
use proptest::prelude::*;
use std::path::Path;
use weft_trainer::config::ModelConfig;
use weft_trainer::job::layout_of;
use weft_trainer::{export, Config};

const GPT: &str = r#"
[job]
name = "fuzz"
[model]
kind = "gpt"
width = 8
depth = 1
heads = 2
vocab_size = 11
seq_len = 4
mlp_hidden = 12
tie_embeddings = false
[data]
kind = "tokens"
path = "unused.tok"
[training]
steps = 1
micro_batch = 1
[optimizer]
lr = 1e-3
"#;

const DIT: &str = r#"
[job]
name = "fuzz"
[model]
kind = "dit"
width = 8
depth = 1
heads = 2
mlp_ratio = 2.0
latent = [1, 2, 2, 3]
patch = [1, 1, 1]
num_classes = 12
[data]
kind = "shapes"
[training]
steps = 1
micro_batch = 1
[optimizer]
lr = 1e-3
"#;

/// Weights of the tiny model `toml`, written by weft with `claimed` as the embedded config.
fn weights(toml: &str, claim: impl FnOnce(&mut Config)) -> Vec<u8> {
    let cfg = Config::from_toml(toml).unwrap();
    let layout = layout_of(&cfg);
    let params: Vec<f32> = (0..layout.len()).map(|i| i as f32).collect();
    let mut claimed = cfg.clone();
    claim(&mut claimed);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.safetensors");
    export::save(&p, &layout, &params, &claimed, 1).unwrap();
    std::fs::read(&p).unwrap()
}

fn read_weights(p: &Path) {
    if let Ok((cfg, flat)) = export::load(p, layout_of) {
        assert_eq!(flat.len(), layout_of(&cfg).len());
    }
}

/// Config sizes a TOML file can hold (i64), hostile or not.
fn nasty_size() -> impl Strategy<Value = usize> {
    nasty_u64().prop_map(|v| v.min(i64::MAX as u64) as usize)
}

proptest! {
    #![proptest_config(config(150))]

    #[test]
    fn weights_of_random_bytes_are_refused(
        body in prop::collection::vec(any::<u8>(), 0..200),
        header_len in prop::option::of(0u64..300),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.safetensors");
        let bytes = match header_len {
            Some(n) => [&n.to_le_bytes()[..], &body].concat(),
            None => body,
        };
        std::fs::write(&p, bytes).unwrap();
        prop_assert!(export::load(&p, layout_of).is_err());
    }

    #[test]
    fn damaged_weights_are_refused_or_read(gpt in any::<bool>(), ms in mutations(&[0], &[0, 4])) {
        let mut bytes = weights(if gpt { GPT } else { DIT }, |_| {});
        apply(&mut bytes, &ms);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.safetensors");
        std::fs::write(&p, bytes).unwrap();
        read_weights(&p);
    }

    #[test]
    fn weights_whose_config_claims_another_model_are_refused(
        gpt in any::<bool>(),
        field in 0usize..6,
        v in nasty_size(),
    ) {
        let bytes = weights(if gpt { GPT } else { DIT }, |c| match &mut c.model {
            ModelConfig::Gpt(m) => match field {
                0 => m.width = v,
                1 => m.depth = v,
                2 => m.heads = v,
                3 => m.vocab_size = v,
                4 => m.mlp_hidden = Some(v),
                _ => m.seq_len = v,
            },
            ModelConfig::Dit(m) => match field {
                0 => m.width = v,
                1 => m.depth = v,
                2 => m.heads = v,
                3 => m.num_classes = v,
                4 => m.text_dim = v,
                _ => m.latent[3] = v,
            },
        });
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.safetensors");
        std::fs::write(&p, bytes).unwrap();
        read_weights(&p);
    }
}

#[test]
fn weights_whose_config_claims_a_huge_width_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("huge.safetensors");
    let bytes = weights(GPT, |c| {
        if let ModelConfig::Gpt(m) = &mut c.model {
            m.width = 1 << 24;
        }
    });
    std::fs::write(&p, bytes).unwrap();
    let e = export::load(&p, layout_of).expect_err("refused").to_string();
    assert!(
        e.contains("huge.safetensors")
            && e.contains("describes a model of at least")
            && e.contains("model.width = 16777216"),
        "{e}"
    );
    let o = weft_trainer::sample::SampleOptions {
        classes: vec![],
        per_class: 1,
        steps: 1,
        guidance: 1.0,
        prompt: "a".into(),
        tokens: 1,
        temperature: 0.0,
        seed: 0,
    };
    let e = weft_trainer::sample::sample(&p, &dir.path().join("out"), &o)
        .expect_err("refused")
        .to_string();
    assert!(
        e.contains("huge.safetensors") && e.contains("model.width = 16777216"),
        "{e}"
    );
}

#[test]
fn weights_missing_a_tensor_or_with_a_wrong_shape_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.safetensors");
    let cfg = Config::from_toml(GPT).unwrap();
    let layout = layout_of(&cfg);
    let mut short = layout.clone();
    let gone = short.entries.pop().unwrap().name;
    std::fs::write(&p, weights(GPT, |_| {})).unwrap();
    assert!(export::load(&p, layout_of).is_ok());
    export::save(&p, &short, &vec![0.0; layout.len()], &cfg, 1).unwrap();
    let e = export::load(&p, layout_of).expect_err("refused").to_string();
    assert!(e.contains(&format!("missing tensor `{gone}`")), "{e}");
    let mut turned = layout.clone();
    let e0 = &mut turned.entries[0];
    e0.shape.reverse();
    let (name, shape) = (e0.name.clone(), e0.shape.clone());
    export::save(&p, &turned, &vec![0.0; layout.len()], &cfg, 1).unwrap();
    let e = export::load(&p, layout_of).expect_err("refused").to_string();
    assert!(
        e.contains(&format!("tensor `{name}` is F32 {shape:?}, expected F32")),
        "{e}"
    );
}
