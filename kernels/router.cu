/*
 * Router family: top-k expert gating of a Switch MoE layer (DESIGN.md §2
 * steps 2-10) on fp32 router logits, forward and backward, plus the
 * multiplicative input jitter. The CPU oracle is src/backend/cpu/router.rs.
 *
 * Shapes (params.h, RouterFwdParams / RouterBwdParams / RouterJitterParams):
 *   logits, probs, dlogits  fp32 [n, e]
 *   expert, row             int  [n*k]   assignment a = t*k + j (token t, rank j)
 *   gate, dgate             fp32 [n*k]   after optional normalization, before the kept mask
 *   row_assign              int  [n*k]   inverse of row over the dispatched rows; -1 past offsets[e]
 *   offsets                 int  [e+1]   expert segments of the dispatched buffers
 *   stats                   fp32 [3e+5]  RouterStats (src/backend/mod.rs)
 *
 * What is fused: softmax, entropy, logsumexp, top-k and gates in one warp per
 * token (router_topk); the backward (gates -> probabilities through the
 * optional normalization, aux via P_e, z-loss, softmax backward) in one warp
 * per token (router_bwd).
 *
 * Slot assignment (DESIGN.md §2.5) without order-dependent atomics: the
 * sequence s = j*n + t (every first choice before any second choice, earlier
 * tokens first) is cut into chunks of kChunk; router_count ranks each
 * assignment among the same-expert ones before it in its chunk (a compare
 * against the chunk's other entries in shared memory) and writes the chunk's
 * per-expert counts; router_finish turns those into per-expert chunk bases
 * (a sequential scan per expert over the chunks) and the segment offsets;
 * router_assign adds base + rank. Every number is an integer count, so the
 * kept and dropped sets are exactly the CPU's, whatever the launch shape.
 *
 * Top-k compares the fp32 logits (softmax is monotonic), ties to the lower
 * expert index, as the CPU does: given the same logits, the same experts.
 *
 * Precision: fp32; expf/logf (the CPU uses the Rust std's), so probabilities,
 * gates and the loss statistics agree to ~1e-7 relative, not bitwise. The
 * statistics sums are f64: per-expert probability sums over fixed token
 * chunks in order, then chunks in order; entropy and lse^2 per chunk by a
 * fixed warp tree. Jitter is bit-exact (integer hash, one fma, one multiply).
 *
 * Supported: 1 <= e <= kMaxExperts (1024), 1 <= k <= min(e, kMaxTopK = 8)
 * (src/backend/cuda/mod.rs refuses other configs before any launch).
 *
 * Launch (ceil(x/y) = (x + y - 1) / y; S = n*k):
 *   kernel             grid                          block  smem
 *   router_jitter      clamp(ceil(n / 256), 1, 65535)  256    0   (grid-stride; also _bwd)
 *   router_topk        ceil(n / 8)                    256    0   (one warp per token; e <= 128,
 *                                                                   router_topk_wide above)
 *   router_count       ceil(S / 256)                  256    0   (chunk = 256 = block)
 *   router_stats       ceil(n / tok_chunk)            256    0
 *   router_finish      1                             1024    0
 *   router_assign      ceil(S / 256)                  256    0
 *   router_bwd         ceil(n / 8)                    256    0   (as router_topk; router_bwd_wide)
 * Scratch: tok_stats [2n] f32, rank [S] int, chunk_counts [ceil(S/256) * e]
 * int, partial [ceil(n/tok_chunk) * (e + 2)] f64.
 */
#include "common.cuh"

constexpr int kBlock = 256;
constexpr int kChunk = 256; /* assignments per router_count block: one per thread */
constexpr int kMaxExperts = 1024;
constexpr int kNarrowExperts = 128; /* router_topk / router_bwd; more: the _wide kernels */
static_assert(kNarrowExperts == 4 * 32, "the narrow kernels hold at most 4 logits per lane");
constexpr int kMaxTopK = 8;
constexpr int kFinishThreads = 1024;

static_assert(kChunk == kBlock, "router_count gives each thread one assignment");
static_assert(kMaxTopK <= 32, "router_topk keeps choice j in lane j");

/* ---- jitter --------------------------------------------------------------- */

/* jitter_mult of src/backend/cpu/router.rs, operation for operation. */
static __device__ __forceinline__ float jitter_mult(unsigned long long seed, unsigned long long i, float eps) {
    unsigned long long z = seed + (i + 1ull) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const float u = __fmul_rn((float)(unsigned)(z >> 40), 1.0f / 16777216.0f);
    return __fmaf_rn(2.0f * eps, u, 1.0f - eps);
}

extern "C" __global__ void __launch_bounds__(kBlock) router_jitter(RouterJitterParams p) {
    SY_FOR_EACH(i, p.n) {
        const float m = jitter_mult(p.seed, (unsigned long long)i, p.eps);
        p.mult[i] = m;
        p.out[i] = __fmul_rn(p.x[i], m);
    }
}

extern "C" __global__ void __launch_bounds__(kBlock) router_jitter_bwd(RouterJitterParams p) {
    SY_FOR_EACH(i, p.n) p.out[i] = __fmul_rn(p.x[i], p.mult[i]);
}

/* ---- top-k ---------------------------------------------------------------- */

/* Lexicographic "better": higher logit, then lower index; index < 0 = none. */
static __device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
    return i >= 0 && (bi < 0 || v > bv || (v == bv && i < bi));
}

/* v[x] of a per-lane array (lane l holds entries l + 32 i), to every lane. */
template <int EPL>
static __device__ __forceinline__ float held_by_warp(const float (&v)[EPL], int x) {
    const int lane = threadIdx.x & 31;
    float r = 0.0f;
    /* Compare, not index: a dynamic v[x >> 5] would put v in local memory. */
#pragma unroll
    for (int i = 0; i < EPL; ++i)
        if (lane + 32 * i == x) r = v[i];
    return __shfl_sync(0xffffffffu, r, x & 31);
}

/* Per token (one warp): lane holds experts lane + 32 i, i < EPL. */
template <int EPL>
static __device__ __forceinline__ void topk_token(const RouterFwdParams& p, int t) {
    const int lane = threadIdx.x & 31;
    const int E = p.e, K = p.k;
    const float* zr = p.logits + (long long)t * E;
    float z[EPL], pr[EPL];
#pragma unroll
    for (int i = 0; i < EPL; ++i) {
        const int e = lane + 32 * i;
        z[i] = e < E ? zr[e] : -INFINITY;
    }
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < EPL; ++i) mx = fmaxf(mx, z[i]);
    mx = sy_warp_max(mx);
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < EPL; ++i) {
        pr[i] = lane + 32 * i < E ? expf(z[i] - mx) : 0.0f;
        sum += pr[i];
    }
    sum = sy_warp_sum(sum);
    const float inv = 1.0f / sum;
    float ent = 0.0f;
    float* prow = p.probs + (long long)t * E;
#pragma unroll
    for (int i = 0; i < EPL; ++i) {
        const int e = lane + 32 * i;
        pr[i] *= inv;
        if (e < E) {
            prow[e] = pr[i];
            if (pr[i] > 0.0f) ent -= pr[i] * logf(pr[i]);
        }
    }
    ent = sy_warp_sum(ent);
    if (lane == 0) {
        p.tok_stats[2LL * t] = mx + logf(sum);
        p.tok_stats[2LL * t + 1] = ent;
    }

    /* k rounds of a warp argmax; lane j keeps choice j. */
    unsigned taken = 0;
    float gsum = 0.0f, my_gate = 0.0f;
    int my_expert = 0;
    for (int j = 0; j < K; ++j) {
        float bv = -INFINITY;
        int bi = -1;
#pragma unroll
        for (int i = 0; i < EPL; ++i) {
            const int e = lane + 32 * i;
            if (e < E && !((taken >> i) & 1u) && better(z[i], e, bv, bi)) {
                bv = z[i];
                bi = e;
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (better(ov, oi, bv, bi)) {
                bv = ov;
                bi = oi;
            }
        }
        /* Every lane now holds the same winner (k <= e, so one exists). */
        if ((bi & 31) == lane) taken |= 1u << (bi >> 5);
        const float pv = held_by_warp(pr, bi);
        gsum += pv; /* j ascending, as the CPU sums the gates */
        if (lane == j) {
            my_gate = pv;
            my_expert = bi;
        }
    }
    if (lane < K) {
        const long long a = (long long)t * K + lane;
        p.expert[a] = my_expert;
        p.gate[a] = p.normalize ? my_gate / gsum : my_gate;
    }
}

/* Two kernels so that the common expert counts (<= kNarrowExperts) do not
 * pay the registers (and occupancy) of a 1024-expert row held in registers. */
extern "C" __global__ void __launch_bounds__(kBlock) router_topk(RouterFwdParams p) {
    const int t = blockIdx.x * (kBlock / 32) + (threadIdx.x >> 5);
    if (t >= p.n) return; /* whole warps */
    if (p.e <= 32)
        topk_token<1>(p, t);
    else if (p.e <= 64)
        topk_token<2>(p, t);
    else
        topk_token<4>(p, t);
}

extern "C" __global__ void __launch_bounds__(kBlock) router_topk_wide(RouterFwdParams p) {
    const int t = blockIdx.x * (kBlock / 32) + (threadIdx.x >> 5);
    if (t >= p.n) return;
    if (p.e <= 256)
        topk_token<8>(p, t);
    else if (p.e <= 512)
        topk_token<16>(p, t);
    else
        topk_token<32>(p, t);
}

/* ---- slot assignment ------------------------------------------------------- */

extern "C" __global__ void __launch_bounds__(kBlock) router_count(RouterFwdParams p) {
    __shared__ int s_expert[kChunk];
    __shared__ int s_count[kMaxExperts];
    const int S = p.n * p.k;
    const int s = blockIdx.x * kChunk + threadIdx.x;
    int ex = -1, a = 0;
    if (s < S) {
        const int j = s / p.n, t = s - j * p.n;
        a = t * p.k + j;
        ex = p.expert[a];
    }
    s_expert[threadIdx.x] = ex;
    for (int e = threadIdx.x; e < p.e; e += kBlock) s_count[e] = 0;
    __syncthreads();
    if (ex >= 0) {
        int before = 0, after = 0;
        const int me = threadIdx.x;
        for (int i = 0; i < kChunk; ++i) {
            const bool same = s_expert[i] == ex;
            before += same && i < me;
            after += same && i > me;
        }
        p.rank[a] = before;
        if (after == 0) s_count[ex] = before + 1; /* the expert's last entry in the chunk */
    }
    __syncthreads();
    int* counts = p.chunk_counts + (long long)blockIdx.x * p.e;
    for (int e = threadIdx.x; e < p.e; e += kBlock) counts[e] = s_count[e];
}

static __device__ __forceinline__ double warp_sum_f64(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

extern "C" __global__ void __launch_bounds__(kBlock) router_stats(RouterFwdParams p) {
    const int E = p.e;
    const int t0 = blockIdx.x * p.tok_chunk, t1 = min(t0 + p.tok_chunk, p.n);
    double* part = p.partial + (long long)blockIdx.x * (E + 2);
    for (int e = threadIdx.x; e < E; e += kBlock) {
        double acc = 0.0;
        for (int t = t0; t < t1; ++t) acc += (double)p.probs[(long long)t * E + e];
        part[e] = acc;
    }
    if (threadIdx.x < 32) {
        double h = 0.0, l2 = 0.0;
        for (int t = t0 + (int)threadIdx.x; t < t1; t += 32) {
            const double l = p.tok_stats[2LL * t];
            l2 += l * l;
            h += (double)p.tok_stats[2LL * t + 1];
        }
        h = warp_sum_f64(h);
        l2 = warp_sum_f64(l2);
        if (threadIdx.x == 0) {
            part[E] = h;
            part[E + 1] = l2;
        }
    }
}

extern "C" __global__ void __launch_bounds__(kFinishThreads) router_finish(RouterFwdParams p) {
    __shared__ int s_scan[kFinishThreads];
    __shared__ double s_red[kFinishThreads];
    __shared__ int s_drop[kFinishThreads];
    const int E = p.e, x = threadIdx.x;
    const int S = p.n * p.k;
    const int n_chunks = (S + kChunk - 1) / kChunk;
    const int n_tok_chunks = (p.n + p.tok_chunk - 1) / p.tok_chunk;
    /* Per expert: chunk counts -> exclusive chunk bases, and the total. */
    int total = 0;
    if (x < E) {
        int* c = p.chunk_counts + x;
        for (int ch = 0; ch < n_chunks; ++ch, c += E) {
            const int v = *c;
            *c = total;
            total += v;
        }
    }
    const int kept = x < E ? min(total, p.capacity) : 0;
    /* Inclusive scan of kept over experts (Hillis-Steele; integers, exact). */
    s_scan[x] = kept;
    __syncthreads();
    for (int off = 1; off < kFinishThreads; off <<= 1) {
        const int v = x >= off ? s_scan[x - off] : 0;
        __syncthreads();
        s_scan[x] += v;
        __syncthreads();
    }
    double psum = 0.0;
    if (x < E) {
        p.offsets[x + 1] = s_scan[x];
        if (x == 0) p.offsets[0] = 0;
        const double* part = p.partial + x;
        for (int ch = 0; ch < n_tok_chunks; ++ch, part += E + 2) psum += *part;
        p.stats[x] = (float)total;          /* assigned (before capacity) */
        p.stats[E + x] = (float)kept;       /* kept */
        p.stats[2 * E + x] = (float)psum;   /* sum_n p[n, x] */
    }
    /* aux = alpha * E * sum_x f_x P_x, f_x = total / (n k), P_x = psum / n. */
    s_red[x] = x < E ? ((double)total / (double)S) * (psum / (double)p.n) : 0.0;
    s_drop[x] = total - kept;
    __syncthreads();
    for (int half = kFinishThreads / 2; half > 0; half >>= 1) {
        if (x < half) {
            s_red[x] += s_red[x + half];
            s_drop[x] += s_drop[x + half];
        }
        __syncthreads();
    }
    if (x == 0) {
        double ent = 0.0, l2 = 0.0;
        const double* part = p.partial + E;
        for (int ch = 0; ch < n_tok_chunks; ++ch, part += E + 2) {
            ent += part[0];
            l2 += part[1];
        }
        p.stats[3 * E] = (float)ent;                                       /* entropy_sum */
        p.stats[3 * E + 1] = (float)l2;                                    /* lse_sq_sum */
        p.stats[3 * E + 2] = (float)s_drop[0];                             /* dropped */
        p.stats[3 * E + 3] = (float)(s_red[0] * ((double)p.aux_coef * E)); /* aux */
        p.stats[3 * E + 4] = (float)((double)p.z_coef * l2 / (double)p.n); /* z */
    }
}

extern "C" __global__ void __launch_bounds__(kBlock) router_assign(RouterFwdParams p) {
    const int S = p.n * p.k;
    const int s = blockIdx.x * kBlock + threadIdx.x;
    if (s >= S) return;
    const int j = s / p.n, t = s - j * p.n;
    const int a = t * p.k + j;
    const int ex = p.expert[a];
    const int pos = p.chunk_counts[(long long)(s / kChunk) * p.e + ex] + p.rank[a];
    if (pos < p.capacity) {
        const int r = p.offsets[ex] + pos;
        p.row[a] = r;
        p.row_assign[r] = a;
    } else {
        p.row[a] = -1;
    }
    /* Rows past the kept segments hold no assignment; rows before are each
     * written by exactly one kept assignment above. */
    if (s >= p.offsets[p.e]) p.row_assign[s] = -1;
}

/* ---- backward --------------------------------------------------------------- */

template <int EPL>
static __device__ __forceinline__ void bwd_token(const RouterBwdParams& p, int t) {
    const int lane = threadIdx.x & 31;
    const int E = p.e, K = p.k;
    const float* zr = p.logits + (long long)t * E;
    const float* pr = p.probs + (long long)t * E;
    const float S = (float)(p.n * K), N = (float)p.n;
    /* The logsumexp first, so the logits need no registers afterwards (two
     * passes over one row: L1 hits). */
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < EPL; ++i) mx = fmaxf(mx, lane + 32 * i < E ? zr[lane + 32 * i] : -INFINITY);
    mx = sy_warp_max(mx);
    float se = 0.0f;
#pragma unroll
    for (int i = 0; i < EPL; ++i) se += lane + 32 * i < E ? expf(zr[lane + 32 * i] - mx) : 0.0f;
    se = sy_warp_sum(se);
    const float lse = mx + logf(se);

    float pv[EPL], dz[EPL];
#pragma unroll
    for (int i = 0; i < EPL; ++i) {
        const int e = lane + 32 * i;
        const bool live = e < E;
        pv[i] = live ? pr[e] : 0.0f;
        /* d aux / d p[t, e] = dloss * alpha * E * f_e / n, left to right as the CPU */
        const float f = live ? __fdiv_rn(p.stats[e], S) : 0.0f;
        dz[i] = live ? __fdiv_rn(__fmul_rn(__fmul_rn(__fmul_rn(p.dloss, p.aux_coef), (float)E), f), N) : 0.0f;
    }
    const int* ex = p.expert + (long long)t * K;
    const float* dg = p.dgate + (long long)t * K;
    float s = 0.0f, dot = 0.0f;
    if (p.normalize) {
        for (int j = 0; j < K; ++j) {
            const float px = held_by_warp(pv, ex[j]);
            s += px;
            dot = __fadd_rn(dot, __fmul_rn(dg[j], px));
        }
    }
    for (int j = 0; j < K; ++j) {
        const int x = ex[j];
        const float g = dg[j];
        const float add = p.normalize ? __fsub_rn(__fdiv_rn(g, s), __fdiv_rn(dot, __fmul_rn(s, s))) : g;
        /* Compare, not index: a dynamic dz[x >> 5] would put dz in local memory. */
#pragma unroll
        for (int i = 0; i < EPL; ++i)
            if (lane + 32 * i == x) dz[i] = __fadd_rn(dz[i], add);
    }
    float inner = 0.0f;
#pragma unroll
    for (int i = 0; i < EPL; ++i) inner += pv[i] * dz[i];
    inner = sy_warp_sum(inner);
    const float zc = __fdiv_rn(__fmul_rn(__fmul_rn(p.dloss, p.z_coef), 2.0f), N);
    const float zl = __fmul_rn(zc, lse);
    float* out = p.dlogits + (long long)t * E;
#pragma unroll
    for (int i = 0; i < EPL; ++i) {
        const int e = lane + 32 * i;
        if (e < E) out[e] = __fadd_rn(__fmul_rn(pv[i], __fsub_rn(dz[i], inner)), __fmul_rn(zl, pv[i]));
    }
}

extern "C" __global__ void __launch_bounds__(kBlock) router_bwd(RouterBwdParams p) {
    const int t = blockIdx.x * (kBlock / 32) + (threadIdx.x >> 5);
    if (t >= p.n) return;
    if (p.e <= 32)
        bwd_token<1>(p, t);
    else if (p.e <= 64)
        bwd_token<2>(p, t);
    else
        bwd_token<4>(p, t);
}

extern "C" __global__ void __launch_bounds__(kBlock) router_bwd_wide(RouterBwdParams p) {
    const int t = blockIdx.x * (kBlock / 32) + (threadIdx.x >> 5);
    if (t >= p.n) return;
    if (p.e <= 256)
        bwd_token<8>(p, t);
    else if (p.e <= 512)
        bwd_token<16>(p, t);
    else
        bwd_token<32>(p, t);
}
