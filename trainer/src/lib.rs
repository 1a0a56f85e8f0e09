//! # weft-trainer
//!
//! Models, optimizers, data and the training loop of weft.
pub mod alloc;
pub mod ckpt;
pub mod config;
pub mod data;
pub mod device;
mod error;
pub mod eval;
pub mod job;
pub mod layout;
pub mod memory;
pub mod mesh;
mod metrics;
pub use metrics::{measure_peak, Peak};
pub mod model;
pub mod observe;
#[cfg(any(feature = "cuda", feature = "cuda-12"))]
pub mod on_cuda;

pub use config::Config;
pub use error::{Error, Result};
pub use layout::{Entry, Layout, Role};
pub mod export;
pub mod optim;
mod render;
pub mod rng;
pub mod sample;
pub mod shard;
pub mod step;
pub mod train;
