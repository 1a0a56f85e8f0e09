// Probes of the prelude's reductions, compiled by the emulator tests and by NVRTC.
// Launch: grid (any), block (any multiple of 32, at most 1024), no shared memory; for tree_sum
// a power of two and blockDim.x * 4 bytes of dynamic shared memory.

#include "prelude.cuh"  // kernels/cuda, on the include path

// Every thread writes what it got from each reduction over its warp and over its block; x is
// read at grid_index() (zero / -inf past n). Two block sums in a row check the slots' reuse.
extern "C" __global__ void reduce_probe(float* warp_sums, float* warp_maxes, float* block_sums,
                                        float* block_sums2, float* block_maxes, const float* x,
                                        u64 n) {
    const u64 i = grid_index();
    const float v = i < n ? x[i] : 0.0f;
    const float m = i < n ? x[i] : -__int_as_float(0x7f800000);
    warp_sums[i] = warp_sum(v);
    warp_maxes[i] = warp_max(m);
    block_sums[i] = block_sum(v);
    block_sums2[i] = block_sum(2.0f * v);
    block_maxes[i] = block_max(m);
}

// sums[b] = the sum of block b's slice of x, halving the active threads each step in shared
// memory. With WEFT_DROP_BARRIER the barrier between steps is missing: a data race, which the
// ThreadSanitizer run of the emulator must report.
extern "C" __global__ void tree_sum(float* sums, const float* x, u64 n) {
    WEFT_DYNAMIC_SHARED(float, buf);
    const u32 t = threadIdx.x;
    const u64 i = grid_index();
    buf[t] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (u32 s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) buf[t] += buf[t + s];
#ifndef WEFT_DROP_BARRIER
        __syncthreads();
#endif
    }
    if (t == 0) sums[blockIdx.x] = buf[0];
}
