// Embedding kernels of weft's CUDA backend: token embedding lookup and its scatter-add
// backward, 3-D patchify/unpatchify, and sinusoidal timestep features, the maths of
// kernels/src/cpu/embed.rs. Activations are f32 or bf16 (loaded, computed in f32, rounded once
// when stored); timesteps `t` and their gradient `dt` are f32 in both variants; ids are i32.
//
// The embedding backward is a deterministic scatter-add without atomics. The host gives the
// token ids sorted: `sorted_ids (N)`, the ids in ascending order, and `positions (N)`, the token
// index of each, ascending among equal ids (a stable sort of (id, position) pairs; the
// host holds the ids it uploaded). One block per sorted entry: the block that starts a run of
// equal ids owns that table row and adds the run's `dout` rows into it in position order — the
// CPU's token order, so the result equals the CPU's bit for bit — each thread owning channels.

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

// dtable[id] += sum of dout[p] over the run of `id` in sorted order, in f32, rounded once.
// Entries with an id outside [0, V) or a position outside [0, N) are skipped.
// Launch: grid (N) (any grid works: blocks stride over the sorted entries), block (256; any
// multiple of 32), no dynamic shared memory.
template <class G, class T>
__device__ __forceinline__ void embed_bwd(G* dtable, const T* dout, const int* sorted_ids,
                                          const int* positions, u64 n, u64 v, u64 c) {
    for (u64 j = blockIdx.x; j < n; j += gridDim.x) {
        const int id = sorted_ids[j];
        if ((j > 0 && sorted_ids[j - 1] == id) || id < 0 || (u64)id >= v) continue;
        u64 end = j + 1;
        while (end < n && sorted_ids[end] == id) ++end;
        G* row = dtable + (u64)id * c;
        for (u64 ch = threadIdx.x; ch < c; ch += blockDim.x) {
            float acc = load_f32(row, ch);
            for (u64 k = j; k < end; ++k) {
                const int p = positions[k];
                if (p >= 0 && (u64)p < n) acc += load_f32(dout, (u64)p * c + ch);
            }
            store_f32(row, ch, acc);
        }
    }
}

extern "C" __global__ void embedding_backward_f32(float* dtable, const float* dout,
                                                  const int* sorted_ids, const int* positions,
                                                  u64 n, u64 v, u64 c) {
    embed_bwd(dtable, dout, sorted_ids, positions, n, v, c);
}

extern "C" __global__ void embedding_backward_bf16(bf16* dtable, const bf16* dout,
                                                   const int* sorted_ids, const int* positions,
                                                   u64 n, u64 v, u64 c) {
    embed_bwd(dtable, dout, sorted_ids, positions, n, v, c);
}

// An f32 table gradient of a bf16 call.
extern "C" __global__ void embedding_backward_f32_bf16(float* dtable, const bf16* dout,
                                                       const int* sorted_ids,
                                                       const int* positions, u64 n, u64 v,
                                                       u64 c) {
    embed_bwd(dtable, dout, sorted_ids, positions, n, v, c);
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
