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
        "silu_forward: argument `inp` has dtype i32, expected one of f32, f64"
    );
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
