// The f32 attention kernels of kernels/cuda/attention.cu (forward, dK/dV, dQ): tiles in shared
// memory and plain FMA, any head dim up to 128. See attention.cu for the semantics.
#pragma once

#include "attention_common.cuh"

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
