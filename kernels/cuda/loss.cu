// Loss kernels of weft's CUDA backend: fused softmax cross-entropy with z-loss, and the mean
// squared error, the maths of kernels/src/cpu/loss.rs. Logits, predictions, targets and their
// gradients are f32 or bf16 (loaded, computed in f32, rounded once when stored); the
// statistics (`losses`, `lse`, `dlosses`, `loss`, `dloss`) are f32 in both variants. Targets
// are i32; a negative target marks an ignored row.
//
// Cross-entropy: one block per row, the block looping over the V logits of its row (V can be
// ~150k), so no row is ever held in shared memory: the forward reads the row twice (max, then
// the sum of exponentials, each a fixed-order block reduction), the backward once.
//
// MSE forward: two launches, deterministic for any grid. `mse_forward_partial_*` writes one
// f32 partial sum per chunk of MSE_CHUNK elements (scratch: ceil(n / MSE_CHUNK) floats, which
// the host allocates), and `mse_forward_finish_f32`, one block, sums the partials in a fixed
// order and divides by n.

#include "prelude.cuh"

// Elements per partial sum of the MSE forward.
#define MSE_CHUNK 4096

// losses[r] = lse_r - logits[r][y_r] + z * lse_r^2 (0 where y_r < 0), lse[r] = log-sum-exp of
// row r: m + log(sum exp(x - m)) with m the row's max, as the CPU. A target >= V (which the
// host's checks refuse) gives a NaN loss instead of a read out of bounds.
template <class T>
__device__ __forceinline__ void ce_forward(float* losses, float* lse, const T* logits,
                                           const int* targets, u64 n, u64 v, float z) {
    for (u64 r = blockIdx.x; r < n; r += gridDim.x) {
        const T* x = logits + r * v;
        float m = MaxOp::identity();
        for (u64 i = threadIdx.x; i < v; i += blockDim.x) m = fmaxf(m, load_f32(x, i));
        m = block_max(m);
        float s = 0.0f;
        for (u64 i = threadIdx.x; i < v; i += blockDim.x) s += expf(load_f32(x, i) - m);
        s = block_sum(s);
        if (threadIdx.x == 0) {
            const float l = m + logf(s);
            const int y = targets[r];
            lse[r] = l;
            if (y < 0) {
                losses[r] = 0.0f;
            } else if ((u64)y >= v) {
                losses[r] = __int_as_float(0x7fc00000);
            } else {
                losses[r] = l - load_f32(x, (u64)y) + z * l * l;
            }
        }
    }
}

// dlogits[r] = dlosses[r] * (softmax(row) * (1 + 2 z lse_r) - onehot(y_r)) (overwrite; 0 for
// an ignored row), element by element in the CPU's order: g * exp(x - lse) * zf, then - g at
// the target, rounded once.
template <class T>
__device__ __forceinline__ void ce_backward(T* dlogits, const float* dlosses, const T* logits,
                                            const int* targets, const float* lse, u64 n, u64 v,
                                            float z) {
    for (u64 r = blockIdx.x; r < n; r += gridDim.x) {
        const T* x = logits + r * v;
        T* dx = dlogits + r * v;
        const int y = targets[r];
        if (y < 0) {
            for (u64 i = threadIdx.x; i < v; i += blockDim.x) store_f32(dx, i, 0.0f);
            continue;
        }
        const float g = dlosses[r], l = lse[r];
        const float zf = 1.0f + 2.0f * z * l;
        for (u64 i = threadIdx.x; i < v; i += blockDim.x) {
            float d = g * expf(load_f32(x, i) - l) * zf;
            if (i == (u64)y) d -= g;
            store_f32(dx, i, d);
        }
    }
}

// Launch: grid (N) (any grid works: blocks stride over the rows), block (256 for V <= 8192,
// else 1024; any multiple of 32 up to 1024), no dynamic shared memory.
extern "C" __global__ void cross_entropy_forward_f32(float* losses, float* lse,
                                                     const float* logits, const int* targets,
                                                     u64 n, u64 v, float z_loss) {
    ce_forward(losses, lse, logits, targets, n, v, z_loss);
}

extern "C" __global__ void cross_entropy_forward_bf16(float* losses, float* lse,
                                                      const bf16* logits, const int* targets,
                                                      u64 n, u64 v, float z_loss) {
    ce_forward(losses, lse, logits, targets, n, v, z_loss);
}

// Launch: as the forward.
extern "C" __global__ void cross_entropy_backward_f32(float* dlogits, const float* dlosses,
                                                      const float* logits, const int* targets,
                                                      const float* lse, u64 n, u64 v,
                                                      float z_loss) {
    ce_backward(dlogits, dlosses, logits, targets, lse, n, v, z_loss);
}

extern "C" __global__ void cross_entropy_backward_bf16(bf16* dlogits, const float* dlosses,
                                                       const bf16* logits, const int* targets,
                                                       const float* lse, u64 n, u64 v,
                                                       float z_loss) {
    ce_backward(dlogits, dlosses, logits, targets, lse, n, v, z_loss);
}

// partials[b] = sum over chunk b (elements [b * MSE_CHUNK, (b + 1) * MSE_CHUNK) ∩ [0, n)) of
// (pred - target)^2.
template <class T>
__device__ __forceinline__ void mse_partial(float* partials, const T* pred, const T* target,
                                            u64 n) {
    for (u64 b = blockIdx.x; b * MSE_CHUNK < n; b += gridDim.x) {
        const u64 lo = b * MSE_CHUNK, hi = min(n, lo + MSE_CHUNK);
        float s = 0.0f;
        for (u64 i = lo + threadIdx.x; i < hi; i += blockDim.x) {
            const float d = load_f32(pred, i) - load_f32(target, i);
            s += d * d;
        }
        s = block_sum(s);
        if (threadIdx.x == 0) partials[b] = s;
    }
}

// Launch: grid (ceil(n / MSE_CHUNK)) (any grid works), block (256), no dynamic shared memory;
// nothing when n = 0. `partials` holds ceil(n / MSE_CHUNK) floats.
extern "C" __global__ void mse_forward_partial_f32(float* partials, const float* pred,
                                                   const float* target, u64 n) {
    mse_partial(partials, pred, target, n);
}

extern "C" __global__ void mse_forward_partial_bf16(float* partials, const bf16* pred,
                                                    const bf16* target, u64 n) {
    mse_partial(partials, pred, target, n);
}

// loss[0] = (sum of the `parts` partials) / max(n, 1), for either dtype's partials.
// Launch: grid (1), block (256), no dynamic shared memory; also for n = 0 (parts = 0: loss 0).
extern "C" __global__ void mse_forward_finish_f32(float* loss, const float* partials, u64 parts,
                                                  u64 n) {
    if (blockIdx.x != 0) return;
    float s = 0.0f;
    for (u64 i = threadIdx.x; i < parts; i += blockDim.x) s += partials[i];
    s = block_sum(s);
    if (threadIdx.x == 0) loss[0] = s / (float)(n > 0 ? n : 1);
}

// dpred = (2 * dloss[0] / max(n, 1)) * (pred - target) (overwrite).
// Launch: grid (ceil(n / 256)), block (256), no dynamic shared memory.
template <class T>
__device__ __forceinline__ void mse_bwd(T* dpred, const float* dloss, const T* pred,
                                        const T* target, u64 n) {
    const u64 i = grid_index();
    if (i >= n) return;
    const float k = 2.0f * dloss[0] / (float)n;
    store_f32(dpred, i, k * (load_f32(pred, i) - load_f32(target, i)));
}

extern "C" __global__ void mse_backward_f32(float* dpred, const float* dloss, const float* pred,
                                            const float* target, u64 n) {
    mse_bwd(dpred, dloss, pred, target, n);
}

extern "C" __global__ void mse_backward_bf16(bf16* dpred, const float* dloss, const bf16* pred,
                                             const bf16* target, u64 n) {
    mse_bwd(dpred, dloss, pred, target, n);
}
