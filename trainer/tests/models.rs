//! Whole-model gradient checks: every parameter tensor of a tiny DiT and GPT against central
//! finite differences of the loss, in f64; recomputation gives the same bits.

use crate::common::*;
use std::cell::RefCell;
use weft_kernels::gradcheck::{check_gradients, Options};
use weft_kernels::{CpuBackend, DType};
use weft_trainer::model::{Dit, Gpt, Model};
use weft_trainer::Layout;

/// Probe every tensor of `layout` (a few elements each) with finite differences of the loss.
fn check_model<M: Model<CpuBackend>>(name: &str, m: M, batch: &M::Batch, layout: &Layout, seed: u64) {
    let m = RefCell::new(m);
    let flat = random_params(layout.len(), seed, 0.5);
    let split =
        |flat: &[f64]| -> Vec<Vec<f64>> { layout.entries.iter().map(|e| flat[e.range()].to_vec()).collect() };
    let join = |parts: &[Vec<f64>]| -> Vec<f64> {
        let mut f = vec![0.0; layout.len()];
        for (e, p) in layout.entries.iter().zip(parts) {
            f[e.range()].copy_from_slice(p);
        }
        f
    };
    let fwd = |parts: &[Vec<f64>]| vec![loss_and_grad(&m, &join(parts), batch, 0.0).0];
    let bwd = |parts: &[Vec<f64>], dout: &[f64]| {
        let (_, g) = loss_and_grad(&m, &join(parts), batch, dout[0]);
        split(&g).into_iter().map(Some).collect()
    };
    let opts = Options {
        max_probes: 6,
        h: 1e-5,
        ..Options::default()
    };
    let report = check_gradients(name, &split(&flat), fwd, bwd, opts).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        report.probes >= layout.entries.len(),
        "{name}: {} probes",
        report.probes
    );
}

#[test]
fn dit_gradients_match_finite_differences() {
    let cfg = tiny_dit();
    let be = CpuBackend::new();
    for recompute in [false, true] {
        let m = Dit::new(&be, &cfg, 3, DType::F64, recompute).unwrap();
        let layout = m.layout().clone();
        check_model("dit", m, &dit_batch(&cfg, 3, 1), &layout, 2);
    }
    // Without QK-norm and text conditioning too.
    let cfg = weft_trainer::config::DitConfig {
        qk_norm: false,
        text_dim: 0,
        ..tiny_dit()
    };
    let m = Dit::new(&be, &cfg, 2, DType::F64, false).unwrap();
    let layout = m.layout().clone();
    check_model("dit (no qk-norm, no text)", m, &dit_batch(&cfg, 2, 3), &layout, 4);
}

#[test]
fn gpt_gradients_match_finite_differences() {
    let be = CpuBackend::new();
    for (tie, recompute) in [(false, false), (true, true)] {
        let cfg = weft_trainer::config::GptConfig {
            tie_embeddings: tie,
            ..tiny_gpt()
        };
        let m = Gpt::new(&be, &cfg, 2, DType::F64, recompute).unwrap();
        let layout = m.layout().clone();
        check_model("gpt", m, &token_batch(&cfg, 2, 5), &layout, 6);
    }
}

#[test]
fn recomputation_changes_no_bits() {
    let be = CpuBackend::new();
    let cfg = tiny_dit();
    let batch = dit_batch(&cfg, 2, 9);
    let run = |recompute| {
        let m = RefCell::new(Dit::new(&be, &cfg, 2, DType::F64, recompute).unwrap());
        let n = m.borrow().layout().len();
        loss_and_grad(&m, &random_params(n, 1, 0.5), &batch, 1.0)
    };
    assert_eq!(run(false), run(true));
    let cfg = tiny_gpt();
    let batch = token_batch(&cfg, 2, 9);
    let run = |recompute| {
        let m = RefCell::new(Gpt::new(&be, &cfg, 2, DType::F64, recompute).unwrap());
        let n = m.borrow().layout().len();
        loss_and_grad(&m, &random_params(n, 1, 0.5), &batch, 1.0)
    };
    assert_eq!(run(false), run(true));
}
