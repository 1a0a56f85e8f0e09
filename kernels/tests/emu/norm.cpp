// The norm family (kernels/cuda/norm.cu) on the CPU emulator.
#include "cuda_emu.h"
#include "../../cuda/norm.cu"

EMU_EXPORT(layernorm_forward_f32)
EMU_EXPORT(layernorm_forward_bf16)
EMU_EXPORT(layernorm_backward_f32)
EMU_EXPORT(layernorm_backward_bf16)
EMU_EXPORT(rmsnorm_forward_f32)
EMU_EXPORT(rmsnorm_forward_bf16)
EMU_EXPORT(rmsnorm_backward_f32)
EMU_EXPORT(rmsnorm_backward_bf16)
EMU_EXPORT(param_grad_sum_f32)
EMU_EXPORT(param_grad_sum_bf16_f32)
