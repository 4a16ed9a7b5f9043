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
 * Precision: fp32 statistics and accumulation (DESIGN.md §3), with exactly
 * the operations of the CPU reference (src/backend/cpu/norm.rs) in its
 * order, so every output is the CPU's bit for bit:
 *   - row statistics (sum(x), dot(o, o), sum(g), dot(g, xhat)) follow
 *     fastmath::sum / fastmath::dot: eight interleaved accumulators combined
 *     pairwise, then the c % 8 tail (see ref_sum below), one warp per row;
 *   - two-pass variance: mean first, then the mean of squared deviations;
 *   - dw, db: each chunk's rows in order from 0, the chunks' partials in
 *     order into a zeroed sum, then added to dw / db, as reduce_rows does;
 *     this matches the CPU bit for bit when chunk_rows = 64 (REDUCE_CHUNK,
 *     src/backend/cpu/mod.rs); any other chunk_rows is still deterministic.
 * The __f*_rn intrinsics keep nvcc from contracting a*b+c into FMA where
 * Rust rounds twice. A bit-exact LayerNorm matters because out = xhat*w + b
 * and dx = rs*(g - mean_g - xhat*mean_gx) cancel: a mean that differs in the
 * last bit moves near-zero outputs by far more than 1e-5 relative.
 *
 * Vector path: the elementwise output passes use float4 when c % 4 == 0 and
 * the arrays are 16-byte aligned (chosen at run time, grid-uniform); the
 * statistics always read scalar, 32 consecutive floats per warp access.
 * dx must not alias dout or x (the column pass rereads them).
 *
 * Launch:
 *   kernel                      grid                      block  smem
 *   norm_layernorm_fwd          ceil(rows / 8)            256    0     (one warp per row)
 *   norm_layernorm_bwd          ceil(rows / chunk_rows)   256    0     (one block per chunk)
 *   norm_layernorm_bwd_finish   ceil(c / 256)             256    0     (one thread per column)
 * norm_layernorm_fwd needs block = 256 exactly (8 rows per block).
 * norm_layernorm_bwd: grid must be exactly ceil(rows / chunk_rows), chunk_rows >= 1
 * (64 recommended, see above); any block that is a multiple of 32, up to 256,
 * is correct, and the results do not depend on it.
 * norm_layernorm_bwd_finish loops over columns with a grid stride (any grid >= 1).
 */
#include "common.cuh"

/* One warp per row, 8 rows per block: a row of a few thousand floats is
 * reread from L1 by each pass; 8 warps keep enough rows in flight to hide
 * the serial 8-accumulator chains of the statistics. */
constexpr int kRowsPerBlock = 8;
constexpr int kBlock = 32 * kRowsPerBlock;


/* ---- row sums in the CPU's order --------------------------------------------- */

/*
 * The CPU's fastmath::sum / fastmath::dot summation order, reproduced by one
 * warp so the statistics are the CPU's bit for bit: element e < c8 = c & ~7
 * goes into accumulator e % 8, in element order, starting from 0; the eight
 * accumulators combine as ((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7));
 * the c % 8 tail elements are then added in order. The warp loads 32
 * consecutive elements at a time (coalesced); lane i < 8 adds, in order, the
 * values of lanes i, i + 8, i + 16, i + 24 (those below c8) into its
 * accumulator. Lanes >= 8 carry junk that is never combined.
 */
static __device__ __forceinline__ void lanes8_add(float& acc, float v, int valid) {
    const float v8 = __shfl_down_sync(0xffffffffu, v, 8);
    const float v16 = __shfl_down_sync(0xffffffffu, v, 16);
    const float v24 = __shfl_down_sync(0xffffffffu, v, 24);
    acc = __fadd_rn(acc, v);
    if (valid > 8) acc = __fadd_rn(acc, v8);
    if (valid > 16) acc = __fadd_rn(acc, v16);
    if (valid > 24) acc = __fadd_rn(acc, v24);
}

/* Every lane gets the combined sum of lanes 0..7's accumulators. */
static __device__ __forceinline__ float lanes8_combine(float acc) {
    float a[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) a[k] = __shfl_sync(0xffffffffu, acc, k);
    return __fadd_rn(__fadd_rn(__fadd_rn(a[0], a[4]), __fadd_rn(a[1], a[5])),
                     __fadd_rn(__fadd_rn(a[2], a[6]), __fadd_rn(a[3], a[7])));
}

/*
 * sum over e < c of f(e) in the fastmath order above; every lane of the warp
 * gets the same value. f must be cheap and side-effect free (the tail
 * elements are evaluated by every lane).
 */
template <class F>
static __device__ __forceinline__ float ref_sum(int c, int lane, F f) {
    const int c8 = c & ~7;
    float acc = 0.0f;
    for (int base = 0; base < c8; base += 32) {
        const int e = base + lane;
        lanes8_add(acc, e < c8 ? f(e) : 0.0f, c8 - base);
    }
    float s = lanes8_combine(acc);
    for (int e = c8; e < c; ++e) s = __fadd_rn(s, f(e));
    return s;
}

/* ---- forward ---------------------------------------------------------------- */

/* One row by one warp; W = 4 needs c % 4 == 0 and aligned bases.
 * Operation for operation as norm.rs: mu = sum(x) / c; o = x - mu;
 * var = dot(o, o) / c; rs = 1 / sqrt(var + eps); out = o * rs * w + b. */
template <int W>
static __device__ __forceinline__ void layernorm_row(const LayerNormParams& p, int row, int lane) {
    const int c = p.c;
    const float* x = p.x + (long long)row * c;
    const float mu = __fdiv_rn(ref_sum(c, lane, [&](int e) { return x[e]; }), (float)c);
    const float var = __fdiv_rn(ref_sum(c, lane,
                                        [&](int e) {
                                            const float d = __fsub_rn(x[e], mu);
                                            return __fmul_rn(d, d);
                                        }),
                                (float)c);
    const float rs = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, p.eps)));
    float* out = p.out + (long long)row * c;
    for (int i = lane * W; i < c; i += 32 * W) {
        SyFrag<W> v = sy_load<W>(x + i);
        const SyFrag<W> w = sy_load<W>(p.w + i);
        const SyFrag<W> b = sy_load<W>(p.b + i);
#pragma unroll
        for (int k = 0; k < W; ++k)
            v.v[k] = __fadd_rn(__fmul_rn(__fmul_rn(__fsub_rn(v.v[k], mu), rs), w.v[k]), b.v[k]);
        sy_store<W>(out + i, v);
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
    if ((p.c & 3) == 0 && sy_aligned16(p.x) && sy_aligned16(p.out) && sy_aligned16(p.w) && sy_aligned16(p.b))
        layernorm_row<4>(p, row, lane);
    else
        layernorm_row<1>(p, row, lane);
}

/* ---- backward --------------------------------------------------------------- */

/* dx[row] += rstd * (g - mean(g) - xhat * mean(g * xhat)), one warp,
 * operation for operation as norm.rs (mean(g) = sum(g) / c,
 * mean(g xhat) = dot(g, xhat) / c in the fastmath order). */
template <int W>
static __device__ __forceinline__ void layernorm_dx_row(const LayerNormBwdParams& p, int row, int lane) {
    const int c = p.c;
    const long long off = (long long)row * c;
    const float* x = p.x + off;
    const float* go = p.dout + off;
    const float* w = p.w;
    const float mu = p.mean[row], rs = p.rstd[row];
    const float sg = ref_sum(c, lane, [&](int e) { return __fmul_rn(go[e], w[e]); });
    const float sgx = ref_sum(c, lane, [&](int e) {
        return __fmul_rn(__fmul_rn(go[e], w[e]), __fmul_rn(__fsub_rn(x[e], mu), rs));
    });
    const float mean_g = __fdiv_rn(sg, (float)c);
    const float mean_gx = __fdiv_rn(sgx, (float)c);
    float* dx = p.dx + off;
    for (int i = lane * W; i < c; i += 32 * W) {
        const SyFrag<W> xv = sy_load<W>(x + i);
        const SyFrag<W> gv = sy_load<W>(go + i);
        const SyFrag<W> wv = sy_load<W>(p.w + i);
        SyFrag<W> d = sy_load<W>(dx + i);
#pragma unroll
        for (int k = 0; k < W; ++k) {
            const float g = __fmul_rn(gv.v[k], wv.v[k]);
            const float xh = __fmul_rn(__fsub_rn(xv.v[k], mu), rs);
            const float t = __fsub_rn(__fsub_rn(g, mean_g), __fmul_rn(xh, mean_gx));
            d.v[k] = __fadd_rn(d.v[k], __fmul_rn(rs, t));
        }
        sy_store<W>(dx + i, d);
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
    const bool vec = (c & 3) == 0 && sy_aligned16(p.x) && sy_aligned16(p.dout) && sy_aligned16(p.w) && sy_aligned16(p.dx);
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
