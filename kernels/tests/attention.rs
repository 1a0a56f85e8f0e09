//! Attention forward against a naive O(T²) softmax reference written from the definition.

use crate::harness::*;
use proptest::prelude::*;
use weft_kernels::gradcheck::{compare, Tolerance};
use weft_kernels::*;

/// `out[b,i,h] = Σ_j softmax_j(scale·q·k_j masked)·v_j`, `lse = log Σ_j exp(scale·q·k_j)`.
fn naive(q: &[f64], k: &[f64], v: &[f64], d: &AttnDims) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0.0; d.b * d.tq * d.nh * d.hd];
    let mut lse = vec![f64::NEG_INFINITY; d.b * d.nh * d.tq];
    for b in 0..d.b {
        for h in 0..d.nh {
            let kvh = h / (d.nh / d.nkv);
            for i in 0..d.tq {
                let qo = ((b * d.tq + i) * d.nh + h) * d.hd;
                let scores: Vec<Option<f64>> = (0..d.tk)
                    .map(|j| {
                        if d.causal && d.k_start + j > d.q_start + i {
                            return None;
                        }
                        let ko = ((b * d.tk + j) * d.nkv + kvh) * d.hd;
                        Some((0..d.hd).map(|x| q[qo + x] * k[ko + x]).sum::<f64>() * d.scale)
                    })
                    .collect();
                let m = scores.iter().flatten().fold(f64::NEG_INFINITY, |a, &s| a.max(s));
                if m == f64::NEG_INFINITY {
                    continue;
                }
                let z: f64 = scores.iter().flatten().map(|s| (s - m).exp()).sum();
                lse[(b * d.nh + h) * d.tq + i] = m + z.ln();
                for (j, s) in scores.iter().enumerate() {
                    if let Some(s) = s {
                        let p = (s - m).exp() / z;
                        let vo = ((b * d.tk + j) * d.nkv + kvh) * d.hd;
                        (0..d.hd).for_each(|x| out[qo + x] += p * v[vo + x]);
                    }
                }
            }
        }
    }
    (out, lse)
}

fn run(dt: DType, q: &[f64], k: &[f64], v: &[f64], d: AttnDims) -> (Vec<f64>, Vec<f64>) {
    let (q, k, v) = (host(q, dt), host(k, dt), host(v, dt));
    let (mut out, mut lse) = (zeros(dt, q.len()), zeros(dt, d.b * d.nh * d.tq));
    cpu()
        .attention_forward(out.view_mut(), lse.view_mut(), q.view(), k.view(), v.view(), d)
        .unwrap();
    (f64s(&out), f64s(&lse))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn matches_naive_softmax(b in 1usize..3, tq in 1usize..80, tk in 1usize..80, nkv in 1usize..3, group in 1usize..3,
                             hd in 1usize..9, causal in any::<bool>(), q_start in 0usize..40, seed in 0u64..1000) {
        let nh = nkv * group;
        let d = AttnDims { b, tq, tk, nh, nkv, hd, causal, scale: 1.0 / (hd as f64).sqrt(), q_start, k_start: 0 };
        let (q, k, v) = (rand_vec(seed, b * tq * nh * hd), rand_vec(seed + 1, b * tk * nkv * hd), rand_vec(seed + 2, b * tk * nkv * hd));
        let (ro, rl) = naive(&q, &k, &v, &d);
        for dt in [DType::F64, DType::F32] {
            let (o, l) = run(dt, &q, &k, &v, d);
            let tol = if dt == DType::F64 { Tolerance { atol: 1e-12, rtol: 1e-10 } } else { Tolerance::for_dtype(dt) };
            compare("attention out", &o, &ro, tol).unwrap();
            compare("attention lse", &l, &rl, tol).unwrap();
        }
    }
}

#[test]
fn fully_masked_rows_are_zero_with_infinite_lse() {
    // Keys start after the queries: every causal row sees nothing.
    let d = AttnDims {
        b: 1,
        tq: 3,
        tk: 4,
        nh: 1,
        nkv: 1,
        hd: 2,
        causal: true,
        scale: 1.0,
        q_start: 0,
        k_start: 10,
    };
    let (o, l) = run(DType::F32, &rand_vec(1, 6), &rand_vec(2, 8), &rand_vec(3, 8), d);
    assert!(o.iter().all(|&x| x == 0.0));
    assert!(l.iter().all(|&x| x == f64::NEG_INFINITY));
}

#[test]
fn lse_merges_two_halves_of_the_keys_exactly() {
    // Ring attention's merge: attention over all keys equals the lse-weighted combination of
    // attention over each half. This is the property context parallelism relies on.
    let (tq, tk, hd) = (5, 12, 3);
    let (q, k, v) = (rand_vec(1, tq * hd), rand_vec(2, tk * hd), rand_vec(3, tk * hd));
    let full = AttnDims {
        b: 1,
        tq,
        tk,
        nh: 1,
        nkv: 1,
        hd,
        causal: false,
        scale: 0.7,
        q_start: 0,
        k_start: 0,
    };
    let half = AttnDims { tk: tk / 2, ..full };
    let (o, l) = run(DType::F64, &q, &k, &v, full);
    let (o1, l1) = run(DType::F64, &q, &k[..tk / 2 * hd], &v[..tk / 2 * hd], half);
    let (o2, l2) = run(DType::F64, &q, &k[tk / 2 * hd..], &v[tk / 2 * hd..], half);
    for i in 0..tq {
        let lm = l1[i].max(l2[i]);
        let lse = lm + ((l1[i] - lm).exp() + (l2[i] - lm).exp()).ln();
        assert!((lse - l[i]).abs() < 1e-12);
        for x in 0..hd {
            let merged = (l1[i] - lse).exp() * o1[i * hd + x] + (l2[i] - lse).exp() * o2[i * hd + x];
            assert!((merged - o[i * hd + x]).abs() < 1e-12);
        }
    }
}

#[test]
fn attention_merge_of_causal_key_chunks_equals_attention_over_all_keys() {
    // Queries at positions 4..8 against keys 0..8 split in two chunks; the second chunk masks
    // part of each row, and rows of a third, all-masked chunk (keys 8..12) must change nothing.
    let (b, nh, nkv, hd, tq) = (2, 4, 2, 3, 4);
    let d = |tk, k_start| AttnDims {
        b,
        tq,
        tk,
        nh,
        nkv,
        hd,
        causal: true,
        scale: 0.6,
        q_start: 4,
        k_start,
    };
    let q = rand_vec(1, b * tq * nh * hd);
    let k = rand_vec(2, b * 12 * nkv * hd);
    let v = rand_vec(3, b * 12 * nkv * hd);
    let chunk = |x: &[f64], lo: usize, hi: usize| -> Vec<f64> {
        let row = nkv * hd;
        (0..b)
            .flat_map(|s| x[(s * 12 + lo) * row..(s * 12 + hi) * row].to_vec())
            .collect()
    };
    let (want, want_lse) = naive(&q, &chunk(&k, 0, 8), &chunk(&v, 0, 8), &d(8, 0));
    let (o, l) = run(DType::F64, &q, &chunk(&k, 0, 4), &chunk(&v, 0, 4), d(4, 0));
    let (mut out, mut lse) = (host(&o, DType::F64), host(&l, DType::F64));
    for (lo, hi) in [(4, 8), (8, 12)] {
        let (po, pl) = run(DType::F64, &q, &chunk(&k, lo, hi), &chunk(&v, lo, hi), d(4, lo));
        let (po, pl) = (host(&po, DType::F64), host(&pl, DType::F64));
        cpu()
            .attention_merge(out.view_mut(), lse.view_mut(), po.view(), pl.view(), d(4, lo))
            .unwrap();
    }
    compare(
        "out",
        &f64s(&out),
        &want,
        Tolerance {
            atol: 1e-12,
            rtol: 1e-12,
        },
    )
    .unwrap();
    compare(
        "lse",
        &f64s(&lse),
        &want_lse,
        Tolerance {
            atol: 1e-12,
            rtol: 1e-12,
        },
    )
    .unwrap();
}
