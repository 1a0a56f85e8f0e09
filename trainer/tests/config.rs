//! Configs: every shipped config validates; mistakes are refused naming the key and the rule.

use std::path::Path;
use weft_trainer::config::{attn_scale, ModelConfig};
use weft_trainer::Config;

fn configs_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs"))
}

fn err(base: &str, sets: &[&str]) -> String {
    let path = configs_dir().join(base);
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    Config::load(&path, &sets)
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn every_shipped_config_parses_and_validates() {
    let mut n = 0;
    for e in std::fs::read_dir(configs_dir()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            Config::load(&p, &[]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 5, "dit-tiny, gpt-tiny, dit-1b, dit-30b, llama-8b");
}

#[test]
fn overrides_reach_nested_keys_and_keep_types() {
    let sets = [
        "training.steps=7",
        "optimizer.warmup_steps=2",
        "optimizer.lr=0.5",
        "job.name=x",
        "model.patch=[1, 2, 2]",
    ]
    .map(String::from);
    let c = Config::load(&configs_dir().join("dit-tiny.toml"), &sets).unwrap();
    assert_eq!(c.training.steps, 7);
    assert_eq!(c.optimizer.lr, 0.5);
    assert_eq!(c.job.name, "x");
    let weft_trainer::config::ModelConfig::Dit(m) = &c.model else {
        panic!()
    };
    assert_eq!(m.patch, [1, 2, 2]);
    // The config round-trips through its TOML form (what exported weights embed).
    assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
}

#[test]
fn mistakes_name_the_key_and_the_rule() {
    let cases: &[(&str, &[&str], &str)] = &[
        ("dit-tiny.toml", &["model.widht=64"], "unknown field `widht`"),
        (
            "dit-tiny.toml",
            &["training.stpes=3"],
            "`training.stpes` unknown field `stpes`, expected one of `steps`",
        ),
        (
            "dit-tiny.toml",
            &["model.heads=3"],
            "`model.heads` (3) must divide model.width (128)",
        ),
        (
            "dit-tiny.toml",
            &["model.patch=[3, 4, 4]"],
            "`model.patch[0]` must divide the latent extent T=8",
        ),
        (
            "dit-tiny.toml",
            &["training.steps=\"many\""],
            "`training.steps` invalid type: string \"many\"",
        ),
        (
            "dit-tiny.toml",
            &["optimizer.schedule=linear"],
            "`optimizer.schedule` must be \"cosine\", \"wsd\" or \"constant\"",
        ),
        ("dit-tiny.toml", &["model.kind=unet"], "unknown variant `unet`"),
        (
            "gpt-tiny.toml",
            &["model.kv_heads=3"],
            "`model.kv_heads` (3) must divide model.heads (4)",
        ),
        (
            "gpt-tiny.toml",
            &["parallel.tp=8"],
            "`parallel.tp` (8) must divide model.heads (4); values that fit: 1, 2, 4",
        ),
        (
            "llama-8b.toml",
            &["parallel.cp=3"],
            "`parallel.cp` (3) must divide the sequence length",
        ),
        (
            "dit-tiny.toml",
            &["optimizer.lr=-1"],
            "`optimizer.lr` must be positive",
        ),
    ];
    for (base, sets, want) in cases {
        let got = err(base, sets);
        assert!(got.contains(want), "{sets:?}: got `{got}`, want `{want}`");
    }
}

/// A value of the wrong type is named by its full key and the type expected, also inside
/// the sections chosen by `kind`; sizes beyond any machine are refused before any shape
/// arithmetic.
#[test]
fn wrong_types_and_absurd_sizes_name_the_key() {
    let cases: &[(&str, &[&str], &str)] = &[
        (
            "dit-tiny.toml",
            &["model.width=big"],
            "`model.width` invalid type: string \"big\", expected usize",
        ),
        (
            "gpt-tiny.toml",
            &["model.tie_embeddings=3"],
            "`model.tie_embeddings` invalid type: integer `3`, expected a boolean",
        ),
        (
            "gpt-tiny.toml",
            &["data.val_fraction=\"most\""],
            "`data.val_fraction` invalid type: string \"most\", expected f64",
        ),
        (
            "dit-tiny.toml",
            &["model.latent=[8, 8, \"x\", 3]"],
            "`model.latent[2]` invalid type",
        ),
        (
            "dit-tiny.toml",
            &["model.width=1099511627776"],
            "`model.width` must be at most 2147483648",
        ),
        (
            "dit-tiny.toml",
            &[
                "model.latent=[2000000000, 2000000000, 2000000000, 3]",
                "model.patch=[1, 1, 1]",
            ],
            "`model.latent` gives more than 2147483648 tokens per clip",
        ),
        (
            "dit-tiny.toml",
            &["parallel.dp_shard=65536", "parallel.dp_replicate=65536"],
            "`parallel` dp_replicate × dp_shard × cp × tp must be at most 16777216 ranks",
        ),
    ];
    for (base, sets, want) in cases {
        let got = err(base, sets);
        assert!(got.contains(want), "{sets:?}: got `{got}`, want `{want}`");
    }
    let e = Config::from_toml(
        &std::fs::read_to_string(configs_dir().join("dit-tiny.toml"))
            .unwrap()
            .replace("width = 128", "width = \"big\""),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("`model.width` invalid type"), "{e}");
}

#[test]
fn a_missing_required_field_is_named() {
    let e = Config::from_toml("[job]\nname='x'\n[model]\nkind='gpt'\nwidth=8\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing field"), "{e}");
    assert!(e.contains("depth") || e.contains("data"), "{e}");
}

fn mup_base_hd(extra: &[&str]) -> Option<usize> {
    let mut sets = vec!["mup.enabled=true".to_string(), "mup.base_width=64".into()];
    sets.extend(extra.iter().map(|s| s.to_string()));
    match Config::load(&configs_dir().join("dit-tiny.toml"), &sets)
        .unwrap()
        .model
    {
        ModelConfig::Dit(m) => m.attn_base_hd,
        ModelConfig::Gpt(m) => m.attn_base_hd,
    }
}

#[test]
fn the_mup_base_head_dim_follows_heads_or_is_given() {
    // Heads fixed (4): the base width's head dim is 64 / 4.
    assert_eq!(mup_base_hd(&[]), Some(16));
    // Heads growing with width at head dim 32: the scale stays 1/√32 at every width.
    assert_eq!(
        mup_base_hd(&["mup.base_head_dim=32", "model.heads=8", "model.width=256"]),
        Some(32)
    );
    assert_eq!(attn_scale(Some(32), 32), 1.0 / 32f64.sqrt());
    // A base width that heads do not divide is fine once the head dim is given.
    assert!(err("dit-tiny.toml", &["mup.enabled=true", "mup.base_width=30"]).contains("mup.base_width"));
    let path = configs_dir().join("dit-tiny.toml");
    let sets = ["mup.enabled=true", "mup.base_width=30", "mup.base_head_dim=10"].map(String::from);
    assert!(Config::load(&path, &sets).is_ok());
}

#[test]
fn training_device_is_cpu_cuda_or_cuda_n() {
    use weft_trainer::device::Device;
    for bad in [
        "gpu", "CUDA", "cuda:", "cuda:x", "cuda:-1", "cuda:1.5", "cuda:+1", " cpu", "cuda:0:1",
    ] {
        let e = err("dit-tiny.toml", &[&format!("training.device={bad:?}")]);
        assert!(
            e.contains("`training.device` must be \"cpu\", \"cuda\" or \"cuda:N\"")
                && e.contains(&format!("{bad:?}")),
            "{bad}: {e}"
        );
    }
    let path = configs_dir().join("dit-tiny.toml");
    let device = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let cfg = Config::load(&path, &sets).unwrap();
        weft_trainer::device::resolve(&cfg).map_err(|e| e.to_string())
    };
    assert_eq!(device(&[]), Ok(Device::Cpu), "the default");
    for (value, want) in [
        ("cpu", Device::Cpu),
        ("cuda", Device::Cuda(0)),
        ("cuda:3", Device::Cuda(3)),
    ] {
        if want != Device::Cpu && !weft_kernels::cuda::COMPILED {
            let e = device(&[&format!("training.device={value:?}")]).unwrap_err();
            assert!(e.contains("built without CUDA support"), "{e}");
            continue;
        }
        assert_eq!(device(&[&format!("training.device={value:?}")]), Ok(want));
        assert_eq!(want.to_string().parse::<Device>(), Ok(want));
    }
}

/// On a machine that cannot run CUDA, `device::check` refuses `cuda` with the reason the
/// device could not be opened; `cpu` always passes.
#[test]
fn a_cuda_device_is_probed_on_this_machine() {
    let path = configs_dir().join("dit-tiny.toml");
    let load = |v: &str| Config::load(&path, &[format!("training.device={v:?}")]).unwrap();
    assert_eq!(
        weft_trainer::device::check(&load("cpu")).unwrap(),
        weft_trainer::device::Device::Cpu
    );
    let Err(why) = weft_kernels::cuda::CudaBackend::new(0) else {
        eprintln!("skipped the refusal: this machine has a CUDA device");
        return;
    };
    let e = weft_trainer::device::check(&load("cuda"))
        .unwrap_err()
        .to_string();
    assert_eq!(e, format!("training.device = \"cuda\": {why}"));
}

#[test]
fn mixed_precision_is_bf16_over_f32_masters() {
    use weft_kernels::DType;
    use weft_trainer::job::Precision;
    let path = configs_dir().join("dit-tiny.toml");
    let prec = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Precision::of(&Config::load(&path, &sets).unwrap())
    };
    assert_eq!(prec(&[]), Precision::uniform(DType::F32), "the default");
    assert_eq!(
        prec(&["training.param_dtype=\"bf16\""]),
        Precision {
            master: DType::F32,
            param: DType::BF16,
            reduce: DType::F32
        }
    );
    assert_eq!(
        prec(&["training.param_dtype=\"bf16\"", "training.reduce_dtype=\"bf16\""]).reduce,
        DType::BF16
    );
    assert_eq!(prec(&["training.dtype=\"f64\""]), Precision::uniform(DType::F64));
    for (sets, key) in [
        (&["training.param_dtype=\"f16\""][..], "training.param_dtype"),
        (
            &["training.dtype=\"f64\"", "training.param_dtype=\"bf16\""][..],
            "training.param_dtype",
        ),
        (&["training.reduce_dtype=\"f64\""][..], "training.reduce_dtype"),
    ] {
        let e = err("dit-tiny.toml", sets);
        assert!(
            e.contains(&format!(
                "`{key}` must be \"bf16\" (over f32 masters) or the master dtype"
            )),
            "{sets:?}: {e}"
        );
    }
}
