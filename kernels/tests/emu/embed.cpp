// The embedding family (kernels/cuda/embed.cu) on the CPU emulator.
#include "cuda_emu.h"
#include "../../cuda/embed.cu"

EMU_EXPORT(embedding_forward_f32)
EMU_EXPORT(embedding_forward_bf16)
EMU_EXPORT(embedding_backward_f32)
EMU_EXPORT(embedding_backward_bf16)
EMU_EXPORT(embedding_backward_f32_bf16)
EMU_EXPORT(patchify_forward_f32)
EMU_EXPORT(patchify_forward_bf16)
EMU_EXPORT(patchify_backward_f32)
EMU_EXPORT(patchify_backward_bf16)
EMU_EXPORT(unpatchify_forward_f32)
EMU_EXPORT(unpatchify_forward_bf16)
EMU_EXPORT(unpatchify_backward_f32)
EMU_EXPORT(unpatchify_backward_bf16)
EMU_EXPORT(timestep_embedding_forward_f32)
EMU_EXPORT(timestep_embedding_forward_bf16)
EMU_EXPORT(timestep_embedding_backward_f32)
EMU_EXPORT(timestep_embedding_backward_bf16)
