//! AdamW with global-norm gradient clipping over the model's tensors.

use crate::backend::{AdamW, Backend};
use crate::config::TrainConfig;
use crate::model::Model;
use crate::Result;

/// First and second moments per parameter tensor (table order).
pub struct Optimizer<B: Backend> {
    /// `exp_avg` per tensor.
    pub m: Vec<B::Buf>,
    /// `exp_avg_sq` per tensor.
    pub v: Vec<B::Buf>,
    norm_sq: B::Buf,
}

impl<B: Backend> Optimizer<B> {
    /// Zeroed moments for `model`.
    pub fn new(be: &B, model: &Model<B>) -> Result<Optimizer<B>> {
        let mut m = Vec::new();
        let mut v = Vec::new();
        for s in &model.table.specs {
            m.push(be.alloc(s.numel(), &format!("exp_avg of {}", s.name))?);
            v.push(be.alloc(s.numel(), &format!("exp_avg_sq of {}", s.name))?);
        }
        Ok(Optimizer { m, v, norm_sq: be.alloc(1, "gradient norm")? })
    }

    /// One update with learning rate `lr` at 1-based step `t`. Returns the
    /// global gradient norm before clipping.
    pub fn step(&mut self, be: &B, model: &mut Model<B>, tc: &TrainConfig, lr: f64, t: u64) -> f32 {
        be.zero(&mut self.norm_sq);
        for g in &model.grads {
            be.sum_squares(&mut self.norm_sq, g);
        }
        for (i, spec) in model.table.specs.iter().enumerate() {
            let h = AdamW {
                lr: lr as f32,
                beta1: tc.beta1 as f32,
                beta2: tc.beta2 as f32,
                eps: tc.eps as f32,
                weight_decay: if spec.decays(tc.decay_all) { tc.weight_decay as f32 } else { 0.0 },
                t,
                max_norm: tc.grad_clip as f32,
            };
            be.adamw(&mut model.params[i], &model.grads[i], &mut self.m[i], &mut self.v[i], &self.norm_sq, &h);
        }
        be.download(&self.norm_sq)[0].sqrt()
    }
}
