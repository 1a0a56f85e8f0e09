//! Token shards: random bytes, damaged shards, and the header whose token count wrapped.

use super::{apply, config, mutations};
use proptest::prelude::*;
use std::path::Path;
use weft_trainer::data::tokens::{write_shard, TokenShard, Tokens, MAGIC};
use weft_trainer::data::{Source, Split};

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
