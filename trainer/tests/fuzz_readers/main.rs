//! Hostile files for every reader — token shards, latent shards, exported weights: random
//! bytes, and files written by weft's own writers then damaged (header fields overwritten with
//! huge, overflowing or zero values, bytes flipped, truncated, headers rebuilt with
//! inconsistent shapes and offsets). Opening and reading must return `Ok` or `Err`, never
//! panic; configs are tiny, so a correct reader never allocates much and a reader that trusts
//! a size would abort this process. Also one regression test per crash seen in the field.

mod latents;
mod tokens;
mod weights;

use proptest::prelude::*;

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
