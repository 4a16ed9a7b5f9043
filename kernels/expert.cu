/*
 * Expert family: the grouped GEMM of a Switch MoE layer over variable-length
 * expert segments (rows offsets[x] .. offsets[x+1]-1 of the dispatched
 * buffers belong to expert x), forward and both backward products, on bf16
 * tensor cores (mma.sync m16n8k16, fp32 accumulation), with the bias, the
 * GELU and the bf16 copy of the next GEMM's operand fused into the
 * epilogues. One kernel serves dropless and capacity modes: a capacity only
 * shortens segments, so no expert is padded to the largest one. The CPU
 * oracle is src/backend/cpu/expert.rs.
 *
 * Shapes (params.h, ExpertParams), M = rows of the dispatched buffers,
 * w [e, k, n] bf16 (per expert [in, out]):
 *   expert_fwd  out [M, n] = a [M, k] @ w[x] + bias[x]          (=)
 *               gelu: out = pre-activation, act [M, n] = gelu(out), out_bf16 = bf16(act)
 *   expert_dx   out [M, k] = a [M, n] @ w[x]^T                 (=)
 *               gelu: out *= gelu'(pre [M, k]); out_bf16 = bf16(out) when non-NULL
 *   expert_dw   out [e, k, n] += a[seg]^T @ b[seg], a [M, k], b [M, n] bf16   (+=)
 *   expert_schedule           tile_start [e+1] (=): kTileM-row tiles before each expert
 *   expert_bias_grad_partial  partial [max_tiles, n] (=): per tile, column sums of grad
 *   expert_bias_grad_finish   bias_grad [e, n] += the expert's tile partials in order
 * Rows past offsets[e] are neither read nor written. Experts with no rows
 * leave their outputs (and dw, bias_grad) untouched.
 *
 * Tiling: a CTA computes a kTileM x kTileN output tile with 8 warps (2 x 4,
 * 64 x 32 each: 4 x 4 MMA tiles, 64 fp32 accumulators per thread), stepping
 * K by kTileK through a kStages-deep cp.async ring in dynamic shared memory
 * (rows padded by 8 bf16 so the 8 row addresses of every ldmatrix hit
 * distinct banks). Operand layouts per product:
 *   fwd: A = a rows [m][k] (ldmatrix),       B = w[x] [k][n] (ldmatrix.trans)
 *   dx:  A = a rows [m][n] (ldmatrix),       B = w[x] read as [n_out=k][k=n] (ldmatrix)
 *   dw:  A = a^T: tile stored [r][i] (ldmatrix.trans), B = b [r][j] (ldmatrix.trans)
 * fwd and dx tiles walk the segments: grid.y enumerates (expert, row tile)
 * pairs through tile_start (at most ceil(M / kTileM) + e of them; the rest
 * exit at once), grid.x the column tiles, so consecutive CTAs share A rows.
 * dw: grid (n tiles, k tiles, e), each CTA looping over its expert's rows.
 * The expert of a row tile is found by binary search over tile_start, so the
 * host never reads the routing (no device-to-host sync per layer).
 *
 * Chosen from register and shared-memory limits, not yet from GPU timings
 * (no GPU run has happened; see experiments/results/): 128 x 128 x 32 with 3
 * stages is 60 KiB of shared memory (3 CTAs per SM by smem, 2 by registers
 * at <= 128 per thread) and the classic mma.sync shape; wgmma (sm_90a) is
 * the route past mma.sync's ceiling on Hopper.
 *
 * Precision and determinism: bf16 operands (the fused bf16 copies written by
 * dispatch, the fc epilogue and combine_bwd, or casts), fp32 accumulation in
 * a fixed order (k tiles in order, MMA k order), fp32 epilogue math; GELU and
 * its derivative are the CPU reference's operation for operation (sy_gelu).
 * Bias gradients sum fp32 gradients per 128-row tile in row order, then the
 * tiles in order (no atomics), so results are bitwise reproducible; they match
 * the CPU's whole-segment sum to rounding.
 *
 * Requirements: k % 8 == 0 and n % 8 == 0 (16-byte cp.async rows), 16-byte
 * aligned base pointers, e <= 1024, M < 2^31.
 *
 * Launch (ceil(x/y) = (x + y - 1) / y; T = ceil(M / 128) + e):
 *   kernel                    grid                          block  dyn smem
 *   expert_schedule           1                              1024   0
 *   expert_fwd                (ceil(n / 128), T)              256    kSmemBytes
 *   expert_dx                 (ceil(k / 128), T)              256    kSmemBytes
 *   expert_dw                 (ceil(n / 128), ceil(k / 128), e)  256  kSmemBytes
 *   expert_bias_grad_partial  (T, ceil(n / 256))              256    0
 *   expert_bias_grad_finish   (e, ceil(n / 256))              256    0
 * with max_tiles = T; kSmemBytes = 61440 (above the 48 KiB default: the
 * launcher opts in).
 */
#include "common.cuh"

constexpr int kTileM = 128, kTileN = 128, kTileK = 32;
constexpr int kWarpsM = 2, kWarpsN = 4;
constexpr int kThreads = 32 * kWarpsM * kWarpsN;
constexpr int kWarpM = kTileM / kWarpsM; /* 64 rows per warp */
constexpr int kWarpN = kTileN / kWarpsN; /* 32 cols per warp */
constexpr int kMmaM = kWarpM / 16;       /* 4 m16 tiles */
constexpr int kMmaN = kWarpN / 8;        /* 4 n8 tiles */
constexpr int kStages = 3;
constexpr int kPad = 8;
/* Shared-memory tiles, in bf16 elements: [rows][cols + kPad]. */
constexpr int kRowMajorMK = kTileM * (kTileK + kPad); /* A as [m][k] (also B as [n][k]) */
constexpr int kRowMajorKM = kTileK * (kTileM + kPad); /* A as [k][m] (also B as [k][n]) */
constexpr int kStageElems = 2 * (kRowMajorMK > kRowMajorKM ? kRowMajorMK : kRowMajorKM);
constexpr int kSmemBytes = kStages * kStageElems * 2;
constexpr int kScheduleThreads = 1024;
constexpr int kBiasBlock = 256;

static_assert(kTileN == kTileM, "row-major [n][k] B tiles reuse the [m][k] A tile size");
static_assert(kSmemBytes == 61440, "the launch table above documents 61440 bytes");

enum class Layout { MK, KM };

/* ---- global -> shared (cp.async, 16-byte chunks of 8 bf16) ----------------- */

/*
 * Tile of ROWS x COLS (COLS contiguous in shared memory, padded to COLS +
 * kPad) from a row-major global matrix: element (r, c) of the tile is
 * g[(row0 + r) * ld + col0 + c], valid when row0 + r < row_end and col0 + c <
 * col_end (chunk granularity: col_end % 8 == 0). Invalid chunks are zero
 * filled, their source clamped to g (a valid address).
 */
template <int ROWS, int COLS>
static __device__ __forceinline__ void load_tile(uint16_t* s, const uint16_t* g, long long ld, long long row0,
                                                 long long row_end, int col0, int col_end) {
    constexpr int kChunksPerRow = COLS / 8;
    constexpr int kChunks = ROWS * kChunksPerRow;
    static_assert(kChunks % kThreads == 0, "tile chunks divide evenly over the CTA");
#pragma unroll
    for (int it = 0; it < kChunks / kThreads; ++it) {
        const int c = it * kThreads + threadIdx.x;
        const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
        const bool valid = row0 + r < row_end && col0 + col < col_end;
        const uint16_t* src = valid ? g + (row0 + r) * ld + col0 + col : g;
        sy_cp_async_16(s + r * (COLS + kPad) + col, src, valid);
    }
}

/* ---- fragments (notation of common.cuh; see kernels/attention.cu) ---------- */

/* A (16 x 16 at m0, k0) from a [m][k] tile. */
static __device__ __forceinline__ void frag_a_mk(uint32_t a[4], const uint16_t* s, int m0, int k0) {
    const int l = threadIdx.x & 31;
    sy_ldmatrix_x4(a, s + (m0 + (l & 15)) * (kTileK + kPad) + k0 + (l >> 4) * 8);
}

/* A (16 x 16 at m0, k0) from a [k][m] tile: matrices (m 0-7 | 8-15) x (k 0-7 | 8-15)
 * in a[0..3] order; the transposing load turns stored rows k into columns. */
static __device__ __forceinline__ void frag_a_km(uint32_t a[4], const uint16_t* s, int m0, int k0) {
    const int l = threadIdx.x & 31, mat = l >> 3;
    sy_ldmatrix_x4_trans(a, s + (k0 + (l & 7) + (mat >> 1) * 8) * (kTileM + kPad) + m0 + (mat & 1) * 8);
}

/* Two B operands (n-tiles n0, n0 + 8; k16 at k0) from a [k][n] tile. */
static __device__ __forceinline__ void frag_b_kn(uint32_t b[4], const uint16_t* s, int k0, int n0) {
    const int l = threadIdx.x & 31;
    sy_ldmatrix_x4_trans(b, s + (k0 + (l & 15)) * (kTileN + kPad) + n0 + (l >> 4) * 8);
}

/* Two B operands from a [n][k] tile (B stored transposed). */
static __device__ __forceinline__ void frag_b_nk(uint32_t b[4], const uint16_t* s, int k0, int n0) {
    const int l = threadIdx.x & 31;
    sy_ldmatrix_x4(b, s + (n0 + (l & 7) + (l >> 4) * 8) * (kTileK + kPad) + k0 + ((l >> 3) & 1) * 8);
}

/* ---- the main loop --------------------------------------------------------- */

/*
 * Operand sources of one CTA tile. A: element (m, kk) of op(A) is
 *   MK: a[(a_row0 + m) * lda + k_base + kk]      (rows m < a_rows valid)
 *   KM: a[(a_row0 + kk) * lda + a_col0 + m]      (rows kk < K valid, cols < a_cols)
 * B: element (kk, n) of op(B) is
 *   MK ("[n][k]"): b[(b_col0 + n) * ldb + kk]    (n < b_cols)
 *   KM ("[k][n]"): b[(b_row0 + kk) * ldb + b_col0 + n]
 */
struct Operands {
    const uint16_t* a;
    long long lda, a_row0, a_rows;
    int a_col0, a_cols;
    const uint16_t* b;
    long long ldb, b_row0;
    int b_col0, b_cols;
    int K; /* reduction length */
};

template <Layout LA, Layout LB>
static __device__ __forceinline__ void load_stage(uint16_t* stage, const Operands& o, int kt) {
    uint16_t* sa = stage;
    uint16_t* sb = stage + kStageElems / 2;
    const int k0 = kt * kTileK;
    if constexpr (LA == Layout::MK)
        load_tile<kTileM, kTileK>(sa, o.a, o.lda, o.a_row0, o.a_row0 + o.a_rows, k0, o.K);
    else
        load_tile<kTileK, kTileM>(sa, o.a, o.lda, o.a_row0 + k0, o.a_row0 + o.K, o.a_col0, o.a_cols);
    if constexpr (LB == Layout::MK)
        load_tile<kTileN, kTileK>(sb, o.b, o.ldb, o.b_col0, o.b_cols, k0, o.K);
    else
        load_tile<kTileK, kTileN>(sb, o.b, o.ldb, o.b_row0 + k0, o.b_row0 + o.K, o.b_col0, o.b_cols);
}

template <Layout LA, Layout LB>
static __device__ __forceinline__ void mainloop(float (&acc)[kMmaM][kMmaN][4], uint16_t* smem, const Operands& o) {
    const int warp = threadIdx.x >> 5;
    const int wm = (warp / kWarpsN) * kWarpM, wn = (warp % kWarpsN) * kWarpN;
    const int k_tiles = (o.K + kTileK - 1) / kTileK;
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
        if (s < k_tiles) load_stage<LA, LB>(smem + s * kStageElems, o, s);
        sy_cp_async_commit();
    }
    for (int kt = 0; kt < k_tiles; ++kt) {
        sy_cp_async_wait<kStages - 2>(); /* tile kt has landed (this thread's copies) */
        __syncthreads();                 /* ... everyone's; and stage kt-1 is free */
        const int next = kt + kStages - 1;
        if (next < k_tiles) load_stage<LA, LB>(smem + (next % kStages) * kStageElems, o, next);
        sy_cp_async_commit();
        const uint16_t* sa = smem + (kt % kStages) * kStageElems;
        const uint16_t* sb = sa + kStageElems / 2;
#pragma unroll
        for (int kk = 0; kk < kTileK; kk += 16) {
            uint32_t af[kMmaM][4], bf[kMmaN / 2][4];
#pragma unroll
            for (int i = 0; i < kMmaM; ++i) {
                if constexpr (LA == Layout::MK)
                    frag_a_mk(af[i], sa, wm + 16 * i, kk);
                else
                    frag_a_km(af[i], sa, wm + 16 * i, kk);
            }
#pragma unroll
            for (int j = 0; j < kMmaN / 2; ++j) {
                if constexpr (LB == Layout::MK)
                    frag_b_nk(bf[j], sb, kk, wn + 16 * j);
                else
                    frag_b_kn(bf[j], sb, kk, wn + 16 * j);
            }
#pragma unroll
            for (int i = 0; i < kMmaM; ++i)
#pragma unroll
                for (int j = 0; j < kMmaN; ++j) sy_mma_bf16_16816(acc[i][j], af[i], &bf[j / 2][(j & 1) * 2]);
        }
    }
    sy_cp_async_wait<0>(); /* no copy outlives the CTA */
}

/* Tile-local coordinates of accumulator element e of MMA tile (i, j). */
static __device__ __forceinline__ int acc_row(int i, int e) {
    const int warp = threadIdx.x >> 5;
    return (warp / kWarpsN) * kWarpM + 16 * i + ((threadIdx.x & 31) >> 2) + (e >> 1) * 8;
}
static __device__ __forceinline__ int acc_col(int j, int e) {
    const int warp = threadIdx.x >> 5;
    return (warp % kWarpsN) * kWarpN + 8 * j + 2 * (threadIdx.x & 3) + (e & 1);
}

/* Expert owning global row tile t (tile_start[x] <= t < tile_start[x+1]). */
static __device__ __forceinline__ int expert_of_tile(const int* tile_start, int e, int t) {
    int lo = 0, hi = e; /* invariant: tile_start[lo] <= t < tile_start[hi] */
    while (hi - lo > 1) {
        const int mid = (lo + hi) >> 1;
        if (tile_start[mid] <= t)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/* The segment rows [row0, row0 + rows) of row tile blockIdx.y, or rows = 0. */
struct RowTile {
    int x;
    long long row0;
    int rows;
};

static __device__ __forceinline__ RowTile row_tile(const ExpertParams& p) {
    const int t = blockIdx.y;
    RowTile r{0, 0, 0};
    if (t >= p.tile_start[p.e]) return r;
    r.x = expert_of_tile(p.tile_start, p.e, t);
    const int mt = t - p.tile_start[r.x];
    r.row0 = (long long)p.offsets[r.x] + (long long)mt * kTileM;
    r.rows = (int)min((long long)kTileM, (long long)p.offsets[r.x + 1] - r.row0);
    return r;
}

/* ---- kernels --------------------------------------------------------------- */

extern "C" __global__ void __launch_bounds__(kScheduleThreads) expert_schedule(ExpertParams p) {
    __shared__ int s_scan[kScheduleThreads];
    const int x = threadIdx.x;
    const int tiles = x < p.e ? (p.offsets[x + 1] - p.offsets[x] + kTileM - 1) / kTileM : 0;
    s_scan[x] = tiles;
    __syncthreads();
    for (int off = 1; off < kScheduleThreads; off <<= 1) {
        const int v = x >= off ? s_scan[x - off] : 0;
        __syncthreads();
        s_scan[x] += v;
        __syncthreads();
    }
    if (x < p.e) p.tile_start[x + 1] = s_scan[x];
    if (x == 0) p.tile_start[0] = 0;
}

/*
 * Operands of a row-tile product out[rows, cols] = a[rows, K] @ op(w[x]): A is
 * the tile's rows of a ([M, K]), B expert x's weight ([k, n], n contiguous),
 * read as [K][cols] in the forward (K = k) and as [cols][K] in dx (K = n).
 */
static __device__ __forceinline__ Operands row_tile_operands(const ExpertParams& p, const RowTile& rt, int K, int cols,
                                                             int col0) {
    Operands o;
    o.a = p.a;
    o.lda = K;
    o.a_row0 = rt.row0;
    o.a_rows = rt.rows;
    o.a_col0 = 0;
    o.a_cols = K;
    o.b = p.b + (long long)rt.x * p.k * p.n;
    o.ldb = p.n;
    o.b_row0 = 0;
    o.b_col0 = col0;
    o.b_cols = cols;
    o.K = K;
    return o;
}

/* f(r, c, v0, v1) for every pair of adjacent accumulators: tile row r, tile
 * columns c and c + 1 (all output widths are even, so pairs never straddle
 * the edge). */
template <class F>
static __device__ __forceinline__ void for_each_pair(const float (&acc)[kMmaM][kMmaN][4], F&& f) {
#pragma unroll
    for (int i = 0; i < kMmaM; ++i)
#pragma unroll
        for (int j = 0; j < kMmaN; ++j)
#pragma unroll
            for (int h = 0; h < 2; ++h) f(acc_row(i, 2 * h), acc_col(j, 0), acc[i][j][2 * h], acc[i][j][2 * h + 1]);
}

extern "C" __global__ void __launch_bounds__(kThreads) expert_fwd(ExpertParams p) {
    const RowTile rt = row_tile(p);
    if (rt.rows <= 0) return;
    SY_DYNAMIC_SMEM(uint16_t, smem);
    const int n0 = blockIdx.x * kTileN;
    float acc[kMmaM][kMmaN][4] = {};
    mainloop<Layout::MK, Layout::KM>(acc, smem, row_tile_operands(p, rt, p.k, p.n, n0));
    const float* bias = p.bias + (long long)rt.x * p.n;
    for_each_pair(acc, [&](int r, int c, float a0, float a1) {
        c += n0;
        if (r >= rt.rows || c >= p.n) return;
        const long long at = (rt.row0 + r) * p.n + c;
        const float v0 = __fadd_rn(a0, bias[c]), v1 = __fadd_rn(a1, bias[c + 1]);
        *reinterpret_cast<float2*>(p.out + at) = make_float2(v0, v1);
        if (p.gelu) {
            const float g0 = sy_gelu(v0), g1 = sy_gelu(v1);
            *reinterpret_cast<float2*>(p.act + at) = make_float2(g0, g1);
            *reinterpret_cast<uint32_t*>(p.out_bf16 + at) = sy_pack_bf16x2(g0, g1);
        }
    });
}

extern "C" __global__ void __launch_bounds__(kThreads) expert_dx(ExpertParams p) {
    const RowTile rt = row_tile(p);
    if (rt.rows <= 0) return;
    SY_DYNAMIC_SMEM(uint16_t, smem);
    const int n0 = blockIdx.x * kTileN; /* output columns: the k inputs of the forward */
    float acc[kMmaM][kMmaN][4] = {};
    mainloop<Layout::MK, Layout::MK>(acc, smem, row_tile_operands(p, rt, p.n, p.k, n0));
    for_each_pair(acc, [&](int r, int c, float v0, float v1) {
        c += n0;
        if (r >= rt.rows || c >= p.k) return;
        const long long at = (rt.row0 + r) * p.k + c;
        if (p.gelu) {
            const float2 pre = *reinterpret_cast<const float2*>(p.pre + at);
            v0 = __fmul_rn(v0, sy_gelu_grad(pre.x));
            v1 = __fmul_rn(v1, sy_gelu_grad(pre.y));
        }
        *reinterpret_cast<float2*>(p.out + at) = make_float2(v0, v1);
        if (p.out_bf16) *reinterpret_cast<uint32_t*>(p.out_bf16 + at) = sy_pack_bf16x2(v0, v1);
    });
}

extern "C" __global__ void __launch_bounds__(kThreads) expert_dw(ExpertParams p) {
    const int x = blockIdx.z;
    const long long seg0 = p.offsets[x];
    const int rows = p.offsets[x + 1] - p.offsets[x];
    if (rows <= 0) return;
    SY_DYNAMIC_SMEM(uint16_t, smem);
    const int i0 = blockIdx.y * kTileM, j0 = blockIdx.x * kTileN;
    /* A = x^T (tile stored [r][i]), B = dy ([r][j]), both the segment's rows. */
    Operands o;
    o.a = p.a;
    o.lda = p.k;
    o.a_row0 = seg0;
    o.a_rows = 0; /* unused for a [k][m] A: its rows are the reduction */
    o.a_col0 = i0;
    o.a_cols = p.k;
    o.b = p.b;
    o.ldb = p.n;
    o.b_row0 = seg0;
    o.b_col0 = j0;
    o.b_cols = p.n;
    o.K = rows;
    float acc[kMmaM][kMmaN][4] = {};
    mainloop<Layout::KM, Layout::KM>(acc, smem, o);
    float* dw = p.out + (long long)x * p.k * p.n;
    for_each_pair(acc, [&](int r, int c, float v0, float v1) {
        r += i0;
        c += j0;
        if (r >= p.k || c >= p.n) return;
        float2* d = reinterpret_cast<float2*>(dw + (long long)r * p.n + c);
        const float2 old = *d;
        *d = make_float2(__fadd_rn(old.x, v0), __fadd_rn(old.y, v1));
    });
}

/* partial[t, c] = sum of grad[r, c] over the rows of row tile t, in order. */
extern "C" __global__ void __launch_bounds__(kBiasBlock) expert_bias_grad_partial(ExpertParams p) {
    const int t = blockIdx.x;
    if (t >= p.tile_start[p.e]) return;
    const int x = expert_of_tile(p.tile_start, p.e, t);
    const long long r0 = (long long)p.offsets[x] + (long long)(t - p.tile_start[x]) * kTileM;
    const long long r1 = min(r0 + kTileM, (long long)p.offsets[x + 1]);
    for (int c = blockIdx.y * kBiasBlock + threadIdx.x; c < p.n; c += gridDim.y * kBiasBlock) {
        const float* g = p.grad + r0 * p.n + c;
        float acc = 0.0f;
#pragma unroll 8
        for (long long r = r0; r < r1; ++r, g += p.n) acc = __fadd_rn(acc, *g);
        p.partial[(long long)t * p.n + c] = acc;
    }
}

/* bias_grad[x, c] += partial[t, c] for expert x's tiles t, in order. */
extern "C" __global__ void __launch_bounds__(kBiasBlock) expert_bias_grad_finish(ExpertParams p) {
    const int x = blockIdx.x;
    const int t0 = p.tile_start[x], t1 = p.tile_start[x + 1];
    if (t0 == t1) return;
    for (int c = blockIdx.y * kBiasBlock + threadIdx.x; c < p.n; c += gridDim.y * kBiasBlock) {
        float acc = p.bias_grad[(long long)x * p.n + c];
        for (int t = t0; t < t1; ++t) acc = __fadd_rn(acc, p.partial[(long long)t * p.n + c]);
        p.bias_grad[(long long)x * p.n + c] = acc;
    }
}
