//! What a finished run of a sweep leaves: `result.json` beside its metrics, written once the
//! run has trained every step (then it is scored on the sweep's held-out samples) or
//! diverged. A run without it is unfinished: the next `weft sweep` resumes it from its newest
//! checkpoint.

use super::spec::{Run, Sweep};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// One run's outcome, as `result.json` and one row of `results.csv`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    pub name: String,
    /// Axis → value, as the sweep file gives it.
    pub point: BTreeMap<String, serde_json::Value>,
    /// `done` or `diverged`.
    pub status: String,
    /// `sp` or `mup`.
    pub parametrization: String,
    pub optimizer: String,
    pub width: usize,
    pub depth: usize,
    pub lr: f64,
    pub steps: u64,
    pub params: usize,
    pub tokens_per_step: usize,
    pub flops_per_step: f64,
    /// Training FLOPs of the whole run: `flops_per_step × steps`.
    pub compute: f64,
    /// Loss of the final weights on the sweep's held-out samples (absent when diverged).
    pub eval_loss: Option<f64>,
    /// The best constant predictor's loss on the same samples.
    pub eval_baseline: Option<f64>,
    /// Mean training loss over the last tenth of the steps.
    pub train_loss: Option<f64>,
    /// The step where the loss stopped being a number.
    pub diverged_at: Option<u64>,
}

impl RunResult {
    /// The loss the sweep compares runs by: held-out loss, infinite for a diverged run.
    pub fn loss(&self) -> f64 {
        self.eval_loss.unwrap_or(f64::INFINITY)
    }
}

/// The run's `result.json`, if it finished.
pub fn read(sweep: &Sweep, run: &Run) -> Option<RunResult> {
    let text = std::fs::read_to_string(sweep.run_dir(&run.name).join("result.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// What `metrics.jsonl` says: the last value of each step's training loss, and a divergence.
struct Metrics {
    losses: BTreeMap<u64, f64>,
    diverged: Option<u64>,
}

fn metrics(path: &Path) -> Metrics {
    let mut m = Metrics {
        losses: BTreeMap::new(),
        diverged: None,
    };
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let step = v.get("step").and_then(|s| s.as_u64());
        if v.get("event").and_then(|e| e.as_str()) == Some("diverged") {
            m.diverged = step;
        } else if let (Some(s), Some(l)) = (step, v.get("loss").and_then(|l| l.as_f64())) {
            // A resumed run repeats the steps after its checkpoint: the later line counts.
            m.losses.insert(s, l);
        }
    }
    m
}

/// After the run's trainer exited: score it and write `result.json` if it trained every step
/// or diverged; `Ok(None)` if it stopped early (preempted: resume later); an error if it
/// failed otherwise.
pub fn finish(sweep: &Sweep, run: &Run) -> Result<Option<RunResult>> {
    let cfg = sweep.config(run)?;
    let dir = sweep.run_dir(&run.name);
    let m = metrics(&dir.join("metrics.jsonl"));
    let last = m.losses.keys().next_back().copied().unwrap_or(0);
    let steps = cfg.training.steps;
    let complete = last >= steps && m.diverged.is_none();
    if !complete && m.diverged.is_none() {
        return Ok(None);
    }
    let cost = weft_trainer::job::step_cost(&cfg)?;
    let (eval_loss, eval_baseline, train_loss) = if complete {
        let weights = dir.join("model.safetensors");
        let (wcfg, params) = weft_trainer::export::load(&weights, weft_trainer::job::layout_of)
            .with_context(|| format!("run {}: reading its final weights", run.name))?;
        if wcfg.training.steps != steps {
            bail!(
                "run {}: {} holds another run's weights",
                run.name,
                weights.display()
            );
        }
        let e = weft_trainer::eval::evaluate(&cfg, &params, sweep.eval_samples)?;
        let tail = (steps / 10).max(1);
        let recent: Vec<f64> = m
            .losses
            .range(steps + 1 - tail..=steps)
            .map(|(_, l)| *l)
            .collect();
        let train = recent.iter().sum::<f64>() / recent.len().max(1) as f64;
        (Some(e.loss), Some(e.baseline), Some(train))
    } else {
        (None, None, None)
    };
    let r = RunResult {
        name: run.name.clone(),
        point: run
            .point
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or_default()))
            .collect(),
        status: if complete { "done" } else { "diverged" }.into(),
        parametrization: if cfg.mup.enabled { "mup" } else { "sp" }.into(),
        optimizer: cfg.optimizer.kind.clone(),
        width: cfg.width(),
        depth: match &cfg.model {
            weft_trainer::config::ModelConfig::Dit(m) => m.depth,
            weft_trainer::config::ModelConfig::Gpt(m) => m.depth,
        },
        lr: cfg.optimizer.lr,
        steps,
        params: cost.params,
        tokens_per_step: cost.tokens,
        flops_per_step: cost.flops,
        compute: cost.flops * steps as f64,
        eval_loss,
        eval_baseline,
        train_loss,
        diverged_at: m.diverged,
    };
    crate::record::write_atomic(
        &dir.join("result.json"),
        serde_json::to_string_pretty(&r)?.as_bytes(),
    )?;
    Ok(Some(r))
}

/// Every finished run's result, in sweep order, as `results.json` and `results.csv`.
pub fn collect(sweep: &Sweep) -> Result<Vec<RunResult>> {
    let rows: Vec<RunResult> = sweep.runs.iter().filter_map(|r| read(sweep, r)).collect();
    crate::record::write_atomic(
        &sweep.dir.join("results.json"),
        serde_json::to_string_pretty(&rows)?.as_bytes(),
    )?;
    let mut csv = String::from(
        "name,status,parametrization,optimizer,width,depth,lr,steps,params,tokens_per_step,\
         flops_per_step,compute,eval_loss,eval_baseline,train_loss,diverged_at\n",
    );
    let opt = |v: Option<f64>| v.map(|x| format!("{x}")).unwrap_or_default();
    for r in &rows {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            r.name,
            r.status,
            r.parametrization,
            r.optimizer,
            r.width,
            r.depth,
            r.lr,
            r.steps,
            r.params,
            r.tokens_per_step,
            r.flops_per_step,
            r.compute,
            opt(r.eval_loss),
            opt(r.eval_baseline),
            opt(r.train_loss),
            r.diverged_at.map(|s| s.to_string()).unwrap_or_default()
        ));
    }
    crate::record::write_atomic(&sweep.dir.join("results.csv"), csv.as_bytes())?;
    Ok(rows)
}
