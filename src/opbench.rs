//! Kernel microbenchmarks (`switchyard bench --ops`): every op family of the
//! [`Backend`] trait timed at one set of model shapes, each reported against a
//! ceiling measured in the same run on the same device.
//!
//! - **Ceilings.** A 64 MiB `copy` (bytes read + written per second) bounds
//!   the memory-bound ops; a square `matmul`, grown until one call takes
//!   tens of milliseconds, bounds the compute-bound ones (matmuls, grouped
//!   expert matmuls, attention). Both are what this backend itself reaches,
//!   not datasheet numbers, so a fraction near 1 means "as fast as this
//!   backend's best op of the kind". A fraction can exceed 1: a working set
//!   that fits in cache beats the 64 MiB stream, the CPU `copy` is a
//!   single-threaded `memcpy` while the elementwise ops use every thread,
//!   and CUDA attention runs on bf16 tensor cores against an fp32 GEMM.
//! - **Costs.** FLOPs count multiply-adds as 2 (`2*m*k*n`; grouped matmuls
//!   over the rows actually routed; causal attention forward
//!   `4*b*h*t*t*hd/2` and backward 2.5x that, as FlashAttention counts).
//!   Bytes are the fewest each op must move: every input read once, every
//!   output written once, `+=` outputs read and written, 4 bytes per f32 or
//!   i32. Memory-bound ops report 0 FLOPs: their few operations per element
//!   are never the limit.
//! - **Timing.** 2 untimed warm-up calls, then `repeats` timed calls, each
//!   followed by [`Backend::check`] so a device backend's queue is drained
//!   inside the timed region; the median wall time is reported.
//! - **Inputs** are realistic: normal-ish values from a fixed generator,
//!   valid token ids, and router outputs from a real `router_fwd` call
//!   (dropless capacity), so dispatch, combine and the grouped matmuls see
//!   real expert-contiguous row maps.
//!
//! A device backend records its first failure and then reports it from every
//! later `check` (see `backend::cuda`), so the ops that a device may refuse
//! (attention at an unsupported head size, the MoE family before its kernels
//! exist) run last, and an op whose failure is the one already seen is
//! skipped with that reason instead of aborting the table.

use std::fmt::Write as _;
use std::time::Instant;

use serde::Serialize;

use crate::backend::{AdamW, AttnShape, Backend, Gemm, Grouped, RouterParams, RouterStats, Routing};
use crate::{Error, Result};

/// Untimed calls before the timed ones (first-touch faults, lazy kernel
/// loads, caches).
const WARMUP: usize = 2;

/// Elements of the copy ceiling: 64 MiB of f32, past every private cache and
/// most shared ones (a large server L3 can still hold it), and 16x a GPU's L2.
const COPY_ELEMS: usize = 16 << 20;

/// Starting side of the square GEMM ceiling.
const GEMM_START: usize = 1024;
/// Largest side tried (three 256 MiB matrices).
const GEMM_MAX: usize = 8192;
/// Keep doubling the GEMM side while one call takes less than this: doubling
/// costs 8x, so the chosen size lands at ~25-200 ms per call when the device
/// is that slow, and at [`GEMM_MAX`] otherwise.
const GEMM_GROW_BELOW_MS: f64 = 25.0;

/// Every op [`run`] times, in the order it times them (cheap dense ops first,
/// the ops a device may refuse last; see the module doc).
pub const OPS: &[&str] = &[
    "matmul",
    "matmul_dw",
    "add_bias",
    "bias_grad",
    "bias_gelu_fwd",
    "gelu_fwd",
    "gelu_bwd",
    "add_inplace",
    "layernorm_fwd",
    "layernorm_bwd",
    "embedding_fwd",
    "embedding_bwd",
    "cross_entropy",
    "sum_squares",
    "adamw",
    "attention_fwd",
    "attention_bwd",
    "router_fwd",
    "router_bwd",
    "dispatch_fwd",
    "dispatch_bwd",
    "combine_fwd",
    "combine_bwd",
    "grouped_matmul",
    "grouped_matmul_bwd",
];

/// The progress steps measuring the two ceilings, reported before the ops.
pub const CEILING_STEPS: [&str; 2] = ["ceiling:copy", "ceiling:gemm"];

/// The model shapes the ops are timed at.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Shapes {
    /// Token rows `N` of every activation (`B*T`).
    pub tokens: usize,
    /// Sequence length `T` of attention and position embeddings (attention
    /// runs `tokens / seq` sequences).
    pub seq: usize,
    /// Model width `d`.
    pub d_model: usize,
    /// FFN (and expert) hidden width.
    pub d_ff: usize,
    /// Attention heads (`head_dim = d_model / n_head`).
    pub n_head: usize,
    /// Vocabulary size `V` of the embedding and the cross-entropy.
    pub vocab: usize,
    /// Experts `E` of the MoE ops.
    pub n_experts: usize,
    /// Experts per token `k`.
    pub top_k: usize,
}

impl Default for Shapes {
    /// Between the `tiny` and `small` presets: the whole table, ceilings
    /// included, takes about 5 s on a 2-core CPU at 10 repeats (release build).
    fn default() -> Shapes {
        Shapes { tokens: 2048, seq: 256, d_model: 256, d_ff: 1024, n_head: 4, vocab: 4096, n_experts: 8, top_k: 2 }
    }
}

/// The keys [`Shapes::apply`] accepts.
const SHAPE_KEYS: &str = "tokens, seq, d_model, d_ff, n_head, vocab, n_experts, top_k";

impl Shapes {
    /// Set one field from `key=value` (keys: the field names).
    pub fn apply(&mut self, kv: &str) -> Result<()> {
        let Some((key, value)) = kv.split_once('=') else {
            return Err(Error::Config(format!(
                "op bench shape '{kv}': expected key=value, e.g. tokens=2048 (keys: {SHAPE_KEYS})"
            )));
        };
        let (key, value) = (key.trim(), value.trim());
        let field = match key {
            "tokens" => &mut self.tokens,
            "seq" => &mut self.seq,
            "d_model" => &mut self.d_model,
            "d_ff" => &mut self.d_ff,
            "n_head" => &mut self.n_head,
            "vocab" => &mut self.vocab,
            "n_experts" => &mut self.n_experts,
            "top_k" => &mut self.top_k,
            _ => {
                return Err(Error::Config(format!("unknown op bench shape key '{key}'; valid keys: {SHAPE_KEYS}")));
            }
        };
        *field = value.parse().map_err(|_| {
            Error::Config(format!("op bench shape {key} = '{value}' is not a whole number; give e.g. {key}=256"))
        })?;
        Ok(())
    }

    /// Refuse shapes the ops cannot run, naming the value and the fix.
    pub fn validate(&self) -> Result<()> {
        let fields = [
            ("tokens", self.tokens),
            ("seq", self.seq),
            ("d_model", self.d_model),
            ("d_ff", self.d_ff),
            ("n_head", self.n_head),
            ("vocab", self.vocab),
            ("n_experts", self.n_experts),
            ("top_k", self.top_k),
        ];
        for (key, v) in fields {
            if v == 0 {
                return Err(Error::Config(format!("op bench shape {key} = 0; every shape must be at least 1")));
            }
        }
        if !self.d_model.is_multiple_of(self.n_head) {
            return Err(Error::Config(format!(
                "op bench shape d_model = {} is not a multiple of n_head = {}; pick d_model divisible by n_head \
                 (e.g. d_model={})",
                self.d_model,
                self.n_head,
                self.d_model.next_multiple_of(self.n_head)
            )));
        }
        if !self.tokens.is_multiple_of(self.seq) {
            return Err(Error::Config(format!(
                "op bench shape tokens = {} is not a multiple of seq = {} (attention runs tokens/seq sequences); \
                 set tokens to a multiple of seq, e.g. tokens={}",
                self.tokens,
                self.seq,
                self.tokens.next_multiple_of(self.seq)
            )));
        }
        if self.top_k > self.n_experts {
            return Err(Error::Config(format!(
                "op bench shape top_k = {} exceeds n_experts = {}; set top_k <= n_experts",
                self.top_k, self.n_experts
            )));
        }
        let rows = self.tokens.checked_mul(self.top_k);
        if self.vocab > i32::MAX as usize || rows.is_none_or(|r| r > i32::MAX as usize) {
            return Err(Error::Config(format!(
                "op bench shapes vocab = {} / tokens x top_k = {} x {} overflow the i32 indices; make them smaller",
                self.vocab, self.tokens, self.top_k
            )));
        }
        Ok(())
    }

    /// An upper bound of the bytes the largest op's buffers take (activations
    /// `[tokens, .]` of every width involved, and the weights), in checked
    /// arithmetic: a shape whose buffers overflow is an error naming it.
    pub fn memory(&self) -> Result<crate::memory::Estimate> {
        let overflow = || {
            Error::Config(format!(
                "op bench shapes tokens = {}, d_model = {}, d_ff = {}, vocab = {}, n_experts = {} ask for more memory \
                 than 64-bit sizes can count; make them smaller",
                self.tokens, self.d_model, self.d_ff, self.vocab, self.n_experts
            ))
        };
        let m = |a: usize, b: usize| a.checked_mul(b).ok_or_else(overflow);
        let add = |xs: &[usize]| xs.iter().try_fold(0usize, |acc, &x| acc.checked_add(x)).ok_or_else(overflow);
        let width = add(&[
            m(2, self.vocab)?,
            m(4, m(self.top_k, add(&[self.d_model, self.d_ff])?)?)?,
            m(8, self.d_model)?,
            m(3, self.n_experts)?,
        ])?;
        let weights = m(self.d_model, add(&[self.vocab, m(3, self.d_model)?, m(2, m(self.d_ff, self.n_experts)?)?])?)?;
        let bytes = m(4, add(&[m(self.tokens, width)?, m(2, weights)?])?)?;
        Ok(crate::memory::Estimate::single(
            "op buffers (upper bound)".into(),
            bytes as u64,
            "the --shape sizes (tokens, vocab, d_ff, n_experts)",
        ))
    }

    /// Attention sequences `tokens / seq`.
    fn batch(&self) -> usize {
        self.tokens / self.seq
    }

    /// Attention head size `d_model / n_head`.
    fn head_dim(&self) -> usize {
        self.d_model / self.n_head
    }
}

/// One timed op.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpResult {
    /// Op name (one of [`OPS`]).
    pub op: String,
    /// The shapes it ran at, human-readable.
    pub shape: String,
    /// Median wall time of one call, milliseconds.
    pub median_ms: f64,
    /// FLOPs of one call (0 for memory-bound ops).
    pub flops: f64,
    /// Fewest bytes one call must move.
    pub bytes: f64,
    /// Achieved rate: `flops` or `bytes` per second at the median, per `unit`.
    pub rate: f64,
    /// `FLOP/s` (compute-bound: against the GEMM ceiling) or `B/s` (against the copy ceiling).
    pub unit: String,
    /// `rate` over the matching ceiling.
    pub fraction_of_ceiling: f64,
    /// Arithmetic intensity, `flops / bytes` (FLOP per byte).
    pub intensity: f64,
}

/// The two ceilings, measured in the same run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ceilings {
    /// Bytes read plus bytes written per second by a large `copy`.
    pub copy_bytes_per_s: f64,
    /// FLOP/s of a large square `matmul`.
    pub gemm_flops: f64,
    /// That matmul, e.g. `1024x1024x1024`.
    pub gemm_shape: String,
    /// Bytes copied per call (the source; read + write is twice this).
    pub copy_bytes: usize,
}

/// What [`run`] measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpReport {
    /// Backend name.
    pub device: String,
    /// Git commit of the build.
    pub commit: String,
    /// The shapes the ops ran at.
    pub shapes: Shapes,
    /// The ceilings the fractions are taken against.
    pub ceilings: Ceilings,
    /// One entry per op that ran, in [`OPS`] order.
    pub results: Vec<OpResult>,
    /// `(op, reason)` for each selected op the backend refused.
    pub skipped: Vec<(String, String)>,
}

/// The progress steps [`run`] reports for `filter`, in order: the two
/// [`CEILING_STEPS`], then the selected ops (a progress bar's length).
/// Errors if the filter matches no op.
pub fn steps(filter: Option<&str>) -> Result<Vec<&'static str>> {
    let ops: Vec<&'static str> = OPS.iter().copied().filter(|op| selected(filter, op)).collect();
    if ops.is_empty() {
        return Err(Error::Config(format!(
            "op filter '{}' matches no op; ops: {}",
            filter.unwrap_or_default(),
            OPS.join(", ")
        )));
    }
    Ok(CEILING_STEPS.iter().copied().chain(ops).collect())
}

fn selected(filter: Option<&str>, op: &str) -> bool {
    filter.is_none_or(|f| op.contains(f))
}

/// Measure the ceilings, then time every op of [`OPS`] whose name contains
/// `filter` at `shapes`, `repeats` timed calls each. `progress` is called
/// with each of [`steps`] before it runs. Ops the backend refuses are listed
/// in [`OpReport::skipped`]; an invalid shape, a filter matching nothing, or
/// a failed allocation is an error.
pub fn run<B: Backend>(
    be: &B,
    shapes: &Shapes,
    repeats: usize,
    filter: Option<&str>,
    progress: &mut dyn FnMut(&str),
) -> Result<OpReport> {
    shapes.validate()?;
    if repeats == 0 {
        return Err(Error::Config("op bench repeats = 0; time each op at least once".into()));
    }
    steps(filter)?;
    progress(CEILING_STEPS[0]);
    let (copy_bytes_per_s, copy_bytes) = copy_ceiling(be, repeats)?;
    progress(CEILING_STEPS[1]);
    let (gemm_flops, side) = gemm_ceiling(be, repeats)?;
    let ceilings = Ceilings { copy_bytes_per_s, gemm_flops, gemm_shape: format!("{side}x{side}x{side}"), copy_bytes };
    let mut t = Table { be, repeats, filter, progress, ceilings, results: Vec::new(), skipped: Vec::new() };
    dense(&mut t, shapes)?;
    elementwise(&mut t, shapes)?;
    layernorm(&mut t, shapes)?;
    embedding(&mut t, shapes)?;
    cross_entropy(&mut t, shapes)?;
    optim(&mut t, shapes)?;
    attention(&mut t, shapes)?;
    moe(&mut t, shapes)?;
    Ok(OpReport {
        device: be.name(),
        commit: crate::GIT_COMMIT.to_string(),
        shapes: shapes.clone(),
        ceilings: t.ceilings,
        results: t.results,
        skipped: t.skipped,
    })
}

/// Median time of one call of `f` in milliseconds: [`WARMUP`] untimed calls,
/// then `repeats` timed ones, each synchronized by [`Backend::check`]. Runs in
/// the backend's session, as the model does.
fn time_ms<B: Backend>(be: &B, repeats: usize, mut f: impl FnMut() + Send) -> Result<f64> {
    be.session(|| {
        for _ in 0..WARMUP {
            f();
        }
        be.check()?;
        let mut ms = Vec::with_capacity(repeats);
        for _ in 0..repeats {
            let t0 = Instant::now();
            f();
            be.check()?;
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        ms.sort_by(f64::total_cmp);
        Ok(ms[ms.len() / 2])
    })
}

/// Bytes per second of a [`COPY_ELEMS`] `copy` (read + write), and the bytes copied.
fn copy_ceiling<B: Backend>(be: &B, repeats: usize) -> Result<(f64, usize)> {
    let mut rng = Rng::new(1);
    let src = filled(be, COPY_ELEMS, "copy ceiling source", || rng.uniform())?;
    let mut dst = be.alloc(COPY_ELEMS, "copy ceiling destination")?;
    let ms = time_ms(be, repeats, || be.copy(&mut dst, &src))?;
    let bytes = COPY_ELEMS * 4;
    Ok((2.0 * bytes as f64 / (ms / 1e3), bytes))
}

/// FLOP/s of a square matmul and its side: from [`GEMM_START`], doubled
/// while one call is under [`GEMM_GROW_BELOW_MS`] (up to [`GEMM_MAX`]).
fn gemm_ceiling<B: Backend>(be: &B, repeats: usize) -> Result<(f64, usize)> {
    let mut side = GEMM_START;
    loop {
        let n = side;
        let mut rng = Rng::new(2);
        // Uniform values: a GEMM's speed does not depend on them, and
        // generating 2 x 64M normals would take longer than the GEMM.
        let a = filled(be, n * n, "gemm ceiling a", || rng.uniform() - 0.5)?;
        let b = filled(be, n * n, "gemm ceiling b", || rng.uniform() - 0.5)?;
        let mut c = be.alloc(n * n, "gemm ceiling c")?;
        let mut gemm = || be.matmul(&mut c, &a, &b, Gemm::new(n, n, n));
        let probe = time_ms(be, 1, &mut gemm)?;
        if probe < GEMM_GROW_BELOW_MS && side < GEMM_MAX {
            side *= 2;
            continue;
        }
        let ms = time_ms(be, repeats, gemm)?;
        return Ok((2.0 * (n * n * n) as f64 / (ms / 1e3), n));
    }
}

/// What an op computes and moves, and which ceiling bounds it.
struct Cost {
    flops: f64,
    bytes: f64,
    compute_bound: bool,
}

impl Cost {
    /// A compute-bound op: `flops`, and `elems` f32/i32 values moved.
    fn compute(flops: usize, elems: usize) -> Cost {
        Cost { flops: flops as f64, bytes: 4.0 * elems as f64, compute_bound: true }
    }
    /// A memory-bound op moving `elems` f32/i32 values.
    fn memory(elems: usize) -> Cost {
        Cost { flops: 0.0, bytes: 4.0 * elems as f64, compute_bound: false }
    }
}

/// The run in progress: selection, timing settings and what was measured.
struct Table<'a, B: Backend> {
    be: &'a B,
    repeats: usize,
    filter: Option<&'a str>,
    progress: &'a mut dyn FnMut(&str),
    ceilings: Ceilings,
    results: Vec<OpResult>,
    skipped: Vec<(String, String)>,
}

impl<B: Backend> Table<'_, B> {
    fn wants(&self, op: &str) -> bool {
        selected(self.filter, op)
    }

    fn wants_any(&self, ops: &[&str]) -> bool {
        ops.iter().any(|op| self.wants(op))
    }

    /// Time `f` as `op` if selected; a backend failure skips the op.
    fn measure(&mut self, op: &str, shape: String, cost: Cost, f: impl FnMut() + Send) {
        if !self.wants(op) {
            return;
        }
        (self.progress)(op);
        let ms = match time_ms(self.be, self.repeats, f) {
            Ok(ms) => ms,
            Err(e) => return self.skip(op, &e),
        };
        let (rate, ceiling, unit) = if cost.compute_bound {
            (cost.flops / (ms / 1e3), self.ceilings.gemm_flops, "FLOP/s")
        } else {
            (cost.bytes / (ms / 1e3), self.ceilings.copy_bytes_per_s, "B/s")
        };
        self.results.push(OpResult {
            op: op.to_string(),
            shape,
            median_ms: ms,
            flops: cost.flops,
            bytes: cost.bytes,
            rate,
            unit: unit.to_string(),
            fraction_of_ceiling: rate / ceiling,
            intensity: cost.flops / cost.bytes,
        });
    }

    /// Record `op` as refused. A device reports its first failure from every
    /// later check, so a repeat of an earlier op's message names that op.
    fn skip(&mut self, op: &str, e: &Error) {
        let msg = e.to_string();
        let reason = match self.skipped.iter().find(|(_, r)| *r == msg) {
            Some((first, _)) => format!("after {first} failed: {msg}"),
            None => msg,
        };
        self.skipped.push((op.to_string(), reason));
    }

    /// The setup of a family failed: skip its selected ops with the reason.
    fn skip_all(&mut self, ops: &[&str], e: &Error) {
        let filter = self.filter;
        for op in ops.iter().filter(|op| selected(filter, op)) {
            (self.progress)(op);
            self.skip(op, e);
        }
    }
}

/// The dense FFN matmul, forward and weight gradient.
fn dense<B: Backend>(t: &mut Table<B>, s: &Shapes) -> Result<()> {
    if !t.wants_any(&["matmul", "matmul_dw"]) {
        return Ok(());
    }
    let be = t.be;
    let (n, d, f) = (s.tokens, s.d_model, s.d_ff);
    let mut rng = Rng::new(3);
    let x = filled(be, n * d, "x", || rng.normal())?;
    let w = filled(be, d * f, "w", || 0.02 * rng.normal())?;
    let dy = filled(be, n * f, "dy", || 0.01 * rng.normal())?;
    let mut y = be.alloc(n * f, "y")?;
    let mut dw = be.alloc(d * f, "dw")?;
    t.measure("matmul", format!("{n}x{d} @ {d}x{f}"), Cost::compute(2 * n * d * f, n * d + d * f + n * f), || {
        be.matmul(&mut y, &x, &w, Gemm::new(n, d, f))
    });
    t.measure(
        "matmul_dw",
        format!("({n}x{d})^T @ {n}x{f} +="),
        Cost::compute(2 * d * n * f, n * d + n * f + 2 * d * f),
        || be.matmul(&mut dw, &x, &dy, Gemm::new(d, n, f).ta().add()),
    );
    Ok(())
}

/// Bias, GELU and the residual add.
fn elementwise<B: Backend>(t: &mut Table<B>, s: &Shapes) -> Result<()> {
    const OPS: &[&str] = &["add_bias", "bias_grad", "bias_gelu_fwd", "gelu_fwd", "gelu_bwd", "add_inplace"];
    if !t.wants_any(OPS) {
        return Ok(());
    }
    let be = t.be;
    let (n, d, f) = (s.tokens, s.d_model, s.d_ff);
    let len = n * f;
    let mut rng = Rng::new(4);
    let mut pre = filled(be, len, "pre", || rng.normal())?;
    let bias = filled(be, f, "bias", || 0.02 * rng.normal())?;
    let dout = filled(be, len, "dout", || 0.01 * rng.normal())?;
    let mut h = be.alloc(len, "h")?;
    let mut dpre = be.alloc(len, "dpre")?;
    let mut dbias = be.alloc(f, "dbias")?;
    let shape = format!("{n}x{f}");
    t.measure("add_bias", format!("{shape} += {f}"), Cost::memory(2 * len + f), || be.add_bias(&mut pre, &bias, n, f));
    t.measure("bias_grad", format!("{f} += colsum {shape}"), Cost::memory(len + 2 * f), || {
        be.bias_grad(&mut dbias, &dout, n, f)
    });
    t.measure("bias_gelu_fwd", shape.clone(), Cost::memory(3 * len + f), || {
        be.bias_gelu_fwd(&mut pre, &mut h, &bias, n, f)
    });
    t.measure("gelu_fwd", shape.clone(), Cost::memory(2 * len), || be.gelu_fwd(&mut h, &pre, len));
    t.measure("gelu_bwd", shape, Cost::memory(3 * len), || be.gelu_bwd(&mut dpre, &dout, &pre, len));
    let mut resid = filled(be, n * d, "residual", || rng.normal())?;
    let branch = filled(be, n * d, "branch", || 0.1 * rng.normal())?;
    t.measure("add_inplace", format!("{n}x{d}"), Cost::memory(3 * n * d), || be.add_inplace(&mut resid, &branch));
    Ok(())
}

/// LayerNorm forward and backward.
fn layernorm<B: Backend>(t: &mut Table<B>, s: &Shapes) -> Result<()> {
    const OPS: &[&str] = &["layernorm_fwd", "layernorm_bwd"];
    if !t.wants_any(OPS) {
        return Ok(());
    }
    let be = t.be;
    let (n, d) = (s.tokens, s.d_model);
    let mut rng = Rng::new(5);
    let x = filled(be, n * d, "x", || 1.0 + rng.normal())?;
    let w = filled(be, d, "ln.w", || 1.0 + 0.1 * rng.normal())?;
    let b = filled(be, d, "ln.b", || 0.1 * rng.normal())?;
    let dout = filled(be, n * d, "dout", || 0.01 * rng.normal())?;
    let (mut out, mut dx) = (be.alloc(n * d, "out")?, be.alloc(n * d, "dx")?);
    let (mut mean, mut rstd) = (be.alloc(n, "mean")?, be.alloc(n, "rstd")?);
    let (mut dw, mut db) = (be.alloc(d, "dw")?, be.alloc(d, "db")?);
    // The backward needs the forward's statistics even when only it is selected.
    be.layernorm_fwd(&mut out, &mut mean, &mut rstd, &x, &w, &b, n, d);
    if let Err(e) = be.check() {
        t.skip_all(OPS, &e);
        return Ok(());
    }
    t.measure("layernorm_fwd", format!("{n}x{d}"), Cost::memory(2 * n * d + 2 * d + 2 * n), || {
        be.layernorm_fwd(&mut out, &mut mean, &mut rstd, &x, &w, &b, n, d)
    });
    t.measure("layernorm_bwd", format!("{n}x{d}"), Cost::memory(4 * n * d + 5 * d + 2 * n), || {
        be.layernorm_bwd(&mut dx, &mut dw, &mut db, &dout, &x, &w, &mean, &rstd, n, d)
    });
    Ok(())
}

/// Token + position embedding, forward and backward.
fn embedding<B: Backend>(t: &mut Table<B>, s: &Shapes) -> Result<()> {
    if !t.wants_any(&["embedding_fwd", "embedding_bwd"]) {
        return Ok(());
    }
    let be = t.be;
    let (n, d, v, seq, b) = (s.tokens, s.d_model, s.vocab, s.seq, s.batch());
    let mut rng = Rng::new(6);
    let ids: Vec<i32> = (0..n).map(|_| rng.below(v) as i32).collect();
    let tokens = filled_i(be, &ids, "tokens")?;
    // Only the rows of the tokens present must be read (and, backward, written).
    let mut seen = vec![false; v];
    ids.iter().for_each(|&i| seen[i as usize] = true);
    let distinct = seen.iter().filter(|&&x| x).count();
    let wte = filled(be, v * d, "wte", || 0.02 * rng.normal())?;
    let wpe = filled(be, seq * d, "wpe", || 0.01 * rng.normal())?;
    let dout = filled(be, n * d, "dout", || 0.01 * rng.normal())?;
    let mut out = be.alloc(n * d, "out")?;
    let (mut dwte, mut dwpe) = (be.alloc(v * d, "dwte")?, be.alloc(seq * d, "dwpe")?);
    let shape = format!("{b}x{seq} tokens, V {v}, d {d}");
    t.measure("embedding_fwd", shape.clone(), Cost::memory(n + distinct * d + seq * d + n * d), || {
        be.embedding_fwd(&mut out, &tokens, &wte, &wpe, b, seq, d)
    });
    t.measure("embedding_bwd", shape, Cost::memory(n + n * d + 2 * distinct * d + 2 * seq * d), || {
        be.embedding_bwd(&mut dwte, &mut dwpe, &dout, &tokens, b, seq, d)
    });
    Ok(())
}

/// Fused softmax cross-entropy with the logit gradient.
fn cross_entropy<B: Backend>(t: &mut Table<B>, s: &Shapes) -> Result<()> {
    if !t.wants("cross_entropy") {
        return Ok(());
    }
    let be = t.be;
    let (n, v) = (s.tokens, s.vocab);
    let mut rng = Rng::new(7);
    let logits = filled(be, n * v, "logits", || 2.0 * rng.normal())?;
    let ids: Vec<i32> = (0..n).map(|_| rng.below(v) as i32).collect();
    let targets = filled_i(be, &ids, "targets")?;
    let mut losses = be.alloc(n, "losses")?;
    let mut dlogits = be.alloc(n * v, "dlogits")?;
    let dloss = 1.0 / n as f32;
    t.measure("cross_entropy", format!("{n}x{v} + dlogits"), Cost::memory(2 * n * v + 2 * n), || {
        be.cross_entropy(&mut losses, Some(&mut dlogits), &logits, &targets, n, v, dloss)
    });
    Ok(())
}

/// Gradient norm and AdamW on one FFN weight (`d_model x d_ff`).
fn optim<B: Backend>(t: &mut Table<B>, s: &Shapes) -> Result<()> {
    if !t.wants_any(&["sum_squares", "adamw"]) {
        return Ok(());
    }
    let be = t.be;
    let len = s.d_model * s.d_ff;
    let mut rng = Rng::new(8);
    let grad_host: Vec<f32> = (0..len).map(|_| 1e-3 * rng.normal()).collect();
    let norm_host = grad_host.iter().map(|&g| g * g).sum::<f32>();
    let mut grad = be.alloc(len, "grad")?;
    be.upload(&mut grad, &grad_host);
    let mut param = filled(be, len, "param", || 0.02 * rng.normal())?;
    let mut m = filled(be, len, "adam.m", || 1e-4 * rng.normal())?;
    let mut v = filled(be, len, "adam.v", || 1e-8 * rng.uniform())?;
    let norm_sq = filled(be, 1, "norm_sq", || norm_host)?;
    let mut acc = be.alloc(1, "norm_sq acc")?;
    let h = AdamW { lr: 1e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, t: 10, max_norm: 1.0 };
    let shape = format!("{}x{}", s.d_model, s.d_ff);
    t.measure("sum_squares", shape.clone(), Cost::memory(len + 2), || be.sum_squares(&mut acc, &grad));
    t.measure("adamw", shape, Cost::memory(7 * len + 1), || be.adamw(&mut param, &grad, &mut m, &mut v, &norm_sq, &h));
    Ok(())
}

/// Causal attention, forward and backward.
fn attention<B: Backend>(t: &mut Table<B>, s: &Shapes) -> Result<()> {
    const OPS: &[&str] = &["attention_fwd", "attention_bwd"];
    if !t.wants_any(OPS) {
        return Ok(());
    }
    let be = t.be;
    let (n, d, b, seq, h, hd) = (s.tokens, s.d_model, s.batch(), s.seq, s.n_head, s.head_dim());
    let mut rng = Rng::new(9);
    let qkv = filled(be, n * 3 * d, "qkv", || rng.normal())?;
    let dout = filled(be, n * d, "dout", || 0.01 * rng.normal())?;
    let mut out = be.alloc(n * d, "out")?;
    let mut lse = be.alloc(b * h * seq, "lse")?;
    let mut dqkv = be.alloc(n * 3 * d, "dqkv")?;
    // The backward needs the forward's output and lse even when only it is selected.
    be.attention_fwd(&mut out, &mut lse, &qkv, AttnShape { b, t: seq, h, hd });
    if let Err(e) = be.check() {
        t.skip_all(OPS, &e);
        return Ok(());
    }
    let fwd = 4 * b * h * seq * seq * hd / 2;
    let shape = format!("b {b} t {seq} h {h} hd {hd} causal");
    t.measure("attention_fwd", shape.clone(), Cost::compute(fwd, 3 * n * d + n * d + b * h * seq), || {
        be.attention_fwd(&mut out, &mut lse, &qkv, AttnShape { b, t: seq, h, hd })
    });
    t.measure(
        "attention_bwd",
        shape,
        Cost::compute(fwd * 5 / 2, 3 * n * d + 2 * n * d + b * h * seq + 3 * n * d),
        || be.attention_bwd(&mut dqkv, &dout, &qkv, &out, &lse, AttnShape { b, t: seq, h, hd }),
    );
    Ok(())
}

/// The MoE layer: routing, dispatch and combine, and the grouped expert
/// matmul, on the row maps of a real (dropless) routing.
fn moe<B: Backend>(t: &mut Table<B>, s: &Shapes) -> Result<()> {
    const OPS: &[&str] = &[
        "router_fwd",
        "router_bwd",
        "dispatch_fwd",
        "dispatch_bwd",
        "combine_fwd",
        "combine_bwd",
        "grouped_matmul",
        "grouped_matmul_bwd",
    ];
    if !t.wants_any(OPS) {
        return Ok(());
    }
    let be = t.be;
    let (n, d, f, e, k) = (s.tokens, s.d_model, s.d_ff, s.n_experts, s.top_k);
    let nk = n * k;
    let rp = RouterParams {
        n_tokens: n,
        n_experts: e,
        top_k: k,
        capacity: n,
        normalize_gates: true,
        aux_coef: 0.01,
        z_coef: 0.001,
    };
    let mut rng = Rng::new(10);
    let logits = filled(be, n * e, "router logits", || rng.normal())?;
    let mut r = Routing::new(be, n, e, k)?;
    be.router_fwd(&mut r, &logits, &rp);
    if let Err(err) = be.check() {
        t.skip_all(OPS, &err);
        return Ok(());
    }
    // Rows actually routed (dropless: every assignment, N*k).
    let rows = be.download_i(&r.offsets)[e] as usize;
    let n_stats = RouterStats::len(e);
    let routing = format!("{n} tokens E {e} top-{k}");
    t.measure("router_fwd", routing.clone(), Cost::memory(2 * n * e + 4 * nk + e + 1 + n_stats), || {
        be.router_fwd(&mut r, &logits, &rp)
    });
    let dgate = filled(be, nk, "dgate", || 0.01 * rng.normal())?;
    let mut dlogits = be.alloc(n * e, "dlogits")?;
    t.measure("router_bwd", routing, Cost::memory(3 * n * e + 2 * nk + n_stats), || {
        be.router_bwd(&mut dlogits, &dgate, &logits, &r, &rp, 1.0)
    });

    let x = filled(be, n * d, "x", || rng.normal())?;
    let mut xe = be.alloc(nk * d, "xe")?;
    let dxe = filled(be, nk * d, "dxe", || 0.01 * rng.normal())?;
    let mut dx = be.alloc(n * d, "dx")?;
    let moved = format!("{n} tokens <-> {rows} rows, d {d}");
    t.measure("dispatch_fwd", moved.clone(), Cost::memory(rows * d + n * d + rows), || {
        be.dispatch_fwd(&mut xe, &x, &r, d)
    });
    // Real dispatched rows for the grouped matmuls, whatever was selected.
    be.dispatch_fwd(&mut xe, &x, &r, d);
    t.measure("dispatch_bwd", moved.clone(), Cost::memory(2 * n * d + rows * d + nk), || {
        be.dispatch_bwd(&mut dx, &dxe, &r, d)
    });
    let ye = filled(be, nk * d, "ye", || rng.normal())?;
    let dout = filled(be, n * d, "dout", || 0.01 * rng.normal())?;
    let mut out = be.alloc(n * d, "out")?;
    let (mut dye, mut dgate_out) = (be.alloc(nk * d, "dye")?, be.alloc(nk, "dgate")?);
    t.measure("combine_fwd", moved.clone(), Cost::memory(n * d + rows * d + 2 * nk), || {
        be.combine_fwd(&mut out, &ye, &r, d)
    });
    t.measure("combine_bwd", moved, Cost::memory(2 * rows * d + n * d + 3 * nk + rows), || {
        be.combine_bwd(&mut dye, &mut dgate_out, &dout, &ye, &r, d)
    });

    let w = filled(be, e * d * f, "expert w", || 0.02 * rng.normal())?;
    let b = filled(be, e * f, "expert b", || 0.02 * rng.normal())?;
    let dy = filled(be, nk * f, "dy", || 0.01 * rng.normal())?;
    let mut y = be.alloc(nk * f, "y")?;
    let (mut dxg, mut dw, mut db) = (be.alloc(nk * d, "dx")?, be.alloc(e * d * f, "dw")?, be.alloc(e * f, "db")?);
    let experts = format!("{rows} rows, E {e}, {d}x{f}");
    let weights = e * d * f + e * f + e + 1;
    t.measure(
        "grouped_matmul",
        experts.clone(),
        Cost::compute(2 * rows * d * f, rows * d + weights + rows * f),
        || be.grouped_matmul(&mut y, &xe, &w, &b, &r.offsets, Grouped { e, k: d, n: f }),
    );
    t.measure(
        "grouped_matmul_bwd",
        experts,
        Cost::compute(4 * rows * d * f, 2 * rows * d + rows * f + 3 * e * d * f + 2 * e * f + e + 1),
        || be.grouped_matmul_bwd(&mut dxg, &mut dw, &mut db, &dy, &xe, &w, &r.offsets, Grouped { e, k: d, n: f }),
    );
    Ok(())
}

/// A buffer of `n` values drawn from `gen`.
fn filled<B: Backend>(be: &B, n: usize, what: &str, mut gen: impl FnMut() -> f32) -> Result<B::Buf> {
    let host: Vec<f32> = (0..n).map(|_| gen()).collect();
    let mut buf = be.alloc(n, what)?;
    be.upload(&mut buf, &host);
    Ok(buf)
}

/// An i32 buffer holding `values`.
fn filled_i<B: Backend>(be: &B, values: &[i32], what: &str) -> Result<B::IBuf> {
    let mut buf = be.alloc_i(values.len(), what)?;
    be.upload_i(&mut buf, values);
    Ok(buf)
}

/// SplitMix64: cheap, deterministic inputs (values only need to be realistic).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Mean 0, variance 1: the sum of four uniforms (Irwin-Hall, variance
    /// 4/12), centred and scaled by sqrt(3).
    fn normal(&mut self) -> f32 {
        let s: f32 = (0..4).map(|_| self.uniform()).sum();
        (s - 2.0) * 3.0f32.sqrt()
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The report as a fixed-width table: a header with the device and the
/// ceilings, one line per op, then the skipped ops with their reasons.
pub fn print_table(r: &OpReport) -> String {
    let c = &r.ceilings;
    let mut s = String::new();
    let _ = writeln!(s, "device: {}   commit: {}", r.device, r.commit);
    let _ = writeln!(
        s,
        "ceilings: copy {} ({} MiB, read + write); gemm {} ({})",
        human_rate(c.copy_bytes_per_s, "B/s"),
        c.copy_bytes >> 20,
        human_rate(c.gemm_flops, "FLOP/s"),
        c.gemm_shape
    );
    let _ = writeln!(s, "{:<19} {:<36} {:>10} {:>15} {:>8} {:>8}", "op", "shape", "ms", "rate", "% ceil", "FLOP/B");
    for o in &r.results {
        let intensity = if o.flops > 0.0 { format!("{:.1}", o.intensity) } else { "-".into() };
        let _ = writeln!(
            s,
            "{:<19} {:<36} {:>10.3} {:>15} {:>7.1}% {:>8}",
            o.op,
            o.shape,
            o.median_ms,
            human_rate(o.rate, &o.unit),
            100.0 * o.fraction_of_ceiling,
            intensity
        );
    }
    for (op, why) in &r.skipped {
        let _ = writeln!(s, "skipped {op}: {why}");
    }
    s
}

/// `1.23 TFLOP/s`, `456.7 GFLOP/s`, `12.3 GB/s`.
fn human_rate(rate: f64, unit: &str) -> String {
    if unit == "FLOP/s" && rate >= 1e12 {
        format!("{:.2} TFLOP/s", rate / 1e12)
    } else if unit == "FLOP/s" {
        format!("{:.1} GFLOP/s", rate / 1e9)
    } else {
        format!("{:.1} GB/s", rate / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;

    fn tiny() -> Shapes {
        Shapes { tokens: 64, seq: 16, d_model: 32, d_ff: 64, n_head: 2, vocab: 50, n_experts: 4, top_k: 2 }
    }

    #[test]
    fn every_op_is_timed_with_finite_rates() {
        let be = Cpu::new(1).unwrap();
        let mut seen = Vec::new();
        let r = run(&be, &tiny(), 1, None, &mut |op| seen.push(op.to_string())).unwrap();
        assert_eq!(seen, steps(None).unwrap(), "progress reports every step in order");
        assert!(r.skipped.is_empty(), "the CPU runs every op: {:?}", r.skipped);
        let ops: Vec<&str> = r.results.iter().map(|o| o.op.as_str()).collect();
        assert_eq!(ops, OPS);
        let c = &r.ceilings;
        assert!(c.copy_bytes_per_s.is_finite() && c.copy_bytes_per_s > 0.0, "{c:?}");
        assert!(c.gemm_flops.is_finite() && c.gemm_flops > 0.0, "{c:?}");
        for o in &r.results {
            assert!(o.median_ms.is_finite() && o.median_ms > 0.0, "{o:?}");
            assert!(o.rate.is_finite() && o.rate > 0.0, "{o:?}");
            assert!(o.bytes > 0.0 && o.fraction_of_ceiling.is_finite() && o.fraction_of_ceiling > 0.0, "{o:?}");
            assert!(o.intensity.is_finite(), "{o:?}");
            let compute = o.op.contains("matmul") || o.op.starts_with("attention");
            assert_eq!(o.unit, if compute { "FLOP/s" } else { "B/s" }, "{o:?}");
            assert_eq!(o.flops > 0.0, compute, "{o:?}");
        }
        // 2*m*k*n for the forward matmul [64,32]x[32,64].
        assert_eq!(r.results[0].flops, (2 * 64 * 32 * 64) as f64);
        // Dropless top-2 routes every assignment: 128 rows of [32]x[32,64].
        let gm = r.results.iter().find(|o| o.op == "grouped_matmul").unwrap();
        assert_eq!(gm.flops, (2 * 128 * 32 * 64) as f64);
        let table = print_table(&r);
        assert!(OPS.iter().all(|op| table.contains(op)) && table.contains("ceilings: copy"), "{table}");
    }

    #[test]
    fn report_serializes_with_every_section() {
        let be = Cpu::new(1).unwrap();
        let r = run(&be, &tiny(), 1, Some("layernorm"), &mut |_| {}).unwrap();
        let ops: Vec<&str> = r.results.iter().map(|o| o.op.as_str()).collect();
        assert_eq!(ops, ["layernorm_fwd", "layernorm_bwd"]);
        let json = serde_json::to_value(&r).unwrap();
        for key in ["device", "commit", "shapes", "ceilings", "results", "skipped"] {
            assert!(json.get(key).is_some(), "missing {key}: {json}");
        }
        assert_eq!(json["shapes"]["d_model"], 32);
        assert_eq!(json["results"][0]["unit"], "B/s");
        assert!(json["ceilings"]["gemm_flops"].as_f64().unwrap() > 0.0);
    }

    #[test]
    fn filter_matching_nothing_lists_the_ops() {
        let be = Cpu::new(1).unwrap();
        let err = run(&be, &tiny(), 1, Some("softmax"), &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("'softmax'") && err.contains("grouped_matmul_bwd"), "{err}");
    }

    #[test]
    fn apply_sets_fields_and_names_bad_keys() {
        let mut s = Shapes::default();
        s.apply("tokens=512").unwrap();
        s.apply("seq=128").unwrap();
        s.apply("top_k=1").unwrap();
        assert_eq!((s.tokens, s.seq, s.top_k), (512, 128, 1));
        s.validate().unwrap();
        let err = s.apply("d_modle=3").unwrap_err().to_string();
        assert!(err.contains("'d_modle'") && err.contains("d_model") && err.contains("n_experts"), "{err}");
        let err = s.apply("vocab=many").unwrap_err().to_string();
        assert!(err.contains("vocab") && err.contains("many"), "{err}");
        let err = s.apply("vocab").unwrap_err().to_string();
        assert!(err.contains("key=value"), "{err}");
        assert_eq!(s.vocab, Shapes::default().vocab, "a failed apply changes nothing");
    }

    #[test]
    fn validate_names_the_value_and_the_fix() {
        let bad = |kv: &str| {
            let mut s = Shapes::default();
            s.apply(kv).unwrap();
            s.validate().unwrap_err().to_string()
        };
        let err = bad("n_experts=0");
        assert!(err.contains("n_experts = 0"), "{err}");
        let err = bad("d_model=250");
        assert!(err.contains("d_model = 250") && err.contains("n_head = 4") && err.contains("d_model=252"), "{err}");
        let err = bad("tokens=1000");
        assert!(err.contains("tokens = 1000") && err.contains("seq = 256") && err.contains("tokens=1024"), "{err}");
        let err = bad("top_k=9");
        assert!(err.contains("top_k = 9") && err.contains("n_experts = 8"), "{err}");
        Shapes::default().validate().unwrap();
    }
}
