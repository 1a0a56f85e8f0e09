//! The mixed-precision contract, exactly: on inputs that bf16 represents, a call with bf16
//! activations writes, bit for bit, `f32_to_bf16_rne` of what the f32 call writes, and its f32
//! statistics and f32 parameter gradients equal the f32 call's. Each op family runs once with
//! f32 activations and twice with bf16 activations (parameter gradients in bf16, then in f32).

use crate::harness::*;
use weft_kernels::*;

/// The dtypes of one run: activations, statistics, parameter gradients.
#[derive(Clone, Copy, Debug)]
struct Prec {
    act: DType,
    stat: DType,
    grad: DType,
}

const F32: Prec = Prec {
    act: DType::F32,
    stat: DType::F32,
    grad: DType::F32,
};

/// Named buffers a run wrote.
type Outs = Vec<(&'static str, HostVec)>;

/// `n` values in about [-scale, scale) that bf16 represents exactly.
fn rep(seed: u64, n: usize, scale: f64) -> Vec<f64> {
    rand_vec(seed, n)
        .iter()
        .map(|v| bf16::from_f64(v * scale).to_f64())
        .collect()
}

/// Runs `run` in f32 and in bf16 (both parameter-gradient dtypes) and checks every output.
fn check(name: &str, run: impl Fn(Prec) -> Outs) {
    let want = run(F32);
    assert!(!want.is_empty());
    for grad in [DType::BF16, DType::F32] {
        let p = Prec {
            act: DType::BF16,
            stat: stat_dtype(DType::BF16),
            grad,
        };
        let got = run(p);
        assert_eq!(got.len(), want.len(), "{name}");
        for ((arg, g), (_, w)) in got.iter().zip(&want) {
            let HostVec::F32(w) = w else {
                panic!("{name}: the f32 run wrote `{arg}` in {}", w.dtype())
            };
            let (expected, actual): (Vec<u32>, Vec<u32>) = match g {
                HostVec::BF16(g) => (
                    w.iter().map(|&v| f32_to_bf16_rne(v).to_bits() as u32).collect(),
                    g.iter().map(|v| v.to_bits() as u32).collect(),
                ),
                HostVec::F32(g) => (
                    w.iter().map(|v| v.to_bits()).collect(),
                    g.iter().map(|v| v.to_bits()).collect(),
                ),
                other => panic!("{name}: `{arg}` came back in {}", other.dtype()),
            };
            if let Some(i) = (0..expected.len()).find(|&i| expected[i] != actual[i]) {
                panic!(
                    "{name} [{p:?}] `{arg}`[{i}]: got bits {:#x}, want {:#x} (f32 value {})",
                    actual[i], expected[i], w[i]
                );
            }
        }
    }
}

#[test]
fn matmul() {
    let d0 = MatmulDims {
        batch: 2,
        m: 5,
        n: 7,
        k: 9,
        trans_a: false,
        trans_b: false,
    };
    for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
        let d = MatmulDims {
            trans_a,
            trans_b,
            ..d0
        };
        let (na, nb, no) = (d.batch * d.m * d.k, d.batch * d.k * d.n, d.batch * d.m * d.n);
        let (a, b, bias, dout) = (
            rep(1, na, 1.0),
            rep(2, nb, 1.0),
            rep(3, d.n, 1.0),
            rep(4, no, 1.0),
        );
        let (db0, dbias0) = (rep(5, nb, 1.0), rep(6, d.n, 1.0));
        check("matmul", |p| {
            let c = cpu();
            let (ha, hb, hbias) = (host(&a, p.act), host(&b, p.act), host(&bias, p.act));
            let mut out = zeros(p.act, no);
            c.matmul_forward(out.view_mut(), ha.view(), hb.view(), Some(hbias.view()), d)
                .unwrap();
            let (mut da, mut db, mut dbias) = (zeros(p.act, na), host(&db0, p.grad), host(&dbias0, p.grad));
            c.matmul_backward(
                Some(da.view_mut()),
                Some(db.view_mut()),
                Some(dbias.view_mut()),
                host(&dout, p.act).view(),
                ha.view(),
                hb.view(),
                d,
            )
            .unwrap();
            vec![("out", out), ("da", da), ("db", db), ("dbias", dbias)]
        });
    }
}

#[test]
fn matmul_with_f32_output() {
    // bf16 inputs with an f32 output (and f32 bias and dout): cuBLASLt's A/B bf16, C/D f32.
    let d = MatmulDims::linear(6, 10, 4);
    let (a, b, bias, dout) = (rep(1, 60, 1.0), rep(2, 40, 1.0), rep(3, 4, 1.0), rep(4, 24, 1.0));
    check("matmul, f32 out", |p| {
        let c = cpu();
        let (ha, hb) = (host(&a, p.act), host(&b, p.act));
        let mut out = zeros(DType::F32, 24);
        c.matmul_forward(
            out.view_mut(),
            ha.view(),
            hb.view(),
            Some(host(&bias, DType::F32).view()),
            d,
        )
        .unwrap();
        let (mut da, mut db, mut dbias) = (zeros(p.act, 60), zeros(p.grad, 40), zeros(p.grad, 4));
        c.matmul_backward(
            Some(da.view_mut()),
            Some(db.view_mut()),
            Some(dbias.view_mut()),
            host(&dout, DType::F32).view(),
            ha.view(),
            hb.view(),
            d,
        )
        .unwrap();
        vec![("out", out), ("da", da), ("db", db), ("dbias", dbias)]
    });
}

#[test]
fn norms() {
    let d = NormDims {
        n: 7,
        c: 24,
        eps: 1e-5,
    };
    let (x, w, b, dout) = (
        rep(1, 168, 2.0),
        rep(2, 24, 1.0),
        rep(3, 24, 1.0),
        rep(4, 168, 1.0),
    );
    let (dw0, db0) = (rep(5, 24, 1.0), rep(6, 24, 1.0));
    check("layernorm", |p| {
        let c = cpu();
        let (hx, hw, hb) = (host(&x, p.act), host(&w, p.act), host(&b, p.act));
        let (mut out, mut mean, mut rstd) = (zeros(p.act, 168), zeros(p.stat, 7), zeros(p.stat, 7));
        c.layernorm_forward(
            out.view_mut(),
            mean.view_mut(),
            rstd.view_mut(),
            hx.view(),
            Some(hw.view()),
            Some(hb.view()),
            d,
        )
        .unwrap();
        let (mut dx, mut dw, mut db) = (zeros(p.act, 168), host(&dw0, p.grad), host(&db0, p.grad));
        c.layernorm_backward(
            dx.view_mut(),
            Some(dw.view_mut()),
            Some(db.view_mut()),
            host(&dout, p.act).view(),
            hx.view(),
            Some(hw.view()),
            mean.view(),
            rstd.view(),
            d,
        )
        .unwrap();
        vec![
            ("out", out),
            ("mean", mean),
            ("rstd", rstd),
            ("dinp", dx),
            ("dweight", dw),
            ("dbias", db),
        ]
    });
    check("rmsnorm", |p| {
        let c = cpu();
        let (hx, hw) = (host(&x, p.act), host(&w, p.act));
        let (mut out, mut rstd) = (zeros(p.act, 168), zeros(p.stat, 7));
        c.rmsnorm_forward(out.view_mut(), rstd.view_mut(), hx.view(), Some(hw.view()), d)
            .unwrap();
        let (mut dx, mut dw) = (zeros(p.act, 168), host(&dw0, p.grad));
        c.rmsnorm_backward(
            dx.view_mut(),
            Some(dw.view_mut()),
            host(&dout, p.act).view(),
            hx.view(),
            Some(hw.view()),
            rstd.view(),
            d,
        )
        .unwrap();
        vec![("out", out), ("rstd", rstd), ("dinp", dx), ("dweight", dw)]
    });
}

#[test]
fn activations() {
    let n = 3 * 2 * 10;
    let (x, dout) = (rep(1, n, 4.0), rep(2, n, 1.0));
    type Fwd = fn(&CpuBackend, HostMut<'_>, HostRef<'_>, usize) -> Result<()>;
    type Bwd = fn(&CpuBackend, HostMut<'_>, HostRef<'_>, HostRef<'_>, usize) -> Result<()>;
    let pairs: [(&str, Fwd, Bwd); 2] = [
        ("gelu", CpuBackend::gelu_forward, CpuBackend::gelu_backward),
        ("silu", CpuBackend::silu_forward, CpuBackend::silu_backward),
    ];
    for (name, fwd, bwd) in pairs {
        check(name, |p| {
            let c = cpu();
            let hx = host(&x, p.act);
            let (mut out, mut dx) = (zeros(p.act, n), zeros(p.act, n));
            fwd(&c, out.view_mut(), hx.view(), n).unwrap();
            bwd(&c, dx.view_mut(), host(&dout, p.act).view(), hx.view(), n).unwrap();
            vec![("out", out), ("dinp", dx)]
        });
    }
    let d = SwigluDims { n: 3, h: 10 };
    check("swiglu", |p| {
        let c = cpu();
        let hx = host(&x, p.act);
        let (mut out, mut dx) = (zeros(p.act, 30), zeros(p.act, n));
        c.swiglu_forward(out.view_mut(), hx.view(), d).unwrap();
        c.swiglu_backward(dx.view_mut(), host(&dout[..30], p.act).view(), hx.view(), d)
            .unwrap();
        vec![("out", out), ("dinp", dx)]
    });
}

#[test]
fn modulation() {
    // Conditioning rows are chunks of a fused (B, 3C) projection.
    let d = ModDims {
        b: 2,
        t: 5,
        c: 6,
        cond_stride: 18,
    };
    let (n, nc) = (60, d.cond_len());
    let (x, shift, scale, dout, res) = (
        rep(1, n, 1.0),
        rep(2, nc, 1.0),
        rep(3, nc, 1.0),
        rep(4, n, 1.0),
        rep(5, n, 1.0),
    );
    check("modulate and gate", |p| {
        let c = cpu();
        let (hx, hsh, hsc) = (host(&x, p.act), host(&shift, p.act), host(&scale, p.act));
        let mut out = zeros(p.act, n);
        c.modulate_forward(out.view_mut(), hx.view(), hsh.view(), hsc.view(), d)
            .unwrap();
        let (mut dx, mut dsh, mut dsc) = (zeros(p.act, n), zeros(p.act, nc), zeros(p.act, nc));
        let hdout = host(&dout, p.act);
        c.modulate_backward(
            dx.view_mut(),
            dsh.view_mut(),
            dsc.view_mut(),
            hdout.view(),
            hx.view(),
            hsc.view(),
            d,
        )
        .unwrap();
        let mut residual = host(&res, p.act);
        c.gate_forward(residual.view_mut(), hsc.view(), hx.view(), d)
            .unwrap();
        let (mut dy, mut dg) = (zeros(p.act, n), zeros(p.act, nc));
        c.gate_backward(
            dy.view_mut(),
            dg.view_mut(),
            hdout.view(),
            hsc.view(),
            hx.view(),
            d,
        )
        .unwrap();
        vec![
            ("out", out),
            ("dx", dx),
            ("dshift", dsh),
            ("dscale", dsc),
            ("residual", residual),
            ("dy", dy),
            ("dgate", dg),
        ]
    });
}

#[test]
fn rope() {
    let d = RopeDims {
        b: 2,
        t: 5,
        h: 3,
        hd: 8,
    };
    let n = 2 * 5 * 3 * 8;
    let table = RopeTable::one_d(&[0, 1, 2, 3, 4], 8, 10000.0);
    let (x, dout) = (rep(1, n, 1.0), rep(2, n, 1.0));
    check("rope", |p| {
        let c = cpu();
        // The angle tables are statistics: f32 under bf16 activations.
        let (cos, sin) = (host(&table.cos, p.stat), host(&table.sin, p.stat));
        let (mut out, mut dx) = (zeros(p.act, n), zeros(p.act, n));
        c.rope_forward(out.view_mut(), host(&x, p.act).view(), cos.view(), sin.view(), d)
            .unwrap();
        c.rope_backward(
            dx.view_mut(),
            host(&dout, p.act).view(),
            cos.view(),
            sin.view(),
            d,
        )
        .unwrap();
        vec![("out", out), ("dinp", dx)]
    });
}

#[test]
fn attention() {
    // Crosses the CPU kernel's block edges (32 queries, 64 keys); grouped heads; causal with
    // an offset, as a context-parallel chunk.
    let d = AttnDims {
        b: 1,
        tq: 40,
        tk: 70,
        nh: 4,
        nkv: 2,
        hd: 8,
        causal: true,
        scale: 0.35,
        q_start: 30,
        k_start: 0,
    };
    let (nq, nkv, nl) = (40 * 4 * 8, 70 * 2 * 8, 4 * 40);
    let (q, k, v, dout) = (
        rep(1, nq, 1.0),
        rep(2, nkv, 1.0),
        rep(3, nkv, 1.0),
        rep(4, nq, 1.0),
    );
    // Backward's `out` and the merged partial: any bf16 values, the same in both runs.
    let (out0, part) = (rep(5, nq, 1.0), rep(6, nq, 1.0));
    let (part_lse, base, base_lse) = (rep(7, nl, 3.0), rep(8, nq, 1.0), rep(9, nl, 3.0));
    check("attention", |p| {
        let c = cpu();
        let (hq, hk, hv) = (host(&q, p.act), host(&k, p.act), host(&v, p.act));
        let (mut out, mut lse) = (zeros(p.act, nq), zeros(p.stat, nl));
        c.attention_forward(out.view_mut(), lse.view_mut(), hq.view(), hk.view(), hv.view(), d)
            .unwrap();
        let (mut dq, mut dk, mut dv) = (zeros(p.act, nq), zeros(p.act, nkv), zeros(p.act, nkv));
        c.attention_backward(
            dq.view_mut(),
            dk.view_mut(),
            dv.view_mut(),
            host(&dout, p.act).view(),
            hq.view(),
            hk.view(),
            hv.view(),
            host(&out0, p.act).view(),
            lse.view(),
            d,
        )
        .unwrap();
        let (mut merged, mut merged_lse) = (host(&base, p.act), host(&base_lse, p.stat));
        c.attention_merge(
            merged.view_mut(),
            merged_lse.view_mut(),
            host(&part, p.act).view(),
            host(&part_lse, p.stat).view(),
            d,
        )
        .unwrap();
        vec![
            ("out", out),
            ("lse", lse),
            ("dq", dq),
            ("dk", dk),
            ("dv", dv),
            ("merged out", merged),
            ("merged lse", merged_lse),
        ]
    });
}

#[test]
fn losses() {
    let d = CrossEntropyDims {
        n: 6,
        v: 11,
        z_loss: 1e-2,
    };
    let logits = rep(1, 66, 3.0);
    let targets = HostVec::from(vec![3i32, -1, 0, 10, 5, 5]);
    let dlosses = rep(2, 6, 1.0);
    check("cross_entropy", |p| {
        let c = cpu();
        let hl = host(&logits, p.act);
        let (mut losses, mut lse) = (zeros(p.stat, 6), zeros(p.stat, 6));
        c.cross_entropy_forward(losses.view_mut(), lse.view_mut(), hl.view(), targets.view(), d)
            .unwrap();
        let mut dl = zeros(p.act, 66);
        c.cross_entropy_backward(
            dl.view_mut(),
            host(&dlosses, p.stat).view(),
            hl.view(),
            targets.view(),
            lse.view(),
            d,
        )
        .unwrap();
        vec![("losses", losses), ("lse", lse), ("dlogits", dl)]
    });
    let (pred, target) = (rep(3, 37, 1.0), rep(4, 37, 1.0));
    check("mse", |p| {
        let c = cpu();
        let (hp, ht) = (host(&pred, p.act), host(&target, p.act));
        let mut loss = zeros(p.stat, 1);
        c.mse_forward(loss.view_mut(), hp.view(), ht.view(), 37).unwrap();
        let mut dp = zeros(p.act, 37);
        c.mse_backward(
            dp.view_mut(),
            host(&[0.75], p.stat).view(),
            hp.view(),
            ht.view(),
            37,
        )
        .unwrap();
        vec![("loss", loss), ("dpred", dp)]
    });
}

#[test]
fn embeddings() {
    let d = EmbeddingDims { n: 9, v: 5, c: 6 };
    let ids = HostVec::from(vec![0i32, 4, 2, 2, 1, 0, 4, 4, 3]);
    let (table, dout, dtable0) = (rep(1, 30, 1.0), rep(2, 54, 1.0), rep(3, 30, 1.0));
    check("embedding", |p| {
        let c = cpu();
        let mut out = zeros(p.act, 54);
        c.embedding_forward(out.view_mut(), ids.view(), host(&table, p.act).view(), d)
            .unwrap();
        let mut dt = host(&dtable0, p.grad);
        c.embedding_backward(dt.view_mut(), host(&dout, p.act).view(), ids.view(), d)
            .unwrap();
        vec![("out", out), ("dtable", dt)]
    });
    let pd = PatchDims {
        b: 2,
        t: 2,
        h: 4,
        w: 2,
        c: 3,
        pt: 1,
        ph: 2,
        pw: 2,
    };
    let x = rep(4, pd.numel(), 1.0);
    check("patchify", |p| {
        let c = cpu();
        let n = pd.numel();
        let hx = host(&x, p.act);
        let (mut a, mut b, mut e, mut f) =
            (zeros(p.act, n), zeros(p.act, n), zeros(p.act, n), zeros(p.act, n));
        c.patchify_forward(a.view_mut(), hx.view(), pd).unwrap();
        c.patchify_backward(b.view_mut(), hx.view(), pd).unwrap();
        c.unpatchify_forward(e.view_mut(), hx.view(), pd).unwrap();
        c.unpatchify_backward(f.view_mut(), hx.view(), pd).unwrap();
        vec![
            ("patchify", a),
            ("patchify dx", b),
            ("unpatchify", e),
            ("unpatchify dx", f),
        ]
    });
    let td = TimestepDims {
        n: 4,
        dim: 9,
        max_period: 10000.0,
    };
    let (t, dout) = (
        rep(5, 4, 1.0)
            .iter()
            .map(|v| (v + 1.0) * 400.0)
            .collect::<Vec<_>>(),
        rep(6, 36, 1.0),
    );
    check("timestep_embedding", |p| {
        let c = cpu();
        // Timesteps are f32 under bf16 activations.
        let ht = host(&t, p.stat);
        let (mut out, mut dt) = (zeros(p.act, 36), zeros(p.stat, 4));
        c.timestep_embedding_forward(out.view_mut(), ht.view(), td)
            .unwrap();
        c.timestep_embedding_backward(dt.view_mut(), host(&dout, p.act).view(), ht.view(), td)
            .unwrap();
        vec![("out", out), ("dt", dt)]
    });
}

#[test]
fn elementwise_and_shape() {
    let n = 45;
    let (a, b, dout, acc0) = (rep(1, n, 1.0), rep(2, n, 1.0), rep(3, n, 1.0), rep(4, n, 1.0));
    check("elementwise", |p| {
        let c = cpu();
        let (ha, hb, hd) = (host(&a, p.act), host(&b, p.act), host(&dout, p.act));
        let mut sum = zeros(p.act, n);
        c.add_forward(sum.view_mut(), ha.view(), hb.view(), n).unwrap();
        // add_backward accumulates into both (residual-stream convention).
        let (mut da, mut db) = (host(&acc0, p.act), host(&b, p.act));
        c.add_backward(da.view_mut(), db.view_mut(), hd.view(), n)
            .unwrap();
        let (mut sc, mut dsc) = (zeros(p.act, n), zeros(p.act, n));
        c.scale_forward(sc.view_mut(), ha.view(), 0.3, n).unwrap();
        c.scale_backward(dsc.view_mut(), hd.view(), -1.7, n).unwrap();
        // A parameter-gradient accumulator: bf16 or f32 for bf16 activations.
        let mut acc = host(&acc0, p.grad);
        c.accumulate(acc.view_mut(), ha.view(), n).unwrap();
        let mut filled = zeros(p.act, n);
        c.fill(filled.view_mut(), 0.1, n).unwrap();
        let sd = SwapDims { a: 3, b: 5, inner: 3 };
        let mut swapped = zeros(p.act, n);
        c.swap_axes(swapped.view_mut(), ha.view(), sd).unwrap();
        vec![
            ("add", sum),
            ("da", da),
            ("db", db),
            ("scale", sc),
            ("dscale", dsc),
            ("accumulate", acc),
            ("fill", filled),
            ("swap_axes", swapped),
        ]
    });
}

#[test]
fn sum_squares_reads_bf16_into_an_f32_accumulator() {
    let x = rep(1, 20_011, 1.0);
    let sum = |dt: DType| {
        let mut acc = HostVec::from(vec![0.5f32]);
        cpu()
            .sum_squares(acc.view_mut(), host(&x, dt).view(), x.len())
            .unwrap();
        acc
    };
    assert_eq!(sum(DType::BF16), sum(DType::F32));
    let mut acc64 = HostVec::from(vec![0.0f64]);
    cpu()
        .sum_squares(acc64.view_mut(), host(&x, DType::BF16).view(), x.len())
        .unwrap();
    let want: f64 = x.iter().map(|v| v * v).sum();
    assert!(
        (f64s(&acc64)[0] - want).abs() <= 1e-12 * want,
        "{acc64:?} vs {want}"
    );
}
