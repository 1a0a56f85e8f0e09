// Elementwise kernels of weft's CUDA backend, compiled at run time with NVRTC.
// Ops mirror the CPU reference in kernels/src/cpu/elementwise.rs; bf16 kernels load bf16,
// compute in f32 and round each stored value once.
// One thread per element; each kernel's launch is stated above it.

#include "prelude.cuh"

// out = a + b
// Launch: grid (ceil(n / 256)), block (256), shared 0.
extern "C" __global__ void add_f32(float* out, const float* a, const float* b, u64 n) {
    u64 i = grid_index();
    if (i < n) out[i] = a[i] + b[i];
}

// Launch: grid (ceil(n / 256)), block (256), shared 0.
extern "C" __global__ void add_bf16(bf16* out, const bf16* a, const bf16* b, u64 n) {
    u64 i = grid_index();
    if (i < n) out[i] = f32_to_bf16_rne(bf16_to_f32(a[i]) + bf16_to_f32(b[i]));
}

// acc += x (the residual-stream backward and gradient accumulation).
// Launch: grid (ceil(n / 256)), block (256), shared 0.
extern "C" __global__ void accumulate_f32(float* acc, const float* x, u64 n) {
    u64 i = grid_index();
    if (i < n) acc[i] += x[i];
}

// Launch: grid (ceil(n / 256)), block (256), shared 0.
extern "C" __global__ void accumulate_bf16(bf16* acc, const bf16* x, u64 n) {
    u64 i = grid_index();
    if (i < n) acc[i] = f32_to_bf16_rne(bf16_to_f32(acc[i]) + bf16_to_f32(x[i]));
}

// An f32 parameter gradient of a bf16 call.
// Launch: grid (ceil(n / 256)), block (256), shared 0.
extern "C" __global__ void accumulate_f32_bf16(float* acc, const bf16* x, u64 n) {
    u64 i = grid_index();
    if (i < n) acc[i] += bf16_to_f32(x[i]);
}

// out = value (the host converts the op's f64 value to f32 once, as the CPU's f32 path does).
// Launch: grid (ceil(n / 256)), block (256), shared 0.
extern "C" __global__ void fill_f32(float* out, float value, u64 n) {
    u64 i = grid_index();
    if (i < n) out[i] = value;
}

// Launch: grid (ceil(n / 256)), block (256), shared 0.
extern "C" __global__ void fill_bf16(bf16* out, float value, u64 n) {
    u64 i = grid_index();
    if (i < n) out[i] = f32_to_bf16_rne(value);
}

// out = alpha * x (also the backward: dx = alpha * dout).
// Launch: grid (ceil(n / 256)), block (256), shared 0.
extern "C" __global__ void scale_f32(float* out, const float* x, float alpha, u64 n) {
    u64 i = grid_index();
    if (i < n) out[i] = alpha * x[i];
}

// Launch: grid (ceil(n / 256)), block (256), shared 0.
extern "C" __global__ void scale_bf16(bf16* out, const bf16* x, float alpha, u64 n) {
    u64 i = grid_index();
    if (i < n) out[i] = f32_to_bf16_rne(alpha * bf16_to_f32(x[i]));
}

// Launch: grid (ceil(n / 256)), block (256), shared 0.
extern "C" __global__ void cast_f32_bf16(bf16* out, const float* x, u64 n) {
    u64 i = grid_index();
    if (i < n) out[i] = f32_to_bf16_rne(x[i]);
}

// Launch: grid (ceil(n / 256)), block (256), shared 0.
extern "C" __global__ void cast_bf16_f32(float* out, const bf16* x, u64 n) {
    u64 i = grid_index();
    if (i < n) out[i] = bf16_to_f32(x[i]);
}

// out (rows, n) += bias (n), broadcast over rows.
// Launch: grid (ceil(rows * n / 256)), block (256), shared 0.
extern "C" __global__ void bias_add_f32(float* out, const float* bias, u64 rows, u64 n) {
    u64 i = grid_index();
    if (i < rows * n) out[i] += bias[i % n];
}
