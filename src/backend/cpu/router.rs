//! Router family on the CPU: top-k gating of a Switch MoE layer, the oracle of
//! `kernels/router.cu` (DESIGN.md §2 steps 2-10).
//!
//! Forward, from fp32 logits `z[N, E]`:
//! 1. `p = softmax(z)` per token (fp32).
//! 2. Top-k by descending `p`, ties to the lower expert index, selected on
//!    the logits `z` (softmax is monotonic, so the order is the same, and
//!    comparing the fp32 inputs rather than rounded exponentials lets a GPU
//!    kernel reproduce the choice exactly); gate
//!    `g_j = p[e_j]`, divided by `sum_j p[e_j]` when gates are normalized.
//! 3. Slot positions in the §2.5 priority order: the assignment `(n, j)` to
//!    expert `e` gets the number of assignments to `e` with a smaller rank
//!    `j`, or the same rank and a smaller token index. Implemented as one
//!    counter per expert, visiting ranks outer and tokens inner. Kept iff
//!    position `< C`.
//! 4. Expert-contiguous rows: `offsets[e] = sum_{e' < e} min(count_e', C)`,
//!    `row = offsets[e] + position` for kept assignments.
//! 5. Statistics: assigned and kept counts, `sum_n p[n, e]`, entropy,
//!    `sum_n lse_n^2`, dropped count, and the aux and z loss values
//!    `aux = alpha * E * sum_e f_e P_e`, `z = beta * mean_n lse_n^2`.
//!
//! Backward into `z`: `dp[n, e_j] += dg_j` (through the normalization when
//! on), `dp[n, e] += dloss * alpha * E * f_e / N` (aux via `P_e`; `f_e` is a
//! count, not differentiable), softmax backward `dz = p * (dp - <p, dp>)`,
//! plus the z-loss `dz += dloss * beta * 2 * lse_n * p[n, e] / N`.

use rayon::prelude::*;

use super::index_of;
use crate::backend::{RouterParams, RouterStats};

/// The `i`-th multiplier of jitter stream `seed`, uniform on `[1 - eps, 1 + eps)`.
///
/// Counter-based, so a GPU thread computes element `i` on its own and gets
/// the same bits (`router_jitter` in `kernels/router.cu` is this function
/// operation for operation): SplitMix64's output function (Steele, Lea and
/// Flood 2014, as in `java.util.SplittableRandom`) applied to
/// `seed + (i + 1) * golden gamma`, its top 24 bits as `u` in `[0, 1)`
/// (exact in f32), then `mult = fma(2 eps, u, 1 - eps)`.
pub fn jitter_mult(seed: u64, i: u64, eps: f32) -> f32 {
    let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let u = (z >> 40) as f32 * (1.0 / 16_777_216.0);
    (2.0 * eps).mul_add(u, 1.0 - eps)
}

/// Multiplicative jitter: `mult[i] = jitter_mult(seed, i, eps)`, `out = x * mult`.
pub fn jitter(out: &mut [f32], mult: &mut [f32], x: &[f32], eps: f32, seed: u64) {
    out.par_chunks_mut(4096).zip(mult.par_chunks_mut(4096)).zip(x.par_chunks(4096)).enumerate().for_each(
        |(c, ((o, m), x))| {
            for (i, ((o, m), &x)) in o.iter_mut().zip(m.iter_mut()).zip(x).enumerate() {
                *m = jitter_mult(seed, (c * 4096 + i) as u64, eps);
                *o = x * *m;
            }
        },
    );
}

/// Backward of [`jitter`]: `dx = dout * mult`.
pub fn jitter_bwd(dx: &mut [f32], dout: &[f32], mult: &[f32]) {
    for ((d, g), m) in dx.iter_mut().zip(dout).zip(mult) {
        *d = g * m;
    }
}

/// Softmax of one row into `p`; returns `(logsumexp, entropy)`.
fn softmax_row(z: &[f32], p: &mut [f32]) -> (f32, f32) {
    let max = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut sum = 0.0f32;
    for (p, &z) in p.iter_mut().zip(z) {
        *p = (z - max).exp();
        sum += *p;
    }
    let inv = 1.0 / sum;
    let mut ent = 0.0f32;
    for p in p.iter_mut() {
        *p *= inv;
        if *p > 0.0 {
            ent -= *p * p.ln();
        }
    }
    (max + sum.ln(), ent)
}

/// The k largest entries of `p`, descending, ties to the lower index.
pub fn top_k(p: &[f32], k: usize, out: &mut [i32]) {
    for slot in 0..k {
        let mut best: Option<usize> = None;
        for (e, &v) in p.iter().enumerate() {
            if out[..slot].contains(&(e as i32)) {
                continue;
            }
            // Strictly greater: among equal probabilities the lowest index stays.
            if best.is_none_or(|b| v > p[b]) {
                best = Some(e);
            }
        }
        out[slot] = best.expect("k <= E") as i32;
    }
}

/// Routing forward; see the module doc.
#[allow(clippy::too_many_arguments)]
pub fn router_fwd(
    probs: &mut [f32],
    expert: &mut [i32],
    gate: &mut [f32],
    row: &mut [i32],
    row_assign: &mut [i32],
    offsets: &mut [i32],
    stats: &mut [f32],
    logits: &[f32],
    rp: &RouterParams,
) {
    let (n, e, k, cap) = (rp.n_tokens, rp.n_experts, rp.top_k, rp.capacity);
    // 1-2: per-token softmax, top-k and gates (independent rows).
    let mut lse = vec![0.0f32; n];
    let mut ent = vec![0.0f32; n];
    probs[..n * e]
        .par_chunks_mut(e)
        .zip(expert[..n * k].par_chunks_mut(k))
        .zip(gate[..n * k].par_chunks_mut(k))
        .zip(lse.par_iter_mut().zip(ent.par_iter_mut()))
        .enumerate()
        .for_each(|(t, (((p, ex), g), (l, h)))| {
            let (lv, hv) = softmax_row(&logits[t * e..(t + 1) * e], p);
            *l = lv;
            *h = hv;
            top_k(&logits[t * e..(t + 1) * e], k, ex);
            let mut sum = 0.0f32;
            for (g, &x) in g.iter_mut().zip(ex.iter()) {
                *g = p[x as usize];
                sum += *g;
            }
            if rp.normalize_gates {
                for g in g.iter_mut() {
                    *g /= sum;
                }
            }
        });
    // 3: slot positions, ranks outer, tokens inner.
    let mut count = vec![0usize; e];
    let mut pos = vec![0usize; n * k];
    for j in 0..k {
        for t in 0..n {
            let a = t * k + j;
            let ex = expert[a] as usize;
            pos[a] = count[ex];
            count[ex] += 1;
        }
    }
    // 4: expert-contiguous rows of the kept assignments.
    offsets[0] = 0;
    for ex in 0..e {
        offsets[ex + 1] = offsets[ex] + count[ex].min(cap) as i32;
    }
    row_assign[..n * k].fill(-1);
    let mut dropped = 0usize;
    for a in 0..n * k {
        let ex = expert[a] as usize;
        if pos[a] < cap {
            let r = offsets[ex] as usize + pos[a];
            row[a] = r as i32;
            row_assign[r] = a as i32;
        } else {
            row[a] = -1;
            dropped += 1;
        }
    }
    // 5: statistics, summed in token order (f64 accumulators).
    let mut psum = vec![0.0f64; e];
    for t in 0..n {
        for (s, &p) in psum.iter_mut().zip(&probs[t * e..(t + 1) * e]) {
            *s += p as f64;
        }
    }
    let ent_sum: f64 = ent.iter().map(|&h| h as f64).sum();
    let lse_sq: f64 = lse.iter().map(|&l| (l as f64) * (l as f64)).sum();
    let mut aux = 0.0f64;
    for ex in 0..e {
        let f = count[ex] as f64 / (n * k) as f64;
        let pm = psum[ex] / n as f64;
        aux += f * pm;
    }
    aux *= rp.aux_coef as f64 * e as f64;
    for ex in 0..e {
        stats[RouterStats::assigned(e) + ex] = count[ex] as f32;
        stats[RouterStats::kept(e) + ex] = count[ex].min(cap) as f32;
        stats[RouterStats::prob_sum(e) + ex] = psum[ex] as f32;
    }
    stats[RouterStats::entropy_sum(e)] = ent_sum as f32;
    stats[RouterStats::lse_sq_sum(e)] = lse_sq as f32;
    stats[RouterStats::dropped(e)] = dropped as f32;
    stats[RouterStats::aux(e)] = aux as f32;
    stats[RouterStats::z(e)] = (rp.z_coef as f64 * lse_sq / n as f64) as f32;
}

/// Routing backward into the logits (`=`); see the module doc.
#[allow(clippy::too_many_arguments)]
pub fn router_bwd(
    dlogits: &mut [f32],
    dgate: &[f32],
    logits: &[f32],
    probs: &[f32],
    expert: &[i32],
    stats: &[f32],
    rp: &RouterParams,
    dloss: f32,
) {
    let (n, e, k) = (rp.n_tokens, rp.n_experts, rp.top_k);
    // d aux / d p[n, e] = alpha * E * f_e / N for every token.
    let daux: Vec<f32> = (0..e)
        .map(|ex| {
            let f = stats[RouterStats::assigned(e) + ex] / (n * k) as f32;
            dloss * rp.aux_coef * e as f32 * f / n as f32
        })
        .collect();
    let zc = dloss * rp.z_coef * 2.0 / n as f32;
    dlogits[..n * e].par_chunks_mut(e).enumerate().for_each(|(t, dz)| {
        let p = &probs[t * e..(t + 1) * e];
        let z = &logits[t * e..(t + 1) * e];
        let ex = &expert[t * k..(t + 1) * k];
        let dg = &dgate[t * k..(t + 1) * k];
        // dp, built in dz.
        dz.copy_from_slice(&daux);
        if rp.normalize_gates {
            let s: f32 = ex.iter().map(|&x| p[x as usize]).sum();
            let dot: f32 = ex.iter().zip(dg).map(|(&x, &g)| g * p[x as usize]).sum();
            for (&x, &g) in ex.iter().zip(dg) {
                dz[index_of(x).expect("expert index")] += g / s - dot / (s * s);
            }
        } else {
            for (&x, &g) in ex.iter().zip(dg) {
                dz[index_of(x).expect("expert index")] += g;
            }
        }
        let inner: f32 = p.iter().zip(dz.iter()).map(|(a, b)| a * b).sum();
        let max = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let lse = max + z.iter().map(|&v| (v - max).exp()).sum::<f32>().ln();
        for i in 0..e {
            dz[i] = p[i] * (dz[i] - inner) + zc * lse * p[i];
        }
    });
}
