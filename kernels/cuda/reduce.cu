// Column reductions of weft's CUDA backend, compiled at run time with NVRTC (self-contained).
//
// bias_grad: dbias (n) += sum over rows of dout (rows, n), in two deterministic stages.
//   1. bias_grad_partial_<dout>: grid (ceil(n / 32), chunks). Block (32, 8): a warp reads 32
//      consecutive columns of a row (coalesced); thread (tx, ty) sums rows
//      chunk_start + ty, + 8, + 16, ... of its column in order, then row ty == 0 adds the 8
//      per-thread sums in order and writes partial[chunk * n + column] (f32).
//   2. bias_grad_finish_<dbias>: one thread per column adds the partials of chunks 0, 1, ...
//      in order to dbias (for bf16, in f32 and rounded once to nearest even).
// Every sum has a fixed order given (rows, n, chunks), so the result is the same on every run.

typedef unsigned short bf16_bits;
typedef unsigned int u32;
typedef unsigned long long u64;

#define BG_COLS 32
#define BG_ROWS 8

__device__ __forceinline__ float bg_load(const float* p, u64 i) { return p[i]; }
__device__ __forceinline__ float bg_load(const bf16_bits* p, u64 i) {
    return __uint_as_float(((u32)p[i]) << 16);
}

// Round-to-nearest-even f32 -> bf16 (quiet NaN kept), as weft_kernels::f32_to_bf16_rne.
__device__ __forceinline__ bf16_bits bg_to_bf16(float x) {
    u32 bits = __float_as_uint(x);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (bf16_bits)((bits >> 16) | 0x0040u);
    u32 lsb = (bits >> 16) & 1u;
    return (bf16_bits)((bits + 0x7fffu + lsb) >> 16);
}

template <typename T>
__device__ __forceinline__ void bias_grad_partial(float* partial, const T* dout, u64 rows, u64 n,
                                                  u64 rows_per_chunk) {
    __shared__ float sums[BG_ROWS][BG_COLS + 1];
    const u64 col = (u64)blockIdx.x * BG_COLS + threadIdx.x;
    const u64 chunk = blockIdx.y;
    const u64 start = chunk * rows_per_chunk;
    u64 end = start + rows_per_chunk;
    if (end > rows) end = rows;
    float s = 0.0f;
    if (col < n) {
        for (u64 r = start + threadIdx.y; r < end; r += BG_ROWS) s += bg_load(dout, r * n + col);
    }
    sums[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && col < n) {
        float t = sums[0][threadIdx.x];
        for (int y = 1; y < BG_ROWS; ++y) t += sums[y][threadIdx.x];
        partial[chunk * n + col] = t;
    }
}

extern "C" __global__ void bias_grad_partial_f32(float* partial, const float* dout, u64 rows, u64 n,
                                                 u64 rows_per_chunk) {
    bias_grad_partial(partial, dout, rows, n, rows_per_chunk);
}

extern "C" __global__ void bias_grad_partial_bf16(float* partial, const bf16_bits* dout, u64 rows,
                                                  u64 n, u64 rows_per_chunk) {
    bias_grad_partial(partial, dout, rows, n, rows_per_chunk);
}

__device__ __forceinline__ float bg_sum_chunks(const float* partial, u64 n, u64 chunks, u64 col) {
    float s = 0.0f;
    for (u64 c = 0; c < chunks; ++c) s += partial[c * n + col];
    return s;
}

extern "C" __global__ void bias_grad_finish_f32(float* dbias, const float* partial, u64 n, u64 chunks) {
    const u64 col = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (col < n) dbias[col] += bg_sum_chunks(partial, n, chunks, col);
}

extern "C" __global__ void bias_grad_finish_bf16(bf16_bits* dbias, const float* partial, u64 n,
                                                 u64 chunks) {
    const u64 col = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (col < n) dbias[col] = bg_to_bf16(bg_load(dbias, col) + bg_sum_chunks(partial, n, chunks, col));
}
