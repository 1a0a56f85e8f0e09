//! weft-trainer's integration tests, one binary with a module per area.

mod common;
mod models;
mod reference;
