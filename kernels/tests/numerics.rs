//! Numerics that are not gradients: the optimizer step, casts, reductions, determinism.

use crate::gradients::attention_run;
use crate::harness::*;
use weft_kernels::gradcheck::{compare, Tolerance};
use weft_kernels::*;

/// AdamW written independently from PyTorch's documented algorithm (torch.optim.AdamW),
/// one scalar at a time in f64.
fn adamw_reference(p: &mut [f64], m: &mut [f64], v: &mut [f64], g: &[f64], h: &AdamW) {
    let t = h.step as i32;
    for i in 0..p.len() {
        let grad = g[i] * h.grad_scale;
        p[i] -= h.lr * h.weight_decay * p[i];
        m[i] = h.beta1 * m[i] + (1.0 - h.beta1) * grad;
        v[i] = h.beta2 * v[i] + (1.0 - h.beta2) * grad * grad;
        let m_hat = m[i] / (1.0 - h.beta1.powi(t));
        let v_hat = v[i] / (1.0 - h.beta2.powi(t));
        p[i] -= h.lr * m_hat / (v_hat.sqrt() + h.eps);
    }
}

#[test]
fn adamw_matches_reference_over_several_steps() {
    let n = 37;
    let p0 = rand_vec(1, n);
    for dt in [DType::F64, DType::F32] {
        let c = cpu();
        let (mut p, mut m, mut v) = (host(&p0, dt), zeros(dt, n), zeros(dt, n));
        let (mut qp, mut qm, mut qv) = (f64s(&p), vec![0.0; n], vec![0.0; n]);
        for step in 1..=5u32 {
            let g = rand_vec(100 + step as u64, n);
            let h = AdamW {
                lr: 1e-2,
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: 0.1,
                step,
                grad_scale: 0.5,
            };
            c.adamw_update(
                p.view_mut(),
                m.view_mut(),
                v.view_mut(),
                host(&g, dt).view(),
                h,
                n,
            )
            .unwrap();
            adamw_reference(&mut qp, &mut qm, &mut qv, &g, &h);
        }
        // f64 steps with exactly its hyper-parameters (lr = 1e-2 is no f32 value): only
        // the order of a few f64 operations differs from the reference.
        let tol = if dt == DType::F64 {
            Tolerance {
                atol: 1e-16,
                rtol: 1e-14,
            }
        } else {
            Tolerance::for_dtype(dt)
        };
        compare(&format!("adamw params [{dt}]"), &f64s(&p), &qp, tol).unwrap();
        compare(&format!("adamw m [{dt}]"), &f64s(&m), &qm, tol).unwrap();
        compare(&format!("adamw v [{dt}]"), &f64s(&v), &qv, tol).unwrap();
    }
}

#[test]
fn cast_rounds_to_nearest_even_and_round_trips() {
    let c = cpu();
    let x = vec![
        1.0f32,
        1.0 + 2f32.powi(-8),
        1.0 + 3.0 * 2f32.powi(-8),
        -2.5,
        1e30,
        f32::INFINITY,
    ];
    let n = x.len();
    let mut b = zeros(DType::BF16, n);
    c.cast(b.view_mut(), HostVec::from(x.clone()).view(), n).unwrap();
    let HostVec::BF16(bv) = &b else { unreachable!() };
    let want: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
    assert_eq!(bv, &want);
    // Ties to even: 1 + 2^-8 → 1.0; 1 + 3·2^-8 → 1 + 2^-6.
    assert_eq!(bv[1].to_f32(), 1.0);
    assert_eq!(bv[2].to_f32(), 1.0 + 2f32.powi(-6));
    let mut back = zeros(DType::F32, n);
    c.cast(back.view_mut(), b.view(), n).unwrap();
    let mut again = zeros(DType::BF16, n);
    c.cast(again.view_mut(), back.view(), n).unwrap();
    assert_eq!(again, b, "bf16 → f32 → bf16 is the identity");
    // f64 → bf16 rounds once, directly.
    let mut d = zeros(DType::BF16, 1);
    c.cast(
        d.view_mut(),
        HostVec::from(vec![1.0f64 + 2f64.powi(-8) + 2f64.powi(-30)]).view(),
        1,
    )
    .unwrap();
    assert_eq!(f64s(&d), vec![1.0 + 2f64.powi(-7)]);
}

#[test]
fn sum_squares_accumulates_across_ranges() {
    let c = cpu();
    let x = rand_vec(5, 100_003);
    let xs = host(&x, DType::F32);
    let mut acc = zeros(DType::F32, 1);
    let (a, b) = xs.view().split_at(40_000);
    c.sum_squares(acc.view_mut(), a, 40_000).unwrap();
    c.sum_squares(acc.view_mut(), b, 60_003).unwrap();
    let want: f64 = f64s(&xs).iter().map(|v| v * v).sum();
    compare(
        "sum_squares",
        &f64s(&acc),
        &[want],
        Tolerance::for_dtype(DType::F32),
    )
    .unwrap();
}

#[test]
fn results_do_not_depend_on_thread_count() {
    let d = AttnDims::new(2, 70, 4, 2, 8, true);
    let x = vec![
        rand_vec(1, 2 * 70 * 4 * 8),
        rand_vec(2, 2 * 70 * 2 * 8),
        rand_vec(3, 2 * 70 * 2 * 8),
    ];
    let w = rand_vec(4, 2 * 70 * 4 * 8);
    let run = attention_run(d);
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let three = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
    let a = one.install(|| run(DType::F32, &x, Some(&w)));
    let b = three.install(|| run(DType::F32, &x, Some(&w)));
    assert_eq!(
        a, b,
        "attention forward/backward must be bitwise identical across thread counts"
    );

    let dm = MatmulDims::linear(64, 96, 80);
    let (xa, xb) = (
        host(&rand_vec(5, 64 * 96), DType::F32),
        host(&rand_vec(6, 80 * 96), DType::F32),
    );
    let mm = || {
        let mut out = zeros(DType::F32, 64 * 80);
        cpu()
            .matmul_forward(out.view_mut(), xa.view(), xb.view(), None, dm)
            .unwrap();
        out
    };
    assert_eq!(one.install(mm), three.install(mm));
}

#[test]
fn views_hand_out_disjoint_ranges_of_one_flat_buffer() {
    // One flat gradient buffer; LayerNorm's dweight and dbias are two ranges of it.
    let c = cpu();
    let d = NormDims {
        n: 2,
        c: 3,
        eps: 1e-5,
    };
    let inp = host(&rand_vec(1, 6), DType::F32);
    let (mut out, mut mean, mut rstd) = (zeros(DType::F32, 6), zeros(DType::F32, 2), zeros(DType::F32, 2));
    c.layernorm_forward(
        out.view_mut(),
        mean.view_mut(),
        rstd.view_mut(),
        inp.view(),
        None,
        None,
        d,
    )
    .unwrap();
    let mut grads = zeros(DType::F32, 10); // [ 4 other | dweight 3 | dbias 3 ]
    let (_, rest) = grads.view_mut().split_at(4);
    let (dw, db) = rest.split_at(3);
    let mut dinp = zeros(DType::F32, 6);
    let dout = host(&[1.0; 6], DType::F32);
    c.layernorm_backward(
        dinp.view_mut(),
        Some(dw),
        Some(db),
        dout.view(),
        inp.view(),
        None,
        mean.view(),
        rstd.view(),
        d,
    )
    .unwrap();
    let g = f64s(&grads);
    assert_eq!(g[..4], [0.0; 4]);
    assert_eq!(g[7..], [2.0; 3], "dbias = Σ_rows dout");
}

#[test]
fn accumulate_adds_and_fill_overwrites() {
    let c = cpu();
    for dt in [DType::F32, DType::F64] {
        let (a, b) = (rand_vec(8, 33), rand_vec(9, 33));
        let mut acc = host(&a, dt);
        c.accumulate(acc.view_mut(), host(&b, dt).view(), 33).unwrap();
        let want: Vec<f64> = a.iter().zip(&b).map(|(a, b)| a + b).collect();
        compare("accumulate", &f64s(&acc), &want, Tolerance::for_dtype(dt)).unwrap();
        c.fill(acc.view_mut(), 0.25, 33).unwrap();
        assert!(f64s(&acc).iter().all(|&v| v == 0.25), "{dt}");
        let err = c.fill(acc.view_mut(), 0.0, 32).unwrap_err().to_string();
        assert!(err.contains("fill: argument `out` has the wrong size"), "{err}");
    }
}

#[test]
fn f64_calls_use_their_f64_scalars_exactly() {
    // Every scalar here is no f32 value; rounding it through f32 changes the result by ~1e-8.
    let c = cpu();
    let f = DType::F64;
    let one = |v: f64| host(&[v], f);

    let mut out = zeros(f, 1);
    c.scale_forward(out.view_mut(), one(1.0).view(), 0.1, 1).unwrap();
    assert_eq!(f64s(&out), [0.1]);
    c.scale_backward(out.view_mut(), one(3.0).view(), 0.1, 1).unwrap();
    assert_eq!(f64s(&out), [3.0 * 0.1]);
    c.fill(out.view_mut(), 0.1, 1).unwrap();
    assert_eq!(f64s(&out), [0.1]);

    // RMSNorm of a zero row: rstd = 1/√eps.
    let d = NormDims { n: 1, c: 2, eps: 0.1 };
    let (mut y, mut rstd) = (zeros(f, 2), zeros(f, 1));
    c.rmsnorm_forward(y.view_mut(), rstd.view_mut(), zeros(f, 2).view(), None, d)
        .unwrap();
    assert_eq!(f64s(&rstd), [0.1f64.sqrt().recip()]);

    // Cross-entropy of zero logits over two classes: lse = ln 2, loss = ln 2 + z·(ln 2)².
    let d = CrossEntropyDims {
        n: 1,
        v: 2,
        z_loss: 0.1,
    };
    let (mut loss, mut lse) = (zeros(f, 1), zeros(f, 1));
    c.cross_entropy_forward(
        loss.view_mut(),
        lse.view_mut(),
        zeros(f, 2).view(),
        HostVec::from(vec![0i32]).view(),
        d,
    )
    .unwrap();
    let l2 = 2f64.ln();
    assert_eq!(f64s(&loss), [l2 + 0.1 * l2 * l2]);

    // One query, one key: the score is scale·q·k and lse equals it.
    let mut d = AttnDims::new(1, 1, 1, 1, 3, false);
    assert_eq!(d.scale, 1.0 / 3f64.sqrt());
    d.scale = 0.1;
    let (mut o, mut lse) = (zeros(f, 3), zeros(f, 1));
    let qk = host(&[1.0, 2.0, 3.0], f);
    c.attention_forward(o.view_mut(), lse.view_mut(), qk.view(), qk.view(), qk.view(), d)
        .unwrap();
    assert_eq!(f64s(&lse), [14.0 * 0.1]);

    // Timestep features: column 1 of a 4-wide embedding is cos(t·max_period^(−1/2)).
    let d = TimestepDims {
        n: 1,
        dim: 4,
        max_period: 10000.1,
    };
    let mut feats = zeros(f, 4);
    c.timestep_embedding_forward(feats.view_mut(), one(3.0).view(), d)
        .unwrap();
    let freq = (-(10000.1f64.ln()) / 2.0).exp();
    assert_eq!(f64s(&feats)[1], (3.0 * freq).cos());
}
