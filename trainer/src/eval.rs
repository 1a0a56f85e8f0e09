//! Held-out evaluation: the validation batches (the same samples whatever the mesh), the
//! mean loss over them, the best constant predictor's loss on the same samples (per-value
//! mean for flow matching, the unigram distribution for language modelling), and the two
//! compared in words.

use crate::data::{Source, Split};
use crate::job::{layout_of, with_model, Baseline, ModelJob, Precision};
use crate::model::{Flat, Model, Weights};
use crate::{Config, Error, Result};
use weft_kernels::{Backend, CpuBackend, DType, Ops};

/// The held-out batches of every validation: `n` batches of `b · dp` samples from the start
/// of the validation split, data-parallel rank `dp_rank` of `dp` taking the `dp_rank`-th
/// slice of `b` samples of each (as with training micro-batches), so that a mesh evaluates
/// the samples one process with micro-batch `b · dp` does.
pub(crate) fn val_batches<S: Source>(
    src: &S,
    n: usize,
    b: usize,
    (dp_rank, dp): (usize, usize),
) -> Result<Vec<S::Batch>> {
    (0..n as u64)
        .map(|k| {
            let start = (k * dp as u64 + dp_rank as u64) * b as u64;
            src.batch(Split::Val, &(start..start + b as u64).collect::<Vec<_>>())
        })
        .collect()
}

/// Whether a validation is due after `step` (1-based): every `training.val_every` steps and
/// at the last.
pub(crate) fn due(t: &crate::config::Training, step: u64) -> bool {
    step == t.steps || (t.val_every > 0 && step.is_multiple_of(t.val_every))
}

/// The metrics line of a validation.
pub(crate) fn val_line(step: u64, loss: f64, baseline: f64) -> serde_json::Value {
    serde_json::json!({"step": step, "val_loss": loss, "val_baseline": baseline})
}

/// Mean loss over the held-out batches, with the parameters `wt` hands out (one flat
/// buffer, or a rank's FSDP shards: then every rank of the shard group calls this together,
/// and the result is this rank's share of the loss).
pub(crate) fn validate<M: Model<B>, B: Ops>(
    be: &B,
    model: &mut M,
    wt: &mut dyn Weights<B>,
    val: &[M::Batch],
) -> Result<f64> {
    let mut sum = 0.0;
    for b in val {
        sum += model.forward_with(be, wt, b)?;
    }
    Ok(sum / val.len() as f64)
}

/// A validation loss against the constant predictor's, in words:
/// `val loss 0.1234 vs constant predictor 0.5000 (75% below)`. When the comparison has no
/// meaning (no validation ran; a constant predictor of loss 0, as on one held-out sample)
/// it says `n/a` and why, never `inf` or `NaN`.
pub fn versus_baseline(loss: f64, baseline: f64) -> String {
    let num = |v: f64| {
        if v.is_finite() {
            format!("{v:.4}")
        } else {
            "n/a".into()
        }
    };
    let pct = if !loss.is_finite() {
        "n/a: no validation loss".to_string()
    } else if !baseline.is_finite() {
        "n/a: no constant-predictor loss".to_string()
    } else if baseline <= 0.0 {
        "n/a: the constant predictor's loss is 0 (a held-out set of one sample, or of identical \
         samples, leaves nothing to predict); raise training.val_batches or data.val_fraction"
            .to_string()
    } else {
        let p = 100.0 * (1.0 - loss / baseline);
        if p >= 0.0 {
            format!("{p:.0}% below")
        } else {
            format!("{:.0}% above", -p)
        }
    };
    format!(
        "val loss {} vs constant predictor {} ({pct})",
        num(loss),
        num(baseline)
    )
}

/// A model's loss on held-out data and the best constant predictor's on the same samples.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Eval {
    pub loss: f64,
    pub baseline: f64,
}

/// The loss of the weights `params` (f32, in the layout of `cfg`, as exported) on the first
/// `samples` held-out samples (rounded up to batches of 16), in one process on the CPU. The
/// samples do not depend on the run's batch size, so runs of a sweep are compared on the same
/// data.
pub fn evaluate(cfg: &Config, params: &[f32], samples: usize) -> Result<Eval> {
    struct Job<'a>(&'a [f32], usize, DType);
    impl ModelJob<CpuBackend> for Job<'_> {
        type Out = Eval;
        fn run<M, S>(
            self,
            be: &CpuBackend,
            mut model: M,
            src: &S,
            baseline: Baseline<M::Batch>,
        ) -> Result<Eval>
        where
            M: Model<CpuBackend>,
            S: Source<Batch = M::Batch>,
        {
            let (b, _) = model.batch_shape();
            let val = val_batches(src, self.1.div_ceil(b), b, (0, 1))?;
            let mut p = crate::alloc::alloc(be, "the parameters", self.2, self.0.len())?;
            crate::model::upload_f32(be, self.0, CpuBackend::view_mut(&mut p))?;
            let layout = model.layout().clone();
            let mut wt = Flat::new(&layout, CpuBackend::view(&p), None);
            Ok(Eval {
                loss: validate(be, &mut model, &mut wt, &val)?,
                baseline: baseline(&val),
            })
        }
    }
    let mut c = cfg.clone();
    c.training.micro_batch = 16;
    c.training.recompute = false;
    let n = layout_of(&c).len();
    if params.len() != n {
        return Err(Error::Other(format!(
            "evaluate: a flat buffer of {} values given, the config's model has {n}",
            params.len()
        )));
    }
    // The model computes in the run's compute dtype: the weights are rounded to it.
    let dt = Precision::of(&c).param;
    with_model(&c, &CpuBackend::new(), None, Job(params, samples.max(1), dt))
}

#[cfg(test)]
mod tests {
    use super::versus_baseline;

    #[test]
    fn the_comparison_never_prints_inf_or_nan() {
        assert_eq!(
            versus_baseline(0.25, 1.0),
            "val loss 0.2500 vs constant predictor 1.0000 (75% below)"
        );
        assert_eq!(
            versus_baseline(1.5, 1.0),
            "val loss 1.5000 vs constant predictor 1.0000 (50% above)"
        );
        // One held-out sample: the constant predictor is exact.
        let one = versus_baseline(0.0123, 0.0);
        assert!(
            one.contains("constant predictor 0.0000 (n/a: the constant predictor's loss is 0"),
            "{one}"
        );
        let none = versus_baseline(f64::NAN, 0.5);
        assert!(
            none.starts_with("val loss n/a vs constant predictor 0.5000 (n/a: no validation loss)"),
            "{none}"
        );
        for (l, b) in [
            (0.1, 0.0),
            (f64::NAN, 0.0),
            (f64::INFINITY, 1.0),
            (0.1, f64::NAN),
            (0.0, -0.0),
        ] {
            let s = versus_baseline(l, b);
            assert!(!s.contains("inf") && !s.contains("NaN"), "{s}");
        }
    }
}
