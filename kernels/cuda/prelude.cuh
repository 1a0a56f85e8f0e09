// The shared prelude of weft's CUDA kernels: included first by every kernels/cuda/<family>.cu.
//
// Kernel ABI (what the host side relies on):
// - Symbols are `extern "C"` and named <op>_<dtype> (`gelu_forward_bf16`); casts are
//   cast_<from>_<to>. Arguments are the CPU op's, in its order (written buffers first); a dims
//   struct becomes its fields in declaration order (SwigluDims { n, h } -> `u64 rows, u64 h`).
// - A kernel whose buffers differ in dtype lists the dtypes in argument order
//   (`accumulate_f32_bf16`: an f32 `acc` += a bf16 `x`).
// - Element counts and dimensions are `u64`; float scalars are `float` (the host converts the
//   op's f64 scalar once). bf16 buffers are `bf16` (the raw 16 bits), f32 math inside.
// - Every kernel guards its own tail: any grid that covers the work is valid. A `// Launch:`
//   line above each kernel states the grid, block and dynamic shared memory it is launched with.
// - Block sizes are multiples of 32 (warp and block reductions assume whole warps).
//
// Every inline-PTX instruction sits behind a wrapper below. Under WEFT_EMU (the CPU emulator in
// kernels/tests/emu/cuda_emu.h) each wrapper has a twin that implements the same register
// fragments, as the PTX ISA documents them, with the emulator's warp exchange.
#pragma once

typedef unsigned short bf16;  // bfloat16, as its raw bits
typedef unsigned int u32;
typedef unsigned long long u64;

// ---- bf16 -------------------------------------------------------------------------------------

// Round-to-nearest-even f32 -> bf16, the same bit recipe as weft_kernels::f32_to_bf16_rne.
__device__ __forceinline__ bf16 f32_to_bf16_rne(float x) {
    u32 bits = __float_as_uint(x);
    if ((bits & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it quiet
        return (bf16)((bits >> 16) | 0x0040u);
    }
    u32 lsb = (bits >> 16) & 1u;
    return (bf16)((bits + 0x7fffu + lsb) >> 16);
}

// Exact.
__device__ __forceinline__ float bf16_to_f32(bf16 x) {
    return __uint_as_float(((u32)x) << 16);
}

// Two bf16 in one 32-bit register, `lo` in the low half (the operand layout of mma.sync).
__device__ __forceinline__ u32 pack_bf16x2(bf16 lo, bf16 hi) {
    return (u32)lo | ((u32)hi << 16);
}

// Element `i` of an f32 or bf16 buffer as f32 (exact), and an f32 stored into element `i`
// of either (bf16: rounded once, to nearest even).
__device__ __forceinline__ float load_f32(const float* p, u64 i) { return p[i]; }
__device__ __forceinline__ float load_f32(const bf16* p, u64 i) { return bf16_to_f32(p[i]); }
__device__ __forceinline__ void store_f32(float* p, u64 i, float v) { p[i] = v; }
__device__ __forceinline__ void store_f32(bf16* p, u64 i, float v) { p[i] = f32_to_bf16_rne(v); }

// Two f32 rounded to nearest even into one register of two bf16, `lo` in the low half (an
// mma.sync operand); the same rounding as f32_to_bf16_rne.
__device__ __forceinline__ u32 pack_f32_bf16x2(float lo, float hi) {
#ifdef WEFT_EMU
    return pack_bf16x2(f32_to_bf16_rne(lo), f32_to_bf16_rne(hi));
#else
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#endif
}

// ---- indexing ---------------------------------------------------------------------------------

// The thread's index in a 1-D grid of 1-D blocks, in 64 bits.
__device__ __forceinline__ u64 grid_index() {
    return (u64)blockIdx.x * blockDim.x + threadIdx.x;
}

// ---- reductions -------------------------------------------------------------------------------
// Warp reductions need all 32 lanes of the warp; block reductions need every thread of the block
// (whole warps). Every thread gets the result, the same bits in every thread and on every run.

struct SumOp {
    static __device__ __forceinline__ float apply(float a, float b) { return a + b; }
    static __device__ __forceinline__ float identity() { return 0.0f; }
};

struct MaxOp {
    static __device__ __forceinline__ float apply(float a, float b) { return fmaxf(a, b); }
    static __device__ __forceinline__ float identity() { return -__int_as_float(0x7f800000); }
};

// Butterfly over the lanes (xor 16, 8, 4, 2, 1).
template <class Op>
__device__ __forceinline__ float warp_reduce(float v) {
    for (int m = 16; m > 0; m >>= 1) v = Op::apply(v, __shfl_xor_sync(0xffffffffu, v, m));
    return v;
}

__device__ __forceinline__ float warp_sum(float v) { return warp_reduce<SumOp>(v); }
__device__ __forceinline__ float warp_max(float v) { return warp_reduce<MaxOp>(v); }

__device__ __forceinline__ u32 block_thread_index() {
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

// Each warp reduces its values, lane 0 of each stores its result in a shared slot, and every
// warp then reduces the slots. The first barrier keeps the previous call's readers of the
// slots ahead of this call's writers.
template <class Op>
__device__ __forceinline__ float block_reduce(float v) {
    __shared__ float slots[32];
    const u32 tid = block_thread_index();
    const u32 lane = tid & 31;
    const u32 nwarps = (blockDim.x * blockDim.y * blockDim.z + 31) / 32;
    v = warp_reduce<Op>(v);
    __syncthreads();
    if (lane == 0) slots[tid >> 5] = v;
    __syncthreads();
    return warp_reduce<Op>(lane < nwarps ? slots[lane] : Op::identity());
}

__device__ __forceinline__ float block_sum(float v) { return block_reduce<SumOp>(v); }
__device__ __forceinline__ float block_max(float v) { return block_reduce<MaxOp>(v); }

// f64 sums (the optimizer's global reductions), as warp_sum and block_sum.
__device__ __forceinline__ double warp_sum_f64(double v) {
    for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
    return v;
}

__device__ __forceinline__ double block_sum_f64(double v) {
    __shared__ double slots_f64[32];
    const u32 tid = block_thread_index();
    const u32 lane = tid & 31;
    const u32 nwarps = (blockDim.x * blockDim.y * blockDim.z + 31) / 32;
    v = warp_sum_f64(v);
    __syncthreads();
    if (lane == 0) slots_f64[tid >> 5] = v;
    __syncthreads();
    return warp_sum_f64(lane < nwarps ? slots_f64[lane] : 0.0);
}

// ---- dynamic shared memory --------------------------------------------------------------------

// `T* name` pointing at the block's dynamic shared memory (the launch's shared-memory bytes),
// aligned to 16 bytes.
#ifdef WEFT_EMU
#define WEFT_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(emu::dynamic_shared())
#else
#define WEFT_DYNAMIC_SHARED(T, name)                                  \
    extern __shared__ __align__(16) unsigned char weft_dynamic_smem_[]; \
    T* name = reinterpret_cast<T*>(weft_dynamic_smem_)
#endif

// ---- inline PTX -------------------------------------------------------------------------------
// Fragment notation (PTX ISA, "Matrix fragments for mma.m16n8k16"): lane = threadIdx % 32,
// g = lane / 4 (the group), t = lane % 4 (the thread in the group).

// D (16x8, f32) = A (16x16, bf16, row-major) * B (16x8, bf16, column-major) + C, one warp.
// a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..2t+1], a[2] = A[g][2t+8..2t+9],
// a[3] = A[g+8][2t+8..2t+9]; b[0] = B[2t..2t+1][g], b[1] = B[2t+8..2t+9][g];
// c, d: [0] = [g][2t], [1] = [g][2t+1], [2] = [g+8][2t], [3] = [g+8][2t+1].
// Each register holds its lower-index element in the low 16 bits.
__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const u32 a[4], const u32 b[2],
                                                  const float c[4]) {
#ifdef WEFT_EMU
    emu::mma_m16n8k16_bf16(d, a, b, c);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
          "f"(c[1]), "f"(c[2]), "f"(c[3]));
#endif
}

#ifndef WEFT_EMU
// The 32-bit shared-state-space address of a generic pointer into shared memory (the operand
// form of the wrappers below; the emulated twins take the generic pointer itself).
__device__ __forceinline__ u32 shared_address(const void* p) {
    u32 r;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
    return r;
}
#endif

// Four 8x8 bf16 matrices from shared memory, one warp: lanes 8i..8i+7 give the addresses of
// rows 0..7 of matrix i (16 contiguous bytes each, 16-byte aligned); r[i] = matrix i's
// [lane/4][2(lane%4)..2(lane%4)+1]. With `trans`, r[i] = matrix i's [2(lane%4)][lane/4] (low)
// and [2(lane%4)+1][lane/4] (high).
__device__ __forceinline__ void ldmatrix_x4(u32 r[4], const bf16* row) {
#ifdef WEFT_EMU
    emu::ldmatrix_x4(r, row, false);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(row)));
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(u32 r[4], const bf16* row) {
#ifdef WEFT_EMU
    emu::ldmatrix_x4(r, row, true);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(row)));
#endif
}

// Asynchronous 16-byte copy global -> shared (both 16-byte aligned), in the calling thread's
// current group; `cp_async_commit` closes the group, `cp_async_wait<N>` waits until at most N of
// the thread's groups are pending. Other threads see the data after a __syncthreads.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem) {
#ifdef WEFT_EMU
    emu::cp_async_16(smem, gmem);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(shared_address(smem)),
                 "l"(gmem));
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#ifdef WEFT_EMU
    emu::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef WEFT_EMU
    emu::cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}
