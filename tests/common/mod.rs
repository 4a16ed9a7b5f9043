//! Shared helpers for the integration tests.
#![allow(dead_code)]

pub mod cli;
pub mod gpu;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use switchyard::Config;

/// A seeded RNG for test inputs (fresh per test: pass a distinct seed).
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `n` values uniform in `[-scale, scale]`.
pub fn uniform(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// `n` standard normals (Box-Muller).
pub fn normal(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f64 = rng.random::<f64>().max(1e-300);
            let u2: f64 = rng.random();
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect()
}

/// Random token ids below `v`.
pub fn tokens(rng: &mut ChaCha8Rng, n: usize, v: usize) -> Vec<i32> {
    (0..n).map(|_| rng.random_range(0..v as i32)).collect()
}

/// A very small config for gradient checks and fast tests.
pub fn micro_config(moe_every: usize, n_experts: usize, top_k: usize) -> Config {
    let mut c = Config::preset("tiny").unwrap();
    let m = &mut c.model;
    m.vocab_size = 32;
    m.max_seq_len = 8;
    m.n_layer = 2;
    m.n_head = 2;
    m.d_model = 16;
    m.d_ff = 32;
    m.moe_every = moe_every;
    m.n_experts = n_experts;
    m.top_k = top_k;
    c.train.seq_len = 8;
    c.train.batch_size = 2;
    c.data.synthetic.domains = 2;
    c.data.synthetic.domain_vocab = 16;
    c
}

/// Relative error `|a - b| / max(|a|, |b|, floor)`.
pub fn rel_err(a: f64, b: f64, floor: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(floor)
}

/// Mark a test as skipped, visibly: the line goes straight to file
/// descriptor 2, which the test harness does not capture, and
/// `scripts/test.sh` counts these lines in its summary.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    // SAFETY: fd 2 is open for the whole process; ManuallyDrop keeps it open.
    let mut fd2 = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(2) });
    let _ = writeln!(fd2, "skipped: {test}: {why}");
}
