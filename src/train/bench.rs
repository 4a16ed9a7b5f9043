//! Training-step timing (`switchyard bench`): forward + backward + AdamW on
//! fixed pseudo-random tokens, the same work `scripts/torch_reference.py`
//! times in PyTorch, so the two can be compared step for step.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::config::Config;
use crate::model::{Model, Pass};
use crate::train::optimizer::Optimizer;
use crate::Result;

/// Result of [`train_steps`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepTiming {
    /// What was timed.
    pub label: String,
    /// Backend name.
    pub device: String,
    /// Git commit of the build.
    pub commit: String,
    /// Timed steps.
    pub steps: usize,
    /// Tokens per optimizer step (`batch * seq * grad_accum`).
    pub tokens_per_step: usize,
    /// Median step time.
    pub median_ms: f64,
    /// Fastest step.
    pub min_ms: f64,
    /// Slowest step.
    pub max_ms: f64,
    /// Tokens per second at the median.
    pub tokens_per_s: f64,
    /// Achieved rate counting `6 * active params` FLOPs per token plus
    /// causal attention (`6 * L * T * d` per token): the usual estimate.
    pub gflops: f64,
    /// Every step time, in order.
    pub step_ms: Vec<f64>,
}

/// Time `steps` training steps after `warmup` untimed ones.
pub fn train_steps<B: Backend>(be: &B, cfg: &Config, warmup: usize, steps: usize) -> Result<StepTiming> {
    be.session(|| train_steps_in_session(be, cfg, warmup, steps))
}

fn train_steps_in_session<B: Backend>(be: &B, cfg: &Config, warmup: usize, steps: usize) -> Result<StepTiming> {
    cfg.validate()?;
    crate::memory::require(be, cfg, crate::memory::Purpose::Train, "training")?;
    let mut model = Model::new(be, cfg)?;
    let mut opt = Optimizer::new(be, &model)?;
    let (b, t, accum) = (cfg.train.batch_size, cfg.train.seq_len, cfg.train.grad_accum);
    let v = cfg.model.vocab_size as u64;
    // A fixed LCG stream: content does not matter for speed, only that it is valid.
    let mut state = cfg.train.seed | 1;
    let mut next = || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((state >> 33) % v) as i32
    };
    let x: Vec<i32> = (0..b * t).map(|_| next()).collect();
    let y: Vec<i32> = (0..b * t).map(|_| next()).collect();
    let total = warmup.checked_add(steps).ok_or_else(|| {
        crate::Error::Config(format!("--warmup {warmup} plus --steps {steps} overflows; give realistic step counts"))
    })?;
    let mut times = Vec::new();
    for i in 0..total {
        let t0 = Instant::now();
        model.zero_grads(be);
        for micro in 0..accum {
            let pass = Pass::Train { jitter_seed: (i * accum + micro) as u64, loss_weight: 1.0 / accum as f32 };
            model.step(be, &x, &y, b, t, pass)?;
        }
        opt.step(be, &mut model, &cfg.train, 1e-4, (i + 1) as u64);
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let m = &cfg.model;
    let tokens = b * t * accum;
    let active = model.table.active_numel(if m.moe_every == 0 { 1 } else { m.top_k }) - m.max_seq_len * m.d_model;
    let flop_per_token = 6.0 * active as f64 + 6.0 * (m.n_layer * t * m.d_model) as f64;
    Ok(StepTiming {
        label: format!(
            "train step, {} layers d {} ({}), {}x{} tokens",
            m.n_layer,
            m.d_model,
            if m.moe_every == 0 { "dense".to_string() } else { format!("{} experts top-{}", m.n_experts, m.top_k) },
            b,
            t
        ),
        device: be.name(),
        commit: crate::GIT_COMMIT.to_string(),
        steps,
        tokens_per_step: tokens,
        median_ms: median,
        min_ms: sorted[0],
        max_ms: sorted[sorted.len() - 1],
        tokens_per_s: tokens as f64 / (median / 1e3),
        gflops: flop_per_token * tokens as f64 / (median / 1e3) / 1e9,
        step_ms: times,
    })
}
