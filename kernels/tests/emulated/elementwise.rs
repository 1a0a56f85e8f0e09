//! kernels/cuda/elementwise.cu against the CPU backend. Every kernel here does the CPU's
//! arithmetic in the CPU's order (bf16: widen, one f32 operation, one rounding), so the
//! comparisons are bitwise.

use super::*;
use crate::harness::{cpu, host, rand_vec, zeros};
use weft_kernels::gradcheck::SplitMix;
use weft_kernels::*;

fn lib() -> &'static Shim {
    shim("elementwise", &[])
}

fn suffix(dt: DType) -> &'static str {
    match dt {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        _ => unreachable!(),
    }
}

const DTYPES: [DType; 2] = [DType::F32, DType::BF16];

#[test]
fn add_and_its_backward() {
    let c = cpu();
    for dt in DTYPES {
        for n in ODD_SIZES {
            let (mut a, mut b) = (host(&rand_vec(1, n), dt), host(&rand_vec(2, n), dt));
            let mut want = zeros(dt, n);
            c.add_forward(want.view_mut(), a.view(), b.view(), n).unwrap();
            let mut got = zeros(dt, n);
            lib().launch_1d(
                &format!("add_{}", suffix(dt)),
                n,
                &[buf(&mut got), buf(&mut a), buf(&mut b), Arg::U64(n as u64)],
            );
            assert_close(&format!("add_{} n={n}", suffix(dt)), &got, &want, 0);

            // The backward is two accumulations of `dout` into `da` and `db`.
            let mut dout = host(&rand_vec(3, n), dt);
            let (mut da, mut db) = (a.clone(), b.clone());
            c.add_backward(a.view_mut(), b.view_mut(), dout.view(), n)
                .unwrap();
            let kernel = format!("accumulate_{}", suffix(dt));
            for acc in [&mut da, &mut db] {
                lib().launch_1d(&kernel, n, &[buf(acc), buf(&mut dout), Arg::U64(n as u64)]);
            }
            assert_close(&format!("add_backward da [{dt}] n={n}"), &da, &a, 0);
            assert_close(&format!("add_backward db [{dt}] n={n}"), &db, &b, 0);
        }
    }
}

#[test]
fn accumulate_in_each_gradient_dtype() {
    let c = cpu();
    // (acc, x) dtypes: a bf16 call's parameter gradient may be f32.
    for (acc_dt, x_dt, kernel) in [
        (DType::F32, DType::F32, "accumulate_f32"),
        (DType::BF16, DType::BF16, "accumulate_bf16"),
        (DType::F32, DType::BF16, "accumulate_f32_bf16"),
    ] {
        for n in ODD_SIZES {
            let mut acc = host(&rand_vec(4, n), acc_dt);
            let mut x = host(&rand_vec(5, n), x_dt);
            let mut want = acc.clone();
            c.accumulate(want.view_mut(), x.view(), n).unwrap();
            lib().launch_1d(kernel, n, &[buf(&mut acc), buf(&mut x), Arg::U64(n as u64)]);
            assert_close(&format!("{kernel} n={n}"), &acc, &want, 0);
        }
    }
}

#[test]
fn fill_and_scale_convert_their_scalar_once() {
    let c = cpu();
    // Neither value is an f32 or a bf16: the f64 → f32 conversion (and the bf16 rounding of
    // its result) must be the CPU's.
    let (value, alpha) = (1.0 / 3.0, -2.0 / 7.0);
    for dt in DTYPES {
        for n in ODD_SIZES {
            let mut want = zeros(dt, n);
            c.fill(want.view_mut(), value, n).unwrap();
            let mut got = zeros(dt, n);
            let kernel = format!("fill_{}", suffix(dt));
            lib().launch_1d(
                &kernel,
                n,
                &[buf(&mut got), Arg::F32(value as f32), Arg::U64(n as u64)],
            );
            assert_close(&format!("{kernel} n={n}"), &got, &want, 0);

            let mut x = host(&rand_vec(6, n), dt);
            let kernel = format!("scale_{}", suffix(dt));
            let mut got = zeros(dt, n);
            let args = [
                buf(&mut got),
                buf(&mut x),
                Arg::F32(alpha as f32),
                Arg::U64(n as u64),
            ];
            lib().launch_1d(&kernel, n, &args);
            let (mut fwd, mut bwd) = (zeros(dt, n), zeros(dt, n));
            c.scale_forward(fwd.view_mut(), x.view(), alpha, n).unwrap();
            c.scale_backward(bwd.view_mut(), x.view(), alpha, n).unwrap();
            assert_close(&format!("{kernel} (forward) n={n}"), &got, &fwd, 0);
            assert_close(&format!("{kernel} (backward) n={n}"), &got, &bwd, 0);
        }
    }
}

/// f32 → bf16 on arbitrary bit patterns (NaNs with payloads, infinities, subnormals, exact
/// ties, values that round up to infinity), and bf16 → f32 on all 65 536 patterns: the same
/// bits as the CPU's casts.
#[test]
fn casts_match_bit_for_bit() {
    let c = cpu();
    let mut rng = SplitMix::new(7);
    let mut bits: Vec<u32> = (0..5000).map(|_| rng.next_u64() as u32).collect();
    bits.extend([
        0x7f80_0000,
        0xff80_0000,
        0x7fc0_0000,
        0x7f80_0001,
        0xffff_ffff,
        0x0000_0001,
        0x8000_0000,
        0x3f80_8000,
        0x3f81_8000,
        0x7f7f_ffff,
        0x7f7f_8000,
    ]);
    let n = bits.len();
    let mut x = HostVec::from(bits.iter().map(|&b| f32::from_bits(b)).collect::<Vec<_>>());
    let mut want = zeros(DType::BF16, n);
    c.cast(want.view_mut(), x.view(), n).unwrap();
    let mut got = zeros(DType::BF16, n);
    lib().launch_1d(
        "cast_f32_bf16",
        n,
        &[buf(&mut got), buf(&mut x), Arg::U64(n as u64)],
    );
    assert_eq!(raw16(&got), raw16(&want), "cast_f32_bf16");

    let n = 1 << 16;
    let mut x = HostVec::from((0..n).map(|b| bf16::from_bits(b as u16)).collect::<Vec<_>>());
    let mut want = zeros(DType::F32, n);
    c.cast(want.view_mut(), x.view(), n).unwrap();
    let mut got = zeros(DType::F32, n);
    lib().launch_1d(
        "cast_bf16_f32",
        n,
        &[buf(&mut got), buf(&mut x), Arg::U64(n as u64)],
    );
    let raw32 = |v: &HostVec| match v {
        HostVec::F32(v) => v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        _ => unreachable!(),
    };
    assert_eq!(raw32(&got), raw32(&want), "cast_bf16_f32");
}

fn raw16(v: &HostVec) -> Vec<u16> {
    match v {
        HostVec::BF16(v) => v.iter().map(|x| x.to_bits()).collect(),
        _ => unreachable!(),
    }
}

/// The matmul's bias epilogue: `bias_add_f32` after the GEMM is the CPU's biased matmul (its
/// bias gradient is kernels/cuda/reduce.cu's, tested in `reduce.rs`).
#[test]
fn bias_add_is_the_matmuls() {
    let c = cpu();
    for (rows, n) in [(1, 1), (3, 257), (37, 19), (5, 300)] {
        let k = 7;
        let d = MatmulDims::linear(rows, k, n);
        let (a, w) = (
            host(&rand_vec(8, rows * k), DType::F32),
            host(&rand_vec(9, n * k), DType::F32),
        );
        let mut bias = host(&rand_vec(10, n), DType::F32);
        let mut plain = zeros(DType::F32, rows * n);
        c.matmul_forward(plain.view_mut(), a.view(), w.view(), None, d)
            .unwrap();
        let mut want = zeros(DType::F32, rows * n);
        c.matmul_forward(want.view_mut(), a.view(), w.view(), Some(bias.view()), d)
            .unwrap();
        let args = [
            buf(&mut plain),
            buf(&mut bias),
            Arg::U64(rows as u64),
            Arg::U64(n as u64),
        ];
        lib().launch_1d("bias_add_f32", rows * n, &args);
        assert_close(&format!("bias_add_f32 ({rows}, {n})"), &plain, &want, 0);
    }
}
