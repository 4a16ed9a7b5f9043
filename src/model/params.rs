//! Parameter table: every tensor's name (DESIGN.md §7), shape, kind and
//! initializer, in one fixed order shared by the model, the optimizer and
//! checkpoints.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::Config;

/// What a tensor is, which decides its initializer and weight decay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// `wte` / `wpe`.
    Embedding,
    /// A linear weight `[in, out]` (dense or stacked per expert).
    Matrix,
    /// The router weight `[d, E]`.
    Router,
    /// A linear bias.
    Bias,
    /// LayerNorm weight (init 1).
    NormWeight,
    /// LayerNorm bias.
    NormBias,
}

/// One parameter tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// Checkpoint name, e.g. `h.0.attn.qkv.weight`.
    pub name: String,
    /// Shape; linear weights are `[in, out]`, expert weights `[E, in, out]`.
    pub shape: Vec<usize>,
    /// Kind.
    pub kind: ParamKind,
}

impl ParamSpec {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether AdamW decays this tensor (matrices and the router; everything
    /// else only with `train.decay_all`).
    pub fn decays(&self, decay_all: bool) -> bool {
        decay_all || matches!(self.kind, ParamKind::Matrix | ParamKind::Router)
    }
}

/// Indices (into the parameter list) of a dense MLP's tensors:
/// `fc [d, d_ff]`, `proj [d_ff, d]` with biases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenseIdx {
    /// `mlp.fc.weight`.
    pub fc_w: usize,
    /// `mlp.fc.bias`.
    pub fc_b: usize,
    /// `mlp.proj.weight`.
    pub proj_w: usize,
    /// `mlp.proj.bias`.
    pub proj_b: usize,
}

/// Indices of a Switch MoE FFN's tensors: the router and the stacked experts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoeIdx {
    /// `moe.router.weight [d, E]`.
    pub router: usize,
    /// `moe.experts.fc.weight [E, d, d_ff]`.
    pub fc_w: usize,
    /// `moe.experts.fc.bias [E, d_ff]`.
    pub fc_b: usize,
    /// `moe.experts.proj.weight [E, d_ff, d]`.
    pub proj_w: usize,
    /// `moe.experts.proj.bias [E, d]`.
    pub proj_b: usize,
}

/// Indices of one block's FFN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfnIdx {
    /// Dense MLP.
    Dense(DenseIdx),
    /// Switch MoE.
    Moe(MoeIdx),
}

/// Indices of one transformer block's tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockIdx {
    /// `ln_1.weight`.
    pub ln1_w: usize,
    /// `ln_1.bias`.
    pub ln1_b: usize,
    /// `attn.qkv.weight [d, 3d]`.
    pub qkv_w: usize,
    /// `attn.qkv.bias [3d]`.
    pub qkv_b: usize,
    /// `attn.proj.weight [d, d]`.
    pub proj_w: usize,
    /// `attn.proj.bias [d]`.
    pub proj_b: usize,
    /// `ln_2.weight`.
    pub ln2_w: usize,
    /// `ln_2.bias`.
    pub ln2_b: usize,
    /// The FFN.
    pub ffn: FfnIdx,
}

/// The full table plus named indices.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamTable {
    /// Every tensor in storage order.
    pub specs: Vec<ParamSpec>,
    /// `wte [V, d]`.
    pub wte: usize,
    /// `wpe [max_T, d]`.
    pub wpe: usize,
    /// Blocks.
    pub blocks: Vec<BlockIdx>,
    /// `ln_f.weight`.
    pub lnf_w: usize,
    /// `ln_f.bias`.
    pub lnf_b: usize,
}

impl ParamTable {
    /// The table for `cfg` (assumed validated).
    pub fn new(cfg: &Config) -> ParamTable {
        let m = &cfg.model;
        let (d, f, e) = (m.d_model, m.d_ff, m.n_experts);
        let mut specs = Vec::new();
        let mut add = |name: String, shape: Vec<usize>, kind: ParamKind| {
            specs.push(ParamSpec { name, shape, kind });
            specs.len() - 1
        };
        let wte = add("wte".into(), vec![m.vocab_size, d], ParamKind::Embedding);
        let wpe = add("wpe".into(), vec![m.max_seq_len, d], ParamKind::Embedding);
        let mut blocks = Vec::new();
        for l in 0..m.n_layer {
            let p = |s: &str| format!("h.{l}.{s}");
            let ln1_w = add(p("ln_1.weight"), vec![d], ParamKind::NormWeight);
            let ln1_b = add(p("ln_1.bias"), vec![d], ParamKind::NormBias);
            let qkv_w = add(p("attn.qkv.weight"), vec![d, 3 * d], ParamKind::Matrix);
            let qkv_b = add(p("attn.qkv.bias"), vec![3 * d], ParamKind::Bias);
            let proj_w = add(p("attn.proj.weight"), vec![d, d], ParamKind::Matrix);
            let proj_b = add(p("attn.proj.bias"), vec![d], ParamKind::Bias);
            let ln2_w = add(p("ln_2.weight"), vec![d], ParamKind::NormWeight);
            let ln2_b = add(p("ln_2.bias"), vec![d], ParamKind::NormBias);
            let ffn = if cfg.is_moe_layer(l) {
                FfnIdx::Moe(MoeIdx {
                    router: add(p("moe.router.weight"), vec![d, e], ParamKind::Router),
                    fc_w: add(p("moe.experts.fc.weight"), vec![e, d, f], ParamKind::Matrix),
                    fc_b: add(p("moe.experts.fc.bias"), vec![e, f], ParamKind::Bias),
                    proj_w: add(p("moe.experts.proj.weight"), vec![e, f, d], ParamKind::Matrix),
                    proj_b: add(p("moe.experts.proj.bias"), vec![e, d], ParamKind::Bias),
                })
            } else {
                FfnIdx::Dense(DenseIdx {
                    fc_w: add(p("mlp.fc.weight"), vec![d, f], ParamKind::Matrix),
                    fc_b: add(p("mlp.fc.bias"), vec![f], ParamKind::Bias),
                    proj_w: add(p("mlp.proj.weight"), vec![f, d], ParamKind::Matrix),
                    proj_b: add(p("mlp.proj.bias"), vec![d], ParamKind::Bias),
                })
            };
            blocks.push(BlockIdx { ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b, ffn });
        }
        let lnf_w = add("ln_f.weight".into(), vec![d], ParamKind::NormWeight);
        let lnf_b = add("ln_f.bias".into(), vec![d], ParamKind::NormBias);
        ParamTable { specs, wte, wpe, blocks, lnf_w, lnf_b }
    }

    /// Total parameter count.
    pub fn numel(&self) -> usize {
        self.specs.iter().map(ParamSpec::numel).sum()
    }

    /// Parameters used per token: everything except the experts not chosen
    /// (a token uses `k` of `E` experts) and `wpe` rows beyond one.
    pub fn active_numel(&self, top_k: usize) -> usize {
        self.specs
            .iter()
            .map(|s| if s.name.contains(".moe.experts.") { s.numel() / s.shape[0] * top_k } else { s.numel() })
            .sum()
    }

    /// Index of the tensor called `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.specs.iter().position(|s| s.name == name)
    }
}

/// Initial values of tensor `i` (DESIGN.md §2 "Initialization"): truncated
/// normal at 2 std with `std = sqrt(init_scale / fan_in)` for matrices
/// (`fan_in` = the `in` dimension), `router_init_std` for the router,
/// `embed_init_std` for embeddings, zeros for biases, ones for LayerNorm
/// weights. Each tensor has its own ChaCha8 stream derived from the seed and
/// its index, so the values do not depend on the backend or on other tensors.
pub fn init_values(cfg: &Config, spec: &ParamSpec, index: usize) -> Vec<f32> {
    let n = spec.numel();
    let std = match spec.kind {
        ParamKind::Bias | ParamKind::NormBias => return vec![0.0; n],
        ParamKind::NormWeight => return vec![1.0; n],
        ParamKind::Embedding => cfg.model.embed_init_std,
        ParamKind::Router => cfg.model.router_init_std,
        ParamKind::Matrix => {
            let fan_in = spec.shape[spec.shape.len() - 2];
            (cfg.model.init_scale / fan_in as f64).sqrt()
        }
    };
    let mut rng = ChaCha8Rng::seed_from_u64(mix(cfg.train.seed, index as u64));
    (0..n).map(|_| (truncated_normal(&mut rng) * std) as f32).collect()
}

/// A standard normal truncated to `[-2, 2]` by rejection (Box-Muller).
fn truncated_normal(rng: &mut ChaCha8Rng) -> f64 {
    loop {
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        if z.abs() <= 2.0 {
            return z;
        }
    }
}

/// SplitMix64-style mixing of two words into one seed.
pub fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
