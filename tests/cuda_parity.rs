//! Every CUDA kernel against its CPU reference (DESIGN.md §6), on fresh seeded
//! random inputs, outputs poisoned (NaN) before each launch, several shapes
//! including ragged ones.
//!
//! Bounds, as relative errors `||gpu - ref|| / ||ref||`:
//! - fp32 kernels: 1e-5 (DESIGN.md §6): same formulas, only the summation
//!   order differs.
//! - bf16-operand kernels (matmul, attention): the reference is computed by
//!   the CPU from the *same bf16-rounded operands*, so only fp32 summation
//!   order and attention's bf16 P differ. Matmul: 1e-4. Attention: 2e-2
//!   (DESIGN.md §6's bf16 bound; P and dS are rounded to bf16 for the MMAs).
//!
//! Without a GPU each test prints "skipped: no CUDA device (...)" to the
//! terminal (not captured) and passes; `scripts/test.sh` counts the skips.

mod common;

use common::gpu::{assert_close, bf16_round, gpu, poisoned, up, up_i};
use rand::Rng;
use switchyard::backend::cuda::{self, AttentionShape};
use switchyard::backend::{AdamW, AttnShape, Backend, DecodeShape, Gemm};

const F32_BOUND: f64 = 1e-5;

#[test]
fn elementwise_add_matches() {
    let Some((g, c)) = gpu("elementwise_add_matches") else { return };
    let mut r = common::rng(101);
    for n in [1, 7, 1000, 65_537] {
        let (a, b) = (common::normal(&mut r, n), common::normal(&mut r, n));
        let mut want = a.clone();
        c.add_inplace(&mut want, &b);
        let mut ga = up(&g, &a);
        g.add_inplace(&mut ga, &up(&g, &b));
        g.check().unwrap();
        assert_eq!(g.download(&ga), want, "add n={n}: fp32 adds are exact, so bits must match");
    }
}

#[test]
fn activation_matches() {
    let Some((g, c)) = gpu("activation_matches") else { return };
    let mut r = common::rng(102);
    for (rows, cols) in [(1, 1), (3, 7), (65, 129), (256, 768)] {
        let n = rows * cols;
        let (x, bias, dout) = (common::normal(&mut r, n), common::normal(&mut r, cols), common::normal(&mut r, n));
        // add_bias (+=)
        let mut want = x.clone();
        c.add_bias(&mut want, &bias, rows, cols);
        let mut gx = up(&g, &x);
        g.add_bias(&mut gx, &up(&g, &bias), rows, cols);
        assert_close("add_bias", &g.download(&gx), &want, F32_BOUND);
        // bias + gelu fused
        let (mut pre, mut out) = (x.clone(), vec![0.0; n]);
        c.bias_gelu_fwd(&mut pre, &mut out, &bias, rows, cols);
        let (mut gpre, mut gout) = (up(&g, &x), poisoned(&g, n));
        g.bias_gelu_fwd(&mut gpre, &mut gout, &up(&g, &bias), rows, cols);
        assert_close("bias_gelu pre", &g.download(&gpre), &pre, F32_BOUND);
        assert_close("bias_gelu out", &g.download(&gout), &out, F32_BOUND);
        // gelu fwd / bwd
        let mut want = vec![0.0; n];
        c.gelu_fwd(&mut want, &x, n);
        let mut go = poisoned(&g, n);
        g.gelu_fwd(&mut go, &up(&g, &x), n);
        assert_close("gelu_fwd", &g.download(&go), &want, F32_BOUND);
        c.gelu_bwd(&mut want, &dout, &x, n);
        let mut gd = poisoned(&g, n);
        g.gelu_bwd(&mut gd, &up(&g, &dout), &up(&g, &x), n);
        assert_close("gelu_bwd", &g.download(&gd), &want, F32_BOUND);
        // bias gradient (+=, onto a random start)
        let start = common::normal(&mut r, cols);
        let mut want = start.clone();
        c.bias_grad(&mut want, &dout, rows, cols);
        let mut gdb = up(&g, &start);
        g.bias_grad(&mut gdb, &up(&g, &dout), rows, cols);
        assert_close(&format!("bias_grad {rows}x{cols}"), &g.download(&gdb), &want, F32_BOUND);
        g.check().unwrap();
    }
}

#[test]
fn layernorm_matches() {
    let Some((g, c)) = gpu("layernorm_matches") else { return };
    let mut r = common::rng(103);
    for (rows, cols) in [(1, 1), (5, 3), (33, 128), (130, 769)] {
        let n = rows * cols;
        let x: Vec<f32> = common::normal(&mut r, n).iter().map(|v| v * 3.0 + 0.5).collect();
        let (w, b, dout) = (common::normal(&mut r, cols), common::normal(&mut r, cols), common::normal(&mut r, n));
        let (mut out, mut mean, mut rstd) = (vec![0.0; n], vec![0.0; rows], vec![0.0; rows]);
        c.layernorm_fwd(&mut out, &mut mean, &mut rstd, &x, &w, &b, rows, cols);
        let (gx, gw, gb) = (up(&g, &x), up(&g, &w), up(&g, &b));
        let (mut go, mut gm, mut gr) = (poisoned(&g, n), poisoned(&g, rows), poisoned(&g, rows));
        g.layernorm_fwd(&mut go, &mut gm, &mut gr, &gx, &gw, &gb, rows, cols);
        assert_close("layernorm out", &g.download(&go), &out, F32_BOUND);
        assert_close("layernorm mean", &g.download(&gm), &mean, F32_BOUND);
        assert_close("layernorm rstd", &g.download(&gr), &rstd, F32_BOUND);
        // Backward accumulates (+=) into random starting gradients.
        let (dx0, dw0, db0) = (common::normal(&mut r, n), common::normal(&mut r, cols), common::normal(&mut r, cols));
        let (mut dx, mut dw, mut db) = (dx0.clone(), dw0.clone(), db0.clone());
        c.layernorm_bwd(&mut dx, &mut dw, &mut db, &dout, &x, &w, &mean, &rstd, rows, cols);
        let (mut gdx, mut gdw, mut gdb) = (up(&g, &dx0), up(&g, &dw0), up(&g, &db0));
        g.layernorm_bwd(&mut gdx, &mut gdw, &mut gdb, &up(&g, &dout), &gx, &gw, &gm, &gr, rows, cols);
        assert_close(&format!("layernorm dx {rows}x{cols}"), &g.download(&gdx), &dx, F32_BOUND);
        assert_close(&format!("layernorm dw {rows}x{cols}"), &g.download(&gdw), &dw, F32_BOUND);
        assert_close(&format!("layernorm db {rows}x{cols}"), &g.download(&gdb), &db, F32_BOUND);
        g.check().unwrap();
    }
}

#[test]
fn embedding_matches() {
    let Some((g, c)) = gpu("embedding_matches") else { return };
    let mut r = common::rng(104);
    // Small vocabularies force repeated tokens (the backward's grouping).
    for (b, t, d, v) in [(1, 1, 1, 3), (2, 5, 7, 4), (4, 64, 128, 50), (3, 129, 65, 1000)] {
        let tokens = common::tokens(&mut r, b * t, v);
        let (wte, wpe, dout) =
            (common::normal(&mut r, v * d), common::normal(&mut r, t * d), common::normal(&mut r, b * t * d));
        let mut out = vec![0.0; b * t * d];
        c.embedding_fwd(&mut out, &tokens, &wte, &wpe, b, t, d);
        let gt = up_i(&g, &tokens);
        let mut go = poisoned(&g, b * t * d);
        g.embedding_fwd(&mut go, &gt, &up(&g, &wte), &up(&g, &wpe), b, t, d);
        assert_close("embedding_fwd", &g.download(&go), &out, F32_BOUND);
        let (dwte0, dwpe0) = (common::normal(&mut r, v * d), common::normal(&mut r, t * d));
        let (mut dwte, mut dwpe) = (dwte0.clone(), dwpe0.clone());
        c.embedding_bwd(&mut dwte, &mut dwpe, &dout, &tokens, b, t, d);
        let (mut gdwte, mut gdwpe) = (up(&g, &dwte0), up(&g, &dwpe0));
        g.embedding_bwd(&mut gdwte, &mut gdwpe, &up(&g, &dout), &gt, b, t, d);
        assert_close(&format!("embedding dwte {b}x{t}x{d}"), &g.download(&gdwte), &dwte, F32_BOUND);
        assert_close(&format!("embedding dwpe {b}x{t}x{d}"), &g.download(&gdwpe), &dwpe, F32_BOUND);
        g.check().unwrap();
    }
}

#[test]
fn cross_entropy_matches() {
    let Some((g, c)) = gpu("cross_entropy_matches") else { return };
    let mut r = common::rng(105);
    for (rows, v) in [(1, 2), (7, 33), (64, 1000), (3, 50_257)] {
        let logits: Vec<f32> = common::normal(&mut r, rows * v).iter().map(|x| x * 4.0).collect();
        let targets = common::tokens(&mut r, rows, v);
        let dloss = 1.0 / rows as f32;
        let (mut losses, mut dlogits) = (vec![0.0; rows], vec![0.0; rows * v]);
        c.cross_entropy(&mut losses, Some(&mut dlogits), &logits, &targets, rows, v, dloss);
        let (gl, gt) = (up(&g, &logits), up_i(&g, &targets));
        let (mut gloss, mut gd) = (poisoned(&g, rows), poisoned(&g, rows * v));
        g.cross_entropy(&mut gloss, Some(&mut gd), &gl, &gt, rows, v, dloss);
        assert_close(&format!("ce losses {rows}x{v}"), &g.download(&gloss), &losses, F32_BOUND);
        assert_close(&format!("ce dlogits {rows}x{v}"), &g.download(&gd), &dlogits, F32_BOUND);
        // Loss only (evaluation path).
        let mut gloss2 = poisoned(&g, rows);
        g.cross_entropy(&mut gloss2, None, &gl, &gt, rows, v, dloss);
        assert_close("ce losses (no grad)", &g.download(&gloss2), &losses, F32_BOUND);
        g.check().unwrap();
    }
}

#[test]
fn optim_matches() {
    let Some((g, c)) = gpu("optim_matches") else { return };
    let mut r = common::rng(106);
    for n in [1, 100, 20_000, 100_003] {
        let grad = common::normal(&mut r, n);
        let start = [r.random_range(0.0..2.0f32)];
        let mut acc = start.to_vec();
        c.sum_squares(&mut acc, &grad);
        let mut gacc = up(&g, &start);
        g.sum_squares(&mut gacc, &up(&g, &grad));
        assert_close(&format!("sum_squares n={n}"), &g.download(&gacc), &acc, F32_BOUND);
        // Clip active (max_norm below the norm) and inactive.
        for max_norm in [0.5f32, 1e9] {
            let h = AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, t: 3, max_norm };
            let (p0, m0) = (common::normal(&mut r, n), common::normal(&mut r, n));
            let v0: Vec<f32> = common::normal(&mut r, n).iter().map(|x| x * x).collect();
            let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
            c.adamw(&mut p, &grad, &mut m, &mut v, &acc, &h);
            let (mut gp, mut gm, mut gv) = (up(&g, &p0), up(&g, &m0), up(&g, &v0));
            g.adamw(&mut gp, &up(&g, &grad), &mut gm, &mut gv, &gacc, &h);
            assert_close("adamw param", &g.download(&gp), &p, F32_BOUND);
            assert_close("adamw m", &g.download(&gm), &m, F32_BOUND);
            assert_close("adamw v", &g.download(&gv), &v, F32_BOUND);
            // The bf16 copy the matmuls read is the rounded master weight.
            let copy: Vec<f32> = g
                .bf16_copy(&gp)
                .expect("adamw writes the bf16 copy")
                .iter()
                .map(|&b| f32::from_bits((b as u32) << 16))
                .collect();
            assert_eq!(copy, bf16_round(&g.download(&gp)), "bf16 copy is round-to-nearest-even of the master");
        }
        g.check().unwrap();
    }
}

#[test]
fn matmul_matches() {
    let Some((g, c)) = gpu("matmul_matches") else { return };
    let mut r = common::rng(107);
    for (m, k, n) in [(1, 1, 1), (7, 13, 5), (64, 128, 96), (129, 257, 65)] {
        for (ta, tb, acc) in [(false, false, false), (true, false, true), (false, true, false), (true, true, true)] {
            let a = bf16_round(&common::normal(&mut r, m * k));
            let b = bf16_round(&common::normal(&mut r, k * n));
            let c0 = common::normal(&mut r, m * n);
            let mut want = c0.clone();
            c.matmul(&mut want, &a, &b, Gemm::from_flags(m, k, n, ta, tb, acc));
            let mut gc = if acc { up(&g, &c0) } else { poisoned(&g, m * n) };
            g.matmul(&mut gc, &up(&g, &a), &up(&g, &b), Gemm::from_flags(m, k, n, ta, tb, acc));
            let what = format!("matmul {m}x{k}x{n} ta={ta} tb={tb} acc={acc}");
            assert_close(&what, &g.download(&gc), &want, 1e-4);
        }
        g.check().unwrap();
    }
}

/// `(b, t, h, hd)`: ragged lengths (not multiples of the 64-row tiles), one
/// token, several heads, every supported head dimension.
const ATTN_SHAPES: [(usize, usize, usize, usize); 6] =
    [(1, 1, 1, 32), (2, 17, 2, 64), (1, 100, 3, 128), (2, 130, 2, 64), (1, 257, 1, 32), (1, 64, 2, 128)];

#[test]
fn attention_causal_matches_cpu() {
    let Some((g, c)) = gpu("attention_causal_matches_cpu") else { return };
    let mut r = common::rng(108);
    for (b, t, h, hd) in ATTN_SHAPES {
        let (n, d) = (b * t, h * hd);
        let qkv = bf16_round(&common::normal(&mut r, n * 3 * d));
        let dout = bf16_round(&common::normal(&mut r, n * d));
        let (mut out, mut lse, mut dqkv) = (vec![0.0; n * d], vec![0.0; b * h * t], vec![0.0; n * 3 * d]);
        c.attention_fwd(&mut out, &mut lse, &qkv, AttnShape { b, t, h, hd });
        c.attention_bwd(&mut dqkv, &dout, &qkv, &out, &lse, AttnShape { b, t, h, hd });
        let gq = up(&g, &qkv);
        let (mut go, mut gl) = (poisoned(&g, n * d), poisoned(&g, b * h * t));
        g.attention_fwd(&mut go, &mut gl, &gq, AttnShape { b, t, h, hd });
        let what = format!("b={b} t={t} h={h} hd={hd}");
        assert_close(&format!("attention out {what}"), &g.download(&go), &out, 2e-2);
        assert_close(&format!("attention lse {what}"), &g.download(&gl), &lse, 1e-3);
        let mut gd = poisoned(&g, n * 3 * d);
        g.attention_bwd(&mut gd, &up(&g, &dout), &gq, &go, &gl, AttnShape { b, t, h, hd });
        let got = g.download(&gd);
        // Check dq, dk and dv separately: a wrong third hides in the total norm.
        for (part, name) in ["dq", "dk", "dv"].iter().enumerate() {
            let pick = |v: &[f32]| -> Vec<f32> {
                (0..n).flat_map(|row| v[row * 3 * d + part * d..row * 3 * d + (part + 1) * d].to_vec()).collect()
            };
            assert_close(&format!("attention {name} {what}"), &pick(&got), &pick(&dqkv), 2e-2);
        }
        g.check().unwrap();
    }
}

/// Naive f64 attention (any masking), the oracle of the non-causal kernels.
fn naive_attention(qkv: &[f32], (b, t, h, hd): (usize, usize, usize, usize), causal: bool) -> Vec<f32> {
    let d = h * hd;
    let mut out = vec![0.0f32; b * t * d];
    let scale = 1.0 / (hd as f64).sqrt();
    for bi in 0..b {
        for hh in 0..h {
            for i in 0..t {
                let q = |c: usize| qkv[(bi * t + i) * 3 * d + hh * hd + c] as f64;
                let keys = if causal { i + 1 } else { t };
                let s: Vec<f64> = (0..keys)
                    .map(|j| {
                        (0..hd).map(|c| q(c) * qkv[(bi * t + j) * 3 * d + d + hh * hd + c] as f64).sum::<f64>() * scale
                    })
                    .collect();
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
                let z: f64 = w.iter().sum();
                for c in 0..hd {
                    let o: f64 =
                        (0..keys).map(|j| w[j] * qkv[(bi * t + j) * 3 * d + 2 * d + hh * hd + c] as f64).sum::<f64>();
                    out[(bi * t + i) * d + hh * hd + c] = (o / z) as f32;
                }
            }
        }
    }
    out
}

#[test]
fn attention_non_causal_matches_naive() {
    let Some((g, _)) = gpu("attention_non_causal_matches_naive") else { return };
    let mut r = common::rng(109);
    for (b, t, h, hd) in ATTN_SHAPES {
        let (n, d) = (b * t, h * hd);
        let qkv = bf16_round(&common::normal(&mut r, n * 3 * d));
        let want = naive_attention(&qkv, (b, t, h, hd), false);
        let s = AttentionShape { b, t, h, hd, causal: false };
        let (mut go, mut gl) = (poisoned(&g, n * d), poisoned(&g, b * h * t));
        g.attention_fwd_shaped(&mut go, &mut gl, &up(&g, &qkv), s);
        assert_close(&format!("non-causal attention b={b} t={t} h={h} hd={hd}"), &g.download(&go), &want, 2e-2);
        g.check().unwrap();
    }
}

#[test]
fn unsupported_shapes_are_refused_before_launch() {
    // No GPU needed: the config check runs before any device work.
    let mut cfg = switchyard::Config::preset("tiny").unwrap();
    cuda::check_config(&cfg).unwrap();
    cfg.model.d_model = 192;
    cfg.model.n_head = 2; // head_dim 96
    let e = cuda::check_config(&cfg).unwrap_err().to_string();
    assert!(e.contains("head_dim") && e.contains("96") && e.contains("[32, 64, 128]"), "{e}");
    // And on a GPU, a launch with an unsupported head_dim is refused, not run.
    let Some((g, _)) = gpu("unsupported_shapes_are_refused_before_launch (device part)") else { return };
    let (mut o, mut l) = (poisoned(&g, 96), poisoned(&g, 1));
    g.attention_fwd(&mut o, &mut l, &up(&g, &vec![0.5; 3 * 96]), AttnShape { b: 1, t: 1, h: 1, hd: 96 });
    let e = g.check().unwrap_err().to_string();
    assert!(e.contains("head_dim 96"), "{e}");
}

#[test]
fn inference_kernels_match() {
    let Some((g, c)) = gpu("inference_kernels_match") else { return };
    let mut r = common::rng(110);
    // (sequences, heads, head_dim, max_t, lengths): single key, ragged chunks,
    // lengths past one 256-key chunk.
    let cases: [(usize, usize, usize, usize, &[i32]); 3] =
        [(1, 1, 32, 8, &[1]), (3, 2, 64, 40, &[1, 17, 40]), (2, 4, 128, 600, &[300, 599])];
    for (n_seq, h, hd, max_t, lens) in cases {
        let d = h * hd;
        // Caches hold earlier keys; append the newest one (position lens-1) from qkv.
        let (kc0, vc0) = (common::normal(&mut r, n_seq * max_t * d), common::normal(&mut r, n_seq * max_t * d));
        let qkv = common::normal(&mut r, n_seq * 3 * d);
        let slots: Vec<i32> = lens.iter().enumerate().map(|(s, &l)| (s * max_t) as i32 + l - 1).collect();
        let (mut kc, mut vc) = (kc0.clone(), vc0.clone());
        c.kv_append(&mut kc, &mut vc, &qkv, &slots, n_seq, h, hd);
        let mut out = vec![0.0; n_seq * d];
        c.attention_decode(&mut out, &qkv, &kc, &vc, &lens.to_vec(), DecodeShape { n_seq, h, hd, max_t });
        let (mut gk, mut gv, gq) = (up(&g, &kc0), up(&g, &vc0), up(&g, &qkv));
        g.kv_append(&mut gk, &mut gv, &gq, &up_i(&g, &slots), n_seq, h, hd);
        assert_eq!(g.download(&gk), kc, "kv_append keys are copies");
        assert_eq!(g.download(&gv), vc, "kv_append values are copies");
        let mut go = poisoned(&g, n_seq * d);
        g.attention_decode(&mut go, &gq, &gk, &gv, &up_i(&g, lens), DecodeShape { n_seq, h, hd, max_t });
        assert_close(&format!("attention_decode {n_seq}x{h}x{hd} lens {lens:?}"), &g.download(&go), &out, F32_BOUND);
        g.check().unwrap();
    }
    // Embedding at explicit positions.
    let (n, d, v, max_t) = (5, 48, 40, 9);
    let tokens = common::tokens(&mut r, n, v);
    let positions = vec![0, 8, 3, 3, 1];
    let (wte, wpe) = (common::normal(&mut r, v * d), common::normal(&mut r, max_t * d));
    let mut want = vec![0.0; n * d];
    c.embedding_at(&mut want, &tokens, &positions, &wte, &wpe, n, d);
    let mut go = poisoned(&g, n * d);
    g.embedding_at(&mut go, &up_i(&g, &tokens), &up_i(&g, &positions), &up(&g, &wte), &up(&g, &wpe), n, d);
    assert_eq!(g.download(&go), want, "embedding_at: one fp32 add per element");
    g.check().unwrap();
}
