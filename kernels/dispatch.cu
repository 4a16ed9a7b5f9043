/*
 * Dispatch family: permute token rows into expert-contiguous rows and
 * combine expert outputs back, weighted by the gates, forward and backward.
 * The CPU oracle is src/backend/cpu/dispatch.rs.
 *
 * Shapes (params.h, DispatchParams): token order [n, d], dispatched rows
 * [n_rows, d] (n_rows = n*k allocated, the first offsets[e] used); row and
 * gate [n*k] by assignment a = t*k + j; row_assign [n_rows] by row.
 *
 *   dispatch_fwd          xe[r] = x[row_assign[r] / k] (=), rows with no
 *                         assignment untouched; optional bf16 copy (the
 *                         expert GEMM's operand, so no separate cast pass).
 *   dispatch_bwd          dx[t] += dxe[row[a]] for a = t*k + j, j ascending.
 *   dispatch_combine_fwd  out[t] = sum_j gate[a] * ye[row[a]] (=), j ascending,
 *                         dropped a skipped: a token with none kept gets 0.
 *   dispatch_combine_bwd  dye[row[a]] = gate[a] * dout[t] (=) (+ bf16 copy),
 *                         dgate[a] = <dout[t], ye[row[a]]> (=), 0 if dropped.
 *
 * Every kernel is a gather: one warp owns one output row (a dispatched row,
 * a token, or an assignment) and reads fixed inputs in a fixed order, so the
 * results are bitwise reproducible. dispatch_fwd, dispatch_bwd,
 * combine_fwd and the dye half of combine_bwd are the CPU's bits exactly
 * (copies, and adds/multiplies in the same order with __f*_rn so nvcc cannot
 * contract them into FMAs); dgate sums each lane's strided products and then
 * a fixed butterfly, so it matches the CPU's sequential dot to rounding.
 *
 * Vector path: float4 when d % 4 == 0 and the base pointers are 16-byte
 * aligned, chosen uniformly for the grid; results do not depend on it.
 *
 * Launch: every kernel is one warp per row, 8 rows per 256-thread block:
 *   dispatch_fwd          grid ceil(n_rows / 8)    block 256  smem 0
 *   dispatch_bwd          grid ceil(n / 8)         block 256  smem 0
 *   dispatch_combine_fwd  grid ceil(n / 8)         block 256  smem 0
 *   dispatch_combine_bwd  grid ceil(n*k / 8)       block 256  smem 0
 */
#include "common.cuh"

constexpr int kBlock = 256;
constexpr int kRowsPerBlock = kBlock / 32;

static __device__ __forceinline__ long long warp_row() {
    return (long long)blockIdx.x * kRowsPerBlock + (threadIdx.x >> 5);
}

/* bf16 copies of W consecutive floats (W = 4: one 8-byte store). */
template <int W>
static __device__ __forceinline__ void store_bf16(unsigned short* dst, const SyFrag<W>& f) {
    if constexpr (W == 4) {
        *reinterpret_cast<uint2*>(dst) = make_uint2(sy_pack_bf16x2(f.v[0], f.v[1]), sy_pack_bf16x2(f.v[2], f.v[3]));
    } else {
#pragma unroll
        for (int i = 0; i < W; ++i) dst[i] = sy_f32_to_bf16_bits(f.v[i]);
    }
}

template <int W>
static __device__ __forceinline__ void dispatch_row(const DispatchParams& p, long long r) {
    const int a = p.row_assign[r];
    if (a < 0) return;
    const float* src = p.src + (long long)(a / p.k) * p.d;
    float* dst = p.out + r * p.d;
    for (int c = (threadIdx.x & 31) * W; c < p.d; c += 32 * W) {
        const SyFrag<W> v = sy_load<W>(src + c);
        sy_store<W>(dst + c, v);
        if (p.out_bf16) store_bf16<W>(p.out_bf16 + r * p.d + c, v);
    }
}

extern "C" __global__ void __launch_bounds__(kBlock) dispatch_fwd(DispatchParams p) {
    const long long r = warp_row();
    if (r >= p.n_rows) return;
    const bool vec = (p.d & 3) == 0 && sy_aligned16(p.out) && sy_aligned16(p.src) &&
                     (p.out_bf16 == nullptr || (reinterpret_cast<uintptr_t>(p.out_bf16) & 7) == 0);
    if (vec)
        dispatch_row<4>(p, r);
    else
        dispatch_row<1>(p, r);
}

template <int W>
static __device__ __forceinline__ void dispatch_bwd_row(const DispatchParams& p, long long t) {
    const int* rows = p.row + t * p.k;
    float* dst = p.out + t * p.d;
    for (int c = (threadIdx.x & 31) * W; c < p.d; c += 32 * W) {
        SyFrag<W> acc = sy_load<W>(dst + c);
        for (int j = 0; j < p.k; ++j) {
            const int r = rows[j];
            if (r < 0) continue;
            const SyFrag<W> g = sy_load<W>(p.src + (long long)r * p.d + c);
#pragma unroll
            for (int i = 0; i < W; ++i) acc.v[i] = __fadd_rn(acc.v[i], g.v[i]);
        }
        sy_store<W>(dst + c, acc);
    }
}

extern "C" __global__ void __launch_bounds__(kBlock) dispatch_bwd(DispatchParams p) {
    const long long t = warp_row();
    if (t >= p.n) return;
    if ((p.d & 3) == 0 && sy_aligned16(p.out) && sy_aligned16(p.src))
        dispatch_bwd_row<4>(p, t);
    else
        dispatch_bwd_row<1>(p, t);
}

template <int W>
static __device__ __forceinline__ void combine_row(const DispatchParams& p, long long t) {
    const int* rows = p.row + t * p.k;
    const float* gates = p.gate + t * p.k;
    float* dst = p.out + t * p.d;
    for (int c = (threadIdx.x & 31) * W; c < p.d; c += 32 * W) {
        SyFrag<W> acc;
#pragma unroll
        for (int i = 0; i < W; ++i) acc.v[i] = 0.0f;
        for (int j = 0; j < p.k; ++j) {
            const int r = rows[j];
            if (r < 0) continue;
            const float g = gates[j];
            const SyFrag<W> y = sy_load<W>(p.src + (long long)r * p.d + c);
#pragma unroll
            for (int i = 0; i < W; ++i) acc.v[i] = __fadd_rn(acc.v[i], __fmul_rn(g, y.v[i]));
        }
        sy_store<W>(dst + c, acc);
    }
}

extern "C" __global__ void __launch_bounds__(kBlock) dispatch_combine_fwd(DispatchParams p) {
    const long long t = warp_row();
    if (t >= p.n) return;
    if ((p.d & 3) == 0 && sy_aligned16(p.out) && sy_aligned16(p.src))
        combine_row<4>(p, t);
    else
        combine_row<1>(p, t);
}

template <int W>
static __device__ __forceinline__ void combine_bwd_row(const DispatchParams& p, long long a) {
    const int r = p.row[a];
    const int lane = threadIdx.x & 31;
    if (r < 0) {
        if (lane == 0) p.dgate[a] = 0.0f;
        return;
    }
    const float g = p.gate[a];
    const float* dout = p.src + (a / p.k) * p.d;
    const float* ye = p.ye + (long long)r * p.d;
    float* dye = p.out + (long long)r * p.d;
    float dot = 0.0f;
    for (int c = lane * W; c < p.d; c += 32 * W) {
        const SyFrag<W> dy = sy_load<W>(dout + c);
        const SyFrag<W> y = sy_load<W>(ye + c);
        SyFrag<W> o;
#pragma unroll
        for (int i = 0; i < W; ++i) {
            o.v[i] = __fmul_rn(g, dy.v[i]);
            dot = __fadd_rn(dot, __fmul_rn(dy.v[i], y.v[i]));
        }
        sy_store<W>(dye + c, o);
        if (p.out_bf16) store_bf16<W>(p.out_bf16 + (long long)r * p.d + c, o);
    }
    dot = sy_warp_sum(dot);
    if (lane == 0) p.dgate[a] = dot;
}

extern "C" __global__ void __launch_bounds__(kBlock) dispatch_combine_bwd(DispatchParams p) {
    const long long a = warp_row();
    if (a >= (long long)p.n * p.k) return;
    const bool vec = (p.d & 3) == 0 && sy_aligned16(p.out) && sy_aligned16(p.src) && sy_aligned16(p.ye) &&
                     (p.out_bf16 == nullptr || (reinterpret_cast<uintptr_t>(p.out_bf16) & 7) == 0);
    if (vec)
        combine_bwd_row<4>(p, a);
    else
        combine_bwd_row<1>(p, a);
}
