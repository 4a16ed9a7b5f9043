/*
 * The CUDA C++ dialect of kernels/<family>.cu, as plain C++17 for the SIMT emulator
 * (tests/emu/README.md). Included first in every kernel translation unit
 * (g++ -include sy_emu.h), and by the cuda_bf16.h shim beside it.
 *
 * Threads of a block are fibers on one OS thread (tests/emu/runtime.cpp);
 * blockIdx/threadIdx read the running fiber. __shared__ becomes `static`:
 * blocks run one after another, so a function-static array is exactly one
 * block's shared memory. Warp collectives (shuffles, ldmatrix, mma.sync)
 * suspend the lane until every live lane of its warp has arrived, then each
 * lane reads what the others deposited.
 */
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#define SY_EMU 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __constant__ static

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

namespace sy_emu {
/* The running fiber's coordinates. */
dim3 thread_idx();
dim3 block_idx();
dim3 block_dim();
dim3 grid_dim();
/* Dynamic shared memory of the running block (the launch's smem bytes). */
void* dynamic_smem();

/* Block barrier and warp collectives (every live lane of the warp calls them
 * with the same kind; a lane that exited early and is named in the mask is a
 * kernel bug and aborts the emulation). `words` (<= kSlotWords) 64-bit
 * values go in; the result holds every lane's deposit, lane l's at
 * [l * kSlotWords], valid until the caller's next-but-one collective. */
constexpr int kSlotWords = 16;
void syncthreads();
const uint64_t* warp_exchange(unsigned mask, const uint64_t* mine, int words);

/* Tensor-core and async-copy instructions, with PTX semantics. */
void mma_bf16_16816(float d[4], const uint32_t a[4], const uint32_t b[2]);
void ldmatrix(uint32_t* r, int count, bool trans, const void* row_addr);
void cp_async(void* smem, const void* gmem, int src_bytes);
void cp_async_commit();
void cp_async_wait(int pending);
}  // namespace sy_emu

#define threadIdx (::sy_emu::thread_idx())
#define blockIdx (::sy_emu::block_idx())
#define blockDim (::sy_emu::block_dim())
#define gridDim (::sy_emu::grid_dim())

inline void __syncthreads() { ::sy_emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    const uint64_t mine = 0;
    ::sy_emu::warp_exchange(mask, &mine, 1);
}

/* ---- vector types ---------------------------------------------------- */

struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) uint2 {
    unsigned x, y;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
struct alignas(8) int2 {
    int x, y;
};
struct alignas(16) int4 {
    int x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }

/* ---- integer min/max (CUDA overloads) --------------------------------- */

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }

/* ---- float intrinsics: IEEE round-to-nearest, never contracted --------- */
/* (tests/emu/build.sh compiles with -ffp-contract=off, as these require.) */

inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float rsqrtf(float a) { return 1.0f / std::sqrt(a); }
inline float __expf(float a) { return std::exp(a); }
inline float __logf(float a) { return std::log(a); }
inline float __saturatef(float a) { return a < 0.0f ? 0.0f : (a > 1.0f ? 1.0f : a); }

inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline int __float_as_int(float f) { return (int)__float_as_uint(f); }
inline float __int_as_float(int i) { return __uint_as_float((unsigned)i); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }
inline int __ffs(unsigned x) { return __builtin_ffs((int)x); }

/* ---- warp shuffles ------------------------------------------------------ */

namespace sy_emu {
template <class T>
inline uint64_t to_word(T v) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 64 bits");
    uint64_t w = 0;
    std::memcpy(&w, &v, sizeof(T));
    return w;
}
template <class T>
inline T from_word(uint64_t w) {
    T v;
    std::memcpy(&v, &w, sizeof(T));
    return v;
}
inline int lane_id() { return (int)((thread_idx().x + block_dim().x * (thread_idx().y + block_dim().y * thread_idx().z)) & 31); }
}  // namespace sy_emu

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    const uint64_t mine = ::sy_emu::to_word(v);
    const uint64_t* all = ::sy_emu::warp_exchange(mask, &mine, 1);
    const int lane = ::sy_emu::lane_id();
    const int base = lane & ~(width - 1);
    return ::sy_emu::from_word<T>(all[(base + (src & (width - 1))) * ::sy_emu::kSlotWords]);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    const uint64_t mine = ::sy_emu::to_word(v);
    const uint64_t* all = ::sy_emu::warp_exchange(mask, &mine, 1);
    const int lane = ::sy_emu::lane_id();
    const int src = lane ^ lane_mask;
    /* PTX: a source outside the lane's width segment returns its own value. */
    if ((src & ~(width - 1)) != (lane & ~(width - 1))) return v;
    return ::sy_emu::from_word<T>(all[src * ::sy_emu::kSlotWords]);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    const uint64_t mine = ::sy_emu::to_word(v);
    const uint64_t* all = ::sy_emu::warp_exchange(mask, &mine, 1);
    const int lane = ::sy_emu::lane_id();
    const int seg = lane & ~(width - 1);
    const int src = lane + (int)delta;
    if (src >= seg + width) return v;
    return ::sy_emu::from_word<T>(all[src * ::sy_emu::kSlotWords]);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    const uint64_t mine = ::sy_emu::to_word(v);
    const uint64_t* all = ::sy_emu::warp_exchange(mask, &mine, 1);
    const int lane = ::sy_emu::lane_id();
    const int seg = lane & ~(width - 1);
    const int src = lane - (int)delta;
    if (src < seg) return v;
    return ::sy_emu::from_word<T>(all[src * ::sy_emu::kSlotWords]);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    const uint64_t mine = pred ? 1 : 0;
    const uint64_t* all = ::sy_emu::warp_exchange(mask, &mine, 1);
    unsigned r = 0;
    for (int l = 0; l < 32; ++l)
        if ((mask >> l) & 1u) r |= (all[l * ::sy_emu::kSlotWords] ? 1u : 0u) << l;
    return r;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == mask; }
inline unsigned __match_any_sync(unsigned mask, int v) {
    const uint64_t mine = (uint64_t)(uint32_t)v;
    const uint64_t* all = ::sy_emu::warp_exchange(mask, &mine, 1);
    unsigned r = 0;
    for (int l = 0; l < 32; ++l)
        if (((mask >> l) & 1u) && all[l * ::sy_emu::kSlotWords] == mine) r |= 1u << l;
    return r;
}

/* ---- bf16 ---------------------------------------------------------------- */

struct __nv_bfloat16 {
    unsigned short x;
};
struct __nv_bfloat162 {
    __nv_bfloat16 x, y;
};

inline unsigned short sy_emu_f32_to_bf16_bits(float f) {
    const unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u); /* quiet NaN */
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {sy_emu_f32_to_bf16_bits(f)}; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return __uint_as_float((unsigned)b.x << 16); }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short s) { return {s}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.x; }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
    return {__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}
inline __nv_bfloat162 __float22bfloat162_rn(float2 f) { return __floats2bfloat162_rn(f.x, f.y); }
inline float __low2float(__nv_bfloat162 v) { return __bfloat162float(v.x); }
inline float __high2float(__nv_bfloat162 v) { return __bfloat162float(v.y); }
