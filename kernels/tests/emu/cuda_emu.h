// A CPU emulator for weft's CUDA kernels: `g++ -std=c++20 -pthread -DWEFT_EMU` compiles a
// kernels/cuda/<family>.cu unchanged against this header and runs it.
//
// - A launch runs its blocks one after another on one std::thread per CUDA thread of a block
//   (the same threads run each block in turn), so ThreadSanitizer sees the kernel's real races.
// - `threadIdx`, `blockIdx`, `blockDim`, `gridDim` are thread_local; `__shared__` variables are
//   static, hence shared by the threads of the running block; dynamic shared memory is one
//   buffer per launch (kernels reach it through the prelude's WEFT_DYNAMIC_SHARED).
// - `__syncthreads` is a barrier over the block's live threads; a thread that returns leaves
//   every barrier. Warp collectives (shuffles, ballot, `__syncwarp`, and the PTX twins in
//   ptx_emu.h) publish into per-warp exchange slots between two warp barriers. Their mask must
//   name every live lane of the warp, and a lane may only read a live lane: anything else is
//   undefined on a GPU and stops the emulator with a message.
// - Math intrinsics map onto libm (`__expf` is `expf`): results may differ from a GPU's in the
//   last bits, never in meaning.
#pragma once

#ifndef WEFT_EMU
#define WEFT_EMU 1
#endif

#include <math.h>

#include <atomic>
#include <bit>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---- the language -----------------------------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

struct uint3 {
    unsigned x, y, z;
};

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x = 1, unsigned y = 1, unsigned z = 1) : x(x), y(y), z(z) {}
};

struct __align__(8) float2 { float x, y; };
struct __align__(16) float4 { float x, y, z, w; };
struct __align__(8) uint2 { unsigned x, y; };
struct __align__(16) uint4 { unsigned x, y, z, w; };

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
constexpr int warpSize = 32;

namespace emu {

[[noreturn]] inline void fail(const std::string& what) {
    std::fprintf(stderr, "cuda_emu: %s\n", what.c_str());
    std::fflush(stderr);
    std::abort();
}

// A barrier over a set of threads that may shrink (a thread that leaves is no longer waited
// for). Mutex and condition variable, so ThreadSanitizer sees the ordering it creates.
class Barrier {
   public:
    void reset(unsigned n) {
        std::lock_guard<std::mutex> lk(m_);
        expected_ = n;
        arrived_ = 0;
    }
    void wait() {
        std::unique_lock<std::mutex> lk(m_);
        const unsigned long gen = gen_;
        if (++arrived_ == expected_) {
            release();
        } else {
            cv_.wait(lk, [&] { return gen_ != gen; });
        }
    }
    void leave() {
        std::lock_guard<std::mutex> lk(m_);
        --expected_;
        if (arrived_ > 0 && arrived_ == expected_) release();
    }

   private:
    void release() {
        arrived_ = 0;
        ++gen_;
        cv_.notify_all();
    }
    std::mutex m_;
    std::condition_variable cv_;
    unsigned expected_ = 0, arrived_ = 0;
    unsigned long gen_ = 0;
};

constexpr size_t kSlotBytes = 64;

struct Warp {
    Barrier bar;
    std::atomic<unsigned> live{0};  // lanes that exist and have not returned
    alignas(16) unsigned char slots[32][kSlotBytes];
};

// The running block's shared state.
struct Block {
    unsigned nthreads = 0;
    Barrier sync;  // __syncthreads
    Barrier end;   // between blocks
    std::unique_ptr<Warp[]> warps;
    unsigned nwarps = 0;
    std::vector<unsigned char> dynamic_storage;
    unsigned char* dynamic = nullptr;  // 128-byte aligned, within dynamic_storage

    unsigned lanes_of(unsigned w) const {
        const unsigned n = nthreads - 32 * w;
        return n >= 32 ? 0xffffffffu : (1u << n) - 1;
    }
    // Called with every thread of the block waiting (between blocks) or before any starts.
    void arm() {
        sync.reset(nthreads);
        for (unsigned w = 0; w < nwarps; ++w) {
            warps[w].bar.reset(__builtin_popcount(lanes_of(w)));
            warps[w].live.store(lanes_of(w));
        }
    }
};

inline Block* running = nullptr;
inline thread_local unsigned t_lane = 0, t_warp = 0;

inline Warp& my_warp() { return running->warps[t_warp]; }

inline unsigned lane() { return t_lane; }

inline void* dynamic_shared() { return running->dynamic; }

// The read side of one warp exchange: the slots every live lane wrote.
struct Slots {
    const Warp& w;
    unsigned live;
    template <class T>
    T get(unsigned lane, const char* what) const {
        if (lane >= 32 || !(live >> lane & 1)) {
            fail(std::string(what) + ": lane " + std::to_string(t_lane) + " reads lane " +
                 std::to_string(lane) + ", which does not exist or has returned");
        }
        T v;
        std::memcpy(&v, w.slots[lane], sizeof(T));
        return v;
    }
};

// Every live lane publishes `mine`; after a warp barrier, `read(slots)` runs in each lane; a
// second barrier frees the slots for the next exchange. `mask` must name every live lane.
template <class T, class Read>
auto warp_exchange(unsigned mask, const T& mine, const char* what, Read read) {
    static_assert(sizeof(T) <= kSlotBytes && std::is_trivially_copyable_v<T>);
    Warp& w = my_warp();
    std::memcpy(w.slots[t_lane], &mine, sizeof(T));
    w.bar.wait();
    const unsigned live = w.live.load();
    if ((mask & live) != live || !(mask >> t_lane & 1)) {
        char buf[160];
        std::snprintf(buf, sizeof buf, "%s: mask %08x in lane %u of warp %u, live lanes %08x", what,
                      mask, t_lane, t_warp, live);
        fail(buf);
    }
    auto r = read(Slots{w, live});
    w.bar.wait();
    return r;
}

// The thread leaves its warp and block barriers (it returned from the kernel).
inline void retire() {
    Warp& w = my_warp();
    w.live.fetch_and(~(1u << t_lane));
    w.bar.leave();
    running->sync.leave();
}

}  // namespace emu

// ---- synchronization and warp collectives -----------------------------------------------------

inline void __syncthreads() { emu::running->sync.wait(); }

inline void __syncwarp(unsigned mask = 0xffffffffu) {
    emu::warp_exchange(mask, 0, "__syncwarp", [](const emu::Slots&) { return 0; });
}

namespace emu {
// `src` is the lane to read, or -1 for the caller's own value.
template <class T>
T shuffle(unsigned mask, T v, int src, const char* what) {
    return warp_exchange(mask, v, what, [&](const Slots& s) {
        return src < 0 ? v : s.template get<T>(unsigned(src), what);
    });
}
}  // namespace emu

template <class T>
T __shfl_sync(unsigned mask, T v, int src, int width = warpSize) {
    const int base = int(emu::lane()) & ~(width - 1);
    return emu::shuffle(mask, v, base + ((src % width) + width) % width, "__shfl_sync");
}

template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize) {
    const int lane = int(emu::lane()), src = lane ^ lane_mask;
    const int end = (lane & ~(width - 1)) + width;
    return emu::shuffle(mask, v, src >= end ? -1 : src, "__shfl_xor_sync");
}

template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
    const int lane = int(emu::lane()), src = lane + int(delta);
    const int end = (lane & ~(width - 1)) + width;
    return emu::shuffle(mask, v, src >= end ? -1 : src, "__shfl_down_sync");
}

template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
    const int lane = int(emu::lane()), src = lane - int(delta);
    const int base = lane & ~(width - 1);
    return emu::shuffle(mask, v, src < base ? -1 : src, "__shfl_up_sync");
}

inline unsigned __ballot_sync(unsigned mask, int pred) {
    return emu::warp_exchange(mask, pred != 0, "__ballot_sync", [&](const emu::Slots& s) {
        unsigned bits = 0;
        for (unsigned l = 0; l < 32; ++l) {
            if ((mask & s.live) >> l & 1) bits |= unsigned(s.get<bool>(l, "__ballot_sync")) << l;
        }
        return bits;
    });
}

inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) {
    return __ballot_sync(mask, pred) == (mask & emu::my_warp().live.load());
}

// ---- atomics ----------------------------------------------------------------------------------

template <class T>
T atomicAdd(T* p, T v) {
    return std::atomic_ref<T>(*p).fetch_add(v);
}

template <class T>
T atomicExch(T* p, T v) {
    return std::atomic_ref<T>(*p).exchange(v);
}

template <class T>
T atomicCAS(T* p, T expected, T desired) {
    std::atomic_ref<T>(*p).compare_exchange_strong(expected, desired);
    return expected;
}

template <class T>
T atomicMax(T* p, T v) {
    std::atomic_ref<T> a(*p);
    T old = a.load();
    while (old < v && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}

// ---- bits and math ----------------------------------------------------------------------------

inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline int __popc(unsigned x) { return std::popcount(x); }
inline int __clz(int x) { return std::countl_zero(unsigned(x)); }

inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }

template <class T>
T __ldg(const T* p) {
    return *p;
}

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }

// ---- launching --------------------------------------------------------------------------------

namespace emu {

inline std::mutex launch_mutex;
inline thread_local std::string last_error;  // of the calling thread's last launch

// The limits of sm_80/sm_90 a launch must respect.
constexpr unsigned kMaxThreads = 1024;
constexpr size_t kMaxDynamicShared = 227 * 1024;

inline std::string check_config(dim3 g, dim3 b, size_t shmem) {
    const unsigned long long nt = 1ull * b.x * b.y * b.z;
    if (g.x == 0 || g.y == 0 || g.z == 0) return "the grid has a zero dimension";
    if (g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535) return "the grid exceeds 2^31-1 x 65535 x 65535";
    if (nt == 0 || nt > kMaxThreads || b.z > 64) return "the block needs 1..=1024 threads and z <= 64";
    if (shmem > kMaxDynamicShared) return "dynamic shared memory exceeds 227 KiB";
    return "";
}

}  // namespace emu

#include "ptx_emu.h"

// Runs `kernel(args...)` over `grid` x `block` threads. Returns 0, or 1 with the reason in
// emu_last_error() when the launch configuration is invalid (as cuLaunchKernel would refuse it).
template <class... P, class... A>
int emu_launch(dim3 grid, dim3 block, size_t shmem, void (*kernel)(P...), A&&... args) {
    static_assert(sizeof...(P) == sizeof...(A), "argument count differs from the kernel's");
    std::lock_guard<std::mutex> launch(emu::launch_mutex);
    if (std::string e = emu::check_config(grid, block, shmem); !e.empty()) {
        emu::last_error = e;
        return 1;
    }
    const std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
    emu::Block blk;
    blk.nthreads = block.x * block.y * block.z;
    blk.nwarps = (blk.nthreads + 31) / 32;
    blk.warps = std::make_unique<emu::Warp[]>(blk.nwarps);
    blk.dynamic_storage.resize(shmem + 128);
    blk.dynamic = blk.dynamic_storage.data() + (-reinterpret_cast<uintptr_t>(blk.dynamic_storage.data()) & 127);
    blk.arm();
    blk.end.reset(blk.nthreads);
    emu::running = &blk;
    const unsigned long long nblocks = 1ull * grid.x * grid.y * grid.z;

    auto worker = [&](unsigned tid) {
        threadIdx = uint3{tid % block.x, tid / block.x % block.y, tid / (block.x * block.y)};
        blockDim = block;
        gridDim = grid;
        emu::t_lane = tid % 32;
        emu::t_warp = tid / 32;
        for (unsigned long long b = 0; b < nblocks; ++b) {
            blockIdx = uint3{unsigned(b % grid.x), unsigned(b / grid.x % grid.y),
                             unsigned(b / (1ull * grid.x * grid.y))};
            std::tuple<std::decay_t<P>...> mine = params;
            std::apply(kernel, mine);
            emu::retire();
            emu::cp_async_discard();
            // Every thread of the block has returned; one re-arms the barriers for the next.
            blk.end.wait();
            if (tid == 0) blk.arm();
            blk.end.wait();
        }
    };
    std::vector<std::thread> threads;
    threads.reserve(blk.nthreads);
    for (unsigned t = 0; t < blk.nthreads; ++t) threads.emplace_back(worker, t);
    for (auto& t : threads) t.join();
    emu::running = nullptr;
    return 0;
}

namespace emu {

// Launches with CUDA's kernel-parameter convention: args[i] points at the i-th argument.
template <class... P, size_t... I>
int launch_packed(dim3 grid, dim3 block, size_t shmem, void (*kernel)(P...), void** args,
                  std::index_sequence<I...>) {
    return emu_launch(grid, block, shmem, kernel, *static_cast<std::decay_t<P>*>(args[I])...);
}

template <class... P>
int launch_packed(dim3 grid, dim3 block, size_t shmem, void (*kernel)(P...), void** args) {
    return launch_packed(grid, block, shmem, kernel, args, std::index_sequence_for<P...>{});
}

}  // namespace emu

// `emu_<kernel>(grid, block, shmem, args)`: the C entry point a test loads for one kernel.
#define EMU_EXPORT(kernel)                                                                 \
    extern "C" int emu_##kernel(dim3 grid, dim3 block, size_t shmem, void** args) {       \
        return emu::launch_packed(grid, block, shmem, kernel, args);                       \
    }

// The reason the last launch was refused.
extern "C" const char* emu_last_error() { return emu::last_error.c_str(); }
