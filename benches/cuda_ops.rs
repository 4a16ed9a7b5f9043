//! CUDA kernel benchmarks (criterion, CUDA events inside `iter_custom`), each
//! reported as a rate and as a fraction of the ceilings measured in the same
//! run (DESIGN.md §8): a 1 GiB device copy (bytes read + written) and a
//! 8192^3 bf16 cuBLAS GEMM.
//!
//! - attention forward / backward: TFLOP/s at head_dim 64 and 128, sequence
//!   1k / 4k / 16k, causal and not, 16k tokens per batch and d_model 2048
//!   (FlashAttention's benchmark shapes); FLOPs count the computed half when
//!   causal, as FlashAttention does.
//! - LayerNorm forward / backward, cross-entropy, AdamW: GB/s of the fewest
//!   bytes each must move.
//!
//! Inputs are bigger than the 60 MB L2 (or rotated), so the caches do not
//! flatter the numbers; operands are pre-cast to bf16 so the cast kernels are
//! not timed. After criterion, a summary table (median of 20 event-timed
//! repeats after warm-up) is printed and written as JSON to
//! `$SWITCHYARD_BENCH_JSON` (default `target/cuda_ops.json`).
//!
//! Without a GPU it prints "skipped: cuda_ops: no CUDA device (...)" and exits.

use std::time::Duration;

use criterion::{Criterion, Throughput};
use switchyard::backend::cuda::{self, AttentionShape, Cuda, CudaBuf, CudaIBuf};
use switchyard::backend::{AdamW, Backend, Gemm};

/// What a benchmark runs.
#[derive(Clone, Copy)]
enum Kind {
    Copy,
    Gemm,
    AttnFwd(usize, AttentionShape),
    AttnBwd(usize, AttentionShape),
    LnFwd,
    LnBwd,
    CrossEntropy,
    Adamw,
}

/// One benchmark: what it runs and the work of one run.
struct Spec {
    group: &'static str,
    name: String,
    /// FLOPs (compute-bound ops) or bytes (memory-bound ops) per run.
    work: f64,
    is_flops: bool,
    kind: Kind,
}

/// Every buffer the benchmarks use, allocated once.
struct Bufs {
    copy: (CudaBuf, CudaBuf),
    gemm: (CudaBuf, CudaBuf, CudaBuf, usize),
    /// Per attention shape: qkv, dout, out, lse, dqkv.
    attn: Vec<[CudaBuf; 5]>,
    ln: [CudaBuf; 9],
    ln_shape: (usize, usize),
    ce: (CudaBuf, CudaIBuf, CudaBuf, CudaBuf, usize, usize),
    adam: [CudaBuf; 5],
}

fn filled(g: &Cuda, n: usize, seed: u32) -> CudaBuf {
    // A cheap deterministic pattern in [-1, 1): never zeros (zeros run faster).
    let v: Vec<f32> = (0..n)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / 8_388_608.0 - 1.0)
        .collect();
    let mut b = g.alloc(n, "bench input").unwrap();
    g.upload(&mut b, &v);
    b
}

fn run(g: &Cuda, b: &mut Bufs, kind: Kind) {
    match kind {
        Kind::Copy => g.copy(&mut b.copy.1, &b.copy.0),
        Kind::Gemm => {
            let (a, bb, c, n) = (&b.gemm.0, &b.gemm.1, &mut b.gemm.2, b.gemm.3);
            g.matmul(c, a, bb, Gemm::new(n, n, n))
        }
        Kind::AttnFwd(i, s) => {
            let [qkv, _, out, lse, _] = &mut b.attn[i];
            g.attention_fwd_shaped(out, lse, qkv, s)
        }
        Kind::AttnBwd(i, s) => {
            let [qkv, dout, out, lse, dqkv] = &mut b.attn[i];
            g.attention_bwd_shaped(dqkv, dout, qkv, out, lse, s)
        }
        Kind::LnFwd => {
            let (rows, c) = b.ln_shape;
            let [x, w, bias, out, mean, rstd, ..] = &mut b.ln;
            g.layernorm_fwd(out, mean, rstd, x, w, bias, rows, c)
        }
        Kind::LnBwd => {
            let (rows, c) = b.ln_shape;
            let [x, w, _, out, mean, rstd, dx, dw, db] = &mut b.ln;
            g.layernorm_bwd(dx, dw, db, out, x, w, mean, rstd, rows, c)
        }
        Kind::CrossEntropy => {
            let (logits, targets, losses, dlogits, rows, v) = &mut b.ce;
            g.cross_entropy(losses, Some(dlogits), logits, targets, *rows, *v, 1.0 / *rows as f32)
        }
        Kind::Adamw => {
            let h = AdamW { lr: 1e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, t: 10, max_norm: 1.0 };
            let [p, grad, m, v, norm_sq] = &mut b.adam;
            g.adamw(p, grad, m, v, norm_sq, &h)
        }
    }
}

fn median_ms(g: &Cuda, b: &mut Bufs, kind: Kind, repeats: usize) -> f64 {
    for _ in 0..3 {
        run(g, b, kind);
    }
    let mut t: Vec<f64> = (0..repeats).map(|_| g.time_ms(1, || run(g, b, kind)).expect("timing")).collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[repeats / 2]
}

fn main() {
    if let Err(e) = cuda::probe(0) {
        if std::env::var_os("SWITCHYARD_REQUIRE_GPU").is_some() {
            panic!("SWITCHYARD_REQUIRE_GPU is set but the GPU is unavailable: {e}");
        }
        println!("skipped: cuda_ops: no CUDA device ({e})");
        return;
    }
    let g = Cuda::new(0).expect("device opens");
    let mut specs: Vec<Spec> = Vec::new();
    let spec = |group, name: String, work: f64, is_flops, kind| Spec { group, name, work, is_flops, kind };

    // ---- ceilings ------------------------------------------------------
    let copy_n = 256 << 20; // 1 GiB of f32
    specs.push(spec("ceiling", "copy 1 GiB".into(), 2.0 * (copy_n * 4) as f64, false, Kind::Copy));
    let n = 8192;
    specs.push(spec("ceiling", format!("cublas bf16 gemm {n}^3"), 2.0 * (n as f64).powi(3), true, Kind::Gemm));
    let (mut ga, mut gb) = (filled(&g, n * n, 2), filled(&g, n * n, 3));
    g.prepare_bf16(&mut ga);
    g.prepare_bf16(&mut gb);

    // ---- attention: 16k tokens per batch, d_model 2048 -----------------------
    let (tokens, d_model) = (16 * 1024, 2048);
    let mut attn = Vec::new();
    for hd in [64usize, 128] {
        for t in [1024usize, 4096, 16384] {
            let (b, h) = (tokens / t, d_model / hd);
            let mut qkv = filled(&g, tokens * 3 * d_model, 4);
            g.prepare_bf16(&mut qkv);
            let mut dout = filled(&g, tokens * d_model, 5);
            g.prepare_bf16(&mut dout);
            let out = g.alloc(tokens * d_model, "attn out").unwrap();
            let lse = g.alloc(b * h * t, "attn lse").unwrap();
            let dqkv = g.alloc(tokens * 3 * d_model, "attn dqkv").unwrap();
            let i = attn.len();
            attn.push([qkv, dout, out, lse, dqkv]);
            for causal in [true, false] {
                let s = AttentionShape { b, t, h, hd, causal };
                let tag = format!("hd{hd} seq{t} {}", if causal { "causal" } else { "full" });
                specs.push(spec("attention_fwd", tag.clone(), s.fwd_flops(), true, Kind::AttnFwd(i, s)));
                specs.push(spec("attention_bwd", tag, s.bwd_flops(), true, Kind::AttnBwd(i, s)));
            }
        }
    }

    // ---- bandwidth kernels: the fewest bytes each must move ---------------------
    let (rows, c) = (16 * 1024, 2048);
    specs.push(spec(
        "layernorm",
        format!("fwd {rows}x{c}"),
        (2 * rows * c * 4 + 2 * rows * 4) as f64,
        false,
        Kind::LnFwd,
    ));
    // dout and x read, dx read and written (+=).
    specs.push(spec("layernorm", format!("bwd {rows}x{c}"), (4 * rows * c * 4) as f64, false, Kind::LnBwd));
    let (ce_rows, vocab) = (8 * 1024, 50_257);
    let ce_bytes = (2 * ce_rows * vocab * 4) as f64;
    specs.push(spec("cross_entropy", format!("fwd+bwd {ce_rows}x{vocab}"), ce_bytes, false, Kind::CrossEntropy));
    let n_param = 64 << 20;
    // param, m, v read and written; grad read; bf16 copy written.
    let adam_bytes = (n_param * (7 * 4 + 2)) as f64;
    specs.push(spec("adamw", format!("{}M params", n_param >> 20), adam_bytes, false, Kind::Adamw));

    let targets = {
        let mut t = g.alloc_i(ce_rows, "targets").unwrap();
        g.upload_i(&mut t, &(0..ce_rows as i32).map(|i| (i * 7919) % vocab as i32).collect::<Vec<_>>());
        t
    };
    let a = |n: usize| g.alloc(n, "bench output").unwrap();
    let mut bufs = Bufs {
        copy: (filled(&g, copy_n, 1), a(copy_n)),
        gemm: (ga, gb, a(n * n), n),
        attn,
        ln: [
            filled(&g, rows * c, 6),
            filled(&g, c, 7),
            filled(&g, c, 8),
            a(rows * c),
            a(rows),
            a(rows),
            a(rows * c),
            a(c),
            a(c),
        ],
        ln_shape: (rows, c),
        ce: (filled(&g, ce_rows * vocab, 9), targets, a(ce_rows), a(ce_rows * vocab), ce_rows, vocab),
        adam: [filled(&g, n_param, 10), filled(&g, n_param, 11), a(n_param), a(n_param), filled(&g, 1, 12)],
    };
    // Real values in the forward outputs the backward passes read.
    run(&g, &mut bufs, Kind::LnFwd);
    for s in &specs {
        if let Kind::AttnFwd(..) = s.kind {
            run(&g, &mut bufs, s.kind);
        }
    }
    g.check().expect("no CUDA errors while preparing");

    // ---- criterion ---------------------------------------------------------
    let mut crit = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(10);
    for s in &specs {
        let mut group = crit.benchmark_group(s.group);
        group.throughput(Throughput::Elements(s.work as u64));
        group.bench_function(&s.name, |bench| {
            bench.iter_custom(|iters| {
                let ms = g.time_ms(iters as usize, || run(&g, &mut bufs, s.kind)).expect("timing");
                Duration::from_secs_f64(ms / 1e3)
            })
        });
        group.finish();
    }

    // ---- summary against the ceilings ---------------------------------------
    let (mut ceil_bw, mut ceil_flops) = (f64::NAN, f64::NAN);
    let mut out = Vec::new();
    println!("\n{:<16} {:<26} {:>10} {:>14} {:>9}", "group", "shape", "median ms", "rate", "of ceil");
    for s in &specs {
        let ms = median_ms(&g, &mut bufs, s.kind, 20);
        let rate = s.work / (ms / 1e3);
        if s.group == "ceiling" {
            *(if s.is_flops { &mut ceil_flops } else { &mut ceil_bw }) = rate;
        }
        let frac = rate / if s.is_flops { ceil_flops } else { ceil_bw };
        let shown = if s.is_flops { format!("{:.1} TFLOP/s", rate / 1e12) } else { format!("{:.0} GB/s", rate / 1e9) };
        println!("{:<16} {:<26} {:>10.3} {:>14} {:>8.1}%", s.group, s.name, ms, shown, 100.0 * frac);
        out.push(serde_json::json!({
            "group": s.group, "shape": s.name, "median_ms": ms, "rate": rate,
            "unit": if s.is_flops { "FLOP/s" } else { "B/s" }, "fraction_of_ceiling": frac,
        }));
    }
    let path = std::env::var("SWITCHYARD_BENCH_JSON").unwrap_or_else(|_| "target/cuda_ops.json".into());
    let doc = serde_json::json!({
        "device": g.name(), "commit": switchyard::GIT_COMMIT,
        "ceilings": { "copy_bytes_per_s": ceil_bw, "bf16_gemm_flops": ceil_flops },
        "results": out,
    });
    match std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()) {
        Ok(()) => println!("wrote {path}"),
        Err(e) => println!("could not write {path}: {e}"),
    }
    g.check().expect("no CUDA errors");
}
