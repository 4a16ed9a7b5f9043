/*
 * Shared device helpers: bf16 conversion, warp/block reductions, and the
 * tensor-core (mma.sync / ldmatrix / cp.async) wrappers used by the
 * matmul-class kernels.
 *
 * Determinism: every reduction here has a fixed shape (butterfly over the 32
 * lanes, then over warps in index order), so for a fixed launch shape the
 * result is the same bits on every run. No float atomics anywhere.
 */
#pragma once

#include <cuda_bf16.h>
#include <stdint.h>

#include "params.h"

#define SY_DEVICE __device__ __forceinline__

/* ---- bf16 ------------------------------------------------------------- */

SY_DEVICE __nv_bfloat16 sy_bf16(unsigned short bits) { return __ushort_as_bfloat16(bits); }
SY_DEVICE unsigned short sy_bits(__nv_bfloat16 x) { return __bfloat16_as_ushort(x); }
/* Round to nearest even, like the host's reference cast. */
SY_DEVICE unsigned short sy_f32_to_bf16_bits(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }
SY_DEVICE float sy_bf16_bits_to_f32(unsigned short bits) { return __bfloat162float(__ushort_as_bfloat16(bits)); }
/* Two floats into one 32-bit register of packed bf16 (lo in the low half). */
SY_DEVICE uint32_t sy_pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

/* ---- reductions ------------------------------------------------------- */

SY_DEVICE float sy_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

SY_DEVICE float sy_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/*
 * Sum over the whole block; every thread gets the result. `scratch` holds at
 * least 32 floats of shared memory. blockDim.x must be a multiple of 32.
 */
SY_DEVICE float sy_block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = sy_warp_sum(v);
    __syncthreads(); /* scratch may still be read by a previous call */
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < nwarps ? scratch[lane] : 0.0f;
    return sy_warp_sum(t);
}

SY_DEVICE float sy_block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = sy_warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < nwarps ? scratch[lane] : -INFINITY;
    return sy_warp_max(t);
}

/* ---- tensor cores (sm_80+) --------------------------------------------- */

/*
 * d = a * b + d for one m16n8k16 tile, bf16 inputs, fp32 accumulators.
 * Fragment layout (PTX ISA, "mma.m16n8k16"): with g = lane / 4, q = lane % 4,
 *   a[0]: (row g,   cols 2q..2q+1)     a[1]: (row g+8, cols 2q..2q+1)
 *   a[2]: (row g,   cols 2q+8..2q+9)   a[3]: (row g+8, cols 2q+8..2q+9)
 *   b[0]: (rows 2q..2q+1, col g)       b[1]: (rows 2q+8..2q+9, col g)
 *   d[0..1]: (row g, cols 2q..2q+1)    d[2..3]: (row g+8, cols 2q..2q+1)
 */
#if defined(SY_EMU)
/* The SIMT emulator (tests/emu/README.md) implements these instructions in
 * C++ with the PTX semantics of the asm versions below; kernels call the same
 * wrappers either way. */
SY_DEVICE void sy_mma_bf16_16816(float d[4], const uint32_t a[4], const uint32_t b[2]) { sy_emu::mma_bf16_16816(d, a, b); }
SY_DEVICE void sy_ldmatrix_x4(uint32_t r[4], const void* smem_row) { sy_emu::ldmatrix(r, 4, false, smem_row); }
SY_DEVICE void sy_ldmatrix_x4_trans(uint32_t r[4], const void* smem_row) { sy_emu::ldmatrix(r, 4, true, smem_row); }
SY_DEVICE void sy_ldmatrix_x2(uint32_t r[2], const void* smem_row) { sy_emu::ldmatrix(r, 2, false, smem_row); }
SY_DEVICE void sy_ldmatrix_x2_trans(uint32_t r[2], const void* smem_row) { sy_emu::ldmatrix(r, 2, true, smem_row); }
SY_DEVICE void sy_cp_async_16(void* smem, const void* gmem, bool valid) { sy_emu::cp_async(smem, gmem, valid ? 16 : 0); }
SY_DEVICE void sy_cp_async_commit() { sy_emu::cp_async_commit(); }
template <int N>
SY_DEVICE void sy_cp_async_wait() {
    sy_emu::cp_async_wait(N);
}
#define SY_DYNAMIC_SMEM(T, name) T* name = reinterpret_cast<T*>(::sy_emu::dynamic_smem())
#else
/* The launch's dynamic shared memory as a T* (16-byte aligned). */
#define SY_DYNAMIC_SMEM(T, name)                                 \
    extern __shared__ __align__(16) unsigned char sy_dyn_smem_[]; \
    T* name = reinterpret_cast<T*>(sy_dyn_smem_)
SY_DEVICE void sy_mma_bf16_16816(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

SY_DEVICE uint32_t sy_smem_addr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

/* Four 8x8 b16 matrices from shared memory; lane l supplies the row address
 * of row (l % 8) of matrix (l / 8). */
SY_DEVICE void sy_ldmatrix_x4(uint32_t r[4], const void* smem_row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(sy_smem_addr(smem_row)));
}

/* As sy_ldmatrix_x4, each 8x8 matrix transposed on the way. */
SY_DEVICE void sy_ldmatrix_x4_trans(uint32_t r[4], const void* smem_row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(sy_smem_addr(smem_row)));
}

SY_DEVICE void sy_ldmatrix_x2(uint32_t r[2], const void* smem_row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(sy_smem_addr(smem_row)));
}

SY_DEVICE void sy_ldmatrix_x2_trans(uint32_t r[2], const void* smem_row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(sy_smem_addr(smem_row)));
}

/* 16-byte global -> shared copy, zero-filled when !valid (ragged tails). */
SY_DEVICE void sy_cp_async_16(void* smem, const void* gmem, bool valid) {
    const int src_bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(sy_smem_addr(smem)), "l"(gmem),
                 "r"(src_bytes));
}
SY_DEVICE void sy_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
SY_DEVICE void sy_cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
#endif /* SY_EMU */

/* ---- fp32 helpers shared by the elementwise-class kernels -------------- */

SY_DEVICE bool sy_aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

/* W consecutive floats (W = 4: one float4 access, 16-byte aligned). */
template <int W>
struct SyFrag {
    float v[W];
};

template <int W>
SY_DEVICE SyFrag<W> sy_load(const float* p) {
    SyFrag<W> f;
    if constexpr (W == 4) {
        const float4 q = *reinterpret_cast<const float4*>(p);
        f.v[0] = q.x;
        f.v[1] = q.y;
        f.v[2] = q.z;
        f.v[3] = q.w;
    } else {
#pragma unroll
        for (int k = 0; k < W; ++k) f.v[k] = p[k];
    }
    return f;
}

template <int W>
SY_DEVICE void sy_store(float* p, const SyFrag<W>& f) {
    if constexpr (W == 4) {
        *reinterpret_cast<float4*>(p) = make_float4(f.v[0], f.v[1], f.v[2], f.v[3]);
    } else {
#pragma unroll
        for (int k = 0; k < W; ++k) p[k] = f.v[k];
    }
}

/* The CPU reference's exp (src/backend/cpu/fastmath.rs), operation for
 * operation, so fp32 kernels match it within 1e-5 where libm's expf would
 * not: clamp to [-87.3, 88.3] (NaN passes through), Cody-Waite reduction
 * x = n ln2 + r, degree-7 Horner with FMA, 2^n from the exponent bits.
 * Never returns 0 or inf; -inf maps to ~1.2e-38. Constants are spelled as
 * the Rust source spells them. */
namespace sy_ref {
constexpr float kLog2e = 1.44269504088896340736f;
constexpr float kLn2Hi = 0.69314575f;
constexpr float kLn2Lo = 1.4286068e-6f;
constexpr float kMagic = 12582912.0f; /* 1.5 * 2^23: round to nearest integer by adding */
}  // namespace sy_ref

SY_DEVICE float sy_ref_exp(float x) {
    using namespace sy_ref;
    x = x < -87.3f ? -87.3f : x;
    x = x > 88.3f ? 88.3f : x;
    const float n = __fsub_rn(__fadd_rn(__fmul_rn(x, kLog2e), kMagic), kMagic);
    const float r = __fsub_rn(__fsub_rn(x, __fmul_rn(n, kLn2Hi)), __fmul_rn(n, kLn2Lo));
    float q = 1.0f / 5040.0f;
    q = __fmaf_rn(q, r, 1.0f / 720.0f);
    q = __fmaf_rn(q, r, 1.0f / 120.0f);
    q = __fmaf_rn(q, r, 1.0f / 24.0f);
    q = __fmaf_rn(q, r, 1.0f / 6.0f);
    q = __fmaf_rn(q, r, 0.5f);
    q = __fmaf_rn(q, r, 1.0f);
    q = __fmaf_rn(q, r, 1.0f);
    const unsigned biased = __float_as_uint(__fadd_rn(n, 127.0f + 8388608.0f)) - 0x4B000000u;
    return __fmul_rn(q, __uint_as_float(biased << 23));
}

/* ---- GELU (tanh), operation for operation as the CPU reference --------- */
/* src/backend/cpu/activation.rs; see kernels/activation.cu for why it must be
 * exact. Used by the activation kernels and the expert GEMM epilogues. */

/* f32 constants as src/backend/cpu/activation.rs spells them (exp: sy_ref_exp above). */
constexpr float kSyS2pi = 0.7978846f; /* sqrt(2 / pi) */
constexpr float kSyC3 = 0.044715f;
constexpr float kSyC3x3 = 3.0f * kSyC3; /* folded in f32, as Rust's `3.0 * C3 * x * x` */

/* fastmath::tanh: sign(x) (1 - t) / (1 + t), t = e^{-2|x|}. */
SY_DEVICE float sy_ref_tanh(float x) {
    const float t = sy_ref_exp(-2.0f * fabsf(x));
    return copysignf(__fdiv_rn(__fsub_rn(1.0f, t), __fadd_rn(1.0f, t)), x);
}

/* u = S2PI * (x + ((C3 * x) * x) * x) */
SY_DEVICE float sy_gelu_arg(float x) {
    return __fmul_rn(kSyS2pi, __fadd_rn(x, __fmul_rn(__fmul_rn(__fmul_rn(kSyC3, x), x), x)));
}

/* 0.5 * x * (1 + tanh(u)) */
SY_DEVICE float sy_gelu(float x) {
    return __fmul_rn(__fmul_rn(0.5f, x), __fadd_rn(1.0f, sy_ref_tanh(sy_gelu_arg(x))));
}

/* 0.5 (1 + th) + 0.5 x sech2 S2PI (1 + 3 C3 x x), left to right as in Rust. */
SY_DEVICE float sy_gelu_grad(float x) {
    const float th = sy_ref_tanh(sy_gelu_arg(x));
    const float sech2 = __fsub_rn(1.0f, __fmul_rn(th, th));
    const float a = __fmul_rn(0.5f, __fadd_rn(1.0f, th));
    const float poly = __fadd_rn(1.0f, __fmul_rn(__fmul_rn(kSyC3x3, x), x));
    const float b = __fmul_rn(__fmul_rn(__fmul_rn(__fmul_rn(0.5f, x), sech2), kSyS2pi), poly);
    return __fadd_rn(a, b);
}

/* Grid-stride loop over [0, n). */
#define SY_FOR_EACH(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)
