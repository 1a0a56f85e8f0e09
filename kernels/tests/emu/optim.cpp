// The optimizer family (kernels/cuda/optim.cu) on the CPU emulator.
#include "cuda_emu.h"
#include "../../cuda/optim.cu"

EMU_EXPORT(adamw_update_f32)
EMU_EXPORT(ademamix_update_f32)
EMU_EXPORT(sum_squares_partial_f32)
EMU_EXPORT(sum_squares_partial_bf16)
EMU_EXPORT(sum_squares_finish_f32)
EMU_EXPORT(sum_squares_finish_f64)
EMU_EXPORT(sum_partial_f32)
EMU_EXPORT(sum_partial_bf16)
EMU_EXPORT(sum_finish_f32)
EMU_EXPORT(sum_finish_f64)
EMU_EXPORT(l2norm_forward_finish_f32)
EMU_EXPORT(l2norm_backward_f32)
EMU_EXPORT(momentum_update_f32)
EMU_EXPORT(apply_direction_f32)
EMU_EXPORT(normalize_frobenius_f32)
EMU_EXPORT(normalize_rows_f32)
EMU_EXPORT(normalize_cols_f32)
EMU_EXPORT(normalize_sign_f32)
EMU_EXPORT(transpose_scaled_f32)
