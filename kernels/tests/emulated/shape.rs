//! kernels/cuda/shape.cu against the CPU backend: `swap_axes` is a copy, so f32 and bf16 results
//! must be the same bits, on shapes with single axes, a pure transpose (inner 1), and sizes off
//! the 256-thread block; the inverse swap restores the input.

use super::bounds::assert_same_bits;
use super::*;
use crate::harness::{cpu, host, rand_vec, zeros};
use weft_kernels::*;

#[test]
fn swap_axes_and_its_inverse() {
    let lib = shim("shape", &[]);
    let c0 = cpu();
    for dt in [DType::F32, DType::BF16] {
        let kernel = if dt == DType::BF16 {
            "swap_axes_bf16"
        } else {
            "swap_axes_f32"
        };
        for (a, b, inner) in [
            (1, 1, 1),
            (3, 2, 2),
            (1, 9, 4),
            (5, 7, 1),
            (4, 3, 65),
            (2, 129, 3),
            (17, 5, 31),
        ] {
            let d = SwapDims { a, b, inner };
            let n = d.numel();
            let mut x = host(&rand_vec(1, n), dt);
            let mut want = zeros(dt, n);
            c0.swap_axes(want.view_mut(), x.view(), d).unwrap();
            let mut got = host(&rand_vec(2, n), dt);
            let sizes = [a, b, inner].map(|v| Arg::U64(v as u64));
            lib.launch_1d(
                kernel,
                n,
                &[buf(&mut got), buf(&mut x), sizes[0], sizes[1], sizes[2]],
            );
            assert_same_bits(&format!("{kernel} ({a}, {b}, {inner})"), &got, &want);

            let inv = d.inverse();
            let mut back = zeros(dt, n);
            let sizes = [inv.a, inv.b, inv.inner].map(|v| Arg::U64(v as u64));
            lib.launch_1d(
                kernel,
                n,
                &[buf(&mut back), buf(&mut got), sizes[0], sizes[1], sizes[2]],
            );
            assert_same_bits(&format!("{kernel} ({a}, {b}, {inner}) and back"), &back, &x);
        }
    }
}
