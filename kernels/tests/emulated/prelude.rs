//! The prelude (kernels/cuda/prelude.cuh) through the probes in kernels/tests/emu: warp and
//! block reductions against the same reduction tree done here, and the tensor-core wrappers
//! (cp.async, ldmatrix, mma.sync) against a plain matrix product.

use super::*;
use crate::harness::rand_vec;
use weft_kernels::{bf16, HostVec};

/// The xor butterfly over 32 lanes; every lane must end with the same bits.
fn butterfly(mut v: [f32; 32], op: fn(f32, f32) -> f32) -> f32 {
    for m in [16, 8, 4, 2, 1] {
        let w = v;
        for (l, x) in v.iter_mut().enumerate() {
            *x = op(w[l], w[l ^ m]);
        }
    }
    assert!(v.iter().all(|x| x.to_bits() == v[0].to_bits()));
    v[0]
}

/// `block_reduce`: each warp's butterfly into a slot, then a butterfly over the slots.
fn block_reduce(v: &[f32], op: fn(f32, f32) -> f32, identity: f32) -> f32 {
    let slots: Vec<f32> = v
        .chunks(32)
        .map(|w| butterfly(std::array::from_fn(|l| w[l]), op))
        .collect();
    butterfly(
        std::array::from_fn(|l| slots.get(l).copied().unwrap_or(identity)),
        op,
    )
}

fn f32s(v: &HostVec) -> &[f32] {
    match v {
        HostVec::F32(x) => x,
        _ => unreachable!(),
    }
}

#[test]
fn warp_and_block_reductions_give_every_thread_the_same_bits() {
    let lib = shim("reductions", &[]);
    for block in [32usize, 96, 256, 1024] {
        let grid = 3;
        let threads = grid * block;
        let n = threads - 37; // the last block is partly past the end
        let mut x = HostVec::from(
            rand_vec(block as u64, n)
                .iter()
                .map(|&v| (100.0 * v) as f32)
                .collect::<Vec<_>>(),
        );
        let mut outs: Vec<HostVec> = (0..5)
            .map(|_| HostVec::zeros(weft_kernels::DType::F32, threads))
            .collect();
        let mut args: Vec<Arg> = outs.iter_mut().map(buf).collect();
        args.extend([buf(&mut x), Arg::U64(n as u64)]);
        lib.launch("reduce_probe", dim(grid as u32), dim(block as u32), 0, &args);

        let xs = f32s(&x);
        let sum = |a: f32, b: f32| a + b;
        let max = |a: f32, b: f32| a.max(b);
        let vals: Vec<f32> = (0..threads).map(|i| xs.get(i).copied().unwrap_or(0.0)).collect();
        let maxs: Vec<f32> = (0..threads)
            .map(|i| xs.get(i).copied().unwrap_or(f32::NEG_INFINITY))
            .collect();
        let twice: Vec<f32> = vals.iter().map(|v| 2.0 * v).collect();
        for b in 0..grid {
            let r = b * block..(b + 1) * block;
            let want = [
                block_reduce(&vals[r.clone()], sum, 0.0),
                block_reduce(&twice[r.clone()], sum, 0.0),
                block_reduce(&maxs[r.clone()], max, f32::NEG_INFINITY),
            ];
            for i in r {
                let w = i / 32 * 32..i / 32 * 32 + 32;
                let warp = [
                    butterfly(std::array::from_fn(|l| vals[w.start + l]), sum),
                    butterfly(std::array::from_fn(|l| maxs[w.start + l]), max),
                ];
                let got: Vec<f32> = outs.iter().map(|o| f32s(o)[i]).collect();
                let expect = [warp[0], warp[1], want[0], want[1], want[2]];
                for (k, name) in [
                    "warp_sum",
                    "warp_max",
                    "block_sum",
                    "block_sum (again)",
                    "block_max",
                ]
                .iter()
                .enumerate()
                {
                    assert_eq!(
                        got[k].to_bits(),
                        expect[k].to_bits(),
                        "{name}, block of {block}, thread {i}: {} vs {}",
                        got[k],
                        expect[k]
                    );
                }
            }
        }
    }
}

#[test]
fn a_tree_reduction_in_dynamic_shared_memory() {
    let lib = shim("reductions", &[]);
    for block in [64usize, 1024] {
        let grid = 4;
        let n = grid * block - 100;
        let mut x = HostVec::from(rand_vec(3, n).iter().map(|&v| v as f32).collect::<Vec<_>>());
        let mut sums = HostVec::zeros(weft_kernels::DType::F32, grid);
        let args = [buf(&mut sums), buf(&mut x), Arg::U64(n as u64)];
        lib.launch("tree_sum", dim(grid as u32), dim(block as u32), 4 * block, &args);
        let xs = f32s(&x);
        for b in 0..grid {
            let mut v: Vec<f32> = (0..block)
                .map(|t| xs.get(b * block + t).copied().unwrap_or(0.0))
                .collect();
            let mut s = block / 2;
            while s > 0 {
                for t in 0..s {
                    v[t] += v[t + s];
                }
                s /= 2;
            }
            assert_eq!(
                f32s(&sums)[b].to_bits(),
                v[0].to_bits(),
                "tree_sum, block {b} of {block}"
            );
        }
    }
}

/// D = A·B + C on one tile per block, fragments built by hand, through ldmatrix, and through
/// ldmatrix.trans: all three the same bits, and within f32 summation error of the exact product
/// (bf16 products are exact in f32; 17 terms are summed).
#[test]
fn mma_and_ldmatrix_fragments_follow_the_ptx_layouts() {
    let lib = shim("fragments", &[]);
    let tiles = 3;
    let a: Vec<bf16> = bf16s(
        &rand_vec(1, tiles * 256)
            .iter()
            .map(|v| 4.0 * v)
            .collect::<Vec<_>>(),
    );
    let b: Vec<bf16> = bf16s(
        &rand_vec(2, tiles * 128)
            .iter()
            .map(|v| 4.0 * v)
            .collect::<Vec<_>>(),
    );
    let bt: Vec<bf16> = (0..tiles * 128)
        .map(|i| {
            let (tile, n, k) = (i / 128, i % 128 / 16, i % 16);
            b[tile * 128 + k * 8 + n]
        })
        .collect();
    let c: Vec<f32> = rand_vec(3, tiles * 128).iter().map(|&v| v as f32).collect();
    let (mut ha, mut hb, mut hbt, mut hc) = (
        HostVec::from(a.clone()),
        HostVec::from(b.clone()),
        HostVec::from(bt),
        HostVec::from(c.clone()),
    );
    let mut d = HostVec::zeros(weft_kernels::DType::F32, 3 * tiles * 128);
    let args = [
        buf(&mut d),
        buf(&mut ha),
        buf(&mut hb),
        buf(&mut hbt),
        buf(&mut hc),
        Arg::U64(tiles as u64),
    ];
    lib.launch("mma_probe", dim(tiles as u32), dim(32), 0, &args);
    let d = f32s(&d);
    for tile in 0..tiles {
        for i in 0..16 {
            for j in 0..8 {
                let at = tile * 128 + i * 8 + j;
                let (mut exact, mut size) = (c[at] as f64, (c[at] as f64).abs());
                for k in 0..16 {
                    let p = a[tile * 256 + i * 16 + k].to_f64() * b[tile * 128 + k * 8 + j].to_f64();
                    exact += p;
                    size += p.abs();
                }
                let got = d[at];
                assert!(
                    (got as f64 - exact).abs() <= 17.0 * f32::EPSILON as f64 * size,
                    "mma tile {tile} D[{i}][{j}] = {got}, exact {exact}"
                );
                for v in 1..3 {
                    let other = d[v * tiles * 128 + at];
                    assert_eq!(
                        other.to_bits(),
                        got.to_bits(),
                        "variant {v}, tile {tile} D[{i}][{j}]"
                    );
                }
            }
        }
    }
}

#[test]
fn launches_past_the_device_limits_are_refused() {
    let lib = shim("reductions", &[]);
    let mut sums = HostVec::zeros(weft_kernels::DType::F32, 1);
    let mut x = HostVec::zeros(weft_kernels::DType::F32, 1);
    let args = [buf(&mut sums), buf(&mut x), Arg::U64(1)];
    for (grid, block, shmem, why) in [
        (dim(0), dim(32), 0, "zero dimension"),
        (dim(1), dim(1025), 0, "1..=1024 threads"),
        (dim(1), dim(32), 228 * 1024, "227 KiB"),
    ] {
        let e = lib.try_launch("tree_sum", grid, block, shmem, &args).unwrap_err();
        assert!(e.contains(why), "{e}");
    }
}
