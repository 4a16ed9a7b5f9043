/*
 * Launch-parameter structs shared by the CUDA kernels and the Rust host code.
 *
 * Every kernel takes exactly one of these structs by value (STYLE.md: no
 * positional argument lists that can drift). build.rs parses this file and
 * generates the `#[repr(C)]` Rust mirror (`src/backend/cuda/params.rs`
 * includes it), so this header is the single definition.
 *
 * The generator accepts a deliberately small C subset, and fails the build on
 * anything else:
 *   typedef struct { <field>; ... } Name;
 * where a field is one of
 *   float x;  int x;  long long x;  unsigned long long x;
 *   T* x;  const T* x;     (any pointer: a device address, u64 in Rust)
 * Block comments are allowed anywhere; no line comments, no nesting.
 *
 * bf16 tensors are passed as `unsigned short*` (their bit patterns) so this
 * header stays plain C; kernels reinterpret them as `__nv_bfloat16`.
 * All tensors are row-major and contiguous unless a stride says otherwise.
 * "=" outputs are overwritten, "+=" outputs accumulate.
 */
#ifndef SWITCHYARD_PARAMS_H
#define SWITCHYARD_PARAMS_H

/* ---- elementwise.cu ------------------------------------------------- */

/* elementwise_add: a[i] += b[i], i < n. */
typedef struct {
    float* a;
    const float* b;
    long long n;
} AddParams;

/* elementwise_cast_f32_bf16: dst[i] = bf16(src[i]) (round to nearest even). */
typedef struct {
    unsigned short* dst;
    const float* src;
    long long n;
} CastBf16Params;

/* elementwise_cast_bf16_f32: dst[i] = float(src[i]) (exact). */
typedef struct {
    float* dst;
    const unsigned short* src;
    long long n;
} CastF32Params;

/* ---- activation.cu -------------------------------------------------- */

/* activation_bias_fwd: out[r, c] += bias[c] for r < rows, c < cols. */
typedef struct {
    float* out;
    const float* bias;
    int rows;
    int cols;
} BiasParams;

/*
 * activation_bias_gelu_fwd: pre[r, c] += bias[c]; out[r, c] = gelu_tanh(pre[r, c]).
 * pre: [rows, cols] (+= bias, kept for the backward), out: [rows, cols] (=).
 */
typedef struct {
    float* pre;
    float* out;
    const float* bias;
    int rows;
    int cols;
} BiasGeluParams;

/*
 * activation_gelu_fwd: out[i] = gelu_tanh(x[i]) (dout unused).
 * activation_gelu_bwd: out[i] = dout[i] * gelu_tanh'(x[i]).
 */
typedef struct {
    float* out;
    const float* x;
    const float* dout;
    long long n;
} GeluParams;

/*
 * Deterministic column sums (bias gradients), two launches:
 *   activation_colsum_partial: grid = ceil(rows / chunk_rows) blocks,
 *     partial[blk, c] = sum of src[r, c] over the rows of chunk blk, rows in order;
 *   activation_colsum_finish: dst[c] += sum over blk (in order) of partial[blk, c].
 * partial: [ceil(rows / chunk_rows), cols] scratch.
 */
typedef struct {
    float* dst;
    float* partial;
    const float* src;
    int rows;
    int cols;
    int chunk_rows;
} ColSumParams;

/* ---- norm.cu -------------------------------------------------------- */

/*
 * norm_layernorm_fwd: per row r of x [rows, c]:
 *   mean[r] = sum(x)/c, rstd[r] = 1/sqrt(sum((x-mean)^2)/c + eps),
 *   out = (x - mean) * rstd * w + b. All fp32 (DESIGN.md §3).
 */
typedef struct {
    float* out;
    float* mean;
    float* rstd;
    const float* x;
    const float* w;
    const float* b;
    int rows;
    int c;
    float eps;
} LayerNormParams;

/*
 * LayerNorm backward, two launches (no atomics):
 *   norm_layernorm_bwd: dx[r] += the input gradient of row r; for its chunk of
 *     chunk_rows rows, block blk writes partial[blk, 0:c] = sum dout*xhat and
 *     partial[blk, c:2c] = sum dout, rows in order;
 *   norm_layernorm_bwd_finish: dw[j] += sum_blk partial[blk, j],
 *     db[j] += sum_blk partial[blk, c + j], blk in order.
 * partial: [ceil(rows / chunk_rows), 2c] scratch.
 */
typedef struct {
    float* dx;
    float* dw;
    float* db;
    float* partial;
    const float* dout;
    const float* x;
    const float* w;
    const float* mean;
    const float* rstd;
    int rows;
    int c;
    int chunk_rows;
} LayerNormBwdParams;

/* ---- embedding.cu --------------------------------------------------- */

/*
 * embedding_fwd: out[n] = wte[tokens[n]] + wpe[pos(n)], n < b*t, where
 * pos(n) = positions[n] when positions is non-NULL (inference: each sequence
 * at its own position), else n % t.
 * Out-of-range tokens or positions (host-validated before upload) write zeros.
 */
typedef struct {
    float* out;
    const int* tokens;
    const int* positions;
    const float* wte;
    const float* wpe;
    int b;
    int t;
    int d;
    int vocab;
    int max_t;
} EmbeddingParams;

/*
 * Embedding backward, deterministic (no float atomics), three launches:
 *   embedding_bwd_rank: order[rank(n)] = n, ranking the unique keys
 *     (tokens[n], n), so rows of one token are grouped and in position order;
 *   embedding_bwd_wte: for each group, dwte[token] += sum of its dout rows, in order;
 *   embedding_bwd_wpe: dwpe[p] += sum over batch i (in order) of dout[i*t + p].
 * order: [b*t] scratch.
 */
typedef struct {
    float* dwte;
    float* dwpe;
    int* order;
    const float* dout;
    const int* tokens;
    int b;
    int t;
    int d;
    int vocab;
} EmbeddingBwdParams;

/* ---- loss.cu -------------------------------------------------------- */

/*
 * loss_cross_entropy: one block per row of logits [rows, v]:
 *   losses[r] = logsumexp(logits[r]) - logits[r, targets[r]]       (=)
 *   dlogits[r] = (softmax(logits[r]) - onehot(targets[r])) * dloss (=, if non-NULL)
 * dlogits may alias logits (the softmax is recomputed from registers/the
 * row statistics, never stored twice).
 */
typedef struct {
    float* losses;
    float* dlogits;
    const float* logits;
    const int* targets;
    int rows;
    int v;
    float dloss;
} CrossEntropyParams;

/* ---- optim.cu ------------------------------------------------------- */

/*
 * Global gradient norm, deterministic, two launches:
 *   optim_sum_squares_partial: block blk writes partial[blk] = sum of g[i]^2
 *     over its chunk of `chunk` elements (fixed tree order);
 *   optim_sum_squares_finish: acc[0] += sum over blk (in order) of partial[blk].
 * partial: [ceil(n / chunk)] scratch.
 */
typedef struct {
    float* acc;
    float* partial;
    const float* g;
    long long n;
    int chunk;
} SumSquaresParams;

/*
 * optim_adamw: one AdamW step with global-norm clipping, fp32 master weights:
 *   s = max_norm > 0 ? min(1, max_norm / sqrt(norm_sq[0])) : 1   (read on device)
 *   g = grad * s; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2
 *   param -= lr * (m / bias_corr1 / (sqrt(v / bias_corr2) + eps) + weight_decay * param)
 *   param_bf16 = bf16(param) when non-NULL (the copy matmuls read).
 * bias_corr1 = 1 - b1^t, bias_corr2 = 1 - b2^t, computed on the host in f32
 * exactly as the CPU reference does.
 */
typedef struct {
    float* param;
    unsigned short* param_bf16;
    float* m;
    float* v;
    const float* grad;
    const float* norm_sq;
    long long n;
    float lr;
    float beta1;
    float beta2;
    float eps;
    float weight_decay;
    float bias_corr1;
    float bias_corr2;
    float max_norm;
} AdamWParams;

/* ---- attention.cu --------------------------------------------------- */

/*
 * Fused (flash) attention over packed qkv, one struct for the family.
 * qkv: bf16 [b*t, 3*h*hd] (q | k | v, head-major within each third);
 * dout: bf16 [b*t, h*hd]; out, out_f32/dout_f32: fp32 [b*t, h*hd];
 * lse, delta: fp32 [b, h, t]; dqkv: fp32 [b*t, 3*h*hd].
 * Scores are scale * q.k (scale = 1/sqrt(hd)); causal masks key > query.
 *
 *   attention_fwd_hd{32,64,128}: out (=), lse (=, natural log).
 *   attention_bwd_delta: delta[b,h,i] = sum_c dout_f32 * out_f32 over row i of head h.
 *   attention_bwd_dkdv_hd{..}: dk, dv slices of dqkv (=), recomputing P from lse.
 *   attention_bwd_dq_hd{..}: dq slice of dqkv (=), recomputing P and dS.
 * Splitting dK/dV from dQ keeps the backward free of atomics, so it is
 * deterministic (the price is computing P and dP twice).
 */
typedef struct {
    const unsigned short* qkv;
    const unsigned short* dout;
    const float* out_f32;
    const float* dout_f32;
    float* out;
    float* lse;
    float* delta;
    float* dqkv;
    int b;
    int t;
    int h;
    int hd;
    int causal;
    float scale;
} AttentionParams;

/*
 * Inference (KV cache), attention family.
 *
 * attention_kv_append: for each new row i < n, copy its k and v (columns
 *   h*hd.. and 2*h*hd.. of qkv row i, stride 3*h*hd) into row slots[i] of
 *   k_cache and v_cache ([*, h*hd] each). Rows with slots[i] < 0 are skipped.
 *
 * attention_decode_hd{32,64,128}: one query per sequence s < n_seq (q at
 *   column hh*hd of row s of `q`, row stride q_stride) against keys 0 ..
 *   lens[s]-1 of its cache rows s*max_t .. s*max_t + lens[s] - 1 (keys are
 *   all visible: the query is the newest position). Split along the keys
 *   into chunks of `chunk`: block (c, hh, s) writes for chunk c its running
 *   max m (natural-log units of scale*q.k), sum l = sum exp(score - m) and
 *   unnormalized o = sum exp(score - m) v into part_ml[((s*h + hh)*n_chunks
 *   + c)*2 + {0,1}] and part_o[((s*h + hh)*n_chunks + c)*hd + ...]. Chunks
 *   wholly past lens[s] write m = -inf, l = 0, o = 0.
 * attention_decode_reduce: out[s, hh*hd + j] = (sum_c e^(m_c - M) o_c[j]) /
 *   (sum_c e^(m_c - M) l_c), M = max_c m_c, chunks combined in index order
 *   (deterministic). All fp32.
 */
typedef struct {
    float* k_cache;
    float* v_cache;
    const float* qkv;
    const int* slots;
    const float* q;
    const int* lens;
    float* part_o;
    float* part_ml;
    float* out;
    int n;
    int n_seq;
    int h;
    int hd;
    int max_t;
    int q_stride;
    int chunk;
    int n_chunks;
    float scale;
} DecodeParams;

/* ---- router.cu ------------------------------------------------------- */

/*
 * router_jitter:     mult[i] = fma(2 eps, u_i, 1 - eps), out[i] = x[i] * mult[i]
 *                    (=), i < n, u_i the SplitMix64 draw of (seed, i)
 *                    (src/backend/cpu/router.rs, jitter_mult).
 * router_jitter_bwd: out[i] = x[i] * mult[i] (=), with x = the upstream gradient.
 */
typedef struct {
    float* out;
    float* mult;
    const float* x;
    unsigned long long seed;
    long long n;
    float eps;
} RouterJitterParams;

/*
 * Routing forward (DESIGN.md §2 steps 2-9), five launches in this order over
 * fp32 logits [n, e]; assignment a = t*k + j is token t's j-th choice, and
 * the slot order visits s = j*n + t (all first choices, then all second ...):
 *   router_topk:   probs [n, e], expert and gate [n*k] (=); tok_stats [n, 2]
 *                  = (logsumexp, entropy) per token (scratch). e <= 128;
 *                  router_topk_wide (the same contract) for e up to 1024.
 *   router_count:  per chunk c of `chunk` consecutive s: rank[a] = number of
 *                  earlier s in the chunk with the same expert, chunk_counts
 *                  [c, e] = the chunk's count per expert (scratch).
 *   router_stats:  per chunk of `tok_chunk` tokens: partial[c, 0:e] = sum of
 *                  probs over its tokens, partial[c, e] = sum of entropies,
 *                  partial[c, e+1] = sum of lse^2 (f64, scratch).
 *   router_finish: chunk_counts -> exclusive per-expert bases (in place);
 *                  offsets [e+1] of the kept (min(count, capacity)) segments;
 *                  stats (RouterStats layout, src/backend/mod.rs) (=).
 *   router_assign: row[a] = offsets[expert] + position if position < capacity
 *                  else -1; row_assign[row] = a; row_assign[r] = -1 for
 *                  r >= offsets[e] (=, all n*k rows).
 * normalize != 0 divides each token's k gates by their sum.
 */
typedef struct {
    const float* logits;
    float* probs;
    int* expert;
    float* gate;
    int* row;
    int* row_assign;
    int* offsets;
    float* stats;
    float* tok_stats;
    int* rank;
    int* chunk_counts;
    double* partial;
    int n;
    int e;
    int k;
    int capacity;
    int normalize;
    int chunk;
    int tok_chunk;
    float aux_coef;
    float z_coef;
} RouterFwdParams;

/*
 * router_bwd (e <= 128; router_bwd_wide up to 1024): dlogits [n, e] (=) from
 * the gate gradients dgate [n*k] (0 for dropped assignments), the aux loss
 * through P_e (f_e read from stats' assigned counts) and the z-loss, each
 * scaled by dloss (src/backend/cpu/router.rs).
 */
typedef struct {
    float* dlogits;
    const float* dgate;
    const float* logits;
    const float* probs;
    const int* expert;
    const float* stats;
    int n;
    int e;
    int k;
    int normalize;
    float aux_coef;
    float z_coef;
    float dloss;
} RouterBwdParams;

/* ---- dispatch.cu ------------------------------------------------------ */

/*
 * Gather-based permutation between token order [n, d] and expert-contiguous
 * rows [n_rows, d] (a = t*k + j; row[a] = -1 when dropped; row_assign[r] = -1
 * for unused rows):
 *   dispatch_fwd:         out[r] = src[row_assign[r] / k] (=) for used rows r;
 *                         out_bf16[r] = bf16(out[r]) when out_bf16 != NULL.
 *   dispatch_bwd:         out[t] += sum_j src[row[t*k + j]], j ascending,
 *                         kept assignments only.
 *   dispatch_combine_fwd: out[t] = sum_j gate[a] * src[row[a]] over kept a,
 *                         j ascending (= ; 0 if none kept).
 *   dispatch_combine_bwd: for kept a: out[row[a]] = gate[a] * src[t] (=),
 *                         out_bf16 as above, dgate[a] = <src[t], ye[row[a]]>;
 *                         dgate[a] = 0 for dropped a. (src = dout [n, d].)
 */
typedef struct {
    float* out;
    unsigned short* out_bf16;
    float* dgate;
    const float* src;
    const float* ye;
    const int* row;
    const int* row_assign;
    const float* gate;
    int n;
    int n_rows;
    int k;
    int d;
} DispatchParams;

/* ---- expert.cu -------------------------------------------------------- */

/*
 * Grouped GEMM over expert segments (rows offsets[e] .. offsets[e+1]-1 of the
 * dispatched buffers belong to expert e; weights w [e, k, n] bf16, i.e.
 * [in, out] per expert). bf16 operands, fp32 accumulation and outputs.
 *   expert_schedule: tile_start[x] = number of kExpertTileM-row tiles of the
 *                    experts before x, x <= e (=).
 *   expert_fwd:      out[r] = a[r] @ w[x] + bias[x] (=) for r in segment x;
 *                    with gelu: out is the pre-activation, act = gelu(out)
 *                    (=), out_bf16 = bf16(act). a: [M, k] bf16; out: [M, n].
 *   expert_dx:       out[r] = a[r] @ w[x]^T (=); with gelu: times
 *                    gelu'(pre[r]); out_bf16 = bf16(out) when non-NULL.
 *                    a: [M, n] bf16 (dy); out, pre: [M, k].
 *   expert_dw:       out[x] += a[seg]^T @ b[seg] (a: [M, k] bf16 activations,
 *                    b: [M, n] bf16 output gradients; out: [e, k, n] fp32).
 *   expert_bias_grad_partial: partial[tile, c] = sum over the tile's rows
 *                    of grad[r, c] (fp32, rows in order).
 *   expert_bias_grad_finish:  bias_grad[x, c] += partial[t, c] for the tiles
 *                    t of expert x in order.
 * k and n must be multiples of 8 (16-byte rows for cp.async).
 */
typedef struct {
    const unsigned short* a;
    const unsigned short* b;
    const float* bias;
    const float* pre;
    float* out;
    float* act;
    unsigned short* out_bf16;
    const int* offsets;
    int* tile_start;
    float* partial;
    const float* grad;
    float* bias_grad;
    int e;
    int k;
    int n;
    int max_tiles;
    int gelu;
} ExpertParams;

#endif
