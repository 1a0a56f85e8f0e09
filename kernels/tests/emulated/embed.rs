//! kernels/cuda/embed.cu against the CPU backend, f32 and bf16 activations (f32 timesteps).
//!
//! Every comparison here is bitwise:
//! - the lookup and the patch permutations copy values;
//! - the embedding backward adds each table row's `dout` rows in token order (the device sort of
//!   packed (id, position) keys gives the kernel the CPU's order), in f32, rounded once;
//! - the timestep features compute `f_j` in f64 (the emulator's `exp`/`log` and the CPU's are
//!   the C library's), round it once, and then run the CPU's f32 operations in its order with
//!   the same `sinf`/`cosf`. On a GPU, CUDA's `sinf`/`cosf` (2 ulps), `exp`/`log` (1 ulp in f64,
//!   hidden by the rounding to f32 but for rare ties) and FMA contraction make that an ulp or
//!   two of the result (relative to the largest term for the backward's sum).

use super::*;
use crate::harness::{cpu, host, rand_vec, zeros};
use weft_kernels::cuda::sort;
use weft_kernels::*;

fn lib() -> &'static Shim {
    shim("embed", &[])
}

/// A sort tile small enough that a few hundred keys need the global and merge kernels.
const SMALL_TILE: u64 = 64;

/// embed.cu built with `tile` keys per sort tile (`WEFT_SORT_TILE`; the default is the CUDA
/// backend's).
fn lib_with_tile(tile: u64) -> &'static Shim {
    if tile == sort::TILE {
        lib()
    } else {
        shim("embed", &[&format!("WEFT_SORT_TILE={tile}")])
    }
}

/// The keys of `ids` (i32), packed and sorted by the emulated kernels as the CUDA backend
/// launches them: `sort_keys_pack`, then [`sort::plan`].
fn device_sort(tile: u64, ids: &mut HostVec) -> Vec<u64> {
    let lib = lib_with_tile(tile);
    let n = ids.len() as u64;
    let p = sort::padded_len(n);
    // Not keys: every one must be written.
    let mut keys = vec![0x5a5a_5a5a_5a5a_5a5au64; p as usize];
    let k = Arg::Ptr(keys.as_mut_ptr().cast());
    lib.launch_1d(
        "sort_keys_pack",
        p as usize,
        &[k, buf(ids), Arg::U64(n), Arg::U64(p)],
    );
    for l in sort::plan(p, tile) {
        let mut args = vec![k];
        args.extend(l.scalars().into_iter().map(Arg::U64));
        lib.launch(l.kernel(), dim(l.grid as u32), dim(l.block), 0, &args);
    }
    keys
}

/// What the device sort must give: the packed keys `(id as u32) << 32 | position`, padded with
/// `u64::MAX` to a power of two, in ascending order.
fn host_sort(ids: &[i32]) -> Vec<u64> {
    let mut keys: Vec<u64> = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| (id as u32 as u64) << 32 | i as u64)
        .collect();
    keys.resize(sort::padded_len(ids.len() as u64) as usize, u64::MAX);
    keys.sort_unstable();
    keys
}

/// `n` ids with many repeats, some negative and some far outside any table.
fn wild_ids(seed: u64, n: usize) -> Vec<i32> {
    rand_vec(seed, n)
        .iter()
        .enumerate()
        .map(|(i, r)| match i % 17 {
            3 => -1,
            7 => i32::MIN,
            11 => i32::MAX,
            13 => 1 << 30,
            _ => (r * 20.0) as i32, // -19..=19
        })
        .collect()
}

#[test]
fn device_sort_with_small_tiles_equals_a_host_sort() {
    // P = 1 (no launch), P < TILE (one tile), P = TILE, and P > TILE (global steps and merges).
    for n in [1, 2, 63, 64, 65, 200, 1000] {
        let id = wild_ids(20 + n as u64, n);
        let got = device_sort(SMALL_TILE, &mut HostVec::I32(id.clone()));
        assert!(
            got == host_sort(&id),
            "TILE = {SMALL_TILE}, N = {n}: the keys differ from a host sort"
        );
    }
}

#[test]
fn device_sort_with_the_default_tile_equals_a_host_sort() {
    // P = 4096 = 2·TILE: the tile sort, one global step and one merge, as on a GPU.
    let n = 3001;
    let id = wild_ids(30, n);
    let got = device_sort(sort::TILE, &mut HostVec::I32(id.clone()));
    assert!(
        got == host_sort(&id),
        "TILE = {}, N = {n}: the keys differ from a host sort",
        sort::TILE
    );
}

fn suffix(dt: DType) -> &'static str {
    if dt == DType::BF16 {
        "bf16"
    } else {
        "f32"
    }
}

const DTYPES: [DType; 2] = [DType::F32, DType::BF16];

/// `n` ids in `[0, v)` with repeats (a small vocabulary) and every id of a short run used.
fn ids(seed: u64, n: usize, v: usize) -> Vec<i32> {
    rand_vec(seed, n)
        .iter()
        .map(|r| (((r + 1.0) / 2.0 * v as f64) as usize).min(v - 1) as i32)
        .collect()
}

#[test]
fn embedding_forward() {
    let c = cpu();
    for dt in DTYPES {
        for (n, v, ch) in [(1, 1, 1), (7, 5, 3), (33, 50, 100), (100, 13, 257)] {
            let d = EmbeddingDims { n, v, c: ch };
            let mut table = host(&rand_vec(1, v * ch), dt);
            let mut id = HostVec::I32(ids(2, n, v));
            let mut want = zeros(dt, n * ch);
            c.embedding_forward(want.view_mut(), id.view(), table.view(), d)
                .unwrap();
            let mut got = host(&rand_vec(3, n * ch), dt);
            let kernel = format!("embedding_forward_{}", suffix(dt));
            let sizes = [n, v, ch].map(|s| Arg::U64(s as u64));
            let args = [
                buf(&mut got),
                buf(&mut id),
                buf(&mut table),
                sizes[0],
                sizes[1],
                sizes[2],
            ];
            lib().launch_1d(&kernel, n * ch, &args);
            assert_close(&format!("{kernel} (N={n}, V={v}, C={ch})"), &got, &want, 0);
        }
    }
}

/// Ids the host's checks refuse never reach memory outside the table: the lookup writes zero
/// rows for them, and the backward skips them (and positions outside `[0, N)`).
#[test]
fn ids_out_of_range_stay_in_bounds() {
    let (n, v, ch) = (4usize, 3usize, 5usize);
    let sizes = [n, v, ch].map(|s| Arg::U64(s as u64));
    let mut table = host(&rand_vec(12, v * ch), DType::F32);
    let mut id = HostVec::I32(vec![1, -1, 3, 1 << 30]);
    let mut out = host(&rand_vec(13, n * ch), DType::F32);
    let args = [
        buf(&mut out),
        buf(&mut id),
        buf(&mut table),
        sizes[0],
        sizes[1],
        sizes[2],
    ];
    lib().launch_1d("embedding_forward_f32", n * ch, &args);
    let HostVec::F32(o) = &out else { unreachable!() };
    let HostVec::F32(t) = &table else { unreachable!() };
    assert_eq!(
        o[..ch],
        t[ch..2 * ch],
        "embedding_forward_f32: the valid id's row"
    );
    assert!(
        o[ch..].iter().all(|&x| x.to_bits() == 0),
        "embedding_forward_f32: {o:?}"
    );

    // The backward skips the ids the checks refuse (negative ones and ids >= V) and keys whose
    // position is outside [0, N), and reads only keys[0..N). dout (N, C) sits one row into a
    // buffer with a row of ones on either side, and dtable (V, C) is followed by a row of ones:
    // a read of dout at position -1 or N, or a write to row V, changes the result.
    let backward = |keys: &mut [u64], n: usize| -> (Vec<f32>, Vec<f32>) {
        let mut padded = vec![1.0f32; (n + 2) * ch];
        padded[ch..(n + 1) * ch]
            .copy_from_slice(&rand_vec(14, n * ch).iter().map(|&x| x as f32).collect::<Vec<_>>());
        let mut dtable = vec![0.0f32; (v + 1) * ch];
        dtable[v * ch..].fill(1.0);
        let args = [
            Arg::Ptr(dtable.as_mut_ptr().cast()),
            Arg::Ptr(padded[ch..].as_mut_ptr().cast()),
            Arg::Ptr(keys.as_mut_ptr().cast()),
            Arg::U64(n as u64),
            sizes[1],
            sizes[2],
        ];
        lib().launch("embedding_backward_f32", dim(n as u32), dim(32), 0, &args);
        assert!(
            dtable[v * ch..].iter().all(|&x| x == 1.0),
            "embedding_backward_f32 wrote past the table: {dtable:?}"
        );
        dtable.truncate(v * ch);
        (dtable, padded[ch..(n + 1) * ch].to_vec())
    };
    let row = |d: &[f32], r: usize| d[r * ch..(r + 1) * ch].to_vec();

    // Ids -1, V, 1 << 30 and i32::MIN among valid ones, sorted on the device.
    let id = vec![2, -1, 3, 1 << 30, 2, 0, i32::MIN];
    let mut keys = device_sort(sort::TILE, &mut HostVec::I32(id.clone()));
    let (dt, d) = backward(&mut keys, id.len());
    assert_eq!(
        row(&dt, 0),
        row(&d, 5),
        "embedding_backward_f32: row 0 gets token 5"
    );
    assert!(
        row(&dt, 1).iter().all(|&x| x == 0.0),
        "embedding_backward_f32: {dt:?}"
    );
    let two: Vec<f32> = (0..ch).map(|j| 0.0 + d[j] + d[4 * ch + j]).collect();
    assert_eq!(
        row(&dt, 2),
        two,
        "embedding_backward_f32: row 2 gets tokens 0 and 4"
    );

    // Keys no sort of N tokens makes: positions N and u32::MAX (-1 as i32), then, past N, a
    // key that would extend id 2's run.
    let n = 5;
    let key = |id: u64, pos: u64| id << 32 | pos;
    let mut keys = [
        key(0, n as u64),
        key(1, n as u64),
        key(2, 1),
        key(2, n as u64),
        key(2, u32::MAX as u64),
        key(2, 0),
    ];
    let (dt, d) = backward(&mut keys, n);
    assert!(
        row(&dt, 0).iter().chain(&row(&dt, 1)).all(|&x| x == 0.0),
        "embedding_backward_f32: {dt:?}"
    );
    assert_eq!(
        row(&dt, 2),
        row(&d, 1),
        "embedding_backward_f32: row 2 gets token 1 only"
    );
}

#[test]
fn embedding_backward_adds_in_token_order() {
    let c = cpu();
    // (dtable, dout) dtypes: a bf16 call's table gradient may be f32.
    for (gdt, dt, kernel) in [
        (DType::F32, DType::F32, "embedding_backward_f32"),
        (DType::BF16, DType::BF16, "embedding_backward_bf16"),
        (DType::F32, DType::BF16, "embedding_backward_f32_bf16"),
    ] {
        // (N, V, C, block, grid): one token; repeats within a block's channels; C over the
        // block (threads loop); fewer blocks than entries (blocks stride); unused table rows;
        // P > TILE (the global and merge kernels of the sort).
        for (n, v, ch, block, grid) in [
            (1, 1, 1, 32, 1),
            (9, 3, 5, 32, 9),
            (100, 13, 70, 32, 100),
            (64, 200, 33, 64, 7),
            (300, 7, 129, 128, 300),
        ] {
            let d = EmbeddingDims { n, v, c: ch };
            let id = ids(4 + n as u64, n, v);
            let mut dout = host(&rand_vec(5, n * ch), dt);
            // The table gradient accumulates: start from values.
            let mut want = host(&rand_vec(6, v * ch), gdt);
            let mut got = want.clone();
            c.embedding_backward(want.view_mut(), dout.view(), HostVec::I32(id.clone()).view(), d)
                .unwrap();
            // Sorted by the kernels, with tiles small enough to need every sort kernel.
            let mut keys = device_sort(SMALL_TILE, &mut HostVec::I32(id));
            let sizes = [n, v, ch].map(|s| Arg::U64(s as u64));
            let args = [
                buf(&mut got),
                buf(&mut dout),
                Arg::Ptr(keys.as_mut_ptr().cast()),
                sizes[0],
                sizes[1],
                sizes[2],
            ];
            lib_with_tile(SMALL_TILE).launch(kernel, dim(grid), dim(block), 0, &args);
            assert_close(&format!("{kernel} (N={n}, V={v}, C={ch})"), &got, &want, 0);
        }
    }
}

type Patch = fn(&CpuBackend, HostMut<'_>, HostRef<'_>, PatchDims) -> Result<()>;

#[test]
fn patchify_and_unpatchify() {
    let c = cpu();
    let ops: [(&str, Patch); 4] = [
        ("patchify_forward", CpuBackend::patchify_forward),
        ("patchify_backward", CpuBackend::patchify_backward),
        ("unpatchify_forward", CpuBackend::unpatchify_forward),
        ("unpatchify_backward", CpuBackend::unpatchify_backward),
    ];
    let shapes = [
        PatchDims {
            b: 1,
            t: 1,
            h: 1,
            w: 1,
            c: 1,
            pt: 1,
            ph: 1,
            pw: 1,
        },
        PatchDims {
            b: 2,
            t: 4,
            h: 6,
            w: 10,
            c: 3,
            pt: 2,
            ph: 3,
            pw: 5,
        },
        PatchDims {
            b: 3,
            t: 3,
            h: 4,
            w: 4,
            c: 5,
            pt: 1,
            ph: 2,
            pw: 2,
        },
        PatchDims {
            b: 1,
            t: 2,
            h: 8,
            w: 6,
            c: 7,
            pt: 2,
            ph: 4,
            pw: 1,
        },
    ];
    for dt in DTYPES {
        for d in shapes {
            let n = d.numel();
            for (name, op) in ops {
                let mut src = host(&rand_vec(7, n), dt);
                let mut want = zeros(dt, n);
                op(&c, want.view_mut(), src.view(), d).unwrap();
                let mut got = host(&rand_vec(8, n), dt);
                let kernel = format!("{name}_{}", suffix(dt));
                let mut args = vec![buf(&mut got), buf(&mut src)];
                args.extend([d.b, d.t, d.h, d.w, d.c, d.pt, d.ph, d.pw].map(|s| Arg::U64(s as u64)));
                lib().launch_1d(&kernel, n, &args);
                assert_close(&format!("{kernel} {d:?}"), &got, &want, 0);
            }
        }
    }
}

#[test]
fn timestep_embedding() {
    let c = cpu();
    for dt in DTYPES {
        for (n, width) in [(1, 1), (5, 2), (37, 33), (16, 256)] {
            for max_period in [10000.0, 37.5] {
                let d = TimestepDims {
                    n,
                    dim: width,
                    max_period,
                };
                let what = format!("[{dt}] N={n} DIM={width} max_period={max_period}");
                // DiT timesteps in [0, 1000), a zero and fractional values.
                let mut t: HostVec = rand_vec(9, n)
                    .iter()
                    .enumerate()
                    .map(|(i, r)| if i == 1 { 0.0 } else { (500.0 * (r + 1.0)) as f32 })
                    .collect::<Vec<_>>()
                    .into();
                let sizes = [Arg::U64(n as u64), Arg::U64(width as u64), Arg::F64(max_period)];

                let mut want = zeros(dt, n * width);
                c.timestep_embedding_forward(want.view_mut(), t.view(), d)
                    .unwrap();
                let mut got = host(&rand_vec(10, n * width), dt);
                let kernel = format!("timestep_embedding_forward_{}", suffix(dt));
                lib().launch_1d(
                    &kernel,
                    n * width,
                    &[buf(&mut got), buf(&mut t), sizes[0], sizes[1], sizes[2]],
                );
                assert_close(&format!("{kernel} {what}"), &got, &want, 0);

                let mut dout = host(&rand_vec(11, n * width), dt);
                let mut want = zeros(DType::F32, n);
                c.timestep_embedding_backward(want.view_mut(), dout.view(), t.view(), d)
                    .unwrap();
                let mut got: HostVec = vec![f32::NAN; n].into();
                let kernel = format!("timestep_embedding_backward_{}", suffix(dt));
                let args = [
                    buf(&mut got),
                    buf(&mut dout),
                    buf(&mut t),
                    sizes[0],
                    sizes[1],
                    sizes[2],
                ];
                lib().launch_1d(&kernel, n, &args);
                assert_close(&format!("{kernel} {what}"), &got, &want, 0);
            }
        }
    }
}
