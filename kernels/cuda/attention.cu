// Scaled dot-product attention of weft's CUDA backend, the semantics of
// kernels/src/cpu/attention.rs: q (B, TQ, NH, HD), k and v (B, TK, NKV, HD), out like q, lse
// (B, NH, TQ) in f32; query head h reads kv head h / (NH / NKV); with `causal`, query i sees key
// j iff k_start + j <= q_start + i; a row that sees no key gets out = 0, lse = -inf. Scores are
// scale * (q . k); probabilities exp(score - lse).
//
// Forward is fused (FlashAttention): each block keeps a running max, sum and output per query row
// over tiles of keys in shared memory, never a TQ x TK matrix. Backward recomputes the
// probabilities from q, k and lse in three launches, each output element owned by one thread
// and summed in a fixed order (no atomics, the same bits every run):
//   1. attention_backward_delta: delta (B, NH, TQ) f32 = rowsum(dout * out), a workspace the
//      host allocates;
//   2. attention_backward_dkdv: per key block, dk and dv summed over every query tile of every
//      query head of the group, heads in increasing order;
//   3. attention_backward_dq: per query block, dq summed over the key tiles.
// attention_merge folds a partial result over other keys into a running one (ring attention).
//
// Kernel arguments: the CPU op's buffers in its order (written first), then the sizes
// b, tq, tk, nh, nkv, hd, causal (0 or 1), q_start, k_start as u64, then the f32 scale.
// Buffers are 16-byte aligned (bf16 kernels copy 16-byte pieces with cp.async).
//
// Head dims: f32 kernels take any 1 <= HD <= 128 (plain FMA, tiles in shared memory, at most
// 48 KiB of it). bf16 kernels run on tensor cores (mma.sync m16n8k16, bf16 operands, f32
// accumulation) and take HD in {16, 32, 48, 64, 80, 96, 112, 128}; for any other HD they write
// nothing (the host refuses it first). bf16 rounding: the probabilities P (and dS in backward)
// are rounded to bf16 to be mma operands, as FlashAttention does; sums, max and lse stay f32.
//
// The file is the module; its kernels live in three headers it includes:
// attention_common.cuh (the sizes and masking every kernel shares), attention_f32.cuh (the f32
// kernels) and attention_tc.cuh (the bf16 tensor-core kernels). The delta and merge kernels,
// small and dtype-generic, are below.

#include "prelude.cuh"
#include "attention_common.cuh"
#include "attention_f32.cuh"
#include "attention_tc.cuh"

// ---- attention_backward_delta: delta = rowsum(dout * out) -------------------------------------

// delta (B, NH, TQ) f32; dout, out (B, TQ, NH, HD). One warp per row, lanes over HD, a warp sum.
template <class T>
__device__ __forceinline__ void delta_rows(float* delta, const T* dout, const T* out, u64 b,
                                           u64 tq, u64 nh, u64 hd) {
    const u64 row = grid_index() / 32;  // (b, h, t) in delta's order
    const u32 lane = threadIdx.x & 31;
    if (row >= b * nh * tq) return;  // whole warps leave together (blocks are whole warps)
    const u64 t = row % tq, bh = row / tq, h = bh % nh, bi = bh / nh;
    const u64 at = ((bi * tq + t) * nh + h) * hd;
    float s = 0.0f;
    for (u64 d = lane; d < hd; d += 32) s += load_f32(dout, at + d) * load_f32(out, at + d);
    s = warp_sum(s);
    if (lane == 0) delta[row] = s;
}

// Launch: grid (ceil(B * NH * TQ / 8)), block (256), no shared memory.
extern "C" __global__ void attention_backward_delta_f32(float* delta, const float* dout,
                                                        const float* out, u64 b, u64 tq, u64 nh,
                                                        u64 hd) {
    delta_rows(delta, dout, out, b, tq, nh, hd);
}

// Launch: grid (ceil(B * NH * TQ / 8)), block (256), no shared memory.
extern "C" __global__ void attention_backward_delta_bf16(float* delta, const bf16* dout,
                                                         const bf16* out, u64 b, u64 tq, u64 nh,
                                                         u64 hd) {
    delta_rows(delta, dout, out, b, tq, nh, hd);
}

// ---- attention_merge --------------------------------------------------------------------------

// out, part (B, TQ, NH, HD); lse, part_lse (B, NH, TQ) f32. One warp per (b, t, h) row: every
// lane reads both log-sum-exps, then lane 0 writes the merged one after the warp has read.
template <class T>
__device__ __forceinline__ void merge_rows(T* out, float* lse, const T* part, const float* plse,
                                           u64 b, u64 tq, u64 nh, u64 hd) {
    const u64 row = grid_index() / 32;  // (b, t, h) in out's order
    const u32 lane = threadIdx.x & 31;
    if (row >= b * tq * nh) return;
    const u64 h = row % nh, bt = row / nh, t = bt % tq, bi = bt / tq;
    const u64 li = (bi * nh + h) * tq + t;
    const float a = lse[li], c = plse[li];
    __syncwarp();
    const float m = fmaxf(a, c);
    if (m == neg_inf()) return;
    const float ea = expf(a - m), ec = expf(c - m);
    const float s = ea + ec;
    const float wa = ea / s, wc = ec / s;
    for (u64 d = lane; d < hd; d += 32) {
        const u64 i = row * hd + d;
        store_f32(out, i, load_f32(out, i) * wa + load_f32(part, i) * wc);
    }
    if (lane == 0) lse[li] = m + logf(s);
}

// Launch: grid (ceil(B * TQ * NH / 8)), block (256), no shared memory.
extern "C" __global__ void attention_merge_f32(float* out, float* lse, const float* part,
                                               const float* part_lse, u64 b, u64 tq, u64 nh,
                                               u64 hd) {
    merge_rows(out, lse, part, part_lse, b, tq, nh, hd);
}

// Launch: grid (ceil(B * TQ * NH / 8)), block (256), no shared memory.
extern "C" __global__ void attention_merge_bf16(bf16* out, float* lse, const bf16* part,
                                                const float* part_lse, u64 b, u64 tq, u64 nh,
                                                u64 hd) {
    merge_rows(out, lse, part, part_lse, b, tq, nh, hd);
}


