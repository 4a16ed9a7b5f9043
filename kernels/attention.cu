/*
 * Fused causal flash attention over packed qkv, forward and backward, on bf16
 * tensor cores (mma.sync m16n8k16 via sy_mma_bf16_16816), head_dim 32, 64, 128;
 * and, at the end of the file, fp32 inference kernels over a KV cache (see
 * "Inference" below). The CPU oracle is src/backend/cpu/attention.rs;
 * DESIGN.md §4 is the contract.
 *
 * What is fused: the forward computes S = scale * Q K^T, the causal mask, an
 * online (flash-attention-2) softmax and O = P V in one kernel, so the t x t
 * scores never reach global memory. The backward recomputes P from Q, K and
 * the saved logsumexp and fuses dP = dO V^T, dS = P * (dP - delta) and the
 * gradient products in two kernels: one owns a key tile (dK, dV), one owns a
 * query tile (dQ).
 *
 * Shapes (params.h, AttentionParams):
 *   qkv   bf16 [b*t, 3*h*hd]; head hh of token row r = bi*t + i has q at
 *         column hh*hd, k at h*hd + hh*hd, v at 2*h*hd + hh*hd.
 *   dout  bf16 [b*t, h*hd]   (bf16 copy of the upstream gradient)
 *   out, out_f32, dout_f32   fp32 [b*t, h*hd] (head hh at columns hh*hd)
 *   lse, delta               fp32 [b, h, t]
 *   dqkv  fp32 [b*t, 3*h*hd] (same column layout as qkv)
 * Scores are scale * q.k (scale = p.scale = 1/sqrt(hd)); p.causal != 0 masks
 * keys j > i, p.causal == 0 attends to all t keys. p.hd must equal the HD of
 * the kernel launched (the host picks the kernel by head_dim). Any t >= 1.
 *
 *   attention_fwd_hd{32,64,128}: out (=), lse (=, natural log of sum_j exp(s_ij)).
 *   attention_bwd_delta:         delta (=) = rowsum(dout_f32 * out_f32) per head.
 *   attention_bwd_dkdv_hd{..}:   dk, dv slices of dqkv (=).
 *   attention_bwd_dq_hd{..}:     dq slice of dqkv (=).
 * Order: delta before dkdv and dq; dkdv and dq are independent of each other
 * and together overwrite all of dqkv for rows < b*t.
 *
 * Precision: bf16 operands, fp32 MMA accumulation; softmax statistics (running
 * max, sum, lse), P and dS in fp32 registers, rounded to bf16 only as MMA
 * operands. Scores are handled in log2 units (scale * log2 e prescaled, exp2f);
 * lse is converted back to natural log on store.
 *
 * Determinism: no atomics. Every output element is written by exactly one
 * thread, after a reduction whose order is fixed by the tile shapes (MMA k
 * order, then the loop over tiles in index order). dQ has its own kernel for
 * this reason: accumulating it from the dK/dV kernel would need float atomics
 * across key tiles. Same inputs and launch shapes give the same bits.
 *
 * Ragged tails: tiles are loaded with sy_cp_async_16 zero-fill (source
 * clamped to row 0 of the batch, which exists as t >= 1); scores of keys >= t
 * are masked, rows >= t are computed on zeros and never written.
 *
 * Inference (KV cache; params.h, DecodeParams), all fp32 on CUDA cores, one
 * query per sequence, split-K over the keys (flash-decoding):
 *   k_cache, v_cache  fp32 [n_seq * max_t, h*hd]; sequence s owns rows
 *                     s*max_t .. s*max_t + max_t - 1, key j at row s*max_t + j
 *   qkv   fp32 [n, 3*h*hd] (new rows); slots int [n] (cache row, < 0 skips)
 *   q     fp32, head hh of sequence s at q[s*q_stride + hh*hd]; lens int [n_seq]
 *   part_ml fp32 [n_seq, h, n_chunks, 2] (m, l); part_o fp32 [n_seq, h, n_chunks, hd]
 *   out   fp32 [n_seq, h*hd]
 *   attention_kv_append:          cache rows slots[i] (=) from k, v of qkv row i.
 *   attention_decode_hd{32,64,128}: part_ml, part_o (=) of chunk c (keys
 *                                 c*chunk .. min((c+1)*chunk, lens[s]) - 1):
 *                                 m = max score (natural log), l = sum e^(score-m),
 *                                 o = sum e^(score-m) v; chunks past lens[s]:
 *                                 m = -inf, l = 0, o = 0.
 *   attention_decode_reduce:      out (=) = sum_c e^(m_c-M) o_c / sum_c e^(m_c-M) l_c.
 * Order: kv_append (this step's k, v) before decode, decode before reduce.
 * Requires 1 <= lens[s] <= max_t, n_chunks * chunk >= lens[s] (keys past the
 * last chunk are not seen), p.hd = the kernel's HD. expf and plain fp32 (no
 * fast-math intrinsics): the oracle is an exact softmax. Deterministic: each
 * warp walks its keys in a fixed order, warps merge in index order, chunks
 * combine in index order; no atomics.
 *
 * Launch (all shared memory is static, <= 48 KB; dynamic smem bytes = 0;
 * ceil(x/y) = (x + y - 1) / y):
 *   kernel                       grid                      block  dyn smem
 *   attention_fwd_hd32           (ceil(t/64), h, b)         128    0
 *   attention_fwd_hd64           (ceil(t/64), h, b)         128    0
 *   attention_fwd_hd128          (ceil(t/64), h, b)         128    0
 *   attention_bwd_delta          (ceil(b*t*h/8), 1, 1)      256    0
 *   attention_bwd_dkdv_hd32      (ceil(t/64), h, b)         128    0
 *   attention_bwd_dkdv_hd64      (ceil(t/64), h, b)         128    0
 *   attention_bwd_dkdv_hd128     (ceil(t/32), h, b)          64    0
 *   attention_bwd_dq_hd32        (ceil(t/64), h, b)         128    0
 *   attention_bwd_dq_hd64        (ceil(t/64), h, b)         128    0
 *   attention_bwd_dq_hd128       (ceil(t/32), h, b)          64    0
 *   attention_kv_append          (clamp(ceil(n*h*hd/256), 1, 65535), 1, 1)  256  0
 *   attention_decode_hd32        (n_chunks, h, n_seq)       128    0
 *   attention_decode_hd64        (n_chunks, h, n_seq)       128    0
 *   attention_decode_hd128       (n_chunks, h, n_seq)       128    0
 *   attention_decode_reduce      (h, n_seq)                 128    0
 * kv_append is grid-stride (any grid, block <= 256 gives the same result);
 * decode needs exactly 128 threads (4 warps); reduce loops over hd with a
 * block stride, so any block <= 128 is correct and gives the same bits.
 */
#include "common.cuh"

/* ---- tile shapes ------------------------------------------------------ */

/*
 * Shared-memory rows are padded by 8 bf16 (16 bytes): with HD + 8 elements per
 * row, consecutive rows start 4 banks apart (mod 32), so the 8 row addresses
 * of one ldmatrix 8x8 matrix hit disjoint banks.
 */
static constexpr int kPad = 8;
static constexpr float kLog2e = 1.4426950408889634f;
static constexpr float kLn2 = 0.6931471805599453f;

/*
 * Forward: one CTA per 64-query tile, 4 warps x 16 rows (one m16 MMA block
 * each), streaming key tiles of kBc. kBc = 64 for hd <= 64; for hd 128, Q + K
 * + V tiles of 64 padded rows would need 51 KB (over the 48 KB static limit),
 * so the key tile shrinks to 32 (34 KB). Chosen from shared-memory and
 * register limits, not yet from GPU timings.
 */
template <int HD>
struct FwdTile {
    static constexpr int kBr = 64;
    static constexpr int kBc = HD == 128 ? 32 : 64;
    static constexpr int kThreads = 32 * kBr / 16;
    static constexpr int kStride = HD + kPad;
};

/*
 * Backward: a CTA owns kRows rows (keys for dK/dV, queries for dQ; 16 per
 * warp) and loops over the other side kStep at a time. Four padded tiles
 * (two of kRows, two of kStep rows) live in shared memory: 37 KB at hd 64 with
 * 64/64; at hd 128, 64/64 would need 68 KB, so both shrink to 32 (35 KB, two
 * warps), which also keeps the dK + dV accumulators (128 fp32 registers per
 * thread at hd 128) clear of spilling. Not yet tuned on a GPU.
 */
template <int HD>
struct BwdTile {
    static constexpr int kRows = HD == 128 ? 32 : 64;
    static constexpr int kStep = HD == 128 ? 32 : 64;
    static constexpr int kThreads = 32 * kRows / 16;
    static constexpr int kStride = HD + kPad;
};

static constexpr int kDeltaThreads = 256; /* 8 warps, one (row, head) each */

/* ---- shared-memory tiles ---------------------------------------------- */

/*
 * Async copy of rows row0 .. row0+ROWS-1 (HD bf16 each) of a strided global
 * matrix into a padded [ROWS][HD + kPad] tile. `g` points at row 0 (this
 * batch's first token, this head's column); rows >= t are zero-filled, their
 * source clamped to row 0 so the address stays in bounds.
 */
template <int ROWS, int HD, int THREADS>
static __device__ __forceinline__ void load_tile_async(uint16_t* tile, const uint16_t* g, long long ld, int row0,
                                                       int t) {
    constexpr int kChunksPerRow = HD / 8; /* 16-byte chunks */
    constexpr int kChunks = ROWS * kChunksPerRow;
    static_assert(kChunks % THREADS == 0, "tile chunks must divide evenly over the block");
#pragma unroll
    for (int it = 0; it < kChunks / THREADS; ++it) {
        const int c = it * THREADS + threadIdx.x;
        const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
        const bool valid = row0 + r < t;
        const uint16_t* src = g + (long long)(valid ? row0 + r : 0) * ld + col;
        sy_cp_async_16(tile + r * (HD + kPad) + col, src, valid);
    }
}

/* ---- MMA fragments ------------------------------------------------------
 * Notation of common.cuh: g = lane / 4, q = lane % 4. ldmatrix lane l supplies
 * the address of row l % 8 of 8x8 matrix l / 8, and matrix i lands in
 * register i; non-transposed, lane l then holds (row l/4, cols 2(l%4)..+1) of
 * each matrix, transposed it holds (rows 2(l%4)..+1, col l/4).
 */

/*
 * A operand (16 x 16 at rows m0, cols k0) of a row-major [m][k] tile.
 * Matrices: 0 = (rows 0-7, cols 0-7) -> a[0], 1 = (rows 8-15, cols 0-7) -> a[1],
 * 2 = (rows 0-7, cols 8-15) -> a[2], 3 = (rows 8-15, cols 8-15) -> a[3].
 */
static __device__ __forceinline__ void ld_a(uint32_t a[4], const uint16_t* tile, int stride, int m0, int k0) {
    const int l = threadIdx.x & 31;
    sy_ldmatrix_x4(a, tile + (m0 + (l & 15)) * stride + k0 + (l >> 4) * 8);
}

/*
 * Two B operands (k16 x n8, n-tiles n0 and n0 + 8) where B[k][n] = tile[n][k],
 * i.e. the tile stores B transposed (K for Q K^T): lane g of matrix i reads
 * tile row n, cols 2q..2q+1 = b (rows k 2q..2q+1, col n) directly.
 * Matrices: 0 = (n 0-7, k 0-7) -> b[0], 1 = (n 0-7, k 8-15) -> b[1],
 * 2 = (n 8-15, k 0-7) -> b[2], 3 = (n 8-15, k 8-15) -> b[3].
 */
static __device__ __forceinline__ void ld_b_nk(uint32_t b[4], const uint16_t* tile, int stride, int k0, int n0) {
    const int l = threadIdx.x & 31;
    sy_ldmatrix_x4(b, tile + (n0 + (l & 7) + (l >> 4) * 8) * stride + k0 + ((l >> 3) & 1) * 8);
}

/*
 * Two B operands (n-tiles n0 and n0 + 8) where B[k][n] = tile[k][n] (V for
 * P V): the transposing load gives lane (g, q) tile rows 2q..2q+1 of col g.
 * Matrices: 0 = (k 0-7, n 0-7) -> b[0], 1 = (k 8-15, n 0-7) -> b[1],
 * 2 = (k 0-7, n 8-15) -> b[2], 3 = (k 8-15, n 8-15) -> b[3].
 */
static __device__ __forceinline__ void ld_b_kn(uint32_t b[4], const uint16_t* tile, int stride, int k0, int n0) {
    const int l = threadIdx.x & 31;
    sy_ldmatrix_x4_trans(b, tile + (k0 + (l & 15)) * stride + n0 + (l >> 4) * 8);
}

/*
 * The m16n8 accumulators of n-tiles 2kk and 2kk+1 (cols 0-7, 8-15 of a k16
 * step) as the bf16 A operand of the next MMA: c[0..1] is (row g, cols
 * 2q..2q+1), c[2..3] is (row g+8, same cols), exactly a[0]/a[1] (and a[2]/a[3]
 * for the second n-tile).
 */
static __device__ __forceinline__ void acc_to_a(uint32_t a[4], const float c0[4], const float c1[4]) {
    a[0] = sy_pack_bf16x2(c0[0], c0[1]);
    a[1] = sy_pack_bf16x2(c0[2], c0[3]);
    a[2] = sy_pack_bf16x2(c1[0], c1[1]);
    a[3] = sy_pack_bf16x2(c1[2], c1[3]);
}

/*
 * acc (16 x NT*8) += A B^T over k = HD: A = rows m0..m0+15 of tile `a`
 * ([m][HD]), B^T = the first NT*8 rows of tile `b` ([n][HD]). Both tiles have
 * stride HD + kPad. Used for every "rows x rows^T" product: Q K^T, K Q^T,
 * dO V^T, V dO^T.
 */
template <int HD, int NT>
static __device__ __forceinline__ void mma_rows_bt(float (&acc)[NT][4], const uint16_t* a, int m0, const uint16_t* b) {
    constexpr int kStride = HD + kPad;
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
        uint32_t af[4];
        ld_a(af, a, kStride, m0, kk * 16);
#pragma unroll
        for (int n2 = 0; n2 < NT / 2; ++n2) {
            uint32_t bf[4];
            ld_b_nk(bf, b, kStride, kk * 16, n2 * 16);
            sy_mma_bf16_16816(acc[2 * n2], af, bf);
            sy_mma_bf16_16816(acc[2 * n2 + 1], af, bf + 2);
        }
    }
}

/*
 * acc (16 x HD) += P B: P = 16 x NT*8 fp32 accumulators in registers (rounded
 * to bf16 here), B = tile `b` ([NT*8][HD], stride HD + kPad). Used for P V,
 * P^T dO, dS^T Q and dS K.
 */
template <int HD, int NT>
static __device__ __forceinline__ void mma_regs_b(float (&acc)[HD / 8][4], const float (&pr)[NT][4],
                                                  const uint16_t* b) {
    constexpr int kStride = HD + kPad;
#pragma unroll
    for (int kq = 0; kq < NT / 2; ++kq) {
        uint32_t af[4];
        acc_to_a(af, pr[2 * kq], pr[2 * kq + 1]);
#pragma unroll
        for (int n2 = 0; n2 < HD / 16; ++n2) {
            uint32_t bf[4];
            ld_b_kn(bf, b, kStride, kq * 16, n2 * 16);
            sy_mma_bf16_16816(acc[2 * n2], af, bf);
            sy_mma_bf16_16816(acc[2 * n2 + 1], af, bf + 2);
        }
    }
}

/* Accumulator element e of an n-tile: row g + 8 (e >= 2), col 2q + (e & 1). */
static __device__ __forceinline__ int acc_row(int e) { return ((threadIdx.x & 31) >> 2) + (e >> 1) * 8; }
static __device__ __forceinline__ int acc_col(int n, int e) { return n * 8 + 2 * (threadIdx.x & 3) + (e & 1); }

/* ---- forward ------------------------------------------------------------ */

/*
 * Score tile of one warp: rows are queries row0 + acc_row, cols keys col0 +
 * acc_col. Keys past t, and with `causal` keys after the query, become -inf.
 */
template <int NT>
static __device__ __forceinline__ void mask_scores(float (&s)[NT][4], int row0, int col0, int t, bool causal) {
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int i = row0 + acc_row(e), j = col0 + acc_col(n, e);
            if (j >= t || (causal && j > i)) s[n][e] = -INFINITY;
        }
}

/*
 * One online-softmax step (log2 units): m = running max of scale*log2e*s,
 * l = this thread's partial running sum (its 2 columns per n-tile; the 4 lanes
 * of a row are summed at the end), o rescaled by exp2(m_old - m_new). On exit
 * s holds the unnormalized probabilities. Rows r = 0, 1 are rows g, g + 8.
 */
template <int NT, int NO>
static __device__ __forceinline__ void softmax_step(float (&s)[NT][4], float (&m)[2], float (&l)[2], float (&o)[NO][4],
                                                    float sl2) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float mx = -INFINITY;
#pragma unroll
        for (int n = 0; n < NT; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
        /* The 4 lanes of a quad share the row. */
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m[r], mx * sl2); /* sl2 > 0: max commutes with scaling */
        /* A row with no live key yet keeps m = -inf; subtract 0 instead so
         * exp2 sees -inf, not (-inf) - (-inf) = NaN. */
        const float base = m_new == -INFINITY ? 0.0f : m_new;
        const float alpha = exp2f(m[r] - base);
        m[r] = m_new;
        float sum = 0.0f;
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
            for (int e = 2 * r; e < 2 * r + 2; ++e) {
                s[n][e] = exp2f(fmaf(s[n][e], sl2, -base));
                sum += s[n][e];
            }
        l[r] = l[r] * alpha + sum;
#pragma unroll
        for (int n = 0; n < NO; ++n) {
            o[n][2 * r] *= alpha;
            o[n][2 * r + 1] *= alpha;
        }
    }
}

template <int HD>
static __device__ __forceinline__ void attention_fwd(const AttentionParams& p) {
    using T = FwdTile<HD>;
    constexpr int kBr = T::kBr, kBc = T::kBc, kThreads = T::kThreads;
    __shared__ __align__(16) uint16_t sQ[kBr * T::kStride];
    __shared__ __align__(16) uint16_t sK[kBc * T::kStride];
    __shared__ __align__(16) uint16_t sV[kBc * T::kStride];

    const int t = p.t, h = p.h, hh = blockIdx.y, bi = blockIdx.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int q0 = blockIdx.x * kBr, wrow0 = q0 + warp * 16;
    const long long ld = 3LL * h * HD;
    const uint16_t* gq = p.qkv + (long long)bi * t * ld + hh * HD;
    const uint16_t* gk = gq + h * HD;
    const uint16_t* gv = gq + 2 * h * HD;
    const bool causal = p.causal != 0;
    const int n_keys = causal ? min(t, q0 + kBr) : t; /* later keys are masked for every row */
    const int n_kt = (n_keys + kBc - 1) / kBc;
    const float sl2 = p.scale * kLog2e;

    float o[HD / 8][4] = {};
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

    /* Pipeline: K_{j+1} streams in during the softmax and P V of tile j, V_j
     * during Q K_j^T. Every iteration commits two groups (possibly empty), so
     * wait<1> always means "all but the newest group". */
    load_tile_async<kBr, HD, kThreads>(sQ, gq, ld, q0, t);
    load_tile_async<kBc, HD, kThreads>(sK, gk, ld, 0, t);
    sy_cp_async_commit();
    for (int kt = 0; kt < n_kt; ++kt) {
        const int k0 = kt * kBc;
        load_tile_async<kBc, HD, kThreads>(sV, gv, ld, k0, t);
        sy_cp_async_commit();
        sy_cp_async_wait<1>(); /* Q, K_kt */
        __syncthreads();

        float s[kBc / 8][4] = {};
        mma_rows_bt<HD>(s, sQ, warp * 16, sK);
        __syncthreads(); /* all warps done with sK */
        if (kt + 1 < n_kt) load_tile_async<kBc, HD, kThreads>(sK, gk, ld, k0 + kBc, t);
        sy_cp_async_commit();

        if (k0 + kBc > t || (causal && k0 + kBc - 1 > wrow0)) mask_scores(s, wrow0, k0, t, causal);
        softmax_step(s, m, l, o, sl2);

        sy_cp_async_wait<1>(); /* V_kt */
        __syncthreads();
        mma_regs_b<HD>(o, s, sV);
        __syncthreads(); /* all warps done with sV before the next V load */
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float sum = l[r];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
        const int i = wrow0 + acc_row(2 * r);
        if (i >= t) continue;
        float* dst = p.out + ((long long)bi * t + i) * (h * HD) + hh * HD;
#pragma unroll
        for (int n = 0; n < HD / 8; ++n)
            *reinterpret_cast<float2*>(dst + acc_col(n, 0)) = make_float2(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
        if ((lane & 3) == 0) p.lse[((long long)bi * h + hh) * t + i] = (m[r] + log2f(sum)) * kLn2;
    }
}

/* ---- backward ----------------------------------------------------------- */

/*
 * delta[bi, hh, i] = sum_c dout_f32[r, hh*hd + c] * out_f32[r, hh*hd + c],
 * r = bi*t + i: one warp per (row, head), lanes strided over c, then a fixed
 * butterfly, so the order is the same every run.
 */
extern "C" __global__ void __launch_bounds__(kDeltaThreads) attention_bwd_delta(AttentionParams p) {
    const long long w = (long long)blockIdx.x * (kDeltaThreads / 32) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (w >= (long long)p.b * p.t * p.h) return; /* whole warps exit together */
    const long long r = w / p.h;
    const int hh = (int)(w % p.h);
    const long long off = r * p.h * p.hd + (long long)hh * p.hd;
    float acc = 0.0f;
    for (int c = lane; c < p.hd; c += 32) acc += p.dout_f32[off + c] * p.out_f32[off + c];
    acc = sy_warp_sum(acc);
    if (lane == 0) {
        const long long bi = r / p.t, i = r % p.t;
        p.delta[(bi * p.h + hh) * p.t + i] = acc;
    }
}

/*
 * dK, dV for the kRows keys k0.. of one (batch, head). Each warp owns 16 keys
 * and works on transposed scores S^T = K Q^T (rows keys, cols queries), so
 * P^T and dS^T come out of the MMA already in the A-operand layout that
 * dV += P^T dO and dK += dS^T Q need: no shared-memory staging of P.
 */
template <int HD>
static __device__ __forceinline__ void attention_bwd_dkdv(const AttentionParams& p) {
    using T = BwdTile<HD>;
    constexpr int kRows = T::kRows, kStep = T::kStep, kThreads = T::kThreads;
    static_assert(kStep <= kThreads, "one thread per query row of the statistics");
    __shared__ __align__(16) uint16_t sK[kRows * T::kStride];
    __shared__ __align__(16) uint16_t sV[kRows * T::kStride];
    __shared__ __align__(16) uint16_t sQ[kStep * T::kStride];
    __shared__ __align__(16) uint16_t sdO[kStep * T::kStride];
    __shared__ float sLse[kStep]; /* log2 units */
    __shared__ float sDelta[kStep];

    const int t = p.t, h = p.h, hh = blockIdx.y, bi = blockIdx.z;
    const int warp = threadIdx.x >> 5;
    const int k0 = blockIdx.x * kRows, key0 = k0 + warp * 16;
    const long long ld = 3LL * h * HD, ldo = (long long)h * HD;
    const uint16_t* gq = p.qkv + (long long)bi * t * ld + hh * HD;
    const uint16_t* gk = gq + h * HD;
    const uint16_t* gv = gq + 2 * h * HD;
    const uint16_t* gdo = p.dout + (long long)bi * t * ldo + hh * HD;
    const float* lse = p.lse + ((long long)bi * h + hh) * t;
    const float* delta = p.delta + ((long long)bi * h + hh) * t;
    const bool causal = p.causal != 0;
    const float sl2 = p.scale * kLog2e;

    float dk[HD / 8][4] = {}, dv[HD / 8][4] = {};

    load_tile_async<kRows, HD, kThreads>(sK, gk, ld, k0, t);
    load_tile_async<kRows, HD, kThreads>(sV, gv, ld, k0, t);
    sy_cp_async_commit();
    /* Causal: queries before k0 see none of these keys. k0 < t, so there is
     * always at least one query tile. */
    const int first_qt = causal ? k0 / kStep : 0;
    const int n_qt = (t + kStep - 1) / kStep;
    for (int qt = first_qt; qt < n_qt; ++qt) {
        const int i0 = qt * kStep;
        load_tile_async<kStep, HD, kThreads>(sQ, gq, ld, i0, t);
        sy_cp_async_commit();
        load_tile_async<kStep, HD, kThreads>(sdO, gdo, ldo, i0, t);
        sy_cp_async_commit();
        if (threadIdx.x < kStep) {
            const int i = i0 + threadIdx.x;
            sLse[threadIdx.x] = i < t ? lse[i] * kLog2e : 0.0f;
            sDelta[threadIdx.x] = i < t ? delta[i] : 0.0f;
        }
        sy_cp_async_wait<1>(); /* K, V (first pass), Q */
        __syncthreads();

        /* P^T[key][query] = exp(scale * s - lse_query), 0 where masked. */
        float s[kStep / 8][4] = {};
        mma_rows_bt<HD>(s, sK, warp * 16, sQ);
#pragma unroll
        for (int n = 0; n < kStep / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int c = acc_col(n, e), i = i0 + c, j = key0 + acc_row(e);
                const bool live = i < t && (!causal || j <= i);
                s[n][e] = live ? exp2f(fmaf(s[n][e], sl2, -sLse[c])) : 0.0f;
            }

        sy_cp_async_wait<0>(); /* dO */
        __syncthreads();
        mma_regs_b<HD>(dv, s, sdO);

        /* dS^T = P^T * (dP^T - delta_query), dP^T = V dO^T. */
        float ds[kStep / 8][4] = {};
        mma_rows_bt<HD>(ds, sV, warp * 16, sdO);
#pragma unroll
        for (int n = 0; n < kStep / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) ds[n][e] = s[n][e] * (ds[n][e] - sDelta[acc_col(n, e)]);
        mma_regs_b<HD>(dk, ds, sQ);
        __syncthreads(); /* all warps done with sQ, sdO, sLse, sDelta */
    }

    float* dst = p.dqkv + (long long)bi * t * ld + hh * HD;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int j = key0 + acc_row(2 * r);
        if (j >= t) continue;
        float* row = dst + (long long)j * ld;
#pragma unroll
        for (int n = 0; n < HD / 8; ++n) {
            const int c = acc_col(n, 0);
            *reinterpret_cast<float2*>(row + h * HD + c) =
                make_float2(dk[n][2 * r] * p.scale, dk[n][2 * r + 1] * p.scale);
            *reinterpret_cast<float2*>(row + 2 * h * HD + c) = make_float2(dv[n][2 * r], dv[n][2 * r + 1]);
        }
    }
}

/*
 * dQ for the kRows queries i0.. of one (batch, head): each warp owns 16
 * queries, recomputes P and dS for each key tile and accumulates dS K.
 */
template <int HD>
static __device__ __forceinline__ void attention_bwd_dq(const AttentionParams& p) {
    using T = BwdTile<HD>;
    constexpr int kRows = T::kRows, kStep = T::kStep, kThreads = T::kThreads;
    __shared__ __align__(16) uint16_t sQ[kRows * T::kStride];
    __shared__ __align__(16) uint16_t sdO[kRows * T::kStride];
    __shared__ __align__(16) uint16_t sK[kStep * T::kStride];
    __shared__ __align__(16) uint16_t sV[kStep * T::kStride];

    const int t = p.t, h = p.h, hh = blockIdx.y, bi = blockIdx.z;
    const int warp = threadIdx.x >> 5;
    const int i0 = blockIdx.x * kRows, row0 = i0 + warp * 16;
    const long long ld = 3LL * h * HD, ldo = (long long)h * HD;
    const uint16_t* gq = p.qkv + (long long)bi * t * ld + hh * HD;
    const uint16_t* gk = gq + h * HD;
    const uint16_t* gv = gq + 2 * h * HD;
    const uint16_t* gdo = p.dout + (long long)bi * t * ldo + hh * HD;
    const float* lse = p.lse + ((long long)bi * h + hh) * t;
    const float* delta = p.delta + ((long long)bi * h + hh) * t;
    const bool causal = p.causal != 0;
    const float sl2 = p.scale * kLog2e;

    load_tile_async<kRows, HD, kThreads>(sQ, gq, ld, i0, t);
    load_tile_async<kRows, HD, kThreads>(sdO, gdo, ldo, i0, t);
    sy_cp_async_commit();

    /* Statistics of this thread's two rows (g, g + 8); rows past t get
     * finite placeholders and are never written. */
    float lse2[2], dl[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int i = row0 + acc_row(2 * r);
        lse2[r] = i < t ? lse[i] * kLog2e : 0.0f;
        dl[r] = i < t ? delta[i] : 0.0f;
    }

    float dq[HD / 8][4] = {};
    const int n_keys = causal ? min(t, i0 + kRows) : t;
    const int n_kt = (n_keys + kStep - 1) / kStep;
    for (int kt = 0; kt < n_kt; ++kt) {
        const int k0 = kt * kStep;
        load_tile_async<kStep, HD, kThreads>(sK, gk, ld, k0, t);
        sy_cp_async_commit();
        load_tile_async<kStep, HD, kThreads>(sV, gv, ld, k0, t);
        sy_cp_async_commit();
        sy_cp_async_wait<1>(); /* Q, dO (first pass), K */
        __syncthreads();

        /* P[query][key] = exp(scale * s - lse_query), 0 where masked. */
        float s[kStep / 8][4] = {};
        mma_rows_bt<HD>(s, sQ, warp * 16, sK);
#pragma unroll
        for (int n = 0; n < kStep / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = row0 + acc_row(e), j = k0 + acc_col(n, e);
                const bool live = j < t && (!causal || j <= i);
                s[n][e] = live ? exp2f(fmaf(s[n][e], sl2, -lse2[e >> 1])) : 0.0f;
            }

        sy_cp_async_wait<0>(); /* V */
        __syncthreads();
        /* dS = P * (dP - delta_query), dP = dO V^T. */
        float ds[kStep / 8][4] = {};
        mma_rows_bt<HD>(ds, sdO, warp * 16, sV);
#pragma unroll
        for (int n = 0; n < kStep / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) ds[n][e] = s[n][e] * (ds[n][e] - dl[e >> 1]);
        mma_regs_b<HD>(dq, ds, sK);
        __syncthreads(); /* all warps done with sK, sV before the next loads */
    }

    float* dst = p.dqkv + (long long)bi * t * ld + hh * HD;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int i = row0 + acc_row(2 * r);
        if (i >= t) continue;
        float* row = dst + (long long)i * ld;
#pragma unroll
        for (int n = 0; n < HD / 8; ++n)
            *reinterpret_cast<float2*>(row + acc_col(n, 0)) =
                make_float2(dq[n][2 * r] * p.scale, dq[n][2 * r + 1] * p.scale);
    }
}

/* ---- entry points (Launch table in the header comment) ------------------ */

/* Written out (not macro-generated) so every exported name is greppable. */
extern "C" __global__ void __launch_bounds__(FwdTile<32>::kThreads) attention_fwd_hd32(AttentionParams p) {
    attention_fwd<32>(p);
}
extern "C" __global__ void __launch_bounds__(FwdTile<64>::kThreads) attention_fwd_hd64(AttentionParams p) {
    attention_fwd<64>(p);
}
extern "C" __global__ void __launch_bounds__(FwdTile<128>::kThreads) attention_fwd_hd128(AttentionParams p) {
    attention_fwd<128>(p);
}
extern "C" __global__ void __launch_bounds__(BwdTile<32>::kThreads) attention_bwd_dkdv_hd32(AttentionParams p) {
    attention_bwd_dkdv<32>(p);
}
extern "C" __global__ void __launch_bounds__(BwdTile<64>::kThreads) attention_bwd_dkdv_hd64(AttentionParams p) {
    attention_bwd_dkdv<64>(p);
}
extern "C" __global__ void __launch_bounds__(BwdTile<128>::kThreads) attention_bwd_dkdv_hd128(AttentionParams p) {
    attention_bwd_dkdv<128>(p);
}
extern "C" __global__ void __launch_bounds__(BwdTile<32>::kThreads) attention_bwd_dq_hd32(AttentionParams p) {
    attention_bwd_dq<32>(p);
}
extern "C" __global__ void __launch_bounds__(BwdTile<64>::kThreads) attention_bwd_dq_hd64(AttentionParams p) {
    attention_bwd_dq<64>(p);
}
extern "C" __global__ void __launch_bounds__(BwdTile<128>::kThreads) attention_bwd_dq_hd128(AttentionParams p) {
    attention_bwd_dq<128>(p);
}

/* ---- inference (KV cache) ------------------------------------------------ */

/*
 * Split-K decode (flash-decoding): one query per sequence, so there is no
 * query tile to feed an MMA; the work is reading K and V, and it is spread
 * over (chunk, head, sequence) blocks so a long cache still covers the SMs.
 * Each of the kDecodeWarps warps walks its keys kDecodeKeys at a time, keys
 * k0 + (it * kDecodeWarps + warp) * kDecodeKeys + g, g < kDecodeKeys, with
 * lane `lane` holding elements lane + 32 e (e < HD / 32) of q, k, v and o.
 * kDecodeKeys independent key/value loads per warp keep memory busy while
 * the scores' warp sums complete; neither constant is tuned on a GPU yet.
 */
static constexpr int kDecodeWarps = 4;
static constexpr int kDecodeThreads = 32 * kDecodeWarps;
static constexpr int kDecodeKeys = 8;
static constexpr int kReduceThreads = 128;
static constexpr int kAppendThreads = 256;

/* k_cache[slots[i]] = k of row i, v_cache[slots[i]] = v of row i; slot < 0 skips. */
extern "C" __global__ void __launch_bounds__(kAppendThreads) attention_kv_append(DecodeParams p) {
    const int d = p.h * p.hd;
    SY_FOR_EACH(idx, (long long)p.n * d) {
        const long long i = idx / d;
        const int c = (int)(idx % d);
        const int slot = p.slots[i];
        if (slot < 0) continue;
        const float* row = p.qkv + i * 3 * d;
        p.k_cache[(long long)slot * d + c] = row[d + c];
        p.v_cache[(long long)slot * d + c] = row[2 * d + c];
    }
}

/*
 * Partial softmax state of keys [c * chunk, min((c + 1) * chunk, lens[s]))
 * for head hh of sequence s, (c, hh, s) = blockIdx. Per warp: an online
 * softmax in natural-log units, (m, l) warp-uniform (the butterfly leaves the
 * same bits in every lane), o per lane. The warp states are then merged in
 * warp order through shared memory. Keys past the chunk are never loaded:
 * cache rows past lens[s] may hold anything, even NaN.
 */
template <int HD>
static __device__ __forceinline__ void attention_decode(const DecodeParams& p) {
    constexpr int kE = HD / 32;
    __shared__ float sO[kDecodeWarps][HD];
    __shared__ float sM[kDecodeWarps], sL[kDecodeWarps];

    const int c = blockIdx.x, hh = blockIdx.y, s = blockIdx.z;
    if (c >= p.n_chunks) return; /* whole block */
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int d = p.h * HD;
    const int k0 = c * p.chunk, k1 = min(k0 + p.chunk, p.lens[s]);
    const float* q = p.q + (long long)s * p.q_stride + hh * HD;
    const float* kc = p.k_cache + (long long)s * p.max_t * d + hh * HD;
    const float* vc = p.v_cache + (long long)s * p.max_t * d + hh * HD;

    float qr[kE], o[kE];
#pragma unroll
    for (int e = 0; e < kE; ++e) {
        qr[e] = q[lane + 32 * e];
        o[e] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;

    /* The group's first key is < k1, so every step has a finite score. */
    for (int base = k0 + warp * kDecodeKeys; base < k1; base += kDecodeWarps * kDecodeKeys) {
        float kr[kDecodeKeys][kE], vr[kDecodeKeys][kE];
#pragma unroll
        for (int g = 0; g < kDecodeKeys; ++g) {
            const bool live = base + g < k1;
            const long long off = (long long)(base + g) * d + lane;
#pragma unroll
            for (int e = 0; e < kE; ++e) {
                kr[g][e] = live ? kc[off + 32 * e] : 0.0f;
                vr[g][e] = live ? vc[off + 32 * e] : 0.0f;
            }
        }
        float sc[kDecodeKeys];
        float mx = -INFINITY;
#pragma unroll
        for (int g = 0; g < kDecodeKeys; ++g) {
            float dot = 0.0f;
#pragma unroll
            for (int e = 0; e < kE; ++e) dot += qr[e] * kr[g][e];
            dot = sy_warp_sum(dot);
            sc[g] = base + g < k1 ? p.scale * dot : -INFINITY;
            mx = fmaxf(mx, sc[g]);
        }
        const float m_new = fmaxf(m, mx);
        const float alpha = expf(m - m_new); /* 0 on the first step (m = -inf) */
        m = m_new;
        l *= alpha;
#pragma unroll
        for (int e = 0; e < kE; ++e) o[e] *= alpha;
#pragma unroll
        for (int g = 0; g < kDecodeKeys; ++g) {
            const float pr = base + g < k1 ? expf(sc[g] - m_new) : 0.0f;
            l += pr;
#pragma unroll
            for (int e = 0; e < kE; ++e) o[e] += pr * vr[g][e];
        }
    }

#pragma unroll
    for (int e = 0; e < kE; ++e) sO[warp][lane + 32 * e] = o[e];
    if (lane == 0) {
        sM[warp] = m;
        sL[warp] = l;
    }
    __syncthreads();

    /* A warp (or the whole chunk) without keys has m = -inf: weight 0, not
     * exp(-inf - -inf) = NaN. A dead chunk thus writes m = -inf, l = 0, o = 0. */
    float mc = -INFINITY;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) mc = fmaxf(mc, sM[w]);
    float wt[kDecodeWarps];
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) wt[w] = sM[w] == -INFINITY ? 0.0f : expf(sM[w] - mc);

    const long long part = ((long long)s * p.h + hh) * p.n_chunks + c;
    for (int j = threadIdx.x; j < HD; j += kDecodeThreads) {
        float acc = 0.0f;
#pragma unroll
        for (int w = 0; w < kDecodeWarps; ++w) acc += wt[w] * sO[w][j];
        p.part_o[part * HD + j] = acc;
    }
    if (threadIdx.x == 0) {
        float lc = 0.0f;
#pragma unroll
        for (int w = 0; w < kDecodeWarps; ++w) lc += wt[w] * sL[w];
        p.part_ml[part * 2] = mc;
        p.part_ml[part * 2 + 1] = lc;
    }
}

extern "C" __global__ void __launch_bounds__(kDecodeThreads) attention_decode_hd32(DecodeParams p) {
    attention_decode<32>(p);
}
extern "C" __global__ void __launch_bounds__(kDecodeThreads) attention_decode_hd64(DecodeParams p) {
    attention_decode<64>(p);
}
extern "C" __global__ void __launch_bounds__(kDecodeThreads) attention_decode_hd128(DecodeParams p) {
    attention_decode<128>(p);
}

/*
 * out[s, hh*hd + j] = sum_c w_c o_c[j] / sum_c w_c l_c, w_c = exp(m_c - M),
 * for (hh, s) = blockIdx, one thread per j (block-strided), chunks in index
 * order. Every thread recomputes M and the denominator in the same order, so
 * they agree bit for bit. lens[s] >= 1 makes chunk 0 live, so the
 * denominator is >= 1; the guard only keeps a malformed lens[s] = 0 at zeros.
 */
extern "C" __global__ void __launch_bounds__(kReduceThreads) attention_decode_reduce(DecodeParams p) {
    const int hh = blockIdx.x, s = blockIdx.y, hd = p.hd, nc = p.n_chunks;
    const long long base = ((long long)s * p.h + hh) * nc;
    const float* ml = p.part_ml + base * 2;
    float mx = -INFINITY;
    for (int c = 0; c < nc; ++c) mx = fmaxf(mx, ml[2 * c]);
    float* dst = p.out + (long long)s * p.h * hd + (long long)hh * hd;
    for (int j = threadIdx.x; j < hd; j += blockDim.x) {
        float num = 0.0f, den = 0.0f;
        for (int c = 0; c < nc; ++c) {
            const float mc = ml[2 * c];
            if (mc == -INFINITY) continue; /* dead chunk: l = 0, o = 0 */
            const float w = expf(mc - mx);
            num += w * p.part_o[(base + c) * hd + j];
            den += w * ml[2 * c + 1];
        }
        dst[j] = den > 0.0f ? num / den : 0.0f;
    }
}
