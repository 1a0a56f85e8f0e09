//! Every backward against central finite differences in f64 (tolerance
//! `Tolerance::FINITE_DIFF`), and every op in f32 (and 16-bit for matmul) against its f64 run
//! (tolerances `Tolerance::for_dtype`). Shapes come from property tests and include odd sizes.

use crate::harness::*;
use proptest::prelude::*;
use weft_kernels::*;

const F32: &[DType] = &[DType::F32];

fn opt_grad(v: Option<HostVec>) -> Option<Vec<f64>> {
    v.map(|v| f64s(&v))
}

// ---------------------------------------------------------------- matmul

fn matmul_run(d: MatmulDims, with_bias: bool) -> impl Fn(DType, &[Vec<f64>], Option<&[f64]>) -> Run {
    move |dt, x, dout| {
        let c = cpu();
        let odt = if matches!(dt, DType::BF16 | DType::F16) {
            DType::F32
        } else {
            dt
        };
        let (a, b) = (host(&x[0], dt), host(&x[1], dt));
        let bias = with_bias.then(|| host(&x[2], odt));
        let mut out = zeros(odt, d.batch * d.m * d.n);
        c.matmul_forward(
            out.view_mut(),
            a.view(),
            b.view(),
            bias.as_ref().map(|b| b.view()),
            d,
        )
        .unwrap();
        let Some(dout) = dout else {
            return (f64s(&out), vec![]);
        };
        let dout = host(dout, odt);
        let (mut da, mut db) = (zeros(dt, x[0].len()), zeros(dt, x[1].len()));
        let mut dbias = with_bias.then(|| zeros(odt, d.n));
        c.matmul_backward(
            Some(da.view_mut()),
            Some(db.view_mut()),
            dbias.as_mut().map(|b| b.view_mut()),
            dout.view(),
            a.view(),
            b.view(),
            d,
        )
        .unwrap();
        let mut g = vec![Some(f64s(&da)), Some(f64s(&db))];
        if with_bias {
            g.push(opt_grad(dbias));
        }
        (f64s(&out), g)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn matmul(batch in 1usize..3, m in 1usize..7, n in 1usize..6, k in 1usize..8,
              ta in any::<bool>(), tb in any::<bool>(), bias in any::<bool>(), seed in 0u64..1000) {
        let d = MatmulDims { batch, m, n, k, trans_a: ta, trans_b: tb };
        let mut x = vec![rand_vec(seed, batch * m * k), rand_vec(seed + 1, batch * k * n)];
        if bias { x.push(rand_vec(seed + 2, n)); }
        check_op("matmul", &x, &[DType::F32, DType::BF16, DType::F16], matmul_run(d, bias));
    }
}

#[test]
fn matmul_transformer_shaped_in_bf16() {
    // K large enough that bf16 rounding of the inputs and f32 accumulation both matter.
    let d = MatmulDims::linear(24, 96, 40);
    let x = vec![rand_vec(7, 24 * 96), rand_vec(8, 40 * 96), rand_vec(9, 40)];
    check_op(
        "linear 24x96->40",
        &x,
        &[DType::F32, DType::BF16],
        matmul_run(d, true),
    );
}

#[test]
fn matmul_backward_accumulates_weight_grads_and_overwrites_input_grads() {
    let c = cpu();
    let d = MatmulDims::linear(2, 3, 2);
    let (a, b) = (
        host(&rand_vec(1, 6), DType::F64),
        host(&rand_vec(2, 6), DType::F64),
    );
    let dout = host(&rand_vec(3, 4), DType::F64);
    let mut da = host(&[9.0; 6], DType::F64);
    let mut db = zeros(DType::F64, 6);
    for _ in 0..2 {
        c.matmul_backward(
            Some(da.view_mut()),
            Some(db.view_mut()),
            None,
            dout.view(),
            a.view(),
            b.view(),
            d,
        )
        .unwrap();
    }
    let mut db1 = zeros(DType::F64, 6);
    let mut da1 = zeros(DType::F64, 6);
    c.matmul_backward(
        Some(da1.view_mut()),
        Some(db1.view_mut()),
        None,
        dout.view(),
        a.view(),
        b.view(),
        d,
    )
    .unwrap();
    assert_eq!(f64s(&da), f64s(&da1), "da is overwritten");
    let twice: Vec<f64> = f64s(&db1).iter().map(|v| 2.0 * v).collect();
    assert_eq!(f64s(&db), twice, "db accumulates");
}

// ---------------------------------------------------------------- norms

fn layernorm_run(d: NormDims, affine: bool) -> impl Fn(DType, &[Vec<f64>], Option<&[f64]>) -> Run {
    move |dt, x, dout| {
        let c = cpu();
        let inp = host(&x[0], dt);
        let (w, b) = if affine {
            (Some(host(&x[1], dt)), Some(host(&x[2], dt)))
        } else {
            (None, None)
        };
        let (mut out, mut mean, mut rstd) = (zeros(dt, d.n * d.c), zeros(dt, d.n), zeros(dt, d.n));
        c.layernorm_forward(
            out.view_mut(),
            mean.view_mut(),
            rstd.view_mut(),
            inp.view(),
            w.as_ref().map(|v| v.view()),
            b.as_ref().map(|v| v.view()),
            d,
        )
        .unwrap();
        let Some(dout) = dout else {
            return (f64s(&out), vec![]);
        };
        let dout = host(dout, dt);
        let mut dinp = zeros(dt, d.n * d.c);
        let (mut dw, mut db) = (zeros(dt, d.c), zeros(dt, d.c));
        c.layernorm_backward(
            dinp.view_mut(),
            affine.then(|| dw.view_mut()),
            affine.then(|| db.view_mut()),
            dout.view(),
            inp.view(),
            w.as_ref().map(|v| v.view()),
            mean.view(),
            rstd.view(),
            d,
        )
        .unwrap();
        let mut g = vec![Some(f64s(&dinp))];
        if affine {
            g.push(Some(f64s(&dw)));
            g.push(Some(f64s(&db)));
        }
        (f64s(&out), g)
    }
}

fn rmsnorm_run(d: NormDims, affine: bool) -> impl Fn(DType, &[Vec<f64>], Option<&[f64]>) -> Run {
    move |dt, x, dout| {
        let c = cpu();
        let inp = host(&x[0], dt);
        let w = affine.then(|| host(&x[1], dt));
        let (mut out, mut rstd) = (zeros(dt, d.n * d.c), zeros(dt, d.n));
        c.rmsnorm_forward(
            out.view_mut(),
            rstd.view_mut(),
            inp.view(),
            w.as_ref().map(|v| v.view()),
            d,
        )
        .unwrap();
        let Some(dout) = dout else {
            return (f64s(&out), vec![]);
        };
        let dout = host(dout, dt);
        let (mut dinp, mut dw) = (zeros(dt, d.n * d.c), zeros(dt, d.c));
        c.rmsnorm_backward(
            dinp.view_mut(),
            affine.then(|| dw.view_mut()),
            dout.view(),
            inp.view(),
            w.as_ref().map(|v| v.view()),
            rstd.view(),
            d,
        )
        .unwrap();
        let mut g = vec![Some(f64s(&dinp))];
        if affine {
            g.push(Some(f64s(&dw)));
        }
        (f64s(&out), g)
    }
}

proptest! {
    // Fixed cases, so a run is reproducible.
    #![proptest_config(ProptestConfig {
        cases: 10,
        rng_seed: proptest::test_runner::RngSeed::Fixed(216),
        ..ProptestConfig::default()
    })]

    #[test]
    // c ≥ 4: with two or three channels, near-equal values make rstd huge and the f32 gradient
    // ill-conditioned (its error grows like u·rstd·|x|, beyond any fixed relative tolerance).
    fn layernorm(n in 1usize..6, c in 4usize..12, affine in any::<bool>(), seed in 0u64..1000) {
        let d = NormDims { n, c, eps: 1e-5 };
        let mut x = vec![rand_vec(seed, n * c)];
        if affine { x.push(rand_vec(seed + 1, c)); x.push(rand_vec(seed + 2, c)); }
        check_op("layernorm", &x, F32, layernorm_run(d, affine));
    }

    #[test]
    // c ≥ 2: with one channel RMSNorm is x/√(x²+eps) ≈ sign(x), whose curvature near |x| ~ √eps
    // defeats central differences (h = 1e-5), not the analytic backward.
    fn rmsnorm(n in 1usize..6, c in 2usize..12, affine in any::<bool>(), seed in 0u64..1000) {
        let d = NormDims { n, c, eps: 1e-6 };
        let mut x = vec![rand_vec(seed, n * c)];
        if affine { x.push(rand_vec(seed + 1, c)); }
        check_op("rmsnorm", &x, F32, rmsnorm_run(d, affine));
    }
}

#[test]
fn qk_norm_is_rmsnorm_over_the_head_dim() {
    // (B=2, T=3, NH=2, HD=8) → N = 12 rows of HD = 8, one learned scale of HD.
    let d = NormDims {
        n: 2 * 3 * 2,
        c: 8,
        eps: 1e-6,
    };
    let x = vec![rand_vec(11, 12 * 8), rand_vec(12, 8)];
    check_op("qk_norm", &x, F32, rmsnorm_run(d, true));
}

// ---------------------------------------------------------------- activations

fn unary_run(
    fwd: fn(&CpuBackend, HostMut<'_>, HostRef<'_>, usize) -> Result<()>,
    bwd: fn(&CpuBackend, HostMut<'_>, HostRef<'_>, HostRef<'_>, usize) -> Result<()>,
) -> impl Fn(DType, &[Vec<f64>], Option<&[f64]>) -> Run {
    move |dt, x, dout| {
        let c = cpu();
        let n = x[0].len();
        let inp = host(&x[0], dt);
        let mut out = zeros(dt, n);
        fwd(&c, out.view_mut(), inp.view(), n).unwrap();
        let Some(dout) = dout else {
            return (f64s(&out), vec![]);
        };
        let mut dinp = zeros(dt, n);
        bwd(&c, dinp.view_mut(), host(dout, dt).view(), inp.view(), n).unwrap();
        (f64s(&out), vec![Some(f64s(&dinp))])
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]

    #[test]
    fn gelu(n in 1usize..40, seed in 0u64..1000) {
        let x: Vec<f64> = rand_vec(seed, n).iter().map(|v| 4.0 * v).collect();
        check_op("gelu", &[x], F32, unary_run(CpuBackend::gelu_forward, CpuBackend::gelu_backward));
    }

    #[test]
    fn silu(n in 1usize..40, seed in 0u64..1000) {
        let x: Vec<f64> = rand_vec(seed, n).iter().map(|v| 4.0 * v).collect();
        check_op("silu", &[x], F32, unary_run(CpuBackend::silu_forward, CpuBackend::silu_backward));
    }

    #[test]
    fn swiglu(n in 1usize..5, h in 1usize..9, seed in 0u64..1000) {
        let d = SwigluDims { n, h };
        check_op("swiglu", &[rand_vec(seed, n * 2 * h)], F32, move |dt, x, dout| {
            let c = cpu();
            let inp = host(&x[0], dt);
            let mut out = zeros(dt, n * h);
            c.swiglu_forward(out.view_mut(), inp.view(), d).unwrap();
            let Some(dout) = dout else { return (f64s(&out), vec![]) };
            let mut dinp = zeros(dt, n * 2 * h);
            c.swiglu_backward(dinp.view_mut(), host(dout, dt).view(), inp.view(), d).unwrap();
            (f64s(&out), vec![Some(f64s(&dinp))])
        });
    }
}

// ---------------------------------------------------------------- AdaLN

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    #[test]
    fn modulate(b in 1usize..3, t in 1usize..5, c in 1usize..7, extra in 0usize..3, seed in 0u64..1000) {
        // extra > 0: shift/scale are chunks of a wider fused conditioning row.
        let d = ModDims { b, t, c, cond_stride: c + extra };
        let x = vec![rand_vec(seed, b * t * c), rand_vec(seed + 1, d.cond_len()), rand_vec(seed + 2, d.cond_len())];
        check_op("modulate", &x, F32, move |dt, x, dout| {
            let cpu = cpu();
            let (xs, sh, sc) = (host(&x[0], dt), host(&x[1], dt), host(&x[2], dt));
            let mut out = zeros(dt, b * t * c);
            cpu.modulate_forward(out.view_mut(), xs.view(), sh.view(), sc.view(), d).unwrap();
            let Some(dout) = dout else { return (f64s(&out), vec![]) };
            let (mut dx, mut dsh, mut dsc) = (zeros(dt, b * t * c), zeros(dt, d.cond_len()), zeros(dt, d.cond_len()));
            cpu.modulate_backward(dx.view_mut(), dsh.view_mut(), dsc.view_mut(), host(dout, dt).view(), xs.view(), sc.view(), d).unwrap();
            (f64s(&out), vec![Some(f64s(&dx)), Some(f64s(&dsh)), Some(f64s(&dsc))])
        });
    }

    #[test]
    fn gate(b in 1usize..3, t in 1usize..5, c in 1usize..7, extra in 0usize..3, seed in 0u64..1000) {
        let d = ModDims { b, t, c, cond_stride: c + extra };
        let x = vec![rand_vec(seed, b * t * c), rand_vec(seed + 1, d.cond_len()), rand_vec(seed + 2, b * t * c)];
        check_op("gate", &x, F32, move |dt, x, dout| {
            let cpu = cpu();
            let (g, y) = (host(&x[1], dt), host(&x[2], dt));
            let mut residual = host(&x[0], dt);
            cpu.gate_forward(residual.view_mut(), g.view(), y.view(), d).unwrap();
            let Some(dout) = dout else { return (f64s(&residual), vec![]) };
            let (mut dy, mut dg) = (zeros(dt, b * t * c), zeros(dt, d.cond_len()));
            cpu.gate_backward(dy.view_mut(), dg.view_mut(), host(dout, dt).view(), g.view(), y.view(), d).unwrap();
            // The residual's gradient is dout itself (documented contract).
            (f64s(&residual), vec![Some(f64s(&host(dout, dt))), Some(f64s(&dg)), Some(f64s(&dy))])
        });
    }
}

// ---------------------------------------------------------------- RoPE

fn rope_run(d: RopeDims, table: RopeTable) -> impl Fn(DType, &[Vec<f64>], Option<&[f64]>) -> Run {
    move |dt, x, dout| {
        let c = cpu();
        let (cos, sin) = (host(&table.cos, dt), host(&table.sin, dt));
        let inp = host(&x[0], dt);
        let mut out = zeros(dt, x[0].len());
        c.rope_forward(out.view_mut(), inp.view(), cos.view(), sin.view(), d)
            .unwrap();
        let Some(dout) = dout else {
            return (f64s(&out), vec![]);
        };
        let mut dinp = zeros(dt, x[0].len());
        c.rope_backward(dinp.view_mut(), host(dout, dt).view(), cos.view(), sin.view(), d)
            .unwrap();
        (f64s(&out), vec![Some(f64s(&dinp))])
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    #[test]
    fn rope_1d(b in 1usize..3, t in 1usize..7, h in 1usize..3, half in 1usize..5, seed in 0u64..1000) {
        let d = RopeDims { b, t, h, hd: 2 * half };
        let positions: Vec<usize> = (0..t).map(|i| i + 3).collect();
        let table = RopeTable::one_d(&positions, d.hd, 10000.0);
        check_op("rope_1d", &[rand_vec(seed, b * t * h * d.hd)], F32, rope_run(d, table));
    }

    #[test]
    fn rope_3d(gt in 1usize..3, gh in 1usize..3, gw in 1usize..4, h in 1usize..3, half in 3usize..7, seed in 0u64..1000) {
        let t = gt * gh * gw;
        let d = RopeDims { b: 1, t, h, hd: 2 * half };
        let table = RopeTable::three_d(&RopeTable::grid(gt, gh, gw), RopeTable::default_bands(d.hd), 10000.0);
        check_op("rope_3d", &[rand_vec(seed, t * h * d.hd)], F32, rope_run(d, table));
    }
}

#[test]
fn rope_3d_bands_follow_their_own_axis() {
    // Tokens that differ only in w must get identical t and h angles and different w angles.
    let bands = RopeTable::default_bands(12); // 6 pairs → [2, 2, 2]
    assert_eq!(bands, [2, 2, 2]);
    let tab = RopeTable::three_d(&[[1, 2, 0], [1, 2, 3]], bands, 100.0);
    let (a, b) = (&tab.cos[..6], &tab.cos[6..]);
    assert_eq!(a[..4], b[..4]);
    assert_ne!(a[4], b[4]);
    // Position 0 is the identity rotation.
    let id = RopeTable::one_d(&[0], 8, 10000.0);
    assert!(id.cos.iter().all(|&c| c == 1.0) && id.sin.iter().all(|&s| s == 0.0));
}

// ---------------------------------------------------------------- attention

pub fn attention_run(d: AttnDims) -> impl Fn(DType, &[Vec<f64>], Option<&[f64]>) -> Run {
    move |dt, x, dout| {
        let c = cpu();
        let (q, k, v) = (host(&x[0], dt), host(&x[1], dt), host(&x[2], dt));
        let (mut out, mut lse) = (zeros(dt, x[0].len()), zeros(dt, d.b * d.nh * d.tq));
        c.attention_forward(out.view_mut(), lse.view_mut(), q.view(), k.view(), v.view(), d)
            .unwrap();
        let Some(dout) = dout else {
            return (f64s(&out), vec![]);
        };
        let (mut dq, mut dk, mut dv) = (
            zeros(dt, x[0].len()),
            zeros(dt, x[1].len()),
            zeros(dt, x[2].len()),
        );
        c.attention_backward(
            dq.view_mut(),
            dk.view_mut(),
            dv.view_mut(),
            host(dout, dt).view(),
            q.view(),
            k.view(),
            v.view(),
            out.view(),
            lse.view(),
            d,
        )
        .unwrap();
        (
            f64s(&out),
            vec![Some(f64s(&dq)), Some(f64s(&dk)), Some(f64s(&dv))],
        )
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn attention(b in 1usize..3, t in 1usize..9, nkv in 1usize..3, group in 1usize..4, hd in 1usize..6,
                 causal in any::<bool>(), seed in 0u64..1000) {
        let nh = nkv * group;
        let d = AttnDims::new(b, t, nh, nkv, hd, causal);
        let x = vec![rand_vec(seed, b * t * nh * hd), rand_vec(seed + 1, b * t * nkv * hd), rand_vec(seed + 2, b * t * nkv * hd)];
        check_op("attention", &x, F32, attention_run(d));
    }
}

#[test]
fn attention_longer_than_one_block_with_offsets() {
    // 70 queries against 100 keys crosses block edges (BQ=32, BK=64); the query chunk starts at
    // global position 30, as a context-parallel shard would.
    let d = AttnDims {
        b: 1,
        tq: 70,
        tk: 100,
        nh: 4,
        nkv: 2,
        hd: 4,
        causal: true,
        scale: 0.4,
        q_start: 30,
        k_start: 0,
    };
    let x = vec![
        rand_vec(1, 70 * 4 * 4),
        rand_vec(2, 100 * 2 * 4),
        rand_vec(3, 100 * 2 * 4),
    ];
    check_op("attention (blocks, offsets)", &x, F32, attention_run(d));
}

// ---------------------------------------------------------------- losses

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    #[test]
    fn cross_entropy(n in 1usize..6, v in 2usize..11, z in prop::sample::select(vec![0.0f64, 1e-2]), seed in 0u64..1000) {
        let d = CrossEntropyDims { n, v, z_loss: z };
        // Row 0 is ignored when there are several rows.
        let targets: Vec<i32> = (0..n).map(|i| if i == 0 && n > 1 { -1 } else { ((i * 7 + seed as usize) % v) as i32 }).collect();
        let logits: Vec<f64> = rand_vec(seed, n * v).iter().map(|x| 3.0 * x).collect();
        check_op("cross_entropy", &[logits], F32, move |dt, x, dout| {
            let c = cpu();
            let (lg, tg) = (host(&x[0], dt), HostVec::from(targets.clone()));
            let (mut losses, mut lse) = (zeros(dt, n), zeros(dt, n));
            c.cross_entropy_forward(losses.view_mut(), lse.view_mut(), lg.view(), tg.view(), d).unwrap();
            let Some(dout) = dout else { return (f64s(&losses), vec![]) };
            let mut dl = zeros(dt, n * v);
            c.cross_entropy_backward(dl.view_mut(), host(dout, dt).view(), lg.view(), tg.view(), lse.view(), d).unwrap();
            (f64s(&losses), vec![Some(f64s(&dl))])
        });
    }

    #[test]
    fn mse(n in 1usize..30, seed in 0u64..1000) {
        check_op("mse", &[rand_vec(seed, n), rand_vec(seed + 1, n)], F32, move |dt, x, dout| {
            let c = cpu();
            let (p, t) = (host(&x[0], dt), host(&x[1], dt));
            let mut loss = zeros(dt, 1);
            c.mse_forward(loss.view_mut(), p.view(), t.view(), n).unwrap();
            let Some(dout) = dout else { return (f64s(&loss), vec![]) };
            let mut dp = zeros(dt, n);
            c.mse_backward(dp.view_mut(), host(dout, dt).view(), p.view(), t.view(), n).unwrap();
            (f64s(&loss), vec![Some(f64s(&dp)), None])
        });
    }
}

// ---------------------------------------------------------------- embeddings and patches

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    #[test]
    fn embedding(n in 1usize..9, v in 1usize..6, c in 1usize..5, seed in 0u64..1000) {
        let d = EmbeddingDims { n, v, c };
        let ids: Vec<i32> = (0..n).map(|i| ((i * 3 + seed as usize) % v) as i32).collect(); // repeats
        check_op("embedding", &[rand_vec(seed, v * c)], F32, move |dt, x, dout| {
            let cpu = cpu();
            let (table, ids) = (host(&x[0], dt), HostVec::from(ids.clone()));
            let mut out = zeros(dt, n * c);
            cpu.embedding_forward(out.view_mut(), ids.view(), table.view(), d).unwrap();
            let Some(dout) = dout else { return (f64s(&out), vec![]) };
            let mut dt_ = zeros(dt, v * c);
            cpu.embedding_backward(dt_.view_mut(), host(dout, dt).view(), ids.view(), d).unwrap();
            (f64s(&out), vec![Some(f64s(&dt_))])
        });
    }

    #[test]
    fn patchify_and_unpatchify(b in 1usize..3, pt in 1usize..3, ph in 1usize..3, pw in 1usize..3,
                               nt in 1usize..3, nh in 1usize..3, nw in 1usize..3, c in 1usize..4, seed in 0u64..1000) {
        let d = PatchDims { b, t: nt * pt, h: nh * ph, w: nw * pw, c, pt, ph, pw };
        let x = rand_vec(seed, d.numel());
        check_op("patchify", std::slice::from_ref(&x), F32, move |dt, x, dout| {
            let cpu = cpu();
            let v = host(&x[0], dt);
            let mut out = zeros(dt, d.numel());
            cpu.patchify_forward(out.view_mut(), v.view(), d).unwrap();
            let Some(dout) = dout else { return (f64s(&out), vec![]) };
            let mut dx = zeros(dt, d.numel());
            cpu.patchify_backward(dx.view_mut(), host(dout, dt).view(), d).unwrap();
            (f64s(&out), vec![Some(f64s(&dx))])
        });
        check_op("unpatchify", std::slice::from_ref(&x), F32, move |dt, x, dout| {
            let cpu = cpu();
            let v = host(&x[0], dt);
            let mut out = zeros(dt, d.numel());
            cpu.unpatchify_forward(out.view_mut(), v.view(), d).unwrap();
            let Some(dout) = dout else { return (f64s(&out), vec![]) };
            let mut dx = zeros(dt, d.numel());
            cpu.unpatchify_backward(dx.view_mut(), host(dout, dt).view(), d).unwrap();
            (f64s(&out), vec![Some(f64s(&dx))])
        });
        // Round trip is exact.
        let cpu = cpu();
        let v = host(&x, DType::F64);
        let (mut tok, mut back) = (zeros(DType::F64, d.numel()), zeros(DType::F64, d.numel()));
        cpu.patchify_forward(tok.view_mut(), v.view(), d).unwrap();
        cpu.unpatchify_forward(back.view_mut(), tok.view(), d).unwrap();
        prop_assert_eq!(back, v);
    }

    #[test]
    fn timestep_embedding(n in 1usize..5, dim in 1usize..12, seed in 0u64..1000) {
        let d = TimestepDims { n, dim, max_period: 10000.0 };
        let t: Vec<f64> = rand_vec(seed, n).iter().map(|x| (x + 1.0) * 500.0).collect();
        check_op("timestep_embedding", &[t], F32, move |dt, x, dout| {
            let c = cpu();
            let t = host(&x[0], dt);
            let mut out = zeros(dt, n * dim);
            c.timestep_embedding_forward(out.view_mut(), t.view(), d).unwrap();
            let Some(dout) = dout else { return (f64s(&out), vec![]) };
            let mut dtv = zeros(dt, n);
            c.timestep_embedding_backward(dtv.view_mut(), host(dout, dt).view(), t.view(), d).unwrap();
            (f64s(&out), vec![Some(f64s(&dtv))])
        });
    }
}

#[test]
fn patch_layout_is_documented_order() {
    // (B=1, T=2, H=2, W=2, C=1) with 1x2x2 patches: token 0 holds frame 0, in (h, w) order.
    let d = PatchDims {
        b: 1,
        t: 2,
        h: 2,
        w: 2,
        c: 1,
        pt: 1,
        ph: 2,
        pw: 2,
    };
    let x: Vec<f64> = (0..8).map(|i| i as f64).collect();
    let mut out = zeros(DType::F64, 8);
    cpu()
        .patchify_forward(out.view_mut(), host(&x, DType::F64).view(), d)
        .unwrap();
    assert_eq!(f64s(&out), x);
    let d = PatchDims {
        pt: 2,
        ph: 1,
        pw: 1,
        ..d
    };
    cpu()
        .patchify_forward(out.view_mut(), host(&x, DType::F64).view(), d)
        .unwrap();
    // Token (h=0, w=0) holds frames 0 and 1 of that pixel: values 0 and 4.
    assert_eq!(f64s(&out)[..2], [0.0, 4.0]);
}

// ---------------------------------------------------------------- elementwise and norms

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]

    #[test]
    fn add(n in 1usize..30, seed in 0u64..1000) {
        check_op("add", &[rand_vec(seed, n), rand_vec(seed + 1, n)], F32, move |dt, x, dout| {
            let c = cpu();
            let (a, b) = (host(&x[0], dt), host(&x[1], dt));
            let mut out = zeros(dt, n);
            c.add_forward(out.view_mut(), a.view(), b.view(), n).unwrap();
            let Some(dout) = dout else { return (f64s(&out), vec![]) };
            let (mut da, mut db) = (zeros(dt, n), zeros(dt, n));
            c.add_backward(da.view_mut(), db.view_mut(), host(dout, dt).view(), n).unwrap();
            (f64s(&out), vec![Some(f64s(&da)), Some(f64s(&db))])
        });
    }

    #[test]
    fn scale(n in 1usize..30, alpha in -3.0f64..3.0, seed in 0u64..1000) {
        check_op("scale", &[rand_vec(seed, n)], F32, move |dt, x, dout| {
            let c = cpu();
            let xs = host(&x[0], dt);
            let mut out = zeros(dt, n);
            c.scale_forward(out.view_mut(), xs.view(), alpha, n).unwrap();
            let Some(dout) = dout else { return (f64s(&out), vec![]) };
            let mut dx = zeros(dt, n);
            c.scale_backward(dx.view_mut(), host(dout, dt).view(), alpha, n).unwrap();
            (f64s(&out), vec![Some(f64s(&dx))])
        });
    }

    #[test]
    fn l2norm(n in 1usize..40, seed in 0u64..1000) {
        check_op("l2norm", &[rand_vec(seed, n)], F32, move |dt, x, dout| {
            let c = cpu();
            let xs = host(&x[0], dt);
            let mut nrm = zeros(dt, 1);
            c.l2norm_forward(nrm.view_mut(), xs.view(), n).unwrap();
            let Some(dout) = dout else { return (f64s(&nrm), vec![]) };
            let mut dx = zeros(dt, n);
            c.l2norm_backward(dx.view_mut(), host(dout, dt).view(), xs.view(), nrm.view(), n).unwrap();
            (f64s(&nrm), vec![Some(f64s(&dx))])
        });
    }
}
