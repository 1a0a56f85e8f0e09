// Layout moves of weft's CUDA backend, as kernels/src/cpu/shape.rs: `swap_axes` turns x (A, B,
// inner) into out (B, A, inner), out[j][i][:] = x[i][j][:] (its inverse swaps A and B back).
// Copies: every dtype of one element size moves the same bits.
// Launch: grid (ceil(A·B·inner / 256)), block (256), no shared memory, one thread per element of
// `out` (writes coalesced; reads coalesced along `inner`).

#include "prelude.cuh"

template <class T>
__device__ __forceinline__ void swap(T* out, const T* x, u64 a, u64 b, u64 inner) {
    const u64 o = grid_index();
    if (o >= a * b * inner) return;
    const u64 row = o / inner, k = o - row * inner;  // row = j·A + i of out
    const u64 j = row / a, i = row - j * a;
    out[o] = x[(i * b + j) * inner + k];
}

// swap_axes_{f32,bf16}(out, x, a, b, inner)
extern "C" __global__ void swap_axes_f32(float* out, const float* x, u64 a, u64 b, u64 inner) {
    swap(out, x, a, b, inner);
}

extern "C" __global__ void swap_axes_bf16(bf16* out, const bf16* x, u64 a, u64 b, u64 inner) {
    swap(out, x, a, b, inner);
}
