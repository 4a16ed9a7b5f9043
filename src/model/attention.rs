//! The attention sub-layer's projections (DESIGN.md §2): `qkv = x @ W_qkv +
//! b_qkv` and `out = att @ W_o + b_o`, with the training pass's causal
//! attention between them, forward and backward. Inference runs the same
//! projections around its KV-cached attention ([`crate::infer`]), so a change
//! to how q, k and v are formed is made here once.

use super::params::BlockIdx;
use crate::backend::{AttnShape, Backend, Gemm};

/// `qkv = x @ W_qkv + b_qkv` (`=`); `x`: `[n, d]`, `qkv`: `[n, 3d]`.
pub fn qkv_fwd<B: Backend>(be: &B, p: &[B::Buf], w: &BlockIdx, x: &B::Buf, qkv: &mut B::Buf, n: usize, d: usize) {
    be.matmul(qkv, x, &p[w.qkv_w], Gemm::new(n, d, 3 * d));
    be.add_bias(qkv, &p[w.qkv_b], n, 3 * d);
}

/// `out = att @ W_o + b_o` (`=`); `att`, `out`: `[n, d]`.
pub fn output_fwd<B: Backend>(be: &B, p: &[B::Buf], w: &BlockIdx, att: &B::Buf, out: &mut B::Buf, n: usize, d: usize) {
    be.matmul(out, att, &p[w.proj_w], Gemm::new(n, d, d));
    be.add_bias(out, &p[w.proj_b], n, d);
}

/// Training forward: `out = proj(attention(qkv(x)))` (`=`), keeping `qkv`
/// `[n, 3d]`, the attention output `att` `[n, d]` and its row logsumexp
/// `lse` `[b, h, t]` for the backward.
#[allow(clippy::too_many_arguments)]
pub fn forward<B: Backend>(
    be: &B,
    p: &[B::Buf],
    w: &BlockIdx,
    x: &B::Buf,
    (qkv, att, lse): (&mut B::Buf, &mut B::Buf, &mut B::Buf),
    out: &mut B::Buf,
    s: AttnShape,
) {
    let (n, d) = (s.rows(), s.width());
    qkv_fwd(be, p, w, x, qkv, n, d);
    be.attention_fwd(att, lse, qkv, s);
    output_fwd(be, p, w, att, out, n, d);
}

/// Backward of [`forward`]: `dx` (`=`, `[n, d]`) from `dout`, weight
/// gradients accumulated into `g`. `dx` first holds the attention output's
/// gradient; `dqkv` `[n, 3d]` is scratch.
#[allow(clippy::too_many_arguments)]
pub fn backward<B: Backend>(
    be: &B,
    p: &[B::Buf],
    g: &mut [B::Buf],
    w: &BlockIdx,
    x: &B::Buf,
    (qkv, att, lse): (&B::Buf, &B::Buf, &B::Buf),
    dout: &B::Buf,
    (dx, dqkv): (&mut B::Buf, &mut B::Buf),
    s: AttnShape,
) {
    let (n, d) = (s.rows(), s.width());
    be.matmul(dx, dout, &p[w.proj_w], Gemm::new(n, d, d).tb());
    be.matmul(&mut g[w.proj_w], att, dout, Gemm::new(d, n, d).ta().add());
    be.bias_grad(&mut g[w.proj_b], dout, n, d);
    be.attention_bwd(dqkv, dx, qkv, att, lse, s);
    be.matmul(dx, dqkv, &p[w.qkv_w], Gemm::new(n, 3 * d, d).tb());
    be.matmul(&mut g[w.qkv_w], x, dqkv, Gemm::new(d, n, 3 * d).ta().add());
    be.bias_grad(&mut g[w.qkv_b], dqkv, n, 3 * d);
}
