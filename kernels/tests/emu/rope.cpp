// The rope family (kernels/cuda/rope.cu) on the CPU emulator.
#include "cuda_emu.h"
#include "../../cuda/rope.cu"

EMU_EXPORT(rope_forward_f32)
EMU_EXPORT(rope_forward_bf16)
EMU_EXPORT(rope_backward_f32)
EMU_EXPORT(rope_backward_bf16)
