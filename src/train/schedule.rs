//! Learning-rate schedule: linear warmup, then cosine decay to `min_lr`.

use crate::config::TrainConfig;

/// Learning rate of optimizer step `step` (0-based):
/// `lr * (step + 1) / warmup` during warmup, then
/// `min_lr + (lr - min_lr) * (1 + cos(pi * progress)) / 2` with `progress`
/// going from 0 right after warmup to 1 at the last step.
pub fn learning_rate(t: &TrainConfig, step: usize) -> f64 {
    if step < t.warmup_steps {
        return t.lr * (step + 1) as f64 / t.warmup_steps as f64;
    }
    let decay = t.steps.saturating_sub(t.warmup_steps).max(1);
    let progress = ((step - t.warmup_steps) as f64 / decay as f64).min(1.0);
    t.min_lr + (t.lr - t.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    #[test]
    fn warmup_then_cosine() {
        let mut t = Config::preset("tiny").unwrap().train;
        t.steps = 110;
        t.warmup_steps = 10;
        t.lr = 1.0;
        t.min_lr = 0.1;
        assert!((learning_rate(&t, 0) - 0.1).abs() < 1e-12);
        assert!((learning_rate(&t, 9) - 1.0).abs() < 1e-12);
        assert!((learning_rate(&t, 10) - 1.0).abs() < 1e-12);
        assert!((learning_rate(&t, 60) - 0.55).abs() < 1e-12);
        assert!((learning_rate(&t, 110) - 0.1).abs() < 1e-12);
        let lrs: Vec<f64> = (10..110).map(|s| learning_rate(&t, s)).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]), "cosine must not increase");
    }
}
