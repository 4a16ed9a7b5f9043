/*
 * Embedding family: token + position lookup, and its backward as a
 * deterministic, atomic-free scatter-add (rank, then one owner per token).
 *
 * Shapes: tokens: [N] with N = b*t (row n = batch n / t, position n % t);
 * positions: [N] int or NULL; wte, dwte: [vocab, d]; wpe, dwpe: [max_t, d]
 * (training reads rows 0..t-1, so t <= max_t);
 * out, dout: [N, d]; order: [N] int scratch.
 *
 *   embedding_fwd:      out[n] = wte[tokens[n]] + wpe[pos(n)]         (=)
 *                       pos(n) = positions ? positions[n] : n % t (inference
 *                       passes each row's own position; training passes NULL);
 *                       a row whose token is outside [0, vocab) or whose
 *                       position is outside [0, max_t) is written as zeros
 *   embedding_bwd_rank: order[rank(n)] = n, where rank(n) counts the m with
 *                       (tokens[m], m) < (tokens[n], n), tokens compared as unsigned:
 *                       a permutation that groups equal tokens, positions ascending (=)
 *   embedding_bwd_wte:  for each group of equal tokens in `order`:
 *                       dwte[tok] += dout[n_0]; dwte[tok] += dout[n_1]; ...  (+=)
 *                       (n_0 < n_1 < ...; groups of out-of-range tokens are skipped)
 *   embedding_bwd_wpe:  dwpe[p] += dout[0*t + p]; dwpe[p] += dout[1*t + p]; ...  (+=)
 *
 * Precision: fp32. The backward adds each row into the running gradient in
 * the same sequence as the CPU's loop over n (src/backend/cpu/embedding.rs),
 * so dwte and dwpe are the CPU's bit for bit. Each dwte row has exactly one
 * owning block (the one at the start of its group), so there are no races
 * and no atomics; integer ranks make the permutation order-independent.
 *
 * Launch:
 *   kernel              grid            block  smem
 *   embedding_fwd       ceil(N / 8)     256    0     (one warp per row; 8 rows per block)
 *   embedding_bwd_rank  ceil(N / 128)   512    0     (4 threads per row; 4 KiB static smem)
 *   embedding_bwd_wte   N               256    0     (one block per sorted position)
 *   embedding_bwd_wpe   t               256    0     (one block per position)
 * Blocks must be exactly these sizes for embedding_fwd (8 warps per block)
 * and embedding_bwd_rank (128 rows x 4 slices); bwd_wte / bwd_wpe loop over
 * d with a block stride, so any block up to 256 is correct and the results
 * do not depend on it.
 * Run order: bwd_rank, then bwd_wte (reads order); bwd_wpe is independent.
 */
#include "common.cuh"

/* One warp per row: a row of d floats is one or a few coalesced warp
 * accesses; 8 warps per block keep enough rows in flight. */
constexpr int kRowsPerBlock = 8;
constexpr int kBlock = 32 * kRowsPerBlock;
/* Rank: 128 rows per block, 4 threads per row (each compares against a
 * quarter of every 512-token tile): N = 16k rows gives 128 blocks of 16
 * warps, enough to cover the SMs and hide the shared-memory latency. */
constexpr int kRankKeys = 128;
constexpr int kRankSlices = 4;
constexpr int kRankBlock = kRankKeys * kRankSlices;
/* Columns per thread in bwd_wte: 4 independent running sums per thread. */
constexpr int kWteCols = 4;


/* ---- forward ---------------------------------------------------------------- */

template <int W>
static __device__ __forceinline__ void embed_row(const EmbeddingParams& p, int n, int lane) {
    const int d = p.d;
    float* out = p.out + (long long)n * d;
    const int tok = p.tokens[n];
    const int pos = p.positions ? p.positions[n] : n % p.t;
    if (tok < 0 || tok >= p.vocab || pos < 0 || pos >= p.max_t) {
        SyFrag<W> z;
#pragma unroll
        for (int k = 0; k < W; ++k) z.v[k] = 0.0f;
        for (int i = lane * W; i < d; i += 32 * W) sy_store<W>(out + i, z);
        return;
    }
    const float* e = p.wte + (long long)tok * d;
    const float* q = p.wpe + (long long)pos * d;
    for (int i = lane * W; i < d; i += 32 * W) {
        SyFrag<W> a = sy_load<W>(e + i);
        const SyFrag<W> b = sy_load<W>(q + i);
#pragma unroll
        for (int k = 0; k < W; ++k) a.v[k] += b.v[k];
        sy_store<W>(out + i, a);
    }
}

extern "C" __global__ void __launch_bounds__(kBlock) embedding_fwd(EmbeddingParams p) {
    const int n = blockIdx.x * kRowsPerBlock + (threadIdx.x >> 5);
    if (n >= p.b * p.t) return;
    const int lane = threadIdx.x & 31;
    if ((p.d & 3) == 0 && sy_aligned16(p.out) && sy_aligned16(p.wte) && sy_aligned16(p.wpe))
        embed_row<4>(p, n, lane);
    else
        embed_row<1>(p, n, lane);
}

/* ---- backward ----------------------------------------------------------------- */

/*
 * rank(n) = #{m : tok[m] < tok[n] or (tok[m] == tok[n] and m < n)}, by
 * comparing against every key through shared tiles: O(N^2) compares, about
 * 2.7e8 for N = 16k (tens of microseconds), once per step. A block ranks
 * kRankKeys rows; its kRankSlices threads per row each compare against one
 * slice of every tile, and the integer partial counts are added at the end
 * (exact, so the split does not matter). Keys are unique, so the ranks are a
 * permutation of 0..N-1 and every order[] slot is written exactly once.
 */
extern "C" __global__ void __launch_bounds__(kRankBlock) embedding_bwd_rank(EmbeddingBwdParams p) {
    __shared__ unsigned tile[kRankBlock];
    __shared__ int part[kRankBlock];
    const int count = p.b * p.t;
    const int key = threadIdx.x % kRankKeys, slice = threadIdx.x / kRankKeys;
    const int n = blockIdx.x * kRankKeys + key;
    const unsigned tn = n < count ? (unsigned)p.tokens[n] : 0u;
    int rank = 0;
    for (int base = 0; base < count; base += kRankBlock) {
        __syncthreads(); /* the previous tile is no longer read */
        if (base + (int)threadIdx.x < count) tile[threadIdx.x] = (unsigned)p.tokens[base + threadIdx.x];
        __syncthreads();
        const int lo = base + slice * kRankKeys; /* first row of this thread's slice */
        const int len = min(kRankKeys, count - lo);
        const unsigned* t = tile + slice * kRankKeys; /* warp-uniform: broadcast reads */
#pragma unroll 8
        for (int j = 0; j < len; ++j) {
            const unsigned tm = t[j];
            rank += (tm < tn) | ((tm == tn) & (lo + j < n));
        }
    }
    part[threadIdx.x] = rank;
    __syncthreads();
    if (slice == 0 && n < count) {
        int r = 0;
#pragma unroll
        for (int q = 0; q < kRankSlices; ++q) r += part[q * kRankKeys + key];
        p.order[r] = n;
    }
}

/*
 * One block per sorted position i; only the block where a group of equal
 * tokens starts does work: it adds the group's dout rows into dwte[tok] in
 * position order, one running sum per column. Each thread keeps kWteCols
 * columns at once and the row loop is unrolled, so a long group (a frequent
 * token) has many independent loads in flight while every column's adds stay
 * in order.
 */
extern "C" __global__ void __launch_bounds__(kBlock) embedding_bwd_wte(EmbeddingBwdParams p) {
    const int count = p.b * p.t;
    const int i = blockIdx.x;
    if (i >= count) return;
    const int tok = p.tokens[p.order[i]];
    if (i > 0 && p.tokens[p.order[i - 1]] == tok) return; /* not the group's owner */
    if (tok < 0 || tok >= p.vocab) return;
    int end = i + 1;
    while (end < count && p.tokens[p.order[end]] == tok) ++end;
    const int d = p.d;
    float* w = p.dwte + (long long)tok * d;
    for (int j0 = threadIdx.x; j0 < d; j0 += blockDim.x * kWteCols) {
        float acc[kWteCols];
#pragma unroll
        for (int q = 0; q < kWteCols; ++q) {
            const int j = j0 + q * blockDim.x;
            acc[q] = j < d ? w[j] : 0.0f;
        }
#pragma unroll 4
        for (int k = i; k < end; ++k) {
            const float* g = p.dout + (long long)p.order[k] * d;
#pragma unroll
            for (int q = 0; q < kWteCols; ++q) {
                const int j = j0 + q * blockDim.x;
                if (j < d) acc[q] += g[j];
            }
        }
#pragma unroll
        for (int q = 0; q < kWteCols; ++q) {
            const int j = j0 + q * blockDim.x;
            if (j < d) w[j] = acc[q];
        }
    }
}

/* One block per position, one thread per column, batches in order. */
extern "C" __global__ void __launch_bounds__(kBlock) embedding_bwd_wpe(EmbeddingBwdParams p) {
    const int pos = blockIdx.x;
    if (pos >= p.t) return;
    const int d = p.d;
    const long long row_stride = (long long)p.t * d;
    float* w = p.dwpe + (long long)pos * d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float acc = w[j];
        const float* g = p.dout + (long long)pos * d + j;
#pragma unroll 4
        for (int bi = 0; bi < p.b; ++bi, g += row_stride) acc += *g;
        w[j] = acc;
    }
}
