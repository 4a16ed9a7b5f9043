/*
 * Elementwise family: the residual add and the fp32 <-> bf16 casts.
 *
 * Nothing is fused; these are the plain memory-bound helpers the backend
 * needs between the fused kernels.
 *
 *   elementwise_add:           a[i] += b[i]          (+=)  fp32, a, b: [n]
 *   elementwise_cast_f32_bf16: dst[i] = bf16(src[i]) (=)   round to nearest even
 *   elementwise_cast_bf16_f32: dst[i] = f32(src[i])  (=)   exact
 *
 * Precision: one rounding at most (the cast to bf16, __float2bfloat16_rn:
 * NaN stays NaN, overflow rounds to inf as the host cast does).
 *
 * Vector path: when every pointer is 16-byte aligned (8 for bf16 arrays:
 * four bf16) the kernels move 4 elements per thread per step with one
 * float4 / uint2 access and finish the (< 4) tail scalar. The choice is made
 * at run time from the addresses, uniformly for the whole grid. No
 * reductions, so the result never depends on the launch shape.
 *
 * Launch (every kernel; grid-stride, so any grid >= 1 is correct):
 *   kernel                       grid                              block  smem
 *   elementwise_add              clamp(ceil(n / 256), 1, 65535)    256    0
 *   elementwise_cast_f32_bf16    clamp(ceil(n / 256), 1, 65535)    256    0
 *   elementwise_cast_bf16_f32    clamp(ceil(n / 256), 1, 65535)    256    0
 * (ceil(n / 1024) blocks would already give every thread one 4-wide step;
 * the larger grid is harmless: the surplus threads exit at once.)
 */
#include "common.cuh"

/* Threads per block: memory bound, so any multiple of 128 reaches bandwidth
 * once the grid covers the SMs; 256 matches the launcher's BLOCK. */
constexpr int kBlock = 256;

static __device__ __forceinline__ bool aligned_to(const void* p, unsigned bytes) {
    return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0;
}

extern "C" __global__ void __launch_bounds__(kBlock) elementwise_add(AddParams p) {
    float* a = p.a;
    const float* b = p.b;
    long long head = 0; /* elements handled by the vector loop */
    if (aligned_to(a, 16) && aligned_to(b, 16)) {
        const long long n4 = p.n >> 2;
        float4* a4 = reinterpret_cast<float4*>(a);
        const float4* b4 = reinterpret_cast<const float4*>(b);
        SY_FOR_EACH(i, n4) {
            float4 x = a4[i];
            const float4 y = b4[i];
            x.x += y.x;
            x.y += y.y;
            x.z += y.z;
            x.w += y.w;
            a4[i] = x;
        }
        head = n4 << 2;
    }
    SY_FOR_EACH(i, p.n - head) a[head + i] += b[head + i];
}

extern "C" __global__ void __launch_bounds__(kBlock) elementwise_cast_f32_bf16(CastBf16Params p) {
    unsigned short* dst = p.dst;
    const float* src = p.src;
    long long head = 0;
    if (aligned_to(dst, 8) && aligned_to(src, 16)) {
        const long long n4 = p.n >> 2;
        const float4* s4 = reinterpret_cast<const float4*>(src);
        uint2* d4 = reinterpret_cast<uint2*>(dst);
        SY_FOR_EACH(i, n4) {
            const float4 x = s4[i];
            /* Lower address in the low half: little-endian packing. */
            d4[i] = make_uint2(sy_pack_bf16x2(x.x, x.y), sy_pack_bf16x2(x.z, x.w));
        }
        head = n4 << 2;
    }
    SY_FOR_EACH(i, p.n - head) dst[head + i] = sy_f32_to_bf16_bits(src[head + i]);
}

extern "C" __global__ void __launch_bounds__(kBlock) elementwise_cast_bf16_f32(CastF32Params p) {
    float* dst = p.dst;
    const unsigned short* src = p.src;
    long long head = 0;
    if (aligned_to(dst, 16) && aligned_to(src, 8)) {
        const long long n4 = p.n >> 2;
        const uint2* s4 = reinterpret_cast<const uint2*>(src);
        float4* d4 = reinterpret_cast<float4*>(dst);
        SY_FOR_EACH(i, n4) {
            const uint2 v = s4[i];
            /* bf16 -> f32 is a 16-bit shift of the bit pattern: exact. */
            d4[i] = make_float4(__uint_as_float(v.x << 16), __uint_as_float(v.x & 0xffff0000u),
                                __uint_as_float(v.y << 16), __uint_as_float(v.y & 0xffff0000u));
        }
        head = n4 << 2;
    }
    SY_FOR_EACH(i, p.n - head) dst[head + i] = sy_bf16_bits_to_f32(src[head + i]);
}
