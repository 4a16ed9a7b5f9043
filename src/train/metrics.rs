//! Records written to `metrics.jsonl` in the run directory, one JSON object
//! per line: `kind = "train"` after every optimizer step, `kind = "eval"`
//! after every evaluation. Field meanings are listed in the README.

use serde::{Deserialize, Serialize};

use crate::model::{MicroStats, MoeStats};

/// Routing statistics of one MoE layer, summed or averaged over the
/// micro-batches of a step (or the batches of an evaluation).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MoeRecord {
    /// Block index.
    pub layer: usize,
    /// Tokens processed per expert (kept assignments, after capacity).
    pub tokens_per_expert: Vec<f32>,
    /// Assignments per expert before capacity.
    pub assigned_per_expert: Vec<f32>,
    /// Fraction of assignments dropped by capacity.
    pub dropped_frac: f32,
    /// Mean router entropy per token (nats; ln E is uniform routing).
    pub router_entropy: f32,
    /// Load-balancing loss (with coefficient).
    pub aux: f32,
    /// Router z-loss (with coefficient).
    pub z: f32,
}

/// One line of `metrics.jsonl` for a training step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainRecord {
    /// Always `"train"`.
    pub kind: String,
    /// 1-based optimizer step.
    pub step: u64,
    /// CE + aux + z, mean over micro-batches.
    pub loss: f64,
    /// Cross-entropy (nats/token).
    pub ce: f64,
    /// Sum of aux losses over MoE layers.
    pub aux: f64,
    /// Sum of z-losses over MoE layers.
    pub z: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Training tokens per second of this step.
    pub tokens_per_s: f64,
    /// Seconds since the run (or resume) started.
    pub elapsed_s: f64,
    /// Per MoE layer.
    pub moe: Vec<MoeRecord>,
}

/// One line of `metrics.jsonl` for an evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Always `"eval"`.
    pub kind: String,
    /// Optimizer steps completed.
    pub step: u64,
    /// Validation cross-entropy (nats/token).
    pub val_loss: f64,
    /// `exp(val_loss)`.
    pub val_ppl: f64,
    /// Tokens evaluated.
    pub tokens: u64,
    /// Per MoE layer, with the eval capacity factor.
    pub moe: Vec<MoeRecord>,
}

/// Accumulates micro-batch statistics into per-layer records.
#[derive(Default)]
pub struct Accum {
    count: usize,
    ce: f64,
    aux: f64,
    z: f64,
    moe: Vec<MoeRecord>,
}

impl Accum {
    /// Add one micro-batch.
    pub fn add(&mut self, s: &MicroStats) {
        if self.moe.is_empty() {
            self.moe = s.moe.iter().map(|m| MoeRecord { layer: m.layer, ..Default::default() }).collect();
        }
        self.count += 1;
        self.ce += s.ce;
        self.aux += s.aux;
        self.z += s.z;
        for (r, m) in self.moe.iter_mut().zip(&s.moe) {
            add_layer(r, m);
        }
    }

    /// Mean CE, aux and z over the micro-batches added.
    pub fn means(&self) -> (f64, f64, f64) {
        let c = self.count.max(1) as f64;
        (self.ce / c, self.aux / c, self.z / c)
    }

    /// Per-layer records: counts summed, fractions and losses averaged.
    pub fn layers(&self) -> Vec<MoeRecord> {
        let c = self.count.max(1) as f32;
        self.moe
            .iter()
            .map(|r| MoeRecord {
                dropped_frac: r.dropped_frac / c,
                router_entropy: r.router_entropy / c,
                aux: r.aux / c,
                z: r.z / c,
                ..r.clone()
            })
            .collect()
    }
}

fn add_layer(r: &mut MoeRecord, m: &MoeStats) {
    if r.tokens_per_expert.is_empty() {
        r.tokens_per_expert = vec![0.0; m.kept.len()];
        r.assigned_per_expert = vec![0.0; m.assigned.len()];
    }
    for (a, b) in r.tokens_per_expert.iter_mut().zip(&m.kept) {
        *a += b;
    }
    for (a, b) in r.assigned_per_expert.iter_mut().zip(&m.assigned) {
        *a += b;
    }
    r.dropped_frac += m.dropped_frac;
    r.router_entropy += m.entropy;
    r.aux += m.aux;
    r.z += m.z;
}
