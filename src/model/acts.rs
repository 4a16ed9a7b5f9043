//! Preallocated activations and backward scratch for one `(B, T)` shape.

use crate::backend::{Backend, RouterStats};
use crate::config::Config;
use crate::Result;

use super::ffn::DenseBuffers;
use super::moe::{MoeBuffers, MoeShape};
use super::params::{FfnIdx, ParamTable};

/// Activations of one block's FFN.
pub(crate) enum FfnActs<B: Backend> {
    /// Dense MLP.
    Dense(DenseBuffers<B>),
    /// Switch MoE.
    Moe(Box<MoeBuffers<B>>),
}

/// Activations of one block.
pub(crate) struct BlockActs<B: Backend> {
    pub ln1: B::Buf,
    pub ln1_mean: B::Buf,
    pub ln1_rstd: B::Buf,
    /// `[N, 3d]`.
    pub qkv: B::Buf,
    /// Attention output before the projection `[N, d]`.
    pub att: B::Buf,
    /// Row logsumexp `[B, H, T]`.
    pub lse: B::Buf,
    /// Residual after attention `[N, d]`.
    pub h_mid: B::Buf,
    pub ln2: B::Buf,
    pub ln2_mean: B::Buf,
    pub ln2_rstd: B::Buf,
    pub ffn: FfnActs<B>,
}

/// All activations plus backward scratch.
pub(crate) struct Acts<B: Backend> {
    pub b: usize,
    pub t: usize,
    pub tokens: B::IBuf,
    pub targets: B::IBuf,
    /// Residual stream entering block `l` (`resid[L]` is the final one), `[N, d]` each.
    pub resid: Vec<B::Buf>,
    pub blocks: Vec<BlockActs<B>>,
    pub lnf: B::Buf,
    pub lnf_mean: B::Buf,
    pub lnf_rstd: B::Buf,
    /// `[N, V]`.
    pub logits: B::Buf,
    pub dlogits: B::Buf,
    /// Per-token CE `[N]`.
    pub losses: B::Buf,
    /// Router statistics of every MoE layer, gathered on the device so the
    /// host reads them once per micro-batch: `[n_moe * RouterStats::len(E)]`.
    pub moe_stats: B::Buf,
    /// Sub-layer output before the residual add `[N, d]`.
    pub scratch_d: B::Buf,
    /// Backward: residual-stream gradient, LayerNorm-output gradient `[N, d]`.
    pub dres: B::Buf,
    pub dln: B::Buf,
    pub dlnf: B::Buf,
    pub dqkv: B::Buf,
    /// Dense MLP backward scratch `[N, d_ff]`.
    pub dff: B::Buf,
    pub dff2: B::Buf,
}

impl<B: Backend> Acts<B> {
    pub fn new(be: &B, cfg: &Config, table: &ParamTable, b: usize, t: usize) -> Result<Acts<B>> {
        let m = &cfg.model;
        let (d, f, v, e, k) = (m.d_model, m.d_ff, m.vocab_size, m.n_experts, m.top_k);
        let n = b * t;
        let al = |len: usize, what: &str| be.alloc(len, what);
        let any_dense = table.blocks.iter().any(|bi| matches!(bi.ffn, FfnIdx::Dense(_)));
        let n_moe = table.blocks.iter().filter(|bi| matches!(bi.ffn, FfnIdx::Moe(_))).count();
        let mut blocks = Vec::new();
        for bi in &table.blocks {
            let ffn = match bi.ffn {
                FfnIdx::Dense(_) => FfnActs::Dense(DenseBuffers::new(be, n, f)?),
                FfnIdx::Moe(_) => {
                    let shape = MoeShape { n, d, f, e, k };
                    FfnActs::Moe(Box::new(MoeBuffers::new(be, shape, m.router_jitter > 0.0, true)?))
                }
            };
            blocks.push(BlockActs {
                ln1: al(n * d, "ln_1 output")?,
                ln1_mean: al(n, "ln_1 mean")?,
                ln1_rstd: al(n, "ln_1 rstd")?,
                qkv: al(n * 3 * d, "qkv")?,
                att: al(n * d, "attention output")?,
                lse: al(n * m.n_head, "attention logsumexp")?,
                h_mid: al(n * d, "residual")?,
                ln2: al(n * d, "ln_2 output")?,
                ln2_mean: al(n, "ln_2 mean")?,
                ln2_rstd: al(n, "ln_2 rstd")?,
                ffn,
            });
        }
        let dense_scratch = if any_dense { n * f } else { 0 };
        Ok(Acts {
            b,
            t,
            tokens: be.alloc_i(n, "tokens")?,
            targets: be.alloc_i(n, "targets")?,
            resid: (0..=m.n_layer).map(|_| al(n * d, "residual stream")).collect::<Result<_>>()?,
            blocks,
            lnf: al(n * d, "ln_f output")?,
            lnf_mean: al(n, "ln_f mean")?,
            lnf_rstd: al(n, "ln_f rstd")?,
            logits: al(n * v, "logits")?,
            dlogits: al(n * v, "logit gradient")?,
            losses: al(n, "losses")?,
            moe_stats: al(n_moe * RouterStats::len(e), "router statistics of all MoE layers")?,
            scratch_d: al(n * d, "sub-layer output")?,
            dres: al(n * d, "residual gradient")?,
            dln: al(n * d, "layernorm gradient")?,
            dlnf: al(n * d, "ln_f gradient")?,
            dqkv: al(n * 3 * d, "qkv gradient")?,
            dff: al(dense_scratch, "mlp gradient")?,
            dff2: al(dense_scratch, "mlp gradient")?,
        })
    }
}
