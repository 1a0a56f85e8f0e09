// Embedding kernels of weft's CUDA backend: token embedding lookup and its scatter-add
// backward, 3-D patchify/unpatchify, and sinusoidal timestep features, the maths of
// kernels/src/cpu/embed.rs. Activations are f32 or bf16 (loaded, computed in f32, rounded once
// when stored); timesteps `t` and their gradient `dt` are f32 in both variants; ids are i32.
//
// The embedding backward is a deterministic scatter-add without atomics, on the device alone.
// The ids are sorted first: `sort_keys_pack` packs token i's id and position into one key,
// `((u64)(u32)ids[i] << 32) | i`, and pads the keys to P = the next power of two with ~0; a
// bitonic sort (`sort_keys_tile`, `sort_keys_step`, `sort_keys_merge`, launched in the order
// kernels/src/cuda/sort.rs plans) puts them in ascending order. Positions are unique, so every
// correct sort gives the same order: by id, then by position (a stable sort of the ids). Negative
// ids become large u32 and sort last; padding (id 0xffffffff) sorts after every token.
// The backward then runs one block per sorted key: the block that starts a run of equal ids
// owns that table row and adds the run's `dout` rows into it in position order — the CPU's token
// order, so the result equals the CPU's bit for bit — each thread owning channels.

#include "prelude.cuh"

// out (N, C) = table (V, C)[ids]; an id outside [0, V) (which the host's checks refuse) gives a
// zero row instead of a read out of bounds. A copy: bf16 rows keep their bits.
// Launch: grid (ceil(N·C / 256)), block (256), no dynamic shared memory.
template <class T>
__device__ __forceinline__ void embed_fwd(T* out, const int* ids, const T* table, u64 n, u64 v,
                                          u64 c) {
    const u64 i = grid_index();
    if (i >= n * c) return;
    const u64 r = i / c, j = i - r * c;
    const int id = ids[r];
    out[i] = (id >= 0 && (u64)id < v) ? table[(u64)id * c + j] : T(0);
}

extern "C" __global__ void embedding_forward_f32(float* out, const int* ids, const float* table,
                                                 u64 n, u64 v, u64 c) {
    embed_fwd(out, ids, table, n, v, c);
}

extern "C" __global__ void embedding_forward_bf16(bf16* out, const int* ids, const bf16* table,
                                                  u64 n, u64 v, u64 c) {
    embed_fwd(out, ids, table, n, v, c);
}

// ---- the key sort ----------------------------------------------------------------------------

// Keys per tile of the sort: a tile is sorted (and a stage's last steps are merged) in shared
// memory by TILE / 2 threads, one compare-exchange each per step. The emulated tests build this
// file with a small tile to reach the global and merge kernels at small sizes; the host's plan
// (kernels/src/cuda/sort.rs, TILE) uses the default.
#ifndef WEFT_SORT_TILE
#define WEFT_SORT_TILE 2048
#endif
#define SORT_TILE WEFT_SORT_TILE

// keys[i] = (id << 32) | i for i < N (the id as u32), ~0 for N <= i < P.
// Launch: grid (ceil(P / 256)), block (256), no dynamic shared memory.
extern "C" __global__ void sort_keys_pack(u64* keys, const int* ids, u64 n, u64 p) {
    const u64 i = grid_index();
    if (i >= p) return;
    keys[i] = i < n ? ((u64)(u32)ids[i] << 32) | i : ~0ull;
}

// The pair of step `j` (a power of two) that pair number `t` names: its lower index has bit j
// clear, its partner is that index + j.
__device__ __forceinline__ u64 bitonic_low(u64 t, u64 j) {
    return ((t & ~(j - 1)) << 1) | (t & (j - 1));
}

// Orders keys a (at global index g) and b (at g + j) for stage k: ascending where bit k of g is
// clear, descending where it is set — a function of the global index, so the tile, step and
// merge kernels agree on every stage.
__device__ __forceinline__ void bitonic_order(u64& a, u64& b, u64 g, u64 k) {
    const bool ascending = (g & k) == 0;
    if ((a > b) == ascending) {
        const u64 t = a;
        a = b;
        b = t;
    }
}

// Steps j = from, from / 2, ..., 1 of stage k on the `m` keys of `s` (shared memory) that start
// at global index `base`: the block's threads order the m / 2 pairs of each step (one each with
// TILE / 2 threads), and every thread reaches every barrier.
__device__ __forceinline__ void tile_steps(u64* s, u64 base, u64 m, u64 k, u64 from) {
    for (u64 j = from; j > 0; j >>= 1) {
        for (u64 t = threadIdx.x; t < m / 2; t += blockDim.x) {
            const u64 i = bitonic_low(t, j);
            bitonic_order(s[i], s[i + j], base + i, k);
        }
        __syncthreads();
    }
}

// Copies the `m` keys at `base` into shared memory (two per thread with TILE / 2 threads).
__device__ __forceinline__ void tile_load(u64* s, const u64* keys, u64 base, u64 m) {
    for (u64 i = threadIdx.x; i < m; i += blockDim.x) s[i] = keys[base + i];
    __syncthreads();
}

// Copies them back (after tile_steps' last barrier).
__device__ __forceinline__ void tile_store(u64* keys, const u64* s, u64 base, u64 m) {
    for (u64 i = threadIdx.x; i < m; i += blockDim.x) keys[base + i] = s[i];
}

// Stages k = 2, 4, ..., min(P, TILE) on each tile of TILE keys (all of them when P < TILE):
// afterwards each tile is sorted, ascending or descending by bit TILE of its index (P <= TILE:
// all P keys ascending).
// Launch: grid (ceil(P / TILE)), block (TILE / 2; at most that), no dynamic shared memory
// (8·TILE bytes static).
extern "C" __global__ void __launch_bounds__(SORT_TILE / 2) sort_keys_tile(u64* keys, u64 p) {
    __shared__ u64 s[SORT_TILE];
    const u64 base = (u64)blockIdx.x * SORT_TILE;
    if (base >= p) return;
    const u64 m = p - base < SORT_TILE ? p - base : SORT_TILE;
    tile_load(s, keys, base, m);
    for (u64 k = 2; k <= m; k <<= 1) tile_steps(s, base, m, k, k / 2);
    tile_store(keys, s, base, m);
}

// Step j of stage k (TILE <= j < k, pairs in different tiles): thread t orders pair t.
// Launch: grid (ceil(P / 2 / 256)), block (256), no dynamic shared memory.
extern "C" __global__ void sort_keys_step(u64* keys, u64 p, u64 k, u64 j) {
    const u64 t = grid_index();
    if (t >= p / 2) return;
    const u64 i = bitonic_low(t, j);
    u64 a = keys[i], b = keys[i + j];
    bitonic_order(a, b, i, k);
    keys[i] = a;
    keys[i + j] = b;
}

// Steps j = TILE / 2, ..., 1 of stage k (k > TILE, after its steps j >= TILE), each tile in
// shared memory.
// Launch: grid (P / TILE), block (TILE / 2; at most that), no dynamic shared memory (8·TILE
// bytes static).
extern "C" __global__ void __launch_bounds__(SORT_TILE / 2) sort_keys_merge(u64* keys, u64 p,
                                                                           u64 k) {
    __shared__ u64 s[SORT_TILE];
    const u64 base = (u64)blockIdx.x * SORT_TILE;
    if (base + SORT_TILE > p) return;
    tile_load(s, keys, base, SORT_TILE);
    tile_steps(s, base, SORT_TILE, k, SORT_TILE / 2);
    tile_store(keys, s, base, SORT_TILE);
}

// ---- the backward -----------------------------------------------------------------------------

// dtable[id] += sum of dout[p] over the run of `id` in the sorted keys (id in the high, p in the
// low 32 bits), in position order, in f32, rounded once. Keys with an id >= V (as u32: negative
// ids too) or a position >= N are skipped; only keys[0..N) are read.
// Launch: grid (min(N, 2^31 - 1)) (any grid works: blocks stride over the keys), block (256;
// any multiple of 32), no dynamic shared memory.
template <class G, class T>
__device__ __forceinline__ void embed_bwd(G* dtable, const T* dout, const u64* keys, u64 n, u64 v,
                                          u64 c) {
    for (u64 j = blockIdx.x; j < n; j += gridDim.x) {
        const u64 id = keys[j] >> 32;
        if ((j > 0 && (keys[j - 1] >> 32) == id) || id >= v) continue;
        u64 end = j + 1;
        while (end < n && (keys[end] >> 32) == id) ++end;
        G* row = dtable + id * c;
        for (u64 ch = threadIdx.x; ch < c; ch += blockDim.x) {
            float acc = load_f32(row, ch);
            for (u64 k = j; k < end; ++k) {
                const u64 p = keys[k] & 0xffffffffull;
                if (p < n) acc += load_f32(dout, p * c + ch);
            }
            store_f32(row, ch, acc);
        }
    }
}

extern "C" __global__ void embedding_backward_f32(float* dtable, const float* dout,
                                                  const u64* keys, u64 n, u64 v, u64 c) {
    embed_bwd(dtable, dout, keys, n, v, c);
}

extern "C" __global__ void embedding_backward_bf16(bf16* dtable, const bf16* dout,
                                                   const u64* keys, u64 n, u64 v, u64 c) {
    embed_bwd(dtable, dout, keys, n, v, c);
}

// An f32 table gradient of a bf16 call.
extern "C" __global__ void embedding_backward_f32_bf16(float* dtable, const bf16* dout,
                                                       const u64* keys, u64 n, u64 v, u64 c) {
    embed_bwd(dtable, dout, keys, n, v, c);
}

// Video (B, T, H, W, C) <-> tokens (B, T/pt·H/ph·W/pw, pt·ph·pw·C), tokens ordered (t, h, w),
// values inside a token (dt, dh, dw, c). Thread i owns element i of the token layout and copies
// it from the video (`to_tokens`) or into it. A patch size that is 0 or does not divide its
// extent (which the host's checks refuse) writes nothing.
// Launch: grid (ceil(B·T·H·W·C / 256)), block (256), no dynamic shared memory.
template <bool to_tokens, class T>
__device__ __forceinline__ void patch_permute(T* dst, const T* src, u64 b, u64 t, u64 h, u64 w,
                                              u64 c, u64 pt, u64 ph, u64 pw) {
    const u64 i = grid_index();
    const u64 per_sample = t * h * w * c;
    if (i >= b * per_sample) return;
    if (pt == 0 || ph == 0 || pw == 0 || t % pt || h % ph || w % pw) return;
    const u64 nh = h / ph, nw = w / pw, tok_dim = pt * ph * pw * c;
    const u64 s = i / per_sample, rem = i - s * per_sample;
    const u64 tok = rem / tok_dim;
    u64 k = rem - tok * tok_dim;
    const u64 iw = tok % nw, ih = tok / nw % nh, it = tok / (nw * nh);
    const u64 cc = k % c;
    k /= c;
    const u64 dw = k % pw, dh = k / pw % ph, dt = k / (pw * ph);
    const u64 vi = s * per_sample + (((it * pt + dt) * h + ih * ph + dh) * w + iw * pw + dw) * c + cc;
    if (to_tokens) {
        dst[i] = src[vi];
    } else {
        dst[vi] = src[i];
    }
}

// The four ops are two permutations: patchify_forward and unpatchify_backward write tokens,
// patchify_backward and unpatchify_forward write video. Arguments: (dst, src, B, T, H, W, C,
// pt, ph, pw).
#define WEFT_PATCH(name, to_tokens, T, suffix)                                                   \
    extern "C" __global__ void name##_##suffix(T* dst, const T* src, u64 b, u64 t, u64 h, u64 w, \
                                               u64 c, u64 pt, u64 ph, u64 pw) {                 \
        patch_permute<to_tokens>(dst, src, b, t, h, w, c, pt, ph, pw);                          \
    }

WEFT_PATCH(patchify_forward, true, float, f32)
WEFT_PATCH(patchify_forward, true, bf16, bf16)
WEFT_PATCH(patchify_backward, false, float, f32)
WEFT_PATCH(patchify_backward, false, bf16, bf16)
WEFT_PATCH(unpatchify_forward, false, float, f32)
WEFT_PATCH(unpatchify_forward, false, bf16, bf16)
WEFT_PATCH(unpatchify_backward, true, float, f32)
WEFT_PATCH(unpatchify_backward, true, bf16, bf16)

// f_j = max_period^(-j / half), computed in f64 and rounded to f32 once, as the CPU's freq().
// `max_period` is the op's f64 value, passed as a double.
__device__ __forceinline__ float timestep_freq(u64 j, u64 half, double max_period) {
    return (float)exp(-log(max_period) * (double)j / (double)half);
}

// out (N, DIM) = [cos(t·f_j) | sin(t·f_j)] (j < DIM/2), and 0 in the last column of an odd DIM.
// Launch: grid (ceil(N·DIM / 256)), block (256), no dynamic shared memory.
template <class T>
__device__ __forceinline__ void timestep_fwd(T* out, const float* t, u64 n, u64 dim,
                                             double max_period) {
    const u64 i = grid_index();
    if (i >= n * dim) return;
    const u64 r = i / dim, k = i - r * dim, half = dim / 2;
    if (k >= 2 * half) {
        store_f32(out, i, 0.0f);
        return;
    }
    const u64 j = k < half ? k : k - half;
    const float a = t[r] * timestep_freq(j, half, max_period);
    store_f32(out, i, k < half ? cosf(a) : sinf(a));
}

extern "C" __global__ void timestep_embedding_forward_f32(float* out, const float* t, u64 n,
                                                          u64 dim, double max_period) {
    timestep_fwd(out, t, n, dim, max_period);
}

extern "C" __global__ void timestep_embedding_forward_bf16(bf16* out, const float* t, u64 n,
                                                           u64 dim, double max_period) {
    timestep_fwd(out, t, n, dim, max_period);
}

// dt[r] = sum over j of (-dout[r][j]·sin(t·f_j) + dout[r][half + j]·cos(t·f_j))·f_j
// (overwrite), one thread per timestep summing j in order, as the CPU.
// Launch: grid (ceil(N / 256)), block (256), no dynamic shared memory.
template <class T>
__device__ __forceinline__ void timestep_bwd(float* dt, const T* dout, const float* t, u64 n,
                                             u64 dim, double max_period) {
    const u64 r = grid_index();
    if (r >= n) return;
    const u64 half = dim / 2;
    const T* d = dout + r * dim;
    float s = 0.0f;
    for (u64 j = 0; j < half; ++j) {
        const float f = timestep_freq(j, half, max_period);
        const float a = t[r] * f;
        s += (-load_f32(d, j) * sinf(a) + load_f32(d, half + j) * cosf(a)) * f;
    }
    dt[r] = s;
}

extern "C" __global__ void timestep_embedding_backward_f32(float* dt, const float* dout,
                                                           const float* t, u64 n, u64 dim,
                                                           double max_period) {
    timestep_bwd(dt, dout, t, n, dim, max_period);
}

extern "C" __global__ void timestep_embedding_backward_bf16(float* dt, const bf16* dout,
                                                            const float* t, u64 n, u64 dim,
                                                            double max_period) {
    timestep_bwd(dt, dout, t, n, dim, max_period);
}
