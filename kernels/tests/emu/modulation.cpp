// The modulation family (kernels/cuda/modulation.cu) on the CPU emulator.
#include "cuda_emu.h"
#include "../../cuda/modulation.cu"

EMU_EXPORT(modulate_forward_f32)
EMU_EXPORT(modulate_forward_bf16)
EMU_EXPORT(modulate_backward_f32)
EMU_EXPORT(modulate_backward_bf16)
EMU_EXPORT(gate_forward_f32)
EMU_EXPORT(gate_forward_bf16)
EMU_EXPORT(gate_backward_f32)
EMU_EXPORT(gate_backward_bf16)
EMU_EXPORT(cond_grad_sum_f32)
EMU_EXPORT(cond_grad_sum_bf16_f32)
