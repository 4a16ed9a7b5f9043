//! CPU backend microbenchmarks (criterion), reported as throughput.
//!
//! - `matmul/*`: the backend's matmul at the model's shapes (tiny and small
//!   presets: qkv, MLP fc, LM head, and the transposed weight-gradient form)
//!   beside a direct call of the `gemm` crate on the same shapes, so the
//!   wrapper's overhead is visible (elements/s = FLOP/s: each element is one
//!   FLOP).
//! - `ops/*`: attention, layernorm forward and the router forward.
//! - `elementwise/*`, `norm/*`, `embedding/*`, `loss/*`, `optim/*`: the
//!   other dense op families at the `tiny` preset's shapes (2048 tokens, d
//!   128, d_ff 512, vocab 256), in bytes/s counting the fewest bytes each op
//!   must move (each input read once, each output written once, `+=` outputs
//!   read and written; 4 bytes per f32 or i32).
//! - `moe/*`: router backward, dispatch and combine (forward and backward)
//!   and the grouped expert matmul (FLOP/s over the rows actually routed) on
//!   the row maps of a real dropless top-2 routing over 8 experts.
//! - `train_step/*`: one full forward + backward + AdamW step of the `tiny`
//!   and `small` presets (elements/s = tokens/s).
//!
//! `switchyard bench --ops` times the same families on any backend against
//! ceilings measured in the same run (`src/opbench.rs`).
//!
//! Run: `cargo bench --bench cpu_ops` (about 3 minutes on 2 cores; add
//! `-- matmul` to filter).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use switchyard::backend::cpu::Cpu;
use switchyard::backend::{AdamW, AttnShape, Backend, Gemm, Grouped, RouterParams, RouterStats, Routing};
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
            bench.iter(|| be.matmul(&mut out, &a, &b, Gemm::from_flags(m, k, n, ta, false, false)))
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
        bench.iter(|| be.attention_fwd(&mut out, &mut lse, &qkv, AttnShape { b, t, h, hd }))
    });
    let dout = values(b * t * d, 4);
    let mut dqkv = vec![0.0; b * t * 3 * d];
    g.throughput(Throughput::Elements((2 * 2 * b * h * t * t * hd) as u64));
    g.bench_function("attention_bwd tiny 32x64 h4 hd32", |bench| {
        bench.iter(|| be.attention_bwd(&mut dqkv, &dout, &qkv, &out, &lse, AttnShape { b, t, h, hd }))
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
    let mut r = Routing::new(&be, rows, e, 2).unwrap();
    g.throughput(Throughput::Elements(rows as u64));
    g.bench_function("router_fwd 2048 tokens E8 k2", |bench| bench.iter(|| be.router_fwd(&mut r, &logits, &rp)));
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

/// The `tiny` preset's activation shapes: tokens, d_model, d_ff, vocab.
const N: usize = 2048;
const D: usize = 128;
const F: usize = 512;
const V: usize = 256;

/// Throughput of a memory-bound op moving `elems` f32/i32 values.
fn bytes(elems: usize) -> Throughput {
    Throughput::Bytes((4 * elems) as u64)
}

fn elementwise(c: &mut Criterion) {
    let be = Cpu::new(0).unwrap();
    let mut g = c.benchmark_group("elementwise");
    let len = N * F;
    let x = values(len, 7);
    let dout = values(len, 8);
    let bias = values(F, 9);
    let (mut pre, mut out, mut dx, mut dbias) = (x.clone(), vec![0.0; len], vec![0.0; len], vec![0.0; F]);
    g.throughput(bytes(2 * len + F));
    g.bench_function("add_bias 2048x512", |bench| bench.iter(|| be.add_bias(&mut pre, &bias, N, F)));
    g.throughput(bytes(len + 2 * F));
    g.bench_function("bias_grad 2048x512", |bench| bench.iter(|| be.bias_grad(&mut dbias, &dout, N, F)));
    g.throughput(bytes(3 * len + F));
    // `pre` drifts by `bias` per call; GELU is branch-free, so its speed does not.
    g.bench_function("bias_gelu_fwd 2048x512", |bench| {
        bench.iter(|| be.bias_gelu_fwd(&mut pre, &mut out, &bias, N, F))
    });
    g.throughput(bytes(2 * len));
    g.bench_function("gelu_fwd 2048x512", |bench| bench.iter(|| be.gelu_fwd(&mut out, &x, len)));
    g.throughput(bytes(3 * len));
    g.bench_function("gelu_bwd 2048x512", |bench| bench.iter(|| be.gelu_bwd(&mut dx, &dout, &x, len)));
    let (mut resid, branch) = (values(N * D, 10), values(N * D, 11));
    g.throughput(bytes(3 * N * D));
    g.bench_function("add_inplace 2048x128", |bench| bench.iter(|| be.add_inplace(&mut resid, &branch)));
    g.finish();
}

fn norm(c: &mut Criterion) {
    let be = Cpu::new(0).unwrap();
    let mut g = c.benchmark_group("norm");
    let x = values(N * D, 12);
    let dout = values(N * D, 13);
    let (w, b) = (values(D, 14).iter().map(|v| 1.0 + 0.1 * v).collect::<Vec<_>>(), values(D, 15));
    let (mut out, mut mean, mut rstd) = (vec![0.0; N * D], vec![0.0; N], vec![0.0; N]);
    be.layernorm_fwd(&mut out, &mut mean, &mut rstd, &x, &w, &b, N, D);
    let (mut dx, mut dw, mut db) = (vec![0.0; N * D], vec![0.0; D], vec![0.0; D]);
    g.throughput(bytes(4 * N * D + 5 * D + 2 * N));
    g.bench_function("layernorm_bwd 2048x128", |bench| {
        bench.iter(|| be.layernorm_bwd(&mut dx, &mut dw, &mut db, &dout, &x, &w, &mean, &rstd, N, D))
    });
    g.finish();
}

fn embedding(c: &mut Criterion) {
    let be = Cpu::new(0).unwrap();
    let mut g = c.benchmark_group("embedding");
    let (b, t) = (32, 64);
    let tokens: Vec<i32> = (0..N).map(|i| ((i * 7919 + 13) % V) as i32).collect();
    let distinct = {
        let mut seen = vec![false; V];
        tokens.iter().for_each(|&i| seen[i as usize] = true);
        seen.iter().filter(|&&s| s).count()
    };
    let (wte, wpe, dout) = (values(V * D, 16), values(t * D, 17), values(N * D, 18));
    let (mut out, mut dwte, mut dwpe) = (vec![0.0; N * D], vec![0.0; V * D], vec![0.0; t * D]);
    g.throughput(bytes(N + distinct * D + t * D + N * D));
    g.bench_function("embedding_fwd 32x64 V256 d128", |bench| {
        bench.iter(|| be.embedding_fwd(&mut out, &tokens, &wte, &wpe, b, t, D))
    });
    g.throughput(bytes(N + N * D + 2 * distinct * D + 2 * t * D));
    g.bench_function("embedding_bwd 32x64 V256 d128", |bench| {
        bench.iter(|| be.embedding_bwd(&mut dwte, &mut dwpe, &dout, &tokens, b, t, D))
    });
    g.finish();
}

fn loss(c: &mut Criterion) {
    let be = Cpu::new(0).unwrap();
    let mut g = c.benchmark_group("loss");
    // The small preset's head (vocab 256 of tiny is too small to stream).
    let v = 4096;
    let logits: Vec<f32> = values(N * v, 19).iter().map(|x| 4.0 * x).collect();
    let targets: Vec<i32> = (0..N).map(|i| ((i * 7919 + 1) % v) as i32).collect();
    let (mut losses, mut dlogits) = (vec![0.0; N], vec![0.0; N * v]);
    g.throughput(bytes(2 * N * v + 2 * N));
    g.bench_function("cross_entropy 2048x4096 + dlogits", |bench| {
        bench.iter(|| be.cross_entropy(&mut losses, Some(&mut dlogits), &logits, &targets, N, v, 1.0 / N as f32))
    });
    g.finish();
}

fn optim(c: &mut Criterion) {
    let be = Cpu::new(0).unwrap();
    let mut g = c.benchmark_group("optim");
    // One FFN weight of the small preset (256 x 1024).
    let len = 256 * 1024;
    let grad: Vec<f32> = values(len, 20).iter().map(|x| 1e-3 * x).collect();
    let norm_sq = vec![grad.iter().map(|g| g * g).sum::<f32>()];
    let (mut param, mut m, mut v) = (values(len, 21), vec![0.0; len], vec![1e-8; len]);
    let mut acc = vec![0.0];
    g.throughput(bytes(len + 2));
    g.bench_function("sum_squares 256x1024", |bench| bench.iter(|| be.sum_squares(&mut acc, &grad)));
    let h = AdamW { lr: 1e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, t: 10, max_norm: 1.0 };
    g.throughput(bytes(7 * len + 1));
    g.bench_function("adamw 256x1024", |bench| {
        bench.iter(|| be.adamw(&mut param, &grad, &mut m, &mut v, &norm_sq, &h))
    });
    g.finish();
}

fn moe(c: &mut Criterion) {
    let be = Cpu::new(0).unwrap();
    let mut g = c.benchmark_group("moe");
    let (e, k) = (8, 2);
    let nk = N * k;
    let rp = RouterParams {
        n_tokens: N,
        n_experts: e,
        top_k: k,
        capacity: N,
        normalize_gates: true,
        aux_coef: 0.01,
        z_coef: 0.001,
    };
    let logits = values(N * e, 22);
    let mut r = Routing::new(&be, N, e, k).unwrap();
    be.router_fwd(&mut r, &logits, &rp);
    // Dropless: every assignment gets a row.
    let rows = r.offsets[e] as usize;
    assert_eq!(rows, nk);

    let dgate = values(nk, 23);
    let mut dlogits = vec![0.0; N * e];
    g.throughput(bytes(3 * N * e + 2 * nk + RouterStats::len(e)));
    g.bench_function("router_bwd 2048 tokens E8 k2", |bench| {
        bench.iter(|| be.router_bwd(&mut dlogits, &dgate, &logits, &r, &rp, 1.0))
    });

    let x = values(N * D, 24);
    let (mut xe, dxe, mut dx) = (vec![0.0; nk * D], values(nk * D, 25), vec![0.0; N * D]);
    g.throughput(bytes(rows * D + N * D + rows));
    g.bench_function("dispatch_fwd 2048 -> 4096 rows d128", |bench| bench.iter(|| be.dispatch_fwd(&mut xe, &x, &r, D)));
    g.throughput(bytes(2 * N * D + rows * D + nk));
    g.bench_function("dispatch_bwd 4096 -> 2048 rows d128", |bench| {
        bench.iter(|| be.dispatch_bwd(&mut dx, &dxe, &r, D))
    });
    let (ye, dout) = (values(nk * D, 26), values(N * D, 27));
    let (mut out, mut dye, mut dgate_out) = (vec![0.0; N * D], vec![0.0; nk * D], vec![0.0; nk]);
    g.throughput(bytes(N * D + rows * D + 2 * nk));
    g.bench_function("combine_fwd 4096 -> 2048 rows d128", |bench| bench.iter(|| be.combine_fwd(&mut out, &ye, &r, D)));
    g.throughput(bytes(2 * rows * D + N * D + 3 * nk + rows));
    g.bench_function("combine_bwd 2048 -> 4096 rows d128", |bench| {
        bench.iter(|| be.combine_bwd(&mut dye, &mut dgate_out, &dout, &ye, &r, D))
    });

    let (w, b, dy) = (values(e * D * F, 28), values(e * F, 29), values(nk * F, 30));
    let (mut y, mut dxg, mut dw, mut db) =
        (vec![0.0; nk * F], vec![0.0; nk * D], vec![0.0; e * D * F], vec![0.0; e * F]);
    g.throughput(Throughput::Elements((2 * rows * D * F) as u64));
    g.bench_function("grouped_matmul 4096 rows E8 128x512", |bench| {
        bench.iter(|| be.grouped_matmul(&mut y, &xe, &w, &b, &r.offsets, Grouped { e, k: D, n: F }))
    });
    // dx = dy w^T and dw += x^T dy: two matmuls of the forward's size.
    g.throughput(Throughput::Elements((4 * rows * D * F) as u64));
    g.bench_function("grouped_matmul_bwd 4096 rows E8 128x512", |bench| {
        bench.iter(|| {
            be.grouped_matmul_bwd(&mut dxg, &mut dw, &mut db, &dy, &xe, &w, &r.offsets, Grouped { e, k: D, n: F })
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    // Short runs so the whole file stays near 3 minutes on 2 cores; the
    // per-op numbers are stable to a few percent at this length.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(10);
    targets = matmul, other_ops, elementwise, norm, embedding, loss, optim, moe, train_step
}
criterion_main!(benches);
