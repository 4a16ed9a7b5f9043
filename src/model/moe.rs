//! The Switch MoE layer (DESIGN.md §2): router → dispatch → experts →
//! combine, forward and backward. The one implementation that training,
//! evaluation and inference run; the op benchmark times its parts.
//!
//! ```text
//! u      = x * U(1-eps, 1+eps)        (training with jitter; else u = x)
//! logits = u @ W_r                    (fp32)
//! route  = softmax, top-k, gates, capacity slots (Backend::router_fwd)
//! xe     = x[route]                   (dispatch: expert-contiguous rows)
//! ye     = gelu(xe @ W1[e] + b1[e]) @ W2[e] + b2[e]   (grouped GEMMs)
//! out    = sum_j gate_j * ye[row_j]   (combine; dropped tokens get 0)
//! ```

use super::params::MoeIdx;
use crate::backend::{Backend, Gemm, Grouped, RouterParams, Routing};
use crate::Result;

/// Sizes of the calls a set of [`MoeBuffers`] serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoeShape {
    /// Tokens per call `N`.
    pub n: usize,
    /// Model width `d`.
    pub d: usize,
    /// Expert hidden width `d_ff`.
    pub f: usize,
    /// Experts `E`.
    pub e: usize,
    /// Experts per token `k`.
    pub k: usize,
}

/// Router input noise of a training call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Jitter {
    /// Half-width of the multiplier `U(1-eps, 1+eps)`.
    pub eps: f32,
    /// Counter-based stream of this call (micro-batch and layer).
    pub seed: u64,
}

/// Jitter multipliers and the jittered router input `[N, d]` each.
struct JitterBufs<B: Backend> {
    mult: B::Buf,
    u: B::Buf,
}

/// Gradient buffers of the backward pass.
struct Grads<B: Backend> {
    /// `[N*k, d]`, `[N*k, d_ff]` (through the GELU), `[N*k, d]`.
    dye: B::Buf,
    dhe: B::Buf,
    dxe: B::Buf,
    /// `[N*k]`.
    dgate: B::Buf,
    /// `[N, E]`.
    dlogits: B::Buf,
}

/// Everything one MoE layer holds for calls over `N` tokens: the routing,
/// the expert activations, and for training the jitter and backward buffers.
pub struct MoeBuffers<B: Backend> {
    /// The sizes.
    pub shape: MoeShape,
    /// Router logits `[N, E]` (fp32).
    pub logits: B::Buf,
    /// The routing of the last forward.
    pub routing: Routing<B>,
    /// Dispatched inputs `[N*k, d]`.
    pub xe: B::Buf,
    /// Expert pre-activations `[N*k, d_ff]`.
    pub he: B::Buf,
    /// Expert activations `[N*k, d_ff]`.
    pub ae: B::Buf,
    /// Expert outputs `[N*k, d]`.
    pub ye: B::Buf,
    jitter: Option<JitterBufs<B>>,
    grads: Option<Grads<B>>,
    /// Whether the last forward jittered the router input (the backward
    /// must differentiate the same input).
    jittered: bool,
}

impl<B: Backend> MoeBuffers<B> {
    /// Buffers for calls of `shape`; `jitter` adds the router-noise buffers,
    /// `train` the backward buffers.
    pub fn new(be: &B, shape: MoeShape, jitter: bool, train: bool) -> Result<MoeBuffers<B>> {
        let MoeShape { n, d, f, e, k } = shape;
        let rows = n * k;
        let al = |len: usize, what: &str| be.alloc(len, what);
        let jitter = if jitter {
            Some(JitterBufs { mult: al(n * d, "router jitter")?, u: al(n * d, "jittered router input")? })
        } else {
            None
        };
        let grads = if train {
            Some(Grads {
                dye: al(rows * d, "expert output gradient")?,
                dhe: al(rows * f, "expert pre-activation gradient")?,
                dxe: al(rows * d, "dispatched token gradient")?,
                dgate: al(rows, "gate gradient")?,
                dlogits: al(n * e, "router logit gradient")?,
            })
        } else {
            None
        };
        Ok(MoeBuffers {
            shape,
            logits: al(n * e, "router logits")?,
            routing: Routing::new(be, n, e, k)?,
            xe: al(rows * d, "dispatched tokens")?,
            he: al(rows * f, "expert pre-activations")?,
            ae: al(rows * f, "expert activations")?,
            ye: al(rows * d, "expert outputs")?,
            jitter,
            grads,
            jittered: false,
        })
    }
}

/// Forward: `out = MoE(x)` (`=`), `x`, `out`: `[N, d]`. `p` is the model's
/// parameter list, `w` this layer's indices in it, `rp` the routing rule of
/// this call (capacity, gate normalization, loss coefficients). With
/// `jitter`, the router sees the noised input (the buffers must have been
/// built with jitter). The router statistics are left in
/// `buf.routing.stats` for the caller to read.
#[allow(clippy::too_many_arguments)]
pub fn forward<B: Backend>(
    be: &B,
    p: &[B::Buf],
    w: &MoeIdx,
    buf: &mut MoeBuffers<B>,
    x: &B::Buf,
    out: &mut B::Buf,
    rp: &RouterParams,
    jitter: Option<Jitter>,
) {
    let MoeShape { d, f, e, .. } = buf.shape;
    // 1. router logits in fp32 from the (jittered) input
    let u = match (jitter, buf.jitter.as_mut()) {
        (Some(j), Some(jb)) => {
            be.router_jitter(&mut jb.u, &mut jb.mult, x, j.eps, j.seed);
            &jb.u
        }
        (Some(_), None) => panic!("MoE buffers built without jitter"),
        (None, _) => x,
    };
    buf.jittered = jitter.is_some();
    be.matmul(&mut buf.logits, u, &p[w.router], Gemm::new(buf.shape.n, d, e).fp32());
    // 2-5, 8-9: softmax, top-k, gates, slots, statistics
    be.router_fwd(&mut buf.routing, &buf.logits, rp);
    // 6. experts over their kept slots, expert-contiguous
    let r = &buf.routing;
    be.dispatch_fwd(&mut buf.xe, x, r, d);
    be.grouped_matmul_gelu(
        &mut buf.he,
        &mut buf.ae,
        &buf.xe,
        &p[w.fc_w],
        &p[w.fc_b],
        &r.offsets,
        Grouped { e, k: d, n: f },
    );
    be.grouped_matmul(&mut buf.ye, &buf.ae, &p[w.proj_w], &p[w.proj_b], &r.offsets, Grouped { e, k: f, n: d });
    // 7. combine, weighted by the gates; dropped tokens get 0
    be.combine_fwd(out, &buf.ye, r, d);
}

/// Backward of the last [`forward`]: `dx = d out / d x` (`=`) from `dout`,
/// weight gradients accumulated (`+=`) into `g` (indexed like `p`);
/// `loss_weight` scales the aux and z losses (the micro-batch's weight).
/// `scratch`: `[N, d]`, overwritten. The buffers must have been built for
/// training.
#[allow(clippy::too_many_arguments)]
pub fn backward<B: Backend>(
    be: &B,
    p: &[B::Buf],
    g: &mut [B::Buf],
    w: &MoeIdx,
    buf: &mut MoeBuffers<B>,
    x: &B::Buf,
    dout: &B::Buf,
    dx: &mut B::Buf,
    scratch: &mut B::Buf,
    rp: &RouterParams,
    loss_weight: f32,
) {
    let MoeShape { n, d, f, e, .. } = buf.shape;
    let gr = buf.grads.as_mut().expect("MoE buffers built for training");
    let r = &buf.routing;
    be.combine_bwd(&mut gr.dye, &mut gr.dgate, dout, &buf.ye, r, d);
    {
        // through the second expert layer and the GELU: dhe = (dye W2^T) * gelu'(he)
        let (gw, gb) = super::two_mut(g, w.proj_w, w.proj_b);
        be.grouped_matmul_bwd_gelu(
            &mut gr.dhe,
            gw,
            gb,
            &gr.dye,
            &buf.ae,
            &p[w.proj_w],
            &buf.he,
            &r.offsets,
            Grouped { e, k: f, n: d },
        );
    }
    {
        let (gw, gb) = super::two_mut(g, w.fc_w, w.fc_b);
        be.grouped_matmul_bwd(&mut gr.dxe, gw, gb, &gr.dhe, &buf.xe, &p[w.fc_w], &r.offsets, Grouped { e, k: d, n: f });
    }
    be.zero(dx);
    be.dispatch_bwd(dx, &gr.dxe, r, d);
    // router: gates, aux (via P) and z-loss into the logits, then into W_r and u
    be.router_bwd(&mut gr.dlogits, &gr.dgate, &buf.logits, r, rp, loss_weight);
    match buf.jitter.as_mut().filter(|_| buf.jittered) {
        Some(jb) => {
            be.matmul(&mut g[w.router], &jb.u, &gr.dlogits, Gemm::new(d, n, e).ta().add().fp32());
            be.matmul(scratch, &gr.dlogits, &p[w.router], Gemm::new(n, e, d).tb().fp32());
            // u is dead once the router weight gradient is taken: reuse it.
            be.router_jitter_bwd(&mut jb.u, scratch, &jb.mult);
            be.add_inplace(dx, &jb.u);
        }
        None => {
            be.matmul(&mut g[w.router], x, &gr.dlogits, Gemm::new(d, n, e).ta().add().fp32());
            be.matmul(dx, &gr.dlogits, &p[w.router], Gemm::new(n, e, d).tb().add().fp32());
        }
    }
}
