//! The MoE kernels against their CPU references (DESIGN.md §6): routing,
//! router backward, jitter, dispatch/combine and the grouped expert GEMM, on
//! fresh seeded random inputs with outputs poisoned before each launch.
//!
//! Bounds:
//! - Routing decisions (experts, slots, rows, offsets, counts) given the same
//!   fp32 logits: identical. They are integer functions of the logits' order.
//! - fp32 router values (probabilities, gates, statistics, dlogits): 1e-5
//!   relative (DESIGN.md §6; only expf/logf and summation order differ).
//! - Jitter, dispatch, dispatch backward, combine and the dye half of the
//!   combine backward: the same bits (copies and the CPU's operation order).
//! - Grouped GEMM: the CPU reference runs on the same bf16-rounded operands,
//!   so only fp32 summation order differs: 1e-4 (as the dense matmul test);
//!   bias gradients sum fp32 values: 1e-5. The fused GELU is the CPU's
//!   function bit for bit on the kernel's own pre-activation.
//!
//! Without a GPU each test prints "skipped: ... no CUDA device" and passes;
//! `scripts/test.sh` counts the skips. `scripts/emu-test.sh` runs them on the
//! SIMT emulator (tests/emu/README.md).

mod common;

use common::gpu::{assert_bits, assert_close, bf16_copy, bf16_round, gpu, poisoned, poisoned_i, up, up_i};
use rand::Rng;
use switchyard::backend::cpu::{activation::gelu, router::jitter_mult, Cpu};
use switchyard::backend::cuda::{self, Cuda};
use switchyard::backend::{Backend, Grouped, RouterParams, RouterStats, Routing};
use switchyard::config::capacity;
use switchyard::Config;

/// How a routing case's logits are drawn.
#[derive(Clone, Copy, Debug)]
enum Logits {
    /// Standard normal times 2.
    Normal,
    /// Integers 0..3: exact ties everywhere (ties go to the lower index).
    Ties,
    /// Only the first quarter of the experts is ever chosen: empty experts.
    Skewed,
    /// Expert 0 wins almost always (with ties among the rest): one full expert.
    OneHot,
}

/// One routing case: tokens, experts, top-k, capacity factor (<= 0:
/// dropless), normalized gates, logits.
type Case = (usize, usize, usize, f64, bool, Logits);

const ROUTING_CASES: [Case; 11] = [
    (1, 1, 1, 0.0, false, Logits::Normal),
    (7, 3, 2, 1.0, true, Logits::Normal),
    (1037, 8, 1, 1.25, false, Logits::Normal),
    (1037, 8, 2, 1.25, false, Logits::Ties),
    (777, 64, 2, 0.5, true, Logits::Normal),
    (513, 100, 1, 0.0, false, Logits::Skewed),
    (600, 16, 2, 2.0, false, Logits::OneHot),
    (300, 1024, 8, 1.0, true, Logits::Normal),
    (2000, 33, 3, 0.0, false, Logits::Ties),
    // Every register width of the router kernels: e <= 32, 64, 128, 256, 512, 1024.
    (400, 200, 2, 1.25, true, Logits::Normal),
    (333, 500, 1, 1.0, false, Logits::Ties),
];

fn logits(r: &mut impl Rng, n: usize, e: usize, kind: Logits) -> Vec<f32> {
    (0..n * e)
        .map(|i| {
            let x = i % e;
            match kind {
                Logits::Normal => 2.0 * r.random_range(-1.7f32..1.7),
                Logits::Ties => r.random_range(0..3) as f32,
                Logits::Skewed => r.random_range(-1.0f32..1.0) - if x >= e.div_ceil(4) { 8.0 } else { 0.0 },
                Logits::OneHot => r.random_range(0..2) as f32 + if x == 0 { 6.0 } else { 0.0 },
            }
        })
        .collect()
}

fn router_params((n, e, k, cf, normalize, _): Case) -> RouterParams {
    RouterParams {
        n_tokens: n,
        n_experts: e,
        top_k: k,
        capacity: capacity(cf, k, n, e).min(n),
        normalize_gates: normalize,
        aux_coef: 0.01,
        z_coef: 0.001,
    }
}

/// The CPU routing of `z`.
fn cpu_routing(c: &Cpu, z: &[f32], rp: &RouterParams) -> Routing<Cpu> {
    let mut r = Routing::new(c, rp.n_tokens, rp.n_experts, rp.top_k).unwrap();
    c.router_fwd(&mut r, &z.to_vec(), rp);
    r
}

/// A CPU routing on the GPU, field by field.
fn upload(g: &Cuda, r: &Routing<Cpu>) -> Routing<Cuda> {
    Routing {
        n: r.n,
        e: r.e,
        k: r.k,
        probs: up(g, &r.probs),
        expert: up_i(g, &r.expert),
        gate: up(g, &r.gate),
        row: up_i(g, &r.row),
        row_assign: up_i(g, &r.row_assign),
        offsets: up_i(g, &r.offsets),
        stats: up(g, &r.stats),
    }
}

/// GPU routing buffers filled with NaN (-1 for indices): every element must be written.
fn poisoned_routing(g: &Cuda, n: usize, e: usize, k: usize) -> Routing<Cuda> {
    Routing {
        n,
        e,
        k,
        probs: poisoned(g, n * e),
        expert: poisoned_i(g, n * k),
        gate: poisoned(g, n * k),
        row: poisoned_i(g, n * k),
        row_assign: poisoned_i(g, n * k),
        offsets: poisoned_i(g, e + 1),
        stats: poisoned(g, RouterStats::len(e)),
    }
}

#[test]
fn routing_matches_the_cpu_exactly() {
    let Some((g, c)) = gpu("routing_matches_the_cpu_exactly") else { return };
    let mut r = common::rng(401);
    for case in ROUTING_CASES {
        let (n, e, k, ..) = case;
        let rp = router_params(case);
        let z = logits(&mut r, n, e, case.5);
        let want = cpu_routing(&c, &z, &rp);
        let mut got = poisoned_routing(&g, n, e, k);
        g.router_fwd(&mut got, &up(&g, &z), &rp);
        g.check().unwrap();
        let what = format!("{case:?} (capacity {})", rp.capacity);
        assert_eq!(g.download_i(&got.expert), want.expert, "experts {what}");
        assert_eq!(g.download_i(&got.offsets), want.offsets, "offsets {what}");
        assert_eq!(g.download_i(&got.row), want.row, "rows (slots and the dropped set) {what}");
        assert_eq!(g.download_i(&got.row_assign), want.row_assign, "row_assign {what}");
        assert_close(&format!("probs {what}"), &g.download(&got.probs), &want.probs, 1e-5);
        assert_close(&format!("gates {what}"), &g.download(&got.gate), &want.gate, 1e-5);
        let s = g.download(&got.stats);
        let counts = |v: &[f32]| {
            [v[RouterStats::assigned(e)..RouterStats::kept(e) + e].to_vec(), vec![v[RouterStats::dropped(e)]]].concat()
        };
        assert_eq!(counts(&s), counts(&want.stats), "assigned/kept/dropped counts {what}");
        assert_close(
            &format!("P sums {what}"),
            &s[RouterStats::prob_sum(e)..][..e],
            &want.stats[RouterStats::prob_sum(e)..][..e],
            1e-5,
        );
        for (slot, name) in [
            (RouterStats::entropy_sum(e), "entropy"),
            (RouterStats::lse_sq_sum(e), "lse^2"),
            (RouterStats::aux(e), "aux"),
            (RouterStats::z(e), "z"),
        ] {
            let err = common::rel_err(s[slot] as f64, want.stats[slot] as f64, 1e-12);
            assert!(err < 1e-5, "{name} {what}: gpu {} cpu {} ({err:.2e})", s[slot], want.stats[slot]);
        }
        if matches!(case.5, Logits::OneHot) {
            assert!(want.stats[RouterStats::dropped(e)] > 0.0, "the one-hot case must fill an expert");
        }
        if matches!(case.5, Logits::Skewed) {
            assert!(
                want.stats[RouterStats::assigned(e)..][..e].contains(&0.0),
                "the skewed case must leave experts empty"
            );
        }
    }
}

#[test]
fn router_backward_matches_the_cpu() {
    let Some((g, c)) = gpu("router_backward_matches_the_cpu") else { return };
    let mut r = common::rng(402);
    for case in ROUTING_CASES {
        let (n, e, k, ..) = case;
        let rp = router_params(case);
        let z = logits(&mut r, n, e, case.5);
        let rt = cpu_routing(&c, &z, &rp);
        // Dropped assignments get no gate gradient (combine_bwd writes 0).
        let dgate: Vec<f32> =
            common::normal(&mut r, n * k).iter().zip(&rt.row).map(|(&d, &row)| if row < 0 { 0.0 } else { d }).collect();
        let dloss = 0.5;
        let mut want = vec![0.0; n * e];
        c.router_bwd(&mut want, &dgate, &z, &rt, &rp, dloss);
        let mut got = poisoned(&g, n * e);
        g.router_bwd(&mut got, &up(&g, &dgate), &up(&g, &z), &upload(&g, &rt), &rp, dloss);
        g.check().unwrap();
        assert_close(&format!("dlogits {case:?}"), &g.download(&got), &want, 1e-5);
    }
}

#[test]
fn jitter_is_the_cpu_bit_for_bit() {
    let Some((g, c)) = gpu("jitter_is_the_cpu_bit_for_bit") else { return };
    let mut r = common::rng(403);
    for (n, eps, seed) in [(1, 0.01f32, 0u64), (1000, 0.3, 17), (100_003, 0.01, u64::MAX - 5)] {
        let x = common::normal(&mut r, n);
        let (mut out, mut mult) = (vec![0.0; n], vec![0.0; n]);
        c.router_jitter(&mut out, &mut mult, &x, eps, seed);
        let (mut gout, mut gmult) = (poisoned(&g, n), poisoned(&g, n));
        g.router_jitter(&mut gout, &mut gmult, &up(&g, &x), eps, seed);
        assert_bits(&format!("jitter mult n={n}"), &g.download(&gmult), &mult);
        assert_bits(&format!("jitter out n={n}"), &g.download(&gout), &out);
        let dout = common::normal(&mut r, n);
        let mut dx = vec![0.0; n];
        c.router_jitter_bwd(&mut dx, &dout, &mult);
        let mut gdx = poisoned(&g, n);
        g.router_jitter_bwd(&mut gdx, &up(&g, &dout), &gmult);
        assert_bits(&format!("jitter bwd n={n}"), &g.download(&gdx), &dx);
        g.check().unwrap();
    }
    assert_eq!(jitter_mult(3, 0, 0.0), 1.0, "eps 0 is the identity");
}

#[test]
fn dispatch_and_combine_match_the_cpu() {
    let Some((g, c)) = gpu("dispatch_and_combine_match_the_cpu") else { return };
    let mut r = common::rng(404);
    // Top-2 at capacity factor 1.0: some assignments dropped, some tokens with none kept.
    let case: Case = (1037, 8, 2, 1.0, false, Logits::Normal);
    let (n, e, k, ..) = case;
    let rp = router_params(case);
    let rt = cpu_routing(&c, &logits(&mut r, n, e, case.5), &rp);
    let rows = n * k;
    let grt = upload(&g, &rt);
    let used = rt.offsets[e] as usize;
    assert!(used < rows, "the case must drop assignments");
    for d in [1, 7, 64, 768] {
        let x = common::normal(&mut r, n * d);
        let mut xe = vec![f32::NAN; rows * d];
        c.dispatch_fwd(&mut xe, &x, &rt, d);
        let mut gxe = poisoned(&g, rows * d);
        g.dispatch_fwd(&mut gxe, &up(&g, &x), &grt, d);
        assert_bits(&format!("dispatch_fwd d={d}"), &g.download(&gxe), &xe);
        let what = format!("dispatch_fwd bf16 copy d={d}");
        assert_bits(&what, &bf16_copy(&g, &gxe, used * d, &what), &bf16_round(&xe[..used * d]));

        let (dxe, dx0) = (common::normal(&mut r, rows * d), common::normal(&mut r, n * d));
        let mut dx = dx0.clone();
        c.dispatch_bwd(&mut dx, &dxe, &rt, d);
        let mut gdx = up(&g, &dx0);
        g.dispatch_bwd(&mut gdx, &up(&g, &dxe), &grt, d);
        assert_bits(&format!("dispatch_bwd d={d}"), &g.download(&gdx), &dx);

        let ye = common::normal(&mut r, rows * d);
        let mut out = vec![0.0; n * d];
        c.combine_fwd(&mut out, &ye, &rt, d);
        let gye = up(&g, &ye);
        let mut gout = poisoned(&g, n * d);
        g.combine_fwd(&mut gout, &gye, &grt, d);
        assert_bits(&format!("combine_fwd d={d}"), &g.download(&gout), &out);

        let dout = common::normal(&mut r, n * d);
        let (mut dye, mut dgate) = (vec![f32::NAN; rows * d], vec![0.0; rows]);
        c.combine_bwd(&mut dye, &mut dgate, &dout, &ye, &rt, d);
        let (mut gdye, mut gdgate) = (poisoned(&g, rows * d), poisoned(&g, rows));
        g.combine_bwd(&mut gdye, &mut gdgate, &up(&g, &dout), &gye, &grt, d);
        assert_bits(&format!("combine_bwd dye d={d}"), &g.download(&gdye), &dye);
        let got_dgate = g.download(&gdgate);
        assert_close(&format!("combine_bwd dgate d={d}"), &got_dgate, &dgate, 1e-5);
        for (a, &row) in rt.row.iter().enumerate() {
            if row < 0 {
                assert_eq!(got_dgate[a].to_bits(), 0, "dropped assignment {a} must get dgate = +0");
            }
        }
        g.check().unwrap();
    }
}

/// One grouped-GEMM case: experts, in dim, out dim, rows per expert, and
/// unused rows after the segments.
type GemmCase = (usize, usize, usize, Vec<usize>, usize);

fn gemm_cases(r: &mut impl Rng) -> Vec<GemmCase> {
    let random: Vec<usize> = (0..8).map(|i| if i % 3 == 1 { 0 } else { r.random_range(1..200) }).collect();
    vec![
        (1, 8, 8, vec![1], 0),
        (4, 40, 72, vec![37, 0, 130, 5], 11),
        (3, 128, 512, vec![0, 300, 0], 0),
        (8, 200, 136, random, 3),
        (2, 64, 264, vec![129, 255], 1),
    ]
}

fn offsets_of(counts: &[usize]) -> Vec<i32> {
    std::iter::once(0)
        .chain(counts.iter().scan(0, |s, &c| {
            *s += c;
            Some(*s as i32)
        }))
        .collect()
}

fn used_rows(v: &[f32], rows: usize, width: usize) -> &[f32] {
    &v[..rows * width]
}

fn assert_untouched(what: &str, v: &[f32], from: usize) {
    assert!(v[from..].iter().all(|x| x.is_nan()), "{what}: rows past the segments were written");
}

#[test]
fn grouped_gemm_forward_matches_the_cpu() {
    let Some((g, c)) = gpu("grouped_gemm_forward_matches_the_cpu") else { return };
    let mut r = common::rng(405);
    for (e, k, n, counts, slack) in gemm_cases(&mut r) {
        let used: usize = counts.iter().sum();
        let m = used + slack;
        let offsets = offsets_of(&counts);
        let x = bf16_round(&common::normal(&mut r, m * k));
        let w: Vec<f32> = bf16_round(&common::normal(&mut r, e * k * n).iter().map(|v| v * 0.2).collect::<Vec<_>>());
        let b = common::normal(&mut r, e * n);
        let (gx, gw, gb, goff) = (up(&g, &x), up(&g, &w), up(&g, &b), up_i(&g, &offsets));
        let what = format!("E={e} {k}x{n} rows {counts:?} + {slack}");

        let mut want = vec![f32::NAN; m * n];
        c.grouped_matmul(&mut want, &x, &w, &b, &offsets, Grouped { e, k, n });
        let mut got = poisoned(&g, m * n);
        g.grouped_matmul(&mut got, &gx, &gw, &gb, &goff, Grouped { e, k, n });
        g.check().unwrap();
        let got = g.download(&got);
        assert_close(&format!("grouped fwd {what}"), used_rows(&got, used, n), used_rows(&want, used, n), 1e-4);
        assert_untouched(&format!("grouped fwd {what}"), &got, used * n);

        // Fused bias + GELU: act is exactly the CPU's gelu of the kernel's own pre.
        let (mut pre, mut act) = (poisoned(&g, m * n), poisoned(&g, m * n));
        g.grouped_matmul_gelu(&mut pre, &mut act, &gx, &gw, &gb, &goff, Grouped { e, k, n });
        g.check().unwrap();
        let (gpre, gact) = (g.download(&pre), g.download(&act));
        assert_close(
            &format!("grouped fwd+gelu pre {what}"),
            used_rows(&gpre, used, n),
            used_rows(&want, used, n),
            1e-4,
        );
        let gelu_of_pre: Vec<f32> = gpre[..used * n].iter().map(|&p| gelu(p)).collect();
        assert_bits(&format!("grouped fwd+gelu act {what}"), used_rows(&gact, used, n), &gelu_of_pre);
        assert_untouched(&format!("grouped fwd+gelu act {what}"), &gact, used * n);
        let tag = format!("grouped fwd+gelu bf16 copy {what}");
        assert_bits(&tag, &bf16_copy(&g, &act, used * n, &tag), &bf16_round(&gelu_of_pre));
    }
}

#[test]
fn grouped_gemm_backward_matches_the_cpu() {
    let Some((g, c)) = gpu("grouped_gemm_backward_matches_the_cpu") else { return };
    let mut r = common::rng(406);
    for (e, k, n, counts, slack) in gemm_cases(&mut r) {
        let used: usize = counts.iter().sum();
        let m = used + slack;
        let offsets = offsets_of(&counts);
        let x = bf16_round(&common::normal(&mut r, m * k));
        let w: Vec<f32> = bf16_round(&common::normal(&mut r, e * k * n).iter().map(|v| v * 0.2).collect::<Vec<_>>());
        let dy = bf16_round(&common::normal(&mut r, m * n));
        let pre = common::normal(&mut r, m * k);
        let (dw0, db0) = (common::normal(&mut r, e * k * n), common::normal(&mut r, e * n));
        let (gx, gw, gdy, gpre, goff) = (up(&g, &x), up(&g, &w), up(&g, &dy), up(&g, &pre), up_i(&g, &offsets));
        let what = format!("E={e} {k}x{n} rows {counts:?} + {slack}");
        for fused in [false, true] {
            let (mut dx, mut dw, mut db) = (vec![f32::NAN; m * k], dw0.clone(), db0.clone());
            let (mut gdx, mut gdw, mut gdb) = (poisoned(&g, m * k), up(&g, &dw0), up(&g, &db0));
            if fused {
                c.grouped_matmul_bwd_gelu(&mut dx, &mut dw, &mut db, &dy, &x, &w, &pre, &offsets, Grouped { e, k, n });
                g.grouped_matmul_bwd_gelu(
                    &mut gdx,
                    &mut gdw,
                    &mut gdb,
                    &gdy,
                    &gx,
                    &gw,
                    &gpre,
                    &goff,
                    Grouped { e, k, n },
                );
            } else {
                c.grouped_matmul_bwd(&mut dx, &mut dw, &mut db, &dy, &x, &w, &offsets, Grouped { e, k, n });
                g.grouped_matmul_bwd(&mut gdx, &mut gdw, &mut gdb, &gdy, &gx, &gw, &goff, Grouped { e, k, n });
            }
            g.check().unwrap();
            let tag = if fused { "bwd+gelu" } else { "bwd" };
            let got_dx = g.download(&gdx);
            assert_close(
                &format!("grouped {tag} dx {what}"),
                used_rows(&got_dx, used, k),
                used_rows(&dx, used, k),
                1e-4,
            );
            assert_untouched(&format!("grouped {tag} dx {what}"), &got_dx, used * k);
            assert_close(&format!("grouped {tag} dw {what}"), &g.download(&gdw), &dw, 1e-4);
            assert_close(&format!("grouped {tag} db {what}"), &g.download(&gdb), &db, 1e-5);
            if fused {
                let label = format!("grouped {tag} bf16 copy {what}");
                assert_bits(&label, &bf16_copy(&g, &gdx, used * k, &label), &bf16_round(&got_dx[..used * k]));
            }
        }
    }
}

#[test]
fn moe_kernels_refuse_what_they_do_not_support() {
    // Config-time refusals need no GPU.
    let mut cfg = Config::preset("tiny").unwrap();
    cuda::check_config(&cfg).expect("the tiny MoE preset runs on CUDA");
    cfg.model.n_experts = cuda::MAX_EXPERTS + 1;
    let e = cuda::check_config(&cfg).unwrap_err().to_string();
    assert!(e.contains("model.n_experts = 1025") && e.contains("at most 1024") && e.contains("--device cpu"), "{e}");
    cfg.model.n_experts = 16;
    cfg.model.top_k = cuda::MAX_TOP_K + 1;
    let e = cuda::check_config(&cfg).unwrap_err().to_string();
    assert!(e.contains("model.top_k = 9") && e.contains("up to 8"), "{e}");
    cfg.model.top_k = 2;
    cfg.model.d_ff = 100;
    let e = cuda::check_config(&cfg).unwrap_err().to_string();
    assert!(e.contains("model.d_ff = 100") && e.contains("multiple of 8") && e.contains("104"), "{e}");
    // Dense models do not route, so their d_ff is free (cuBLAS takes any shape).
    cfg.model.moe_every = 0;
    cuda::check_config(&cfg).expect("dense d_ff 100 is fine");
    // On a device, a launch with unsupported shapes is refused, not run.
    let Some((g, _)) = gpu("moe_kernels_refuse_what_they_do_not_support (device part)") else { return };
    let offsets = up_i(&g, &[0, 3]);
    let mut out = poisoned(&g, 3 * 12);
    g.grouped_matmul(
        &mut out,
        &up(&g, &[0.5; 3 * 12]),
        &up(&g, &[0.5; 12 * 12]),
        &up(&g, &[0.0; 12]),
        &offsets,
        Grouped { e: 1, k: 12, n: 12 },
    );
    let e = g.check().unwrap_err().to_string();
    assert!(e.contains("multiples of 8"), "{e}");
    let fresh = Cuda::new(0).unwrap();
    let rp = RouterParams {
        n_tokens: 4,
        n_experts: 2000,
        top_k: 1,
        capacity: 4,
        normalize_gates: false,
        aux_coef: 0.0,
        z_coef: 0.0,
    };
    let mut rt = poisoned_routing(&fresh, 4, 2000, 1);
    fresh.router_fwd(&mut rt, &up(&fresh, &vec![0.0; 8000]), &rp);
    let e = fresh.check().unwrap_err().to_string();
    assert!(e.contains("2000 experts"), "{e}");
}
