//! Generation: prompts in, completions out. All prompts share one KV cache
//! and decode together (one batched forward per new token); each prompt is
//! prefilled on its own (positions `0..len`), so prompts of different lengths
//! need no padding and a prompt's completion does not depend on the others
//! (dropless routing; see [`Routing`]).

use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::sample::Sampler;
use super::{Engine, ExpertLoad, Routing};
use crate::backend::Backend;
use crate::model::{mix, Model};
use crate::{Error, Result};

/// Generation settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GenOptions {
    /// Tokens to generate per prompt.
    pub max_new_tokens: usize,
    /// Temperature, top-k, top-p.
    pub sampler: Sampler,
    /// Seed: prompt `i` samples from its own stream `mix(seed, i)`.
    pub seed: u64,
    /// MoE routing at inference.
    pub routing: Routing,
    /// Record the expert load of every call.
    pub stats: bool,
}

impl Default for GenOptions {
    fn default() -> GenOptions {
        GenOptions {
            max_new_tokens: 64,
            sampler: Sampler::default(),
            seed: 0,
            routing: Routing::Dropless,
            stats: false,
        }
    }
}

/// What a generation produced and how fast.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Generated {
    /// New tokens, per prompt.
    pub tokens: Vec<Vec<u32>>,
    /// Prompt tokens processed by prefill.
    pub prefill_tokens: usize,
    /// Seconds spent in prefill (including its sampling).
    pub prefill_s: f64,
    /// Tokens produced by decode steps (all sequences).
    pub decode_tokens: usize,
    /// Seconds spent in decode steps (including sampling).
    pub decode_s: f64,
    /// KV cache size.
    pub kv_cache_bytes: usize,
    /// Expert load per prompt's prefill, per MoE layer (with `stats`).
    pub prefill_load: Vec<Vec<ExpertLoad>>,
    /// Expert load of each decode step over the whole batch, per MoE layer (with `stats`).
    pub step_load: Vec<Vec<ExpertLoad>>,
}

impl Generated {
    /// Prefill throughput.
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prefill_tokens as f64 / self.prefill_s.max(1e-12)
    }
    /// Decode throughput (tokens of all sequences per second).
    pub fn decode_tokens_per_s(&self) -> f64 {
        self.decode_tokens as f64 / self.decode_s.max(1e-12)
    }
}

/// Check that every prompt fits the model's context with its new tokens.
pub fn check_lengths(prompts: &[Vec<u32>], max_new: usize, max_t: usize) -> Result<()> {
    if prompts.is_empty() {
        return Err(Error::Config("no prompts: give --prompt TEXT or --prompts FILE with one prompt per line".into()));
    }
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(Error::Config(format!("prompt {i} is empty: a prompt needs at least one token")));
        }
        // Checked: --max-new-tokens 18446744073709551615 must not wrap past the limit.
        if p.len().checked_add(max_new).is_none_or(|need| need > max_t) {
            let fit = max_t.saturating_sub(p.len());
            return Err(Error::Config(format!(
                "prompt {i} has {} tokens; with --max-new-tokens {max_new} it needs {} positions, but the model's \
                 context (model.max_seq_len) is {max_t}: at most {fit} new tokens fit after this prompt{}",
                p.len(),
                p.len() as u128 + max_new as u128,
                if fit == 0 { " (shorten the prompt)" } else { "" }
            )));
        }
    }
    Ok(())
}

/// Generate `opts.max_new_tokens` tokens after each prompt. `on_token(i, t)`
/// sees every token as it is produced (prompt `i`, token `t`).
pub fn generate<B: Backend>(
    be: &B,
    model: &Model<B>,
    prompts: &[Vec<u32>],
    opts: &GenOptions,
    on_token: &mut (dyn FnMut(usize, u32) + Send),
) -> Result<Generated> {
    be.session(|| generate_in_session(be, model, prompts, opts, on_token))
}

fn generate_in_session<B: Backend>(
    be: &B,
    model: &Model<B>,
    prompts: &[Vec<u32>],
    opts: &GenOptions,
    on_token: &mut (dyn FnMut(usize, u32) + Send),
) -> Result<Generated> {
    opts.sampler.validate()?;
    let max_t = model.cfg.model.max_seq_len;
    check_lengths(prompts, opts.max_new_tokens, max_t)?;
    let n = prompts.len();
    let mut eng = Engine::new(be, model, n, opts.routing)?;
    eng.collect_stats = opts.stats;
    let mut rngs: Vec<ChaCha8Rng> = (0..n).map(|i| ChaCha8Rng::seed_from_u64(mix(opts.seed, i as u64))).collect();
    let v = model.cfg.model.vocab_size;
    let mut out = Generated { tokens: vec![Vec::new(); n], kv_cache_bytes: eng.cache().bytes, ..Default::default() };
    if opts.max_new_tokens == 0 {
        return Ok(out);
    }
    let t0 = Instant::now();
    let mut next = vec![0u32; n];
    for (i, p) in prompts.iter().enumerate() {
        let logits = eng.prefill(be, i, p)?;
        let last = &logits[(p.len() - 1) * v..p.len() * v];
        next[i] = opts.sampler.sample(last, &mut rngs[i]);
        on_token(i, next[i]);
        out.tokens[i].push(next[i]);
        out.prefill_tokens += p.len();
        if opts.stats {
            out.prefill_load.push(eng.last_load.clone());
        }
    }
    out.prefill_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 1..opts.max_new_tokens {
        let logits = eng.decode(be, &next)?;
        for i in 0..n {
            next[i] = opts.sampler.sample(&logits[i * v..(i + 1) * v], &mut rngs[i]);
            on_token(i, next[i]);
            out.tokens[i].push(next[i]);
        }
        out.decode_tokens += n;
        if opts.stats {
            out.step_load.push(eng.last_load.clone());
        }
    }
    out.decode_s = t1.elapsed().as_secs_f64();
    Ok(out)
}

/// Greedy generation without a cache: every new token recomputes the whole
/// sequence from scratch (a prefill of prompt + tokens so far). Quadratic;
/// the reference the KV-cached path is tested against.
pub fn greedy_by_recompute<B: Backend>(
    be: &B,
    model: &Model<B>,
    prompt: &[u32],
    max_new: usize,
    routing: Routing,
) -> Result<Vec<u32>> {
    check_lengths(&[prompt.to_vec()], max_new, model.cfg.model.max_seq_len)?;
    be.session(|| recompute_in_session(be, model, prompt, max_new, routing))
}

fn recompute_in_session<B: Backend>(
    be: &B,
    model: &Model<B>,
    prompt: &[u32],
    max_new: usize,
    routing: Routing,
) -> Result<Vec<u32>> {
    let v = model.cfg.model.vocab_size;
    let mut eng = Engine::new(be, model, 1, routing)?;
    let mut seq = prompt.to_vec();
    let mut new = Vec::with_capacity(max_new);
    for _ in 0..max_new {
        eng.reset(0);
        let logits = eng.prefill(be, 0, &seq)?;
        let t = super::sample::argmax(&logits[(seq.len() - 1) * v..seq.len() * v]);
        seq.push(t);
        new.push(t);
    }
    Ok(new)
}
