//! Integration tests of weft-kernels, one module per area.

mod harness;

mod attention;
mod bf16;
mod cuda;
mod cuda_ops;
mod emulated;
mod errors;
mod gradients;
mod numerics;
mod nvrtc;
mod optim_matrix;
mod streams;
