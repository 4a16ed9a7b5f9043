/*
 * Optim family: the global gradient norm (deterministic sum of squares, two
 * launches) and one fused AdamW step with the clip scale read on the device.
 *
 * Shapes: g, grad, param, m, v: [n]; param_bf16: [n] bf16 bits or NULL;
 * acc, norm_sq: [1]; partial: [ceil(n / chunk)] scratch.
 *
 *   optim_sum_squares_partial: partial[blk] = f32(sum of g[i]^2 over
 *                              i in [blk*chunk, min((blk+1)*chunk, n)))        (=)
 *   optim_sum_squares_finish:  acc[0] += f32(sum over blk of partial[blk])      (+=)
 *   optim_adamw:               s = clip scale from norm_sq[0] (below);
 *                              g = grad * s
 *                              m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g g  (=, in place)
 *                              param -= lr (m / bc1 / (sqrt(v / bc2) + eps) + wd param)
 *                              param_bf16 = bf16_rne(param) when non-NULL        (=)
 *
 * Precision: the squares are summed in f64 (each g^2 is exact in f64), as the
 * CPU reference does (src/backend/cpu/optim.rs); partials are stored as f32
 * (the scratch is f32) and added in f64 again by the finish, so the norm is
 * within ~1e-7 relative of the CPU's. Within a block the f64 sum is a fixed
 * tree (per-thread strided sums, warp butterflies, warps in index order), so
 * a fixed launch gives the same bits on every run.
 * AdamW is fp32 with exactly the CPU's operations in the CPU's order (the
 * __f*_rn intrinsics stop FMA contraction), including the clip scale:
 *   norm = sqrt(norm_sq[0]); s = (max_norm > 0 && norm > max_norm) ? max_norm / norm : 1.
 * Given the same bias_corr1/2 values the update is the CPU's bit for bit.
 *
 * Vector path: float4 (and 4 packed bf16) when all the arrays are aligned
 * (16 bytes; 8 for param_bf16), chosen at run time, grid-uniform.
 *
 * Launch:
 *   kernel                     grid                             block  smem
 *   optim_sum_squares_partial  ceil(n / chunk)                  256    0   (256 B static)
 *   optim_sum_squares_finish   1                                256    0   (256 B static)
 *   optim_adamw                clamp(ceil(n / 256), 1, 65535)   256    0
 * sum_squares_partial: grid exactly ceil(n / chunk), chunk >= 1 (16384
 * suggested: 64 floats per thread). Both sum-of-squares kernels need block =
 * 256 exactly (the result depends on the block shape); the finish needs a
 * single block. adamw is grid-stride: any grid >= 1 is correct.
 */
#include "common.cuh"

/* Threads per block: memory bound; 256 is the fixed reduction shape of the
 * sum of squares (changing it changes the bits of the norm). */
constexpr int kBlock = 256;

static __device__ __forceinline__ bool aligned_to(const void* p, unsigned bytes) {
    return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0;
}

/* Sum over the block in f64; every thread gets the result. `scratch`: 32
 * doubles of shared memory. blockDim.x must be a multiple of 32. */
static __device__ __forceinline__ double block_sum_f64(double v, double* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    double t = lane < nwarps ? scratch[lane] : 0.0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
    return t;
}

static __device__ __forceinline__ double sq(float x) {
    const double d = x;
    return d * d; /* exact: a 24-bit mantissa squared fits in 53 bits */
}

extern "C" __global__ void __launch_bounds__(kBlock) optim_sum_squares_partial(SumSquaresParams p) {
    __shared__ double scratch[32];
    const long long base = (long long)blockIdx.x * p.chunk;
    const long long len = min((long long)p.chunk, p.n - base);
    const float* g = p.g + base;
    double s = 0.0;
    long long head = 0;
    if ((p.chunk & 3) == 0 && aligned_to(p.g, 16)) { /* then every chunk start is aligned */
        const long long len4 = len >> 2;
        const float4* g4 = reinterpret_cast<const float4*>(g);
        for (long long i = threadIdx.x; i < len4; i += blockDim.x) {
            const float4 q = g4[i];
            s += sq(q.x);
            s += sq(q.y);
            s += sq(q.z);
            s += sq(q.w);
        }
        head = len4 << 2;
    }
    for (long long i = head + threadIdx.x; i < len; i += blockDim.x) s += sq(g[i]);
    s = block_sum_f64(s, scratch);
    if (threadIdx.x == 0) p.partial[blockIdx.x] = (float)s;
}

extern "C" __global__ void __launch_bounds__(kBlock) optim_sum_squares_finish(SumSquaresParams p) {
    __shared__ double scratch[32];
    const long long nblk = (p.n + p.chunk - 1) / p.chunk;
    double s = 0.0;
    for (long long i = threadIdx.x; i < nblk; i += blockDim.x) s += (double)p.partial[i];
    s = block_sum_f64(s, scratch);
    if (threadIdx.x == 0) p.acc[0] += (float)s;
}

/* The step's constants, shared by every element. */
struct AdamWStep {
    float scale, beta1, beta2, omb1, omb2, lr, eps, wd, bc1, bc2;
};

/* One element, operation for operation as src/backend/cpu/optim.rs. */
static __device__ __forceinline__ void adamw_one(const AdamWStep& h, float& param, float& m, float& v, float grad) {
    const float g = __fmul_rn(grad, h.scale);
    m = __fadd_rn(__fmul_rn(h.beta1, m), __fmul_rn(h.omb1, g));
    v = __fadd_rn(__fmul_rn(h.beta2, v), __fmul_rn(__fmul_rn(h.omb2, g), g));
    const float mhat = __fdiv_rn(m, h.bc1);
    const float vhat = __fdiv_rn(v, h.bc2);
    const float upd = __fadd_rn(__fdiv_rn(mhat, __fadd_rn(__fsqrt_rn(vhat), h.eps)), __fmul_rn(h.wd, param));
    param = __fsub_rn(param, __fmul_rn(h.lr, upd));
}

extern "C" __global__ void __launch_bounds__(kBlock) optim_adamw(AdamWParams p) {
    AdamWStep h;
    const float norm = __fsqrt_rn(p.norm_sq[0]);
    h.scale = (p.max_norm > 0.0f && norm > p.max_norm) ? __fdiv_rn(p.max_norm, norm) : 1.0f;
    h.beta1 = p.beta1;
    h.beta2 = p.beta2;
    h.omb1 = __fsub_rn(1.0f, p.beta1);
    h.omb2 = __fsub_rn(1.0f, p.beta2);
    h.lr = p.lr;
    h.eps = p.eps;
    h.wd = p.weight_decay;
    h.bc1 = p.bias_corr1;
    h.bc2 = p.bias_corr2;

    unsigned short* pb = p.param_bf16;
    long long head = 0;
    if (aligned_to(p.param, 16) && aligned_to(p.m, 16) && aligned_to(p.v, 16) && aligned_to(p.grad, 16) &&
        aligned_to(pb, 8)) { /* NULL is aligned */
        const long long n4 = p.n >> 2;
        float4* p4 = reinterpret_cast<float4*>(p.param);
        float4* m4 = reinterpret_cast<float4*>(p.m);
        float4* v4 = reinterpret_cast<float4*>(p.v);
        const float4* g4 = reinterpret_cast<const float4*>(p.grad);
        SY_FOR_EACH(i, n4) {
            float4 w = p4[i], mm = m4[i], vv = v4[i];
            const float4 g = g4[i];
            adamw_one(h, w.x, mm.x, vv.x, g.x);
            adamw_one(h, w.y, mm.y, vv.y, g.y);
            adamw_one(h, w.z, mm.z, vv.z, g.z);
            adamw_one(h, w.w, mm.w, vv.w, g.w);
            p4[i] = w;
            m4[i] = mm;
            v4[i] = vv;
            if (pb != nullptr)
                reinterpret_cast<uint2*>(pb)[i] = make_uint2(sy_pack_bf16x2(w.x, w.y), sy_pack_bf16x2(w.z, w.w));
        }
        head = n4 << 2;
    }
    SY_FOR_EACH(j, p.n - head) {
        const long long i = head + j;
        float w = p.param[i], mm = p.m[i], vv = p.v[i];
        adamw_one(h, w, mm, vv, p.grad[i]);
        p.param[i] = w;
        p.m[i] = mm;
        p.v[i] = vv;
        if (pb != nullptr) pb[i] = sy_f32_to_bf16_bits(w);
    }
}
