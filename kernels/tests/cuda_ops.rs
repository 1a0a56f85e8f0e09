//! Every op family of the CUDA backend against the CPU backend, in f32 and bf16: one list of
//! op calls ([`OPS`]), each run by one function generic over the backend ([`call`]) on the
//! same inputs, so a GPU run checks the whole op set. The comparisons need an NVIDIA GPU and
//! are `#[ignore]`d: `cargo test -p weft-kernels --features cuda -- --ignored gpu_`.

use crate::harness::*;
#[cfg(any(feature = "cuda-12", feature = "cuda-13"))]
use weft_kernels::cuda::CudaBackend;
#[cfg(any(feature = "cuda-12", feature = "cuda-13"))]
use weft_kernels::gradcheck::{compare, Tolerance};
use weft_kernels::*;

/// One op call of the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Gelu,
    GeluBackward,
    Silu,
    SiluBackward,
    Swiglu,
    SwigluBackward,
    LayerNorm,
    LayerNormBackward,
    RmsNorm,
    RmsNormBackward,
    Modulate,
    ModulateBackward,
    Gate,
    GateBackward,
    Rope,
    RopeBackward,
    SwapAxes,
    Attention,
    AttentionBackward,
    AttentionMerge,
    CrossEntropy,
    CrossEntropyBackward,
    Mse,
    MseBackward,
    Embedding,
    EmbeddingBackward,
    Patchify,
    PatchifyBackward,
    Unpatchify,
    UnpatchifyBackward,
    Timestep,
    TimestepBackward,
    Add,
    AddBackward,
    Scale,
    Accumulate,
    Fill,
    Cast,
    SumSquares,
    Sum,
    L2Norm,
    L2NormBackward,
    AdamWUpdate,
    AdemamixUpdate,
    MomentumUpdate,
    NewtonSchulzWide,
    NewtonSchulzTall,
    NormalizeFrobenius,
    NormalizeRows,
    NormalizeCols,
    NormalizeSign,
    ApplyDirection,
}

use Op::*;

/// Every op call compared.
const OPS: &[Op] = &[
    Gelu,
    GeluBackward,
    Silu,
    SiluBackward,
    Swiglu,
    SwigluBackward,
    LayerNorm,
    LayerNormBackward,
    RmsNorm,
    RmsNormBackward,
    Modulate,
    ModulateBackward,
    Gate,
    GateBackward,
    Rope,
    RopeBackward,
    SwapAxes,
    Attention,
    AttentionBackward,
    AttentionMerge,
    CrossEntropy,
    CrossEntropyBackward,
    Mse,
    MseBackward,
    Embedding,
    EmbeddingBackward,
    Patchify,
    PatchifyBackward,
    Unpatchify,
    UnpatchifyBackward,
    Timestep,
    TimestepBackward,
    Add,
    AddBackward,
    Scale,
    Accumulate,
    Fill,
    Cast,
    SumSquares,
    Sum,
    L2Norm,
    L2NormBackward,
    AdamWUpdate,
    AdemamixUpdate,
    MomentumUpdate,
    NewtonSchulzWide,
    NewtonSchulzTall,
    NormalizeFrobenius,
    NormalizeRows,
    NormalizeCols,
    NormalizeSign,
    ApplyDirection,
];

const N: usize = 6;
const C: usize = 40;
const ATTN: AttnDims = AttnDims {
    b: 2,
    tq: 5,
    tk: 7,
    nh: 4,
    nkv: 2,
    hd: 16,
    causal: true,
    scale: 0.25,
    q_start: 3,
    k_start: 0,
};
const MODD: ModDims = ModDims {
    b: 2,
    t: 5,
    c: C,
    cond_stride: 2 * C,
};
const ROPED: RopeDims = RopeDims {
    b: 2,
    t: 3,
    h: 2,
    hd: 8,
};
const SWAP: SwapDims = SwapDims { a: 3, b: 4, inner: 5 };
const PATCH: PatchDims = PatchDims {
    b: 1,
    t: 2,
    h: 4,
    w: 6,
    c: 3,
    pt: 1,
    ph: 2,
    pw: 3,
};
const CE: CrossEntropyDims = CrossEntropyDims {
    n: N,
    v: 37,
    z_loss: 1e-4,
};
const EMB: EmbeddingDims = EmbeddingDims { n: N, v: 9, c: C };
const TS: TimestepDims = TimestepDims {
    n: N,
    dim: 33,
    max_period: 10000.0,
};
const ADAMW: AdamW = AdamW {
    lr: 1e-3,
    beta1: 0.9,
    beta2: 0.95,
    eps: 1e-8,
    weight_decay: 0.1,
    step: 3,
    grad_scale: 0.5,
};

const MOMENTUM: Momentum = Momentum {
    mu: 0.95,
    dampening: 1.0,
    nesterov: true,
    grad_scale: 0.5,
};
/// Newton–Schulz's wide matrix (the tall one is its transpose), 5 steps, scale 2. Its f32
/// result is within ~1.5·10⁻⁶ of the f64 one (tests/optim_matrix.rs): the f32 tolerance
/// (atol 10⁻⁵) holds two such runs apart and flags a product that drops to TF32 (~5·10⁻⁴).
const NS: NewtonSchulz = NewtonSchulz {
    rows: 24,
    cols: 80,
    steps: 5,
    scale: 2.0,
};
/// Newton–Schulz's `(rows, cols)` for the call.
fn ns_dims(op: Op) -> NewtonSchulz {
    match op {
        NewtonSchulzTall => NewtonSchulz {
            rows: NS.cols,
            cols: NS.rows,
            ..NS
        },
        _ => NS,
    }
}
/// The normalized matrix: Frobenius over several Σx² partials (29197 elements), the others
/// over odd rows and columns.
fn normalize_dims(op: Op) -> NormalizeDims {
    let d = |rows, cols, mode| NormalizeDims {
        rows,
        cols,
        mode,
        scale: 1.5,
        eps: 1e-7,
    };
    match op {
        NormalizeFrobenius => d(97, 301, Normalize::Frobenius),
        NormalizeRows => d(37, 53, Normalize::Rows),
        NormalizeCols => d(37, 53, Normalize::Cols),
        _ => d(37, 53, Normalize::Sign),
    }
}

/// Whether written buffer `k` of `op` is a result (not scratch whose layout is the backend's:
/// Newton–Schulz's `work`).
#[cfg(any(feature = "cuda-12", feature = "cuda-13"))]
fn compared(op: Op, k: usize) -> bool {
    !(matches!(op, NewtonSchulzWide | NewtonSchulzTall) && k == 1)
}

/// The call's inputs and its written buffers (with their starting contents), for activation
/// dtype `dt`.
fn buffers(op: Op, dt: DType) -> (Vec<HostVec>, Vec<HostVec>) {
    let mut seed = 0;
    let mut r = |n: usize, dt: DType| {
        seed += 1;
        host(&rand_vec(seed, n), dt)
    };
    let f = DType::F32;
    let pos = |v: HostVec| {
        host(
            &f64s(&v).iter().map(|x| 1.0 + x.abs()).collect::<Vec<_>>(),
            v.dtype(),
        )
    };
    let ids = |n: usize, bound: i32| HostVec::I32((0..n as i32).map(|i| (i * 5 + 2) % bound).collect());
    let a = &ATTN;
    let (nq, nkv, nl) = (
        a.b * a.tq * a.nh * a.hd,
        a.b * a.tk * a.nkv * a.hd,
        a.b * a.nh * a.tq,
    );
    let stream = MODD.b * MODD.t * MODD.c;
    let cond = MODD.cond_len();
    let rope_n = ROPED.b * ROPED.t * ROPED.h * ROPED.hd;
    let table = ROPED.t * ROPED.hd / 2;
    match op {
        Gelu | Silu => (vec![r(300, dt)], vec![r(300, dt)]),
        GeluBackward | SiluBackward => (vec![r(300, dt), r(300, dt)], vec![r(300, dt)]),
        Swiglu => (vec![r(N * 2 * C, dt)], vec![r(N * C, dt)]),
        SwigluBackward => (vec![r(N * C, dt), r(N * 2 * C, dt)], vec![r(N * 2 * C, dt)]),
        LayerNorm => (
            vec![r(N * C, dt), r(C, dt), r(C, dt)],
            vec![r(N * C, dt), r(N, f), r(N, f)],
        ),
        LayerNormBackward => {
            let rstd = pos(r(N, f));
            (
                vec![r(N * C, dt), r(N * C, dt), r(C, dt), r(N, f), rstd],
                vec![r(N * C, dt), r(C, f), r(C, dt)],
            )
        }
        RmsNorm => (vec![r(N * C, dt), r(C, dt)], vec![r(N * C, dt), r(N, f)]),
        RmsNormBackward => {
            let rstd = pos(r(N, f));
            (
                vec![r(N * C, dt), r(N * C, dt), r(C, dt), rstd],
                vec![r(N * C, dt), r(C, dt)],
            )
        }
        Modulate => (vec![r(stream, dt), r(cond, dt), r(cond, dt)], vec![r(stream, dt)]),
        ModulateBackward => (
            vec![r(stream, dt), r(stream, dt), r(cond, dt)],
            vec![r(stream, dt), r(cond, dt), r(cond, dt)],
        ),
        Gate => (vec![r(cond, dt), r(stream, dt)], vec![r(stream, dt)]),
        GateBackward => (
            vec![r(stream, dt), r(cond, dt), r(stream, dt)],
            vec![r(stream, dt), r(cond, dt)],
        ),
        Rope | RopeBackward => (vec![r(rope_n, dt), r(table, f), r(table, f)], vec![r(rope_n, dt)]),
        SwapAxes => (vec![r(SWAP.numel(), dt)], vec![r(SWAP.numel(), dt)]),
        Attention => (vec![r(nq, dt), r(nkv, dt), r(nkv, dt)], vec![r(nq, dt), r(nl, f)]),
        AttentionBackward => (
            vec![
                r(nq, dt),
                r(nq, dt),
                r(nkv, dt),
                r(nkv, dt),
                r(nq, dt),
                pos(r(nl, f)),
            ],
            vec![r(nq, dt), r(nkv, dt), r(nkv, dt)],
        ),
        AttentionMerge => (vec![r(nq, dt), r(nl, f)], vec![r(nq, dt), r(nl, f)]),
        CrossEntropy => (
            vec![r(CE.n * CE.v, dt), ids(CE.n, CE.v as i32)],
            vec![r(CE.n, f), r(CE.n, f)],
        ),
        CrossEntropyBackward => (
            vec![
                r(CE.n, f),
                r(CE.n * CE.v, dt),
                ids(CE.n, CE.v as i32),
                pos(r(CE.n, f)),
            ],
            vec![r(CE.n * CE.v, dt)],
        ),
        Mse => (vec![r(1000, dt), r(1000, dt)], vec![r(1, f)]),
        MseBackward => (vec![r(1, f), r(1000, dt), r(1000, dt)], vec![r(1000, dt)]),
        Embedding => (
            vec![ids(EMB.n, EMB.v as i32), r(EMB.v * EMB.c, dt)],
            vec![r(EMB.n * EMB.c, dt)],
        ),
        EmbeddingBackward => (
            vec![r(EMB.n * EMB.c, dt), ids(EMB.n, EMB.v as i32)],
            vec![r(EMB.v * EMB.c, f)],
        ),
        Patchify | PatchifyBackward | Unpatchify | UnpatchifyBackward => {
            (vec![r(PATCH.numel(), dt)], vec![r(PATCH.numel(), dt)])
        }
        Timestep => (vec![r(TS.n, f)], vec![r(TS.n * TS.dim, dt)]),
        TimestepBackward => (vec![r(TS.n * TS.dim, dt), r(TS.n, f)], vec![r(TS.n, f)]),
        Add => (vec![r(300, dt), r(300, dt)], vec![r(300, dt)]),
        AddBackward => (vec![r(300, dt)], vec![r(300, dt), r(300, dt)]),
        Scale | Cast => (
            vec![r(300, dt)],
            vec![r(300, if op == Cast { DType::F32 } else { dt })],
        ),
        Accumulate => (vec![r(300, dt)], vec![r(300, f)]),
        Fill => (vec![], vec![r(300, dt)]),
        SumSquares => (vec![r(20_000, dt)], vec![r(1, f)]),
        Sum => (vec![r(20_000, dt)], vec![r(1, DType::F64)]),
        // The optimizer is f32 on every backend's fast path.
        L2Norm => (vec![r(20_000, f)], vec![r(1, f)]),
        L2NormBackward => (vec![r(1, f), r(300, f), pos(r(1, f))], vec![r(300, f)]),
        AdamWUpdate => (vec![r(9000, f)], vec![r(9000, f), r(9000, f), pos(r(9000, f))]),
        AdemamixUpdate => (
            vec![r(9000, f)],
            vec![r(9000, f), r(9000, f), r(9000, f), pos(r(9000, f))],
        ),
        MomentumUpdate => (vec![r(9000, f)], vec![r(9000, f), r(9000, f)]),
        NewtonSchulzWide | NewtonSchulzTall => {
            let d = ns_dims(op);
            (vec![], vec![r(d.rows * d.cols, f), r(d.work_len(), f)])
        }
        NormalizeFrobenius | NormalizeRows | NormalizeCols | NormalizeSign => {
            let d = normalize_dims(op);
            (vec![], vec![r(d.rows * d.cols, f)])
        }
        ApplyDirection => (vec![r(9000, f)], vec![r(9000, f)]),
    }
}

/// Runs `op` on backend `be`: `ins` are read, `outs` written (as [`buffers`] lays them out).
fn call<B: Ops>(be: &B, op: Op, ins: &[B::Buffer], outs: &mut [B::Buffer]) -> Result<()> {
    let i = |k: usize| B::view(&ins[k]);
    let mut o = outs.iter_mut().map(B::view_mut);
    let mut w = || o.next().expect("a written buffer per output");
    let n = |k: usize| B::view(&ins[k]).len();
    let dims = NormDims {
        n: N,
        c: C,
        eps: 1e-5,
    };
    match op {
        Gelu => be.gelu_forward(w(), i(0), n(0)),
        GeluBackward => be.gelu_backward(w(), i(0), i(1), n(0)),
        Silu => be.silu_forward(w(), i(0), n(0)),
        SiluBackward => be.silu_backward(w(), i(0), i(1), n(0)),
        Swiglu => be.swiglu_forward(w(), i(0), SwigluDims { n: N, h: C }),
        SwigluBackward => be.swiglu_backward(w(), i(0), i(1), SwigluDims { n: N, h: C }),
        LayerNorm => be.layernorm_forward(w(), w(), w(), i(0), Some(i(1)), Some(i(2)), dims),
        LayerNormBackward => {
            let (dx, dw, db) = (w(), w(), w());
            be.layernorm_backward(dx, Some(dw), Some(db), i(0), i(1), Some(i(2)), i(3), i(4), dims)
        }
        RmsNorm => be.rmsnorm_forward(w(), w(), i(0), Some(i(1)), dims),
        RmsNormBackward => {
            let (dx, dw) = (w(), w());
            be.rmsnorm_backward(dx, Some(dw), i(0), i(1), Some(i(2)), i(3), dims)
        }
        Modulate => be.modulate_forward(w(), i(0), i(1), i(2), MODD),
        ModulateBackward => be.modulate_backward(w(), w(), w(), i(0), i(1), i(2), MODD),
        Gate => be.gate_forward(w(), i(0), i(1), MODD),
        GateBackward => be.gate_backward(w(), w(), i(0), i(1), i(2), MODD),
        Rope => be.rope_forward(w(), i(0), i(1), i(2), ROPED),
        RopeBackward => be.rope_backward(w(), i(0), i(1), i(2), ROPED),
        SwapAxes => be.swap_axes(w(), i(0), SWAP),
        Attention => be.attention_forward(w(), w(), i(0), i(1), i(2), ATTN),
        AttentionBackward => be.attention_backward(w(), w(), w(), i(0), i(1), i(2), i(3), i(4), i(5), ATTN),
        AttentionMerge => be.attention_merge(w(), w(), i(0), i(1), ATTN),
        CrossEntropy => be.cross_entropy_forward(w(), w(), i(0), i(1), CE),
        CrossEntropyBackward => be.cross_entropy_backward(w(), i(0), i(1), i(2), i(3), CE),
        Mse => be.mse_forward(w(), i(0), i(1), n(0)),
        MseBackward => be.mse_backward(w(), i(0), i(1), i(2), n(1)),
        Embedding => be.embedding_forward(w(), i(0), i(1), EMB),
        EmbeddingBackward => be.embedding_backward(w(), i(0), i(1), EMB),
        Patchify => be.patchify_forward(w(), i(0), PATCH),
        PatchifyBackward => be.patchify_backward(w(), i(0), PATCH),
        Unpatchify => be.unpatchify_forward(w(), i(0), PATCH),
        UnpatchifyBackward => be.unpatchify_backward(w(), i(0), PATCH),
        Timestep => be.timestep_embedding_forward(w(), i(0), TS),
        TimestepBackward => be.timestep_embedding_backward(w(), i(0), i(1), TS),
        Add => be.add_forward(w(), i(0), i(1), n(0)),
        AddBackward => be.add_backward(w(), w(), i(0), n(0)),
        Scale => be.scale_forward(w(), i(0), -2.0 / 7.0, n(0)),
        Accumulate => be.accumulate(w(), i(0), n(0)),
        Fill => be.fill(w(), 1.0 / 3.0, 300),
        Cast => be.cast(w(), i(0), n(0)),
        SumSquares => be.sum_squares(w(), i(0), n(0)),
        Sum => be.sum(w(), i(0), 0.25, n(0)),
        L2Norm => be.l2norm_forward(w(), i(0), n(0)),
        L2NormBackward => be.l2norm_backward(w(), i(0), i(1), i(2), n(1)),
        AdamWUpdate => be.adamw_update(w(), w(), w(), i(0), ADAMW, n(0)),
        AdemamixUpdate => be.ademamix_update(
            w(),
            w(),
            w(),
            w(),
            i(0),
            ADAMW,
            Mix {
                beta3: 0.999,
                alpha: 5.0,
            },
            n(0),
        ),
        MomentumUpdate => be.momentum_update(w(), w(), i(0), MOMENTUM, n(0)),
        NewtonSchulzWide | NewtonSchulzTall => be.newton_schulz(w(), w(), ns_dims(op)),
        NormalizeFrobenius | NormalizeRows | NormalizeCols | NormalizeSign => {
            be.matrix_normalize(w(), normalize_dims(op))
        }
        ApplyDirection => be.apply_direction(w(), i(0), 0.02, 1.0 - 0.02 * 0.1, n(0)),
    }
}

/// `op` on `be`, from host buffers to host buffers (the written ones, after the call).
fn run<B: Ops>(be: &B, op: Op, ins: &[HostVec], outs: &[HostVec]) -> Result<Vec<HostVec>> {
    let up = |x: &HostVec| -> Result<B::Buffer> {
        let mut b = be.alloc(x.dtype(), x.len())?;
        be.upload(x.view(), B::view_mut(&mut b))?;
        Ok(b)
    };
    let ins: Vec<B::Buffer> = ins.iter().map(up).collect::<Result<_>>()?;
    let mut dev: Vec<B::Buffer> = outs.iter().map(up).collect::<Result<_>>()?;
    call(be, op, &ins, &mut dev)?;
    dev.iter()
        .zip(outs)
        .map(|(b, h)| {
            let mut back = zeros(h.dtype(), h.len());
            be.download(B::view(b), back.view_mut())?;
            Ok(back)
        })
        .collect()
}

#[cfg(any(feature = "cuda-12", feature = "cuda-13"))]
fn gpu() -> CudaBackend {
    CudaBackend::new(0).expect("these tests need a CUDA GPU")
}

#[test]
fn the_op_list_covers_every_call_the_reference_runs() {
    // Every op of the list runs on the CPU backend with the buffers it is given: the list, the
    // buffer layouts and the generic runner agree (what the GPU comparison relies on).
    let c = cpu();
    for dt in [DType::F32, DType::BF16] {
        for &op in OPS {
            let (ins, outs) = buffers(op, dt);
            run(&c, op, &ins, &outs).unwrap_or_else(|e| panic!("{op:?} [{dt}] on the CPU: {e}"));
        }
    }
}

#[cfg(any(feature = "cuda-12", feature = "cuda-13"))]
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p weft-kernels --features cuda -- --ignored gpu_"]
fn gpu_every_op_matches_the_cpu_backend() {
    let (g, c) = (gpu(), cpu());
    let mut failed = Vec::new();
    for dt in [DType::F32, DType::BF16] {
        for &op in OPS {
            let (ins, outs) = buffers(op, dt);
            let want = run(&c, op, &ins, &outs).unwrap();
            let got = match run(&g, op, &ins, &outs) {
                Ok(got) => got,
                Err(e) => {
                    failed.push(format!("{op:?} [{dt}]: {e}"));
                    continue;
                }
            };
            for (k, (gv, wv)) in got.iter().zip(&want).enumerate() {
                if !compared(op, k) {
                    continue;
                }
                let tol = Tolerance::for_dtype(if gv.dtype() == DType::BF16 {
                    DType::BF16
                } else {
                    dt
                });
                match compare(&format!("{op:?} [{dt}] output {k}"), &f64s(gv), &f64s(wv), tol) {
                    Ok(e) => eprintln!("{op:?} [{dt}] output {k}: max |gpu − cpu| = {e:.3e}"),
                    Err(e) => failed.push(e),
                }
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} comparisons failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}
