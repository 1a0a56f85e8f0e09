// The tensor-core probe (fragments.cu) on the CPU emulator.
#include "cuda_emu.h"
#include "fragments.cu"

EMU_EXPORT(mma_probe)
