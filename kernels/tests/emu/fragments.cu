// A probe of the prelude's tensor-core wrappers (cp.async, ldmatrix, mma.sync), compiled by
// the emulator tests and by NVRTC: D = A * B + C for one 16x16x8 tile per block, with the
// operand fragments built three ways.
// Launch: grid (tiles), block (32), no dynamic shared memory.
// a (tiles, 16, 16), b (tiles, 16, 8) and its transpose bt (tiles, 8, 16): bf16, row-major;
// c (tiles, 16, 8) f32; d (3, tiles, 16, 8) f32: [0] from fragments read out of global memory
// by the documented layout, [1] A and Bt through ldmatrix, [2] B through ldmatrix.trans.

#include "prelude.cuh"  // kernels/cuda, on the include path

__device__ __forceinline__ void store_tile(float* d, const float f[4], u32 g, u32 t) {
    d[g * 8 + 2 * t] = f[0];
    d[g * 8 + 2 * t + 1] = f[1];
    d[(g + 8) * 8 + 2 * t] = f[2];
    d[(g + 8) * 8 + 2 * t + 1] = f[3];
}

extern "C" __global__ void mma_probe(float* d, const bf16* a, const bf16* b, const bf16* bt,
                                     const float* c, u64 tiles) {
    __shared__ __align__(16) bf16 sa[16 * 16];
    __shared__ __align__(16) bf16 sb[16 * 8];
    __shared__ __align__(16) bf16 sbt[8 * 16];
    const u32 lane = threadIdx.x, g = lane / 4, t = lane % 4;
    const u64 tile = blockIdx.x;
    a += tile * 256;
    b += tile * 128;
    bt += tile * 128;
    c += tile * 128;

    // 1 KiB of operands in 16-byte pieces, two per lane.
    cp_async_16(sa + 8 * lane, a + 8 * lane);
    if (lane < 16) {
        cp_async_16(sb + 8 * lane, b + 8 * lane);
    } else {
        cp_async_16(sbt + 8 * (lane - 16), bt + 8 * (lane - 16));
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    const float cf[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t],
                         c[(g + 8) * 8 + 2 * t + 1]};
    float df[4];

    const u32 af[4] = {pack_bf16x2(a[g * 16 + 2 * t], a[g * 16 + 2 * t + 1]),
                       pack_bf16x2(a[(g + 8) * 16 + 2 * t], a[(g + 8) * 16 + 2 * t + 1]),
                       pack_bf16x2(a[g * 16 + 2 * t + 8], a[g * 16 + 2 * t + 9]),
                       pack_bf16x2(a[(g + 8) * 16 + 2 * t + 8], a[(g + 8) * 16 + 2 * t + 9])};
    const u32 bf[2] = {pack_bf16x2(b[2 * t * 8 + g], b[(2 * t + 1) * 8 + g]),
                       pack_bf16x2(b[(2 * t + 8) * 8 + g], b[(2 * t + 9) * 8 + g])};
    mma_m16n8k16_bf16(df, af, bf, cf);
    store_tile(d + tile * 128, df, g, t);

    // Matrix q = lane / 8 of the x4 load is A's quarter (rows 8 (q % 2), columns 8 (q / 2)).
    u32 al[4];
    ldmatrix_x4(al, sa + (lane % 8 + 8 * (lane / 8 % 2)) * 16 + 8 * (lane / 16));
    // Bt's two 8x8 halves (k 0..7, k 8..15), loaded twice.
    u32 bl[4];
    ldmatrix_x4(bl, sbt + (lane % 8) * 16 + 8 * (lane / 8 % 2));
    mma_m16n8k16_bf16(df, al, bl, cf);
    store_tile(d + (tiles + tile) * 128, df, g, t);

    // B's two 8x8 halves (rows k 0..7, k 8..15), transposed on the way, loaded twice.
    u32 bx[4];
    ldmatrix_x4_trans(bx, sb + (lane % 8 + 8 * (lane / 8 % 2)) * 8);
    mma_m16n8k16_bf16(df, al, bx, cf);
    store_tile(d + (2 * tiles + tile) * 128, df, g, t);
}
