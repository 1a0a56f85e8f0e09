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
    #[error(transparent)]
    Kernel(#[from] weft_kernels::Error),
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
