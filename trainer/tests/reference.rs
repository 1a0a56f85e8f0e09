//! weft against an independent JAX implementation (`tools/reference.py`): same weights and
//! inputs, the loss and every parameter gradient must agree, both computed in f64.
//!
//! The tolerance (1e-7 relative) is set by the kernels' f32 scalar arguments (attention scale
//! `1/√HD`, norm eps, z-loss weight), which the reference keeps in f64; any real mistake in
//! a layer shows up as an O(1) difference.

use crate::common::{tiny_dit, tiny_gpt};
use serde_json::Value;
use std::cell::RefCell;
use weft_kernels::{CpuBackend, DType};
use weft_trainer::model::{Dit, DitBatch, Gpt, Model, TokenBatch};
use weft_trainer::Layout;

fn fixture() -> Value {
    let text = include_str!("fixtures/reference.json");
    serde_json::from_str(text).expect("fixture is JSON")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn ints(v: &Value) -> Vec<i32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_i64().expect("int") as i32)
        .collect()
}

/// The fixture's weights in weft's flat layout; every tensor must be there with its shape.
fn load_params(case: &Value, layout: &Layout) -> Vec<f64> {
    let mut flat = vec![f64::NAN; layout.len()];
    assert_eq!(
        case["params"].as_object().unwrap().len(),
        layout.entries.len(),
        "same tensor count"
    );
    for e in &layout.entries {
        let shape: Vec<usize> = case["shapes"][&e.name]
            .as_array()
            .unwrap_or_else(|| panic!("fixture lacks {}", e.name))
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(shape, e.shape, "{}", e.name);
        flat[e.range()].copy_from_slice(&floats(&case["params"][&e.name]));
    }
    flat
}

/// In f64 every scalar of the run (attention scale, norm eps, z-loss weight) is carried in
/// f64, so weft and the reference differ only in the order of f64 sums: the loss agrees to
/// 1e-13 relative, each gradient to 1e-11 of its tensor's largest value.
fn compare(case: &Value, layout: &Layout, loss: f64, grads: &[f64]) {
    let want = case["loss"].as_f64().unwrap();
    assert!(
        (loss - want).abs() <= 1e-13 * want.abs(),
        "loss {loss} vs reference {want}"
    );
    for e in &layout.entries {
        let want = floats(&case["grads"][&e.name]);
        let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        for (i, (g, w)) in grads[e.range()].iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-11 * scale,
                "d{}[{i}]: weft {g:.12e}, reference {w:.12e}",
                e.name
            );
        }
    }
}

#[test]
fn dit_matches_the_jax_reference() {
    let f = fixture();
    let case = &f["dit"];
    let cfg = tiny_dit();
    assert_eq!(case["config"]["width"], cfg.width as u64);
    let be = CpuBackend::new();
    let m = RefCell::new(Dit::new(&be, &cfg, 2, DType::F64, false).unwrap());
    let layout = m.borrow().layout().clone();
    let params = load_params(case, &layout);
    let b = &case["batch"];
    let f32s = |v: &Value| floats(v).iter().map(|&x| x as f32).collect::<Vec<_>>();
    let batch = DitBatch {
        x: f32s(&b["x"]),
        t: f32s(&b["t"]),
        class: ints(&b["class"]),
        text: Some(f32s(&b["text"])),
        target: f32s(&b["target"]),
    };
    // The generator rounds its inputs to f32-exact values (weft's host batches are f32).
    for (k, v) in [
        ("x", &batch.x),
        ("t", &batch.t),
        ("text", batch.text.as_ref().unwrap()),
        ("target", &batch.target),
    ] {
        assert!(
            floats(&b[k]).iter().zip(v.iter()).all(|(a, b)| *a as f32 == *b),
            "{k}"
        );
    }
    let (loss, grads) = crate::common::loss_and_grad(&m, &params, &batch, 1.0);
    compare(case, &layout, loss, &grads);
}

#[test]
fn gpt_matches_the_jax_reference() {
    let f = fixture();
    let case = &f["gpt"];
    let cfg = tiny_gpt();
    let be = CpuBackend::new();
    let m = RefCell::new(Gpt::new(&be, &cfg, 2, DType::F64, false).unwrap());
    let layout = m.borrow().layout().clone();
    let params = load_params(case, &layout);
    let batch = TokenBatch {
        ids: ints(&case["batch"]["ids"]),
        targets: ints(&case["batch"]["targets"]),
    };
    let (loss, grads) = crate::common::loss_and_grad(&m, &params, &batch, 1.0);
    compare(case, &layout, loss, &grads);
}
