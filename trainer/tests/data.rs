//! Data sources: token shards round-trip and bad files are refused with the file named;
//! latent shards load and are validated against the model.

use std::collections::HashMap;
use weft_trainer::data::tokens::{tokenize, write_shard, TokenShard, Tokens, EOD};
use weft_trainer::data::{latents::Latents, Source, Split};

#[test]
fn tokenize_round_trips_bytes_with_document_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.txt"), dir.path().join("b.txt"));
    std::fs::write(&a, "héllo").unwrap();
    std::fs::write(&b, "ok").unwrap();
    let out = dir.path().join("t.tok");
    let n = tokenize(&[a, b], &out).unwrap();
    let s = TokenShard::open(&out).unwrap();
    assert_eq!((n, s.len, s.vocab), (10, 10, 257)); // é is two bytes
    let ids: Vec<u32> = s.ids(0..s.len).unwrap().collect();
    assert_eq!((s.get(s.len - 1), s.get(s.len)), (Some(EOD), None));
    let mut want: Vec<u32> = "héllo".bytes().map(u32::from).collect();
    want.push(EOD);
    want.extend("ok".bytes().map(u32::from));
    want.push(EOD);
    assert_eq!(ids, want);
}

#[test]
fn bad_token_shards_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.tok");
    write_shard(&p, &[1, 2, 3, 4], 10).unwrap();
    let good = std::fs::read(&p).unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            good[..good.len() - 1].to_vec(),
            "truncated or padded: header promises 4 tokens",
        ),
        (good[..10].to_vec(), "truncated: 10 bytes"),
        ([b"NOTTOKEN".as_slice(), &good[8..]].concat(), "bad magic"),
        (
            {
                let mut v = good.clone();
                v[12] = 3;
                v
            },
            "token width must be 2 (u16) or 4 (u32)",
        ),
        (
            {
                let mut v = good.clone();
                v[32] = 10;
                v
            },
            "token 0 is 10, outside the vocabulary of 10",
        ),
    ];
    for (bytes, want) in cases {
        std::fs::write(&p, bytes).unwrap();
        let e = TokenShard::open(&p).err().expect("refused").to_string();
        assert!(
            e.contains(want) && e.contains("x.tok"),
            "got `{e}`, want `{want}`"
        );
    }
    write_shard(&p, &(0..100).collect::<Vec<_>>(), 300).unwrap();
    let e = Tokens::new(&p, 8, 257, 0.1, 0)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("vocabulary 300 is larger than model.vocab_size = 257"),
        "{e}"
    );
}

#[test]
fn token_windows_are_deterministic_and_targets_shift_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.tok");
    write_shard(&p, &(0..1000).map(|i| i % 250).collect::<Vec<_>>(), 257).unwrap();
    let src = Tokens::new(&p, 16, 257, 0.1, 3).unwrap();
    let a = src.batch(Split::Train, &[5, 6]).unwrap();
    assert_eq!(a, src.batch(Split::Train, &[5, 6]).unwrap());
    assert_ne!(a.ids[..16], a.ids[16..]);
    for r in 0..2 {
        for i in 0..15 {
            assert_eq!(a.targets[r * 16 + i], a.ids[r * 16 + i + 1]);
        }
    }
    let v = src.batch(Split::Val, &[0]).unwrap();
    assert!(
        v.ids.iter().all(|&t| t as usize >= 900 % 250 || t < 250),
        "held-out tail"
    );
}

#[test]
fn tokenize_creates_the_output_directory() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("a.txt");
    std::fs::write(&text, "abc").unwrap();
    let out = dir.path().join("runs/data/text.tok");
    assert_eq!(tokenize(&[text], &out).unwrap(), 4);
    assert_eq!(TokenShard::open(&out).unwrap().len, 4);
}

#[test]
fn with_nothing_held_out_validation_tiles_the_training_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.tok");
    write_shard(&p, &(0..40).collect::<Vec<_>>(), 257).unwrap();
    let src = Tokens::new(&p, 4, 257, 0.0, 3).unwrap();
    let v = src.batch(Split::Val, &[0, 1, 8]).unwrap();
    assert_eq!(v.ids, [0, 1, 2, 3, 5, 6, 7, 8, 0, 1, 2, 3]);
    assert_eq!(v.targets[..4], [1, 2, 3, 4]);
}

fn write_latents(path: &std::path::Path, n: usize, shape: [usize; 4], labels: Option<Vec<i32>>) {
    let numel = n * shape.iter().product::<usize>();
    let data: Vec<u8> = (0..numel)
        .flat_map(|i| ((i % 7) as f32 * 0.1).to_le_bytes())
        .collect();
    let mut t = HashMap::new();
    let full = vec![n, shape[0], shape[1], shape[2], shape[3]];
    t.insert(
        "latents".to_string(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, full, &data).unwrap(),
    );
    let lab: Vec<u8> = labels.iter().flatten().flat_map(|l| l.to_le_bytes()).collect();
    if labels.is_some() {
        t.insert(
            "labels".to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![n], &lab).unwrap(),
        );
    }
    safetensors::serialize_to_file(t, None, path).unwrap();
}

#[test]
fn latent_shards_load_and_are_checked_against_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = weft_trainer::config::DitConfig {
        text_dim: 0,
        ..crate::common::tiny_dit()
    };
    let good = dir.path().join("a.safetensors");
    write_latents(&good, 10, cfg.latent, Some((0..10).map(|i| i % 3).collect()));
    let src = Latents::new(&good, &cfg, 0.2, 0).unwrap();
    let b = src.batch(Split::Train, &[0, 1]).unwrap();
    assert_eq!(b.x.len(), 2 * cfg.latent.iter().product::<usize>());
    assert!(b.class.iter().all(|&c| (0..3).contains(&c)));
    let bad = dir.path().join("b.safetensors");
    write_latents(&bad, 4, [2, 4, 4, 4], None);
    let e = Latents::new(&bad, &cfg, 0.2, 0).err().unwrap().to_string();
    assert!(
        e.contains("`latents` has shape [4, 2, 4, 4, 4]; model.latent wants [N, 2, 4, 4, 3]"),
        "{e}"
    );
    write_latents(&bad, 4, cfg.latent, Some(vec![0, 1, 2, 7]));
    let e = Latents::new(&bad, &cfg, 0.2, 0).err().unwrap().to_string();
    assert!(e.contains("label 7 is outside model.num_classes = 3"), "{e}");
    let with_text = weft_trainer::config::DitConfig { text_dim: 5, ..cfg };
    let e = Latents::new(&good, &with_text, 0.2, 0).err().unwrap().to_string();
    assert!(
        e.contains("model.text_dim = 5 but the file has no `embeddings`"),
        "{e}"
    );
}
