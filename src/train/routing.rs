//! Routing statistics on evaluation data (`switchyard eval --stats`): which
//! experts the tokens of each synthetic domain reach, per MoE layer, and for
//! text corpora the most frequent tokens each expert receives.

use std::collections::HashMap;

use serde::Serialize;

use crate::backend::Backend;
use crate::data::Dataset;
use crate::model::{FfnIdx, Model, Pass};
use crate::Result;

/// Routing of one MoE layer over the evaluated tokens.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LayerRouting {
    /// Block index.
    pub layer: usize,
    /// Kept assignments per expert.
    pub per_expert: Vec<u64>,
    /// `[domain][expert]` kept assignments of tokens of each synthetic domain
    /// (empty for file corpora).
    pub by_domain: Vec<Vec<u64>>,
    /// Per expert, its most frequent input token ids with counts (top 5).
    pub top_tokens: Vec<Vec<(u32, u64)>>,
}

/// Route `batches` validation batches (eval capacity factor) and count, per
/// MoE layer, kept assignments by expert, by domain and by token.
pub fn routing_stats<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    data: &Dataset,
    batches: usize,
) -> Result<Vec<LayerRouting>> {
    let (b, t) = (model.cfg.train.batch_size, model.cfg.train.seq_len);
    let (e, k) = (model.cfg.model.n_experts, model.cfg.model.top_k);
    let domains = data.synthetic().map_or(0, |s| s.domains());
    let moe_layers: Vec<usize> =
        (0..model.table.blocks.len()).filter(|&l| matches!(model.table.blocks[l].ffn, FfnIdx::Moe { .. })).collect();
    let mut out: Vec<LayerRouting> = moe_layers
        .iter()
        .map(|&layer| LayerRouting {
            layer,
            per_expert: vec![0; e],
            by_domain: vec![vec![0; e]; domains],
            top_tokens: Vec::new(),
        })
        .collect();
    let mut tokens: Vec<Vec<HashMap<u32, u64>>> = vec![vec![HashMap::new(); e]; moe_layers.len()];
    let (mut x, mut y) = (vec![0u32; b * t], vec![0u32; b * t]);
    for i in 0..batches {
        data.val_batch(i as u64, b, t, &mut x, &mut y);
        let xi: Vec<i32> = x.iter().map(|&v| v as i32).collect();
        let yi: Vec<i32> = y.iter().map(|&v| v as i32).collect();
        model.forward_only(be, &xi, &yi, b, t, Pass::Eval)?;
        for (li, &layer) in moe_layers.iter().enumerate() {
            let (expert, row, _) = model.routing(be, layer).expect("MoE layer");
            for (a, (&ex, &r)) in expert.iter().zip(&row).enumerate() {
                if r < 0 {
                    continue;
                }
                let (ex, tok) = (ex as usize, x[a / k]);
                out[li].per_expert[ex] += 1;
                if let Some(dm) = data.domain_of(tok) {
                    out[li].by_domain[dm][ex] += 1;
                }
                *tokens[li][ex].entry(tok).or_default() += 1;
            }
        }
    }
    for (li, per) in tokens.into_iter().enumerate() {
        out[li].top_tokens = per
            .into_iter()
            .map(|m| {
                let mut v: Vec<(u32, u64)> = m.into_iter().collect();
                v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                v.truncate(5);
                v
            })
            .collect();
    }
    Ok(out)
}
