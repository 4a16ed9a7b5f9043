//! CPU backend microbenchmarks (criterion), reported as throughput.
//!
//! - `matmul/*`: the backend's matmul at the model's shapes (tiny and small
//!   presets: qkv, MLP fc, LM head, and the transposed weight-gradient form)
//!   beside a direct call of the `gemm` crate on the same shapes, so the
//!   wrapper's overhead is visible (elements/s = FLOP/s: each element is one
//!   FLOP).
//! - `attention`, `layernorm`, `router`: the other op families.
//! - `train_step/*`: one full forward + backward + AdamW step of the `tiny`
//!   and `small` presets (elements/s = tokens/s).
//!
//! Run: `cargo bench --bench cpu_ops` (add `-- matmul` to filter).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use switchyard::backend::cpu::Cpu;
use switchyard::backend::{Backend, RouterParams, RouterStats};
use switchyard::model::{Model, Pass};
use switchyard::train::optimizer::Optimizer;
use switchyard::Config;

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n).map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2000) as f32 / 1000.0 - 1.0).collect()
}

fn matmul(c: &mut Criterion) {
    let be = Cpu::new(0).unwrap();
    let threads = be.threads();
    let mut g = c.benchmark_group("matmul");
    // (label, m, k, n, transpose a)
    let shapes = [
        ("tiny qkv 2048x128x384", 2048, 128, 384, false),
        ("tiny fc 2048x128x512", 2048, 128, 512, false),
        ("tiny lm_head 2048x128x256", 2048, 128, 256, false),
        ("tiny dW 128x2048x512 (A^T)", 128, 2048, 512, true),
        ("small fc 4096x256x1024", 4096, 256, 1024, false),
        ("small dW 256x4096x1024 (A^T)", 256, 4096, 1024, true),
    ];
    for (label, m, k, n, ta) in shapes {
        let a = values(m * k, 1);
        let b = values(k * n, 2);
        let mut out = vec![0.0f32; m * n];
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        g.bench_function(BenchmarkId::new("switchyard", label), |bench| {
            bench.iter(|| be.matmul(&mut out, &a, &b, m, k, n, ta, false, false))
        });
        let (a_rs, a_cs) = if ta { (1, m as isize) } else { (k as isize, 1) };
        g.bench_function(BenchmarkId::new("gemm crate", label), |bench| {
            bench.iter(|| {
                // SAFETY: shapes and strides match the buffers above.
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        out.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        a.as_ptr(),
                        a_cs,
                        a_rs,
                        b.as_ptr(),
                        1,
                        n as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None },
                    )
                }
            })
        });
    }
    g.finish();
}

fn other_ops(c: &mut Criterion) {
    let be = Cpu::new(0).unwrap();
    let mut g = c.benchmark_group("ops");
    let (b, t, h, hd) = (32, 64, 4, 32);
    let d = h * hd;
    let qkv = values(b * t * 3 * d, 3);
    let mut out = vec![0.0; b * t * d];
    let mut lse = vec![0.0; b * h * t];
    // Causal attention FLOPs: 2 matmuls of T*T*hd/2 each, x2 FLOP/MAC.
    g.throughput(Throughput::Elements((2 * 2 * b * h * t * t * hd / 2) as u64));
    g.bench_function("attention_fwd tiny 32x64 h4 hd32", |bench| {
        bench.iter(|| be.attention_fwd(&mut out, &mut lse, &qkv, b, t, h, hd))
    });
    let dout = values(b * t * d, 4);
    let mut dqkv = vec![0.0; b * t * 3 * d];
    g.throughput(Throughput::Elements((2 * 2 * b * h * t * t * hd) as u64));
    g.bench_function("attention_bwd tiny 32x64 h4 hd32", |bench| {
        bench.iter(|| be.attention_bwd(&mut dqkv, &dout, &qkv, &out, &lse, b, t, h, hd))
    });
    let rows = b * t;
    let x = values(rows * d, 5);
    let (w, bias) = (vec![1.0; d], vec![0.0; d]);
    let (mut o, mut m, mut s) = (vec![0.0; rows * d], vec![0.0; rows], vec![0.0; rows]);
    g.throughput(Throughput::Bytes((2 * rows * d * 4) as u64));
    g.bench_function("layernorm_fwd 2048x128", |bench| {
        bench.iter(|| be.layernorm_fwd(&mut o, &mut m, &mut s, &x, &w, &bias, rows, d))
    });
    let e = 8;
    let logits = values(rows * e, 6);
    let rp = RouterParams {
        n_tokens: rows,
        n_experts: e,
        top_k: 2,
        capacity: rows / 4,
        normalize_gates: true,
        aux_coef: 0.01,
        z_coef: 0.001,
    };
    let (mut p, mut ex, mut gate) = (vec![0.0; rows * e], vec![0; rows * 2], vec![0.0; rows * 2]);
    let (mut row, mut ra, mut off, mut st) =
        (vec![0; rows * 2], vec![0; rows * 2], vec![0; e + 1], vec![0.0; RouterStats::len(e)]);
    g.throughput(Throughput::Elements(rows as u64));
    g.bench_function("router_fwd 2048 tokens E8 k2", |bench| {
        bench.iter(|| be.router_fwd(&mut p, &mut ex, &mut gate, &mut row, &mut ra, &mut off, &mut st, &logits, &rp))
    });
    g.finish();
}

fn train_step(c: &mut Criterion) {
    let be = Cpu::new(0).unwrap();
    let mut g = c.benchmark_group("train_step");
    g.sample_size(10);
    for preset in ["tiny", "small"] {
        let cfg = Config::preset(preset).unwrap();
        let (b, t) = (cfg.train.batch_size, cfg.train.seq_len);
        let mut model = Model::<Cpu>::new(&be, &cfg).unwrap();
        let mut opt = Optimizer::new(&be, &model).unwrap();
        let x: Vec<i32> = (0..b * t).map(|i| (i * 7 % cfg.model.vocab_size) as i32).collect();
        let y: Vec<i32> = (0..b * t).map(|i| (i * 13 % cfg.model.vocab_size) as i32).collect();
        g.throughput(Throughput::Elements((b * t) as u64));
        g.bench_function(preset, |bench| {
            bench.iter(|| {
                model.zero_grads(&be);
                model.step(&be, &x, &y, b, t, Pass::Train { jitter_seed: 1, loss_weight: 1.0 }).unwrap();
                opt.step(&be, &mut model, &cfg.train, 1e-4, 1)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, matmul, other_ops, train_step);
criterion_main!(benches);
