/*
 * Activation family: bias add, bias + GELU (fused), GELU forward/backward,
 * and the deterministic column sums that give bias gradients.
 *
 * GELU is the tanh approximation (PyTorch gelu(x, approximate='tanh')):
 *   gelu(x)  = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
 *   gelu'(x) = 0.5 (1 + tanh u) + 0.5 x sech^2(u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
 *
 * Kernels, shapes, accumulation:
 *   activation_bias_fwd       out[r, c] += bias[c]                     out: [rows, cols] (+=)
 *   activation_bias_gelu_fwd  pre[r, c] += bias[c] (+=, kept for the backward);
 *                             out[r, c] = gelu(pre[r, c]) (=)          pre, out: [rows, cols]
 *   activation_gelu_fwd       out[i] = gelu(x[i])                      [n] (=)
 *   activation_gelu_bwd       out[i] = dout[i] * gelu'(x[i])           [n] (=)
 *   activation_colsum_partial partial[blk, c] = sum of src[r, c], r over chunk blk in
 *                             order (=)                                partial: [nblk, cols]
 *   activation_colsum_finish  dst[c] += partial[0, c]; dst[c] += partial[1, c]; ...
 *                             (sequentially into dst, blk in order)    dst: [cols] (+=)
 *   with nblk = ceil(rows / chunk_rows).
 *
 * Precision: fp32 throughout. The GELU (sy_gelu in common.cuh) is evaluated
 * with exactly the operations of the CPU reference (src/backend/cpu/activation.rs), including
 * its branch-free exp/tanh (src/backend/cpu/fastmath.rs, built with FMA by
 * .cargo/config.toml's x86-64-v3): the __f*_rn intrinsics keep nvcc from
 * contracting a*b+c where Rust does not, so each value is the CPU's bit for
 * bit. That matters here and not for most kernels: near u << 0 the factor
 * 1 + tanh(u) cancels, and two independently correct tanh implementations
 * would differ there by far more than 1e-5 relative.
 * The column sums add in exactly the CPU's order (rows of a chunk in order
 * from 0, then each chunk's partial into dst in chunk order), so with
 * chunk_rows = 64 (REDUCE_CHUNK in src/backend/cpu/mod.rs) the bias gradient
 * is the CPU's bit for bit.
 *
 * Vector path: bias kernels when cols % 4 == 0 and pre/out/bias are 16-byte
 * aligned, GELU kernels when their pointers are; chosen at run time,
 * uniformly for the grid. Elementwise results do not depend on the launch.
 *
 * Launch:
 *   kernel                     grid                                        block  smem
 *   activation_bias_fwd        clamp(ceil(rows*cols / 256), 1, 65535)      256    0
 *   activation_bias_gelu_fwd   clamp(ceil(rows*cols / 256), 1, 65535)      256    0
 *   activation_gelu_fwd        clamp(ceil(n / 256), 1, 65535)              256    0
 *   activation_gelu_bwd        clamp(ceil(n / 256), 1, 65535)              256    0
 *   activation_colsum_partial  (ceil(rows / chunk_rows), ceil(cols / 256)) 256    0
 *   activation_colsum_finish   ceil(cols / 256)                            256    0
 * The first four are grid-stride (any grid >= 1 is correct). The column-sum
 * kernels loop over columns with a grid stride too, so any grid.y / grid.x
 * for columns is correct, but colsum_partial's grid.x must be exactly
 * ceil(rows / chunk_rows) (one block column per chunk; chunk_rows >= 1) and
 * partial must hold ceil(rows / chunk_rows) * cols floats.
 */
#include "common.cuh"

/* Threads per block: memory bound, any multiple of 128 saturates bandwidth;
 * 256 gives the column sums one coalesced 1 KiB row segment per block. */
constexpr int kBlock = 256;

/* ---- bias (+ GELU) -------------------------------------------------------- */

/*
 * Grid-stride over the rows*cols/W units of W columns. The column of unit i
 * is i mod (cols/W); it is computed once and then advanced by the stride
 * mod (cols/W), so the loop has no division. Requires cols % W == 0.
 */
template <int W, bool kGelu>
static __device__ __forceinline__ void bias_rows(float* pre, float* out, const float* bias, int rows, int cols) {
    const int cu = cols / W;
    const long long total = (long long)rows * cu;
    const long long stride = (long long)gridDim.x * blockDim.x;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return; /* also covers cu == 0 before the modulo */
    int c = (int)(i % cu);
    const int dc = (int)(stride % cu);
    for (; i < total; i += stride) {
        SyFrag<W> x = sy_load<W>(pre + i * W);
        const SyFrag<W> b = sy_load<W>(bias + (long long)c * W);
#pragma unroll
        for (int k = 0; k < W; ++k) x.v[k] += b.v[k];
        sy_store<W>(pre + i * W, x);
        if constexpr (kGelu) {
#pragma unroll
            for (int k = 0; k < W; ++k) x.v[k] = sy_gelu(x.v[k]);
            sy_store<W>(out + i * W, x);
        }
        c += dc;
        if (c >= cu) c -= cu;
    }
}

extern "C" __global__ void __launch_bounds__(kBlock) activation_bias_fwd(BiasParams p) {
    if ((p.cols & 3) == 0 && sy_aligned16(p.out) && sy_aligned16(p.bias))
        bias_rows<4, false>(p.out, nullptr, p.bias, p.rows, p.cols);
    else
        bias_rows<1, false>(p.out, nullptr, p.bias, p.rows, p.cols);
}

extern "C" __global__ void __launch_bounds__(kBlock) activation_bias_gelu_fwd(BiasGeluParams p) {
    if ((p.cols & 3) == 0 && sy_aligned16(p.pre) && sy_aligned16(p.out) && sy_aligned16(p.bias))
        bias_rows<4, true>(p.pre, p.out, p.bias, p.rows, p.cols);
    else
        bias_rows<1, true>(p.pre, p.out, p.bias, p.rows, p.cols);
}

/* ---- GELU ------------------------------------------------------------------ */

extern "C" __global__ void __launch_bounds__(kBlock) activation_gelu_fwd(GeluParams p) {
    long long head = 0;
    if (sy_aligned16(p.out) && sy_aligned16(p.x)) {
        const long long n4 = p.n >> 2;
        SY_FOR_EACH(i, n4) {
            SyFrag<4> v = sy_load<4>(p.x + 4 * i);
#pragma unroll
            for (int k = 0; k < 4; ++k) v.v[k] = sy_gelu(v.v[k]);
            sy_store<4>(p.out + 4 * i, v);
        }
        head = n4 << 2;
    }
    SY_FOR_EACH(i, p.n - head) p.out[head + i] = sy_gelu(p.x[head + i]);
}

extern "C" __global__ void __launch_bounds__(kBlock) activation_gelu_bwd(GeluParams p) {
    long long head = 0;
    if (sy_aligned16(p.out) && sy_aligned16(p.x) && sy_aligned16(p.dout)) {
        const long long n4 = p.n >> 2;
        SY_FOR_EACH(i, n4) {
            const SyFrag<4> x = sy_load<4>(p.x + 4 * i);
            SyFrag<4> g = sy_load<4>(p.dout + 4 * i);
#pragma unroll
            for (int k = 0; k < 4; ++k) g.v[k] = __fmul_rn(g.v[k], sy_gelu_grad(x.v[k]));
            sy_store<4>(p.out + 4 * i, g);
        }
        head = n4 << 2;
    }
    SY_FOR_EACH(i, p.n - head) p.out[head + i] = __fmul_rn(p.dout[head + i], sy_gelu_grad(p.x[head + i]));
}

/* ---- column sums (bias gradients) ------------------------------------------ */

/* One thread per column (coalesced across the block), the chunk's rows in
 * order from 0: the CPU's `part[c] += g` loop. */
extern "C" __global__ void __launch_bounds__(kBlock) activation_colsum_partial(ColSumParams p) {
    const int blk = blockIdx.x;
    const int r0 = blk * p.chunk_rows;
    const int r1 = min(r0 + p.chunk_rows, p.rows);
    const long long cols = p.cols;
    for (int c = blockIdx.y * blockDim.x + threadIdx.x; c < p.cols; c += gridDim.y * blockDim.x) {
        const float* s = p.src + r0 * cols + c;
        float acc = 0.0f;
#pragma unroll 8
        for (int r = r0; r < r1; ++r, s += cols) acc += *s;
        p.partial[blk * cols + c] = acc;
    }
}

/* dst[c] += partial[blk, c] one chunk at a time, as reduce_rows does. */
extern "C" __global__ void __launch_bounds__(kBlock) activation_colsum_finish(ColSumParams p) {
    const int nblk = (p.rows + p.chunk_rows - 1) / p.chunk_rows;
    const long long cols = p.cols;
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < p.cols; c += gridDim.x * blockDim.x) {
        float acc = p.dst[c];
        const float* s = p.partial + c;
#pragma unroll 8
        for (int b = 0; b < nblk; ++b, s += cols) acc += *s;
        p.dst[c] = acc;
    }
}
