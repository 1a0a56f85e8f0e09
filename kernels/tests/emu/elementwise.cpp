// The elementwise family (kernels/cuda/elementwise.cu) on the CPU emulator.
#include "cuda_emu.h"
#include "../../cuda/elementwise.cu"

EMU_EXPORT(add_f32)
EMU_EXPORT(add_bf16)
EMU_EXPORT(accumulate_f32)
EMU_EXPORT(accumulate_bf16)
EMU_EXPORT(accumulate_f32_bf16)
EMU_EXPORT(fill_f32)
EMU_EXPORT(fill_bf16)
EMU_EXPORT(scale_f32)
EMU_EXPORT(scale_bf16)
EMU_EXPORT(cast_f32_bf16)
EMU_EXPORT(cast_bf16_f32)
EMU_EXPORT(bias_add_f32)
