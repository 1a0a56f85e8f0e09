// Rotary position embedding of weft's CUDA backend (1-D and 3-D differ only in their angle
// table), the maths of kernels/src/cpu/rope.rs: on (B, T, H, HD) activations, each head's pair
// (x[i], x[i + HD/2]) ("rotate half") turns by token t's angle i, cos/sin tables (T, HD/2).
// The backward applies the inverse rotation to dout.
//
// Symbols: <op>_f32 and <op>_bf16 by the activation dtype (`inp`/`out`, `dout`/`dinp`); the
// tables are f32 in both, as the op contract fixes them (statistics role).
// Launch (every kernel here): grid (ceil(B·T·H·HD/2 / 256)), block (256), no shared memory, one
// thread per pair, which reads both elements before writing either (so `out` may be `inp`).

#include "prelude.cuh"

// o1 = x1·cos − x2·(sign·sin), o2 = x2·cos + x1·(sign·sin)
template <class T>
__device__ __forceinline__ void rope_apply(T* out, const T* inp, const float* cos, const float* sin,
                                           u64 b, u64 t, u64 h, u64 hd, float sign) {
    const u64 half = hd / 2;
    const u64 p = grid_index();
    if (p >= b * t * h * half) return;
    const u64 token = p / (h * half), in_token = p - token * (h * half);
    const u64 head = in_token / half, i = in_token - head * half;
    const u64 at = token * h * hd + head * hd + i;
    const u64 angle = (token % t) * half + i;
    const float c = cos[angle], si = sign * sin[angle];
    const float x1 = load_f32(inp, at), x2 = load_f32(inp, at + half);
    store_f32(out, at, x1 * c - x2 * si);
    store_f32(out, at + half, x2 * c + x1 * si);
}

#define WEFT_ROPE(T, suffix)                                                                      \
    extern "C" __global__ void rope_forward_##suffix(T* out, const T* inp, const float* cos,      \
                                                     const float* sin, u64 b, u64 t, u64 h,       \
                                                     u64 hd) {                                    \
        rope_apply(out, inp, cos, sin, b, t, h, hd, 1.0f);                                        \
    }                                                                                             \
    extern "C" __global__ void rope_backward_##suffix(T* dinp, const T* dout, const float* cos,   \
                                                      const float* sin, u64 b, u64 t, u64 h,      \
                                                      u64 hd) {                                   \
        rope_apply(dinp, dout, cos, sin, b, t, h, hd, -1.0f);                                     \
    }

// rope_forward_{f32,bf16}(out, inp, cos, sin, b, t, h, hd)
// rope_backward_{f32,bf16}(dinp, dout, cos, sin, b, t, h, hd)
WEFT_ROPE(float, f32)
WEFT_ROPE(bf16, bf16)
