//! Finite-difference gradient checks of the whole model (every parameter
//! tensor, the router included) on the CPU backend.
//!
//! Method: for each tensor, a random unit direction `u`; compare the
//! analytic directional derivative `<g, u>` with the central difference
//! `(L(θ + εu) - L(θ - εu)) / 2ε`. Directional checks aggregate many entries,
//! so the compared numbers are large relative to f32 round-off.
//!
//! Error budget: the loss is an f64 sum of f32 per-token losses of size
//! ~ln(V) ≈ 3.5 with relative round-off ~1e-6 after a few layers, i.e.
//! ~4e-6 absolute per evaluation; divided by 2ε = 2e-2 that is ~2e-4 in the
//! difference quotient. Truncation is O(ε²·L''') ~ 1e-4·|L'''|. Directional
//! derivatives here are O(1e-2..1), so a relative bound of 2e-2 (with an
//! absolute floor of 5e-3) leaves a wide margin, while any wrong term in a
//! backward pass (a missing factor, a transposed operand) gives O(1) error.
//!
//! The test models use O(1) embeddings and weights (see `check_model`) so
//! that ε is small against every activation scale.
//!
//! Routing is piecewise constant in the parameters (top-k, capacity), so the
//! router is initialised with a large std (clear top-k margins) and every
//! check asserts that the routing at θ ± εu equals the routing at θ: the
//! checked points are away from ties.

// Index loops read like the math in these numeric checks.
#![allow(clippy::needless_range_loop)]

mod common;

use common::{micro_config, normal, rel_err, rng, tokens};
use switchyard::backend::cpu::Cpu;
use switchyard::backend::Backend;
use switchyard::model::{Model, Pass};
use switchyard::Config;

const EPS: f32 = 1e-2;
const REL_TOL: f64 = 2e-2;
const ABS_FLOOR: f64 = 5e-3;

type Routing = Vec<(Vec<i32>, Vec<i32>)>;

fn routing(model: &Model<Cpu>, be: &Cpu) -> Routing {
    (0..model.cfg.model.n_layer).filter_map(|l| model.routing(be, l).map(|(e, r, _)| (e, r))).collect()
}

fn check_model(mut cfg: Config, seed: u64) {
    // O(1) activations: with the default 0.02 embedding std the LayerNorm
    // inputs are tiny, rstd ~ 50, and ε-sized steps leave the linear regime.
    cfg.model.embed_init_std = 1.0;
    cfg.model.init_scale = 1.0;
    let be = Cpu::new(2).unwrap();
    let mut model = Model::<Cpu>::new(&be, &cfg).unwrap();
    let (b, t) = (cfg.train.batch_size, cfg.train.seq_len);
    let mut r = rng(seed);
    let x = tokens(&mut r, b * t, cfg.model.vocab_size);
    let y = tokens(&mut r, b * t, cfg.model.vocab_size);
    let pass = Pass::Train { jitter_seed: seed, loss_weight: 1.0 };
    model.zero_grads(&be);
    let base = model.step(&be, &x, &y, b, t, pass).unwrap();
    let route0 = routing(&model, &be);
    let grads: Vec<Vec<f32>> = model.grads.iter().map(|g| be.download(g)).collect();
    let mut worst = (0.0f64, String::new());
    for i in 0..model.table.specs.len() {
        let name = model.table.specs[i].name.clone();
        let p0 = be.download(&model.params[i]);
        let mut u = normal(&mut r, p0.len());
        let norm = u.iter().map(|v| (v * v) as f64).sum::<f64>().sqrt() as f32;
        u.iter_mut().for_each(|v| *v /= norm);
        let analytic: f64 = grads[i].iter().zip(&u).map(|(g, u)| (*g as f64) * (*u as f64)).sum();
        let mut eval = |sign: f32| {
            let p: Vec<f32> = p0.iter().zip(&u).map(|(p, u)| p + sign * EPS * u).collect();
            be.upload(&mut model.params[i], &p);
            let s = model.forward_only(&be, &x, &y, b, t, pass).unwrap();
            assert_eq!(
                routing(&model, &be),
                route0,
                "{name}: routing changed under perturbation (a tie); pick another seed"
            );
            s.loss()
        };
        let (lp, lm) = (eval(1.0), eval(-1.0));
        be.upload(&mut model.params[i], &p0);
        let numeric = (lp - lm) / (2.0 * EPS as f64);
        let err = rel_err(analytic, numeric, ABS_FLOOR);
        if err > worst.0 {
            worst = (err, name.clone());
        }
        assert!(
            err < REL_TOL,
            "{name}: analytic {analytic:.6e} vs numeric {numeric:.6e} (rel err {err:.3e}, loss {:.4})",
            base.loss()
        );
    }
    eprintln!("worst relative error {:.3e} at {}", worst.0, worst.1);
}

#[test]
fn dense_model_gradients() {
    check_model(micro_config(0, 1, 1), 11);
}

#[test]
fn moe_top1_with_capacity_drops_and_jitter() {
    let mut cfg = micro_config(1, 4, 1);
    cfg.model.router_init_std = 1.0;
    cfg.model.capacity_factor = 1.0;
    cfg.model.router_jitter = 0.01;
    cfg.model.aux_loss_coef = 0.1;
    cfg.model.z_loss_coef = 0.01;
    check_model(cfg, 12);
}

#[test]
fn moe_top2_normalized_dropless() {
    let mut cfg = micro_config(2, 4, 2);
    cfg.model.router_init_std = 1.0;
    cfg.model.capacity_factor = 0.0;
    cfg.model.normalize_gates = true;
    cfg.model.aux_loss_coef = 0.1;
    cfg.model.z_loss_coef = 0.01;
    check_model(cfg, 13);
}

#[test]
fn moe_top2_unnormalized_with_capacity() {
    let mut cfg = micro_config(1, 4, 2);
    cfg.model.router_init_std = 1.0;
    cfg.model.capacity_factor = 0.75;
    cfg.model.aux_loss_coef = 0.1;
    cfg.model.z_loss_coef = 0.01;
    check_model(cfg, 14);
}
