//! kernels/cuda/reduce.cu (the matmul's bias gradient, two deterministic stages) against the
//! CPU backend's `dbias` of `matmul_backward`, for f32 and bf16 `dout` and each `dbias` dtype
//! the contract allows, over shapes whose columns and rows are not multiples of the block
//! (32 columns × 8 row lanes) and splits of the rows into one, several and uneven chunks.
//!
//! Tolerance: the CPU adds the rows of a column in order onto `dbias`; the kernels sum each
//! chunk's rows in 8 interleaved lanes, then the lanes, then the chunks, then add that to
//! `dbias`. Both are orders of one sum of `rows + 1` terms, so they agree within
//! [`sum_order`]`(rows + 1)·(|dbias| + Σ_r |dout[r][j]|)` (see `bounds.rs`), plus one bf16 ulp
//! for a bf16 `dbias` (one rounding each side). The same split gives the same bits every run.

use super::bounds::{assert_same_bits, assert_within, sum_order};
use super::*;
use crate::harness::{cpu, f64s, host, rand_vec};
use weft_kernels::*;

fn lib() -> &'static Shim {
    shim("reduce", &[])
}

fn suffix(dt: DType) -> &'static str {
    match dt {
        DType::BF16 => "bf16",
        _ => "f32",
    }
}

/// Runs both stages with `per` rows per chunk: `dbias (n) += Σ_rows dout (rows, n)`.
fn bias_grad(dbias: &mut HostVec, dout: &mut HostVec, rows: usize, n: usize, per: usize) {
    let chunks = rows.div_ceil(per).max(1);
    let mut partials = HostVec::F32(vec![f32::NAN; chunks * n]);
    let stage1 = Dim3 {
        x: n.div_ceil(32) as u32,
        y: chunks as u32,
        z: 1,
    };
    let args = [
        buf(&mut partials),
        buf(dout),
        Arg::U64(rows as u64),
        Arg::U64(n as u64),
        Arg::U64(per as u64),
    ];
    let kernel = format!("bias_grad_partial_{}", suffix(dout.dtype()));
    lib().launch(&kernel, stage1, Dim3 { x: 32, y: 8, z: 1 }, 0, &args);
    let args = [
        buf(dbias),
        buf(&mut partials),
        Arg::U64(n as u64),
        Arg::U64(chunks as u64),
    ];
    lib().launch_1d(&format!("bias_grad_finish_{}", suffix(dbias.dtype())), n, &args);
}

#[test]
fn bias_grad_matches_the_cpu_matmul_backward() {
    let c = cpu();
    // (dout dtype, dbias dtype): a bf16 call may accumulate its bias gradient in f32.
    let dtypes = [
        (DType::F32, DType::F32),
        (DType::BF16, DType::BF16),
        (DType::BF16, DType::F32),
    ];
    for (dt, gdt) in dtypes {
        for (rows, n) in [(1, 1), (7, 33), (37, 19), (300, 70)] {
            let k = 3;
            let d = MatmulDims::linear(rows, k, n);
            let (a, w) = (host(&rand_vec(1, rows * k), dt), host(&rand_vec(2, n * k), dt));
            let mut dout = host(&rand_vec(3, rows * n), dt);
            let dbias0 = host(&rand_vec(4, n), gdt);
            let mut want = dbias0.clone();
            c.matmul_backward(
                None,
                None,
                Some(want.view_mut()),
                dout.view(),
                a.view(),
                w.view(),
                d,
            )
            .unwrap();
            let (g, b) = (f64s(&dout), f64s(&dbias0));
            let bound: Vec<f64> = (0..n)
                .map(|j| {
                    sum_order(rows + 1) * (b[j].abs() + (0..rows).map(|r| g[r * n + j].abs()).sum::<f64>())
                })
                .collect();
            // One chunk, chunks of 8 rows (whole row lanes), uneven chunks, one row each (small).
            let pers = if rows <= 37 {
                vec![rows, 8, 13, 1]
            } else {
                vec![rows, 8, 13]
            };
            for per in pers {
                let what = format!("bias_grad [{dt} → {gdt}] rows={rows} n={n} per={per}");
                let mut got = dbias0.clone();
                bias_grad(&mut got, &mut dout, rows, n, per);
                assert_within(&what, &got, &want, |j| bound[j]);
                let mut again = dbias0.clone();
                bias_grad(&mut again, &mut dout, rows, n, per);
                assert_same_bits(&format!("{what} (a second run)"), &again, &got);
            }
        }
    }
}
