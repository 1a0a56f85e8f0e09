//! `training.device`: where a run's step runs. Resolved once, at the top, and checked on this
//! machine before any rank starts, so a missing driver is one clear error instead of a failure
//! inside every rank.

use crate::{Config, Error, Result};
use std::fmt;
use std::str::FromStr;

/// A compute device named by `training.device`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The CPU backend (`cpu`).
    Cpu,
    /// A CUDA device by ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl FromStr for Device {
    /// The rule the value broke.
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let ordinal = |n: &str| {
            (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .then(|| n.parse::<usize>().ok())
                .flatten()
        };
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").and_then(ordinal) {
                Some(n) => Ok(Device::Cuda(n)),
                None => Err(format!(
                    "must be \"cpu\", \"cuda\" or \"cuda:N\" (N a device number), got {s:?}"
                )),
            },
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// `cfg`'s device, without touching the machine: refuses a value that is not a device, and a
/// CUDA device in a build without CUDA support. For a machine other than the one that will run
/// the ranks (a SLURM login node submitting the job).
pub fn resolve(cfg: &Config) -> Result<Device> {
    let device: Device = cfg
        .training
        .device
        .parse()
        .map_err(|rule| Error::config("training.device", rule))?;
    if matches!(device, Device::Cuda(_)) && !weft_kernels::cuda::COMPILED {
        return Err(unusable(cfg, weft_kernels::Error::CudaNotCompiled));
    }
    Ok(device)
}

/// `cfg`'s device, checked on this machine: for CUDA, the driver, the libraries and the device
/// itself are opened (and closed again), so a machine that cannot run the step is refused with
/// the reason (no driver, no such device) before any rank starts.
pub fn check(cfg: &Config) -> Result<Device> {
    let device = resolve(cfg)?;
    if let Device::Cuda(n) = device {
        weft_kernels::cuda::CudaBackend::new(n).map_err(|e| unusable(cfg, e))?;
    }
    Ok(device)
}

/// `cfg`'s device could not be opened: the error names the key's value and the reason.
pub(crate) fn unusable(cfg: &Config, e: weft_kernels::Error) -> Error {
    Error::Device {
        device: cfg.training.device.clone(),
        why: e.to_string(),
    }
}
