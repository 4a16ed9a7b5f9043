//! The backend trait: the op set the model is written against.
//!
//! Every op of DESIGN.md §4 appears here once, grouped by family (matmul,
//! expert, attention, router, dispatch, norm, activation, embedding, loss,
//! optim). The model code in `crate::model` only calls these methods, so a
//! device backend slots in without touching it. [`cpu::Cpu`] is the f32 reference
//! implementation and the oracle for every kernel.
//!
//! Conventions:
//! - Row-major tensors; shapes are given in each method's `# Shapes` section.
//! - "`=`" methods overwrite their output, "`+=`" methods accumulate into it
//!   (gradients of parameters and of the residual stream accumulate).
//! - Results never depend on the number of threads: every reduction has a
//!   fixed order.

pub mod cpu;
pub mod cuda;

use crate::config::Config;
use crate::Result;

/// Routing hyper-parameters of one MoE layer call (DESIGN.md §2, steps 3-9).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RouterParams {
    /// Tokens routed (`N = B*T`).
    pub n_tokens: usize,
    /// Experts.
    pub n_experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Expert capacity `C` in assignments (already resolved; dropless = `N`).
    pub capacity: usize,
    /// Divide the k gates by their sum.
    pub normalize_gates: bool,
    /// Load-balancing coefficient alpha.
    pub aux_coef: f32,
    /// z-loss coefficient beta.
    pub z_coef: f32,
}

/// Layout of the per-layer router statistics buffer written by
/// [`Backend::router_fwd`]: `[assigned (E) | kept (E) | prob_sum (E) | scalars]`.
///
/// Scalars: `entropy_sum` (sum over tokens of the router entropy, nats),
/// `lse_sq_sum` (sum over tokens of `logsumexp(z)^2`), `dropped` (assignments
/// over capacity), `aux` (the aux loss value), `z` (the z-loss value).
pub struct RouterStats;

impl RouterStats {
    /// Number of scalar slots after the three per-expert arrays.
    pub const SCALARS: usize = 5;
    /// Total length for `e` experts.
    pub fn len(e: usize) -> usize {
        3 * e + Self::SCALARS
    }
    /// Offset of the assigned-per-expert counts (before capacity).
    pub fn assigned(_e: usize) -> usize {
        0
    }
    /// Offset of the kept-per-expert counts (after capacity).
    pub fn kept(e: usize) -> usize {
        e
    }
    /// Offset of the per-expert probability sums `sum_n p[n, e]`.
    pub fn prob_sum(e: usize) -> usize {
        2 * e
    }
    /// Offset of the entropy sum.
    pub fn entropy_sum(e: usize) -> usize {
        3 * e
    }
    /// Offset of the sum of squared logsumexps.
    pub fn lse_sq_sum(e: usize) -> usize {
        3 * e + 1
    }
    /// Offset of the dropped-assignment count.
    pub fn dropped(e: usize) -> usize {
        3 * e + 2
    }
    /// Offset of the aux loss value.
    pub fn aux(e: usize) -> usize {
        3 * e + 3
    }
    /// Offset of the z-loss value.
    pub fn z(e: usize) -> usize {
        3 * e + 4
    }
}

/// How a matmul operand is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    /// As stored.
    N,
    /// Transposed: `op(x) = x^T`.
    T,
}

/// Whether an op overwrites its output or adds to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acc {
    /// `c = ...`.
    Set,
    /// `c += ...` (gradient accumulation).
    Add,
}

/// The precision of a matmul's operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// The backend's fast path: bf16 operands with fp32 accumulation on CUDA
    /// (DESIGN.md §3), f32 on the CPU.
    Mixed,
    /// fp32 operands and accumulation on every backend: the router's
    /// selective precision (DESIGN.md §2.1 and §3), where bf16 logits would
    /// perturb which expert a token picks.
    Fp32,
}

/// One matmul, `c (=|+=) op(a) @ op(b)`: `op(a)` is `[m, k]` (stored `[k, m]`
/// when transposed), `op(b)` is `[k, n]` (stored `[n, k]` when transposed),
/// `c` is `[m, n]`. Built from [`Gemm::new`] (`c = a @ b`, mixed precision)
/// and the modifiers: `Gemm::new(d, n, f).ta().add()` is `c += a^T @ b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gemm {
    /// Rows of `op(a)` and `c`.
    pub m: usize,
    /// The reduced dimension.
    pub k: usize,
    /// Columns of `op(b)` and `c`.
    pub n: usize,
    /// How `a` is read.
    pub a: Trans,
    /// How `b` is read.
    pub b: Trans,
    /// `=` or `+=`.
    pub acc: Acc,
    /// Operand precision.
    pub precision: Precision,
}

impl Gemm {
    /// `c = a @ b` with `a`: `[m, k]`, `b`: `[k, n]`, mixed precision.
    pub fn new(m: usize, k: usize, n: usize) -> Gemm {
        Gemm { m, k, n, a: Trans::N, b: Trans::N, acc: Acc::Set, precision: Precision::Mixed }
    }
    /// Read `a` transposed (stored `[k, m]`).
    pub fn ta(self) -> Gemm {
        Gemm { a: Trans::T, ..self }
    }
    /// Read `b` transposed (stored `[n, k]`).
    pub fn tb(self) -> Gemm {
        Gemm { b: Trans::T, ..self }
    }
    /// Add into `c` instead of overwriting it.
    pub fn add(self) -> Gemm {
        Gemm { acc: Acc::Add, ..self }
    }
    /// fp32 operands on every backend.
    pub fn fp32(self) -> Gemm {
        Gemm { precision: Precision::Fp32, ..self }
    }
    /// `c (=|+=) op(a) @ op(b)` from flags (tests and benches that sweep the layouts).
    pub fn from_flags(m: usize, k: usize, n: usize, ta: bool, tb: bool, acc: bool) -> Gemm {
        let t = |f: bool| if f { Trans::T } else { Trans::N };
        Gemm { a: t(ta), b: t(tb), acc: if acc { Acc::Add } else { Acc::Set }, ..Gemm::new(m, k, n) }
    }
    /// `(a transposed, b transposed, accumulate)` as flags.
    pub fn flags(&self) -> (bool, bool, bool) {
        (self.a == Trans::T, self.b == Trans::T, self.acc == Acc::Add)
    }
}

/// One grouped (per-expert) GEMM's sizes: `e` experts, each multiplying its
/// rows `[., k]` by its own `[k, n]` weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grouped {
    /// Experts `E`.
    pub e: usize,
    /// Input width.
    pub k: usize,
    /// Output width.
    pub n: usize,
}

/// One attention call's sizes: `b` sequences of `t` tokens, `h` heads of
/// `hd` dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    /// Sequences.
    pub b: usize,
    /// Tokens per sequence.
    pub t: usize,
    /// Heads.
    pub h: usize,
    /// Head dimension.
    pub hd: usize,
}

impl AttnShape {
    /// Token rows `b * t`.
    pub fn rows(&self) -> usize {
        self.b * self.t
    }
    /// Model width `h * hd`.
    pub fn width(&self) -> usize {
        self.h * self.hd
    }
}

/// One decode step's sizes: `n_seq` sequences of one new token each, `h`
/// heads of `hd`, caches of `max_t` positions per sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeShape {
    /// Sequences (one query each).
    pub n_seq: usize,
    /// Heads.
    pub h: usize,
    /// Head dimension.
    pub hd: usize,
    /// Cache positions per sequence.
    pub max_t: usize,
}

/// The routing of one MoE layer call over `n` tokens, `e` experts and top-`k`
/// (DESIGN.md §2 steps 2-9): what [`Backend::router_fwd`] writes and
/// dispatch, combine and the router backward read. Assignment `a = i*k + j`
/// is token `i`'s `j`-th choice. One type for every caller: the model's
/// training and evaluation, inference, the op benchmark and the tests.
pub struct Routing<B: Backend + ?Sized> {
    /// Tokens `N`.
    pub n: usize,
    /// Experts `E`.
    pub e: usize,
    /// Experts per token `k`.
    pub k: usize,
    /// Router probabilities `[N, E]`.
    pub probs: B::Buf,
    /// Chosen expert of each assignment `[N*k]`.
    pub expert: B::IBuf,
    /// Gate of each assignment `[N*k]` (after optional normalization, before
    /// the kept mask).
    pub gate: B::Buf,
    /// Dispatched row of each assignment, -1 if dropped `[N*k]`.
    pub row: B::IBuf,
    /// Assignment of each dispatched row, -1 past the last kept one `[N*k]`.
    pub row_assign: B::IBuf,
    /// Expert segment offsets into the dispatched rows `[E + 1]`.
    pub offsets: B::IBuf,
    /// Statistics, [`RouterStats`] layout.
    pub stats: B::Buf,
}

impl<B: Backend> Routing<B> {
    /// Buffers for calls over `n` tokens.
    pub fn new(be: &B, n: usize, e: usize, k: usize) -> Result<Routing<B>> {
        let rows = n * k;
        Ok(Routing {
            n,
            e,
            k,
            probs: be.alloc(n * e, "router probabilities")?,
            expert: be.alloc_i(rows, "expert choices")?,
            gate: be.alloc(rows, "gates")?,
            row: be.alloc_i(rows, "dispatch rows")?,
            row_assign: be.alloc_i(rows, "dispatch inverse rows")?,
            offsets: be.alloc_i(e + 1, "expert offsets")?,
            stats: be.alloc(RouterStats::len(e), "router statistics")?,
        })
    }

    /// Rows of the dispatched buffers: `N*k` (every assignment at most once).
    pub fn rows(&self) -> usize {
        self.n * self.k
    }
}

/// The op set. `Buf` holds f32 values, `IBuf` holds i32 values (token ids,
/// expert indices, row maps). Buffers live wherever the backend computes.
pub trait Backend: Sync {
    /// An f32 buffer.
    type Buf: Send + Sync;
    /// An i32 buffer.
    type IBuf: Send + Sync;

    /// Human-readable device name, e.g. `cpu (2 threads)`.
    fn name(&self) -> String;

    /// Refuse a model this backend cannot run (unsupported shapes or layer
    /// kinds) with an error naming the setting and the fix, before any launch.
    fn supports(&self, _cfg: &Config) -> Result<()> {
        Ok(())
    }

    /// Run `f` with this backend's workers at hand. The CPU backend runs it
    /// inside its thread pool, so the ops `f` issues run inline instead of
    /// handing each one to the pool (a decode loop issues thousands of small
    /// ops; the hand-off, not the arithmetic, was most of its time). Device
    /// backends just call `f`.
    fn session<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R
    where
        Self: Sized,
    {
        f()
    }

    /// Wait for queued work and report the first deferred device error.
    /// Device backends report failures asynchronously; the model calls this
    /// after every micro-batch, before its results are used.
    fn check(&self) -> Result<()> {
        Ok(())
    }

    // ---- memory -------------------------------------------------------

    /// Memory this backend can still allocate, and where the figure comes
    /// from (`None`: unknown, nothing is refused). The CPU reads the host's.
    fn available_memory(&self) -> Option<crate::memory::Available> {
        crate::memory::host_available()
    }

    /// Bytes this backend allocates beyond the f32 buffers of `est` (a
    /// device's bf16 copies and scratch); 0 on the CPU.
    fn extra_memory(&self, _est: &crate::memory::Estimate) -> u64 {
        0
    }

    /// A zero-filled f32 buffer of `n` elements; `what` names it in errors.
    fn alloc(&self, n: usize, what: &str) -> Result<Self::Buf>;
    /// A zero-filled i32 buffer of `n` elements; `what` names it in errors.
    fn alloc_i(&self, n: usize, what: &str) -> Result<Self::IBuf>;
    /// Copy host values into `dst` (lengths must match).
    fn upload(&self, dst: &mut Self::Buf, src: &[f32]);
    /// Copy host values into `dst` (lengths must match).
    fn upload_i(&self, dst: &mut Self::IBuf, src: &[i32]);
    /// Copy a buffer to the host.
    fn download(&self, src: &Self::Buf) -> Vec<f32>;
    /// Copy an i32 buffer to the host.
    fn download_i(&self, src: &Self::IBuf) -> Vec<i32>;
    /// Set every element to zero.
    fn zero(&self, buf: &mut Self::Buf);

    // ---- matmul -------------------------------------------------------

    /// `c (=|+=) op(a) @ op(b)`: shapes, layouts, accumulation and operand
    /// precision in `g` (see [`Gemm`]).
    fn matmul(&self, c: &mut Self::Buf, a: &Self::Buf, b: &Self::Buf, g: Gemm);

    /// `out[r, :] += bias` for every row (`out`: `[rows, n]`, `bias`: `[n]`).
    fn add_bias(&self, out: &mut Self::Buf, bias: &Self::Buf, rows: usize, n: usize);
    /// Fused `pre += bias` (row-broadcast) then `out = gelu_tanh(pre)` (`=`),
    /// the FFN's first bias and activation in one pass on a device.
    fn bias_gelu_fwd(&self, pre: &mut Self::Buf, out: &mut Self::Buf, bias: &Self::Buf, rows: usize, n: usize) {
        self.add_bias(pre, bias, rows, n);
        self.gelu_fwd(out, pre, rows * n);
    }
    /// `dbias += sum_r dout[r, :]` (`dout`: `[rows, n]`).
    fn bias_grad(&self, dbias: &mut Self::Buf, dout: &Self::Buf, rows: usize, n: usize);
    // ---- expert (grouped GEMM over expert segments) --------------------

    /// Grouped (per-expert) matmul over expert-contiguous row segments:
    /// `out[seg_e] = x[seg_e] @ w[e] + b[e]` (`=`), segment `e` being rows
    /// `offsets[e]..offsets[e+1]`; rows past `offsets[E]` are not written.
    ///
    /// # Shapes
    /// `x`: `[M, k]`, `w`: `[E, k, n]`, `b`: `[E, n]`, `offsets`: `[E + 1]`,
    /// `out`: `[M, n]` (`E`, `k`, `n` from `g`).
    fn grouped_matmul(
        &self,
        out: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        b: &Self::Buf,
        offsets: &Self::IBuf,
        g: Grouped,
    );
    /// The experts' first layer with its activation fused:
    /// `pre[seg_e] = x[seg_e] @ w[e] + b[e]` and `act = gelu_tanh(pre)` (both `=`),
    /// shapes as [`Backend::grouped_matmul`] (`pre`, `act`: `[M, n]`).
    #[allow(clippy::too_many_arguments)]
    fn grouped_matmul_gelu(
        &self,
        pre: &mut Self::Buf,
        act: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        b: &Self::Buf,
        offsets: &Self::IBuf,
        g: Grouped,
    );
    /// Backward of [`Backend::grouped_matmul`]: `dx[seg_e] = dy[seg_e] @ w[e]^T` (`=`),
    /// `dw[e] += x[seg_e]^T @ dy[seg_e]`, `db[e] += sum_rows dy[seg_e]`.
    #[allow(clippy::too_many_arguments)]
    fn grouped_matmul_bwd(
        &self,
        dx: &mut Self::Buf,
        dw: &mut Self::Buf,
        db: &mut Self::Buf,
        dy: &Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        offsets: &Self::IBuf,
        g: Grouped,
    );
    /// Backward of the experts' second layer `y = gelu(pre) @ w + b` through
    /// the activation: `dpre[seg_e] = (dy[seg_e] @ w[e]^T) * gelu_tanh'(pre[seg_e])`
    /// (`=`), and `dw`, `db` as [`Backend::grouped_matmul_bwd`] with `x = gelu(pre)`.
    ///
    /// # Shapes
    /// `dy`: `[M, n]`, `x` (the activation), `pre`, `dpre`: `[M, k]`, `w`: `[E, k, n]`.
    #[allow(clippy::too_many_arguments)]
    fn grouped_matmul_bwd_gelu(
        &self,
        dpre: &mut Self::Buf,
        dw: &mut Self::Buf,
        db: &mut Self::Buf,
        dy: &Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        pre: &Self::Buf,
        offsets: &Self::IBuf,
        g: Grouped,
    );

    // ---- elementwise --------------------------------------------------

    /// `a += b` (same length).
    fn add_inplace(&self, a: &mut Self::Buf, b: &Self::Buf);
    /// `dst = src` (same length).
    fn copy(&self, dst: &mut Self::Buf, src: &Self::Buf);
    /// `dst[offset..offset + src.len()] = src` (gathers per-layer device
    /// results into one buffer, so the host reads them in one transfer).
    fn copy_at(&self, dst: &mut Self::Buf, offset: usize, src: &Self::Buf);

    // ---- activation ---------------------------------------------------

    /// `out = gelu_tanh(x)` (`=`).
    fn gelu_fwd(&self, out: &mut Self::Buf, x: &Self::Buf, len: usize);
    /// `dx = dout * gelu_tanh'(x)` (`=`).
    fn gelu_bwd(&self, dx: &mut Self::Buf, dout: &Self::Buf, x: &Self::Buf, len: usize);

    // ---- norm ---------------------------------------------------------

    /// LayerNorm over the last dim (eps 1e-5): `out = (x - mean) * rstd * w + b` (`=`).
    ///
    /// # Shapes
    /// `x`, `out`: `[rows, c]`; `w`, `b`: `[c]`; `mean`, `rstd`: `[rows]`.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_fwd(
        &self,
        out: &mut Self::Buf,
        mean: &mut Self::Buf,
        rstd: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        b: &Self::Buf,
        rows: usize,
        c: usize,
    );
    /// LayerNorm backward: `dx +=`, `dw +=`, `db +=`.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_bwd(
        &self,
        dx: &mut Self::Buf,
        dw: &mut Self::Buf,
        db: &mut Self::Buf,
        dout: &Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        mean: &Self::Buf,
        rstd: &Self::Buf,
        rows: usize,
        c: usize,
    );

    // ---- embedding ----------------------------------------------------

    /// `out[b*T + t] = wte[tokens[b*T + t]] + wpe[t]` (`=`).
    ///
    /// # Shapes
    /// `tokens`: `[B*T]`, `wte`: `[V, d]`, `wpe`: `[max_T, d]`, `out`: `[B*T, d]`.
    #[allow(clippy::too_many_arguments)]
    fn embedding_fwd(
        &self,
        out: &mut Self::Buf,
        tokens: &Self::IBuf,
        wte: &Self::Buf,
        wpe: &Self::Buf,
        b: usize,
        t: usize,
        d: usize,
    );
    /// `dwte[tokens[n]] += dout[n]`, `dwpe[t] += dout[b*T + t]`.
    #[allow(clippy::too_many_arguments)]
    fn embedding_bwd(
        &self,
        dwte: &mut Self::Buf,
        dwpe: &mut Self::Buf,
        dout: &Self::Buf,
        tokens: &Self::IBuf,
        b: usize,
        t: usize,
        d: usize,
    );

    // ---- attention ----------------------------------------------------

    /// Causal multi-head attention, flash-attention contract: from the packed
    /// `qkv` it writes `out` and the row logsumexp `lse` of the scaled scores.
    ///
    /// # Shapes
    /// `qkv`: `[B*T, 3*H*hd]` (q | k | v, head-major inside each), `out`:
    /// `[B*T, H*hd]`, `lse`: `[B, H, T]` (sizes from `s`). Scale `1/sqrt(hd)`.
    fn attention_fwd(&self, out: &mut Self::Buf, lse: &mut Self::Buf, qkv: &Self::Buf, s: AttnShape);
    /// Backward: recomputes P from q, k and `lse`; writes `dqkv` (`=`).
    fn attention_bwd(
        &self,
        dqkv: &mut Self::Buf,
        dout: &Self::Buf,
        qkv: &Self::Buf,
        out: &Self::Buf,
        lse: &Self::Buf,
        s: AttnShape,
    );

    // ---- inference (KV cache) ------------------------------------------

    /// Inference embedding, each row at its own position:
    /// `out[i] = wte[tokens[i]] + wpe[positions[i]]` (`=`).
    ///
    /// # Shapes
    /// `tokens`, `positions`: `[n]`; `wte`: `[V, d]`; `wpe`: `[max_T, d]`; `out`: `[n, d]`.
    #[allow(clippy::too_many_arguments)]
    fn embedding_at(
        &self,
        out: &mut Self::Buf,
        tokens: &Self::IBuf,
        positions: &Self::IBuf,
        wte: &Self::Buf,
        wpe: &Self::Buf,
        n: usize,
        d: usize,
    );
    /// Append to the KV cache: the k and v of `qkv` row `i` go to row
    /// `slots[i]` of `k_cache` and `v_cache` (`=`; rows with a negative slot
    /// are skipped).
    ///
    /// # Shapes
    /// `qkv`: `[n, 3*h*hd]`; `slots`: `[n]`; caches: `[rows, h*hd]`.
    #[allow(clippy::too_many_arguments)]
    fn kv_append(
        &self,
        k_cache: &mut Self::Buf,
        v_cache: &mut Self::Buf,
        qkv: &Self::Buf,
        slots: &Self::IBuf,
        n: usize,
        h: usize,
        hd: usize,
    );
    /// Decode attention: sequence `i` has one query (the q third of `qkv` row
    /// `i`), attending to its cached keys and values `0..lens[i]` (rows
    /// `i*max_t ..` of the caches; the query is the newest position, so all
    /// are visible). `out[i]` (`=`).
    ///
    /// # Shapes
    /// `qkv`: `[n_seq, 3*h*hd]`; caches: `[n_seq*max_t, h*hd]`; `lens`:
    /// `[n_seq]` (each in `1..=max_t`); `out`: `[n_seq, h*hd]` (sizes from `s`).
    fn attention_decode(
        &self,
        out: &mut Self::Buf,
        qkv: &Self::Buf,
        k_cache: &Self::Buf,
        v_cache: &Self::Buf,
        lens: &Self::IBuf,
        s: DecodeShape,
    );

    // ---- router -------------------------------------------------------

    /// Multiplicative jitter `out = x * mult` (`=`), `mult[i] = U(1-eps, 1+eps)`
    /// drawn by [`cpu::router::jitter_mult`]`(seed, i, eps)`: counter-based, so
    /// every backend draws the same bits in parallel.
    fn router_jitter(&self, out: &mut Self::Buf, mult: &mut Self::Buf, x: &Self::Buf, eps: f32, seed: u64);
    /// `dx = dout * mult` (`=`), the jitter's backward.
    fn router_jitter_bwd(&self, dx: &mut Self::Buf, dout: &Self::Buf, mult: &Self::Buf);
    /// Fused routing from fp32 router logits (DESIGN.md §2 steps 2-9) into
    /// `r` (every buffer `=`): softmax, top-k (ties: lower index), gates, slot
    /// positions in the §2.5 priority order, kept mask, expert-contiguous row
    /// map, and statistics. `p` gives the capacity and loss coefficients; its
    /// sizes equal `r`'s.
    ///
    /// # Shapes
    /// `logits`: `[N, E]`; `r` as [`Routing`].
    fn router_fwd(&self, r: &mut Routing<Self>, logits: &Self::Buf, p: &RouterParams);
    /// Router backward into the logits (`=`): through the gates (`dgate`
    /// `[N*k]`, zero for dropped assignments), the aux loss via `P_e` (with
    /// `f_e` from `r.stats`) and the z-loss. `dloss` scales aux and z (the loss
    /// weight of this micro-batch).
    fn router_bwd(
        &self,
        dlogits: &mut Self::Buf,
        dgate: &Self::Buf,
        logits: &Self::Buf,
        r: &Routing<Self>,
        p: &RouterParams,
        dloss: f32,
    );

    // ---- dispatch -----------------------------------------------------

    /// Gather token rows into expert-contiguous rows:
    /// `xe[row] = x[row_assign[row] / k]` (`=`; `x`: `[N, d]`, `xe`: `[N*k, d]`).
    fn dispatch_fwd(&self, xe: &mut Self::Buf, x: &Self::Buf, r: &Routing<Self>, d: usize);
    /// `dx[i] += sum_j dxe[row[i*k + j]]` over kept assignments, j ascending.
    fn dispatch_bwd(&self, dx: &mut Self::Buf, dxe: &Self::Buf, r: &Routing<Self>, d: usize);
    /// `out[i] = sum_j gate[i*k+j] * ye[row[i*k+j]]` over kept assignments
    /// (`=`; 0 if none kept; `ye`: `[N*k, d]`, `out`: `[N, d]`).
    fn combine_fwd(&self, out: &mut Self::Buf, ye: &Self::Buf, r: &Routing<Self>, d: usize);
    /// Combine backward: `dye[row] = gate[a] * dout[a / k]` for `a =
    /// row_assign[row]` (`=`), `dgate[a] = <dout[a / k], ye[row[a]]>` or 0 if
    /// dropped (`=`).
    fn combine_bwd(
        &self,
        dye: &mut Self::Buf,
        dgate: &mut Self::Buf,
        dout: &Self::Buf,
        ye: &Self::Buf,
        r: &Routing<Self>,
        d: usize,
    );

    // ---- loss ---------------------------------------------------------

    /// Fused softmax cross-entropy. `losses[r] = -log softmax(logits[r])[targets[r]]`
    /// (`=`) and, in the same pass, `dlogits[r] = (softmax(logits[r]) - onehot) * dloss`
    /// (`=`) when `dlogits` is given.
    ///
    /// # Shapes
    /// `logits`, `dlogits`: `[rows, V]`; `targets`, `losses`: `[rows]`.
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy(
        &self,
        losses: &mut Self::Buf,
        dlogits: Option<&mut Self::Buf>,
        logits: &Self::Buf,
        targets: &Self::IBuf,
        rows: usize,
        v: usize,
        dloss: f32,
    );

    // ---- optim --------------------------------------------------------

    /// `acc[0] += sum(g^2)` (fixed reduction order).
    fn sum_squares(&self, acc: &mut Self::Buf, g: &Self::Buf);
    /// One AdamW step on one tensor with global-norm clipping folded in: the
    /// gradient is multiplied by `min(1, max_norm / sqrt(norm_sq[0]))` when
    /// `max_norm > 0`. `t` is the 1-based step for bias correction.
    #[allow(clippy::too_many_arguments)]
    fn adamw(
        &self,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        norm_sq: &Self::Buf,
        h: &AdamW,
    );
}

/// Hyper-parameters of one AdamW update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// Learning rate of this step.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Denominator epsilon.
    pub eps: f32,
    /// Decoupled weight decay for this tensor (0 for excluded tensors).
    pub weight_decay: f32,
    /// 1-based step number.
    pub t: u64,
    /// Global-norm clip (`<= 0`: off).
    pub max_norm: f32,
}
