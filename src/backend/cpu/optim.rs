//! Optim family on the CPU: sum of squares for the global gradient norm
//! (f64 partials over fixed chunks, added in order) and AdamW with the clip
//! scale folded in.

use rayon::prelude::*;

use crate::backend::AdamW;

const CHUNK: usize = 4096;

/// `sum(g^2)` in f64, fixed chunk order.
pub fn sum_squares(g: &[f32]) -> f64 {
    let partials: Vec<f64> =
        g.par_chunks(CHUNK).map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>()).collect();
    partials.iter().sum()
}

/// The factor that clips a gradient of squared norm `norm_sq` to `max_norm`.
pub fn clip_scale(norm_sq: f32, max_norm: f32) -> f32 {
    let norm = norm_sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        max_norm / norm
    } else {
        1.0
    }
}

/// AdamW (Loshchilov & Hutter; PyTorch `torch.optim.AdamW` semantics):
/// `p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p)`.
pub fn adamw(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], norm_sq: f32, h: &AdamW) {
    let scale = clip_scale(norm_sq, h.max_norm);
    let bc1 = 1.0 - h.beta1.powi(h.t as i32);
    let bc2 = 1.0 - h.beta2.powi(h.t as i32);
    param
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| {
            for i in 0..p.len() {
                let g = g[i] * scale;
                m[i] = h.beta1 * m[i] + (1.0 - h.beta1) * g;
                v[i] = h.beta2 * v[i] + (1.0 - h.beta2) * g * g;
                let mhat = m[i] / bc1;
                let vhat = v[i] / bc2;
                p[i] -= h.lr * (mhat / (vhat.sqrt() + h.eps) + h.weight_decay * p[i]);
            }
        });
}
