// The activation family (kernels/cuda/activation.cu) on the CPU emulator.
#include "cuda_emu.h"
#include "../../cuda/activation.cu"

EMU_EXPORT(gelu_forward_f32)
EMU_EXPORT(gelu_forward_bf16)
EMU_EXPORT(gelu_backward_f32)
EMU_EXPORT(gelu_backward_bf16)
EMU_EXPORT(silu_forward_f32)
EMU_EXPORT(silu_forward_bf16)
EMU_EXPORT(silu_backward_f32)
EMU_EXPORT(silu_backward_bf16)
EMU_EXPORT(swiglu_forward_f32)
EMU_EXPORT(swiglu_forward_bf16)
EMU_EXPORT(swiglu_backward_f32)
EMU_EXPORT(swiglu_backward_bf16)
