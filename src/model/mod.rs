//! The decoder-only Switch Transformer of DESIGN.md §2 with explicit forward
//! and backward passes, written only against [`Backend`] (llm.c style: no
//! autograd tape, preallocated activations, one method per pass that reads
//! like the equations).
//!
//! ```text
//! h0 = wte[x] + wpe[t]
//! for l:  h = h + Attn_l(LN1_l(h));  h = h + FFN_l(LN2_l(h))   (FFN dense or Switch MoE)
//! logits = LN_f(h) @ wte^T;  loss = mean CE + sum_MoE (aux + z)
//! ```

mod acts;
pub mod attention;
pub mod ffn;
pub mod moe;
pub mod params;

use crate::backend::{AttnShape, Backend, Gemm, RouterParams, RouterStats};
use crate::config::{capacity, Config};
use crate::Result;
use acts::{Acts, FfnActs};
use moe::Jitter;
pub use params::{init_values, mix, BlockIdx, DenseIdx, FfnIdx, MoeIdx, ParamKind, ParamSpec, ParamTable};

/// Which pass a micro-batch takes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pass {
    /// Training: train capacity factor, router jitter (seeded), fused
    /// backward. `loss_weight` scales this micro-batch's loss (1/grad_accum).
    Train {
        /// Seed of this micro-batch's router jitter.
        jitter_seed: u64,
        /// Weight of this micro-batch's loss in the step's loss.
        loss_weight: f32,
    },
    /// Evaluation: eval capacity factor, no jitter, no gradients.
    Eval,
}

/// Routing statistics of one MoE layer for one micro-batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MoeStats {
    /// Block index of the layer.
    pub layer: usize,
    /// Assignments per expert before capacity.
    pub assigned: Vec<f32>,
    /// Assignments per expert kept after capacity.
    pub kept: Vec<f32>,
    /// Mean router probability per expert (`P_e`).
    pub mean_prob: Vec<f32>,
    /// Fraction of the `N*k` assignments dropped by capacity.
    pub dropped_frac: f32,
    /// Mean router entropy per token (nats).
    pub entropy: f32,
    /// Load-balancing loss value (with its coefficient).
    pub aux: f32,
    /// z-loss value (with its coefficient).
    pub z: f32,
}

/// Outputs of one micro-batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MicroStats {
    /// Mean cross-entropy over the micro-batch's tokens (nats), summed in f64.
    pub ce: f64,
    /// Sum over MoE layers of the aux losses.
    pub aux: f64,
    /// Sum over MoE layers of the z-losses.
    pub z: f64,
    /// Per MoE layer.
    pub moe: Vec<MoeStats>,
}

impl MicroStats {
    /// The optimized loss: CE + aux + z.
    pub fn loss(&self) -> f64 {
        self.ce + self.aux + self.z
    }
}

/// Parameters, gradients and activations of one model on backend `B`.
pub struct Model<B: Backend> {
    /// The configuration the model was built from.
    pub cfg: Config,
    /// Tensor names, shapes and indices.
    pub table: ParamTable,
    /// Parameter values, in table order.
    pub params: Vec<B::Buf>,
    /// Gradients (`+=` accumulated over micro-batches), in table order.
    pub grads: Vec<B::Buf>,
    acts: Option<Acts<B>>,
}

/// Two distinct mutable elements of a slice.
fn two_mut<T>(v: &mut [T], i: usize, j: usize) -> (&mut T, &mut T) {
    assert_ne!(i, j, "two_mut: same index");
    if i < j {
        let (a, b) = v.split_at_mut(j);
        (&mut a[i], &mut b[0])
    } else {
        let (a, b) = v.split_at_mut(i);
        (&mut b[0], &mut a[j])
    }
}

impl<B: Backend> Model<B> {
    /// A freshly initialized model (DESIGN.md §2 "Initialization").
    pub fn new(be: &B, cfg: &Config) -> Result<Model<B>> {
        cfg.validate()?;
        be.supports(cfg)?;
        crate::memory::require(be, cfg, crate::memory::Purpose::Weights, "the model's weights")?;
        let table = ParamTable::new(cfg);
        let mut params = Vec::with_capacity(table.specs.len());
        let mut grads = Vec::with_capacity(table.specs.len());
        for (i, s) in table.specs.iter().enumerate() {
            let mut p = be.alloc(s.numel(), &s.name)?;
            be.upload(&mut p, &init_values(cfg, s, i));
            params.push(p);
            grads.push(be.alloc(s.numel(), &format!("grad of {}", s.name))?);
        }
        Ok(Model { cfg: cfg.clone(), table, params, grads, acts: None })
    }

    /// Zero every gradient.
    pub fn zero_grads(&mut self, be: &B) {
        for g in &mut self.grads {
            be.zero(g);
        }
    }

    fn ensure_acts(&mut self, be: &B, b: usize, t: usize) -> Result<()> {
        if self.acts.as_ref().is_some_and(|a| a.b == b && a.t == t) {
            return Ok(());
        }
        if t == 0 || t > self.cfg.model.max_seq_len {
            return Err(crate::Error::Config(format!(
                "sequence length {t} is outside 1..={} (model.max_seq_len): shorten the sequence or train a \
                 model with a larger max_seq_len",
                self.cfg.model.max_seq_len
            )));
        }
        self.acts = None;
        self.acts = Some(Acts::new(be, &self.cfg, &self.table, b, t)?);
        Ok(())
    }

    fn router_params(&self, n: usize, pass: Pass) -> RouterParams {
        let m = &self.cfg.model;
        let cf = match pass {
            Pass::Train { .. } => m.capacity_factor,
            Pass::Eval => m.eval_capacity_factor,
        };
        RouterParams {
            n_tokens: n,
            n_experts: m.n_experts,
            top_k: m.top_k,
            capacity: capacity(cf, m.top_k, n, m.n_experts).min(n),
            normalize_gates: m.normalize_gates,
            aux_coef: m.aux_loss_coef as f32,
            z_coef: m.z_loss_coef as f32,
        }
    }

    /// One micro-batch: forward, and for [`Pass::Train`] the backward pass
    /// accumulating into [`Model::grads`].
    ///
    /// # Shapes
    /// `x`, `y`: `[b * t]` token ids (`y` = next tokens), row-major `[b, t]`.
    pub fn step(&mut self, be: &B, x: &[i32], y: &[i32], b: usize, t: usize, pass: Pass) -> Result<MicroStats> {
        self.ensure_acts(be, b, t)?;
        let stats = self.forward(be, x, y, b, t, pass);
        if let Pass::Train { loss_weight, .. } = pass {
            self.backward(be, b, t, loss_weight, pass);
        }
        be.check()?;
        Ok(stats)
    }

    /// Forward only (no gradients), with the routing of `pass`: the loss as a
    /// function of the parameters, for evaluation and gradient checks.
    pub fn forward_only(&mut self, be: &B, x: &[i32], y: &[i32], b: usize, t: usize, pass: Pass) -> Result<MicroStats> {
        self.ensure_acts(be, b, t)?;
        let stats = self.forward(be, x, y, b, t, pass);
        be.check()?;
        Ok(stats)
    }

    /// Routing of MoE block `layer` in the last step: `(expert, row, gate)`,
    /// each `[N*k]` (row -1 = dropped). `None` for a dense block.
    pub fn routing(&self, be: &B, layer: usize) -> Option<(Vec<i32>, Vec<i32>, Vec<f32>)> {
        let acts = self.acts.as_ref()?;
        match &acts.blocks[layer].ffn {
            FfnActs::Moe(m) => {
                let r = &m.routing;
                Some((be.download_i(&r.expert), be.download_i(&r.row), be.download(&r.gate)))
            }
            FfnActs::Dense(_) => None,
        }
    }

    fn forward(&mut self, be: &B, x: &[i32], y: &[i32], b: usize, t: usize, pass: Pass) -> MicroStats {
        let m = self.cfg.model.clone();
        let (d, f, v, h) = (m.d_model, m.d_ff, m.vocab_size, m.n_head);
        let shape = AttnShape { b, t, h, hd: d / h };
        let n = b * t;
        let rp = self.router_params(n, pass);
        let p = &self.params;
        let tb = &self.table;
        let a = self.acts.as_mut().expect("ensured");
        be.upload_i(&mut a.tokens, x);
        be.upload_i(&mut a.targets, y);
        be.embedding_fwd(&mut a.resid[0], &a.tokens, &p[tb.wte], &p[tb.wpe], b, t, d);
        let mut moe_layers = Vec::new();
        for (l, bi) in tb.blocks.iter().enumerate() {
            let (before, after) = a.resid.split_at_mut(l + 1);
            let h_in = &before[l];
            let h_out = &mut after[0];
            let ba = &mut a.blocks[l];
            // h_mid = h_in + Attn(LN1(h_in))
            be.layernorm_fwd(&mut ba.ln1, &mut ba.ln1_mean, &mut ba.ln1_rstd, h_in, &p[bi.ln1_w], &p[bi.ln1_b], n, d);
            attention::forward(be, p, bi, &ba.ln1, (&mut ba.qkv, &mut ba.att, &mut ba.lse), &mut a.scratch_d, shape);
            be.copy(&mut ba.h_mid, h_in);
            be.add_inplace(&mut ba.h_mid, &a.scratch_d);
            // h_out = h_mid + FFN(LN2(h_mid))
            be.layernorm_fwd(
                &mut ba.ln2,
                &mut ba.ln2_mean,
                &mut ba.ln2_rstd,
                &ba.h_mid,
                &p[bi.ln2_w],
                &p[bi.ln2_b],
                n,
                d,
            );
            match (&bi.ffn, &mut ba.ffn) {
                (FfnIdx::Dense(w), FfnActs::Dense(buf)) => {
                    ffn::forward(be, p, w, buf, &ba.ln2, &mut a.scratch_d, n, d, f)
                }
                (FfnIdx::Moe(w), FfnActs::Moe(buf)) => {
                    let jitter = match pass {
                        Pass::Train { jitter_seed, .. } if m.router_jitter > 0.0 => {
                            Some(Jitter { eps: m.router_jitter as f32, seed: mix(jitter_seed, l as u64) })
                        }
                        _ => None,
                    };
                    moe::forward(be, p, w, buf, &ba.ln2, &mut a.scratch_d, &rp, jitter);
                    // Statistics stay on the device until the step's one read below.
                    let at = moe_layers.len() * RouterStats::len(m.n_experts);
                    be.copy_at(&mut a.moe_stats, at, &buf.routing.stats);
                    moe_layers.push(l);
                }
                _ => unreachable!("activations are built from the same table"),
            }
            be.copy(h_out, &ba.h_mid);
            be.add_inplace(h_out, &a.scratch_d);
        }
        // logits = LN_f(h) @ wte^T, fused CE (+ its gradient when training)
        let h_last = &a.resid[tb.blocks.len()];
        be.layernorm_fwd(&mut a.lnf, &mut a.lnf_mean, &mut a.lnf_rstd, h_last, &p[tb.lnf_w], &p[tb.lnf_b], n, d);
        be.matmul(&mut a.logits, &a.lnf, &p[tb.wte], Gemm::new(n, d, v).tb());
        let dlogits = match pass {
            Pass::Train { loss_weight, .. } => Some((&mut a.dlogits, loss_weight / n as f32)),
            Pass::Eval => None,
        };
        match dlogits {
            Some((dl, scale)) => be.cross_entropy(&mut a.losses, Some(dl), &a.logits, &a.targets, n, v, scale),
            None => be.cross_entropy(&mut a.losses, None, &a.logits, &a.targets, n, v, 0.0),
        }
        let ce = be.download(&a.losses).iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let moe_stats = read_moe_stats(&be.download(&a.moe_stats), &moe_layers, &rp);
        let aux = moe_stats.iter().map(|s| s.aux as f64).sum();
        let z = moe_stats.iter().map(|s| s.z as f64).sum();
        MicroStats { ce, aux, z, moe: moe_stats }
    }

    fn backward(&mut self, be: &B, b: usize, t: usize, loss_weight: f32, pass: Pass) {
        let m = self.cfg.model.clone();
        let (d, f, v, h) = (m.d_model, m.d_ff, m.vocab_size, m.n_head);
        let shape = AttnShape { b, t, h, hd: d / h };
        let n = b * t;
        let rp = self.router_params(n, pass);
        let p = &self.params;
        let g = &mut self.grads;
        let tb = &self.table;
        let a = self.acts.as_mut().expect("ensured");
        // logits = lnf @ wte^T
        be.matmul(&mut a.dlnf, &a.dlogits, &p[tb.wte], Gemm::new(n, v, d));
        be.matmul(&mut g[tb.wte], &a.dlogits, &a.lnf, Gemm::new(v, n, d).ta().add());
        be.zero(&mut a.dres);
        {
            let (gw, gb) = two_mut(g, tb.lnf_w, tb.lnf_b);
            let h_last = &a.resid[tb.blocks.len()];
            be.layernorm_bwd(&mut a.dres, gw, gb, &a.dlnf, h_last, &p[tb.lnf_w], &a.lnf_mean, &a.lnf_rstd, n, d);
        }
        for (l, bi) in tb.blocks.iter().enumerate().rev() {
            let ba = &mut a.blocks[l];
            // FFN: h_out = h_mid + FFN(LN2(h_mid)); the FFN output's gradient is dres.
            match (&bi.ffn, &mut ba.ffn) {
                (FfnIdx::Dense(w), FfnActs::Dense(buf)) => {
                    let scratch = (&mut a.dff, &mut a.dff2);
                    ffn::backward(be, p, g, w, buf, &ba.ln2, &a.dres, &mut a.dln, scratch, n, d, f);
                }
                (FfnIdx::Moe(w), FfnActs::Moe(buf)) => {
                    moe::backward(be, p, g, w, buf, &ba.ln2, &a.dres, &mut a.dln, &mut a.scratch_d, &rp, loss_weight);
                }
                _ => unreachable!("activations are built from the same table"),
            }
            {
                let (gw, gb) = two_mut(g, bi.ln2_w, bi.ln2_b);
                be.layernorm_bwd(
                    &mut a.dres,
                    gw,
                    gb,
                    &a.dln,
                    &ba.h_mid,
                    &p[bi.ln2_w],
                    &ba.ln2_mean,
                    &ba.ln2_rstd,
                    n,
                    d,
                );
            }
            // Attention: h_mid = h_in + Attn(LN1(h_in)).
            let saved = (&ba.qkv, &ba.att, &ba.lse);
            attention::backward(be, p, g, bi, &ba.ln1, saved, &a.dres, (&mut a.dln, &mut a.dqkv), shape);
            {
                let (gw, gb) = two_mut(g, bi.ln1_w, bi.ln1_b);
                be.layernorm_bwd(
                    &mut a.dres,
                    gw,
                    gb,
                    &a.dln,
                    &a.resid[l],
                    &p[bi.ln1_w],
                    &ba.ln1_mean,
                    &ba.ln1_rstd,
                    n,
                    d,
                );
            }
        }
        let (gte, gpe) = two_mut(g, tb.wte, tb.wpe);
        be.embedding_bwd(gte, gpe, &a.dres, &a.tokens, b, t, d);
    }
}

/// Per-layer statistics from the step's one read of `moe_stats` (the
/// [`RouterStats`] block of each MoE layer, in layer order).
fn read_moe_stats(all: &[f32], layers: &[usize], rp: &RouterParams) -> Vec<MoeStats> {
    let e = rp.n_experts;
    let n = rp.n_tokens as f32;
    layers
        .iter()
        .zip(all.chunks(RouterStats::len(e)))
        .map(|(&layer, s)| MoeStats {
            layer,
            assigned: s[RouterStats::assigned(e)..RouterStats::assigned(e) + e].to_vec(),
            kept: s[RouterStats::kept(e)..RouterStats::kept(e) + e].to_vec(),
            mean_prob: s[RouterStats::prob_sum(e)..RouterStats::prob_sum(e) + e].iter().map(|p| p / n).collect(),
            dropped_frac: s[RouterStats::dropped(e)] / (n * rp.top_k as f32),
            entropy: s[RouterStats::entropy_sum(e)] / n,
            aux: s[RouterStats::aux(e)],
            z: s[RouterStats::z(e)],
        })
        .collect()
}
