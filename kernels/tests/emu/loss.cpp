// The loss family (kernels/cuda/loss.cu) on the CPU emulator.
#include "cuda_emu.h"
#include "../../cuda/loss.cu"

EMU_EXPORT(cross_entropy_forward_f32)
EMU_EXPORT(cross_entropy_forward_bf16)
EMU_EXPORT(cross_entropy_backward_f32)
EMU_EXPORT(cross_entropy_backward_bf16)
EMU_EXPORT(mse_forward_partial_f32)
EMU_EXPORT(mse_forward_partial_bf16)
EMU_EXPORT(mse_forward_finish_f32)
EMU_EXPORT(mse_backward_f32)
EMU_EXPORT(mse_backward_bf16)
