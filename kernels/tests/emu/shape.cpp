// The shape family (kernels/cuda/shape.cu) on the CPU emulator.
#include "cuda_emu.h"
#include "../../cuda/shape.cu"

EMU_EXPORT(swap_axes_f32)
EMU_EXPORT(swap_axes_bf16)
