/*
 * Loss family: fused softmax cross-entropy, forward and logit gradient in
 * one kernel, one block per row; the probabilities are never stored.
 *
 * Shapes: logits, dlogits: [rows, v]; targets (int), losses: [rows].
 *
 *   loss_cross_entropy: losses[r] = logsumexp(logits[r]) - logits[r, targets[r]]      (=)
 *                       dlogits[r, i] = softmax(logits[r])[i] * dloss
 *                                       - (i == targets[r] ? dloss : 0)               (=, if dlogits != NULL)
 *
 * Passes over a row: (1) each thread keeps a running max and a running sum
 * of exp(x - max), rescaled when the max grows (online softmax), then the
 * block merges them: max M, sum S = sum_i exp(x_i - M); (2) only with
 * dlogits: each element is reread, and dlogits = exp(x - M) * (1/S) * dloss,
 * minus dloss at the target. One read of the row for the loss alone, two
 * with the gradient.
 *
 * Aliasing: dlogits may be logits. The target logit is read (thread 0)
 * before the block barriers of pass 1, every other read of pass 1 also
 * precedes them, and in pass 2 each thread reads an element before it
 * writes that same element: no thread ever reads a value another overwrote.
 *
 * Targets outside [0, v) read nothing out of bounds: the loss is NaN (so the
 * mistake is visible) and the gradient row is the softmax * dloss without
 * the one-hot term.
 *
 * Precision: fp32. exp is the CPU reference's (src/backend/cpu/fastmath.rs:
 * clamped to [-87.3, 88.3], Cody-Waite + degree-7 polynomial with FMA), with
 * the same argument x - M, so each gradient element differs from the CPU's
 * only through S (a different summation order: relative ~1e-7); logf is
 * CUDA's (1 ulp). The block reductions have a fixed shape, so a fixed block
 * size gives the same bits on every run.
 *
 * Launch:
 *   kernel              grid   block  smem
 *   loss_cross_entropy  rows   256    0     (128 B static smem for the block reductions)
 * block: any multiple of 32 up to 256 is correct; the result depends on it,
 * so keep it fixed at 256.
 */
#include "common.cuh"

/* 256 threads: one block per row, so large vocabularies (32k) get 128
 * elements per thread and several blocks per SM hide the load latency. */
constexpr int kBlock = 256;

/* exp is the CPU reference's, operation for operation (sy_ref_exp, common.cuh). */

extern "C" __global__ void __launch_bounds__(kBlock) loss_cross_entropy(CrossEntropyParams p) {
    __shared__ float scratch[32];
    const int row = blockIdx.x;
    if (row >= p.rows) return; /* whole block: before any barrier */
    const int v = p.v;
    const long long off = (long long)row * v;
    const float* x = p.logits + off;
    const int tgt = p.targets[row];
    const bool valid = tgt >= 0 && tgt < v;
    float xt = 0.0f;
    if (threadIdx.x == 0 && valid) xt = x[tgt]; /* before any write to an aliased row */

    /* Pass 1: per-thread online max / sum of exp(x - max). The first
     * element meets m = -inf: exp(-inf) is ~1e-38 (clamped) times s = 0. */
    float m = -INFINITY, s = 0.0f;
    for (int i = threadIdx.x; i < v; i += blockDim.x) {
        const float xi = x[i];
        if (xi > m) {
            s = __fadd_rn(__fmul_rn(s, sy_ref_exp(__fsub_rn(m, xi))), 1.0f);
            m = xi;
        } else {
            s = __fadd_rn(s, sy_ref_exp(__fsub_rn(xi, m)));
        }
    }
    const float mx = sy_block_max(m, scratch);
    /* Threads that saw no element have s = 0, so their term is 0. */
    const float sum = sy_block_sum(__fmul_rn(s, sy_ref_exp(__fsub_rn(m, mx))), scratch);
    if (threadIdx.x == 0) p.losses[row] = valid ? __fsub_rn(__fadd_rn(mx, logf(sum)), xt) : NAN;

    /* Pass 2: the gradient, as the CPU forms it: (exp(x - max) * inv) * dloss,
     * then dloss subtracted at the target. */
    if (p.dlogits == nullptr) return;
    float* dl = p.dlogits + off;
    const float inv = __fdiv_rn(1.0f, sum);
    const float dloss = p.dloss;
    for (int i = threadIdx.x; i < v; i += blockDim.x) {
        float d = __fmul_rn(__fmul_rn(sy_ref_exp(__fsub_rn(x[i], mx)), inv), dloss);
        if (i == tgt) d = __fsub_rn(d, dloss);
        dl[i] = d;
    }
}
