//! Latent shards: random bytes, damaged shards, nearly valid and hostile safetensors headers,
//! labels outside the classes, and tensor offsets that overflow.

use super::{apply, config, mutations, nasty_u64};
use proptest::prelude::*;
use std::collections::HashMap;
use std::path::Path;
use weft_trainer::config::DitConfig;
use weft_trainer::data::latents::Latents;
use weft_trainer::data::{Source, Split};
use weft_trainer::export;
use weft_trainer::job::layout_of;

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
    let e = export::load(&p, layout_of).expect_err("refused").to_string();
    assert!(
        e.contains("chain.safetensors") && e.contains("lie outside the 8 bytes of tensor data"),
        "{e}"
    );
}
