// Optimizer kernels of weft's CUDA backend: one multi-tensor AdamW or AdEMAMix launch over a
// rank's flat f32 shard, driven by a segment table; Σx² as a deterministic two-pass global
// reduction in f64; the l2norm forward (the same two passes) and backward; and the element-wise
// and normalizing pieces of the matrix optimizers (Muon, Scion), whose Newton–Schulz products
// run on cuBLASLt. The maths of kernels/src/cpu/optim.rs.
//
// Segment table (device memory, `nsegments` entries, 24 bytes each, little-endian):
//   offset  0: u64 offset     first element of the segment in the flat shard
//   offset  8: u64 length     elements
//   offset 16: f32 lr_scale   the segment's learning rate is lr · lr_scale (in f64)
//   offset 20: u32 decay      nonzero: weight decay applies; 0: it does not (norms, biases)
// Segments are sorted by offset and do not overlap; elements in no segment (gaps, padding) and
// any part of a segment past `n` are left untouched. A segment steps exactly as the CPU's
// `adamw_update` / `ademamix_update` over its range with `lr = lr · lr_scale` and
// `weight_decay = decay ? weight_decay : 0`.
//
// The f64 hyper-parameters (`lr`, `weight_decay`, AdamW's `bias_correction1`) arrive as double so
// each segment's derived constants are computed in f64 and rounded to f32 once, as the CPU
// does; the bias corrections (`1 - β^t`, by the host in f64 as the CPU) come precomputed.
//
// Σx²: `sum_squares_partial_*` writes one f64 partial per chunk of OPTIM_SUM_CHUNK elements
// (scratch: ceil(n / OPTIM_SUM_CHUNK) doubles, allocated by the host); the squares of f32 and
// bf16 values are exact in f64, and every sum is in f64, the CPU's accuracy. A one-block
// `*_finish_*` kernel then adds the partials in a fixed order. The same launch configuration
// gives the same bits on every run.

#include "prelude.cuh"

// Elements per block-iteration of the optimizer updates are 16 · blockDim.x; elements per
// partial sum of Σx² are OPTIM_SUM_CHUNK.
#define OPTIM_ITEMS 16
#define OPTIM_SUM_CHUNK 8192

struct Segment {
    u64 offset;
    u64 length;
    float lr_scale;
    u32 decay;
};

// The first segment whose end lies past `pos` (nsegments if none): segments are sorted.
__device__ __forceinline__ u64 first_segment_after(const Segment* segs, u64 nsegs, u64 pos) {
    u64 lo = 0, hi = nsegs;
    while (lo < hi) {
        const u64 mid = (lo + hi) / 2;
        if (segs[mid].offset + segs[mid].length <= pos) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

// Runs `step(i, seg)` for every element i in [0, n) covered by a segment, blocks striding over
// chunks of OPTIM_ITEMS · blockDim.x elements and visiting the segments that meet their chunk.
template <class Step>
__device__ __forceinline__ void for_each_segment_element(const Segment* segs, u64 nsegs, u64 n,
                                                         Step step) {
    const u64 chunk = (u64)OPTIM_ITEMS * blockDim.x;
    for (u64 lo = (u64)blockIdx.x * chunk; lo < n; lo += (u64)gridDim.x * chunk) {
        const u64 hi = min(n, lo + chunk);
        for (u64 s = first_segment_after(segs, nsegs, lo); s < nsegs && segs[s].offset < hi; ++s) {
            const Segment seg = segs[s];
            const u64 a = max(lo, seg.offset), b = min(hi, seg.offset + seg.length);
            for (u64 i = a + threadIdx.x; i < b; i += blockDim.x) step(i, seg);
        }
    }
}

// The decoupled weight decay factor of a segment: 1 - lr_seg · wd in f64, rounded to f32.
__device__ __forceinline__ float segment_decay(const Segment& seg, double lr_seg, double wd) {
    return (float)(1.0 - lr_seg * (seg.decay ? wd : 0.0));
}

// AdamW (PyTorch semantics, kernels/src/ops/mod.rs): per element, in f32,
//   g = grad·grad_scale, m = β1·m + (1-β1)·g, v = β2·v + (1-β2)·g²,
//   p = p·decay - step_size·m / (√v / √(1-β2ᵗ) + eps),
// with step_size = f32(lr_seg / bias_correction1) and decay = f32(1 - lr_seg·wd) per segment.
// `bias_correction1` = 1 - β1ᵗ and `bias_correction2_sqrt` = f32(√(1 - β2ᵗ)), from the host.
// Launch: grid (ceil(n / (16·256))) (any grid works), block (256), no dynamic shared memory.
extern "C" __global__ void adamw_update_f32(float* params, float* m, float* v,
                                            const float* grads, const Segment* segments,
                                            u64 nsegments, u64 n, double lr, double weight_decay,
                                            double bias_correction1, float beta1, float beta2,
                                            float eps, float bias_correction2_sqrt,
                                            float grad_scale) {
    for_each_segment_element(segments, nsegments, n, [&](u64 i, const Segment& seg) {
        const double lr_seg = lr * (double)seg.lr_scale;
        const float step_size = (float)(lr_seg / bias_correction1);
        const float decay = segment_decay(seg, lr_seg, weight_decay);
        const float g = grads[i] * grad_scale;
        const float mi = beta1 * m[i] + (1.0f - beta1) * g;
        const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        const float denom = sqrtf(vi) / bias_correction2_sqrt + eps;
        params[i] = params[i] * decay - step_size * mi / denom;
    });
}

// AdEMAMix: AdamW with a slow EMA m2 = β3·m2 + (1-β3)·g mixed into the numerator:
//   p = p·decay - lr_f32·(m / bc1 + α·m2) / (√v / √(1-β2ᵗ) + eps),
// with lr_f32 = f32(lr_seg) and decay = f32(1 - lr_seg·wd) per segment; `bias_correction1` =
// f32(1 - β1ᵗ) and `bias_correction2_sqrt` = f32(√(1 - β2ᵗ)), from the host.
// Launch: as adamw_update_f32.
extern "C" __global__ void ademamix_update_f32(float* params, float* m, float* m2, float* v,
                                               const float* grads, const Segment* segments,
                                               u64 nsegments, u64 n, double lr,
                                               double weight_decay, float bias_correction1,
                                               float beta1, float beta2, float beta3, float alpha,
                                               float eps, float bias_correction2_sqrt,
                                               float grad_scale) {
    for_each_segment_element(segments, nsegments, n, [&](u64 i, const Segment& seg) {
        const double lr_seg = lr * (double)seg.lr_scale;
        const float lr_f = (float)lr_seg;
        const float decay = segment_decay(seg, lr_seg, weight_decay);
        const float g = grads[i] * grad_scale;
        const float mi = beta1 * m[i] + (1.0f - beta1) * g;
        const float m2i = beta3 * m2[i] + (1.0f - beta3) * g;
        const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        m2[i] = m2i;
        v[i] = vi;
        const float denom = sqrtf(vi) / bias_correction2_sqrt + eps;
        params[i] = params[i] * decay - lr_f * (mi / bias_correction1 + alpha * m2i) / denom;
    });
}

// partials[b] = Σ x² (SQUARE) or Σ x over chunk b (elements [b · OPTIM_SUM_CHUNK,
// (b + 1) · OPTIM_SUM_CHUNK) ∩ [0, n)), in f64: the first pass of `sum_squares` and `sum`.
// Launch: grid (ceil(n / OPTIM_SUM_CHUNK)) (any grid works), block (256), no dynamic shared
// memory; nothing when n = 0. `partials` holds ceil(n / OPTIM_SUM_CHUNK) doubles.
template <bool SQUARE, class T>
__device__ __forceinline__ void chunk_sums(double* partials, const T* x, u64 n) {
    for (u64 b = blockIdx.x; b * OPTIM_SUM_CHUNK < n; b += gridDim.x) {
        const u64 lo = b * OPTIM_SUM_CHUNK, hi = min(n, lo + OPTIM_SUM_CHUNK);
        double s = 0.0;
        for (u64 i = lo + threadIdx.x; i < hi; i += blockDim.x) {
            const double xi = (double)load_f32(x, i);
            s += SQUARE ? xi * xi : xi;
        }
        s = block_sum_f64(s);
        if (threadIdx.x == 0) partials[b] = s;
    }
}

extern "C" __global__ void sum_squares_partial_f32(double* partials, const float* x, u64 n) {
    chunk_sums<true>(partials, x, n);
}

extern "C" __global__ void sum_squares_partial_bf16(double* partials, const bf16* x, u64 n) {
    chunk_sums<true>(partials, x, n);
}

extern "C" __global__ void sum_partial_f32(double* partials, const float* x, u64 n) {
    chunk_sums<false>(partials, x, n);
}

extern "C" __global__ void sum_partial_bf16(double* partials, const bf16* x, u64 n) {
    chunk_sums<false>(partials, x, n);
}

// The sum of the `parts` partials, in a fixed order, in thread 0 (every thread of the one block
// takes part).
__device__ __forceinline__ double sum_partials(const double* partials, u64 parts) {
    double s = 0.0;
    for (u64 i = threadIdx.x; i < parts; i += blockDim.x) s += partials[i];
    return block_sum_f64(s);
}

// acc[0] = acc[0] + Σ partials, added in f64 and rounded to acc's dtype once. The f32 `acc`
// serves f32 and bf16 `x`; the f64 one, bf16 `x` (the CPU's contract).
// Launch: grid (1), block (256), no dynamic shared memory; also for n = 0 (parts = 0).
extern "C" __global__ void sum_squares_finish_f32(float* acc, const double* partials, u64 parts) {
    if (blockIdx.x != 0) return;
    const double s = sum_partials(partials, parts);
    if (threadIdx.x == 0) acc[0] = (float)((double)acc[0] + s);
}

extern "C" __global__ void sum_squares_finish_f64(double* acc, const double* partials, u64 parts) {
    if (blockIdx.x != 0) return;
    const double s = sum_partials(partials, parts);
    if (threadIdx.x == 0) acc[0] = acc[0] + s;
}

// acc[0] = acc[0] + alpha · Σ partials, in f64, rounded to acc's dtype once (the `sum` op).
// Launch: as sum_squares_finish_f32.
extern "C" __global__ void sum_finish_f32(float* acc, const double* partials, u64 parts,
                                          double alpha) {
    if (blockIdx.x != 0) return;
    const double s = sum_partials(partials, parts);
    if (threadIdx.x == 0) acc[0] = (float)((double)acc[0] + alpha * s);
}

extern "C" __global__ void sum_finish_f64(double* acc, const double* partials, u64 parts,
                                          double alpha) {
    if (blockIdx.x != 0) return;
    const double s = sum_partials(partials, parts);
    if (threadIdx.x == 0) acc[0] = acc[0] + alpha * s;
}

// out[0] = ‖x‖₂ = f32(√Σ partials) after sum_squares_partial_f32 over x (the l2norm forward).
// Launch: as sum_squares_finish_f32.
extern "C" __global__ void l2norm_forward_finish_f32(float* out, const double* partials,
                                                     u64 parts) {
    if (blockIdx.x != 0) return;
    const double s = sum_partials(partials, parts);
    if (threadIdx.x == 0) out[0] = (float)sqrt(s);
}

// dx = (dout[0] / norm[0])·x, or 0 where norm[0] <= 0 (overwrite).
// Launch: grid (ceil(n / 256)), block (256), no dynamic shared memory.
extern "C" __global__ void l2norm_backward_f32(float* dx, const float* dout, const float* x,
                                               const float* norm, u64 n) {
    const u64 i = grid_index();
    if (i >= n) return;
    const float nrm = norm[0];
    const float k = nrm > 0.0f ? dout[0] / nrm : 0.0f;
    dx[i] = k * x[i];
}

// ---- matrix optimizers ------------------------------------------------------------------------
// Hyper-parameters arrive as double and are rounded to f32 once, as the CPU's `T::of`.

// g = grads·grad_scale, m = mu·m + dampening·g, u = g + mu·m (nesterov != 0) or m, in f32.
// Launch: grid (ceil(n / 256)), block (256), no dynamic shared memory.
extern "C" __global__ void momentum_update_f32(float* m, float* u, const float* grads, u64 n,
                                               double mu, double dampening, double grad_scale,
                                               u64 nesterov) {
    const u64 i = grid_index();
    if (i >= n) return;
    const float mu_ = (float)mu, damp = (float)dampening, gs = (float)grad_scale;
    const float g = gs * grads[i];
    const float mi = mu_ * m[i] + damp * g;
    m[i] = mi;
    u[i] = nesterov ? g + mu_ * mi : mi;
}

// params = keep·params - lr·dir, in f32.
// Launch: grid (ceil(n / 256)), block (256), no dynamic shared memory.
extern "C" __global__ void apply_direction_f32(float* params, const float* dir, u64 n, double lr,
                                               double keep) {
    const u64 i = grid_index();
    if (i >= n) return;
    params[i] = (float)keep * params[i] - (float)lr * dir[i];
}

// The factor scale / (√Σx² + eps), in f64, rounded to f32 once; 0 for a part whose Σx² is 0
// (all zeros: they stay zeros, where eps = 0 would make them 0·∞ = NaN).
__device__ __forceinline__ float norm_factor(double sq, double scale, double eps) {
    return sq > 0.0 ? (float)(scale / (sqrt(sq) + eps)) : 0.0f;
}

// x *= scale / (‖x‖_F + eps) after sum_squares_partial_f32 over x (`parts` partials): every
// block adds the partials in the same fixed order, so all use one factor.
// Launch: grid (ceil(n / 256)) (any grid works), block (256), no dynamic shared memory.
extern "C" __global__ void normalize_frobenius_f32(float* x, u64 n, const double* partials,
                                                   u64 parts, double scale, double eps) {
    const float s = norm_factor(sum_partials(partials, parts), scale, eps);
    for (u64 i = grid_index(); i < n; i += (u64)gridDim.x * blockDim.x) x[i] *= s;
}

// Each row of x (rows, cols) times scale / (‖row‖ + eps): a block per row (blocks stride),
// its Σx² a block reduction in f64.
// Launch: grid (min(rows, 65535)), block (256), no dynamic shared memory.
extern "C" __global__ void normalize_rows_f32(float* x, u64 rows, u64 cols, double scale,
                                              double eps) {
    for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {
        float* row = x + r * cols;
        double sq = 0.0;
        for (u64 j = threadIdx.x; j < cols; j += blockDim.x) sq += (double)row[j] * (double)row[j];
        const float s = norm_factor(block_sum_f64(sq), scale, eps);
        for (u64 j = threadIdx.x; j < cols; j += blockDim.x) row[j] *= s;
    }
}

// Each column of x (rows, cols) times scale / (‖column‖ + eps): a thread per column (reads
// coalesced across a warp), its Σx² added in row order in f64, as the CPU.
// Launch: grid (ceil(cols / 256)), block (256), no dynamic shared memory.
extern "C" __global__ void normalize_cols_f32(float* x, u64 rows, u64 cols, double scale,
                                              double eps) {
    const u64 j = grid_index();
    if (j >= cols) return;
    double sq = 0.0;
    for (u64 i = 0; i < rows; ++i) sq += (double)x[i * cols + j] * (double)x[i * cols + j];
    const float s = norm_factor(sq, scale, eps);
    for (u64 i = 0; i < rows; ++i) x[i * cols + j] *= s;
}

// x = scale·sign(x) (zero stays zero).
// Launch: grid (ceil(n / 256)), block (256), no dynamic shared memory.
extern "C" __global__ void normalize_sign_f32(float* x, u64 n, double scale) {
    const u64 i = grid_index();
    if (i >= n) return;
    const float s = (float)scale, v = x[i];
    x[i] = v > 0.0f ? s : (v < 0.0f ? -s : 0.0f);
}

// out (cols, rows) = scale · x (rows, cols)ᵀ: Newton–Schulz's change of orientation (and its
// final scale). One thread per element of `out`.
// Launch: grid (ceil(rows·cols / 256)), block (256), no dynamic shared memory.
extern "C" __global__ void transpose_scaled_f32(float* out, const float* x, u64 rows, u64 cols,
                                                double scale) {
    const u64 i = grid_index();
    if (i >= rows * cols) return;
    const u64 c = i / rows, r = i - c * rows;
    out[i] = (float)scale * x[r * cols + c];
}
