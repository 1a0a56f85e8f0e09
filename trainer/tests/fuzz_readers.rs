//! Hostile files for every reader — token shards, latent shards, exported weights: random
//! bytes, and files written by weft's own writers then damaged (header fields overwritten with
//! huge, overflowing or zero values, bytes flipped, truncated, headers rebuilt with
//! inconsistent shapes and offsets). Opening and reading must return `Ok` or `Err`, never
//! panic; configs are tiny, so a correct reader never allocates much and a reader that trusts
//! a size would abort this process. Also one regression test per crash seen in the field.

use proptest::prelude::*;
use std::collections::HashMap;
use std::path::Path;
use weft_trainer::config::{DitConfig, ModelConfig};
use weft_trainer::data::latents::Latents;
use weft_trainer::data::tokens::{write_shard, TokenShard, Tokens, MAGIC};
use weft_trainer::data::{Source, Split};
use weft_trainer::train::layout_of;
use weft_trainer::{export, Config};

/// Values that break size arithmetic: zero, one, type limits, powers of two around them, and
/// values whose product with a small width wraps around 2^64.
fn nasty_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(2),
        Just(3),
        Just(4),
        Just(u32::MAX as u64),
        Just(u64::MAX),
        Just(i64::MAX as u64),
        (0u64..64).prop_map(|k| (1u64 << 63) + k),
        (0u64..64).prop_map(|k| (1u64 << 62) + k),
        (0u32..64).prop_map(|b| 1u64 << b),
        (0u64..1000),
        any::<u64>(),
    ]
}

#[derive(Clone, Debug)]
enum Mutation {
    /// Overwrite 8 bytes at one of the given header offsets.
    Put64(usize, u64),
    /// Overwrite 4 bytes at one of the given header offsets.
    Put32(usize, u32),
    /// XOR the byte at `position mod len`.
    Flip(usize, u8),
    /// Cut the file at `position mod (len + 1)`.
    Truncate(usize),
    /// Append bytes.
    Append(Vec<u8>),
}

fn mutations(fields64: &'static [usize], fields32: &'static [usize]) -> impl Strategy<Value = Vec<Mutation>> {
    let one = prop_oneof![
        2 => (prop::sample::select(fields64), nasty_u64()).prop_map(|(o, v)| Mutation::Put64(o, v)),
        2 => (prop::sample::select(fields32), nasty_u64()).prop_map(|(o, v)| Mutation::Put32(o, v as u32)),
        6 => (any::<usize>(), 1u8..=255).prop_map(|(p, x)| Mutation::Flip(p, x)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => prop::collection::vec(any::<u8>(), 1..16).prop_map(Mutation::Append),
    ];
    prop::collection::vec(one, 1..4)
}

fn apply(bytes: &mut Vec<u8>, ms: &[Mutation]) {
    for m in ms {
        match m {
            Mutation::Put64(o, v) if o + 8 <= bytes.len() => {
                bytes[*o..o + 8].copy_from_slice(&v.to_le_bytes())
            }
            Mutation::Put32(o, v) if o + 4 <= bytes.len() => {
                bytes[*o..o + 4].copy_from_slice(&v.to_le_bytes())
            }
            Mutation::Flip(p, x) if !bytes.is_empty() => {
                let n = bytes.len();
                bytes[p % n] ^= x
            }
            Mutation::Truncate(p) => bytes.truncate(p % (bytes.len() + 1)),
            Mutation::Append(extra) => bytes.extend_from_slice(extra),
            _ => {}
        }
    }
}

fn config(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------- token shards

/// Open the shard and read everything a training run would; no panic whatever the bytes.
fn read_tokens(p: &Path) {
    if let Ok(s) = TokenShard::open(p) {
        assert_eq!(s.ids(0..s.len).map(Iterator::count), Some(s.len));
        assert_eq!(s.get(s.len), None);
        assert!(s.ids(s.len..usize::MAX).is_none());
    }
    for (seq_len, val_fraction) in [(1, 0.0), (3, 0.25), (8, 0.5)] {
        if let Ok(t) = Tokens::new(p, seq_len, 1 << 20, val_fraction, 7) {
            let b = t.batch(Split::Train, &[0, 1, u64::MAX]).unwrap();
            assert_eq!(b.ids.len(), 3 * seq_len);
            let b = t.batch(Split::Val, &[0, 5, u64::MAX]).unwrap();
            assert_eq!(b.targets.len(), 3 * seq_len);
        }
    }
}

fn good_tokens(dir: &Path, wide: bool) -> Vec<u8> {
    let p = dir.join("good.tok");
    let vocab = if wide { 70_000 } else { 300 };
    let ids: Vec<u32> = (0..40u32).map(|i| (i * 37) % vocab as u32).collect();
    write_shard(&p, &ids, vocab).unwrap();
    std::fs::read(&p).unwrap()
}

proptest! {
    #![proptest_config(config(300))]

    #[test]
    fn token_shards_of_random_bytes_are_refused_or_read(
        body in prop::collection::vec(any::<u8>(), 0..160),
        with_magic in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.tok");
        let bytes = if with_magic { [&MAGIC[..], &1u32.to_le_bytes(), &body].concat() } else { body };
        std::fs::write(&p, bytes).unwrap();
        read_tokens(&p);
    }

    #[test]
    fn damaged_token_shards_are_refused_or_read(
        wide in any::<bool>(),
        ms in mutations(&[16, 24], &[8, 12]),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = good_tokens(dir.path(), wide);
        apply(&mut bytes, &ms);
        let p = dir.path().join("x.tok");
        std::fs::write(&p, bytes).unwrap();
        read_tokens(&p);
    }
}

#[test]
fn a_token_count_that_wraps_around_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = good_tokens(dir.path(), false);
    // 2^63 + 40 two-byte tokens: the byte count wraps to exactly the 80 bytes in the file.
    bytes[24..32].copy_from_slice(&((1u64 << 63) + 40).to_le_bytes());
    let p = dir.path().join("wrap.tok");
    std::fs::write(&p, bytes).unwrap();
    let e = TokenShard::open(&p).err().expect("refused").to_string();
    assert!(
        e.contains("wrap.tok")
            && e.contains("header promises 9223372036854775848 tokens (field `number of tokens`)"),
        "{e}"
    );
    let e = Tokens::new(&p, 4, 300, 0.1, 0)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("header promises 9223372036854775848 tokens"), "{e}");
}

#[test]
fn a_vocabulary_the_token_width_cannot_hold_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = good_tokens(dir.path(), false);
    bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    let p = dir.path().join("v.tok");
    std::fs::write(&p, &bytes).unwrap();
    let e = TokenShard::open(&p).err().expect("refused").to_string();
    assert!(
        e.contains("v.tok") && e.contains("2-byte tokens need 1 ≤ vocabulary ≤ 65536"),
        "{e}"
    );
    bytes[16..24].copy_from_slice(&0u64.to_le_bytes());
    std::fs::write(&p, &bytes).unwrap();
    let e = TokenShard::open(&p).err().expect("refused").to_string();
    assert!(e.contains("`vocabulary size` is 0"), "{e}");
}

// ---------------------------------------------------------------- latent shards

fn dit() -> DitConfig {
    DitConfig {
        width: 8,
        depth: 1,
        heads: 2,
        mlp_ratio: 2.0,
        latent: [1, 2, 2, 2],
        patch: [1, 1, 1],
        num_classes: 3,
        text_dim: 3,
        qk_norm: true,
        class_dropout: 0.0,
        rope_theta: 100.0,
        precondition: false,
        sigma_data: 0.5,
        t_mean: 0.0,
        t_std: 1.0,
        attn_base_hd: None,
    }
}

/// A safetensors file from `(name, dtype, shape, bytes)` with the crate's own writer.
fn safetensors_file(
    tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)],
    meta: Option<HashMap<String, String>>,
) -> Vec<u8> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.to_string(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, meta).unwrap()
}

fn good_latents(label_dtype: safetensors::Dtype) -> Vec<u8> {
    use safetensors::Dtype;
    let n = 4;
    let lat: Vec<u8> = (0..n * 8).flat_map(|i| (i as f32 * 0.1).to_le_bytes()).collect();
    let labels: Vec<u8> = match label_dtype {
        Dtype::I64 => (0..n as i64).flat_map(|i| (i % 3).to_le_bytes()).collect(),
        _ => (0..n as i32).flat_map(|i| (i % 3).to_le_bytes()).collect(),
    };
    let emb: Vec<u8> = (0..n * 3)
        .flat_map(|i| half::bf16::from_f32(i as f32).to_le_bytes())
        .collect();
    safetensors_file(
        &[
            ("latents", Dtype::F32, vec![n, 1, 2, 2, 2], lat),
            ("labels", label_dtype, vec![n], labels),
            ("embeddings", Dtype::BF16, vec![n, 3], emb),
        ],
        None,
    )
}

/// Load the shard and draw batches from both splits; no panic whatever the bytes.
fn read_latents(p: &Path) {
    let cfg = dit();
    if let Ok(src) = Latents::new(p, &cfg, 0.25, 3) {
        let b = src.batch(Split::Train, &[0, 1, u64::MAX]).unwrap();
        assert_eq!(b.x.len(), 3 * 8);
        assert!(b.class.iter().all(|&k| (0..=3).contains(&k)));
        let b = src.batch(Split::Val, &[0, 9]).unwrap();
        assert_eq!(b.text.map(|t| t.len()), Some(2 * 3));
    }
}

/// A header entry with arbitrary (often inconsistent) dtype, shape and offsets.
fn hostile_entry() -> impl Strategy<Value = String> {
    let dtype = prop::sample::select(vec![
        "F32", "F16", "BF16", "I32", "I64", "U8", "F64", "BOOL", "F4", "X",
    ]);
    let dim = prop_oneof![0u64..6, nasty_u64()];
    (
        dtype,
        prop::collection::vec(dim, 0..6),
        nasty_u64(),
        nasty_u64(),
        0u64..400,
    )
        .prop_map(|(d, shape, s, e, small)| {
            let (s, e) = if small % 3 == 0 { (s, e) } else { (0, small) };
            format!("{{\"dtype\":\"{d}\",\"shape\":{shape:?},\"data_offsets\":[{s},{e}]}}")
        })
}

/// One tensor of a latent shard that the crate accepts: a dtype, and either the shape the
/// model wants (for `n` samples) or a nearby one; its bytes follow the previous tensor's.
#[derive(Clone, Debug)]
struct NearTensor {
    dtype: safetensors::Dtype,
    n: usize,
    /// `None`: the wanted shape; `Some((axis, size))`: that axis resized.
    bend: Option<(usize, usize)>,
}

fn near_tensor() -> impl Strategy<Value = NearTensor> {
    use safetensors::Dtype::*;
    (
        prop::sample::select(vec![F32, F16, BF16, I32, I64, U8, F64]),
        0usize..6,
        prop::option::weighted(0.3, (0usize..6, 0usize..5)),
    )
        .prop_map(|(dtype, n, bend)| NearTensor { dtype, n, bend })
}

/// A latent shard of near-valid tensors, with data bytes from `seed` (labels land anywhere).
fn near_latents(tensors: &[(&str, NearTensor)], seed: u8) -> Vec<u8> {
    let owned: Vec<(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| {
            let mut shape = match *name {
                "latents" => vec![t.n, 1, 2, 2, 2],
                "labels" => vec![t.n],
                _ => vec![t.n, 3],
            };
            if let Some((axis, size)) = t.bend {
                if axis < shape.len() {
                    shape[axis] = size;
                } else {
                    shape.push(size);
                }
            }
            let len = shape.iter().product::<usize>() * t.dtype.bitsize() / 8;
            let data = (0..len)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                .collect();
            (*name, t.dtype, shape, data)
        })
        .collect();
    safetensors_file(&owned, None)
}

proptest! {
    #![proptest_config(config(200))]

    #[test]
    fn latent_shards_of_random_bytes_are_refused_or_read(
        body in prop::collection::vec(any::<u8>(), 0..200),
        header_len in prop::option::of(0u64..300),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.safetensors");
        let bytes = match header_len {
            Some(n) => [&n.to_le_bytes()[..], &body].concat(),
            None => body,
        };
        std::fs::write(&p, bytes).unwrap();
        read_latents(&p);
    }
}

proptest! {
    #![proptest_config(config(300))]

    #[test]
    fn damaged_latent_shards_are_refused_or_read(
        wide_labels in any::<bool>(),
        ms in mutations(&[0], &[0, 4]),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let dtype = if wide_labels { safetensors::Dtype::I64 } else { safetensors::Dtype::I32 };
        let mut bytes = good_latents(dtype);
        apply(&mut bytes, &ms);
        let p = dir.path().join("x.safetensors");
        std::fs::write(&p, bytes).unwrap();
        read_latents(&p);
    }

    #[test]
    fn latent_shards_with_nearly_valid_tensors_are_refused_or_read(
        lat in near_tensor(),
        labels in prop::option::of(near_tensor()),
        emb in prop::option::of(near_tensor()),
        seed in prop::sample::select(vec![0u8, 1, 2, 255]),
        ms in prop::option::weighted(0.3, mutations(&[0], &[0, 4])),
    ) {
        let mut tensors = vec![("latents", lat)];
        tensors.extend(labels.map(|t| ("labels", t)));
        tensors.extend(emb.map(|t| ("embeddings", t)));
        let mut bytes = near_latents(&tensors, seed);
        apply(&mut bytes, &ms.unwrap_or_default());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.safetensors");
        std::fs::write(&p, bytes).unwrap();
        read_latents(&p);
    }

    #[test]
    fn latent_shards_with_hostile_headers_are_refused_or_read(
        entries in prop::collection::vec(
            (prop::sample::select(vec!["latents", "labels", "embeddings", "other"]), hostile_entry()),
            0..4,
        ),
        metadata in prop::sample::select(vec!["", "\"__metadata__\":null,", "\"__metadata__\":{\"data_offsets\":\"x\"},"]),
        data_len in 0usize..400,
        fill in any::<u8>(),
    ) {
        let body: Vec<String> = entries.iter().map(|(n, e)| format!("\"{n}\":{e}")).collect();
        let header = format!("{{{metadata}{}}}", body.join(","));
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + data_len, fill);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.safetensors");
        std::fs::write(&p, bytes).unwrap();
        read_latents(&p);
    }
}

#[test]
fn latent_labels_outside_the_classes_are_refused_with_the_file_named() {
    use safetensors::Dtype;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("neg.safetensors");
    let lat: Vec<u8> = vec![0; 2 * 8 * 4];
    for (labels, want) in [
        (vec![0i64, -1], "label -1 is outside"),
        (vec![0, i64::MAX], "label 9223372036854775807 is outside"),
    ] {
        let lab: Vec<u8> = labels.iter().flat_map(|l| l.to_le_bytes()).collect();
        let emb = vec![0u8; 2 * 3 * 4];
        let bytes = safetensors_file(
            &[
                ("latents", Dtype::F32, vec![2, 1, 2, 2, 2], lat.clone()),
                ("labels", Dtype::I64, vec![2], lab),
                ("embeddings", Dtype::F32, vec![2, 3], emb),
            ],
            None,
        );
        std::fs::write(&p, bytes).unwrap();
        let e = Latents::new(&p, &dit(), 0.5, 0)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            e.contains("neg.safetensors") && e.contains(want) && e.contains("model.num_classes = 3"),
            "{e}"
        );
    }
}

/// Eight tensors whose byte ranges chain up to 2^64 - 8: the `safetensors` crate adds the
/// last end to the header length unchecked, which wrapped (a panic in checked builds).
fn chained_overflow_header() -> Vec<u8> {
    let step = (1u64 << 61) - 1;
    let entries: Vec<String> = (0..8)
        .map(|i| {
            let name = ["latents", "labels", "embeddings", "a", "b", "c", "d", "e"][i as usize];
            format!(
                "\"{name}\":{{\"dtype\":\"U8\",\"shape\":[{step}],\"data_offsets\":[{},{}]}}",
                i * step,
                (i + 1) * step
            )
        })
        .collect();
    let header = format!("{{{}}}", entries.join(","));
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0; 8]);
    bytes
}

#[test]
fn tensor_offsets_that_overflow_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("chain.safetensors");
    std::fs::write(&p, chained_overflow_header()).unwrap();
    let e = Latents::new(&p, &dit(), 0.25, 0)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("chain.safetensors") && e.contains("lie outside the 8 bytes of tensor data"),
        "{e}"
    );
    let e = export::load(&p, layout_of).err().expect("refused").to_string();
    assert!(
        e.contains("chain.safetensors") && e.contains("lie outside the 8 bytes of tensor data"),
        "{e}"
    );
}

// ---------------------------------------------------------------- exported weights

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
    let e = export::load(&p, layout_of).err().expect("refused").to_string();
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
        .err()
        .expect("refused")
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
    let e = export::load(&p, layout_of).err().expect("refused").to_string();
    assert!(e.contains(&format!("missing tensor `{gone}`")), "{e}");
}
