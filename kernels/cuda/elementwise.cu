// Elementwise kernels of weft's CUDA backend, compiled at run time with NVRTC.
// Symbols are <op>_<dtype>; every kernel takes its element count and guards its tail.
// Ops mirror the CPU reference in kernels/src/cpu/ (see those files for the maths).

typedef unsigned short bf16_bits;
typedef unsigned int u32;
typedef unsigned long long u64;

// Round-to-nearest-even f32 -> bf16, the same bit recipe as weft_kernels::f32_to_bf16_rne.
__device__ __forceinline__ bf16_bits f32_to_bf16_rne(float x) {
    u32 bits = __float_as_uint(x);
    if ((bits & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it quiet
        return (bf16_bits)((bits >> 16) | 0x0040u);
    }
    u32 lsb = (bits >> 16) & 1u;
    return (bf16_bits)((bits + 0x7fffu + lsb) >> 16);
}

__device__ __forceinline__ float bf16_to_f32(bf16_bits x) {
    return __uint_as_float(((u32)x) << 16);
}

extern "C" __global__ void add_f32(float* out, const float* a, const float* b, u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] + b[i];
}

// acc += x (the residual-stream backward and gradient accumulation).
extern "C" __global__ void accumulate_f32(float* acc, const float* x, u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) acc[i] += x[i];
}

extern "C" __global__ void fill_f32(float* out, float value, u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = value;
}

extern "C" __global__ void scale_f32(float* out, const float* x, float alpha, u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = alpha * x[i];
}

extern "C" __global__ void cast_f32_bf16(bf16_bits* out, const float* x, u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = f32_to_bf16_rne(x[i]);
}

extern "C" __global__ void cast_bf16_f32(float* out, const bf16_bits* x, u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = bf16_to_f32(x[i]);
}

// out (rows, n) += bias (n), broadcast over rows.
extern "C" __global__ void bias_add_f32(float* out, const float* bias, u64 rows, u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < rows * n) out[i] += bias[i % n];
}

// dbias (n) += sum over rows of dout (rows, n). One thread per column, rows in order, so the
// result is deterministic (and equal to the CPU's summation order).
extern "C" __global__ void bias_grad_f32(float* dbias, const float* dout, u64 rows, u64 n) {
    u64 j = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    float s = dbias[j];
    for (u64 r = 0; r < rows; ++r) s += dout[r * n + j];
    dbias[j] = s;
}
