// What every attention kernel of kernels/cuda/attention.cu shares: the problem's sizes and
// masking (`Attn`), the kernels' size arguments, the block's dynamic shared memory.
#pragma once

#include "prelude.cuh"

// Unrolled loops (register arrays indexed by the loop variable); the emulator runs them as
// written.
#ifdef WEFT_EMU
#define UNROLL
#else
#define UNROLL _Pragma("unroll")
#endif

// ---- shared pieces ----------------------------------------------------------------------------

// The problem's sizes and masking, as the kernels receive them.
struct Attn {
    u64 b, tq, tk, nh, nkv, hd, causal, q_start, k_start;
    float scale;

    __device__ __forceinline__ u64 q_at(u64 bi, u64 t, u64 h) const {
        return ((bi * tq + t) * nh + h) * hd;
    }
    __device__ __forceinline__ u64 kv_at(u64 bi, u64 t, u64 h) const {
        return ((bi * tk + t) * nkv + h) * hd;
    }
    __device__ __forceinline__ u64 lse_at(u64 bi, u64 h, u64 t) const {
        return (bi * nh + h) * tq + t;
    }
    // Query qi sees key kj (both in range).
    __device__ __forceinline__ bool visible(u64 qi, u64 kj) const {
        return kj < tk && qi < tq && (!causal || k_start + kj <= q_start + qi);
    }
    // Keys 0..key_end(qi) can be visible to query qi.
    __device__ __forceinline__ u64 key_end(u64 qi) const {
        if (!causal) return tk;
        const u64 e = q_start + qi + 1;
        const u64 end = e > k_start ? e - k_start : 0;
        return end < tk ? end : tk;
    }
    __device__ __forceinline__ u64 group() const { return nh / nkv; }
};

#define ATTN_SIZES u64 b, u64 tq, u64 tk, u64 nh, u64 nkv, u64 hd, u64 causal, u64 q_start, u64 k_start
#define ATTN_DIMS Attn{b, tq, tk, nh, nkv, hd, causal, q_start, k_start, scale}

// The block's dynamic shared memory, declared once for every kernel of the file (one linkage).
__device__ __forceinline__ unsigned char* shared_bytes() {
    WEFT_DYNAMIC_SHARED(unsigned char, p);
    return p;
}

__device__ __forceinline__ float neg_inf() { return -__int_as_float(0x7f800000); }
