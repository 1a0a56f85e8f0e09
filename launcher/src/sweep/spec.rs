//! The sweep file and its expansion into runs.
//!
//! ```toml
//! name = "dit-mup"                        # the sweep's directory is <out_dir>/<name>
//! base = "../configs/dit-tiny.toml"       # relative to this file
//! out_dir = "runs/sweeps"                 # relative to where weft runs (default "runs/sweeps")
//! eval_samples = 256                      # held-out samples every run is scored on
//! threads_per_run = 1                     # local runs at once = cores / threads_per_run
//! head_dim = 32                           # optional: heads = width / head_dim at every width
//!
//! [set]                                   # overrides for every run
//! "model.depth" = 2
//!
//! [[grid]]                                # a cartesian product; the runs are the union
//! parametrization = ["sp", "mup"]
//! width = [32, 64, 128, 256]
//! lr = { from = 1e-3, to = 6.4e-2, num = 7, scale = "log" }
//!
//! [[grid]]
//! parametrization = "mup"
//! compute = [2e12, 4e12, 8e12, 1.6e13]    # FLOPs: steps = compute / FLOPs per step
//! width = [32, 48, 64, 96, 128]
//! ```
//!
//! Axes: `width`, `depth`, `heads`, `lr`, `batch` (the micro-batch), `steps`, `tokens` (steps
//! = tokens / tokens per step), `compute` (steps = FLOPs / FLOPs per step), `optimizer`
//! (`optimizer.kind`), `parametrization` (`sp` or `mup`), or any config key written with its
//! table (`"model.mlp_ratio"`). A value is a list, a single value, or a range
//! `{ from, to, num, scale = "log" | "linear" }`.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use weft_trainer::Config;

/// The named axes, in the order run names list them.
pub const AXES: [&str; 10] = [
    "parametrization",
    "optimizer",
    "width",
    "depth",
    "heads",
    "batch",
    "compute",
    "tokens",
    "steps",
    "lr",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: String,
    base: PathBuf,
    #[serde(default = "out_dir")]
    out_dir: PathBuf,
    #[serde(default = "eval_samples")]
    eval_samples: usize,
    #[serde(default = "one")]
    threads_per_run: usize,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default)]
    set: toml::Table,
    grid: Vec<toml::Table>,
}

fn out_dir() -> PathBuf {
    "runs/sweeps".into()
}
fn eval_samples() -> usize {
    256
}
fn one() -> usize {
    1
}

/// A parsed sweep.
#[derive(Debug)]
pub struct Sweep {
    pub name: String,
    /// The sweep file itself (absolute).
    pub file: PathBuf,
    /// The base config (absolute).
    pub base: PathBuf,
    /// `<out_dir>/<name>`: runs in `runs/`, results and the report beside them.
    pub dir: PathBuf,
    pub eval_samples: usize,
    pub threads_per_run: usize,
    /// Keep the head dim fixed across widths (heads grow with width; muP's attention scale
    /// is then the usual `1/√d`); else the base config's heads at every width.
    pub head_dim: Option<usize>,
    /// Every run, in grid order, without duplicates.
    pub runs: Vec<Run>,
}

/// One run of a sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    /// Directory name under `<sweep>/runs/`, from its axis values (`mup_w64_lr4e-3`).
    pub name: String,
    /// Axis → value, as written in the sweep file.
    pub point: BTreeMap<String, toml::Value>,
    /// `--set` overrides of the base config that make this run (the sweep's `[set]` first).
    pub sets: Vec<String>,
}

impl Sweep {
    /// The directory of run `name`.
    pub fn run_dir(&self, name: &str) -> PathBuf {
        self.dir.join("runs").join(name)
    }

    /// The config of `run`, validated (each error names the run and the key).
    pub fn config(&self, run: &Run) -> Result<Config> {
        Config::load(&self.base, &run.sets).with_context(|| format!("sweep run {}", run.name))
    }
}

/// Read and expand `path`; every run's config is loaded and validated before anything starts.
pub fn load(path: &Path) -> Result<Sweep> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let f: File =
        toml::from_str(&text).with_context(|| format!("{}: not a valid sweep file", path.display()))?;
    let file = std::fs::canonicalize(path)?;
    let here = file.parent().unwrap_or(Path::new("."));
    let base = here.join(&f.base);
    let base = std::fs::canonicalize(&base)
        .with_context(|| format!("{}: base = {:?}: no such config", path.display(), f.base))?;
    if f.name.is_empty()
        || !f
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!("name = {:?}: use letters, digits, '-', '_' and '.'", f.name);
    }
    if f.grid.is_empty() {
        bail!(
            "{}: no [[grid]] tables: a sweep needs at least one",
            path.display()
        );
    }
    if f.threads_per_run == 0 {
        bail!("threads_per_run = 0: must be at least 1");
    }
    let dir = std::env::current_dir()?.join(&f.out_dir).join(&f.name);
    let runs_dir = dir.join("runs");
    let mut fixed = Vec::new();
    flatten("", &f.set, &mut fixed);
    let mut runs: Vec<Run> = Vec::new();
    for (g, grid) in f.grid.iter().enumerate() {
        let mut axes: Vec<(String, Vec<toml::Value>)> = Vec::new();
        for (k, v) in grid {
            if !AXES.contains(&k.as_str()) && !k.contains('.') {
                bail!(
                    "grid {}: axis {k:?} is not one of {} or a config key with its table (\"model.mlp_ratio\")",
                    g + 1,
                    AXES.join(", ")
                );
            }
            axes.push((
                k.clone(),
                values(v).with_context(|| format!("grid {}: axis {k}", g + 1))?,
            ));
        }
        if axes
            .iter()
            .filter(|(k, _)| ["compute", "tokens", "steps"].contains(&k.as_str()))
            .count()
            > 1
        {
            bail!("grid {}: give at most one of compute, tokens and steps", g + 1);
        }
        axes.sort_by_key(|(k, _)| (AXES.iter().position(|a| a == k).unwrap_or(AXES.len()), k.clone()));
        for point in product(&axes) {
            let name = run_name(&point);
            if runs.iter().any(|r| r.name == name) {
                continue;
            }
            let mut sets = fixed.clone();
            sets.push(format!("job.name={}", toml::Value::String(name.clone())));
            sets.push(format!(
                "job.out_dir={}",
                toml::Value::String(runs_dir.display().to_string())
            ));
            runs.push(Run { name, point, sets });
        }
    }
    let mut sweep = Sweep {
        name: f.name,
        file,
        base,
        dir,
        eval_samples: f.eval_samples,
        threads_per_run: f.threads_per_run,
        head_dim: f.head_dim,
        runs,
    };
    for i in 0..sweep.runs.len() {
        let sets = resolve(&sweep, &sweep.runs[i])?;
        sweep.runs[i].sets.extend(sets);
        sweep.config(&sweep.runs[i])?;
    }
    Ok(sweep)
}

/// `[set]` as `key=value` overrides (nested tables become dotted keys).
fn flatten(prefix: &str, t: &toml::Table, out: &mut Vec<String>) {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(sub) => flatten(&key, sub, out),
            v => out.push(format!("{key}={v}")),
        }
    }
}

/// An axis's values: a list, one value, or `{ from, to, num, scale }`.
fn values(v: &toml::Value) -> Result<Vec<toml::Value>> {
    let vals = match v {
        toml::Value::Array(a) => a.clone(),
        toml::Value::Table(t) => {
            let num = |k: &str| -> Result<f64> {
                let v = t.get(k).with_context(|| format!("a range needs `{k}`"))?;
                v.as_float()
                    .or_else(|| v.as_integer().map(|i| i as f64))
                    .with_context(|| format!("`{k}` must be a number"))
            };
            for k in t.keys() {
                if !["from", "to", "num", "scale"].contains(&k.as_str()) {
                    bail!("range key {k:?}: a range has from, to, num and scale");
                }
            }
            let (from, to, n) = (num("from")?, num("to")?, num("num")?);
            let log = match t.get("scale").and_then(|s| s.as_str()).unwrap_or("log") {
                "log" => true,
                "linear" => false,
                s => bail!("scale = {s:?}: must be \"log\" or \"linear\""),
            };
            if n < 1.0 || n.fract() != 0.0 {
                bail!("num = {n}: must be a whole number of at least 1");
            }
            if log && (from <= 0.0 || to <= 0.0) {
                bail!("a log range needs from > 0 and to > 0");
            }
            let n = n as usize;
            (0..n)
                .map(|i| {
                    let f = if n == 1 { 0.0 } else { i as f64 / (n - 1) as f64 };
                    let x = if log {
                        (from.ln() + f * (to.ln() - from.ln())).exp()
                    } else {
                        from + f * (to - from)
                    };
                    // 12 significant digits: 1e-3·2^k prints as 0.004, not 0.0040000000000000001.
                    toml::Value::Float(format!("{x:.11e}").parse().unwrap_or(x))
                })
                .collect()
        }
        v => vec![v.clone()],
    };
    if vals.is_empty() {
        bail!("no values");
    }
    Ok(vals)
}

fn product(axes: &[(String, Vec<toml::Value>)]) -> Vec<BTreeMap<String, toml::Value>> {
    let mut out = vec![BTreeMap::new()];
    for (k, vals) in axes {
        out = out
            .into_iter()
            .flat_map(|p| {
                vals.iter().map(move |v| {
                    let mut q = p.clone();
                    q.insert(k.clone(), v.clone());
                    q
                })
            })
            .collect();
    }
    out
}

/// A value as a short name part: `64`, `4e-3`, `mup`.
fn short(v: &toml::Value) -> String {
    let s = match v {
        toml::Value::Float(f) => {
            let e = format!("{f:e}");
            let d = format!("{f}");
            if d.len() <= e.len() {
                d
            } else {
                e
            }
        }
        toml::Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-.+".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// `mup_adamw_w64_lr4e-3`: the axis values in [`AXES`] order, then the config keys.
fn run_name(point: &BTreeMap<String, toml::Value>) -> String {
    let mut keys: Vec<&String> = point.keys().collect();
    keys.sort_by_key(|k| {
        (
            AXES.iter().position(|a| a == k).unwrap_or(AXES.len()),
            (*k).clone(),
        )
    });
    keys.iter()
        .map(|k| {
            let v = short(&point[*k]);
            match k.as_str() {
                "parametrization" | "optimizer" => v,
                "width" => format!("w{v}"),
                "depth" => format!("d{v}"),
                "heads" => format!("h{v}"),
                "batch" => format!("b{v}"),
                "compute" => format!("C{v}"),
                "tokens" => format!("D{v}"),
                "steps" => format!("s{v}"),
                "lr" => format!("lr{v}"),
                k => format!("{}{v}", k.rsplit('.').next().unwrap_or(k)),
            }
        })
        .collect::<Vec<_>>()
        .join("_")
}

/// The overrides that put `run` at its point (after the sweep's `[set]`): named axes become
/// config keys; `tokens` and `compute` become `training.steps` from the run's cost per step.
fn resolve(sweep: &Sweep, run: &Run) -> Result<Vec<String>> {
    let mut sets = Vec::new();
    let mut budget = None;
    if let Some(hd) = sweep.head_dim {
        let width = match run.point.get("width").and_then(|w| w.as_integer()) {
            Some(w) => w as usize,
            None => Config::load(&sweep.base, &run.sets)?.width(),
        };
        if hd == 0 || !width.is_multiple_of(hd) {
            bail!("run {}: head_dim = {hd} does not divide width {width}", run.name);
        }
        sets.push(format!("model.heads={}", width / hd));
        sets.push(format!("mup.base_head_dim={hd}"));
    }
    for (k, v) in &run.point {
        let key = match k.as_str() {
            "width" => "model.width",
            "depth" => "model.depth",
            "heads" => "model.heads",
            "lr" => "optimizer.lr",
            "batch" => "training.micro_batch",
            "steps" => "training.steps",
            "optimizer" => "optimizer.kind",
            "parametrization" => {
                let on = match v.as_str() {
                    Some("sp") => false,
                    Some("mup") => true,
                    _ => bail!(
                        "run {}: parametrization = {v}: must be \"sp\" or \"mup\"",
                        run.name
                    ),
                };
                sets.push(format!("mup.enabled={on}"));
                continue;
            }
            "tokens" | "compute" => {
                let x = v
                    .as_float()
                    .or_else(|| v.as_integer().map(|i| i as f64))
                    .filter(|x| *x > 0.0)
                    .with_context(|| format!("run {}: {k} = {v}: must be a positive number", run.name))?;
                budget = Some((k.as_str(), x));
                continue;
            }
            k => k,
        };
        sets.push(format!("{key}={v}"));
    }
    if let Some((what, x)) = budget {
        let mut all = run.sets.clone();
        all.extend(sets.iter().cloned());
        let cfg = Config::load(&sweep.base, &all).with_context(|| format!("sweep run {}", run.name))?;
        let cost = weft_trainer::job::step_cost(&cfg)?;
        let per_step = if what == "tokens" {
            cost.tokens as f64
        } else {
            cost.flops
        };
        let steps = (x / per_step).round().max(1.0) as u64;
        sets.push(format!("training.steps={steps}"));
    }
    Ok(sets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let base = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/dit-tiny.toml"))
            .unwrap();
        std::fs::write(dir.join("base.toml"), base).unwrap();
        let p = dir.join("sweep.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn grids_expand_to_named_runs_and_budgets_to_steps() {
        let dir = std::env::temp_dir().join(format!("weft-sweep-spec-{}", std::process::id()));
        let p = write(
            &dir,
            r#"name = "t"
base = "base.toml"
[set]
model = { depth = 2 }
[[grid]]
parametrization = ["sp", "mup"]
width = [32, 64]
lr = { from = 1e-3, to = 4e-3, num = 3 }
[[grid]]
parametrization = "mup"
width = [32, 64]
compute = [1e11, 4e11]
"#,
        );
        let s = load(&p).unwrap();
        assert_eq!(s.runs.len(), 2 * 2 * 3 + 4);
        assert_eq!(s.runs[0].name, "sp_w32_lr1e-3");
        assert_eq!(s.runs[1].name, "sp_w32_lr2e-3");
        assert!(
            s.runs[0].sets.contains(&"model.depth=2".to_string()),
            "{:?}",
            s.runs[0].sets
        );
        assert!(s.runs[0].sets.contains(&"mup.enabled=false".to_string()));
        // A compute budget becomes steps: 4× the FLOPs, 4× the steps (to rounding).
        let steps = |name: &str| {
            let r = s.runs.iter().find(|r| r.name == name).unwrap();
            s.config(r).unwrap().training.steps as f64
        };
        let (a, b) = (steps("mup_w64_C1e11"), steps("mup_w64_C4e11"));
        assert!((b / a - 4.0).abs() < 0.1, "{a} {b}");
        assert!(
            steps("mup_w32_C1e11") > a,
            "a smaller model gets more steps for the same compute"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bad_sweep_names_what_is_wrong() {
        let dir = std::env::temp_dir().join(format!("weft-sweep-bad-{}", std::process::id()));
        for (text, want) in [
            (
                "name = \"t\"\nbase = \"base.toml\"\n[[grid]]\nwidht = [32]\n",
                "axis \"widht\"",
            ),
            (
                "name = \"t\"\nbase = \"base.toml\"\n[[grid]]\nparametrization = \"mu\"\n",
                "must be \"sp\" or \"mup\"",
            ),
            (
                "name = \"t\"\nbase = \"base.toml\"\n[[grid]]\n\"model.widht\" = [32]\n",
                "widht",
            ),
            (
                "name = \"t\"\nbase = \"base.toml\"\n[[grid]]\nlr = { from = 0, to = 1, num = 3 }\n",
                "log range",
            ),
            (
                "name = \"t\"\nbase = \"base.toml\"\n[[grid]]\nsteps = 3\ncompute = 1e9\n",
                "at most one",
            ),
            (
                "name = \"t\"\nbase = \"nope.toml\"\n[[grid]]\nwidth = 32\n",
                "no such config",
            ),
        ] {
            let err = format!("{:#}", load(&write(&dir, text)).unwrap_err());
            assert!(err.contains(want), "{text}: {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
