//! The launch plan of the device key sort in `kernels/cuda/embed.cu`, which orders the
//! embedding backward's tokens by (id, position) on the device.
//!
//! The keys are `P` (a power of two) `u64`s. A bitonic sort of them is a sequence of stages
//! `k = 2, 4, …, P`, each a sequence of compare-exchange steps `j = k/2, k/4, …, 1` (pairs
//! `(i, i + j)` with bit `j` of `i` clear, ascending where bit `k` of `i` is clear). The plan
//! groups them into three kernels:
//! - [`Step::Tile`]: every stage up to `min(P, TILE)`, each tile of `TILE` keys in shared memory;
//! - [`Step::Global`]: one step `j ≥ TILE` of a stage `k > TILE` (partners in different tiles),
//!   one thread per pair;
//! - [`Step::Merge`]: the steps `j = TILE/2, …, 1` that finish a stage `k > TILE`, each tile in
//!   shared memory.
//!
//! The plan is plain data, without CUDA types, so the emulated tests drive the kernels with the
//! same launches as the CUDA backend.

/// Keys per tile: the default of `WEFT_SORT_TILE` in `kernels/cuda/embed.cu`, which the CUDA
/// backend compiles.
pub const TILE: u64 = 2048;

/// The threads of a block of the one-pair-per-thread kernel ([`Step::Global`]).
const STEP_BLOCK: u64 = 256;

/// One kernel of the sort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `sort_keys_tile(keys, p)`: stages `2..=min(P, TILE)` of every tile.
    Tile,
    /// `sort_keys_step(keys, p, k, j)`: step `j` (`TILE ≤ j < k`) of stage `k`.
    Global {
        /// The stage.
        k: u64,
        /// The distance between the two keys of a pair.
        j: u64,
    },
    /// `sort_keys_merge(keys, p, k)`: steps `TILE/2, …, 1` of stage `k` (`k > TILE`).
    Merge {
        /// The stage.
        k: u64,
    },
}

/// One launch of the plan: a kernel, its 1-D grid and block, and its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    /// The kernel and its stage and step.
    pub step: Step,
    /// The number of keys, `P`.
    pub p: u64,
    /// Blocks.
    pub grid: u64,
    /// Threads per block (a multiple of 32).
    pub block: u32,
}

impl Launch {
    /// The kernel's name in `embed.cu`.
    pub fn kernel(&self) -> &'static str {
        match self.step {
            Step::Tile => "sort_keys_tile",
            Step::Global { .. } => "sort_keys_step",
            Step::Merge { .. } => "sort_keys_merge",
        }
    }

    /// The kernel's arguments after the keys' pointer, in order.
    pub fn scalars(&self) -> Vec<u64> {
        match self.step {
            Step::Tile => vec![self.p],
            Step::Global { k, j } => vec![self.p, k, j],
            Step::Merge { k } => vec![self.p, k],
        }
    }
}

/// The number of keys that sorts `n` tokens: the next power of two (at least 1).
pub fn padded_len(n: u64) -> u64 {
    n.max(1).next_power_of_two()
}

/// The launches, in order, that sort `p` keys with tiles of `tile` keys: nothing for `p ≤ 1`;
/// else the tile sort, then for each stage `k = 2·tile, …, p`: its global steps
/// `j = k/2, …, tile` and one tile merge.
///
/// # Panics
/// When `p` is not a power of two, or `tile` is not a power of two in `64..=2048` (a tile sort
/// block has `tile / 2` threads, a whole number of warps and at most 1024): both are the
/// caller's constants or [`padded_len`]'s result.
pub fn plan(p: u64, tile: u64) -> Vec<Launch> {
    assert!(p.is_power_of_two(), "sort plan: P = {p} is not a power of two");
    assert!(
        tile.is_power_of_two() && (64..=2048).contains(&tile),
        "sort plan: TILE = {tile} is not a power of two in 64..=2048"
    );
    if p < 2 {
        return Vec::new();
    }
    // A tile sort block needs min(P, TILE) / 2 threads, rounded up to a warp.
    let tile_block = (p.min(tile) / 2).max(32) as u32;
    let mut out = vec![Launch {
        step: Step::Tile,
        p,
        grid: p.div_ceil(tile),
        block: tile_block,
    }];
    let mut k = 2 * tile;
    while k <= p {
        let mut j = k / 2;
        while j >= tile {
            out.push(Launch {
                step: Step::Global { k, j },
                p,
                grid: (p / 2).div_ceil(STEP_BLOCK),
                block: STEP_BLOCK as u32,
            });
            j /= 2;
        }
        out.push(Launch {
            step: Step::Merge { k },
            p,
            grid: p / tile,
            block: (tile / 2) as u32,
        });
        k *= 2;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `plan` on the host with the kernels' compare-exchange rule and its thread mapping.
    fn sort_like_the_kernels(keys: &mut [u64], tile: u64) {
        let p = keys.len() as u64;
        let order = |keys: &mut [u64], i: u64, j: u64, k: u64| {
            let (a, b) = (keys[i as usize], keys[(i + j) as usize]);
            if (a > b) == (i & k == 0) {
                keys.swap(i as usize, (i + j) as usize);
            }
        };
        let low = |t: u64, j: u64| ((t & !(j - 1)) << 1) | (t & (j - 1));
        for l in plan(p, tile) {
            match l.step {
                Step::Tile => {
                    for b in 0..l.grid {
                        let (base, m) = (b * tile, p.min(tile));
                        let mut k = 2;
                        while k <= m {
                            let mut j = k / 2;
                            while j > 0 {
                                (0..m / 2).for_each(|t| order(keys, base + low(t, j), j, k));
                                j /= 2;
                            }
                            k *= 2;
                        }
                    }
                }
                Step::Global { k, j } => {
                    let threads = l.grid * l.block as u64;
                    assert!(threads >= p / 2, "{l:?}: {threads} threads for {} pairs", p / 2);
                    (0..p / 2).for_each(|t| order(keys, low(t, j), j, k));
                }
                Step::Merge { k } => {
                    for b in 0..l.grid {
                        let mut j = tile / 2;
                        while j > 0 {
                            (0..tile / 2).for_each(|t| order(keys, b * tile + low(t, j), j, k));
                            j /= 2;
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_plan_sorts() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for tile in [64, 256, 2048] {
            for p in [1u64, 2, 32, 64, 128, 1024, 4096, 16384] {
                let mut keys: Vec<u64> = (0..p)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x % 50
                    })
                    .collect();
                let mut want = keys.clone();
                want.sort_unstable();
                sort_like_the_kernels(&mut keys, tile);
                assert_eq!(keys, want, "P = {p}, TILE = {tile}");
            }
        }
    }

    #[test]
    fn the_plan_is_tile_then_global_steps_and_a_merge_per_stage() {
        assert!(plan(1, 64).is_empty());
        assert_eq!(
            plan(32, 64),
            [Launch {
                step: Step::Tile,
                p: 32,
                grid: 1,
                block: 32
            }]
        );
        let steps: Vec<Step> = plan(256, 64).iter().map(|l| l.step).collect();
        assert_eq!(
            steps,
            [
                Step::Tile,
                Step::Global { k: 128, j: 64 },
                Step::Merge { k: 128 },
                Step::Global { k: 256, j: 128 },
                Step::Global { k: 256, j: 64 },
                Step::Merge { k: 256 },
            ]
        );
        let l = plan(4096, TILE);
        assert_eq!(l.len(), 3);
        assert_eq!((l[0].grid, l[0].block), (2, 1024));
        assert_eq!(
            (l[1].grid, l[1].block, l[1].scalars()),
            (8, 256, vec![4096, 4096, 2048])
        );
        assert_eq!(
            (l[2].kernel(), l[2].grid, l[2].block),
            ("sort_keys_merge", 2, 1024)
        );
    }

    #[test]
    fn the_default_tile_is_the_kernels() {
        let src = include_str!("../../cuda/embed.cu");
        assert!(
            src.contains(&format!("#define WEFT_SORT_TILE {TILE}\n")),
            "kernels/cuda/embed.cu's default WEFT_SORT_TILE is not sort::TILE = {TILE}"
        );
    }

    #[test]
    fn padding_is_the_next_power_of_two() {
        assert_eq!(
            [0, 1, 2, 3, 64, 65, 3000].map(padded_len),
            [1, 1, 2, 4, 64, 128, 4096]
        );
        assert_eq!(padded_len(u32::MAX as u64 - 1), 1 << 32);
    }
}
