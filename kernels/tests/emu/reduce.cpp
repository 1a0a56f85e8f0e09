// The column reductions (kernels/cuda/reduce.cu) on the CPU emulator.
#include "cuda_emu.h"
#include "../../cuda/reduce.cu"

EMU_EXPORT(bias_grad_partial_f32)
EMU_EXPORT(bias_grad_partial_bf16)
EMU_EXPORT(bias_grad_finish_f32)
EMU_EXPORT(bias_grad_finish_bf16)
