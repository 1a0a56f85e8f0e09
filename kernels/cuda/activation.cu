// Activation kernels of weft's CUDA backend: GELU (tanh form), SiLU and SwiGLU, forward and
// backward, the same maths in the same order as kernels/src/cpu/activation.rs. bf16 kernels
// load bf16, compute in f32 and round each stored value once.
// One thread per element; each kernel's launch is stated above it.

#include "prelude.cuh"

__device__ __forceinline__ float gelu(float x) {
    const float s = 0.7978845608028654f;  // sqrt(2 / pi)
    const float u = s * (x + 0.044715f * x * x * x);
    return 0.5f * x * (1.0f + tanhf(u));
}

__device__ __forceinline__ float gelu_grad(float x) {
    const float s = 0.7978845608028654f;
    const float th = tanhf(s * (x + 0.044715f * x * x * x));
    const float du = s * (1.0f + 0.134145f * x * x);
    return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du;
}

__device__ __forceinline__ float sigmoid(float x) {
    return 1.0f / (1.0f + expf(-x));
}

__device__ __forceinline__ float silu(float x) {
    return x * sigmoid(x);
}

__device__ __forceinline__ float silu_grad(float x) {
    const float s = sigmoid(x);
    return s * (1.0f + x * (1.0f - s));
}

// Loads and stores of either dtype, f32 in registers.
__device__ __forceinline__ float load(const float* p, u64 i) { return p[i]; }
__device__ __forceinline__ float load(const bf16* p, u64 i) { return bf16_to_f32(p[i]); }
__device__ __forceinline__ void store(float* p, u64 i, float v) { p[i] = v; }
__device__ __forceinline__ void store(bf16* p, u64 i, float v) { p[i] = f32_to_bf16_rne(v); }

// out = f(inp)
template <float (*F)(float), class T>
__device__ __forceinline__ void map(T* out, const T* inp, u64 n) {
    const u64 i = grid_index();
    if (i < n) store(out, i, F(load(inp, i)));
}

// dinp = dout * f'(inp) (overwrites)
template <float (*F)(float), class T>
__device__ __forceinline__ void map_grad(T* dinp, const T* dout, const T* inp, u64 n) {
    const u64 i = grid_index();
    if (i < n) store(dinp, i, load(dout, i) * F(load(inp, i)));
}

#define WEFT_UNARY(name, f, f_grad, T, suffix)                                                  \
    extern "C" __global__ void name##_forward_##suffix(T* out, const T* inp, u64 n) {           \
        map<f>(out, inp, n);                                                                    \
    }                                                                                           \
    extern "C" __global__ void name##_backward_##suffix(T* dinp, const T* dout, const T* inp, \
                                                        u64 n) {                                \
        map_grad<f_grad>(dinp, dout, inp, n);                                                   \
    }

// gelu_forward_{f32,bf16}(out, inp, n), gelu_backward_{f32,bf16}(dinp, dout, inp, n).
// Launch: grid (ceil(n / 256)), block (256), shared 0.
WEFT_UNARY(gelu, gelu, gelu_grad, float, f32)
WEFT_UNARY(gelu, gelu, gelu_grad, bf16, bf16)
// silu_forward_{f32,bf16}(out, inp, n), silu_backward_{f32,bf16}(dinp, dout, inp, n).
// Launch: grid (ceil(n / 256)), block (256), shared 0.
WEFT_UNARY(silu, silu, silu_grad, float, f32)
WEFT_UNARY(silu, silu, silu_grad, bf16, bf16)

// inp (rows, 2h) holds [gate | up] per row; out (rows, h) = silu(gate) * up.
template <class T>
__device__ __forceinline__ void swiglu_fwd(T* out, const T* inp, u64 rows, u64 h) {
    const u64 i = grid_index();
    if (i >= rows * h) return;
    const u64 r = i / h, j = i - r * h;
    const T* x = inp + r * 2 * h;
    store(out, i, silu(load(x, j)) * load(x, h + j));
}

// dinp (rows, 2h) = [dout * up * silu'(gate) | dout * silu(gate)] (overwrites).
template <class T>
__device__ __forceinline__ void swiglu_bwd(T* dinp, const T* dout, const T* inp, u64 rows, u64 h) {
    const u64 i = grid_index();
    if (i >= rows * h) return;
    const u64 r = i / h, j = i - r * h;
    const T* x = inp + r * 2 * h;
    T* dx = dinp + r * 2 * h;
    const float gate = load(x, j), up = load(x, h + j), dy = load(dout, i);
    store(dx, j, dy * up * silu_grad(gate));
    store(dx, h + j, dy * silu(gate));
}

// Launch: grid (ceil(rows * h / 256)), block (256), shared 0.
extern "C" __global__ void swiglu_forward_f32(float* out, const float* inp, u64 rows, u64 h) {
    swiglu_fwd(out, inp, rows, h);
}

// Launch: grid (ceil(rows * h / 256)), block (256), shared 0.
extern "C" __global__ void swiglu_forward_bf16(bf16* out, const bf16* inp, u64 rows, u64 h) {
    swiglu_fwd(out, inp, rows, h);
}

// Launch: grid (ceil(rows * h / 256)), block (256), shared 0.
extern "C" __global__ void swiglu_backward_f32(float* dinp, const float* dout, const float* inp,
                                               u64 rows, u64 h) {
    swiglu_bwd(dinp, dout, inp, rows, h);
}

// Launch: grid (ceil(rows * h / 256)), block (256), shared 0.
extern "C" __global__ void swiglu_backward_bf16(bf16* dinp, const bf16* dout, const bf16* inp,
                                                u64 rows, u64 h) {
    swiglu_bwd(dinp, dout, inp, rows, h);
}
