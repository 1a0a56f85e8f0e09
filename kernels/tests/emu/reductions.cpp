// The reduction probes (reductions.cu) on the CPU emulator.
#include "cuda_emu.h"
#include "reductions.cu"

EMU_EXPORT(reduce_probe)
EMU_EXPORT(tree_sum)
