// The bf16 attention kernels of kernels/cuda/attention.cu (forward, dQ, dK/dV) on tensor cores:
// mma.sync m16n8k16 with ldmatrix and cp.async, head dims 16..128 in steps of 16. See
// attention.cu for the semantics.
#pragma once

#include "attention_common.cuh"

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
