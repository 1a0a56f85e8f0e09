//! Shared plumbing: host data in any dtype, and `check_op`, which runs one op's
//! forward/backward through the public CPU backend in f64 against finite differences, then
//! in lower precisions against the f64 run.

use weft_kernels::gradcheck::{check_gradients, compare, Options, SplitMix, Tolerance};
use weft_kernels::{bf16, f16, CpuBackend, DType, HostVec};

pub fn cpu() -> CpuBackend {
    CpuBackend::new()
}

/// `x` stored in `dt` (rounded to nearest even).
pub fn host(x: &[f64], dt: DType) -> HostVec {
    match dt {
        DType::F64 => x.to_vec().into(),
        DType::F32 => x.iter().map(|&v| v as f32).collect::<Vec<_>>().into(),
        DType::BF16 => x.iter().map(|&v| bf16::from_f64(v)).collect::<Vec<_>>().into(),
        DType::F16 => x.iter().map(|&v| f16::from_f64(v)).collect::<Vec<_>>().into(),
        other => panic!("not a float dtype: {other}"),
    }
}

/// Any buffer widened to f64.
pub fn f64s(v: &HostVec) -> Vec<f64> {
    match v {
        HostVec::F64(x) => x.clone(),
        HostVec::F32(x) => x.iter().map(|&v| v as f64).collect(),
        HostVec::BF16(x) => x.iter().map(|v| v.to_f64()).collect(),
        HostVec::F16(x) => x.iter().map(|v| v.to_f64()).collect(),
        HostVec::I32(x) => x.iter().map(|&v| v as f64).collect(),
        HostVec::U16(x) => x.iter().map(|&v| v as f64).collect(),
    }
}

pub fn zeros(dt: DType, n: usize) -> HostVec {
    HostVec::zeros(dt, n)
}

pub fn rand_vec(seed: u64, n: usize) -> Vec<f64> {
    SplitMix::new(seed).vec(n)
}

/// Output of a run: the forward output and, when `dout` was given, one gradient per input.
pub type Run = (Vec<f64>, Vec<Option<Vec<f64>>>);

/// The f64 finite-difference check, then each dtype in `dtypes` against the f64 run (inputs
/// rounded to that dtype first, so only the kernel's own error is measured).
/// `run(dtype, inputs, dout)` must compute forward, and backward when `dout` is `Some`.
pub fn check_op(
    name: &str,
    inputs: &[Vec<f64>],
    dtypes: &[DType],
    run: impl Fn(DType, &[Vec<f64>], Option<&[f64]>) -> Run,
) {
    let opts = Options::default();
    let rep = check_gradients(
        name,
        inputs,
        |x| run(DType::F64, x, None).0,
        |x, w| run(DType::F64, x, Some(w)).1,
        opts,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        rep.probes > 0 || inputs.iter().all(|x| x.is_empty()),
        "{name}: nothing was probed"
    );

    for &dt in dtypes {
        let rounded: Vec<Vec<f64>> = inputs.iter().map(|x| f64s(&host(x, dt))).collect();
        let (o64, _) = run(DType::F64, &rounded, None);
        let w = SplitMix::new(opts.seed).vec(o64.len());
        let (o64, g64) = run(DType::F64, &rounded, Some(&w));
        let (o, g) = run(dt, &rounded, Some(&w));
        let tol = Tolerance::for_dtype(dt);
        compare(&format!("{name} [{dt}] out"), &o, &o64, tol).unwrap_or_else(|e| panic!("{e}"));
        for (i, (g, g64)) in g.iter().zip(&g64).enumerate() {
            if let (Some(g), Some(g64)) = (g, g64) {
                compare(&format!("{name} [{dt}] grad {i}"), g, g64, tol).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
}
