// The attention family (kernels/cuda/attention.cu) on the CPU emulator.
#include "cuda_emu.h"
#include "../../cuda/attention.cu"

EMU_EXPORT(attention_forward_f32)
EMU_EXPORT(attention_forward_bf16)
EMU_EXPORT(attention_backward_delta_f32)
EMU_EXPORT(attention_backward_delta_bf16)
EMU_EXPORT(attention_backward_dq_f32)
EMU_EXPORT(attention_backward_dq_bf16)
EMU_EXPORT(attention_backward_dkdv_f32)
EMU_EXPORT(attention_backward_dkdv_bf16)
EMU_EXPORT(attention_merge_f32)
EMU_EXPORT(attention_merge_bf16)
