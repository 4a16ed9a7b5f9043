//! Memory a config needs, computed before anything is allocated, and the
//! memory the machine can give.
//!
//! Every size a user controls (vocabulary, widths, layers, experts, batch,
//! sequence length, prompts) enters the engine's buffer sizes as a product.
//! [`estimate`] forms those products with checked arithmetic, so a config
//! whose sizes overflow is refused by name instead of wrapping, and sums the
//! bytes of every buffer the engine allocates for a purpose (training,
//! evaluation, generation). [`check`] compares the sum with what the backend
//! can still allocate and refuses a config that cannot fit, naming the
//! biggest part and the setting that shrinks it.
//!
//! The buffer list mirrors `model::acts::Acts::new`, `Model::new`,
//! `Optimizer::new` and the inference engine; `tests/memory.rs` holds the
//! estimate equal to the bytes the CPU backend really allocates, so the two
//! cannot drift apart.
//!
//! What the machine can give (CPU): the smallest of `MemAvailable`
//! (`/proc/meminfo`), the headroom under the process's cgroup memory limit
//! (v2 `memory.max`, v1 `memory.limit_in_bytes`), and the headroom under
//! `ulimit -v` (address space) and `ulimit -d` (data). On CUDA: the device's
//! free memory (`cuMemGetInfo`). The environment variable
//! `SWITCHYARD_MEMORY_LIMIT` caps it further (`8G`, `512M`, bytes), e.g. to
//! leave room for other jobs on a shared machine; `SWITCHYARD_MEMORY_LIMIT=off`
//! turns the check off.

use crate::backend::RouterStats;
use crate::config::Config;
use crate::{Error, Result};

/// Bytes per stored element (f32 values and i32 indices alike).
const ELEM: u64 = 4;

/// The part of an estimate that is host memory for checkpoint reads and
/// writes (one tensor at a time), not a backend buffer.
pub const CHECKPOINT_IO: &str = "checkpoint I/O (largest tensor)";

/// The settings that shrink the weights.
const MODEL: &str = "model.n_layer, model.d_model, model.d_ff, model.n_experts or model.vocab_size";

/// What the memory is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Training: weights, gradients, AdamW moments, activations and backward
    /// scratch for one micro-batch of `train.batch_size x train.seq_len`.
    Train,
    /// Evaluation: weights (and their gradient buffers, which the model
    /// always holds) and the activations of one micro-batch.
    Eval,
    /// Generation: weights, gradient buffers, a KV cache for `sequences`
    /// sequences of `model.max_seq_len` positions, and the work buffers of a
    /// prefill of `max_prompt` tokens and of a decode step over all sequences.
    Generate {
        /// Sequences decoded together.
        sequences: usize,
        /// Tokens of the longest prompt.
        max_prompt: usize,
    },
    /// Weights and gradient buffers only (what `Model::new` allocates).
    Weights,
}

/// One named part of an estimate.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Part {
    /// What it holds, e.g. `activations (batch 32 x seq 64)`.
    pub what: String,
    /// Bytes.
    pub bytes: u64,
    /// The setting that shrinks it, e.g. `train.batch_size or train.seq_len`.
    pub shrink: &'static str,
}

/// The memory a config needs for one purpose.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Estimate {
    /// Parameter count.
    pub params: u64,
    /// The parts, largest first.
    pub parts: Vec<Part>,
    /// Their sum, bytes.
    pub total: u64,
}

/// Memory a backend can still allocate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Available {
    /// Bytes.
    pub bytes: u64,
    /// Where the figure comes from, e.g. `MemAvailable in /proc/meminfo`.
    pub source: String,
}

/// `a * b * ...` over named sizes, or an error naming them when the product
/// does not fit 64 bits.
fn product(terms: &[(&str, u64)]) -> Result<u64> {
    terms.iter().try_fold(1u64, |acc, &(_, v)| acc.checked_mul(v)).ok_or_else(|| {
        let names: Vec<String> = terms.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        Error::Config(format!(
            "the sizes {} multiply past 2^64: the config asks for an impossible amount of memory; lower them",
            names.join(" x ")
        ))
    })
}

fn sum(values: &[u64]) -> Result<u64> {
    values.iter().try_fold(0u64, |acc, &v| acc.checked_add(v)).ok_or_else(|| {
        Error::Config("the config's buffers add up past 2^64 bytes; lower the model or batch sizes".into())
    })
}

/// Number of parameters of `cfg`'s model (checked: an overflowing size is an
/// error naming the keys).
pub fn param_count(cfg: &Config) -> Result<u64> {
    Ok(shapes(cfg)?.total)
}

/// Parameters used per token (a token reaches `top_k` of the `n_experts`
/// experts of an MoE layer), checked.
pub fn active_param_count(cfg: &Config) -> Result<u64> {
    let s = shapes(cfg)?;
    let k = if cfg.model.moe_every == 0 { 1 } else { cfg.model.top_k as u64 };
    let per_expert = s.expert_params_per_layer / (cfg.model.n_experts.max(1) as u64);
    let active_experts = product(&[("MoE layers", s.moe_layers), ("expert parameters", per_expert), ("top_k", k)])?;
    Ok(s.total - s.expert_params_per_layer * s.moe_layers + active_experts)
}

struct Shapes {
    total: u64,
    /// Elements of the largest single tensor (checkpoints stream one at a time).
    largest: u64,
    moe_layers: u64,
    dense_layers: u64,
    /// Parameters of the stacked experts of one MoE layer.
    expert_params_per_layer: u64,
}

fn shapes(cfg: &Config) -> Result<Shapes> {
    let m = &cfg.model;
    let (v, t, d, f, e) =
        (m.vocab_size as u64, m.max_seq_len as u64, m.d_model as u64, m.d_ff as u64, m.n_experts as u64);
    let moe_layers = (0..m.n_layer).filter(|&l| cfg.is_moe_layer(l)).count() as u64;
    let layers = m.n_layer as u64;
    let dense_layers = layers - moe_layers;
    let wte = product(&[("model.vocab_size", v), ("model.d_model", d)])?;
    let wpe = product(&[("model.max_seq_len", t), ("model.d_model", d)])?;
    // ln_1, ln_2 (weight, bias), qkv [d, 3d] + [3d], proj [d, d] + [d].
    let dd = product(&[("model.d_model", d), ("model.d_model", d)])?;
    let attn = sum(&[4 * d, product(&[("4", 4), ("model.d_model^2", dd)])?, 4 * d])?;
    // fc [d, f] + [f], proj [f, d] + [d].
    let df = product(&[("model.d_model", d), ("model.d_ff", f)])?;
    let mlp = sum(&[product(&[("2", 2), ("model.d_model x model.d_ff", df)])?, f, d])?;
    let experts = product(&[("model.n_experts", e), ("expert parameters", mlp)])?;
    let router = product(&[("model.d_model", d), ("model.n_experts", e)])?;
    let dense_total = product(&[("dense layers", dense_layers), ("layer parameters", sum(&[attn, mlp])?)])?;
    let moe_total = product(&[("MoE layers", moe_layers), ("layer parameters", sum(&[attn, experts, router])?)])?;
    let total = sum(&[wte, wpe, dense_total, moe_total, 2 * d])?;
    let stacked = if moe_layers > 0 { product(&[("model.n_experts", e), ("d_model x d_ff", df)])? } else { 0 };
    let largest = [wte, wpe, 3 * dd, df, stacked, router].into_iter().max().unwrap_or(0);
    Ok(Shapes { total, largest, moe_layers, dense_layers, expert_params_per_layer: experts })
}

/// Elements of the activations and backward scratch of one training or
/// evaluation micro-batch of `n = b * t` tokens (`Acts::new`).
fn activation_elems(cfg: &Config, s: &Shapes, b: u64, t: u64) -> Result<u64> {
    let m = &cfg.model;
    let (d, f, v, e, k, h) =
        (m.d_model as u64, m.d_ff as u64, m.vocab_size as u64, m.n_experts as u64, m.top_k as u64, m.n_head as u64);
    let n = product(&[("train.batch_size", b), ("train.seq_len", t)])?;
    let nd = product(&[("tokens per micro-batch", n), ("model.d_model", d)])?;
    let nf = product(&[("tokens per micro-batch", n), ("model.d_ff", f)])?;
    let nv = product(&[("tokens per micro-batch", n), ("model.vocab_size", v)])?;
    let nh = product(&[("tokens per micro-batch", n), ("model.n_head", h)])?;
    // Per block: ln1, att, h_mid, ln2 [N, d]; qkv [N, 3d]; four LayerNorm
    // statistics [N]; lse [N, H].
    let block = sum(&[product(&[("7", 7), ("N x d", nd)])?, product(&[("4", 4), ("N", n)])?, nh])?;
    let dense_ffn = product(&[("2", 2), ("N x d_ff", nf)])?;
    let moe_ffn = if s.moe_layers > 0 {
        let rows = product(&[("tokens per micro-batch", n), ("model.top_k", k)])?;
        let rd = product(&[("N x top_k", rows), ("model.d_model", d)])?;
        let rf = product(&[("N x top_k", rows), ("model.d_ff", f)])?;
        let ne = product(&[("tokens per micro-batch", n), ("model.n_experts", e)])?;
        let jitter = if m.router_jitter > 0.0 { product(&[("2", 2), ("N x d", nd)])? } else { 0 };
        // logits, probs, dlogits [N, E]; expert, gate, row, row_assign, dgate
        // [N k]; offsets [E + 1]; stats; xe, ye, dye, dxe [N k, d]; he, ae,
        // dhe [N k, d_ff].
        sum(&[
            jitter,
            product(&[("3", 3), ("N x n_experts", ne)])?,
            product(&[("5", 5), ("N x top_k", rows)])?,
            e + 1,
            RouterStats::len(m.n_experts) as u64,
            product(&[("4", 4), ("N x top_k x d", rd)])?,
            product(&[("3", 3), ("N x top_k x d_ff", rf)])?,
        ])?
    } else {
        0
    };
    let layers = m.n_layer as u64;
    let blocks = sum(&[
        product(&[("model.n_layer", layers), ("block activations", block)])?,
        product(&[("dense layers", s.dense_layers), ("dense FFN activations", dense_ffn)])?,
        product(&[("MoE layers", s.moe_layers), ("MoE FFN activations", moe_ffn)])?,
    ])?;
    // Whole model: tokens, targets, losses, ln_f statistics [N]; residual
    // stream [L + 1][N, d]; ln_f output, scratch, dres, dln, dlnf [N, d];
    // dqkv [N, 3d]; logits, dlogits [N, V]; router statistics of every MoE
    // layer; the dense-MLP backward scratch [N, d_ff] x 2.
    let dense_scratch = if s.dense_layers > 0 { dense_ffn } else { 0 };
    sum(&[
        blocks,
        product(&[("5", 5), ("N", n)])?,
        product(&[("model.n_layer + 1", layers + 1), ("N x d", nd)])?,
        product(&[("8", 8), ("N x d", nd)])?,
        product(&[("2", 2), ("N x vocab_size", nv)])?,
        s.moe_layers * RouterStats::len(m.n_experts) as u64,
        dense_scratch,
    ])
}

/// Elements of the inference work buffers for one call over `n` rows
/// (`infer::Engine::work`).
fn inference_work_elems(cfg: &Config, s: &Shapes, n: u64) -> Result<u64> {
    let m = &cfg.model;
    let (d, f, v, e, k, h) =
        (m.d_model as u64, m.d_ff as u64, m.vocab_size as u64, m.n_experts as u64, m.top_k as u64, m.n_head as u64);
    let nd = product(&[("rows", n), ("model.d_model", d)])?;
    let nf = product(&[("rows", n), ("model.d_ff", f)])?;
    let moe = if s.moe_layers > 0 {
        let rows = product(&[("rows", n), ("model.top_k", k)])?;
        let ne = product(&[("rows", n), ("model.n_experts", e)])?;
        sum(&[
            product(&[("2", 2), ("rows x n_experts", ne)])?,
            product(&[("4", 4), ("rows x top_k", rows)])?,
            e + 1,
            RouterStats::len(m.n_experts) as u64,
            product(&[("2", 2), ("rows x top_k x d", product(&[("rows x top_k", rows), ("model.d_model", d)])?)])?,
            product(&[("2", 2), ("rows x top_k x d_ff", product(&[("rows x top_k", rows), ("model.d_ff", f)])?)])?,
        ])?
    } else {
        0
    };
    // tokens, positions, slots, lens, mean, rstd [n]; x, ln, att, y, mid
    // [n, d]; qkv [n, 3d]; lse [n, H]; pre, act [n, d_ff] (a dense layer);
    // logits [n, V].
    let dense = if s.dense_layers > 0 { product(&[("2", 2), ("rows x d_ff", nf)])? } else { 0 };
    sum(&[
        product(&[("6", 6), ("rows", n)])?,
        product(&[("8", 8), ("rows x d", nd)])?,
        product(&[("rows", n), ("model.n_head", h)])?,
        dense,
        moe,
        product(&[("rows", n), ("model.vocab_size", v)])?,
    ])
}

fn bytes(elems: u64) -> Result<u64> {
    product(&[("elements", elems), ("bytes per element", ELEM)])
}

/// The bytes `cfg` needs for `purpose` on a backend that stores f32 values
/// (the CPU; a device backend adds its own copies, see
/// [`crate::backend::Backend::extra_memory`]). Checked: sizes whose products
/// overflow are an error naming the keys.
pub fn estimate(cfg: &Config, purpose: Purpose) -> Result<Estimate> {
    let s = shapes(cfg)?;
    let weights = bytes(s.total)?;
    let mut parts = vec![
        Part { what: "parameters".into(), bytes: weights, shrink: MODEL },
        Part { what: "gradients".into(), bytes: weights, shrink: MODEL },
    ];
    let (b, t) = (cfg.train.batch_size as u64, cfg.train.seq_len as u64);
    match purpose {
        Purpose::Train | Purpose::Eval => {
            if purpose == Purpose::Train {
                parts.push(Part {
                    what: "AdamW moments".into(),
                    // m and v per parameter, and the gradient-norm scalar.
                    bytes: sum(&[product(&[("2", 2), ("parameter bytes", weights)])?, ELEM])?,
                    shrink: MODEL,
                });
            }
            parts.push(Part {
                what: format!("activations (batch {b} x seq {t})"),
                bytes: bytes(activation_elems(cfg, &s, b, t)?)?,
                shrink: "train.batch_size or train.seq_len (raise train.grad_accum to keep the tokens per step)",
            });
        }
        Purpose::Generate { sequences, max_prompt } => {
            let n = sequences as u64;
            let per_layer = product(&[
                ("sequences", n),
                ("model.max_seq_len", cfg.model.max_seq_len as u64),
                ("model.d_model", cfg.model.d_model as u64),
            ])?;
            let kv = product(&[("2 (keys, values)", 2), ("model.n_layer", cfg.model.n_layer as u64), ("", per_layer)])?;
            parts.push(Part {
                what: format!("KV cache ({sequences} sequences x {} positions)", cfg.model.max_seq_len),
                bytes: bytes(kv)?,
                shrink: "the number of prompts (generate them in several batches)",
            });
            let work = sum(&[inference_work_elems(cfg, &s, max_prompt as u64)?, inference_work_elems(cfg, &s, n)?])?;
            parts.push(Part {
                what: "inference work buffers".into(),
                bytes: bytes(work)?,
                shrink: "the number of prompts or the prompt length",
            });
        }
        Purpose::Weights => {}
    }
    // Checkpoints move one tensor at a time through the host: a write holds
    // its f32 download and its bytes, a read its f32 values.
    let copies = match purpose {
        Purpose::Train => 2,
        Purpose::Eval | Purpose::Generate { .. } => 1,
        Purpose::Weights => 0,
    };
    if copies > 0 {
        parts.push(Part {
            what: CHECKPOINT_IO.into(),
            bytes: product(&[("copies", copies), ("largest tensor bytes", bytes(s.largest)?)])?,
            shrink: MODEL,
        });
    }
    let total = sum(&parts.iter().map(|p| p.bytes).collect::<Vec<_>>())?;
    parts.sort_by_key(|p| std::cmp::Reverse(p.bytes));
    Ok(Estimate { params: s.total, parts, total })
}

/// `1.5 GiB`, `820.0 MiB`, `12.0 KiB`.
pub fn human_bytes(b: u64) -> String {
    const K: f64 = 1024.0;
    let x = b as f64;
    if x >= K * K * K * K {
        format!("{:.1} TiB", x / (K * K * K * K))
    } else if x >= K * K * K {
        format!("{:.1} GiB", x / (K * K * K))
    } else if x >= K * K {
        format!("{:.1} MiB", x / (K * K))
    } else if x >= K {
        format!("{:.1} KiB", x / K)
    } else {
        format!("{b} B")
    }
}

impl Estimate {
    /// An estimate of one part.
    pub fn single(what: String, bytes: u64, shrink: &'static str) -> Estimate {
        Estimate { params: 0, parts: vec![Part { what, bytes, shrink }], total: bytes }
    }

    /// Add a part (keeping the parts largest first).
    pub fn add(&mut self, what: String, bytes: u64, shrink: &'static str) {
        self.total = self.total.saturating_add(bytes);
        self.parts.push(Part { what, bytes, shrink });
        self.parts.sort_by_key(|p| std::cmp::Reverse(p.bytes));
    }

    /// One line: the total and its parts.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self.parts.iter().map(|p| format!("{} {}", p.what, human_bytes(p.bytes))).collect();
        format!("{} ({})", human_bytes(self.total), parts.join(", "))
    }
}

/// The value of `SWITCHYARD_MEMORY_LIMIT`: `Ok(None)` when unset,
/// `Ok(Some(None))` for `off`, else the limit in bytes.
fn env_limit() -> Result<Option<Option<u64>>> {
    let Ok(raw) = std::env::var("SWITCHYARD_MEMORY_LIMIT") else {
        return Ok(None);
    };
    let s = raw.trim();
    if s.eq_ignore_ascii_case("off") {
        return Ok(Some(None));
    }
    parse_size(s).map(|b| Some(Some(b))).ok_or_else(|| {
        Error::Config(format!(
            "SWITCHYARD_MEMORY_LIMIT={raw}: give a size such as 8G, 512M or 1000000 (bytes), or `off` to skip the \
             memory check"
        ))
    })
}

/// `8G`, `512M`, `64k`, `1.5G`, `1000`: bytes (binary units).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return None,
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let x: f64 = num.trim().parse().ok()?;
    let b = x * mult as f64;
    (x.is_finite() && x >= 0.0 && b < 1.8e19).then_some(b as u64)
}

/// A `key: value kB` line of a `/proc` file, in bytes.
fn proc_kb(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    kb.checked_mul(1024)
}

/// Soft limit of a `/proc/self/limits` row, in bytes (`None` = unlimited).
fn rlimit(limits: &str, name: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

/// The cgroup memory limit's headroom (v2 or v1), if the process has a limit.
fn cgroup_headroom() -> Option<(u64, String)> {
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string());
    let own = read("/proc/self/cgroup").unwrap_or_default();
    // v2: one line `0::/path`.
    if let Some(path) = own.lines().find_map(|l| l.strip_prefix("0::")) {
        for dir in [format!("/sys/fs/cgroup{path}"), "/sys/fs/cgroup".to_string()] {
            if let (Some(max), Some(cur)) = (read(&format!("{dir}/memory.max")), read(&format!("{dir}/memory.current")))
            {
                if let (Ok(max), Ok(cur)) = (max.parse::<u64>(), cur.parse::<u64>()) {
                    return Some((max.saturating_sub(cur), format!("the cgroup memory limit ({dir}/memory.max)")));
                }
            }
        }
    }
    // v1: the memory controller's line `N:memory:/path`.
    let path = own.lines().find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string())).unwrap_or_default();
    for dir in [format!("/sys/fs/cgroup/memory{path}"), "/sys/fs/cgroup/memory".to_string()] {
        let (Some(max), Some(cur)) =
            (read(&format!("{dir}/memory.limit_in_bytes")), read(&format!("{dir}/memory.usage_in_bytes")))
        else {
            continue;
        };
        if let (Ok(max), Ok(cur)) = (max.parse::<u64>(), cur.parse::<u64>()) {
            // v1 writes a huge page-rounded number for "no limit".
            if max < (1u64 << 62) {
                return Some((
                    max.saturating_sub(cur),
                    format!("the cgroup memory limit ({dir}/memory.limit_in_bytes)"),
                ));
            }
        }
    }
    None
}

/// What this host can still give the process: the smallest of its free
/// memory, its cgroup limit's headroom and its `ulimit -v`/`-d` headroom;
/// `None` where none of them can be read (not Linux).
pub fn host_available() -> Option<Available> {
    let mut best: Option<Available> = None;
    let mut consider = |bytes: u64, source: String| {
        if best.as_ref().is_none_or(|b| bytes < b.bytes) {
            best = Some(Available { bytes, source });
        }
    };
    if let Some(b) = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| proc_kb(&t, "MemAvailable:")) {
        consider(b, "free memory (MemAvailable in /proc/meminfo)".into());
    }
    if let Some((b, src)) = cgroup_headroom() {
        consider(b, src);
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(lim) = rlimit(&limits, "Max address space") {
        let used = proc_kb(&status, "VmSize:").unwrap_or(0);
        consider(lim.saturating_sub(used), "the address-space limit (ulimit -v)".into());
    }
    if let Some(lim) = rlimit(&limits, "Max data size") {
        let used = proc_kb(&status, "VmData:").unwrap_or(0);
        consider(lim.saturating_sub(used), "the data-size limit (ulimit -d)".into());
    }
    best
}

/// Refuse `need` on a device with `available` memory (with
/// `SWITCHYARD_MEMORY_LIMIT` applied), naming the biggest part and the
/// setting that shrinks it. `what` names the job (`training`, ...), `device`
/// the backend.
pub fn check(need: &Estimate, available: Option<Available>, what: &str, device: &str) -> Result<()> {
    let available = match env_limit()? {
        Some(None) => return Ok(()),
        Some(Some(lim)) => match available {
            Some(a) if a.bytes <= lim => Some(a),
            _ => Some(Available { bytes: lim, source: "SWITCHYARD_MEMORY_LIMIT".into() }),
        },
        None => available,
    };
    let Some(avail) = available else {
        return Ok(());
    };
    if need.total <= avail.bytes {
        return Ok(());
    }
    // If the weights (and what scales with them) alone cannot fit, a smaller
    // batch does not help: name the model size.
    let weights: u64 = need.parts.iter().filter(|p| p.shrink == MODEL).map(|p| p.bytes).sum();
    let advice = if weights > avail.bytes {
        format!(
            "the model: {MODEL} (the weights, their gradients and optimizer state alone need {})",
            human_bytes(weights)
        )
    } else {
        let big = &need.parts[0];
        format!("{} ({} is the largest part)", big.shrink, big.what)
    };
    Err(Error::Config(format!(
        "{what} needs about {} on {device}, but only {} is available ({}): lower {advice}, or use a machine with more \
         memory (SWITCHYARD_MEMORY_LIMIT=off skips this check)",
        need.describe(),
        human_bytes(avail.bytes),
        avail.source,
    )))
}

/// Estimate what `cfg` needs for `purpose` on backend `be` (its own copies
/// included) and refuse it if it cannot fit; `what` names the job in the
/// error. Returns the estimate.
pub fn require<B: crate::backend::Backend>(be: &B, cfg: &Config, purpose: Purpose, what: &str) -> Result<Estimate> {
    let mut need = estimate(cfg, purpose)?;
    let extra = be.extra_memory(&need);
    if extra > 0 {
        need.add("device copies and scratch (bf16)".into(), extra, "the model size or train.batch_size");
    }
    check(&need, be.available_memory(), what, &be.name())?;
    Ok(need)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("8G"), Some(8 << 30));
        assert_eq!(parse_size("512m"), Some(512 << 20));
        assert_eq!(parse_size("1.5K"), Some(1536));
        assert_eq!(parse_size("1000"), Some(1000));
        for bad in ["", "G", "-1G", "8X", "1e30", "nan"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn proc_fields_parse() {
        assert_eq!(proc_kb("MemTotal: 10 kB\nMemAvailable:    2048 kB\n", "MemAvailable:"), Some(2048 * 1024));
        let limits = "Max data size             unlimited            unlimited            bytes\n\
                      Max address space         4096                 unlimited            bytes\n";
        assert_eq!(rlimit(limits, "Max address space"), Some(4096));
        assert_eq!(rlimit(limits, "Max data size"), None);
    }

    #[test]
    fn overflowing_sizes_name_the_keys() {
        let mut c = Config::preset("tiny").unwrap();
        c.model.vocab_size = usize::MAX / 2;
        let e = estimate(&c, Purpose::Train).unwrap_err().to_string();
        assert!(e.contains("model.vocab_size") && e.contains("2^64"), "{e}");
        let mut c = Config::preset("tiny").unwrap();
        c.train.batch_size = usize::MAX / 4;
        let e = estimate(&c, Purpose::Train).unwrap_err().to_string();
        assert!(e.contains("train.batch_size") && e.contains("train.seq_len"), "{e}");
    }

    #[test]
    fn refusal_names_the_largest_part_and_the_setting() {
        let c = Config::preset("tiny").unwrap();
        let need = estimate(&c, Purpose::Train).unwrap();
        // The weights fit but not the activations: the batch is named.
        let weights: u64 = need.parts.iter().filter(|p| p.shrink == MODEL).map(|p| p.bytes).sum();
        let some = Available { bytes: weights + (1 << 20), source: "a test".into() };
        let e = check(&need, Some(some), "training", "cpu").unwrap_err().to_string();
        assert!(e.contains("is available (a test)") && e.contains("lower train.batch_size"), "{e}");
        // Not even the weights fit: the model is named.
        let tiny = Available { bytes: 1 << 20, source: "a test".into() };
        let e = check(&need, Some(tiny), "training", "cpu").unwrap_err().to_string();
        assert!(e.contains("only 1.0 MiB is available (a test)") && e.contains("lower the model"), "{e}");
        let plenty = Available { bytes: need.total, source: "a test".into() };
        check(&need, Some(plenty), "training", "cpu").unwrap();
    }
}
