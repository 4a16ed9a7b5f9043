//! Router invariants (DESIGN.md §2.3-2.7) on the CPU reference: capacity,
//! slot order, ties, dropless, k = 2 priority, and dropped tokens passing
//! through the residual unchanged.

// Index loops read like the math in these numeric checks.
#![allow(clippy::needless_range_loop)]

mod common;

use common::{rng, uniform};
use switchyard::backend::cpu::Cpu;
use switchyard::backend::{Backend, RouterParams, RouterStats, Routing};
use switchyard::config::capacity;

type Routed = Routing<Cpu>;

fn route(logits: &[f32], rp: &RouterParams) -> Routed {
    let be = Cpu::new(2).unwrap();
    let (n, e, k) = (rp.n_tokens, rp.n_experts, rp.top_k);
    // Poisoned: every element must be written.
    let mut r = Routing {
        n,
        e,
        k,
        probs: vec![f32::NAN; n * e],
        expert: vec![-7; n * k],
        gate: vec![f32::NAN; n * k],
        row: vec![-7; n * k],
        row_assign: vec![-7; n * k],
        offsets: vec![-7; e + 1],
        stats: vec![f32::NAN; RouterStats::len(e)],
    };
    be.router_fwd(&mut r, &logits.to_vec(), rp);
    r
}

fn params(n: usize, e: usize, k: usize, cf: f64) -> RouterParams {
    RouterParams {
        n_tokens: n,
        n_experts: e,
        top_k: k,
        capacity: capacity(cf, k, n, e).min(n),
        normalize_gates: false,
        aux_coef: 0.01,
        z_coef: 0.001,
    }
}

/// Position of each assignment within its expert, recovered from the rows.
fn positions(r: &Routed) -> Vec<Option<usize>> {
    r.row.iter().zip(&r.expert).map(|(&row, &e)| (row >= 0).then(|| (row - r.offsets[e as usize]) as usize)).collect()
}

#[test]
fn no_expert_over_capacity_and_rows_are_a_permutation() {
    for (seed, (n, e, k, cf)) in
        [(37, 8, 1, 1.0), (64, 4, 2, 1.25), (101, 16, 2, 0.5), (13, 3, 1, 2.0)].into_iter().enumerate()
    {
        let mut g = rng(200 + seed as u64);
        let logits = uniform(&mut g, n * e, 3.0);
        let rp = params(n, e, k, cf);
        let r = route(&logits, &rp);
        let kept = &r.stats[RouterStats::kept(e)..RouterStats::kept(e) + e];
        for ex in 0..e {
            let count = r.expert.iter().zip(&r.row).filter(|(&x, &row)| x == ex as i32 && row >= 0).count();
            assert!(count <= rp.capacity, "expert {ex} holds {count} > C = {}", rp.capacity);
            assert_eq!(count as f32, kept[ex]);
            assert_eq!((r.offsets[ex + 1] - r.offsets[ex]) as usize, count);
        }
        // Kept rows are exactly 0..M, each used once, and map back.
        let m = r.offsets[e] as usize;
        let mut seen = vec![false; m];
        for (a, &row) in r.row.iter().enumerate() {
            if row >= 0 {
                assert!(!seen[row as usize]);
                seen[row as usize] = true;
                assert_eq!(r.row_assign[row as usize], a as i32);
            }
        }
        assert!(seen.iter().all(|&s| s));
        assert!(r.row_assign[m..].iter().all(|&a| a == -1));
        let dropped = r.row.iter().filter(|&&x| x < 0).count();
        assert_eq!(dropped as f32, r.stats[RouterStats::dropped(e)]);
    }
}

/// HF `SwitchTransformersTop1Router`: `priority = cumsum(one_hot(argmax), dim=tokens)`,
/// kept iff `priority <= capacity`; the slot is `priority - 1`.
#[test]
fn top1_matches_hf_cumsum_priority() {
    let (n, e) = (50, 4);
    let mut g = rng(210);
    let logits = uniform(&mut g, n * e, 2.0);
    let rp = params(n, e, 1, 1.0);
    let r = route(&logits, &rp);
    let mut cumsum = vec![0usize; e];
    let pos = positions(&r);
    for t in 0..n {
        let z = &logits[t * e..(t + 1) * e];
        let argmax = (0..e).fold(0, |b, i| if z[i] > z[b] { i } else { b });
        cumsum[argmax] += 1;
        let priority = cumsum[argmax];
        assert_eq!(r.expert[t], argmax as i32);
        let kept = priority <= rp.capacity;
        assert_eq!(pos[t].is_some(), kept, "token {t}");
        if kept {
            assert_eq!(pos[t], Some(priority - 1));
        }
    }
    assert!(r.row.iter().any(|&x| x < 0), "this case must drop tokens to be meaningful");
}

#[test]
fn top2_places_all_first_choices_before_second_choices() {
    let (n, e, k) = (40, 4, 2);
    let mut g = rng(211);
    let logits = uniform(&mut g, n * e, 2.0);
    let rp = params(n, e, k, 1.0);
    let r = route(&logits, &rp);
    let pos = positions(&r);
    let mut count = vec![[0usize; 2]; e];
    for a in 0..n * k {
        count[r.expert[a] as usize][a % k] += 1;
    }
    for a in 0..n * k {
        let (t, j, ex) = (a / k, a % k, r.expert[a] as usize);
        // Expected slot: same-expert assignments of lower rank, or same rank and earlier token.
        let mut expect = 0;
        for b in 0..n * k {
            let (t2, j2) = (b / k, b % k);
            if r.expert[b] as usize == ex && (j2 < j || (j2 == j && t2 < t)) {
                expect += 1;
            }
        }
        assert_eq!(pos[a].is_some(), expect < rp.capacity);
        if let Some(p) = pos[a] {
            assert_eq!(p, expect);
            if j == 1 {
                assert!(p >= count[ex][0], "a second choice precedes a first choice at expert {ex}");
            }
        }
        assert_ne!(r.expert[t * k], r.expert[t * k + 1], "top-2 picked the same expert twice");
    }
}

#[test]
fn ties_go_to_the_lower_expert_index() {
    let (n, e) = (3, 4);
    let logits = vec![
        1.0, 1.0, 1.0, 1.0, // all tied: 0 then 1
        0.0, 2.0, 0.0, 2.0, // 1 and 3 tied: 1 then 3
        5.0, 0.0, 5.0, 0.0, // 0 and 2 tied
    ];
    let r = route(&logits, &params(n, e, 2, 0.0));
    assert_eq!(r.expert, vec![0, 1, 1, 3, 0, 2]);
}

#[test]
fn dropless_keeps_everything() {
    let (n, e, k) = (33, 5, 2);
    let mut g = rng(212);
    // Heavily skewed: every token prefers expert 0 and 1.
    let logits: Vec<f32> =
        uniform(&mut g, n * e, 0.5).iter().enumerate().map(|(i, v)| v + if i % e < 2 { 5.0 } else { 0.0 }).collect();
    let r = route(&logits, &params(n, e, k, 0.0));
    assert!(r.row.iter().all(|&x| x >= 0));
    assert_eq!(r.stats[RouterStats::dropped(e)], 0.0);
    assert_eq!(r.offsets[e] as usize, n * k);
    // With capacity factor 1.0 the same logits drop many.
    let r1 = route(&logits, &params(n, e, k, 1.0));
    assert!(r1.stats[RouterStats::dropped(e)] > 0.0);
}

#[test]
fn gates_aux_and_z_values() {
    let (n, e) = (6, 3);
    let mut g = rng(213);
    let logits = uniform(&mut g, n * e, 2.0);
    let mut rp = params(n, e, 2, 0.0);
    rp.normalize_gates = true;
    let r = route(&logits, &rp);
    let mut f = vec![0.0f64; e];
    let mut pm = vec![0.0f64; e];
    let mut lse2 = 0.0f64;
    for t in 0..n {
        let z: Vec<f64> = logits[t * e..(t + 1) * e].iter().map(|&x| x as f64).collect();
        let mx = z.iter().cloned().fold(f64::MIN, f64::max);
        let s: f64 = z.iter().map(|v| (v - mx).exp()).sum();
        let p: Vec<f64> = z.iter().map(|v| (v - mx).exp() / s).collect();
        lse2 += (mx + s.ln()).powi(2);
        for ex in 0..e {
            pm[ex] += p[ex] / n as f64;
        }
        let (a, b) = (r.expert[t * 2] as usize, r.expert[t * 2 + 1] as usize);
        f[a] += 1.0 / (2 * n) as f64;
        f[b] += 1.0 / (2 * n) as f64;
        let gsum = p[a] + p[b];
        assert!((r.gate[t * 2] as f64 - p[a] / gsum).abs() < 1e-6);
        assert!((r.gate[t * 2 + 1] as f64 - p[b] / gsum).abs() < 1e-6);
        assert!(p[a] >= p[b]);
    }
    let aux: f64 = 0.01 * e as f64 * (0..e).map(|i| f[i] * pm[i]).sum::<f64>();
    assert!((r.stats[RouterStats::aux(e)] as f64 - aux).abs() < 1e-7);
    assert!((r.stats[RouterStats::z(e)] as f64 - 0.001 * lse2 / n as f64).abs() < 1e-6);
}

/// A token none of whose assignments is kept gets exactly 0 from the MoE
/// layer, so `h + moe(h) == h` bit for bit: the residual carries it.
#[test]
fn dropped_tokens_pass_through_unchanged() {
    let be = Cpu::new(2).unwrap();
    let (n, e, k, d) = (12, 2, 1, 5);
    let mut g = rng(214);
    let logits: Vec<f32> = (0..n * e).map(|i| if i % e == 0 { 3.0 } else { 0.0 }).collect();
    let rp = params(n, e, k, 0.5); // C = ceil(0.5 * 12 / 2) = 3: most tokens dropped
    let r = route(&logits, &rp);
    let x = uniform(&mut g, n * d, 1.0);
    let mut xe = vec![0.0; n * k * d];
    be.dispatch_fwd(&mut xe, &x, &r, d);
    let mut out = vec![f32::NAN; n * d];
    be.combine_fwd(&mut out, &xe, &r, d);
    let mut h = uniform(&mut g, n * d, 1.0);
    let h0 = h.clone();
    be.add_inplace(&mut h, &out);
    let mut dropped = 0;
    for t in 0..n {
        if r.row[t] < 0 {
            dropped += 1;
            assert!(out[t * d..(t + 1) * d].iter().all(|&v| v == 0.0));
            assert_eq!(&h[t * d..(t + 1) * d], &h0[t * d..(t + 1) * d]);
        } else {
            let gt = r.gate[t];
            for i in 0..d {
                assert_eq!(out[t * d + i], gt * x[t * d + i]);
            }
        }
    }
    assert_eq!(dropped, n - rp.capacity);
}

#[test]
fn jitter_is_uniform_counter_based_and_seeded() {
    use switchyard::backend::cpu::router::jitter_mult;
    let eps = 0.01f32;
    let n = 200_000u64;
    let draws: Vec<f32> = (0..n).map(|i| jitter_mult(42, i, eps)).collect();
    assert!(draws.iter().all(|&m| (1.0 - eps..=1.0 + eps).contains(&m)), "every multiplier in [1-eps, 1+eps]");
    // Uniform on the interval: 20 equal bins within 5 standard deviations of n/20
    // (binomial sd = sqrt(n p (1-p)) ~ 97 here).
    let mut bins = [0usize; 20];
    for &m in &draws {
        bins[(((m - (1.0 - eps)) / (2.0 * eps) * 20.0) as usize).min(19)] += 1;
    }
    let expect = n as f64 / 20.0;
    let sd = (n as f64 * 0.05 * 0.95).sqrt();
    for (i, &b) in bins.iter().enumerate() {
        assert!((b as f64 - expect).abs() < 5.0 * sd, "bin {i}: {b} draws, expected {expect:.0} +- {:.0}", 5.0 * sd);
    }
    let mean = draws.iter().map(|&m| m as f64).sum::<f64>() / n as f64;
    assert!((mean - 1.0).abs() < 1e-4, "mean multiplier {mean}");
    // Counter-based: element i does not depend on the others; seeds differ.
    assert_eq!(jitter_mult(42, 12_345, eps), draws[12_345]);
    let other: Vec<f32> = (0..1000).map(|i| jitter_mult(43, i, eps)).collect();
    let same = other.iter().zip(&draws).filter(|(a, b)| a == b).count();
    assert!(same < 20, "{same} of 1000 draws equal across seeds");
    // The backend op applies exactly these multipliers.
    let be = Cpu::new(2).unwrap();
    let x: Vec<f32> = (0..10_000).map(|i| (i as f32 * 0.37).sin()).collect();
    let (mut out, mut mult) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    be.router_jitter(&mut out, &mut mult, &x, eps, 42);
    for i in 0..x.len() {
        assert_eq!(mult[i], draws[i]);
        assert_eq!(out[i], x[i] * draws[i]);
    }
}
