//! Run configuration: model shape, router semantics, training schedule and data.
//!
//! A [`Config`] is read from TOML (`--config FILE`), started from a named preset
//! (`--preset tiny|small|switch-base`) and edited with `--set section.key=value`.
//! Unknown keys and wrong types are errors that name the key; [`Config::validate`]
//! checks the values against each other (DESIGN.md §2) before anything runs.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Model shape and router semantics (DESIGN.md §2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Vocabulary size (rows of `wte`). Must exceed every token id of the data.
    pub vocab_size: usize,
    /// Maximum sequence length (rows of `wpe`).
    pub max_seq_len: usize,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Number of attention heads; `d_model % n_head == 0`.
    pub n_head: usize,
    /// Residual stream width.
    pub d_model: usize,
    /// Hidden width of the dense MLP and of every expert.
    pub d_ff: usize,
    /// Layer `l` is MoE iff `(l + 1) % moe_every == 0`; 0 = dense model.
    pub moe_every: usize,
    /// Experts per MoE layer.
    pub n_experts: usize,
    /// Experts chosen per token (1 = Switch, 2 = GShard/Mixtral-like).
    pub top_k: usize,
    /// Training capacity factor; `<= 0` means dropless.
    pub capacity_factor: f64,
    /// Evaluation capacity factor; `<= 0` means dropless.
    pub eval_capacity_factor: f64,
    /// Divide the k gates by their sum.
    pub normalize_gates: bool,
    /// Multiplicative router input jitter `U(1-eps, 1+eps)` in training; 0 = off.
    pub router_jitter: f64,
    /// Load-balancing loss coefficient alpha.
    pub aux_loss_coef: f64,
    /// Router z-loss coefficient beta.
    pub z_loss_coef: f64,
    /// Init `std = sqrt(init_scale / fan_in)` for dense and expert weights.
    pub init_scale: f64,
    /// Init std of the router weight.
    pub router_init_std: f64,
    /// Init std of `wte` and `wpe`.
    pub embed_init_std: f64,
}

/// Optimizer, schedule, batch and bookkeeping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Seed for initialization, data order and router jitter.
    pub seed: u64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Tokens per sequence (<= model.max_seq_len).
    pub seq_len: usize,
    /// Micro-batches accumulated per optimizer step.
    pub grad_accum: usize,
    /// Optimizer steps.
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate of the cosine decay.
    pub min_lr: f64,
    /// Linear warmup steps.
    pub warmup_steps: usize,
    /// AdamW decoupled weight decay for matrices.
    pub weight_decay: f64,
    /// Also decay biases, LayerNorm parameters and embeddings.
    pub decay_all: bool,
    /// AdamW beta1.
    pub beta1: f64,
    /// AdamW beta2.
    pub beta2: f64,
    /// AdamW epsilon.
    pub eps: f64,
    /// Global gradient-norm clip; `<= 0` disables clipping.
    pub grad_clip: f64,
    /// Evaluate every this many steps (and at the end); 0 = only at the end.
    pub eval_every: usize,
    /// Validation micro-batches per evaluation.
    pub eval_batches: usize,
    /// Save a checkpoint every this many steps (and at the end); 0 = only at the end.
    pub checkpoint_every: usize,
    /// Checkpoints kept in the run directory (older ones are deleted after a new one is complete).
    pub keep_checkpoints: usize,
}

/// Synthetic multi-domain Markov corpus (see `data::synthetic`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Number of domains, each with its own Markov source.
    pub domains: usize,
    /// Tokens per domain: domain `i` owns ids `[i*domain_vocab, (i+1)*domain_vocab)`.
    pub domain_vocab: usize,
    /// Markov order (the state is the last `order` tokens).
    pub order: usize,
    /// Successors per state (the sparsity of each source).
    pub branching: usize,
    /// Candidate successors per last token: each state draws its `branching`
    /// successors from the pool of its last token (0 = the whole domain).
    pub pool: usize,
    /// Probability of a uniform jump inside the domain's vocabulary (keeps each chain ergodic).
    pub teleport: f64,
    /// Seed of the sources (not of the samples: that is train.seed).
    pub seed: u64,
}

/// Where tokens come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `"synthetic"`, a text file, a directory of text files, or a `.u16` token file.
    pub source: String,
    /// `"byte"` or the path of a Hugging Face `tokenizer.json`.
    pub tokenizer: String,
    /// Share of a file corpus held out for validation (its tail).
    pub val_fraction: f64,
    /// Parameters of the synthetic corpus.
    pub synthetic: SyntheticConfig,
}

impl DataConfig {
    /// Make `source` and `tokenizer` absolute paths (relative ones are taken
    /// from the current directory), so a run's stored config finds its data
    /// from any directory. `"synthetic"` and `"byte"` stay as they are.
    pub fn resolve_paths(&mut self) {
        let absolute = |s: &mut String| {
            if let Ok(p) = std::path::absolute(s.as_str()) {
                *s = p.display().to_string();
            }
        };
        if self.source != "synthetic" && !self.source.is_empty() {
            absolute(&mut self.source);
        }
        if self.tokenizer != "byte" && !self.tokenizer.is_empty() {
            absolute(&mut self.tokenizer);
        }
    }
}

/// A whole run configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Model shape and router.
    pub model: ModelConfig,
    /// Optimization and bookkeeping.
    pub train: TrainConfig,
    /// Data source.
    pub data: DataConfig,
}

/// Names of the built-in presets.
pub const PRESETS: &[&str] = &["tiny", "small", "switch-base"];

impl Config {
    /// The built-in preset `name` (`tiny`, `small`, `switch-base`).
    pub fn preset(name: &str) -> Result<Config> {
        let mut c = Config::tiny();
        match name {
            "tiny" => {}
            "small" => {
                let m = &mut c.model;
                m.max_seq_len = 256;
                m.n_layer = 6;
                m.n_head = 8;
                m.d_model = 256;
                m.d_ff = 1024;
                m.n_experts = 8;
                let t = &mut c.train;
                t.seq_len = 256;
                t.batch_size = 16;
                t.steps = 2000;
                t.lr = 1e-3;
                t.warmup_steps = 100;
                t.eval_every = 200;
                t.checkpoint_every = 500;
            }
            "switch-base" => {
                let m = &mut c.model;
                m.vocab_size = 32768;
                m.max_seq_len = 1024;
                m.n_layer = 12;
                m.n_head = 12;
                m.d_model = 768;
                m.d_ff = 3072;
                m.n_experts = 128;
                let t = &mut c.train;
                t.seq_len = 512;
                t.batch_size = 64;
                t.steps = 100_000;
                t.lr = 3e-4;
                t.min_lr = 3e-5;
                t.warmup_steps = 2000;
                t.eval_every = 1000;
                t.eval_batches = 20;
                t.checkpoint_every = 5000;
            }
            other => {
                return Err(Error::Config(format!("unknown preset `{other}`; choose one of: {}", PRESETS.join(", "))))
            }
        }
        Ok(c)
    }

    /// The `tiny` preset: the embedded default.
    fn tiny() -> Config {
        Config {
            model: ModelConfig {
                vocab_size: 256,
                max_seq_len: 128,
                n_layer: 4,
                n_head: 4,
                d_model: 128,
                d_ff: 512,
                moe_every: 2,
                n_experts: 8,
                top_k: 1,
                capacity_factor: 1.25,
                eval_capacity_factor: 2.0,
                normalize_gates: false,
                router_jitter: 0.0,
                aux_loss_coef: 0.01,
                z_loss_coef: 0.001,
                init_scale: 0.1,
                router_init_std: 0.02,
                embed_init_std: 0.02,
            },
            train: TrainConfig {
                seed: 1337,
                batch_size: 32,
                seq_len: 64,
                grad_accum: 1,
                steps: 800,
                lr: 2e-3,
                min_lr: 2e-4,
                warmup_steps: 40,
                weight_decay: 0.1,
                decay_all: false,
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                grad_clip: 1.0,
                eval_every: 100,
                eval_batches: 8,
                checkpoint_every: 200,
                keep_checkpoints: 2,
            },
            data: DataConfig {
                source: "synthetic".into(),
                tokenizer: "byte".into(),
                val_fraction: 0.1,
                synthetic: SyntheticConfig {
                    domains: 8,
                    domain_vocab: 32,
                    order: 2,
                    branching: 3,
                    pool: 6,
                    teleport: 0.02,
                    seed: 7,
                },
            },
        }
    }

    /// Parse a TOML document. Unknown keys and wrong types name the key.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config> {
        toml::from_str::<Config>(text).map_err(|e| Error::Config(toml_error(&e, text, origin)))
    }

    /// Read and parse a TOML config file.
    pub fn from_file(path: &std::path::Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!(
                "cannot read config file {}: {e}; pass an existing TOML file (start from `switchyard config --preset tiny > my.toml`)",
                path.display()
            ))
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Apply `section.key=value` overrides (`--set`). Values are TOML literals;
    /// a bare word that is not one is taken as a string.
    pub fn apply_overrides(&self, sets: &[String]) -> Result<Config> {
        if sets.is_empty() {
            return Ok(self.clone());
        }
        let mut root = toml::Value::try_from(self)
            .map_err(|e| Error::Config(format!("internal: cannot serialize config: {e}")))?;
        for set in sets {
            let (key, raw) = set.split_once('=').ok_or_else(|| {
                Error::Config(format!(
                    "--set `{set}` is not of the form section.key=value (e.g. --set model.n_experts=16)"
                ))
            })?;
            let key = key.trim();
            let value = parse_value(raw.trim());
            let (sections, last) = match key.rsplit_once('.') {
                Some((s, l)) => (s.split('.').collect::<Vec<_>>(), l),
                None => (Vec::new(), key),
            };
            let unknown = |table: &toml::Table, part: &str| {
                let known: Vec<&str> = table.keys().map(String::as_str).collect();
                Error::Config(format!("--set {key}: unknown key `{part}`; known keys here: {}", known.join(", ")))
            };
            let mut table = root.as_table_mut().expect("config is a table");
            for sec in sections {
                if !table.contains_key(sec) {
                    return Err(unknown(table, sec));
                }
                table = match table.get_mut(sec) {
                    Some(toml::Value::Table(t)) => t,
                    _ => return Err(Error::Config(format!("--set {key}: `{sec}` is a key, not a section"))),
                };
            }
            if !table.contains_key(last) {
                return Err(unknown(table, last));
            }
            let slot = table.get_mut(last).expect("checked above");
            if slot.is_table() {
                return Err(Error::Config(format!("--set {key}: `{key}` is a section; set one of its keys")));
            }
            // An integer given where a float is expected is fine; any other
            // change of type is refused here, where the key is known.
            *slot = match (&*slot, value) {
                (toml::Value::Float(_), toml::Value::Integer(i)) => toml::Value::Float(i as f64),
                (old, v) if old.type_str() == v.type_str() => v,
                (old, v) => {
                    let hint = if old.is_integer() && raw.trim().parse::<u128>().is_ok() {
                        " (integers must be below 2^63)"
                    } else {
                        ""
                    };
                    return Err(Error::Config(format!(
                        "--set {key}={}: {key} takes {} {} (e.g. {key}={old}), not {} {}{hint}",
                        raw.trim(),
                        article(old.type_str()),
                        old.type_str(),
                        article(v.type_str()),
                        v.type_str()
                    )));
                }
            };
        }
        root.try_into::<Config>().map_err(|e| Error::Config(format!("--set: {}", one_line(e.message()))))
    }

    /// Check values against each other; every message names the key and a fix.
    pub fn validate(&self) -> Result<()> {
        let m = &self.model;
        let t = &self.train;
        let d = &self.data;
        let bad = |msg: String| Err(Error::Config(msg));
        let pos = [
            ("model.vocab_size", m.vocab_size),
            ("model.max_seq_len", m.max_seq_len),
            ("model.n_layer", m.n_layer),
            ("model.n_head", m.n_head),
            ("model.d_model", m.d_model),
            ("model.d_ff", m.d_ff),
            ("train.batch_size", t.batch_size),
            ("train.seq_len", t.seq_len),
            ("train.grad_accum", t.grad_accum),
            ("train.steps", t.steps),
            ("train.eval_batches", t.eval_batches),
            ("train.keep_checkpoints", t.keep_checkpoints),
        ];
        for (k, v) in pos {
            if v == 0 {
                return bad(format!("{k} = 0; it must be at least 1"));
            }
        }
        if !m.d_model.is_multiple_of(m.n_head) {
            return bad(format!(
                "model.d_model = {} is not divisible by model.n_head = {}; pick n_head dividing d_model (e.g. {})",
                m.d_model,
                m.n_head,
                largest_divisor_at_most(m.d_model, m.n_head)
            ));
        }
        if m.moe_every > 0 {
            if m.n_experts == 0 {
                return bad("model.n_experts = 0 with model.moe_every > 0; set n_experts >= 1 or moe_every = 0 for a dense model".into());
            }
            if m.top_k == 0 || m.top_k > m.n_experts {
                return bad(format!(
                    "model.top_k = {} must be between 1 and model.n_experts = {}",
                    m.top_k, m.n_experts
                ));
            }
            if m.moe_every > m.n_layer {
                return bad(format!(
                    "model.moe_every = {} > model.n_layer = {}: no layer would be MoE; use moe_every <= n_layer, or 0 for a dense model",
                    m.moe_every, m.n_layer
                ));
            }
        }
        let finite = [
            ("model.capacity_factor", m.capacity_factor),
            ("model.eval_capacity_factor", m.eval_capacity_factor),
            ("model.router_jitter", m.router_jitter),
            ("model.aux_loss_coef", m.aux_loss_coef),
            ("model.z_loss_coef", m.z_loss_coef),
            ("model.init_scale", m.init_scale),
            ("model.router_init_std", m.router_init_std),
            ("model.embed_init_std", m.embed_init_std),
            ("train.lr", t.lr),
            ("train.min_lr", t.min_lr),
            ("train.weight_decay", t.weight_decay),
            ("train.beta1", t.beta1),
            ("train.beta2", t.beta2),
            ("train.eps", t.eps),
            ("train.grad_clip", t.grad_clip),
            ("data.val_fraction", d.val_fraction),
            ("data.synthetic.teleport", d.synthetic.teleport),
        ];
        for (k, v) in finite {
            if !v.is_finite() {
                return bad(format!("{k} = {v} is not a finite number; give a real value"));
            }
        }
        let nonneg = [
            ("model.aux_loss_coef", m.aux_loss_coef),
            ("model.z_loss_coef", m.z_loss_coef),
            ("model.init_scale", m.init_scale),
            ("model.router_init_std", m.router_init_std),
            ("model.embed_init_std", m.embed_init_std),
            ("train.lr", t.lr),
            ("train.min_lr", t.min_lr),
            ("train.weight_decay", t.weight_decay),
        ];
        for (k, v) in nonneg {
            if v < 0.0 {
                return bad(format!("{k} = {v} is negative; it must be >= 0"));
            }
        }
        if !(0.0..1.0).contains(&m.router_jitter) {
            return bad(format!(
                "model.router_jitter = {} must be in [0, 1) (Switch uses 0.01; 0 turns jitter off)",
                m.router_jitter
            ));
        }
        for (k, v) in [("train.beta1", t.beta1), ("train.beta2", t.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return bad(format!("{k} = {v} must be in [0, 1)"));
            }
        }
        if t.eps <= 0.0 {
            return bad(format!("train.eps = {} must be > 0 (1e-8 is usual)", t.eps));
        }
        if t.seq_len > m.max_seq_len {
            return bad(format!(
                "train.seq_len = {} exceeds model.max_seq_len = {}; lower seq_len or raise max_seq_len",
                t.seq_len, m.max_seq_len
            ));
        }
        if t.min_lr > t.lr {
            return bad(format!(
                "train.min_lr = {} exceeds train.lr = {}; the cosine decays from lr down to min_lr",
                t.min_lr, t.lr
            ));
        }
        if !(0.0..1.0).contains(&d.val_fraction) || d.val_fraction == 0.0 {
            return bad(format!(
                "data.val_fraction = {} must be in (0, 1) (0.1 holds out the last 10%)",
                d.val_fraction
            ));
        }
        if let Some(kv) = oversized_integer(self) {
            return bad(format!("{kv} is larger than any config can hold (2^63 - 1); give a realistic value"));
        }
        // Token ids, dispatch rows and KV-cache slots are i32 on every backend.
        const I32: usize = i32::MAX as usize;
        if m.vocab_size > I32 {
            return bad(format!(
                "model.vocab_size = {} exceeds 2^31 - 1, the largest token id the embedding indexes; use a smaller \
                 vocabulary",
                m.vocab_size
            ));
        }
        // Every buffer size of a training step, in checked arithmetic (an
        // overflow names the keys).
        crate::memory::estimate(self, crate::memory::Purpose::Train)?;
        let n = t.batch_size * t.seq_len;
        if m.moe_every > 0 && n.checked_mul(m.top_k).is_none_or(|rows| rows > I32) {
            return bad(format!(
                "train.batch_size x train.seq_len x model.top_k = {} x {} x {} dispatched rows exceed 2^31 - 1, \
                 the largest row index; lower train.batch_size (raise train.grad_accum to keep the tokens per step)",
                t.batch_size, t.seq_len, m.top_k
            ));
        }
        if m.moe_every > 0 {
            for (k, cf) in
                [("model.capacity_factor", m.capacity_factor), ("model.eval_capacity_factor", m.eval_capacity_factor)]
            {
                if cf > 0.0 && capacity(cf, m.top_k, n, m.n_experts) == 0 {
                    return bad(format!(
                        "{k} = {cf} gives an expert capacity of 0 tokens; raise it (or use <= 0 for dropless)"
                    ));
                }
            }
        }
        if d.source == "synthetic" {
            crate::data::synthetic::check_config(&d.synthetic)?;
            let s = &d.synthetic;
            if s.domains * s.domain_vocab > m.vocab_size {
                return bad(format!(
                    "the synthetic corpus needs data.synthetic.domains * domain_vocab = {} token ids, more than model.vocab_size = {}; raise vocab_size or shrink the corpus",
                    s.domains * s.domain_vocab,
                    m.vocab_size
                ));
            }
        }
        Ok(())
    }

    /// Whether layer `l` has a Switch MoE FFN.
    pub fn is_moe_layer(&self, l: usize) -> bool {
        self.model.moe_every > 0 && (l + 1).is_multiple_of(self.model.moe_every)
    }

    /// The config as TOML with a comment above every key (`switchyard config`).
    pub fn to_commented_toml(&self) -> String {
        let value = toml::Value::try_from(self).expect("config serializes");
        let mut out = String::new();
        out.push_str("# switchyard run configuration. Every key is required; unknown keys are errors.\n");
        out.push_str("# Override any key on the command line: --set section.key=value\n");
        write_table(&mut out, &value, "");
        out
    }
}

/// A TOML error as one line: `origin, line L, column C: message` (the
/// parser's own text spans several lines with a source excerpt).
pub fn toml_error(e: &toml::de::Error, text: &str, origin: &str) -> String {
    let at = e.span().map(|span| {
        let start = span.start.min(text.len());
        let before = &text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        let content = text[line_start..].lines().next().unwrap_or("").trim();
        format!(", line {line}, column {col} (`{content}`)")
    });
    format!("{origin}{}: {}", at.unwrap_or_default(), one_line(e.message()))
}

fn article(type_name: &str) -> &'static str {
    if type_name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Integers above this do not fit a TOML file (nor `config.toml`).
const TOML_INT_MAX: u64 = i64::MAX as u64;

/// The first integer key of `cfg` above [`TOML_INT_MAX`], as `section.key = value`.
fn oversized_integer(cfg: &Config) -> Option<String> {
    fn walk(v: &serde_json::Value, prefix: &str) -> Option<String> {
        match v {
            serde_json::Value::Object(m) => m
                .iter()
                .find_map(|(k, v)| walk(v, &if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") })),
            serde_json::Value::Number(n) => n.as_u64().filter(|&x| x > TOML_INT_MAX).map(|x| format!("{prefix} = {x}")),
            _ => None,
        }
    }
    walk(&serde_json::to_value(cfg).ok()?, "")
}

/// Expert capacity `C = ceil(cf * k * N / E)`; `cf <= 0` means dropless (`C = N`).
pub fn capacity(cf: f64, k: usize, n: usize, e: usize) -> usize {
    if cf <= 0.0 {
        n
    } else {
        (cf * (k * n) as f64 / e as f64).ceil() as usize
    }
}

fn largest_divisor_at_most(n: usize, at_most: usize) -> usize {
    (1..=at_most.min(n)).rev().find(|h| n.is_multiple_of(*h)).unwrap_or(1)
}

fn parse_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

fn key_comment(path: &str) -> &'static str {
    match path {
        "model.vocab_size" => "vocabulary size (rows of wte); must exceed every token id of the data",
        "model.max_seq_len" => "maximum sequence length (rows of wpe)",
        "model.n_layer" => "transformer blocks",
        "model.n_head" => "attention heads; d_model must be divisible by n_head",
        "model.d_model" => "residual stream width",
        "model.d_ff" => "hidden width of the dense MLP and of each expert",
        "model.moe_every" => "layer l is MoE iff (l+1) % moe_every == 0; 2 = Switch (every other FFN), 1 = all, 0 = dense",
        "model.n_experts" => "experts per MoE layer",
        "model.top_k" => "experts per token: 1 = Switch, 2 = GShard/Mixtral-like",
        "model.capacity_factor" => "training capacity C = ceil(cf * k * N / E); <= 0 means dropless",
        "model.eval_capacity_factor" => "evaluation capacity factor; <= 0 means dropless",
        "model.normalize_gates" => "divide the k gates by their sum (useful for k > 1)",
        "model.router_jitter" => "multiplicative router input noise U(1-eps, 1+eps) in training; 0 = off",
        "model.aux_loss_coef" => "load-balancing loss alpha: aux = alpha * E * sum_e f_e * P_e",
        "model.z_loss_coef" => "router z-loss beta: beta * mean(logsumexp(z)^2)",
        "model.init_scale" => "dense/expert init: truncated normal, std = sqrt(init_scale / fan_in)",
        "model.router_init_std" => "router weight init std",
        "model.embed_init_std" => "wte / wpe init std",
        "train.seed" => "one seed for weights, data order and router jitter",
        "train.batch_size" => "sequences per micro-batch",
        "train.seq_len" => "tokens per sequence (<= model.max_seq_len)",
        "train.grad_accum" => "micro-batches accumulated per optimizer step",
        "train.steps" => "optimizer steps",
        "train.lr" => "peak learning rate (after linear warmup)",
        "train.min_lr" => "learning rate at the end of the cosine decay",
        "train.warmup_steps" => "linear warmup steps",
        "train.weight_decay" => "AdamW decoupled weight decay (matrices only unless decay_all)",
        "train.decay_all" => "also decay biases, LayerNorm parameters and embeddings",
        "train.beta1" => "AdamW beta1",
        "train.beta2" => "AdamW beta2",
        "train.eps" => "AdamW epsilon",
        "train.grad_clip" => "global gradient-norm clip; <= 0 disables",
        "train.eval_every" => "evaluate every N steps and at the end; 0 = only at the end",
        "train.eval_batches" => "validation micro-batches per evaluation",
        "train.checkpoint_every" => "checkpoint every N steps and at the end; 0 = only at the end",
        "train.keep_checkpoints" => "checkpoints kept in the run directory",
        "data.source" => "\"synthetic\", a text file, a directory of text files (*.txt, *.md, ...), or a .u16 token file",
        "data.tokenizer" => "\"byte\" or the path of a Hugging Face tokenizer.json (text sources only)",
        "data.val_fraction" => "share of a file corpus held out for validation: the tail of the token stream",
        "data.synthetic.domains" => "domains, each an independent sparse Markov source over its own token range",
        "data.synthetic.domain_vocab" => "tokens per domain: domain i owns ids [i*domain_vocab, (i+1)*domain_vocab)",
        "data.synthetic.order" => "Markov order: the next token depends on the last `order` tokens",
        "data.synthetic.branching" => "successors per state (sparsity)",
        "data.synthetic.pool" => "candidate successors per last token (0 = the whole domain); pool < domain_vocab makes the bigram informative and the order-k context refine it",
        "data.synthetic.teleport" => "probability of a uniform jump within the domain (keeps each chain ergodic)",
        "data.synthetic.seed" => "seed of the sources themselves (samples use train.seed)",
        _ => "",
    }
}

fn write_table(out: &mut String, value: &toml::Value, prefix: &str) {
    let table = value.as_table().expect("table");
    for (k, v) in table {
        if v.is_table() {
            continue;
        }
        let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        let c = key_comment(&path);
        if !c.is_empty() {
            out.push_str(&format!("# {c}\n"));
        }
        out.push_str(&format!("{k} = {v}\n"));
    }
    for (k, v) in table {
        if v.is_table() {
            let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            out.push_str(&format!("\n[{path}]\n"));
            write_table(out, v, &path);
        }
    }
}
