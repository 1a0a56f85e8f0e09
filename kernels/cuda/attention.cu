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

__device__ __forceinline__ float load(const float* p, u64 i) { return p[i]; }
__device__ __forceinline__ float load(const bf16* p, u64 i) { return bf16_to_f32(p[i]); }
__device__ __forceinline__ void store(float* p, u64 i, float v) { p[i] = v; }
__device__ __forceinline__ void store(bf16* p, u64 i, float v) { p[i] = f32_to_bf16_rne(v); }

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
    for (u64 d = lane; d < hd; d += 32) s += load(dout, at + d) * load(out, at + d);
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
        store(out, i, load(out, i) * wa + load(part, i) * wc);
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


// ---- f32: tiles in shared memory, plain FMA ---------------------------------------------------
// Each kernel holds 32 rows of one operand in a tile that lanes read across (lane = row, with
// the same column) and along (lane = column). Such a tile is stored swizzled: element (r, d) at
// r * hds + swz(r, d), the low five bits of d XORed with r, so both reads hit 32 distinct banks
// without padding. Row strides: hdp = HD rounded up to 4 (float4 rows read by a whole warp at
// once), hds = HD rounded up to 32 (swizzled rows). Padding columns hold zeros.

__device__ __forceinline__ u32 swz(u32 r, u32 d) { return (d & ~31u) | ((d ^ r) & 31u); }

__device__ __forceinline__ u32 min_u32(u64 a, u32 b) { return a < b ? (u32)a : b; }

// Rows 0..rows of a tile (row stride `stride`): rows 0..nr from src (global row stride rs),
// columns 0..hd; zeros elsewhere. Every thread of the block takes part.
template <bool SWIZZLED>
__device__ __forceinline__ void fill_f32(float* tile, u32 rows, u32 stride, const float* src,
                                         u64 rs, u32 nr, u32 hd) {
    for (u32 x = threadIdx.x; x < rows * stride; x += blockDim.x) {
        const u32 r = x / stride, d = x - r * stride;
        const float v = (r < nr && d < hd) ? src[r * rs + d] : 0.0f;
        tile[r * stride + (SWIZZLED ? swz(r, d) : d)] = v;
    }
}

__device__ __forceinline__ float dot4(float4 a, float x, float y, float z, float w, float acc) {
    return fmaf(a.w, w, fmaf(a.z, z, fmaf(a.y, y, fmaf(a.x, x, acc))));
}

// Launch: grid (ceil(TQ / 32), NH, B), block (128), dynamic shared memory
// 4 * 32 * (2 * hdp + hds) bytes (48 KiB at HD = 128). Each warp owns 8 query rows; per tile of
// 32 keys, lane j scores key j against the warp's rows and writes P over the K tile, then lane d
// accumulates P V in column d.
extern "C" __global__ void __launch_bounds__(128)
    attention_forward_f32(float* out, float* lse, const float* q, const float* k, const float* v,
                          ATTN_SIZES, float scale) {
    constexpr u32 R = 8;
    const Attn a = ATTN_DIMS;
    const u64 bi = blockIdx.z, h = blockIdx.y, q0 = (u64)blockIdx.x * 32;
    if (q0 >= tq || hd == 0 || hd > 128) return;
    float* sm = reinterpret_cast<float*>(shared_bytes());
    const u32 hdp = (u32)(hd + 3) & ~3u, hds = (u32)(hd + 31) & ~31u, hd32 = (u32)hd;
    float* qs = sm;              // (32, hdp)
    float* ks = qs + 32 * hdp;   // (32, hds), swizzled
    float* vs = ks + 32 * hds;   // (32, hdp)
    const u64 kvh = h / a.group();
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 nq = min_u32(tq - q0, 32);
    fill_f32<false>(qs, 32, hdp, q + a.q_at(bi, q0, h), nh * hd, nq, hd32);

    float m[R], l[R], acc[R][4];
UNROLL
    for (u32 r = 0; r < R; ++r) {
        m[r] = neg_inf();
        l[r] = 0.0f;
UNROLL
        for (u32 e = 0; e < 4; ++e) acc[r][e] = 0.0f;
    }
    const u64 kend = a.key_end(q0 + nq - 1);
    for (u64 k0 = 0; k0 < kend; k0 += 32) {
        const u32 nk = min_u32(kend - k0, 32);
        __syncthreads();  // the previous tile's readers are done
        fill_f32<true>(ks, 32, hds, k + a.kv_at(bi, k0, kvh), nkv * hd, nk, hd32);
        fill_f32<false>(vs, 32, hdp, v + a.kv_at(bi, k0, kvh), nkv * hd, nk, hd32);
        __syncthreads();
        float s[R];
UNROLL
        for (u32 r = 0; r < R; ++r) s[r] = 0.0f;
        const float* kr = ks + lane * hds;
        for (u32 d = 0; d < hdp; d += 4) {
            const float x = kr[swz(lane, d)], y = kr[swz(lane, d + 1)];
            const float z = kr[swz(lane, d + 2)], w = kr[swz(lane, d + 3)];
UNROLL
            for (u32 r = 0; r < R; ++r) {
                const float4 qv = *reinterpret_cast<const float4*>(qs + (warp * R + r) * hdp + d);
                s[r] = dot4(qv, x, y, z, w, s[r]);
            }
        }
        __syncthreads();  // every warp is done with K: its tile holds P (32, 32) now
        float* ps = ks;
        // The online softmax, row by row; a row with no visible key in this tile is unchanged.
UNROLL
        for (u32 r = 0; r < R; ++r) {
            const u64 qi = q0 + warp * R + r;
            const float x = (lane < nk && a.visible(qi, k0 + lane)) ? scale * s[r] : neg_inf();
            const float mx = warp_max(x);
            float p = 0.0f;
            if (mx != neg_inf()) {
                const float mn = fmaxf(m[r], mx), corr = expf(m[r] - mn);
                p = expf(x - mn);
                l[r] = l[r] * corr + warp_sum(p);
                m[r] = mn;
UNROLL
                for (u32 e = 0; e < 4; ++e) acc[r][e] *= corr;
            }
            ps[(warp * R + r) * 32 + lane] = p;
        }
        __syncwarp();
        for (u32 j = 0; j < nk; ++j) {
            const float* vr = vs + j * hdp;
UNROLL
            for (u32 r = 0; r < R; ++r) {
                const float pj = ps[(warp * R + r) * 32 + j];
UNROLL
                for (u32 e = 0; e < 4; ++e) {
                    if (32 * e + lane < hd32) acc[r][e] = fmaf(pj, vr[32 * e + lane], acc[r][e]);
                }
            }
        }
    }
UNROLL
    for (u32 r = 0; r < R; ++r) {
        const u64 qi = q0 + warp * R + r;
        if (qi >= tq) continue;
        const bool any = l[r] > 0.0f;
        const float inv = any ? 1.0f / l[r] : 0.0f;
        float* o = out + a.q_at(bi, qi, h);
UNROLL
        for (u32 e = 0; e < 4; ++e) {
            if (32 * e + lane < hd32) o[32 * e + lane] = any ? acc[r][e] * inv : 0.0f;
        }
        if (lane == 0) lse[a.lse_at(bi, h, qi)] = any ? m[r] + logf(l[r]) : neg_inf();
    }
}

// Launch: grid (ceil(TQ / 16), NH, B), block (128), dynamic shared memory
// 4 * (32 * hdp + 64 * hds) bytes (48 KiB at HD = 128). Each warp owns 4 query rows; per tile of
// 32 keys, lane j computes P and dS for key j and writes dS over the V tile, then lane d
// accumulates dS K in column d.
extern "C" __global__ void __launch_bounds__(128)
    attention_backward_dq_f32(float* dq, const float* dout, const float* q, const float* k,
                              const float* v, const float* lse, const float* delta, ATTN_SIZES,
                              float scale) {
    constexpr u32 R = 4;
    const Attn a = ATTN_DIMS;
    const u64 bi = blockIdx.z, h = blockIdx.y, q0 = (u64)blockIdx.x * 16;
    if (q0 >= tq || hd == 0 || hd > 128) return;
    float* sm = reinterpret_cast<float*>(shared_bytes());
    const u32 hdp = (u32)(hd + 3) & ~3u, hds = (u32)(hd + 31) & ~31u, hd32 = (u32)hd;
    float* qs = sm;              // (16, hdp)
    float* os = qs + 16 * hdp;   // (16, hdp): dout
    float* ks = os + 16 * hdp;   // (32, hds), swizzled
    float* vs = ks + 32 * hds;   // (32, hds), swizzled
    const u64 kvh = h / a.group();
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 nq = min_u32(tq - q0, 16);
    fill_f32<false>(qs, 16, hdp, q + a.q_at(bi, q0, h), nh * hd, nq, hd32);
    fill_f32<false>(os, 16, hdp, dout + a.q_at(bi, q0, h), nh * hd, nq, hd32);

    float lr[R], dr[R], acc[R][4];
UNROLL
    for (u32 r = 0; r < R; ++r) {
        const u64 qi = q0 + warp * R + r;
        lr[r] = qi < tq ? lse[a.lse_at(bi, h, qi)] : neg_inf();
        dr[r] = qi < tq ? delta[a.lse_at(bi, h, qi)] : 0.0f;
UNROLL
        for (u32 e = 0; e < 4; ++e) acc[r][e] = 0.0f;
    }
    const u64 kend = a.key_end(q0 + nq - 1);
    for (u64 k0 = 0; k0 < kend; k0 += 32) {
        const u32 nk = min_u32(kend - k0, 32);
        __syncthreads();
        fill_f32<true>(ks, 32, hds, k + a.kv_at(bi, k0, kvh), nkv * hd, nk, hd32);
        fill_f32<true>(vs, 32, hds, v + a.kv_at(bi, k0, kvh), nkv * hd, nk, hd32);
        __syncthreads();
        float s[R], dp[R];
UNROLL
        for (u32 r = 0; r < R; ++r) s[r] = dp[r] = 0.0f;
        const float* kr = ks + lane * hds;
        const float* vr = vs + lane * hds;
        for (u32 d = 0; d < hdp; d += 4) {
            const float kx = kr[swz(lane, d)], ky = kr[swz(lane, d + 1)];
            const float kz = kr[swz(lane, d + 2)], kw = kr[swz(lane, d + 3)];
            const float vx = vr[swz(lane, d)], vy = vr[swz(lane, d + 1)];
            const float vz = vr[swz(lane, d + 2)], vw = vr[swz(lane, d + 3)];
UNROLL
            for (u32 r = 0; r < R; ++r) {
                const float4 qv = *reinterpret_cast<const float4*>(qs + (warp * R + r) * hdp + d);
                const float4 ov = *reinterpret_cast<const float4*>(os + (warp * R + r) * hdp + d);
                s[r] = dot4(qv, kx, ky, kz, kw, s[r]);
                dp[r] = dot4(ov, vx, vy, vz, vw, dp[r]);
            }
        }
        __syncthreads();  // every warp is done with V: its tile holds dS (16, 32) now
        float* dss = vs;
UNROLL
        for (u32 r = 0; r < R; ++r) {
            const u64 qi = q0 + warp * R + r;
            const bool ok = lane < nk && lr[r] != neg_inf() && a.visible(qi, k0 + lane);
            const float p = ok ? expf(scale * s[r] - lr[r]) : 0.0f;
            dss[(warp * R + r) * 32 + lane] = ok ? p * (dp[r] - dr[r]) : 0.0f;
        }
        __syncwarp();
        for (u32 j = 0; j < nk; ++j) {
            const float* kj = ks + j * hds;
UNROLL
            for (u32 r = 0; r < R; ++r) {
                const float dsj = dss[(warp * R + r) * 32 + j];
UNROLL
                for (u32 e = 0; e < 4; ++e) {
                    const u32 d = 32 * e + lane;
                    if (d < hd32) acc[r][e] = fmaf(dsj, kj[swz(j, d)], acc[r][e]);
                }
            }
        }
    }
UNROLL
    for (u32 r = 0; r < R; ++r) {
        const u64 qi = q0 + warp * R + r;
        if (qi >= tq) continue;
        float* o = dq + a.q_at(bi, qi, h);
UNROLL
        for (u32 e = 0; e < 4; ++e) {
            if (32 * e + lane < hd32) o[32 * e + lane] = scale * acc[r][e];
        }
    }
}

// Launch: grid (ceil(TK / 8), NKV, B), block (128), dynamic shared memory
// 4 * (16 * hdp + 64 * hds + 512) bytes (42 KiB at HD = 128). Each warp owns 2 keys; per tile of
// 32 queries (of each query head of the group in turn), lane i computes P and dS for query i
// into shared memory, then lane d accumulates Pᵀ dO and dSᵀ Q in column d.
extern "C" __global__ void __launch_bounds__(128)
    attention_backward_dkdv_f32(float* dk, float* dv, const float* dout, const float* q,
                                const float* k, const float* v, const float* lse,
                                const float* delta, ATTN_SIZES, float scale) {
    constexpr u32 R = 2;
    const Attn a = ATTN_DIMS;
    const u64 bi = blockIdx.z, kvh = blockIdx.y, k0 = (u64)blockIdx.x * 8;
    if (k0 >= tk || hd == 0 || hd > 128) return;
    float* sm = reinterpret_cast<float*>(shared_bytes());
    const u32 hdp = (u32)(hd + 3) & ~3u, hds = (u32)(hd + 31) & ~31u, hd32 = (u32)hd;
    float* ks = sm;              // (8, hdp)
    float* vs = ks + 8 * hdp;    // (8, hdp)
    float* qs = vs + 8 * hdp;    // (32, hds), swizzled
    float* os = qs + 32 * hds;   // (32, hds), swizzled: dout
    float* pb = os + 32 * hds;   // (8 keys, 32 queries): P
    float* db = pb + 8 * 32;     // (8 keys, 32 queries): dS
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 nk = min_u32(tk - k0, 8);
    fill_f32<false>(ks, 8, hdp, k + a.kv_at(bi, k0, kvh), nkv * hd, nk, hd32);
    fill_f32<false>(vs, 8, hdp, v + a.kv_at(bi, k0, kvh), nkv * hd, nk, hd32);

    float dka[R][4], dva[R][4];
UNROLL
    for (u32 r = 0; r < R; ++r) {
UNROLL
        for (u32 e = 0; e < 4; ++e) dka[r][e] = dva[r][e] = 0.0f;
    }
    const u64 g = a.group();
    for (u64 h = kvh * g; h < (kvh + 1) * g; ++h) {
        for (u64 q0 = 0; q0 < tq; q0 += 32) {
            const u32 nq = min_u32(tq - q0, 32);
            if (a.key_end(q0 + nq - 1) <= k0) continue;  // no query of the tile sees these keys
            __syncthreads();
            fill_f32<true>(qs, 32, hds, q + a.q_at(bi, q0, h), nh * hd, nq, hd32);
            fill_f32<true>(os, 32, hds, dout + a.q_at(bi, q0, h), nh * hd, nq, hd32);
            __syncthreads();
            const u64 qi = q0 + lane;
            const float li = lane < nq ? lse[a.lse_at(bi, h, qi)] : neg_inf();
            const float di = lane < nq ? delta[a.lse_at(bi, h, qi)] : 0.0f;
            float s[R], dp[R];
UNROLL
            for (u32 r = 0; r < R; ++r) s[r] = dp[r] = 0.0f;
            const float* qr = qs + lane * hds;
            const float* orow = os + lane * hds;
            for (u32 d = 0; d < hdp; d += 4) {
                const float qx = qr[swz(lane, d)], qy = qr[swz(lane, d + 1)];
                const float qz = qr[swz(lane, d + 2)], qw = qr[swz(lane, d + 3)];
                const float ox = orow[swz(lane, d)], oy = orow[swz(lane, d + 1)];
                const float oz = orow[swz(lane, d + 2)], ow = orow[swz(lane, d + 3)];
UNROLL
                for (u32 r = 0; r < R; ++r) {
                    const float4 kv = *reinterpret_cast<const float4*>(ks + (warp * R + r) * hdp + d);
                    const float4 vv = *reinterpret_cast<const float4*>(vs + (warp * R + r) * hdp + d);
                    s[r] = dot4(kv, qx, qy, qz, qw, s[r]);
                    dp[r] = dot4(vv, ox, oy, oz, ow, dp[r]);
                }
            }
UNROLL
            for (u32 r = 0; r < R; ++r) {
                const bool ok = li != neg_inf() && a.visible(qi, k0 + warp * R + r);
                const float p = ok ? expf(scale * s[r] - li) : 0.0f;
                pb[(warp * R + r) * 32 + lane] = p;
                db[(warp * R + r) * 32 + lane] = ok ? p * (dp[r] - di) : 0.0f;
            }
            __syncwarp();
            for (u32 i = 0; i < nq; ++i) {
                const float* qrow = qs + i * hds;
                const float* drow = os + i * hds;
UNROLL
                for (u32 r = 0; r < R; ++r) {
                    const float pi = pb[(warp * R + r) * 32 + i];
                    const float dsi = db[(warp * R + r) * 32 + i];
UNROLL
                    for (u32 e = 0; e < 4; ++e) {
                        const u32 d = 32 * e + lane;
                        if (d < hd32) {
                            dva[r][e] = fmaf(pi, drow[swz(i, d)], dva[r][e]);
                            dka[r][e] = fmaf(dsi, qrow[swz(i, d)], dka[r][e]);
                        }
                    }
                }
            }
        }
    }
UNROLL
    for (u32 r = 0; r < R; ++r) {
        const u64 kj = k0 + warp * R + r;
        if (kj >= tk) continue;
        const u64 at = a.kv_at(bi, kj, kvh);
UNROLL
        for (u32 e = 0; e < 4; ++e) {
            const u32 d = 32 * e + lane;
            if (d < hd32) {
                dk[at + d] = scale * dka[r][e];
                dv[at + d] = dva[r][e];
            }
        }
    }
}

// ---- bf16: tensor cores -----------------------------------------------------------------------
// Tiles of HD bf16 per row in shared memory with a row stride of HD + 8 elements (the 8
// rows an ldmatrix reads fall on distinct banks), filled by cp.async in 16-byte pieces (rows
// past the end are zeroed). Each warp computes 16-row slices with mma.sync m16n8k16; the f32
// accumulator of a score tile, rounded to bf16, is the A operand of the next product (the
// accumulator layout of n-tiles 2i and 2i+1 is the A layout of k-step i).

constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;

// Rows 0..rows of a tile: rows 0..nr copied from src (global row stride rs), the rest zeroed.
// Every thread of the block takes part; the caller commits and waits.
template <int HD>
__device__ __forceinline__ void copy_rows(bf16* tile, u32 rows, const bf16* src, u64 rs, u32 nr) {
    constexpr u32 PIECES = HD / 8;
    for (u32 x = threadIdx.x; x < rows * PIECES; x += blockDim.x) {
        const u32 r = x / PIECES, c = x - r * PIECES;
        bf16* dst = tile + r * (HD + 8) + 8 * c;
        if (r < nr) {
            cp_async_16(dst, src + r * rs + 8 * c);
        } else {
            *reinterpret_cast<uint4*>(dst) = uint4{0u, 0u, 0u, 0u};
        }
    }
}

// The A operand of rows 0..15, columns 0..15 of a row-major tile (stride ld).
__device__ __forceinline__ void frag_a(u32 r[4], const bf16* tile, u32 ld, u32 lane) {
    ldmatrix_x4(r, tile + (lane % 8 + 8 * (lane / 8 % 2)) * ld + 8 * (lane / 16));
}

// B = tileᵀ for two n-tiles: tile rows 0..7 (r[0..1]) and 8..15 (r[2..3]) are B's columns,
// tile columns 0..15 its k.
__device__ __forceinline__ void frag_bt(u32 r[4], const bf16* tile, u32 ld, u32 lane) {
    ldmatrix_x4(r, tile + (lane % 8 + 8 * (lane / 16)) * ld + 8 * (lane / 8 % 2));
}

// B = tile for two n-tiles: tile rows 0..15 are B's k, columns 0..7 (r[0..1]) and 8..15
// (r[2..3]) its columns.
__device__ __forceinline__ void frag_b(u32 r[4], const bf16* tile, u32 ld, u32 lane) {
    ldmatrix_x4_trans(r, tile + (lane % 8 + 8 * (lane / 8 % 2)) * ld + 8 * (lane / 16));
}

// acc += a * b
__device__ __forceinline__ void mma(float acc[4], const u32 a[4], const u32 b[2]) {
    mma_m16n8k16_bf16(acc, a, b, acc);
}

// The A operand of k-step i from accumulator n-tiles 2i and 2i+1, rounded to bf16.
__device__ __forceinline__ void acc_to_a(u32 r[4], const float lo[4], const float hi[4]) {
    r[0] = pack_f32_bf16x2(lo[0], lo[1]);
    r[1] = pack_f32_bf16x2(lo[2], lo[3]);
    r[2] = pack_f32_bf16x2(hi[0], hi[1]);
    r[3] = pack_f32_bf16x2(hi[2], hi[3]);
}

// Stores a 16 x HD accumulator slice (rows row0 + g and row0 + g + 8) times `mul` as bf16.
template <int HD>
__device__ __forceinline__ void store_rows(bf16* dst, u64 rs, const float acc[HD / 8][4],
                                           float mul0, float mul1, bool ok0, bool ok1, u32 lane) {
    const u32 g = lane / 4, t = lane % 4;
UNROLL
    for (u32 n = 0; n < HD / 8; ++n) {
        if (ok0) {
            *reinterpret_cast<u32*>(dst + g * rs + 8 * n + 2 * t) =
                pack_f32_bf16x2(acc[n][0] * mul0, acc[n][1] * mul0);
        }
        if (ok1) {
            *reinterpret_cast<u32*>(dst + (g + 8) * rs + 8 * n + 2 * t) =
                pack_f32_bf16x2(acc[n][2] * mul1, acc[n][3] * mul1);
        }
    }
}

// Forward: 4 warps, 64 query rows (16 per warp, Q held as A fragments), tiles of 64 keys. K and
// V of a tile come in two cp.async groups; the next tile's K loads during this tile's softmax
// and P V, its V during the next scores.
template <int HD>
__device__ __forceinline__ void forward_mma(bf16* out, float* lse, const bf16* q, const bf16* k,
                                            const bf16* v, const Attn a) {
    constexpr u32 LD = HD + 8, BQ = 64, BK = 64, KS = HD / 16, ND = HD / 8;
    const u64 bi = blockIdx.z, h = blockIdx.y, q0 = (u64)blockIdx.x * BQ;
    if (q0 >= a.tq) return;
    bf16* sm = reinterpret_cast<bf16*>(shared_bytes());
    bf16* ks = sm;            // (64, LD)
    bf16* vs = sm + BK * LD;  // (64, LD)
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane / 4, t = lane % 4;
    const u64 kvh = h / a.group();
    const u32 nq = min_u32(a.tq - q0, BQ);

    // Q through the K buffer into registers.
    copy_rows<HD>(ks, BQ, q + a.q_at(bi, q0, h), a.nh * HD, nq);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    u32 qf[KS][4];
UNROLL
    for (u32 i = 0; i < KS; ++i) frag_a(qf[i], ks + 16 * warp * LD + 16 * i, LD, lane);
    __syncthreads();

    const u64 row0 = q0 + 16 * warp;           // the warp's first row
    const u64 qr[2] = {row0 + g, row0 + g + 8};  // this thread's rows
    float o[ND][4], m[2] = {neg_inf(), neg_inf()}, l[2] = {0.0f, 0.0f};
UNROLL
    for (u32 n = 0; n < ND; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    const float sl2 = a.scale * LOG2E;  // scores in the log2 domain
    const u64 kend = a.key_end(q0 + nq - 1);
    const u64 rs = a.nkv * HD;
    const bf16* kb = k + a.kv_at(bi, 0, kvh);
    const bf16* vb = v + a.kv_at(bi, 0, kvh);
    if (kend > 0) {
        copy_rows<HD>(ks, BK, kb, rs, min_u32(kend, BK));
        cp_async_commit();
        copy_rows<HD>(vs, BK, vb, rs, min_u32(kend, BK));
        cp_async_commit();
    }
    for (u64 k0 = 0; k0 < kend; k0 += BK) {
        const u64 k1 = k0 + BK;  // the next tile
        cp_async_wait<1>();      // this tile's K (its V may still be in flight)
        __syncthreads();
        float s[BK / 8][4];
UNROLL
        for (u32 n = 0; n < BK / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
UNROLL
        for (u32 i = 0; i < KS; ++i) {
UNROLL
            for (u32 n = 0; n < BK / 8; n += 2) {
                u32 b[4];
                frag_bt(b, ks + 8 * n * LD + 16 * i, LD, lane);
                mma(s[n], qf[i], b);
                mma(s[n + 1], qf[i], b + 2);
            }
        }
        __syncthreads();  // every warp is done with K
        if (k1 < kend) copy_rows<HD>(ks, BK, kb + k1 * rs, rs, min_u32(kend - k1, BK));
        cp_async_commit();

        // Every key of the tile visible to every row of the warp: no mask needed.
        const bool full = k1 <= a.tk && (!a.causal || a.k_start + k1 - 1 <= a.q_start + row0);
UNROLL
        for (u32 n = 0; n < BK / 8; ++n) {
UNROLL
            for (u32 e = 0; e < 4; ++e) {
                const u64 kj = k0 + 8 * n + 2 * t + (e & 1);
                s[n][e] = (full || a.visible(qr[e / 2], kj)) ? s[n][e] * sl2 : neg_inf();
            }
        }
        // The online softmax of rows g (e = 0, 1) and g + 8 (e = 2, 3), each spread over the
        // four threads of a quad. A row with nothing visible yet keeps m = -inf, l = 0, o = 0.
UNROLL
        for (u32 rr = 0; rr < 2; ++rr) {
            float mx = neg_inf();
UNROLL
            for (u32 n = 0; n < BK / 8; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * rr], s[n][2 * rr + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float mn = fmaxf(m[rr], mx);
            const float base = mn == neg_inf() ? 0.0f : mn;
            const float corr = exp2f(m[rr] - base);
            float sum = 0.0f;
UNROLL
            for (u32 n = 0; n < BK / 8; ++n) {
                s[n][2 * rr] = exp2f(s[n][2 * rr] - base);
                s[n][2 * rr + 1] = exp2f(s[n][2 * rr + 1] - base);
                sum += s[n][2 * rr] + s[n][2 * rr + 1];
            }
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            l[rr] = l[rr] * corr + sum;
            m[rr] = mn;
UNROLL
            for (u32 n = 0; n < ND; ++n) {
                o[n][2 * rr] *= corr;
                o[n][2 * rr + 1] *= corr;
            }
        }

        cp_async_wait<1>();  // this tile's V (the next K may still be in flight)
        __syncthreads();
UNROLL
        for (u32 i = 0; i < BK / 16; ++i) {
            u32 pa[4];
            acc_to_a(pa, s[2 * i], s[2 * i + 1]);
UNROLL
            for (u32 n = 0; n < ND; n += 2) {
                u32 b[4];
                frag_b(b, vs + 16 * i * LD + 8 * n, LD, lane);
                mma(o[n], pa, b);
                mma(o[n + 1], pa, b + 2);
            }
        }
        __syncthreads();  // every warp is done with V
        if (k1 < kend) copy_rows<HD>(vs, BK, vb + k1 * rs, rs, min_u32(kend - k1, BK));
        cp_async_commit();
    }

    const bool ok[2] = {qr[0] < a.tq, qr[1] < a.tq};
    float inv[2];
UNROLL
    for (u32 rr = 0; rr < 2; ++rr) {
        inv[rr] = l[rr] > 0.0f ? 1.0f / l[rr] : 0.0f;
        if (ok[rr] && t == 0) {
            lse[a.lse_at(bi, h, qr[rr])] = l[rr] > 0.0f ? m[rr] * LN2 + logf(l[rr]) : neg_inf();
        }
    }
    store_rows<HD>(out + a.q_at(bi, row0, h), a.nh * HD, o, inv[0], inv[1], ok[0], ok[1], lane);
}

// Launch: grid (ceil(TQ / 64), NH, B), block (128), dynamic shared memory 4 * 64 * (HD + 8)
// bytes (34 KiB at HD = 128).
extern "C" __global__ void __launch_bounds__(128)
    attention_forward_bf16(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                           ATTN_SIZES, float scale) {
    const Attn a = ATTN_DIMS;
    switch (hd) {
        case 16: forward_mma<16>(out, lse, q, k, v, a); break;
        case 32: forward_mma<32>(out, lse, q, k, v, a); break;
        case 48: forward_mma<48>(out, lse, q, k, v, a); break;
        case 64: forward_mma<64>(out, lse, q, k, v, a); break;
        case 80: forward_mma<80>(out, lse, q, k, v, a); break;
        case 96: forward_mma<96>(out, lse, q, k, v, a); break;
        case 112: forward_mma<112>(out, lse, q, k, v, a); break;
        case 128: forward_mma<128>(out, lse, q, k, v, a); break;
        default: break;
    }
}

// dq: 4 warps, 64 query rows (16 per warp, Q and dout held as A fragments), tiles of 32 keys.
template <int HD>
__device__ __forceinline__ void dq_mma(bf16* dq, const bf16* dout, const bf16* q, const bf16* k,
                                       const bf16* v, const float* lse, const float* delta,
                                       const Attn a) {
    constexpr u32 LD = HD + 8, BQ = 64, BK = 32, KS = HD / 16, ND = HD / 8;
    const u64 bi = blockIdx.z, h = blockIdx.y, q0 = (u64)blockIdx.x * BQ;
    if (q0 >= a.tq) return;
    bf16* sm = reinterpret_cast<bf16*>(shared_bytes());
    bf16* ks = sm;            // (32, LD)
    bf16* vs = sm + BK * LD;  // (32, LD); with ks, the staging tile of Q and dout (64, LD)
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane / 4, t = lane % 4;
    const u64 kvh = h / a.group();
    const u32 nq = min_u32(a.tq - q0, BQ);

    u32 qf[KS][4], of[KS][4];
    copy_rows<HD>(sm, BQ, q + a.q_at(bi, q0, h), a.nh * HD, nq);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
UNROLL
    for (u32 i = 0; i < KS; ++i) frag_a(qf[i], sm + 16 * warp * LD + 16 * i, LD, lane);
    __syncthreads();
    copy_rows<HD>(sm, BQ, dout + a.q_at(bi, q0, h), a.nh * HD, nq);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
UNROLL
    for (u32 i = 0; i < KS; ++i) frag_a(of[i], sm + 16 * warp * LD + 16 * i, LD, lane);

    const u64 row0 = q0 + 16 * warp;
    const u64 qr[2] = {row0 + g, row0 + g + 8};
    float l2[2], dr[2];  // lse in the log2 domain (-inf past the end), delta
UNROLL
    for (u32 rr = 0; rr < 2; ++rr) {
        const bool in = qr[rr] < a.tq;
        l2[rr] = in ? lse[a.lse_at(bi, h, qr[rr])] * LOG2E : neg_inf();
        dr[rr] = in ? delta[a.lse_at(bi, h, qr[rr])] : 0.0f;
    }
    float acc[ND][4];
UNROLL
    for (u32 n = 0; n < ND; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    const float sl2 = a.scale * LOG2E;
    const u64 kend = a.key_end(q0 + nq - 1);
    const u64 rs = a.nkv * HD;
    for (u64 k0 = 0; k0 < kend; k0 += BK) {
        const u32 nk = min_u32(kend - k0, BK);
        __syncthreads();  // the previous tile's (or the staging's) readers are done
        copy_rows<HD>(ks, BK, k + a.kv_at(bi, k0, kvh), rs, nk);
        copy_rows<HD>(vs, BK, v + a.kv_at(bi, k0, kvh), rs, nk);
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
        float s[BK / 8][4], dp[BK / 8][4];
UNROLL
        for (u32 n = 0; n < BK / 8; ++n) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
            dp[n][0] = dp[n][1] = dp[n][2] = dp[n][3] = 0.0f;
        }
UNROLL
        for (u32 i = 0; i < KS; ++i) {
UNROLL
            for (u32 n = 0; n < BK / 8; n += 2) {
                u32 b[4];
                frag_bt(b, ks + 8 * n * LD + 16 * i, LD, lane);
                mma(s[n], qf[i], b);
                mma(s[n + 1], qf[i], b + 2);
                frag_bt(b, vs + 8 * n * LD + 16 * i, LD, lane);
                mma(dp[n], of[i], b);
                mma(dp[n + 1], of[i], b + 2);
            }
        }
        const bool full = k0 + BK <= a.tk && (!a.causal || a.k_start + k0 + BK - 1 <= a.q_start + row0);
        // dS = P * (dP - delta), over s.
UNROLL
        for (u32 n = 0; n < BK / 8; ++n) {
UNROLL
            for (u32 e = 0; e < 4; ++e) {
                const u32 rr = e / 2;
                const u64 kj = k0 + 8 * n + 2 * t + (e & 1);
                const bool ok = l2[rr] != neg_inf() && (full || a.visible(qr[rr], kj));
                const float p = ok ? exp2f(s[n][e] * sl2 - l2[rr]) : 0.0f;
                s[n][e] = ok ? p * (dp[n][e] - dr[rr]) : 0.0f;
            }
        }
        // dQ += dS K
UNROLL
        for (u32 i = 0; i < BK / 16; ++i) {
            u32 da[4];
            acc_to_a(da, s[2 * i], s[2 * i + 1]);
UNROLL
            for (u32 n = 0; n < ND; n += 2) {
                u32 b[4];
                frag_b(b, ks + 16 * i * LD + 8 * n, LD, lane);
                mma(acc[n], da, b);
                mma(acc[n + 1], da, b + 2);
            }
        }
    }
    store_rows<HD>(dq + a.q_at(bi, row0, h), a.nh * HD, acc, a.scale, a.scale, qr[0] < a.tq,
                   qr[1] < a.tq, lane);
}

// Launch: grid (ceil(TQ / 64), NH, B), block (128), dynamic shared memory 2 * 64 * (HD + 8)
// bytes (17 KiB at HD = 128).
extern "C" __global__ void __launch_bounds__(128)
    attention_backward_dq_bf16(bf16* dq, const bf16* dout, const bf16* q, const bf16* k,
                               const bf16* v, const float* lse, const float* delta, ATTN_SIZES,
                               float scale) {
    const Attn a = ATTN_DIMS;
    switch (hd) {
        case 16: dq_mma<16>(dq, dout, q, k, v, lse, delta, a); break;
        case 32: dq_mma<32>(dq, dout, q, k, v, lse, delta, a); break;
        case 48: dq_mma<48>(dq, dout, q, k, v, lse, delta, a); break;
        case 64: dq_mma<64>(dq, dout, q, k, v, lse, delta, a); break;
        case 80: dq_mma<80>(dq, dout, q, k, v, lse, delta, a); break;
        case 96: dq_mma<96>(dq, dout, q, k, v, lse, delta, a); break;
        case 112: dq_mma<112>(dq, dout, q, k, v, lse, delta, a); break;
        case 128: dq_mma<128>(dq, dout, q, k, v, lse, delta, a); break;
        default: break;
    }
}

// dk, dv: 4 warps, 64 keys (16 per warp, as A fragments read from shared memory), tiles of 16
// queries of each query head of the group in turn. The transposed products Sᵀ = K Qᵀ and
// dPᵀ = V dOᵀ put a key per accumulator row, so Pᵀ and dSᵀ feed dV += Pᵀ dO and dK += dSᵀ Q
// straight from registers.
template <int HD>
__device__ __forceinline__ void dkdv_mma(bf16* dk, bf16* dv, const bf16* dout, const bf16* q,
                                         const bf16* k, const bf16* v, const float* lse,
                                         const float* delta, const Attn a) {
    constexpr u32 LD = HD + 8, KB = 64, BQ = 16, KS = HD / 16, ND = HD / 8;
    const u64 bi = blockIdx.z, kvh = blockIdx.y, k0 = (u64)blockIdx.x * KB;
    if (k0 >= a.tk) return;
    bf16* sm = reinterpret_cast<bf16*>(shared_bytes());
    bf16* ks = sm;                 // (64, LD)
    bf16* vs = ks + KB * LD;       // (64, LD)
    bf16* qs = vs + KB * LD;       // (16, LD)
    bf16* os = qs + BQ * LD;       // (16, LD): dout
    float* ls = reinterpret_cast<float*>(os + BQ * LD);  // (16): lse in the log2 domain
    float* dl = ls + BQ;                                  // (16): delta
    const u32 tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane / 4, t = lane % 4;
    const u64 rs = a.nkv * HD;
    copy_rows<HD>(ks, KB, k + a.kv_at(bi, k0, kvh), rs, min_u32(a.tk - k0, KB));
    copy_rows<HD>(vs, KB, v + a.kv_at(bi, k0, kvh), rs, min_u32(a.tk - k0, KB));
    cp_async_commit();

    const u64 kw = k0 + 16 * warp;                // the warp's first key
    const u64 kr[2] = {kw + g, kw + g + 8};       // this thread's keys
    float dka[ND][4], dva[ND][4];
UNROLL
    for (u32 n = 0; n < ND; ++n) {
        dka[n][0] = dka[n][1] = dka[n][2] = dka[n][3] = 0.0f;
        dva[n][0] = dva[n][1] = dva[n][2] = dva[n][3] = 0.0f;
    }
    const float sl2 = a.scale * LOG2E;
    const u64 grp = a.group();
    for (u64 h = kvh * grp; h < (kvh + 1) * grp; ++h) {
        for (u64 q0 = 0; q0 < a.tq; q0 += BQ) {
            const u32 nq = min_u32(a.tq - q0, BQ);
            if (a.key_end(q0 + nq - 1) <= k0) continue;  // no query of the tile sees these keys
            __syncthreads();  // the previous tile's readers are done
            copy_rows<HD>(qs, BQ, q + a.q_at(bi, q0, h), a.nh * HD, nq);
            copy_rows<HD>(os, BQ, dout + a.q_at(bi, q0, h), a.nh * HD, nq);
            cp_async_commit();
            if (tid < BQ) {
                const bool in = tid < nq;
                ls[tid] = in ? lse[a.lse_at(bi, h, q0 + tid)] * LOG2E : neg_inf();
                dl[tid] = in ? delta[a.lse_at(bi, h, q0 + tid)] : 0.0f;
            }
            cp_async_wait<0>();
            __syncthreads();
            float s[BQ / 8][4], dp[BQ / 8][4];
UNROLL
            for (u32 n = 0; n < BQ / 8; ++n) {
                s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
                dp[n][0] = dp[n][1] = dp[n][2] = dp[n][3] = 0.0f;
            }
UNROLL
            for (u32 i = 0; i < KS; ++i) {
                u32 fa[4], b[4];
                frag_a(fa, ks + 16 * warp * LD + 16 * i, LD, lane);
                frag_bt(b, qs + 16 * i, LD, lane);
                mma(s[0], fa, b);
                mma(s[1], fa, b + 2);
                frag_a(fa, vs + 16 * warp * LD + 16 * i, LD, lane);
                frag_bt(b, os + 16 * i, LD, lane);
                mma(dp[0], fa, b);
                mma(dp[1], fa, b + 2);
            }
            // Every key of the warp visible to every query of the tile: no mask needed.
            const bool full = kw + 16 <= a.tk && (!a.causal || a.k_start + kw + 15 <= a.q_start + q0);
UNROLL
            for (u32 n = 0; n < BQ / 8; ++n) {
UNROLL
                for (u32 e = 0; e < 4; ++e) {
                    const u32 c = 8 * n + 2 * t + (e & 1);  // the query in the tile
                    const bool ok = ls[c] != neg_inf() && (full || a.visible(q0 + c, kr[e / 2]));
                    const float p = ok ? exp2f(s[n][e] * sl2 - ls[c]) : 0.0f;
                    s[n][e] = p;
                    dp[n][e] = ok ? p * (dp[n][e] - dl[c]) : 0.0f;
                }
            }
            u32 pa[4], da[4];
            acc_to_a(pa, s[0], s[1]);
            acc_to_a(da, dp[0], dp[1]);
UNROLL
            for (u32 n = 0; n < ND; n += 2) {
                u32 b[4];
                frag_b(b, os + 8 * n, LD, lane);
                mma(dva[n], pa, b);
                mma(dva[n + 1], pa, b + 2);
                frag_b(b, qs + 8 * n, LD, lane);
                mma(dka[n], da, b);
                mma(dka[n + 1], da, b + 2);
            }
        }
    }
    cp_async_wait<0>();  // no tile read K and V: retire their copies before returning
    const bool ok0 = kr[0] < a.tk, ok1 = kr[1] < a.tk;
    store_rows<HD>(dk + a.kv_at(bi, kw, kvh), rs, dka, a.scale, a.scale, ok0, ok1, lane);
    store_rows<HD>(dv + a.kv_at(bi, kw, kvh), rs, dva, 1.0f, 1.0f, ok0, ok1, lane);
}

// Launch: grid (ceil(TK / 64), NKV, B), block (128), dynamic shared memory
// 2 * 160 * (HD + 8) + 128 bytes (43 KiB at HD = 128).
extern "C" __global__ void __launch_bounds__(128)
    attention_backward_dkdv_bf16(bf16* dk, bf16* dv, const bf16* dout, const bf16* q,
                                 const bf16* k, const bf16* v, const float* lse,
                                 const float* delta, ATTN_SIZES, float scale) {
    const Attn a = ATTN_DIMS;
    switch (hd) {
        case 16: dkdv_mma<16>(dk, dv, dout, q, k, v, lse, delta, a); break;
        case 32: dkdv_mma<32>(dk, dv, dout, q, k, v, lse, delta, a); break;
        case 48: dkdv_mma<48>(dk, dv, dout, q, k, v, lse, delta, a); break;
        case 64: dkdv_mma<64>(dk, dv, dout, q, k, v, lse, delta, a); break;
        case 80: dkdv_mma<80>(dk, dv, dout, q, k, v, lse, delta, a); break;
        case 96: dkdv_mma<96>(dk, dv, dout, q, k, v, lse, delta, a); break;
        case 112: dkdv_mma<112>(dk, dv, dout, q, k, v, lse, delta, a); break;
        case 128: dkdv_mma<128>(dk, dv, dout, q, k, v, lse, delta, a); break;
        default: break;
    }
}
