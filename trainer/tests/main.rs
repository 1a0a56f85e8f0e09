//! weft-trainer's integration tests, one binary with a module per area.

mod checkpoint;
mod common;
mod config;
mod cuda;
mod data;
mod matrix;
mod memory;
mod metrics;
mod mixed;
mod models;
mod optim;
mod parallel;
mod reference;
mod training;
