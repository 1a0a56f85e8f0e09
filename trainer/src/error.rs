//! The trainer's error type: every failure names what it was about (a config key, a file, a
//! step) and the rule that was broken.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config value broke a rule; `key` is the dotted path (`model.heads`).
    #[error("config: `{key}` {rule}")]
    Config { key: String, rule: String },
    /// A data file is unusable.
    #[error("data: {path}: {why}")]
    Data { path: PathBuf, why: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The loss stopped being a number.
    #[error("non-finite loss {loss} at step {step}: training stopped (lower optimizer.lr or raise optimizer.warmup_steps)")]
    NonFinite { step: u64, loss: f64 },
    /// The global gradient norm stopped being a number (the loss still was one).
    #[error("non-finite gradient norm {norm} at step {step}: training stopped (lower optimizer.lr or raise optimizer.warmup_steps)")]
    NonFiniteNorm { step: u64, norm: f64 },
    /// The loss stopped being a number on other ranks of the mesh.
    #[error("non-finite loss at step {step} on {ranks} other rank(s) of the mesh: training stopped (their errors name the cause)")]
    NonFiniteElsewhere { step: u64, ranks: usize },
    /// The loss stopped being a number because the batch itself holds NaN or infinity.
    #[error("non-finite loss at step {step}: non-finite values in the input data ({source_desc}: training samples {samples:?} in data order); the data is at fault, not the learning rate")]
    NonFiniteInput {
        step: u64,
        /// The data source (`data.path = …` or the built-in dataset).
        source_desc: String,
        samples: Vec<u64>,
    },
    /// A buffer could not be allocated.
    #[error("cannot allocate {what}: {} ({bytes} bytes): {why}", human(*bytes as f64))]
    Alloc { what: String, bytes: u128, why: String },
    /// The run needs more memory than the machine has (the estimate's breakdown).
    #[error("does not fit in memory:\n{0}")]
    DoesNotFit(String),
    /// `training.device` names a device this machine (or this build) cannot run.
    #[error("training.device = {device:?}: {why}")]
    Device { device: String, why: String },
    #[error(transparent)]
    Kernel(#[from] weft_kernels::Error),
    #[error(transparent)]
    Checkpoint(#[from] weft_checkpoint::Error),
    /// Anything else that is not the user's fault but must be reported (encoding, formats).
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn config(key: impl Into<String>, rule: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            rule: rule.into(),
        }
    }
    pub fn data(path: impl Into<PathBuf>, why: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            why: why.into(),
        }
    }
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

impl From<weft_parallel::Error> for Error {
    fn from(e: weft_parallel::Error) -> Self {
        match e {
            weft_parallel::Error::Mesh(m) => Error::from_mesh(&m.0),
            other => Error::Other(other.to_string()),
        }
    }
}

impl Error {
    /// A mesh rule (`config: `key` rule` or `config: rule`) as a config error.
    pub fn from_mesh(msg: &str) -> Self {
        let body = msg.strip_prefix("config: ").unwrap_or(msg);
        if let Some(rest) = body.strip_prefix('`') {
            if let Some((key, rule)) = rest.split_once('`') {
                return Error::config(key, rule.trim_start());
            }
        }
        Error::config("parallel", body)
    }
}

/// `bytes` in binary units (`1.50 GiB`).
pub fn human(bytes: f64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if !bytes.is_finite() {
        return format!("{bytes} B");
    }
    let mut v = bytes;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} B")
    } else if v >= 1024.0 {
        format!("{bytes:.3e} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}
