//! Finite-difference gradient checks of every layer (op family) of the CPU
//! backend, element by element.
//!
//! Each op is wrapped in a scalar loss `L = sum(r * out)` with a fixed random
//! `r` (so every output element matters with a distinct weight), accumulated
//! in f64. The analytic gradient comes from the op's backward with
//! `dout = r`; the numeric one from central differences with step `H`.
//!
//! Error budget: inputs and outputs are O(1) and `L` sums O(10..1000) f32
//! values, so its round-off is ~1e-7·sqrt(count)·O(1) ≈ 1e-5 at most;
//! divided by 2H = 2e-2 that is ~5e-4 absolute. Truncation is O(H²) = 1e-4
//! relative for smooth ops. Hence `|a - n| <= 1e-2 · max(|a|, |n|, 0.1)`:
//! tight enough that a wrong factor or a missing term fails (those are O(1)
//! relative), loose enough for f32 arithmetic.

// Index loops read like the math in these numeric checks.
#![allow(clippy::needless_range_loop)]

mod common;

use common::{normal, rel_err, rng, uniform};
use switchyard::backend::cpu::Cpu;
use switchyard::backend::{AttnShape, Backend, Gemm, Grouped, RouterParams, RouterStats, Routing};

const H: f32 = 1e-2;
const TOL: f64 = 1e-2;
const FLOOR: f64 = 0.1;

fn be() -> Cpu {
    Cpu::new(2).unwrap()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// Compare `analytic` with central differences of `loss` over every element of `x`.
fn check(name: &str, x: &mut [f32], analytic: &[f32], mut loss: impl FnMut(&[f32]) -> f64) {
    assert_eq!(x.len(), analytic.len(), "{name}: gradient length");
    for i in 0..x.len() {
        let x0 = x[i];
        x[i] = x0 + H;
        let lp = loss(x);
        x[i] = x0 - H;
        let lm = loss(x);
        x[i] = x0;
        let numeric = (lp - lm) / (2.0 * H as f64);
        let err = rel_err(analytic[i] as f64, numeric, FLOOR);
        assert!(err < TOL, "{name}[{i}]: analytic {} vs numeric {numeric} (rel err {err:.2e})", analytic[i]);
    }
}

#[test]
fn layernorm() {
    let be = be();
    let (rows, c) = (5, 12);
    let mut r = rng(101);
    let x = uniform(&mut r, rows * c, 2.0);
    let mut w = uniform(&mut r, c, 1.5);
    let mut b = uniform(&mut r, c, 1.0);
    let dout = normal(&mut r, rows * c);
    let fwd = |x: &[f32], w: &[f32], b: &[f32]| {
        let (mut o, mut m, mut s) = (vec![0.0; rows * c], vec![0.0; rows], vec![0.0; rows]);
        be.layernorm_fwd(&mut o, &mut m, &mut s, &x.to_vec(), &w.to_vec(), &b.to_vec(), rows, c);
        (o, m, s)
    };
    let (_, mean, rstd) = fwd(&x, &w, &b);
    // dx accumulates (+=): start from a known non-zero value and subtract it.
    let base = uniform(&mut r, rows * c, 1.0);
    let mut dx = base.clone();
    let (mut dw, mut db) = (vec![0.0; c], vec![0.0; c]);
    be.layernorm_bwd(&mut dx, &mut dw, &mut db, &dout, &x, &w, &mean, &rstd, rows, c);
    let dx: Vec<f32> = dx.iter().zip(&base).map(|(a, b)| a - b).collect();
    let (w0, b0) = (w.clone(), b.clone());
    check("layernorm dx", &mut x.clone(), &dx, |x| dot(&fwd(x, &w0, &b0).0, &dout));
    check("layernorm dw", &mut w, &dw, |w| dot(&fwd(&x, w, &b0).0, &dout));
    let w1 = w.clone();
    check("layernorm db", &mut b, &db, |b| dot(&fwd(&x, &w1, b).0, &dout));
}

#[test]
fn gelu() {
    let be = be();
    let n = 64;
    let mut r = rng(102);
    let mut x = uniform(&mut r, n, 4.0);
    let dout = normal(&mut r, n);
    let mut dx = vec![0.0; n];
    be.gelu_bwd(&mut dx, &dout, &x, n);
    check("gelu dx", &mut x, &dx, |x| {
        let mut o = vec![0.0; n];
        be.gelu_fwd(&mut o, &x.to_vec(), n);
        dot(&o, &dout)
    });
    // PyTorch: gelu(torch.tensor([1.0]), approximate='tanh') = 0.8411920070648193
    let mut o = vec![0.0; 1];
    be.gelu_fwd(&mut o, &vec![1.0], 1);
    assert!((o[0] - 0.841_192).abs() < 1e-6, "gelu(1) = {}", o[0]);
}

#[test]
fn linear_matmul_and_bias() {
    let be = be();
    let (m, k, n) = (6, 5, 7);
    let mut r = rng(103);
    let a = uniform(&mut r, m * k, 1.0);
    let mut w = uniform(&mut r, k * n, 1.0);
    let mut bias = uniform(&mut r, n, 1.0);
    let dout = normal(&mut r, m * n);
    let fwd = |a: &[f32], w: &[f32], bias: &[f32]| {
        let mut o = vec![0.0; m * n];
        be.matmul(&mut o, &a.to_vec(), &w.to_vec(), Gemm::new(m, k, n));
        be.add_bias(&mut o, &bias.to_vec(), m, n);
        o
    };
    let mut da = vec![0.0; m * k];
    be.matmul(&mut da, &dout, &w, Gemm::new(m, n, k).tb());
    let mut dw = vec![0.0; k * n];
    be.matmul(&mut dw, &a, &dout, Gemm::new(k, m, n).ta().add());
    let mut db = vec![0.0; n];
    be.bias_grad(&mut db, &dout, m, n);
    let (w0, b0) = (w.clone(), bias.clone());
    check("linear da", &mut a.clone(), &da, |a| dot(&fwd(a, &w0, &b0), &dout));
    check("linear dw", &mut w, &dw, |w| dot(&fwd(&a, w, &b0), &dout));
    check("linear dbias", &mut bias, &db, |b| dot(&fwd(&a, &w0, b), &dout));
}

#[test]
fn embedding() {
    let be = be();
    let (b, t, d, v) = (2, 3, 4, 5);
    let mut r = rng(104);
    let tokens: Vec<i32> = vec![1, 4, 1, 0, 1, 3];
    let mut wte = uniform(&mut r, v * d, 1.0);
    let mut wpe = uniform(&mut r, t * d, 1.0);
    let dout = normal(&mut r, b * t * d);
    let fwd = |wte: &[f32], wpe: &[f32]| {
        let mut o = vec![0.0; b * t * d];
        be.embedding_fwd(&mut o, &tokens, &wte.to_vec(), &wpe.to_vec(), b, t, d);
        o
    };
    let (mut dte, mut dpe) = (vec![0.0; v * d], vec![0.0; t * d]);
    be.embedding_bwd(&mut dte, &mut dpe, &dout, &tokens, b, t, d);
    let wpe0 = wpe.clone();
    check("embedding dwte", &mut wte, &dte, |w| dot(&fwd(w, &wpe0), &dout));
    check("embedding dwpe", &mut wpe, &dpe, |w| dot(&fwd(&wte, w), &dout));
}

#[test]
fn attention_ragged_causal() {
    let be = be();
    // T = 5 is not a multiple of anything a kernel tiles by.
    let (b, t, h, hd) = (2, 5, 2, 4);
    let d = h * hd;
    let mut r = rng(105);
    let mut qkv = uniform(&mut r, b * t * 3 * d, 1.5);
    let dout = normal(&mut r, b * t * d);
    let fwd = |qkv: &[f32]| {
        let (mut o, mut l) = (vec![0.0; b * t * d], vec![0.0; b * h * t]);
        be.attention_fwd(&mut o, &mut l, &qkv.to_vec(), AttnShape { b, t, h, hd });
        (o, l)
    };
    let (out, lse) = fwd(&qkv);
    let mut dqkv = vec![f32::NAN; b * t * 3 * d];
    be.attention_bwd(&mut dqkv, &dout, &qkv, &out, &lse, AttnShape { b, t, h, hd });
    check("attention dqkv", &mut qkv, &dqkv, |x| dot(&fwd(x).0, &dout));
}

#[test]
fn cross_entropy() {
    let be = be();
    let (rows, v) = (4, 9);
    let mut r = rng(106);
    let mut logits = uniform(&mut r, rows * v, 3.0);
    let targets = vec![0, 8, 3, 3];
    let scale = 0.7f32;
    let mut losses = vec![0.0; rows];
    let mut dl = vec![f32::NAN; rows * v];
    be.cross_entropy(&mut losses, Some(&mut dl), &logits, &targets, rows, v, scale);
    check("cross_entropy dlogits", &mut logits, &dl, |l| {
        let mut ls = vec![0.0; rows];
        be.cross_entropy(&mut ls, None, &l.to_vec(), &targets, rows, v, 0.0);
        ls.iter().map(|&x| x as f64 * scale as f64).sum()
    });
}

/// Router backward through gates (optionally normalized), aux (via P) and
/// z-loss: `L = sum_a r_a * gate_a + aux + z`, with large logit margins so
/// top-k is constant under the FD steps (asserted).
fn router_case(k: usize, normalize: bool, seed: u64) {
    let be = be();
    let (n, e) = (7, 5);
    let rp = RouterParams {
        n_tokens: n,
        n_experts: e,
        top_k: k,
        capacity: 2,
        normalize_gates: normalize,
        aux_coef: 0.3,
        z_coef: 0.05,
    };
    let mut r = rng(seed);
    // Distinct, well-separated logits per token: a random permutation of
    // 0, 1.5, 3, ... plus small noise keeps every top-k margin >= 1.
    let mut logits = Vec::new();
    for _ in 0..n {
        let mut lv: Vec<f32> = (0..e).map(|i| i as f32 * 1.5).collect();
        for i in (1..e).rev() {
            let j = (rand::Rng::random_range(&mut r, 0..=i as u32)) as usize;
            lv.swap(i, j);
        }
        logits.extend(lv.iter().map(|x| x + rand::Rng::random_range(&mut r, -0.2..0.2f32)));
    }
    let wgt = normal(&mut r, n * k);
    let run = |z: &[f32]| {
        let mut r = Routing::new(&be, n, e, k).unwrap();
        be.router_fwd(&mut r, &z.to_vec(), &rp);
        r
    };
    let r0 = run(&logits);
    let mut dz = vec![f32::NAN; n * e];
    be.router_bwd(&mut dz, &wgt, &logits, &r0, &rp, 1.0);
    check(&format!("router dlogits (k={k}, normalize={normalize})"), &mut logits, &dz, |z| {
        let r = run(z);
        assert_eq!(r.expert, r0.expert, "top-k changed under the FD step");
        let st = &r.stats;
        dot(&r.gate, &wgt) + st[RouterStats::aux(e)] as f64 + st[RouterStats::z(e)] as f64
    });
}

#[test]
fn router_top1() {
    router_case(1, false, 107);
}

#[test]
fn router_top2_normalized() {
    router_case(2, true, 108);
}

#[test]
fn router_top2_unnormalized() {
    router_case(2, false, 109);
}

#[test]
fn dispatch_and_combine() {
    let be = be();
    let (n, k, d) = (4, 2, 3);
    // Assignment a = n*k + j -> row; token 2's second choice is dropped.
    let row: Vec<i32> = vec![0, 3, 1, 4, 2, -1, 5, 6];
    let mut row_assign = vec![-1; n * k];
    for (a, &rw) in row.iter().enumerate() {
        if rw >= 0 {
            row_assign[rw as usize] = a as i32;
        }
    }
    let rows = n * k;
    let mut r = rng(110);
    let mut x = uniform(&mut r, n * d, 1.0);
    let mut ye = uniform(&mut r, rows * d, 1.0);
    let mut gate = uniform(&mut r, n * k, 1.0);
    let dout = normal(&mut r, n * d);
    let dxe_w = normal(&mut r, rows * d);
    // The routing with these rows and gates (dispatch and combine read no other field).
    let routing = |gate: &[f32]| Routing::<Cpu> {
        n,
        e: 1,
        k,
        probs: Vec::new(),
        expert: Vec::new(),
        gate: gate.to_vec(),
        row: row.clone(),
        row_assign: row_assign.clone(),
        offsets: Vec::new(),
        stats: Vec::new(),
    };
    // combine
    let comb = |ye: &[f32], gate: &[f32]| {
        let mut o = vec![f32::NAN; n * d];
        be.combine_fwd(&mut o, &ye.to_vec(), &routing(gate), d);
        o
    };
    let (mut dye, mut dg) = (vec![0.0; rows * d], vec![f32::NAN; n * k]);
    be.combine_bwd(&mut dye, &mut dg, &dout, &ye, &routing(&gate), d);
    let g0 = gate.clone();
    check("combine dye", &mut ye, &dye, |y| dot(&comb(y, &g0), &dout));
    check("combine dgate", &mut gate, &dg, |g| dot(&comb(&ye, g), &dout));
    // dispatch: only rows with an assignment are defined outputs.
    let disp = |x: &[f32]| {
        let mut xe = vec![0.0; rows * d];
        be.dispatch_fwd(&mut xe, &x.to_vec(), &routing(&gate), d);
        xe
    };
    let mut dx = vec![0.0; n * d];
    let masked: Vec<f32> = (0..rows * d).map(|i| if row_assign[i / d] >= 0 { dxe_w[i] } else { 0.0 }).collect();
    be.dispatch_bwd(&mut dx, &masked, &routing(&gate), d);
    check("dispatch dx", &mut x, &dx, |x| dot(&disp(x), &masked));
}

#[test]
fn grouped_matmul() {
    let be = be();
    let (e, k, n) = (3, 4, 5);
    // Segments of 2, 0 (an empty expert) and 3 rows.
    let offsets = vec![0, 2, 2, 5];
    let m = 5;
    let mut r = rng(111);
    let x = uniform(&mut r, m * k, 1.0);
    let mut w = uniform(&mut r, e * k * n, 1.0);
    let mut b = uniform(&mut r, e * n, 1.0);
    let dout = normal(&mut r, m * n);
    let fwd = |x: &[f32], w: &[f32], b: &[f32]| {
        let mut o = vec![f32::NAN; m * n];
        be.grouped_matmul(&mut o, &x.to_vec(), &w.to_vec(), &b.to_vec(), &offsets, Grouped { e, k, n });
        o
    };
    let (mut dx, mut dw, mut db) = (vec![f32::NAN; m * k], vec![0.0; e * k * n], vec![0.0; e * n]);
    be.grouped_matmul_bwd(&mut dx, &mut dw, &mut db, &dout, &x, &w, &offsets, Grouped { e, k, n });
    let (w0, b0) = (w.clone(), b.clone());
    check("grouped dx", &mut x.clone(), &dx, |x| dot(&fwd(x, &w0, &b0), &dout));
    check("grouped dw", &mut w, &dw, |w| dot(&fwd(&x, w, &b0), &dout));
    check("grouped db", &mut b, &db, |b| dot(&fwd(&x, &w0, b), &dout));
    // The empty expert's gradients stay exactly zero.
    assert!(dw[k * n..2 * k * n].iter().all(|&v| v == 0.0));
    assert!(db[n..2 * n].iter().all(|&v| v == 0.0));
}

#[test]
fn grouped_matmul_with_fused_gelu() {
    // The expert FFN as the model runs it: h = x W1 + b1, a = gelu(h)
    // (grouped_matmul_gelu), y = a W2 + b2; backward through W2 and the GELU in
    // one op (grouped_matmul_bwd_gelu), then through W1.
    let be = be();
    let (e, d, f) = (3, 4, 6);
    let offsets = vec![0, 3, 3, 7];
    let m = 8; // one unused row past the segments
    let mut r = rng(112);
    let mut x = uniform(&mut r, m * d, 1.0);
    let mut w1 = uniform(&mut r, e * d * f, 0.8);
    let mut w2 = uniform(&mut r, e * f * d, 0.8);
    let (b1, b2) = (uniform(&mut r, e * f, 0.5), uniform(&mut r, e * d, 0.5));
    let dout = normal(&mut r, m * d);
    let ffn = |x: &[f32], w1: &[f32], w2: &[f32]| {
        let (mut h, mut a, mut y) = (vec![0.0; m * f], vec![0.0; m * f], vec![0.0; m * d]);
        be.grouped_matmul_gelu(&mut h, &mut a, &x.to_vec(), &w1.to_vec(), &b1, &offsets, Grouped { e, k: d, n: f });
        be.grouped_matmul(&mut y, &a, &w2.to_vec(), &b2, &offsets, Grouped { e, k: f, n: d });
        (h, a, y)
    };
    let used = |v: &[f32]| -> f64 { dot(&v[..7 * d], &dout[..7 * d]) };
    let (h, a, _) = ffn(&x, &w1, &w2);
    let (mut dh, mut dw2, mut db2) = (vec![0.0; m * f], vec![0.0; e * f * d], vec![0.0; e * d]);
    be.grouped_matmul_bwd_gelu(&mut dh, &mut dw2, &mut db2, &dout, &a, &w2, &h, &offsets, Grouped { e, k: f, n: d });
    let (mut dx, mut dw1, mut db1) = (vec![0.0; m * d], vec![0.0; e * d * f], vec![0.0; e * f]);
    be.grouped_matmul_bwd(&mut dx, &mut dw1, &mut db1, &dh, &x, &w1, &offsets, Grouped { e, k: d, n: f });
    let (x0, w10, w20) = (x.clone(), w1.clone(), w2.clone());
    check("ffn dx", &mut x, &dx[..], |x| used(&ffn(x, &w10, &w20).2));
    check("ffn dw1", &mut w1, &dw1, |w| used(&ffn(&x0, w, &w20).2));
    check("ffn dw2", &mut w2, &dw2, |w| used(&ffn(&x0, &w10, w).2));
    // The fused forward is gelu of the unfused product, bit for bit.
    let mut plain = vec![0.0; m * f];
    be.grouped_matmul(&mut plain, &x0, &w10, &b1, &offsets, Grouped { e, k: d, n: f });
    let mut act = vec![0.0; m * f];
    be.gelu_fwd(&mut act, &plain, 7 * f);
    assert_eq!(&h[..7 * f], &plain[..7 * f]);
    assert_eq!(&a[..7 * f], &act[..7 * f]);
    // db1 sums dh over each expert's rows (bias enters every row with weight 1).
    for ex in 0..e {
        for c in 0..f {
            let s: f32 = (offsets[ex] as usize..offsets[ex + 1] as usize).map(|row| dh[row * f + c]).sum();
            assert!((db1[ex * f + c] - s).abs() <= 1e-5 * s.abs().max(1.0), "db1[{ex}, {c}]");
        }
    }
}
