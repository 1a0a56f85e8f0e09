// AdaLN modulation and gated residuals of weft's CUDA backend, the maths of
// kernels/src/cpu/modulation.rs in its order, on a (B, T, C) stream with conditioning rows of C
// values `cond_stride` apart (C for separate (B, C) buffers, 6C for the chunks of a fused AdaLN
// projection: the host passes the chunk's first element).
//
// Symbols: <op>_f32 and <op>_bf16 by the dtype of every buffer the op takes (the conditioning
// gradients are activations of the op's dtype too); the partial sums are f32.
//
// Forward kernels: grid (ceil(B·T·C / 256)), block (256), no shared memory, one thread per
// stream element.
//
// Backward (dx or dy elementwise, the conditioning gradients summed over T, deterministic, no
// atomics) takes two kernels:
// 1. modulate_backward_* / gate_backward_*: grid (ceil(C / K), P, B), block (K) (256; any
//    multiple of 32), no shared memory. Block (x, p, b) handles the columns
//    x·K .. x·K + K − 1 of sample b over the tokens p·L .. p·L + L − 1, L = ceil(T / P), each
//    thread summing its column in token order into `part[(b·P + p)·C + column]` (f32 scratch of
//    B·P·C floats per conditioning gradient). P ≥ 1 is free (more chunks, more blocks); with
//    P = 1 the sums are the CPU's, in its order.
// 2. cond_grad_sum_f32 / cond_grad_sum_bf16_f32, once per conditioning gradient: grid
//    (ceil(C / 256), B), block (256), no shared memory: dcond[b·cond_stride + i] (overwritten,
//    as the CPU op does) = Σ_{p<P} part[(b·P + p)·C + i], summed in order p = 0, 1, ... and
//    rounded once. Entries of `dcond` between the rows are left alone.

#include "prelude.cuh"

// out = x · (1 + scale) + shift
template <class T>
__device__ __forceinline__ void modulate_fwd(T* out, const T* x, const T* shift, const T* scale,
                                             u64 b, u64 t, u64 c, u64 cond_stride) {
    const u64 i = grid_index();
    if (i >= b * t * c) return;
    const u64 col = i % c, k = i / (t * c) * cond_stride + col;
    store_f32(out, i, load_f32(x, i) * (1.0f + load_f32(scale, k)) + load_f32(shift, k));
}

// residual += gate · y
template <class T>
__device__ __forceinline__ void gate_fwd(T* residual, const T* gate, const T* y, u64 b, u64 t,
                                         u64 c, u64 cond_stride) {
    const u64 i = grid_index();
    if (i >= b * t * c) return;
    const u64 col = i % c, k = i / (t * c) * cond_stride + col;
    store_f32(residual, i, load_f32(residual, i) + load_f32(gate, k) * load_f32(y, i));
}

// The block's column, sample and token range of a backward kernel (false: no column).
struct Chunk {
    u64 col, sample, begin, end;
};

__device__ __forceinline__ bool chunk(Chunk& ch, u64 t, u64 c) {
    ch.col = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    ch.sample = blockIdx.z;
    const u64 len = (t + gridDim.y - 1) / gridDim.y;
    ch.begin = min(t, (u64)blockIdx.y * len);
    ch.end = min(t, ch.begin + len);
    return ch.col < c;
}

// The slot of this block's partial sum of its column.
__device__ __forceinline__ u64 part_index(const Chunk& ch, u64 c) {
    return ((u64)ch.sample * gridDim.y + blockIdx.y) * c + ch.col;
}

// dx = dout · (1 + scale); partials of Σ_t dout (dshift) and Σ_t dout · x (dscale).
template <class T>
__device__ __forceinline__ void modulate_bwd(T* dx, float* dshift_part, float* dscale_part,
                                             const T* dout, const T* x, const T* scale, u64 b,
                                             u64 t, u64 c, u64 cond_stride) {
    Chunk ch;
    if (!chunk(ch, t, c) || ch.sample >= b) return;
    const float s1 = 1.0f + load_f32(scale, ch.sample * cond_stride + ch.col);
    float dsh = 0.0f, dsc = 0.0f;
    for (u64 tok = ch.begin; tok < ch.end; ++tok) {
        const u64 i = (ch.sample * t + tok) * c + ch.col;
        const float dy = load_f32(dout, i);
        store_f32(dx, i, dy * s1);
        dsh += dy;
        dsc += dy * load_f32(x, i);
    }
    dshift_part[part_index(ch, c)] = dsh;
    dscale_part[part_index(ch, c)] = dsc;
}

// dy = dout · gate; partials of Σ_t dout · y (dgate).
template <class T>
__device__ __forceinline__ void gate_bwd(T* dy, float* dgate_part, const T* dout, const T* gate,
                                         const T* y, u64 b, u64 t, u64 c, u64 cond_stride) {
    Chunk ch;
    if (!chunk(ch, t, c) || ch.sample >= b) return;
    const float g = load_f32(gate, ch.sample * cond_stride + ch.col);
    float dg = 0.0f;
    for (u64 tok = ch.begin; tok < ch.end; ++tok) {
        const u64 i = (ch.sample * t + tok) * c + ch.col;
        const float go = load_f32(dout, i);
        store_f32(dy, i, go * g);
        dg += go * load_f32(y, i);
    }
    dgate_part[part_index(ch, c)] = dg;
}

// dcond[b·cond_stride + i] = Σ_{p<parts} partials[(b·parts + p)·c + i], in order.
template <class T>
__device__ __forceinline__ void cond_grad_sum(T* dcond, const float* partials, u64 parts, u64 b,
                                              u64 c, u64 cond_stride) {
    const u64 i = grid_index(), sample = blockIdx.y;
    if (i >= c || sample >= b) return;
    float s = 0.0f;
    for (u64 p = 0; p < parts; ++p) s += partials[(sample * parts + p) * c + i];
    store_f32(dcond, sample * cond_stride + i, s);
}

#define WEFT_MODULATION(T, suffix)                                                                  \
    extern "C" __global__ void modulate_forward_##suffix(T* out, const T* x, const T* shift,       \
                                                         const T* scale, u64 b, u64 t, u64 c,      \
                                                         u64 cond_stride) {                        \
        modulate_fwd(out, x, shift, scale, b, t, c, cond_stride);                                  \
    }                                                                                              \
    extern "C" __global__ void modulate_backward_##suffix(                                        \
        T* dx, float* dshift_part, float* dscale_part, const T* dout, const T* x, const T* scale, \
        u64 b, u64 t, u64 c, u64 cond_stride) {                                                    \
        modulate_bwd(dx, dshift_part, dscale_part, dout, x, scale, b, t, c, cond_stride);          \
    }                                                                                              \
    extern "C" __global__ void gate_forward_##suffix(T* residual, const T* gate, const T* y,       \
                                                     u64 b, u64 t, u64 c, u64 cond_stride) {       \
        gate_fwd(residual, gate, y, b, t, c, cond_stride);                                         \
    }                                                                                              \
    extern "C" __global__ void gate_backward_##suffix(T* dy, float* dgate_part, const T* dout,     \
                                                      const T* gate, const T* y, u64 b, u64 t,     \
                                                      u64 c, u64 cond_stride) {                    \
        gate_bwd(dy, dgate_part, dout, gate, y, b, t, c, cond_stride);                             \
    }

// modulate_forward_{f32,bf16}(out, x, shift, scale, b, t, c, cond_stride)
// modulate_backward_{f32,bf16}(dx, dshift_part, dscale_part, dout, x, scale, b, t, c, cond_stride)
// gate_forward_{f32,bf16}(residual, gate, y, b, t, c, cond_stride)
// gate_backward_{f32,bf16}(dy, dgate_part, dout, gate, y, b, t, c, cond_stride)
WEFT_MODULATION(float, f32)
WEFT_MODULATION(bf16, bf16)

// The second kernel of a conditioning gradient (dshift, dscale, dgate) of an f32 or a bf16 call.
extern "C" __global__ void cond_grad_sum_f32(float* dcond, const float* partials, u64 parts,
                                             u64 b, u64 c, u64 cond_stride) {
    cond_grad_sum(dcond, partials, parts, b, c, cond_stride);
}

extern "C" __global__ void cond_grad_sum_bf16_f32(bf16* dcond, const float* partials, u64 parts,
                                                  u64 b, u64 c, u64 cond_stride) {
    cond_grad_sum(dcond, partials, parts, b, c, cond_stride);
}
