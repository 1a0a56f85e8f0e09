//! Bad calls return an error naming the op, the argument, what was expected and what came —
//! never a panic, never a silent broadcast.

use crate::harness::*;
use weft_kernels::*;

fn msg(r: Result<()>) -> String {
    r.expect_err("the call must be refused").to_string()
}

#[test]
fn wrong_length_names_op_argument_expected_and_got() {
    let c = cpu();
    let d = NormDims {
        n: 4,
        c: 6,
        eps: 1e-5,
    };
    let inp = zeros(DType::F32, 25); // one too many
    let (mut out, mut mean, mut rstd) = (zeros(DType::F32, 24), zeros(DType::F32, 4), zeros(DType::F32, 4));
    let m = msg(c.layernorm_forward(
        out.view_mut(),
        mean.view_mut(),
        rstd.view_mut(),
        inp.view(),
        None,
        None,
        d,
    ));
    assert_eq!(m, "layernorm_forward: argument `inp` has the wrong size: expected 24 elements (N=4, C=6), got 25 elements");
}

#[test]
fn a_bias_of_the_wrong_size_is_not_broadcast() {
    let c = cpu();
    let d = MatmulDims::linear(2, 3, 4);
    let (a, b, bias) = (zeros(DType::F32, 6), zeros(DType::F32, 12), zeros(DType::F32, 1));
    let mut out = zeros(DType::F32, 8);
    let m = msg(c.matmul_forward(out.view_mut(), a.view(), b.view(), Some(bias.view()), d));
    assert!(m.starts_with("matmul_forward: argument `bias`"), "{m}");
    assert!(
        m.contains("expected 4 elements") && m.contains("got 1 elements"),
        "{m}"
    );
}

#[test]
fn transposed_operand_shapes_are_spelled_out() {
    let c = cpu();
    let d = MatmulDims {
        batch: 2,
        m: 3,
        n: 4,
        k: 5,
        trans_a: true,
        trans_b: false,
    };
    let (a, b) = (zeros(DType::F32, 2 * 3 * 5), zeros(DType::F32, 2 * 5 * 4 + 1));
    let mut out = zeros(DType::F32, 24);
    let m = msg(c.matmul_forward(out.view_mut(), a.view(), b.view(), None, d));
    assert!(
        m.contains("argument `b`") && m.contains("(batch=2, K=5, N=4)"),
        "{m}"
    );
}

#[test]
fn mixed_dtypes_are_refused() {
    let c = cpu();
    let d = MatmulDims::linear(2, 2, 2);
    let (a, b) = (zeros(DType::F32, 4), zeros(DType::BF16, 4));
    let mut out = zeros(DType::F32, 4);
    let m = msg(c.matmul_forward(out.view_mut(), a.view(), b.view(), None, d));
    assert_eq!(m, "matmul_forward: argument `b` has dtype bf16, expected f32");

    let (x, mut y) = (zeros(DType::F32, 3), zeros(DType::F64, 3));
    let m = msg(c.gelu_forward(y.view_mut(), x.view(), 3));
    assert_eq!(m, "gelu_forward: argument `out` has dtype f64, expected f32");

    let ints = HostVec::from(vec![1i32, 2, 3]);
    let m = msg(c.silu_forward(zeros(DType::F32, 3).view_mut(), ints.view(), 3));
    assert_eq!(
        m,
        "silu_forward: argument `inp` has dtype i32, expected one of f64, f32, bf16"
    );
}

#[test]
fn bf16_activations_take_f32_statistics() {
    let c = cpu();
    let (bf, f) = (DType::BF16, DType::F32);
    let d = NormDims {
        n: 2,
        c: 3,
        eps: 1e-5,
    };
    let norm = |mean: DType, rstd: DType| {
        msg(c.layernorm_forward(
            zeros(bf, 6).view_mut(),
            zeros(mean, 2).view_mut(),
            zeros(rstd, 2).view_mut(),
            zeros(bf, 6).view(),
            None,
            None,
            d,
        ))
    };
    assert_eq!(
        norm(bf, f),
        "layernorm_forward: argument `mean` has dtype bf16, expected f32"
    );
    assert_eq!(
        norm(f, DType::F64),
        "layernorm_forward: argument `rstd` has dtype f64, expected f32"
    );

    let d = AttnDims::new(1, 2, 1, 1, 4, true);
    let m = msg(c.attention_forward(
        zeros(bf, 8).view_mut(),
        zeros(bf, 2).view_mut(),
        zeros(bf, 8).view(),
        zeros(bf, 8).view(),
        zeros(bf, 8).view(),
        d,
    ));
    assert_eq!(
        m,
        "attention_forward: argument `lse` has dtype bf16, expected f32"
    );

    let d = CrossEntropyDims {
        n: 2,
        v: 3,
        z_loss: 0.0,
    };
    let m = msg(c.cross_entropy_forward(
        zeros(bf, 2).view_mut(),
        zeros(f, 2).view_mut(),
        zeros(bf, 6).view(),
        HostVec::from(vec![0i32, 1]).view(),
        d,
    ));
    assert_eq!(
        m,
        "cross_entropy_forward: argument `losses` has dtype bf16, expected f32"
    );

    let d = TimestepDims {
        n: 2,
        dim: 4,
        max_period: 1e4,
    };
    let m = msg(c.timestep_embedding_forward(zeros(bf, 8).view_mut(), zeros(bf, 2).view(), d));
    assert_eq!(
        m,
        "timestep_embedding_forward: argument `t` has dtype bf16, expected f32"
    );

    // f32 activations keep f32 statistics: the rule is not "statistics may be anything".
    let m = msg(c.rmsnorm_forward(
        zeros(f, 6).view_mut(),
        zeros(bf, 2).view_mut(),
        zeros(f, 6).view(),
        None,
        NormDims {
            n: 2,
            c: 3,
            eps: 1e-5,
        },
    ));
    assert_eq!(m, "rmsnorm_forward: argument `rstd` has dtype bf16, expected f32");
}

#[test]
fn parameter_gradients_are_f32_only_under_bf16() {
    let c = cpu();
    let d = MatmulDims::linear(2, 3, 4);
    let backward = |inp: DType, db: DType| {
        let (a, b, dout) = (zeros(inp, 6), zeros(inp, 12), zeros(inp, 8));
        let (mut da, mut dbuf) = (zeros(inp, 6), zeros(db, 12));
        c.matmul_backward(
            Some(da.view_mut()),
            Some(dbuf.view_mut()),
            None,
            dout.view(),
            a.view(),
            b.view(),
            d,
        )
    };
    // bf16 inputs: db in bf16 or f32 (cuBLASLt's A/B bf16, C/D f32), nothing else.
    backward(DType::BF16, DType::BF16).unwrap();
    backward(DType::BF16, DType::F32).unwrap();
    assert_eq!(
        msg(backward(DType::BF16, DType::F64)),
        "matmul_backward: argument `db` has dtype f64, expected one of bf16, f32"
    );
    // f32 inputs still need an f32 db; f16 inputs keep an f16 db.
    assert_eq!(
        msg(backward(DType::F32, DType::BF16)),
        "matmul_backward: argument `db` has dtype bf16, expected f32"
    );
    assert_eq!(
        msg(backward(DType::F16, DType::F32)),
        "matmul_backward: argument `db` has dtype f32, expected f16"
    );

    let nd = NormDims {
        n: 2,
        c: 3,
        eps: 1e-5,
    };
    let m = msg(c.rmsnorm_backward(
        zeros(DType::F32, 6).view_mut(),
        Some(zeros(DType::BF16, 3).view_mut()),
        zeros(DType::F32, 6).view(),
        zeros(DType::F32, 6).view(),
        None,
        zeros(DType::F32, 2).view(),
        nd,
    ));
    assert_eq!(
        m,
        "rmsnorm_backward: argument `dweight` has dtype bf16, expected f32"
    );

    // accumulate: an f32 accumulator may take bf16; a bf16 one may not take f32.
    let n = 4;
    c.accumulate(zeros(DType::F32, n).view_mut(), zeros(DType::BF16, n).view(), n)
        .unwrap();
    let m = msg(c.accumulate(zeros(DType::BF16, n).view_mut(), zeros(DType::F32, n).view(), n));
    assert_eq!(m, "accumulate: argument `acc` has dtype bf16, expected f32");
}

#[test]
fn f16_and_optimizer_dtypes_stay_where_they_were() {
    let c = cpu();
    let m = msg(c.gelu_forward(zeros(DType::F16, 3).view_mut(), zeros(DType::F16, 3).view(), 3));
    assert_eq!(
        m,
        "gelu_forward: argument `inp` has dtype f16, expected one of f64, f32, bf16"
    );
    let h = AdamW {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        step: 1,
        grad_scale: 1.0,
    };
    let bf = DType::BF16;
    let m = msg(c.adamw_update(
        zeros(bf, 2).view_mut(),
        zeros(bf, 2).view_mut(),
        zeros(bf, 2).view_mut(),
        zeros(bf, 2).view(),
        h,
        2,
    ));
    assert_eq!(
        m,
        "adamw_update: argument `grads` has dtype bf16, expected one of f32, f64"
    );
    // sum_squares and sum read bf16 into an f32 or f64 accumulator, never a bf16 one, and
    // never narrow: f64 values go into an f64 accumulator only (f32 ones into either).
    let m = msg(c.sum_squares(zeros(bf, 1).view_mut(), zeros(bf, 2).view(), 2));
    assert_eq!(
        m,
        "sum_squares: argument `acc` has dtype bf16, expected one of f32, f64"
    );
    let m = msg(c.sum(zeros(bf, 1).view_mut(), zeros(bf, 2).view(), 1.0, 2));
    assert_eq!(m, "sum: argument `acc` has dtype bf16, expected one of f32, f64");
    let m = msg(c.sum_squares(zeros(DType::F32, 1).view_mut(), zeros(DType::F64, 2).view(), 2));
    assert_eq!(m, "sum_squares: argument `acc` has dtype f32, expected f64");
    let m = msg(c.sum(
        zeros(DType::F32, 1).view_mut(),
        zeros(DType::F64, 2).view(),
        1.0,
        2,
    ));
    assert_eq!(m, "sum: argument `acc` has dtype f32, expected f64");
    // An f64 accumulator of f32 values: a loss or a norm summed without rounding to f32.
    let mut acc = zeros(DType::F64, 1);
    c.sum_squares(acc.view_mut(), HostVec::from(vec![3.0f32, 4.0]).view(), 2)
        .unwrap();
    c.sum(acc.view_mut(), HostVec::from(vec![0.5f32, 0.25]).view(), 4.0, 2)
        .unwrap();
    assert_eq!(acc, HostVec::from(vec![28.0f64]));
}

#[test]
fn out_of_range_ids_and_targets_are_refused() {
    let c = cpu();
    let d = EmbeddingDims { n: 3, v: 5, c: 2 };
    let ids = HostVec::from(vec![0i32, 5, 1]);
    let m = msg(c.embedding_forward(
        zeros(DType::F32, 6).view_mut(),
        ids.view(),
        zeros(DType::F32, 10).view(),
        d,
    ));
    assert_eq!(m, "embedding_forward: `ids` holds 5 at position 1, outside 0..5");
    let ids = HostVec::from(vec![0i32, -2, 1]);
    assert!(msg(c.embedding_forward(
        zeros(DType::F32, 6).view_mut(),
        ids.view(),
        zeros(DType::F32, 10).view(),
        d
    ))
    .contains("holds -2"));

    let d = CrossEntropyDims {
        n: 2,
        v: 3,
        z_loss: 0.0,
    };
    let t = HostVec::from(vec![1i32, 3]);
    let m = msg(c.cross_entropy_forward(
        zeros(DType::F32, 2).view_mut(),
        zeros(DType::F32, 2).view_mut(),
        zeros(DType::F32, 6).view(),
        t.view(),
        d,
    ));
    assert_eq!(
        m,
        "cross_entropy_forward: `targets` holds 3 at position 1, outside 0..3"
    );
}

#[test]
fn impossible_dimensions_are_refused() {
    let c = cpu();
    let d = RopeDims {
        b: 1,
        t: 1,
        h: 1,
        hd: 3,
    };
    let m = msg(c.rope_forward(
        zeros(DType::F32, 3).view_mut(),
        zeros(DType::F32, 3).view(),
        zeros(DType::F32, 1).view(),
        zeros(DType::F32, 1).view(),
        d,
    ));
    assert_eq!(
        m,
        "rope_forward: invalid `hd`: rotary embedding needs an even head dim, got 3"
    );

    let d = AttnDims::new(1, 2, 3, 2, 4, false);
    let z = zeros(DType::F32, 24);
    let m = msg(c.attention_forward(
        zeros(DType::F32, 24).view_mut(),
        zeros(DType::F32, 6).view_mut(),
        z.view(),
        zeros(DType::F32, 16).view(),
        zeros(DType::F32, 16).view(),
        d,
    ));
    assert_eq!(
        m,
        "attention_forward: invalid `nkv`: kv heads (2) must divide query heads (3)"
    );

    let d = PatchDims {
        b: 1,
        t: 3,
        h: 2,
        w: 2,
        c: 1,
        pt: 2,
        ph: 1,
        pw: 1,
    };
    let m = msg(c.patchify_forward(zeros(DType::F32, 12).view_mut(), zeros(DType::F32, 12).view(), d));
    assert_eq!(
        m,
        "patchify_forward: invalid `pt`: patch size 2 must be positive and divide the video extent 3"
    );

    let h = AdamW {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        step: 0,
        grad_scale: 1.0,
    };
    let mut p = zeros(DType::F32, 2);
    let (mut m_, mut v) = (zeros(DType::F32, 2), zeros(DType::F32, 2));
    assert!(msg(c.adamw_update(
        p.view_mut(),
        m_.view_mut(),
        v.view_mut(),
        zeros(DType::F32, 2).view(),
        h,
        2
    ))
    .contains("`step`"));
}

#[test]
fn copies_check_length_and_dtype() {
    let c = cpu();
    let mut dst = zeros(DType::F32, 3);
    let src = HostVec::from(vec![1.0f32, 2.0]);
    let m = msg(c.upload(src.view(), dst.view_mut()));
    assert!(m.starts_with("upload: argument `dst`"), "{m}");
    let src = HostVec::from(vec![1.0f64, 2.0, 3.0]);
    assert!(msg(c.download(src.view(), dst.view_mut())).contains("dtype f32, expected f64"));
}
