//! The synthetic multi-domain Markov corpus: the embedded default data source,
//! with an exactly known loss floor.
//!
//! # The source
//! `D = data.synthetic.domains` domains, each owning the token ids
//! `[i*m, (i+1)*m)` with `m = domain_vocab`. Domain `i` is an order-`k` Markov
//! source (`k = order`) over its own ids, generated from `(synthetic.seed, i)`:
//! first every token gets a pool of `pool` candidate successors (a uniform
//! random subset of the domain's ids; `pool = 0` means all `m`), then each of
//! the `m^k` states (the last `k` tokens) picks `branching` distinct
//! successors uniformly from the pool of its last token and gives them
//! flat-Dirichlet probabilities (normalized Exp(1) draws). Pools make the
//! previous token informative on its own (a bigram model gets part of the
//! way) while the full state narrows the choice further (order-`k` structure
//! a model can only use through attention). Finally a uniform jump is mixed in:
//! `P(c|s) = (1 - teleport) * sparse(c|s) + teleport / m`.
//! With `teleport > 0` every state reaches every other in `k` steps and the
//! all-equal states have self-loops, so each chain is irreducible and aperiodic
//! and has one stationary distribution `pi` over states, computed by power
//! iteration in f64 until the L1 change is below 1e-12. (With `teleport = 0`
//! a chain may be reducible or periodic; the lazy chain `(I + P) / 2` is then
//! iterated and its limit is one stationary distribution, which is all the
//! derivation below needs.)
//!
//! A sequence is sampled by picking a domain uniformly, drawing its first `k`
//! tokens as one state from `pi`, then following the chain (a sequence shorter
//! than `k` is a prefix of that state). Starting in `pi` makes every sequence a
//! window of the stationary process.
//!
//! # The loss floor (exact, in nats per token)
//! The model sees `x_0..x_t` and predicts `x_{t+1}` at positions
//! `t = 0..seq-1`. The best possible predictor is the true conditional, whose
//! expected loss at position `t` is `H_t = H(X_{t+1} | X_0..X_t)`. Because the
//! domains use disjoint ids, `x_0` reveals the domain, so `H_t` is the uniform
//! average over domains of the per-domain conditional entropy; the uncertainty
//! about the domain only enters `H(X_0)`, which is never predicted.
//! Per domain:
//! - for `t >= k-1` the context contains the full state, and by stationarity
//!   `H_t = h = sum_s pi(s) H(P(.|s))`, the entropy rate;
//! - for `t < k-1` the context is a prefix of the first state, so
//!   `H_t = H(X_0..X_{t+1}) - H(X_0..X_t)`, joint entropies of the marginals of
//!   `pi` over the first `t+2` and `t+1` tokens of the state.
//!
//! The floor for windows of `seq` predictions is
//! `floor(seq) = (1/seq) * sum_{t=0}^{seq-1} H_t`, which tends to `h` as `seq`
//! grows (for `k = 1` it equals `h` exactly).
//!
//! Two reference points: the bigram entropy `H(X_{t+1} | X_t)` of the
//! stationary process (what a model that sees only the previous token can
//! reach; averaged over domains) and the unigram entropy (of the marginal token
//! distribution, the mixture of the domains' stationary marginals with weights
//! `1/D`, so it includes the `ln D` of the domain choice). Conditioning never
//! raises entropy, so `h <= bigram <= unigram`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::config::SyntheticConfig;
use crate::error::{Error, Result};

use super::{mix_seed, SOURCE_STREAM};

/// Power iteration stops when the L1 change of `pi` falls below this.
const STATIONARY_TOL: f64 = 1e-12;
/// Power iteration bound. The default corpus converges in 64-120 iterations
/// per domain; a chain that needs more than this mixes too slowly to be a
/// useful corpus (raise teleport).
const STATIONARY_MAX_ITERS: usize = 100_000;
/// A chain that hits the bound is still accepted if its last L1 change is
/// below this (the loss floor is then off by about as much).
const STATIONARY_ACCEPT: f64 = 1e-9;
/// Largest number of states per domain (`domain_vocab^order`), as in
/// `Config::validate`.
const MAX_STATES: usize = 4_000_000;

/// One domain's Markov chain. States are the last `k` local ids (0..m),
/// encoded base `m` with the oldest token most significant, so the successor
/// of state `s` after token `c` is `(s % m^(k-1)) * m + c`.
#[derive(Debug)]
struct Chain {
    /// `[states, branching]`: local ids of the sparse successors.
    succ: Vec<u32>,
    /// `[states, branching]`: the states they lead to.
    next: Vec<u32>,
    /// `[states, branching]`: their sparse probabilities (each row sums to 1).
    prob: Vec<f64>,
    /// `[states, branching]`: sampling thresholds `teleport + (1 - teleport) *
    /// (running sum of prob)`, for a uniform draw `u` that is not a jump
    /// (`u >= teleport`); each row ends at exactly 1.
    cum: Vec<f64>,
    /// `[states]`: running sums of `pi` (the stationary distribution is `prefix[k-1]`).
    pi_cdf: Vec<f64>,
    /// `prefix[j]`, `[m^(j+1)]`: marginal of `pi` over the first `j+1` tokens of
    /// the state; `prefix[k-1]` is `pi` itself.
    prefix: Vec<Vec<f64>>,
    /// L1 change of the last power iteration.
    residual: f64,
    /// Power iterations run.
    iterations: usize,
}

/// The synthetic corpus: `domains` independent sparse Markov sources over
/// disjoint token ranges, with exact information-theoretic reference numbers.
#[derive(Debug)]
pub struct SyntheticSource {
    domains: usize,
    m: usize,
    order: usize,
    branching: usize,
    teleport: f64,
    chains: Vec<Chain>,
    /// `h`, averaged over domains.
    entropy_rate: f64,
    /// `H(X_{t+1} | X_0..X_t)` for `t < order-1`, averaged over domains.
    prefix_cond: Vec<f64>,
    bigram_entropy: f64,
    unigram_entropy: f64,
}

impl SyntheticSource {
    /// Build the sources from `cfg` (deterministic in `cfg.seed`).
    pub fn new(cfg: &SyntheticConfig) -> Result<SyntheticSource> {
        check_config(cfg)?;
        let (m, k, b, tel) = (cfg.domain_vocab, cfg.order, cfg.branching, cfg.teleport);
        let pool = if cfg.pool == 0 { m } else { cfg.pool };
        let chains: Vec<Chain> = (0..cfg.domains)
            .into_par_iter()
            .map(|d| build_chain(m, k, b, pool, tel, mix_seed(&[SOURCE_STREAM, cfg.seed, d as u64])))
            .collect();
        if let Some((d, c)) = chains.iter().enumerate().find(|(_, c)| c.residual > STATIONARY_ACCEPT) {
            return Err(Error::Data(format!(
                "synthetic domain {d}: the stationary distribution did not converge in {} power iterations \
                 (L1 change {:.1e}); the chain mixes too slowly: raise data.synthetic.teleport (0.02 is the default)",
                c.iterations, c.residual
            )));
        }
        let mut src = SyntheticSource {
            domains: cfg.domains,
            m,
            order: k,
            branching: b,
            teleport: tel,
            chains,
            entropy_rate: 0.0,
            prefix_cond: vec![0.0; k - 1],
            bigram_entropy: 0.0,
            unigram_entropy: (cfg.domains as f64).ln(),
        };
        let w = 1.0 / cfg.domains as f64;
        for d in 0..src.domains {
            let c = &src.chains[d];
            let pi = &c.prefix[k - 1];
            let rate: f64 = (0..pi.len()).map(|s| pi[s] * src.row_entropy(d, s)).sum();
            let (bigram, unigram) = src.pair_entropies(d);
            src.entropy_rate += w * rate;
            src.bigram_entropy += w * bigram;
            src.unigram_entropy += w * unigram;
            let joint: Vec<f64> = c.prefix.iter().map(|p| entropy(p)).collect();
            for t in 0..k - 1 {
                src.prefix_cond[t] += w * (joint[t + 1] - joint[t]);
            }
        }
        Ok(src)
    }

    /// Number of domains.
    pub fn domains(&self) -> usize {
        self.domains
    }

    /// Tokens per domain.
    pub fn domain_vocab(&self) -> usize {
        self.m
    }

    /// Markov order.
    pub fn order(&self) -> usize {
        self.order
    }

    /// States per domain (`domain_vocab^order`).
    pub fn num_states(&self) -> usize {
        self.chains[0].pi_cdf.len()
    }

    /// The domain owning `token`, or `None` if it is outside every domain.
    pub fn domain_of(&self, token: u32) -> Option<usize> {
        let d = token as usize / self.m;
        (d < self.domains).then_some(d)
    }

    /// The full next-token distribution `P(.|s)` of `domain` in state `state`
    /// (`[domain_vocab]`, indexed by local id).
    pub fn next_distribution(&self, domain: usize, state: usize) -> Vec<f64> {
        let (c, b) = (&self.chains[domain], self.branching);
        let mut p = vec![self.teleport / self.m as f64; self.m];
        for j in state * b..(state + 1) * b {
            p[c.succ[j] as usize] += (1.0 - self.teleport) * c.prob[j];
        }
        p
    }

    /// The stationary distribution of `domain` over states (`[num_states]`).
    pub fn stationary(&self, domain: usize) -> &[f64] {
        &self.chains[domain].prefix[self.order - 1]
    }

    /// The state reached from `state` after local token `c`.
    pub fn next_state(&self, state: usize, c: usize) -> usize {
        (state % (self.num_states() / self.m)) * self.m + c
    }

    /// Entropy rate `h` (nats/token), averaged over domains.
    pub fn entropy_rate(&self) -> f64 {
        self.entropy_rate
    }

    /// `H(X_{t+1} | X_t)` of the stationary process (nats), averaged over domains.
    pub fn bigram_entropy(&self) -> f64 {
        self.bigram_entropy
    }

    /// Entropy of the marginal token distribution (nats).
    pub fn unigram_entropy(&self) -> f64 {
        self.unigram_entropy
    }

    /// `H_t = H(X_{t+1} | X_0..X_t)`, the best achievable expected loss at position `t`.
    pub fn conditional_entropy(&self, t: usize) -> f64 {
        self.prefix_cond.get(t).copied().unwrap_or(self.entropy_rate)
    }

    /// The exact optimal mean cross-entropy (nats/token) over a window of
    /// `seq` predictions: `(1/seq) * sum_{t<seq} H_t` (module docs). 0 for `seq = 0`.
    pub fn loss_floor(&self, seq: usize) -> f64 {
        if seq == 0 {
            return 0.0;
        }
        let head = seq.min(self.prefix_cond.len());
        let sum: f64 = self.prefix_cond[..head].iter().sum::<f64>() + (seq - head) as f64 * self.entropy_rate;
        sum / seq as f64
    }

    /// Natural log of the true probability of `next` following `context` (the
    /// tokens of the sequence so far, oldest first). An empty context gives the
    /// probability of a first token. Returns `-inf` for an impossible event: a
    /// token outside the domain of `context[0]`, or outside every domain.
    pub fn log_prob(&self, context: &[u32], next: u32) -> f64 {
        let Some(d) = self.domain_of(next) else {
            return f64::NEG_INFINITY;
        };
        let base = (d * self.m) as u32;
        if context.iter().any(|&x| self.domain_of(x) != Some(d)) {
            return f64::NEG_INFINITY;
        }
        let c = &self.chains[d];
        let local = |x: u32| (x - base) as usize;
        let encode = |xs: &[u32]| xs.iter().fold(0usize, |s, &x| s * self.m + local(x));
        let n = context.len();
        if n == 0 {
            return (c.prefix[0][local(next)] / self.domains as f64).ln();
        }
        if n < self.order {
            let joint = c.prefix[n][encode(context) * self.m + local(next)];
            let marg = c.prefix[n - 1][encode(context)];
            return if marg > 0.0 { (joint / marg).ln() } else { f64::NEG_INFINITY };
        }
        let s = encode(&context[n - self.order..]);
        let b = self.branching;
        let mut p = self.teleport / self.m as f64;
        for j in s * b..(s + 1) * b {
            if c.succ[j] as usize == local(next) {
                p += (1.0 - self.teleport) * c.prob[j];
            }
        }
        p.ln()
    }

    /// Fill `out` with one sequence: a uniform domain, a first state from its
    /// stationary distribution, then the chain.
    pub fn sample<R: Rng>(&self, rng: &mut R, out: &mut [u32]) {
        if out.is_empty() {
            return;
        }
        let (m, k, b) = (self.m, self.order, self.branching);
        let d = rng.random_range(0..self.domains);
        let c = &self.chains[d];
        let base = (d * m) as u32;
        let states = c.pi_cdf.len();
        let u: f64 = rng.random();
        let mut s = c.pi_cdf.partition_point(|&q| q <= u).min(states - 1);
        let mut place = states / m;
        for x in out.iter_mut().take(k) {
            *x = base + ((s / place) % m) as u32;
            place /= m;
        }
        let suffix = states / m;
        for x in out.iter_mut().skip(k) {
            let u: f64 = rng.random();
            if u < self.teleport {
                let jump = (((u / self.teleport) * m as f64) as usize).min(m - 1);
                *x = base + jump as u32;
                s = (s % suffix) * m + jump;
            } else {
                let row = &c.cum[s * b..(s + 1) * b];
                // A branch-free count beats a binary search for short rows.
                let below =
                    if b <= 16 { row.iter().filter(|&&q| q <= u).count() } else { row.partition_point(|&q| q <= u) };
                let j = s * b + below.min(b - 1);
                *x = base + c.succ[j];
                s = c.next[j] as usize;
            }
        }
    }

    /// Entropy (nats) of `P(.|s)` in `domain`.
    fn row_entropy(&self, domain: usize, s: usize) -> f64 {
        let (c, b, m) = (&self.chains[domain], self.branching, self.m as f64);
        let jump = self.teleport / m;
        let sparse: f64 = (s * b..(s + 1) * b).map(|j| plogp(jump + (1.0 - self.teleport) * c.prob[j])).sum();
        -(sparse + (m - b as f64) * plogp(jump))
    }

    /// `(H(X_{t+1} | X_t), H(X_t))` of the stationary process of `domain`.
    fn pair_entropies(&self, domain: usize) -> (f64, f64) {
        let (c, b, m) = (&self.chains[domain], self.branching, self.m);
        let pi = &c.prefix[self.order - 1];
        let mut joint = vec![0.0f64; m * m];
        let mut last = vec![0.0f64; m];
        for (s, &p) in pi.iter().enumerate() {
            let a = s % m;
            last[a] += p;
            for j in s * b..(s + 1) * b {
                joint[a * m + c.succ[j] as usize] += p * (1.0 - self.teleport) * c.prob[j];
            }
        }
        for a in 0..m {
            for x in &mut joint[a * m..(a + 1) * m] {
                *x += last[a] * self.teleport / m as f64;
            }
        }
        let h_last = entropy(&last);
        (entropy(&joint) - h_last, h_last)
    }
}

/// Reject parameters that would make the source undefined or panic (each
/// error names the key); `Config::validate` calls this too.
pub fn check_config(cfg: &SyntheticConfig) -> Result<()> {
    let bad = |msg: String| Err(Error::Config(msg));
    for (k, v) in [
        ("data.synthetic.domains", cfg.domains),
        ("data.synthetic.domain_vocab", cfg.domain_vocab),
        ("data.synthetic.order", cfg.order),
        ("data.synthetic.branching", cfg.branching),
    ] {
        if v == 0 {
            return bad(format!("{k} = 0; it must be at least 1"));
        }
    }
    if cfg.pool > cfg.domain_vocab || (cfg.pool > 0 && cfg.branching > cfg.pool) {
        return bad(format!(
            "data.synthetic.pool = {} must be 0 or between branching = {} and domain_vocab = {}",
            cfg.pool, cfg.branching, cfg.domain_vocab
        ));
    }
    if cfg.branching > cfg.domain_vocab {
        return bad(format!(
            "data.synthetic.branching = {} exceeds domain_vocab = {}; lower branching",
            cfg.branching, cfg.domain_vocab
        ));
    }
    if !(0.0..=1.0).contains(&cfg.teleport) {
        return bad(format!("data.synthetic.teleport = {} must be in [0, 1] (0.02 is the default)", cfg.teleport));
    }
    let states =
        u32::try_from(cfg.order).ok().and_then(|k| cfg.domain_vocab.checked_pow(k)).filter(|&n| n <= MAX_STATES);
    if states.is_none() {
        return bad(format!(
            "the synthetic corpus has domain_vocab^order = {}^{} states per domain; keep it under {MAX_STATES} \
             (lower order or domain_vocab)",
            cfg.domain_vocab, cfg.order
        ));
    }
    if cfg.domains.checked_mul(cfg.domain_vocab).is_none_or(|n| n > u32::MAX as usize) {
        return bad("data.synthetic.domains * domain_vocab does not fit in a u32 token id; shrink the corpus".into());
    }
    // Every domain holds a successor table per state: bound the total, not
    // only each domain's.
    let total = states.and_then(|s| s.checked_mul(cfg.domains)).and_then(|s| s.checked_mul(cfg.branching));
    if total.is_none_or(|n| n > MAX_STATES * 16) {
        return bad(format!(
            "the synthetic corpus has data.synthetic.domains x domain_vocab^order x branching = {} x {}^{} x {} \
             successor entries; keep it under {} (fewer domains, a lower order or a smaller domain_vocab)",
            cfg.domains,
            cfg.domain_vocab,
            cfg.order,
            cfg.branching,
            MAX_STATES * 16
        ));
    }
    Ok(())
}

/// Generate one domain's chain and its stationary distribution.
fn build_chain(m: usize, k: usize, b: usize, pool: usize, tel: f64, seed: u64) -> Chain {
    let states = m.pow(k as u32);
    let suffixes = states / m;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut succ = Vec::with_capacity(states * b);
    let mut next = Vec::with_capacity(states * b);
    let mut prob = Vec::with_capacity(states * b);
    let mut cum = Vec::with_capacity(states * b);
    // Each last token owns a pool of `pool` candidate successors (a random
    // subset, drawn first); every state picks its `b` successors from the pool
    // of its last token. With pool < m the last token alone already narrows
    // the next token down (a learnable bigram), and the full state narrows it
    // further (order-k structure that needs attention). pool = m: no pools.
    let mut all: Vec<u32> = (0..m as u32).collect();
    let mut pools: Vec<Vec<u32>> = (0..m)
        .map(|_| {
            for j in 0..pool {
                all.swap(j, rng.random_range(j..m));
            }
            all[..pool].to_vec()
        })
        .collect();
    let mut w = vec![0.0f64; b];
    for s in 0..states {
        // A partial Fisher-Yates shuffle of the pool picks b distinct
        // successors; it is uniform from any starting order, so the pool is
        // shuffled in place and not reset between states.
        let perm = &mut pools[s % m];
        for (j, wj) in w.iter_mut().enumerate() {
            perm.swap(j, rng.random_range(j..pool));
            // Flat Dirichlet: normalized Exp(1) draws; 1 - u is in (0, 1].
            *wj = -(1.0 - rng.random::<f64>()).ln();
        }
        let total: f64 = w.iter().sum();
        let to = (s % suffixes) * m;
        let mut run = 0.0;
        for (j, (&wj, &c)) in w.iter().zip(perm.iter()).enumerate() {
            let p = if total > 0.0 { wj / total } else { 1.0 / b as f64 };
            succ.push(c);
            next.push((to + c as usize) as u32);
            prob.push(p);
            run += p;
            cum.push(if j + 1 == b { 1.0 } else { tel + (1.0 - tel) * run });
        }
    }
    let (pi, residual, iterations) = stationary(m, b, tel, &next, &prob);
    let mut prefix = vec![pi];
    for _ in 1..k {
        let finer = prefix.last().expect("prefix starts non-empty");
        let coarse: Vec<f64> = finer.chunks(m).map(|c| c.iter().sum()).collect();
        prefix.push(coarse);
    }
    prefix.reverse();
    let mut pi_cdf = Vec::with_capacity(states);
    let mut run = 0.0;
    for &p in &prefix[k - 1] {
        run += p;
        pi_cdf.push(run);
    }
    Chain { succ, next, prob, cum, pi_cdf, prefix, residual, iterations }
}

/// Power iteration for `pi = pi P` from the uniform distribution. Returns `pi`,
/// the last L1 change and the iteration count. With `tel = 0` the chain may be
/// periodic, so the lazy chain `(I + P) / 2` (same fixed points) is iterated.
fn stationary(m: usize, b: usize, tel: f64, next: &[u32], prob: &[f64]) -> (Vec<f64>, f64, usize) {
    let states = next.len() / b;
    let suffixes = states / m;
    let mut pi = vec![1.0 / states as f64; states];
    let mut new = vec![0.0f64; states];
    let mut suffix_mass = vec![0.0f64; suffixes];
    let mut residual = f64::INFINITY;
    let mut iterations = 0;
    while iterations < STATIONARY_MAX_ITERS && residual >= STATIONARY_TOL {
        iterations += 1;
        suffix_mass.iter_mut().for_each(|x| *x = 0.0);
        for block in pi.chunks(suffixes) {
            suffix_mass.iter_mut().zip(block).for_each(|(x, &p)| *x += p);
        }
        // The uniform jump sends the mass of every state with suffix q evenly
        // to the m states q*m + c.
        for (q, &mass) in suffix_mass.iter().enumerate() {
            new[q * m..(q + 1) * m].iter_mut().for_each(|x| *x = mass * tel / m as f64);
        }
        for (s, &p) in pi.iter().enumerate() {
            let keep = p * (1.0 - tel);
            for j in s * b..(s + 1) * b {
                new[next[j] as usize] += keep * prob[j];
            }
        }
        if tel == 0.0 {
            new.iter_mut().zip(&pi).for_each(|(x, &p)| *x = 0.5 * (*x + p));
        }
        let total: f64 = new.iter().sum();
        new.iter_mut().for_each(|x| *x /= total);
        residual = new.iter().zip(&pi).map(|(a, b)| (a - b).abs()).sum();
        std::mem::swap(&mut pi, &mut new);
    }
    (pi, residual, iterations)
}

fn plogp(p: f64) -> f64 {
    if p > 0.0 {
        p * p.ln()
    } else {
        0.0
    }
}

/// Shannon entropy (nats) of a distribution.
fn entropy(p: &[f64]) -> f64 {
    -p.iter().map(|&x| plogp(x)).sum::<f64>()
}
