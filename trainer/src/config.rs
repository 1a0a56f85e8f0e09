//! Run configs: TOML files with sections `[job] [model] [data] [training] [optimizer]
//! [parallel] [checkpoint]`, dotted overrides from the command line, and validation that names
//! the key and the rule before anything is allocated.
//!
//! Loading is two-phase (raw TOML → typed, validated [`Config`]): unknown keys, wrong types and
//! missing required fields are refused by the typed parse with the full key path; shape rules
//! that involve several keys (heads dividing the width, patches dividing the latent) are
//! checked by [`Config::validate`].

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A whole run.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub job: Job,
    pub model: ModelConfig,
    pub data: DataConfig,
    pub training: Training,
    pub optimizer: Optimizer,
    #[serde(default)]
    pub parallel: Parallel,
    #[serde(default)]
    pub checkpoint: Checkpoint,
    #[serde(default)]
    pub launch: Launch,
    #[serde(default)]
    pub mup: Mup,
}

mod launch;
mod load;
mod matrix;
mod mup;
mod validate;
pub use launch::Launch;
pub use load::apply_override;
pub use matrix::{Muon, Scion};
pub use mup::{attn_scale, Mup};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Run name; the run directory is `<out_dir>/<name>`.
    pub name: String,
    #[serde(default = "default_out_dir")]
    pub out_dir: String,
    /// Seeds initialization, data order and noise.
    #[serde(default)]
    pub seed: u64,
}

fn default_out_dir() -> String {
    "runs".into()
}

/// The model, chosen by `kind`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelConfig {
    Dit(DitConfig),
    Gpt(GptConfig),
}

/// A video diffusion transformer over latents `[T, H, W, C]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DitConfig {
    pub width: usize,
    pub depth: usize,
    pub heads: usize,
    #[serde(default = "four")]
    pub mlp_ratio: f64,
    /// Latent video extent `[T, H, W, C]`.
    pub latent: [usize; 4],
    /// Patch `[pt, ph, pw]`.
    pub patch: [usize; 3],
    pub num_classes: usize,
    /// Width of an optional precomputed (pooled) text embedding per sample; 0 = none.
    #[serde(default)]
    pub text_dim: usize,
    #[serde(default = "yes")]
    pub qk_norm: bool,
    /// Probability of replacing the class by the null class in training (for guidance).
    #[serde(default = "dropout")]
    pub class_dropout: f64,
    #[serde(default = "theta")]
    pub rope_theta: f64,
    /// EDM-style preconditioning of the flow-matching network (input/skip/output scalings).
    #[serde(default)]
    pub precondition: bool,
    /// Standard deviation of the data, used by preconditioning.
    #[serde(default = "half")]
    pub sigma_data: f64,
    /// Logit-normal timestep sampling: `t = σ(m + s·z)`.
    #[serde(default)]
    pub t_mean: f64,
    #[serde(default = "one")]
    pub t_std: f64,
    /// muP's base head dim (set from `[mup]`, not a key): attention scales by
    /// `√base/HD` instead of `1/√HD`.
    #[serde(skip)]
    pub attn_base_hd: Option<usize>,
}

/// A GPT / Llama-style decoder-only language model.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    pub width: usize,
    pub depth: usize,
    pub heads: usize,
    /// Key/value heads (grouped-query attention); defaults to `heads`.
    #[serde(default)]
    pub kv_heads: Option<usize>,
    pub vocab_size: usize,
    pub seq_len: usize,
    /// SwiGLU hidden size; defaults to `8/3·width` rounded up to a multiple of 64.
    #[serde(default)]
    pub mlp_hidden: Option<usize>,
    #[serde(default = "yes")]
    pub tie_embeddings: bool,
    #[serde(default = "z_loss")]
    pub z_loss: f64,
    #[serde(default = "theta")]
    pub rope_theta: f64,
    /// muP's base head dim (set from `[mup]`, not a key); see [`attn_scale`].
    #[serde(skip)]
    pub attn_base_hd: Option<usize>,
}

/// Where samples come from, chosen by `kind`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DataConfig {
    /// The built-in procedural video dataset (moving coloured shapes).
    Shapes,
    /// Latent shards on disk: safetensors files with `latents [N,T,H,W,C]`, optional
    /// `labels [N]` and `embeddings [N,E]`. The last `val_fraction` of samples are held out.
    Latents(DataFiles),
    /// A token shard (`weft data tokenize`); the last `val_fraction` of tokens are held out.
    Tokens(DataFiles),
}

/// Where a file-backed data source reads from, and how much of it is held out.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataFiles {
    pub path: String,
    #[serde(default = "val_fraction")]
    pub val_fraction: f64,
}

impl DataConfig {
    /// The data source in words, for messages (`data.path = "…"`).
    pub fn describe(&self) -> String {
        match self {
            DataConfig::Shapes => "the built-in shapes dataset".into(),
            DataConfig::Latents(f) | DataConfig::Tokens(f) => format!("data.path = {:?}", f.path),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Training {
    pub steps: u64,
    /// Samples (or sequences) per micro-batch per data-parallel rank.
    pub micro_batch: usize,
    /// Micro-batches accumulated per optimizer step.
    #[serde(default = "one_usize")]
    pub grad_accum: usize,
    /// Validate every this many steps (and at the end); 0 = only at the end.
    #[serde(default)]
    pub val_every: u64,
    /// Stop this attempt after this many steps, saving a checkpoint first (like Megatron's
    /// `--exit-interval`: jobs shorter than the run resume with `checkpoint.resume = "auto"`);
    /// 0 = run to `steps`.
    #[serde(default)]
    pub exit_after: u64,
    #[serde(default = "four_usize")]
    pub val_batches: usize,
    /// Recompute each block's activations in backward instead of keeping them.
    #[serde(default)]
    pub recompute: bool,
    /// Master dtype (weights, accumulated gradients, optimizer state): `f32`, or `f64` for
    /// reference runs.
    #[serde(default = "f32_name")]
    pub dtype: String,
    /// The dtype parameters are gathered and computed in (activations too): `bf16` for mixed
    /// precision over f32 masters, or the master dtype (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param_dtype: Option<String>,
    /// The dtype FSDP reduce-scatters gradients in: the master dtype (the default) or `bf16`
    /// (half the bytes, rounded once per reduction). The sums over replicas, cp and tp that
    /// follow, on the shard, stay in the master dtype.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduce_dtype: Option<String>,
    /// Where the step runs: `cpu`, `cuda` (device 0) or `cuda:N`
    /// ([`crate::device::check`] probes it before any rank starts).
    #[serde(default = "cpu_name")]
    pub device: String,
    /// Peak FLOP/s of the device for MFU; measured at start when absent.
    #[serde(default)]
    pub peak_flops: Option<f64>,
    /// Start even when the memory estimate says the run does not fit this machine.
    #[serde(default)]
    pub skip_memory_check: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Optimizer {
    #[serde(default = "adamw")]
    pub kind: String,
    pub lr: f64,
    /// Final learning rate as a fraction of `lr`.
    #[serde(default = "tenth")]
    pub min_lr_ratio: f64,
    #[serde(default = "beta1")]
    pub beta1: f64,
    #[serde(default = "beta2")]
    pub beta2: f64,
    #[serde(default = "adam_eps")]
    pub eps: f64,
    #[serde(default = "tenth")]
    pub weight_decay: f64,
    /// Global gradient-norm clip; 0 disables.
    #[serde(default = "one")]
    pub grad_clip: f64,
    /// `cosine` (warmup then cosine to `min_lr_ratio`), `wsd` (warmup, stable, linear decay
    /// over the last `decay_fraction`), or `constant` (warmup then flat).
    #[serde(default = "cosine")]
    pub schedule: String,
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default = "decay_fraction")]
    pub decay_fraction: f64,
    /// AdEMAMix (`kind = "ademamix"`): the slow EMA's rate and its weight, each warmed up over
    /// `mix_warmup_steps` (0 = the whole run) from `beta1` and 0.
    #[serde(default = "beta3")]
    pub beta3: f64,
    #[serde(default = "alpha")]
    pub alpha: f64,
    #[serde(default)]
    pub mix_warmup_steps: u64,
    #[serde(default)]
    pub muon: Muon,
    #[serde(default)]
    pub scion: Scion,
}

fn beta3() -> f64 {
    0.9999
}
fn alpha() -> f64 {
    5.0
}

/// The device mesh, outermost first. A single process runs with every size 1.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Parallel {
    #[serde(default = "one_usize")]
    pub dp_replicate: usize,
    #[serde(default = "one_usize")]
    pub dp_shard: usize,
    #[serde(default = "one_usize")]
    pub cp: usize,
    #[serde(default = "one_usize")]
    pub tp: usize,
    /// How much of `cp` is Ulysses (all-to-all over heads); the rest, `cp / ulysses`, is ring
    /// attention. 1 = pure ring, `cp` = pure Ulysses.
    #[serde(default = "one_usize")]
    pub ulysses: usize,
}

impl Default for Parallel {
    fn default() -> Self {
        Parallel {
            dp_replicate: 1,
            dp_shard: 1,
            cp: 1,
            tp: 1,
            ulysses: 1,
        }
    }
}

impl Parallel {
    pub fn world(&self) -> usize {
        self.dp_replicate * self.dp_shard * self.cp * self.tp
    }
    pub fn dp(&self) -> usize {
        self.dp_replicate * self.dp_shard
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Save every this many steps; 0 = never.
    #[serde(default)]
    pub interval: u64,
    /// Committed checkpoints to keep.
    #[serde(default = "three")]
    pub keep: usize,
    /// Where checkpoints go; empty = `<run dir>/checkpoints`.
    #[serde(default)]
    pub dir: String,
    /// Continue from a checkpoint: `""` (start at step 0), `"auto"` (the newest one under `dir`
    /// that verifies; an error if checkpoints exist and none verifies; step 0 if there are
    /// none), `"fresh"` (start at step 0 and say so) or a checkpoint directory. Starting at
    /// step 0 moves the checkpoints already in `dir` aside (see `weft_trainer::ckpt::find_resume`).
    #[serde(default)]
    pub resume: String,
    /// How long the committing rank waits for the other ranks' pieces of a save, in seconds.
    #[serde(default = "commit_timeout")]
    pub commit_timeout_s: f64,
}

fn commit_timeout() -> f64 {
    600.0
}

impl Default for Checkpoint {
    fn default() -> Self {
        Checkpoint {
            interval: 0,
            keep: 3,
            dir: String::new(),
            resume: String::new(),
            commit_timeout_s: commit_timeout(),
        }
    }
}

fn four() -> f64 {
    4.0
}
fn yes() -> bool {
    true
}
fn dropout() -> f64 {
    0.1
}
fn theta() -> f64 {
    10000.0
}
fn half() -> f64 {
    0.5
}
fn one() -> f64 {
    1.0
}
fn one_usize() -> usize {
    1
}
fn four_usize() -> usize {
    4
}
fn three() -> usize {
    3
}
fn z_loss() -> f64 {
    1e-4
}
fn val_fraction() -> f64 {
    0.05
}
fn cpu_name() -> String {
    "cpu".into()
}
fn f32_name() -> String {
    "f32".into()
}
fn adamw() -> String {
    "adamw".into()
}
fn tenth() -> f64 {
    0.1
}
fn beta1() -> f64 {
    0.9
}
fn beta2() -> f64 {
    0.95
}
fn adam_eps() -> f64 {
    1e-8
}
fn cosine() -> String {
    "cosine".into()
}
fn decay_fraction() -> f64 {
    0.2
}

impl Config {
    /// Where this run's checkpoints live.
    pub fn checkpoint_dir(&self) -> std::path::PathBuf {
        if self.checkpoint.dir.is_empty() {
            self.run_dir().join("checkpoints")
        } else {
            std::path::PathBuf::from(&self.checkpoint.dir)
        }
    }

    /// The config as TOML (embedded in exported weights and run directories).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a Config always serializes")
    }

    /// The model's width (`model.width`).
    pub fn width(&self) -> usize {
        match &self.model {
            ModelConfig::Dit(m) => m.width,
            ModelConfig::Gpt(m) => m.width,
        }
    }

    /// The parameter layout as trained: the model's, with muP's per-role init and
    /// learning-rate factors when `[mup]` is on.
    pub fn parametrize(&self, mut layout: crate::Layout) -> crate::Layout {
        self.mup.apply(&mut layout, self.width(), &self.optimizer.kind);
        layout
    }

    /// The run directory `<job.out_dir>/<job.name>`.
    pub fn run_dir(&self) -> std::path::PathBuf {
        Path::new(&self.job.out_dir).join(&self.job.name)
    }
}

/// The largest value a size key may take (a width, a depth, a vocabulary, tokens per
/// sample, a micro-batch): far beyond any machine, small enough that shape arithmetic
/// cannot overflow.
pub const MAX_SIZE: usize = 1 << 31;
/// The most ranks a mesh may have.
pub const MAX_RANKS: usize = 1 << 24;
