//! One Switch MoE layer, forward + backward, on CUDA at Switch-Base-like
//! sizes (d 768, d_ff 3072, 16k tokens; E in {8, 64, 128}, top-1 and top-2,
//! capacity factor 1.25 and dropless), timed phase by phase with CUDA events:
//!
//! - router:   fp32 logits (cuBLAS), the routing kernels; backward: router_bwd
//!   and the two fp32 gradient matmuls
//! - dispatch: gather into expert rows; backward: gather-sum back
//! - experts:  grouped GEMM + bias + GELU, grouped GEMM + bias; backward: both
//!   input gradients (GELU' fused), both weight gradients, bias gradients
//! - combine:  gate-weighted gather; backward: dye and the gate gradients
//!
//! It prints each phase's median time, the share of router + dispatch +
//! combine in the layer (target: under 10%), and the expert phase's TFLOP/s
//! (6 GEMMs of 2 * rows * d * d_ff FLOPs, rows = kept assignments) against
//! cuBLAS running the same six GEMMs densely on `rows` tokens (target: at
//! least 70%). Criterion times the whole layer per configuration. Results go
//! to `$SWITCHYARD_BENCH_JSON` (default `target/cuda_moe.json`).
//!
//! `SWITCHYARD_BENCH_SMOKE=1` shrinks every size (256 tokens, d 64, d_ff 128)
//! and skips criterion, to check that the benchmark runs, e.g. on the SIMT
//! emulator; its numbers mean nothing. Without a GPU it prints "skipped: cuda_moe: no CUDA device".

use std::time::Duration;

use criterion::Criterion;
use switchyard::backend::cuda::{self, Cuda, CudaBuf};
use switchyard::backend::{Backend, Gemm, Grouped, RouterParams, RouterStats, Routing};
use switchyard::config::capacity;

/// Sizes of one run: tokens, d_model, d_ff.
#[derive(Clone, Copy)]
struct Sizes {
    n: usize,
    d: usize,
    f: usize,
}

/// One configuration: experts, top-k, capacity factor (<= 0: dropless).
#[derive(Clone, Copy)]
struct Conf {
    e: usize,
    k: usize,
    cf: f64,
}

impl Conf {
    fn label(&self) -> String {
        let cap = if self.cf > 0.0 { format!("cf {}", self.cf) } else { "dropless".into() };
        format!("E{} top-{} {cap}", self.e, self.k)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    RouterFwd,
    DispatchFwd,
    ExpertFwd,
    CombineFwd,
    CombineBwd,
    ExpertBwd,
    DispatchBwd,
    RouterBwd,
}

const PHASES: [Phase; 8] = [
    Phase::RouterFwd,
    Phase::DispatchFwd,
    Phase::ExpertFwd,
    Phase::CombineFwd,
    Phase::CombineBwd,
    Phase::ExpertBwd,
    Phase::DispatchBwd,
    Phase::RouterBwd,
];

/// Every buffer of one layer (shapes as in `src/model/acts.rs`).
struct Layer {
    s: Sizes,
    c: Conf,
    rp: RouterParams,
    x: CudaBuf,
    wr: CudaBuf,
    logits: CudaBuf,
    r: Routing<Cuda>,
    xe: CudaBuf,
    he: CudaBuf,
    ae: CudaBuf,
    ye: CudaBuf,
    out: CudaBuf,
    w: [CudaBuf; 4],
    dout: CudaBuf,
    dye: CudaBuf,
    dhe: CudaBuf,
    dxe: CudaBuf,
    dgate: CudaBuf,
    dlogits: CudaBuf,
    dx: CudaBuf,
    gw: [CudaBuf; 5],
}

/// Deterministic pseudo-random values in `[-scale, scale)` (SplitMix64 of the
/// index: a structured pattern would correlate the router's logits and skew
/// the routing; zeros would run faster).
fn filled(g: &Cuda, n: usize, seed: u64, scale: f32) -> CudaBuf {
    let v: Vec<f32> = (0..n as u64)
        .map(|i| {
            let mut z = (seed << 40).wrapping_add(i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 40) as f32 / 8_388_608.0 - 1.0
        })
        .map(|u| u * scale)
        .collect();
    let mut b = g.alloc(n, "bench input").unwrap();
    g.upload(&mut b, &v);
    b
}

impl Layer {
    fn new(g: &Cuda, s: Sizes, c: Conf) -> Layer {
        let Sizes { n, d, f } = s;
        let (e, k) = (c.e, c.k);
        let rows = n * k;
        let a = |len: usize| g.alloc(len, "bench buffer").unwrap();
        let rp = RouterParams {
            n_tokens: n,
            n_experts: e,
            top_k: k,
            capacity: capacity(c.cf, k, n, e).min(n),
            normalize_gates: k > 1,
            aux_coef: 0.01,
            z_coef: 0.001,
        };
        let init = (1.0 / d as f32).sqrt();
        let mut w = [
            filled(g, e * d * f, 3, init),
            filled(g, e * f, 4, 0.1),
            filled(g, e * f * d, 5, (1.0 / f as f32).sqrt()),
            filled(g, e * d, 6, 0.1),
        ];
        g.prepare_bf16(&mut w[0]);
        g.prepare_bf16(&mut w[2]);
        Layer {
            s,
            c,
            rp,
            x: filled(g, n * d, 1, 1.0),
            wr: filled(g, d * e, 2, 0.05),
            logits: a(n * e),
            r: Routing::new(g, n, e, k).unwrap(),
            xe: a(rows * d),
            he: a(rows * f),
            ae: a(rows * f),
            ye: a(rows * d),
            out: a(n * d),
            w,
            dout: filled(g, n * d, 7, 1.0),
            dye: a(rows * d),
            dhe: a(rows * f),
            dxe: a(rows * d),
            dgate: a(rows),
            dlogits: a(n * e),
            dx: a(n * d),
            gw: [a(e * d * f), a(e * f), a(e * f * d), a(e * d), a(d * e)],
        }
    }

    fn run(&mut self, g: &Cuda, p: Phase) {
        let Sizes { n, d, f } = self.s;
        let e = self.c.e;
        let [w1, b1, w2, b2] = &self.w;
        let [gw1, gb1, gw2, gb2, gwr] = &mut self.gw;
        match p {
            Phase::RouterFwd => {
                g.matmul(&mut self.logits, &self.x, &self.wr, Gemm::new(n, d, e).fp32());
                g.router_fwd(&mut self.r, &self.logits, &self.rp);
            }
            Phase::DispatchFwd => g.dispatch_fwd(&mut self.xe, &self.x, &self.r, d),
            Phase::ExpertFwd => {
                g.grouped_matmul_gelu(
                    &mut self.he,
                    &mut self.ae,
                    &self.xe,
                    w1,
                    b1,
                    &self.r.offsets,
                    Grouped { e, k: d, n: f },
                );
                g.grouped_matmul(&mut self.ye, &self.ae, w2, b2, &self.r.offsets, Grouped { e, k: f, n: d });
            }
            Phase::CombineFwd => g.combine_fwd(&mut self.out, &self.ye, &self.r, d),
            Phase::CombineBwd => g.combine_bwd(&mut self.dye, &mut self.dgate, &self.dout, &self.ye, &self.r, d),
            Phase::ExpertBwd => {
                let (dy, act, pre, off) = (&self.dye, &self.ae, &self.he, &self.r.offsets);
                g.grouped_matmul_bwd_gelu(&mut self.dhe, gw2, gb2, dy, act, w2, pre, off, Grouped { e, k: f, n: d });
                g.grouped_matmul_bwd(&mut self.dxe, gw1, gb1, &self.dhe, &self.xe, w1, off, Grouped { e, k: d, n: f });
            }
            Phase::DispatchBwd => {
                g.zero(&mut self.dx);
                g.dispatch_bwd(&mut self.dx, &self.dxe, &self.r, d);
            }
            Phase::RouterBwd => {
                g.router_bwd(&mut self.dlogits, &self.dgate, &self.logits, &self.r, &self.rp, 1.0);
                g.matmul(gwr, &self.x, &self.dlogits, Gemm::new(d, n, e).ta().add().fp32());
                g.matmul(&mut self.dx, &self.dlogits, &self.wr, Gemm::new(n, e, d).tb().add().fp32());
            }
        }
    }

    fn layer(&mut self, g: &Cuda) {
        for p in PHASES {
            self.run(g, p);
        }
    }
}

/// The same six GEMMs as the expert phase, dense over `rows` tokens (cuBLAS,
/// bf16 operands prepared so no cast is timed).
struct Dense {
    rows: usize,
    s: Sizes,
    ins: [CudaBuf; 5],
    outs: [CudaBuf; 6],
}

impl Dense {
    fn new(g: &Cuda, s: Sizes, rows: usize) -> Dense {
        let Sizes { d, f, .. } = s;
        let mut ins = [
            filled(g, rows * d, 11, 1.0),
            filled(g, d * f, 12, 0.05),
            filled(g, rows * f, 13, 1.0),
            filled(g, f * d, 14, 0.05),
            filled(g, rows * d, 15, 1.0),
        ];
        for b in &mut ins {
            g.prepare_bf16(b);
        }
        let a = |len: usize| g.alloc(len, "dense output").unwrap();
        Dense { rows, s, ins, outs: [a(rows * f), a(rows * d), a(rows * f), a(f * d), a(rows * d), a(d * f)] }
    }

    fn run(&mut self, g: &Cuda) {
        let (r, d, f) = (self.rows, self.s.d, self.s.f);
        let [x, w1, act, w2, dy] = &self.ins;
        let [h, y, dact, dw2, dx, dw1] = &mut self.outs;
        g.matmul(h, x, w1, Gemm::new(r, d, f));
        g.matmul(y, act, w2, Gemm::new(r, f, d));
        g.matmul(dact, dy, w2, Gemm::new(r, d, f).tb());
        g.matmul(dw2, act, dy, Gemm::new(f, r, d).ta().add());
        g.matmul(dx, act, w1, Gemm::new(r, f, d).tb());
        g.matmul(dw1, x, act, Gemm::new(d, r, f).ta().add());
    }
}

fn median(mut t: Vec<f64>) -> f64 {
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[t.len() / 2]
}

fn time(g: &Cuda, repeats: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..2 {
        f();
    }
    median((0..repeats).map(|_| g.time_ms(1, &mut f).expect("timing")).collect())
}

fn main() {
    if let Err(e) = cuda::probe(0) {
        if std::env::var_os("SWITCHYARD_REQUIRE_GPU").is_some() {
            panic!("SWITCHYARD_REQUIRE_GPU is set but the GPU is unavailable: {e}");
        }
        println!("skipped: cuda_moe: no CUDA device ({e})");
        return;
    }
    let g = Cuda::new(0).expect("device opens");
    let smoke = std::env::var_os("SWITCHYARD_BENCH_SMOKE").is_some();
    let sizes = if smoke { Sizes { n: 256, d: 64, f: 128 } } else { Sizes { n: 16 * 1024, d: 768, f: 3072 } };
    let repeats = if smoke { 1 } else { 10 };
    let confs: Vec<Conf> = [8, 64, 128]
        .iter()
        .flat_map(|&e| [1, 2].map(move |k| [1.25, 0.0].map(move |cf| Conf { e, k, cf })))
        .flatten()
        .collect();
    let mut crit = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(800))
        .sample_size(10);
    let mut results = Vec::new();
    println!(
        "\n{:<22} {:>7} {:>6} | {:>7} {:>7} {:>7} {:>7} | {:>8} {:>7} | {:>9} {:>9} {:>6}",
        "layer (fwd+bwd)",
        "rows",
        "drop%",
        "router",
        "disp",
        "experts",
        "combine",
        "layer ms",
        "r+d+c%",
        "exp TF/s",
        "cuBLAS",
        "ratio"
    );
    for c in confs {
        let mut l = Layer::new(&g, sizes, c);
        l.layer(&g);
        g.check().expect("no CUDA errors in the layer");
        let kept = g.download_i(&l.r.offsets)[c.e] as usize;
        let stats = g.download(&l.r.stats);
        let dropped = stats[RouterStats::dropped(c.e)] as f64 / (sizes.n * c.k) as f64;
        let ms: Vec<(Phase, f64)> = PHASES.iter().map(|&p| (p, time(&g, repeats, || l.run(&g, p)))).collect();
        let sum = |ps: &[Phase]| ms.iter().filter(|(p, _)| ps.contains(p)).map(|(_, t)| t).sum::<f64>();
        let router = sum(&[Phase::RouterFwd, Phase::RouterBwd]);
        let dispatch = sum(&[Phase::DispatchFwd, Phase::DispatchBwd]);
        let experts = sum(&[Phase::ExpertFwd, Phase::ExpertBwd]);
        let combine = sum(&[Phase::CombineFwd, Phase::CombineBwd]);
        let layer = router + dispatch + experts + combine;
        let flops = 6.0 * 2.0 * (kept * sizes.d * sizes.f) as f64;
        let mut dense = Dense::new(&g, sizes, kept.max(1));
        let dense_ms = time(&g, repeats, || dense.run(&g));
        let (exp_tf, dense_tf) = (flops / (experts / 1e3) / 1e12, flops / (dense_ms / 1e3) / 1e12);
        let overhead = (router + dispatch + combine) / layer;
        println!(
            "{:<22} {:>7} {:>5.1}% | {:>7.3} {:>7.3} {:>7.3} {:>7.3} | {:>8.3} {:>6.1}% | {:>9.1} {:>9.1} {:>5.0}%",
            c.label(),
            kept,
            100.0 * dropped,
            router,
            dispatch,
            experts,
            combine,
            layer,
            100.0 * overhead,
            exp_tf,
            dense_tf,
            100.0 * exp_tf / dense_tf
        );
        if !smoke {
            let mut group = crit.benchmark_group("moe_layer_fwd_bwd");
            group.bench_function(c.label(), |b| {
                b.iter_custom(|iters| {
                    let ms = g.time_ms(iters as usize, || l.layer(&g)).expect("timing");
                    Duration::from_secs_f64(ms / 1e3)
                })
            });
            group.finish();
        }
        results.push(serde_json::json!({
            "experts": c.e, "top_k": c.k, "capacity_factor": c.cf, "tokens": sizes.n, "d_model": sizes.d,
            "d_ff": sizes.f, "kept_rows": kept, "dropped_frac": dropped,
            "phase_ms": ms.iter().map(|(p, t)| (format!("{p:?}"), serde_json::json!(t))).collect::<serde_json::Map<_, _>>(),
            "router_ms": router, "dispatch_ms": dispatch, "experts_ms": experts, "combine_ms": combine, "layer_ms": layer,
            "router_dispatch_combine_frac": overhead, "expert_tflops": exp_tf, "dense_cublas_tflops": dense_tf,
            "expert_vs_dense": exp_tf / dense_tf,
        }));
        g.check().expect("no CUDA errors");
    }
    let path = std::env::var("SWITCHYARD_BENCH_JSON").unwrap_or_else(|_| "target/cuda_moe.json".into());
    let doc = serde_json::json!({
        "device": g.name(), "commit": switchyard::GIT_COMMIT, "smoke": smoke,
        "targets": { "router_dispatch_combine_frac_max": 0.10, "expert_vs_dense_min": 0.70 },
        "results": results,
    });
    match std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()) {
        Ok(()) => println!("wrote {path}"),
        Err(e) => println!("could not write {path}: {e}"),
    }
}
