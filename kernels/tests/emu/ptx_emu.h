// The emulated twins of the inline-PTX wrappers in kernels/cuda/prelude.cuh. Each implements
// the register fragments the PTX ISA documents for its instruction, exchanging the operands of
// the 32 lanes through the warp's slots (included by cuda_emu.h).
#pragma once

namespace emu {

inline float bf16_bits_to_f32(uint32_t h) { return std::bit_cast<float>((h & 0xffffu) << 16); }

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (PTX ISA, "Matrix fragments for
// mma.m16n8k16 with floating point type"): lane = 4g + t;
//   A (16x16): a[0] = A[g][2t, 2t+1], a[1] = A[g+8][2t, 2t+1], a[2] = A[g][2t+8, 2t+9],
//              a[3] = A[g+8][2t+8, 2t+9]  (first element in the low 16 bits);
//   B (16x8):  b[0] = B[2t, 2t+1][g], b[1] = B[2t+8, 2t+9][g];
//   C, D (16x8, f32): [0] = [g][2t], [1] = [g][2t+1], [2] = [g+8][2t], [3] = [g+8][2t+1].
// Products of bf16 are exact in f32; they are summed in f32 in k order onto C (the hardware's
// order and internal width are unspecified, so a GPU may differ in the last bits).
inline void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2],
                              const float c[4]) {
    struct Frag {
        uint32_t a[4], b[2];
        float c[4];
    } mine;
    std::memcpy(mine.a, a, sizeof mine.a);
    std::memcpy(mine.b, b, sizeof mine.b);
    std::memcpy(mine.c, c, sizeof mine.c);
    struct Out {
        float d[4];
    };
    const char* what = "mma.sync.m16n8k16";
    const Out out = warp_exchange(0xffffffffu, mine, what, [&](const Slots& s) {
        float A[16][16], B[16][8], C[16][8];
        for (unsigned l = 0; l < 32; ++l) {
            const Frag f = s.get<Frag>(l, what);
            const unsigned g = l / 4, t = l % 4;
            for (unsigned h = 0; h < 2; ++h) {
                A[g][2 * t + h] = bf16_bits_to_f32(f.a[0] >> (16 * h));
                A[g + 8][2 * t + h] = bf16_bits_to_f32(f.a[1] >> (16 * h));
                A[g][2 * t + 8 + h] = bf16_bits_to_f32(f.a[2] >> (16 * h));
                A[g + 8][2 * t + 8 + h] = bf16_bits_to_f32(f.a[3] >> (16 * h));
                B[2 * t + h][g] = bf16_bits_to_f32(f.b[0] >> (16 * h));
                B[2 * t + 8 + h][g] = bf16_bits_to_f32(f.b[1] >> (16 * h));
                C[g][2 * t + h] = f.c[h];
                C[g + 8][2 * t + h] = f.c[2 + h];
            }
        }
        const unsigned g = t_lane / 4, t = t_lane % 4;
        Out o;
        for (unsigned i = 0; i < 4; ++i) {
            const unsigned row = g + 8 * (i / 2), col = 2 * t + i % 2;
            float acc = C[row][col];
            for (unsigned k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
            o.d[i] = acc;
        }
        return o;
    });
    std::memcpy(d, out.d, sizeof out.d);
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16 (PTX ISA, "ldmatrix"): lanes 8i..8i+7 give
// the row addresses of matrix i; without .trans lane l receives row l/4, elements 2(l%4) and
// 2(l%4)+1 of each matrix; with .trans it receives column l/4, rows 2(l%4) and 2(l%4)+1.
inline void ldmatrix_x4(uint32_t r[4], const void* row, bool trans) {
    if (reinterpret_cast<uintptr_t>(row) % 16 != 0) fail("ldmatrix: a row address is not 16-byte aligned");
    const char* what = trans ? "ldmatrix.x4.trans" : "ldmatrix.x4";
    struct Out {
        uint32_t r[4];
    };
    const Out out = warp_exchange(0xffffffffu, row, what, [&](const Slots& s) {
        const unsigned q = t_lane / 4, p = 2 * (t_lane % 4);
        Out o;
        for (unsigned i = 0; i < 4; ++i) {
            auto at = [&](unsigned rr, unsigned cc) {
                const auto* base = static_cast<const uint16_t*>(s.get<const void*>(8 * i + rr, what));
                return uint32_t(base[cc]);
            };
            o.r[i] = trans ? at(p, q) | at(p + 1, q) << 16 : at(q, p) | at(q, p + 1) << 16;
        }
        return o;
    });
    std::memcpy(r, out.r, sizeof out.r);
}

// cp.async.cg.shared.global with commit_group / wait_group: the source is read when the copy is
// issued, the destination written when a wait retires its group, so a kernel that reads shared
// memory before waiting reads stale data here as it may on a GPU.
struct CpAsync {
    struct Copy {
        void* dst;
        unsigned char bytes[16];
    };
    std::vector<Copy> open;
    std::vector<std::vector<Copy>> committed;  // oldest first
};
inline thread_local CpAsync t_cp_async;

inline void cp_async_16(void* smem, const void* gmem) {
    if ((reinterpret_cast<uintptr_t>(smem) | reinterpret_cast<uintptr_t>(gmem)) % 16 != 0) {
        fail("cp.async: an address is not 16-byte aligned");
    }
    CpAsync::Copy c{smem, {}};
    std::memcpy(c.bytes, gmem, 16);
    t_cp_async.open.push_back(c);
}

inline void cp_async_commit() {
    t_cp_async.committed.push_back(std::move(t_cp_async.open));
    t_cp_async.open.clear();
}

inline void cp_async_wait(int pending) {
    auto& q = t_cp_async.committed;
    size_t done = 0;
    while (q.size() - done > size_t(pending)) {
        for (const auto& c : q[done]) std::memcpy(c.dst, c.bytes, 16);
        ++done;
    }
    q.erase(q.begin(), q.begin() + done);
}

// Copies still pending when a thread returns are dropped with its block.
inline void cp_async_discard() {
    t_cp_async.open.clear();
    t_cp_async.committed.clear();
}

}  // namespace emu
