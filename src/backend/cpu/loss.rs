//! Loss family on the CPU: fused softmax cross-entropy. One pass per row
//! computes the max, the log-sum-exp, the loss and (optionally) the logit
//! gradient, never storing the probabilities separately.

use rayon::prelude::*;

use super::{fastmath, index_of};

/// `losses[r] = logsumexp(logits[r]) - logits[r][targets[r]]`; if `dlogits`
/// is given, `dlogits[r] = (softmax(logits[r]) - onehot(targets[r])) * dloss`.
pub fn cross_entropy(
    losses: &mut [f32],
    dlogits: Option<&mut [f32]>,
    logits: &[f32],
    targets: &[i32],
    rows: usize,
    v: usize,
    dloss: f32,
) {
    let row_loss = |r: usize| -> (f32, f32, f32) {
        let l = &logits[r * v..(r + 1) * v];
        let max = fastmath::max(l);
        let sum = fastmath::sum_exp(l, max);
        let lse = max + sum.ln();
        let tgt = index_of(targets[r]).expect("targets are validated on load");
        (lse - l[tgt], max, sum)
    };
    match dlogits {
        None => losses[..rows].par_iter_mut().enumerate().for_each(|(r, out)| *out = row_loss(r).0),
        Some(dl) => {
            dl[..rows * v].par_chunks_mut(v).zip(losses[..rows].par_iter_mut()).enumerate().for_each(|(r, (d, out))| {
                let (loss, max, sum) = row_loss(r);
                *out = loss;
                let l = &logits[r * v..(r + 1) * v];
                let inv = 1.0 / sum;
                for (d, &x) in d.iter_mut().zip(l) {
                    *d = fastmath::exp(x - max) * inv * dloss;
                }
                let tgt = index_of(targets[r]).expect("validated");
                d[tgt] -= dloss;
            })
        }
    }
}
