//! CPU backend properties: the attention op is a correct flash-attention
//! oracle (O and logsumexp against a naive f64 computation), and results do
//! not depend on the number of threads (bit for bit).

// Index loops read like the math in these numeric checks.
#![allow(clippy::needless_range_loop)]

mod common;

use common::{micro_config, rng, tokens, uniform};
use switchyard::backend::cpu::Cpu;
use switchyard::backend::{AttnShape, Backend, Gemm};
use switchyard::model::{Model, Pass};

#[test]
fn attention_matches_naive_f64_reference() {
    let be = Cpu::new(2).unwrap();
    let (b, t, h, hd) = (2, 13, 3, 8);
    let d = h * hd;
    let mut g = rng(301);
    let qkv = uniform(&mut g, b * t * 3 * d, 2.0);
    let mut out = vec![f32::NAN; b * t * d];
    let mut lse = vec![f32::NAN; b * h * t];
    be.attention_fwd(&mut out, &mut lse, &qkv, AttnShape { b, t, h, hd });
    let scale = 1.0 / (hd as f64).sqrt();
    let at = |bi: usize, ti: usize, part: usize, hi: usize, i: usize| {
        qkv[(bi * t + ti) * 3 * d + part * d + hi * hd + i] as f64
    };
    let mut worst = 0.0f64;
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..t {
                let s: Vec<f64> = (0..=i)
                    .map(|j| (0..hd).map(|c| at(bi, i, 0, hi, c) * at(bi, j, 1, hi, c)).sum::<f64>() * scale)
                    .collect();
                let mx = s.iter().cloned().fold(f64::MIN, f64::max);
                let sum: f64 = s.iter().map(|v| (v - mx).exp()).sum();
                let l = mx + sum.ln();
                // f32 bound: relative 1e-5 of the O(1..10) magnitudes involved.
                assert!((lse[(bi * h + hi) * t + i] as f64 - l).abs() < 1e-5 * l.abs().max(1.0));
                for c in 0..hd {
                    let o: f64 = (0..=i).map(|j| (s[j] - l).exp() * at(bi, j, 2, hi, c)).sum();
                    let got = out[(bi * t + i) * d + hi * hd + c] as f64;
                    worst = worst.max((got - o).abs());
                }
            }
        }
    }
    assert!(worst < 1e-5, "max |O - O_ref| = {worst}");
}

#[test]
fn matmul_is_thread_count_invariant() {
    let (m, k, n) = (300, 520, 260);
    let mut g = rng(302);
    let a = uniform(&mut g, m * k, 1.0);
    let b = uniform(&mut g, k * n, 1.0);
    let run = |threads| {
        let be = Cpu::new(threads).unwrap();
        let mut c = vec![0.0; m * n];
        be.matmul(&mut c, &a, &b, Gemm::new(m, k, n));
        let mut ct = vec![0.0; k * n];
        be.matmul(&mut ct, &a, &c, Gemm::new(k, m, n).ta());
        (c, ct)
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
}

#[test]
fn model_step_is_thread_count_invariant() {
    let mut cfg = micro_config(2, 4, 2);
    cfg.model.d_model = 64;
    cfg.model.n_head = 4;
    cfg.model.d_ff = 128;
    cfg.model.router_jitter = 0.01;
    let (b, t) = (4, 8);
    let mut g = rng(303);
    let x = tokens(&mut g, b * t, cfg.model.vocab_size);
    let y = tokens(&mut g, b * t, cfg.model.vocab_size);
    let run = |threads| {
        let be = Cpu::new(threads).unwrap();
        let mut model = Model::<Cpu>::new(&be, &cfg).unwrap();
        model.zero_grads(&be);
        let s = model.step(&be, &x, &y, b, t, Pass::Train { jitter_seed: 5, loss_weight: 1.0 }).unwrap();
        let grads: Vec<Vec<u32>> =
            model.grads.iter().map(|g| be.download(g).iter().map(|v| v.to_bits()).collect()).collect();
        (s.loss().to_bits(), grads)
    };
    let one = run(1);
    assert_eq!(one, run(2), "1 vs 2 threads");
    assert_eq!(one, run(3), "1 vs 3 threads");
}
