// LayerNorm and RMSNorm (and so QK-norm: RMSNorm over rows of N = B·T·NH, C = HD) of weft's
// CUDA backend, forward and backward, the maths of kernels/src/cpu/norm.rs in its order: a
// two-pass mean and variance, rstd = 1 / sqrt(var + eps), statistics in f32.
//
// Symbols: <op>_f32 and <op>_bf16 by the activation dtype (`inp`, `out`, `weight`, `bias`,
// `dinp`, `dout`); the statistics `mean`/`rstd` are f32 in both, as the op contract fixes them.
// `weight` and `bias` may be null (the op's `None`: weight 1, bias 0).
//
// Row kernels (every *_forward_* and *_backward_* here):
//   grid (G), block (K), K a multiple of 32 (256; fewer, down to 32, suits a small C such as
//   QK-norm's head dim); block b handles rows b, b + G, b + 2G, ... so any G ≥ 1 is valid, and
//   G = N gives one row per block. The forward takes no dynamic shared memory.
//
// Parameter gradients (dweight, dbias: += over rows, deterministic, no atomics) take two kernels:
// 1. the backward row kernel leaves block b's sum over its rows in `dweight_part[b·C .. b·C+C)`
//    and `dbias_part[...]` (f32 scratch of G·C floats each; null for a gradient the call does
//    not want). Each thread owns the columns ≡ threadIdx.x (mod K) of a block-private
//    accumulator in dynamic shared memory: 8·C bytes for layernorm_backward_* (4·C for
//    rmsnorm_backward_*) when any partial is wanted, else 0. With the block reduction's 128
//    static bytes that fits sm_80/sm_90's 227 KiB per block for C ≤ 29040 (layernorm) and
//    C ≤ 58080 (rmsnorm), once cuFuncSetAttribute raises the kernel's dynamic shared limit
//    past 48 KiB where needed.
// 2. param_grad_sum_<acc dtype>_f32 / param_grad_sum_f32, once per gradient: grid (ceil(C / 256)),
//    block (256), no shared memory: acc[j] += Σ_{b<G} part[b·C + j], the G partials summed in
//    order b = 0, 1, ... and added to acc once (a bf16 acc is rounded once). The result is the
//    same bits on every run with the same G.

#include "prelude.cuh"

// ---- forward ----------------------------------------------------------------------------------

template <class T>
__device__ __forceinline__ void layernorm_fwd(T* out, float* mean, float* rstd, const T* inp,
                                              const T* weight, const T* bias, u64 n, u64 c,
                                              float eps) {
    const float cn = (float)c;
    for (u64 row = blockIdx.x; row < n; row += gridDim.x) {
        const T* x = inp + row * c;
        T* o = out + row * c;
        float s = 0.0f;
        for (u64 i = threadIdx.x; i < c; i += blockDim.x) s += load_f32(x, i);
        const float mu = block_sum(s) / cn;
        float v = 0.0f;
        for (u64 i = threadIdx.x; i < c; i += blockDim.x) {
            const float d = load_f32(x, i) - mu;
            v += d * d;
        }
        const float rs = 1.0f / sqrtf(block_sum(v) / cn + eps);
        for (u64 i = threadIdx.x; i < c; i += blockDim.x) {
            float y = (load_f32(x, i) - mu) * rs;
            if (weight) y *= load_f32(weight, i);
            if (bias) y += load_f32(bias, i);
            store_f32(o, i, y);
        }
        if (threadIdx.x == 0) {
            mean[row] = mu;
            rstd[row] = rs;
        }
    }
}

template <class T>
__device__ __forceinline__ void rmsnorm_fwd(T* out, float* rstd, const T* inp, const T* weight,
                                            u64 n, u64 c, float eps) {
    const float cn = (float)c;
    for (u64 row = blockIdx.x; row < n; row += gridDim.x) {
        const T* x = inp + row * c;
        T* o = out + row * c;
        float s = 0.0f;
        for (u64 i = threadIdx.x; i < c; i += blockDim.x) {
            const float v = load_f32(x, i);
            s += v * v;
        }
        const float rs = 1.0f / sqrtf(block_sum(s) / cn + eps);
        for (u64 i = threadIdx.x; i < c; i += blockDim.x) {
            float y = load_f32(x, i) * rs;
            if (weight) y *= load_f32(weight, i);
            store_f32(o, i, y);
        }
        if (threadIdx.x == 0) rstd[row] = rs;
    }
}

// ---- backward ---------------------------------------------------------------------------------

// dinp = (g - mean(g) - xhat · mean(g · xhat)) · rstd with g = dout · weight (overwrites);
// partial sums of dout · xhat (dweight) and dout (dbias) per block.
template <class T>
__device__ __forceinline__ void layernorm_bwd(T* dinp, float* dweight_part, float* dbias_part,
                                              const T* dout, const T* inp, const T* weight,
                                              const float* mean, const float* rstd, u64 n,
                                              u64 c) {
    WEFT_DYNAMIC_SHARED(float, acc);
    float* dw = acc;
    float* db = acc + c;
    const bool params = dweight_part || dbias_part;
    // Each thread touches only its own columns of the accumulators: no barrier needed.
    if (params) {
        for (u64 i = threadIdx.x; i < c; i += blockDim.x) dw[i] = db[i] = 0.0f;
    }
    const float cn = (float)c;
    for (u64 row = blockIdx.x; row < n; row += gridDim.x) {
        const T* x = inp + row * c;
        const T* dy = dout + row * c;
        T* dx = dinp + row * c;
        const float mu = mean[row], rs = rstd[row];
        float s1 = 0.0f, s2 = 0.0f;
        for (u64 i = threadIdx.x; i < c; i += blockDim.x) {
            const float g = weight ? load_f32(dy, i) * load_f32(weight, i) : load_f32(dy, i);
            s1 += g;
            s2 += g * (load_f32(x, i) - mu) * rs;
        }
        s1 = block_sum(s1) / cn;
        s2 = block_sum(s2) / cn;
        for (u64 i = threadIdx.x; i < c; i += blockDim.x) {
            const float d = load_f32(dy, i);
            const float g = weight ? d * load_f32(weight, i) : d;
            const float xhat = (load_f32(x, i) - mu) * rs;
            store_f32(dx, i, (g - s1 - xhat * s2) * rs);
            if (params) {
                dw[i] += d * xhat;
                db[i] += d;
            }
        }
    }
    for (u64 i = threadIdx.x; i < c; i += blockDim.x) {
        if (dweight_part) dweight_part[blockIdx.x * c + i] = dw[i];
        if (dbias_part) dbias_part[blockIdx.x * c + i] = db[i];
    }
}

// dinp = (g - xhat · mean(g · xhat)) · rstd with g = dout · weight, xhat = inp · rstd
// (overwrites); partial sums of dout · xhat (dweight) per block.
template <class T>
__device__ __forceinline__ void rmsnorm_bwd(T* dinp, float* dweight_part, const T* dout,
                                            const T* inp, const T* weight, const float* rstd,
                                            u64 n, u64 c) {
    WEFT_DYNAMIC_SHARED(float, dw);
    if (dweight_part) {
        for (u64 i = threadIdx.x; i < c; i += blockDim.x) dw[i] = 0.0f;
    }
    const float cn = (float)c;
    for (u64 row = blockIdx.x; row < n; row += gridDim.x) {
        const T* x = inp + row * c;
        const T* dy = dout + row * c;
        T* dx = dinp + row * c;
        const float rs = rstd[row];
        float s = 0.0f;
        for (u64 i = threadIdx.x; i < c; i += blockDim.x) {
            const float g = weight ? load_f32(dy, i) * load_f32(weight, i) : load_f32(dy, i);
            s += g * load_f32(x, i) * rs;
        }
        const float dot = block_sum(s) / cn;
        for (u64 i = threadIdx.x; i < c; i += blockDim.x) {
            const float d = load_f32(dy, i), v = load_f32(x, i);
            const float g = weight ? d * load_f32(weight, i) : d;
            store_f32(dx, i, (g - v * rs * dot) * rs);
            if (dweight_part) dw[i] += d * v * rs;
        }
    }
    if (dweight_part) {
        for (u64 i = threadIdx.x; i < c; i += blockDim.x) dweight_part[blockIdx.x * c + i] = dw[i];
    }
}

// acc[j] += Σ_{b < parts} partials[b·n + j], summed in order b = 0, 1, ..., then added once.
template <class T>
__device__ __forceinline__ void param_grad_sum(T* acc, const float* partials, u64 parts, u64 n) {
    const u64 j = grid_index();
    if (j >= n) return;
    float s = 0.0f;
    for (u64 b = 0; b < parts; ++b) s += partials[b * n + j];
    store_f32(acc, j, load_f32(acc, j) + s);
}

// ---- symbols ----------------------------------------------------------------------------------

#define WEFT_NORM(T, suffix)                                                                       \
    extern "C" __global__ void layernorm_forward_##suffix(T* out, float* mean, float* rstd,       \
                                                          const T* inp, const T* weight,          \
                                                          const T* bias, u64 n, u64 c,            \
                                                          float eps) {                            \
        layernorm_fwd(out, mean, rstd, inp, weight, bias, n, c, eps);                             \
    }                                                                                             \
    extern "C" __global__ void layernorm_backward_##suffix(                                      \
        T* dinp, float* dweight_part, float* dbias_part, const T* dout, const T* inp,             \
        const T* weight, const float* mean, const float* rstd, u64 n, u64 c) {                    \
        layernorm_bwd(dinp, dweight_part, dbias_part, dout, inp, weight, mean, rstd, n, c);       \
    }                                                                                             \
    extern "C" __global__ void rmsnorm_forward_##suffix(T* out, float* rstd, const T* inp,        \
                                                        const T* weight, u64 n, u64 c,            \
                                                        float eps) {                              \
        rmsnorm_fwd(out, rstd, inp, weight, n, c, eps);                                           \
    }                                                                                             \
    extern "C" __global__ void rmsnorm_backward_##suffix(T* dinp, float* dweight_part,            \
                                                         const T* dout, const T* inp,             \
                                                         const T* weight, const float* rstd,      \
                                                         u64 n, u64 c) {                          \
        rmsnorm_bwd(dinp, dweight_part, dout, inp, weight, rstd, n, c);                           \
    }

// layernorm_forward_{f32,bf16}(out, mean, rstd, inp, weight, bias, n, c, eps)
// layernorm_backward_{f32,bf16}(dinp, dweight_part, dbias_part, dout, inp, weight, mean, rstd, n, c)
// rmsnorm_forward_{f32,bf16}(out, rstd, inp, weight, n, c, eps)
// rmsnorm_backward_{f32,bf16}(dinp, dweight_part, dout, inp, weight, rstd, n, c)
WEFT_NORM(float, f32)
WEFT_NORM(bf16, bf16)

// The second kernel of a parameter gradient: an f32 gradient (of an f32 or a bf16 call), or a
// bf16 one (of a bf16 call). Launch: grid (ceil(n / 256)), block (256), no shared memory.
extern "C" __global__ void param_grad_sum_f32(float* acc, const float* partials, u64 parts,
                                              u64 n) {
    param_grad_sum(acc, partials, parts, n);
}

extern "C" __global__ void param_grad_sum_bf16_f32(bf16* acc, const float* partials, u64 parts,
                                                   u64 n) {
    param_grad_sum(acc, partials, parts, n);
}
