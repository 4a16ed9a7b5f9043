/*
 * Norm family: LayerNorm over the last dimension with affine weight and
 * bias, forward and a deterministic (atomic-free) backward.
 *
 * Shapes: x, out, dout, dx: [rows, c]; w, b, dw, db: [c]; mean, rstd: [rows];
 * partial: [nblk, 2c] scratch with nblk = ceil(rows / chunk_rows).
 *
 *   norm_layernorm_fwd:  mean[r] = sum(x[r]) / c                         (=)
 *                        rstd[r] = 1 / sqrt(sum((x[r] - mean)^2) / c + eps) (=)
 *                        out[r] = (x[r] - mean) * rstd * w + b          (=)
 *   norm_layernorm_bwd:  with g = dout * w, xhat = (x - mean) * rstd:
 *                        dx[r] += rstd * (g - mean(g) - xhat * mean(g * xhat))  (+=)
 *                        partial[blk, j]     = sum over the chunk's rows, in order, of
 *                                              dout * (x - mean) * rstd            (=)
 *                        partial[blk, c + j] = the same sum of dout                (=)
 *   norm_layernorm_bwd_finish: dw[j] += sum_blk partial[blk, j],
 *                        db[j] += sum_blk partial[blk, c + j]   (sum from 0, blk in order, then +=)
 *
 * Precision: fp32 statistics and accumulation (DESIGN.md §3). The two-pass
 * variance (mean first, then the mean of squared deviations) is the CPU's
 * formula (src/backend/cpu/norm.rs). Row sums are warp butterflies, so mean,
 * rstd and dx differ from the CPU's 8-lane sums by rounding only. dw and db
 * use exactly the CPU's operations and order (each chunk's rows in order from
 * 0, chunks in order into a zeroed sum, then added to dw/db): with
 * chunk_rows = 64 (REDUCE_CHUNK, src/backend/cpu/mod.rs) they are the CPU's
 * bit for bit. The __f*_rn intrinsics pin the CPU's evaluation order where
 * nvcc would otherwise contract into FMA.
 *
 * Vector path: the per-row loops use float4 when c % 4 == 0 and the row
 * pointers' bases are 16-byte aligned (chosen at run time, grid-uniform).
 * dx must not alias dout or x (the column pass rereads them).
 *
 * Launch:
 *   kernel                      grid                      block  smem
 *   norm_layernorm_fwd          ceil(rows / 8)            256    0     (one warp per row)
 *   norm_layernorm_bwd          ceil(rows / chunk_rows)   256    0     (one block per chunk)
 *   norm_layernorm_bwd_finish   ceil(c / 256)             256    0     (one thread per column)
 * norm_layernorm_fwd needs block = 256 exactly (8 rows per block).
 * norm_layernorm_bwd: grid must be exactly ceil(rows / chunk_rows), chunk_rows >= 1;
 * any block that is a multiple of 32 is correct, and the results do not depend on it.
 * norm_layernorm_bwd_finish loops over columns with a grid stride (any grid >= 1).
 */
#include "common.cuh"

/* One warp per row, 8 rows per block: rows of a few thousand floats are
 * reread from L1 for the three passes; 8 warps keep enough rows in flight. */
constexpr int kRowsPerBlock = 8;
constexpr int kBlock = 32 * kRowsPerBlock;

static __device__ __forceinline__ bool aligned16(const void* p) {
    return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

/* W consecutive floats (W = 4: one float4 access, 16-byte aligned). */
template <int W>
struct Frag {
    float v[W];
};

template <int W>
static __device__ __forceinline__ Frag<W> load(const float* p) {
    Frag<W> f;
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
static __device__ __forceinline__ void store(float* p, const Frag<W>& f) {
    if constexpr (W == 4) {
        *reinterpret_cast<float4*>(p) = make_float4(f.v[0], f.v[1], f.v[2], f.v[3]);
    } else {
#pragma unroll
        for (int k = 0; k < W; ++k) p[k] = f.v[k];
    }
}

/* ---- forward ---------------------------------------------------------------- */

/* One row by one warp; W = 4 needs c % 4 == 0 and aligned bases. */
template <int W>
static __device__ __forceinline__ void layernorm_row(const LayerNormParams& p, int row, int lane) {
    const int c = p.c;
    const float* x = p.x + (long long)row * c;
    float s = 0.0f;
    for (int i = lane * W; i < c; i += 32 * W) {
        const Frag<W> v = load<W>(x + i);
#pragma unroll
        for (int k = 0; k < W; ++k) s += v.v[k];
    }
    const float mu = __fdiv_rn(sy_warp_sum(s), (float)c);
    float ss = 0.0f;
    for (int i = lane * W; i < c; i += 32 * W) {
        const Frag<W> v = load<W>(x + i);
#pragma unroll
        for (int k = 0; k < W; ++k) {
            const float d = __fsub_rn(v.v[k], mu);
            ss = __fmaf_rn(d, d, ss);
        }
    }
    const float var = __fdiv_rn(sy_warp_sum(ss), (float)c);
    const float rs = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, p.eps)));
    float* out = p.out + (long long)row * c;
    for (int i = lane * W; i < c; i += 32 * W) {
        Frag<W> v = load<W>(x + i);
        const Frag<W> w = load<W>(p.w + i);
        const Frag<W> b = load<W>(p.b + i);
#pragma unroll
        for (int k = 0; k < W; ++k)
            v.v[k] = __fadd_rn(__fmul_rn(__fmul_rn(__fsub_rn(v.v[k], mu), rs), w.v[k]), b.v[k]);
        store<W>(out + i, v);
    }
    if (lane == 0) {
        p.mean[row] = mu;
        p.rstd[row] = rs;
    }
}

extern "C" __global__ void __launch_bounds__(kBlock) norm_layernorm_fwd(LayerNormParams p) {
    const int row = blockIdx.x * kRowsPerBlock + (threadIdx.x >> 5);
    if (row >= p.rows) return; /* whole warp: no block barrier below */
    const int lane = threadIdx.x & 31;
    if ((p.c & 3) == 0 && aligned16(p.x) && aligned16(p.out) && aligned16(p.w) && aligned16(p.b))
        layernorm_row<4>(p, row, lane);
    else
        layernorm_row<1>(p, row, lane);
}

/* ---- backward --------------------------------------------------------------- */

/* dx[row] += rstd * (g - mean(g) - xhat * mean(g * xhat)), one warp. */
template <int W>
static __device__ __forceinline__ void layernorm_dx_row(const LayerNormBwdParams& p, int row, int lane) {
    const int c = p.c;
    const long long off = (long long)row * c;
    const float* x = p.x + off;
    const float* go = p.dout + off;
    const float mu = p.mean[row], rs = p.rstd[row];
    float sg = 0.0f, sgx = 0.0f;
    for (int i = lane * W; i < c; i += 32 * W) {
        const Frag<W> xv = load<W>(x + i);
        const Frag<W> gv = load<W>(go + i);
        const Frag<W> wv = load<W>(p.w + i);
#pragma unroll
        for (int k = 0; k < W; ++k) {
            const float g = __fmul_rn(gv.v[k], wv.v[k]);
            const float xh = __fmul_rn(__fsub_rn(xv.v[k], mu), rs);
            sg += g;
            sgx = __fmaf_rn(g, xh, sgx);
        }
    }
    const float mean_g = __fdiv_rn(sy_warp_sum(sg), (float)c);
    const float mean_gx = __fdiv_rn(sy_warp_sum(sgx), (float)c);
    float* dx = p.dx + off;
    for (int i = lane * W; i < c; i += 32 * W) {
        const Frag<W> xv = load<W>(x + i);
        const Frag<W> gv = load<W>(go + i);
        const Frag<W> wv = load<W>(p.w + i);
        Frag<W> d = load<W>(dx + i);
#pragma unroll
        for (int k = 0; k < W; ++k) {
            const float g = __fmul_rn(gv.v[k], wv.v[k]);
            const float xh = __fmul_rn(__fsub_rn(xv.v[k], mu), rs);
            const float t = __fsub_rn(__fsub_rn(g, mean_g), __fmul_rn(xh, mean_gx));
            d.v[k] = __fadd_rn(d.v[k], __fmul_rn(rs, t));
        }
        store<W>(dx + i, d);
    }
}

extern "C" __global__ void __launch_bounds__(kBlock) norm_layernorm_bwd(LayerNormBwdParams p) {
    const int blk = blockIdx.x;
    const int r0 = blk * p.chunk_rows;
    const int r1 = min(r0 + p.chunk_rows, p.rows);
    const int c = p.c;
    const int lane = threadIdx.x & 31;
    const int nwarps = blockDim.x >> 5;

    /* dx: one warp per row of the chunk. */
    const bool vec = (c & 3) == 0 && aligned16(p.x) && aligned16(p.dout) && aligned16(p.w) && aligned16(p.dx);
    for (int r = r0 + (threadIdx.x >> 5); r < r1; r += nwarps) {
        if (vec)
            layernorm_dx_row<4>(p, r, lane);
        else
            layernorm_dx_row<1>(p, r, lane);
    }

    /* dw, db partials: one thread per column, the chunk's rows in order, as
     * the CPU's `pw[i] += gr[i] * (xr[i] - mu) * rs; pb[i] += gr[i]`. */
    float* pw = p.partial + (long long)blk * 2 * c;
    float* pb = pw + c;
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        float sw = 0.0f, sb = 0.0f;
        const float* x = p.x + (long long)r0 * c + j;
        const float* go = p.dout + (long long)r0 * c + j;
#pragma unroll 4
        for (int r = r0; r < r1; ++r, x += c, go += c) {
            const float g = *go;
            sw = __fadd_rn(sw, __fmul_rn(__fmul_rn(g, __fsub_rn(*x, p.mean[r])), p.rstd[r]));
            sb += g;
        }
        pw[j] = sw;
        pb[j] = sb;
    }
}

extern "C" __global__ void __launch_bounds__(kBlock) norm_layernorm_bwd_finish(LayerNormBwdParams p) {
    const int c = p.c;
    const int nblk = (p.rows + p.chunk_rows - 1) / p.chunk_rows;
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < c; j += gridDim.x * blockDim.x) {
        float sw = 0.0f, sb = 0.0f;
        const float* s = p.partial + j;
#pragma unroll 4
        for (int b = 0; b < nblk; ++b, s += 2LL * c) {
            sw += s[0];
            sb += s[c];
        }
        p.dw[j] += sw;
        p.db[j] += sb;
    }
}
