//! Inference: a KV cache per layer, prefill of a prompt in one pass, then one
//! token per step for a batch of sequences, and sampling.
//!
//! The forward pass here is the training forward of [`crate::model`] with
//! three differences: attention reads and extends a KV cache
//! ([`Backend::kv_append`], [`Backend::attention_decode`]); every row has its
//! own position ([`Backend::embedding_at`]); and MoE routing follows
//! [`Routing`] with no jitter and no loss terms.
//!
//! - [`Engine`]: the cache and the per-call buffers, over a trained [`Model`].
//! - [`sample`]: temperature, top-k, top-p, greedy.
//! - [`generate`]: prompts in, completions out, batched.

pub mod generate;
pub mod sample;

use std::collections::HashMap;

use crate::backend::{AttnShape, Backend, DecodeShape, Gemm, RouterParams, RouterStats};
use crate::config::capacity;
use crate::model::ffn::{self, DenseBuffers};
use crate::model::moe::{self, MoeBuffers, MoeShape};
use crate::model::{attention, FfnIdx, Model};
use crate::{Error, Result};

/// How MoE layers route at inference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Routing {
    /// No capacity limit: every token reaches its top-k experts. The default
    /// for generation: a token's output then depends only on its own
    /// prefix, never on what else is in the batch (with a capacity, a batch
    /// of 64 prompts could drop a token that a batch of 1 keeps).
    Dropless,
    /// Capacity `ceil(cf * k * N / E)` over the `N` rows of each call, as in
    /// evaluation (`model.eval_capacity_factor`).
    Capacity(f64),
}

/// Keys and values of every layer for `n_seq` sequences of up to `max_t`
/// positions, preallocated.
pub struct KvCache<B: Backend> {
    k: Vec<B::Buf>,
    v: Vec<B::Buf>,
    /// Positions filled per sequence.
    pub lens: Vec<usize>,
    /// Sequences.
    pub n_seq: usize,
    /// Positions per sequence (`model.max_seq_len`).
    pub max_t: usize,
    /// Bytes held by the cache (fp32 keys and values of every layer).
    pub bytes: usize,
}

/// Expert load of one MoE layer in one call: tokens kept per expert.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ExpertLoad {
    /// Block index.
    pub layer: usize,
    /// Assignments kept per expert.
    pub kept: Vec<f32>,
    /// Assignments dropped by capacity (0 when dropless).
    pub dropped: f32,
}

/// Buffers of one call over `n` rows (kept per distinct `n`, so the decode
/// steps of a batch reuse them).
struct Work<B: Backend> {
    tokens: B::IBuf,
    positions: B::IBuf,
    slots: B::IBuf,
    lens: B::IBuf,
    x: B::Buf,
    ln: B::Buf,
    mean: B::Buf,
    rstd: B::Buf,
    qkv: B::Buf,
    att: B::Buf,
    lse: B::Buf,
    y: B::Buf,
    mid: B::Buf,
    /// The dense MLP's activations (models with a dense layer).
    dense: Option<DenseBuffers<B>>,
    /// The MoE layers' routing and expert activations (models with an MoE
    /// layer; the layers run one after another, so they share one set).
    moe: Option<MoeBuffers<B>>,
    logits: B::Buf,
}

/// Where the rows of one call come from.
enum Mode<'a> {
    /// A whole prompt (positions `0..n` of one sequence).
    Prefill,
    /// One new token for every sequence, at positions `lens`.
    Decode { positions: &'a [usize] },
}

/// Inference over a trained model: the KV cache and the forward pass.
pub struct Engine<'m, B: Backend> {
    model: &'m Model<B>,
    cache: KvCache<B>,
    work: HashMap<usize, Work<B>>,
    routing: Routing,
    /// Record per-call expert load (one host read per MoE layer per call).
    pub collect_stats: bool,
    /// Expert load of the last call, per MoE layer (when `collect_stats`).
    pub last_load: Vec<ExpertLoad>,
}

impl<'m, B: Backend> Engine<'m, B> {
    /// A cache for `n_seq` sequences of up to `model.max_seq_len` positions.
    pub fn new(be: &B, model: &'m Model<B>, n_seq: usize, routing: Routing) -> Result<Engine<'m, B>> {
        let m = &model.cfg.model;
        if n_seq == 0 {
            return Err(Error::Config("generation needs at least one prompt".into()));
        }
        let (l, d, max_t) = (m.n_layer, m.d_model, m.max_seq_len);
        let per = n_seq * max_t * d;
        let mut k = Vec::with_capacity(l);
        let mut v = Vec::with_capacity(l);
        for layer in 0..l {
            k.push(be.alloc(per, &format!("KV cache keys, layer {layer} ({n_seq} x {max_t} x {d})"))?);
            v.push(be.alloc(per, &format!("KV cache values, layer {layer} ({n_seq} x {max_t} x {d})"))?);
        }
        let cache = KvCache { k, v, lens: vec![0; n_seq], n_seq, max_t, bytes: 2 * l * per * 4 };
        Ok(Engine { model, cache, work: HashMap::new(), routing, collect_stats: false, last_load: Vec::new() })
    }

    /// The cache (lengths, size).
    pub fn cache(&self) -> &KvCache<B> {
        &self.cache
    }

    /// Forget sequence `seq` (its next prefill starts at position 0).
    pub fn reset(&mut self, seq: usize) {
        self.cache.lens[seq] = 0;
    }

    /// Run a prompt through the model, filling the cache of sequence `seq`
    /// (which must be empty). Returns the logits of every prompt position
    /// (`[n, V]`, row-major): the last row predicts the first new token.
    pub fn prefill(&mut self, be: &B, seq: usize, tokens: &[u32]) -> Result<Vec<f32>> {
        let n = tokens.len();
        self.check_tokens(tokens)?;
        if self.cache.lens[seq] != 0 {
            return Err(Error::Config(format!("sequence {seq} is not empty; reset it before a new prefill")));
        }
        if n == 0 || n > self.cache.max_t {
            return Err(Error::Config(format!(
                "a prompt of {n} tokens does not fit: the model's context (model.max_seq_len) is {} positions",
                self.cache.max_t
            )));
        }
        let positions: Vec<usize> = (0..n).collect();
        let slots: Vec<i32> = (0..n).map(|p| (seq * self.cache.max_t + p) as i32).collect();
        let logits = self.run(be, tokens, &positions, &slots, Mode::Prefill)?;
        self.cache.lens[seq] = n;
        Ok(logits)
    }

    /// One new token for every sequence (`tokens[s]` for sequence `s`, at
    /// position `lens[s]`). Returns the logits `[n_seq, V]`.
    pub fn decode(&mut self, be: &B, tokens: &[u32]) -> Result<Vec<f32>> {
        let n = self.cache.n_seq;
        if tokens.len() != n {
            return Err(Error::Config(format!("decode needs one token per sequence ({n}), got {}", tokens.len())));
        }
        self.check_tokens(tokens)?;
        let positions = self.cache.lens.clone();
        if let Some(s) = positions.iter().position(|&p| p == 0 || p >= self.cache.max_t) {
            return Err(Error::Config(format!(
                "sequence {s} is at position {} of {}: decode needs a prefilled sequence with room for one more token",
                positions[s], self.cache.max_t
            )));
        }
        let slots: Vec<i32> = positions.iter().enumerate().map(|(s, &p)| (s * self.cache.max_t + p) as i32).collect();
        let logits = self.run(be, tokens, &positions, &slots, Mode::Decode { positions: &positions })?;
        for l in &mut self.cache.lens {
            *l += 1;
        }
        Ok(logits)
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        let v = self.model.cfg.model.vocab_size;
        match tokens.iter().find(|&&t| t as usize >= v) {
            Some(t) => Err(Error::Data(format!(
                "token id {t} is outside the model's vocabulary (model.vocab_size = {v}); the prompt must use the \
                 tokenizer the model was trained with"
            ))),
            None => Ok(()),
        }
    }

    fn work(be: &B, model: &Model<B>, n: usize) -> Result<Work<B>> {
        let m = &model.cfg.model;
        let (d, f, v, h) = (m.d_model, m.d_ff, m.vocab_size, m.n_head);
        let al = |len: usize, what: &str| be.alloc(len, what);
        let blocks = &model.table.blocks;
        let dense = if blocks.iter().any(|b| matches!(b.ffn, FfnIdx::Dense(_))) {
            Some(DenseBuffers::new(be, n, f)?)
        } else {
            None
        };
        let moe = if blocks.iter().any(|b| matches!(b.ffn, FfnIdx::Moe(_))) {
            let shape = MoeShape { n, d, f, e: m.n_experts, k: m.top_k };
            Some(MoeBuffers::new(be, shape, false, false)?)
        } else {
            None
        };
        Ok(Work {
            tokens: be.alloc_i(n, "tokens")?,
            positions: be.alloc_i(n, "positions")?,
            slots: be.alloc_i(n, "cache slots")?,
            lens: be.alloc_i(n, "cache lengths")?,
            x: al(n * d, "residual")?,
            ln: al(n * d, "layernorm output")?,
            mean: al(n, "layernorm mean")?,
            rstd: al(n, "layernorm rstd")?,
            qkv: al(n * 3 * d, "qkv")?,
            att: al(n * d, "attention output")?,
            lse: al(n * h, "attention logsumexp")?,
            y: al(n * d, "block output")?,
            mid: al(n * d, "residual after attention")?,
            dense,
            moe,
            logits: al(n * v, "logits")?,
        })
    }

    /// The forward pass over `tokens.len()` rows; returns the logits.
    fn run(&mut self, be: &B, tokens: &[u32], positions: &[usize], slots: &[i32], mode: Mode) -> Result<Vec<f32>> {
        let n = tokens.len();
        let model = self.model;
        let m = &model.cfg.model;
        let (d, f, v, h) = (m.d_model, m.d_ff, m.vocab_size, m.n_head);
        let hd = d / h;
        if !self.work.contains_key(&n) {
            // Keep at most a prefill size and the decode size around.
            if self.work.len() >= 2 {
                self.work.retain(|&k, _| k == self.cache.n_seq);
            }
            self.work.insert(n, Self::work(be, model, n)?);
        }
        let w = self.work.get_mut(&n).expect("inserted above");
        let p = &model.params;
        let tb = &model.table;
        let to_i32 = |x: &[usize]| x.iter().map(|&v| v as i32).collect::<Vec<_>>();
        be.upload_i(&mut w.tokens, &tokens.iter().map(|&t| t as i32).collect::<Vec<_>>());
        be.upload_i(&mut w.positions, &to_i32(positions));
        be.upload_i(&mut w.slots, slots);
        if let Mode::Decode { positions } = mode {
            let lens: Vec<usize> = positions.iter().map(|p| p + 1).collect();
            be.upload_i(&mut w.lens, &to_i32(&lens));
        }
        be.embedding_at(&mut w.x, &w.tokens, &w.positions, &p[tb.wte], &p[tb.wpe], n, d);
        self.last_load.clear();
        for (l, bi) in tb.blocks.iter().enumerate() {
            // mid = x + proj(attn(qkv(LN1(x)))), the cache extended on the way.
            be.layernorm_fwd(&mut w.ln, &mut w.mean, &mut w.rstd, &w.x, &p[bi.ln1_w], &p[bi.ln1_b], n, d);
            attention::qkv_fwd(be, p, bi, &w.ln, &mut w.qkv, n, d);
            let (kc, vc) = (&mut self.cache.k[l], &mut self.cache.v[l]);
            be.kv_append(kc, vc, &w.qkv, &w.slots, n, h, hd);
            match mode {
                Mode::Prefill => be.attention_fwd(&mut w.att, &mut w.lse, &w.qkv, AttnShape { b: 1, t: n, h, hd }),
                Mode::Decode { .. } => be.attention_decode(
                    &mut w.att,
                    &w.qkv,
                    kc,
                    vc,
                    &w.lens,
                    DecodeShape { n_seq: n, h, hd, max_t: self.cache.max_t },
                ),
            }
            attention::output_fwd(be, p, bi, &w.att, &mut w.y, n, d);
            be.copy(&mut w.mid, &w.x);
            be.add_inplace(&mut w.mid, &w.y);
            // x = mid + FFN(LN2(mid))
            be.layernorm_fwd(&mut w.ln, &mut w.mean, &mut w.rstd, &w.mid, &p[bi.ln2_w], &p[bi.ln2_b], n, d);
            match &bi.ffn {
                FfnIdx::Dense(dw) => {
                    let buf = w.dense.as_mut().expect("dense buffers exist for models with a dense layer");
                    ffn::forward(be, p, dw, buf, &w.ln, &mut w.y, n, d, f);
                }
                FfnIdx::Moe(mw) => {
                    let buf = w.moe.as_mut().expect("MoE buffers exist for MoE models");
                    let (e, k) = (m.n_experts, m.top_k);
                    let cap = match self.routing {
                        Routing::Dropless => n,
                        Routing::Capacity(cf) => capacity(cf, k, n, e).min(n),
                    };
                    let rp = RouterParams {
                        n_tokens: n,
                        n_experts: e,
                        top_k: k,
                        capacity: cap,
                        normalize_gates: m.normalize_gates,
                        aux_coef: m.aux_loss_coef as f32,
                        z_coef: m.z_loss_coef as f32,
                    };
                    moe::forward(be, p, mw, buf, &w.ln, &mut w.y, &rp, None);
                    if self.collect_stats {
                        let s = be.download(&buf.routing.stats);
                        self.last_load.push(ExpertLoad {
                            layer: l,
                            kept: s[RouterStats::kept(e)..RouterStats::kept(e) + e].to_vec(),
                            dropped: s[RouterStats::dropped(e)],
                        });
                    }
                }
            }
            be.copy(&mut w.x, &w.mid);
            be.add_inplace(&mut w.x, &w.y);
        }
        be.layernorm_fwd(&mut w.ln, &mut w.mean, &mut w.rstd, &w.x, &p[tb.lnf_w], &p[tb.lnf_b], n, d);
        be.matmul(&mut w.logits, &w.ln, &p[tb.wte], Gemm::new(n, d, v).tb());
        be.check()?;
        Ok(be.download(&w.logits))
    }
}
