//! The dense MLP (DESIGN.md §2): `out = gelu(x @ W1 + b1) @ W2 + b2`,
//! forward and backward; training, evaluation and inference run this one.

use super::params::DenseIdx;
use crate::backend::{Backend, Gemm};
use crate::Result;

/// Activations of one dense MLP for calls over `n` rows.
pub struct DenseBuffers<B: Backend> {
    /// Pre-activation `x @ W1 + b1` `[n, d_ff]`.
    pub pre: B::Buf,
    /// GELU output `[n, d_ff]`.
    pub act: B::Buf,
}

impl<B: Backend> DenseBuffers<B> {
    /// Buffers for `n` rows of width `f`.
    pub fn new(be: &B, n: usize, f: usize) -> Result<DenseBuffers<B>> {
        Ok(DenseBuffers { pre: be.alloc(n * f, "mlp pre-activation")?, act: be.alloc(n * f, "mlp activation")? })
    }
}

/// Forward: `out = MLP(x)` (`=`); `x`, `out`: `[n, d]`.
#[allow(clippy::too_many_arguments)]
pub fn forward<B: Backend>(
    be: &B,
    p: &[B::Buf],
    w: &DenseIdx,
    buf: &mut DenseBuffers<B>,
    x: &B::Buf,
    out: &mut B::Buf,
    n: usize,
    d: usize,
    f: usize,
) {
    be.matmul(&mut buf.pre, x, &p[w.fc_w], Gemm::new(n, d, f));
    be.bias_gelu_fwd(&mut buf.pre, &mut buf.act, &p[w.fc_b], n, f);
    be.matmul(out, &buf.act, &p[w.proj_w], Gemm::new(n, f, d));
    be.add_bias(out, &p[w.proj_b], n, d);
}

/// Backward of the last [`forward`]: `dx` (`=`) from `dout`, weight
/// gradients accumulated into `g`; `dff`, `dff2`: `[n, d_ff]` scratch.
#[allow(clippy::too_many_arguments)]
pub fn backward<B: Backend>(
    be: &B,
    p: &[B::Buf],
    g: &mut [B::Buf],
    w: &DenseIdx,
    buf: &DenseBuffers<B>,
    x: &B::Buf,
    dout: &B::Buf,
    dx: &mut B::Buf,
    (dff, dff2): (&mut B::Buf, &mut B::Buf),
    n: usize,
    d: usize,
    f: usize,
) {
    be.matmul(dff, dout, &p[w.proj_w], Gemm::new(n, d, f).tb());
    be.matmul(&mut g[w.proj_w], &buf.act, dout, Gemm::new(f, n, d).ta().add());
    be.bias_grad(&mut g[w.proj_b], dout, n, d);
    be.gelu_bwd(dff2, dff, &buf.pre, n * f);
    be.matmul(dx, dff2, &p[w.fc_w], Gemm::new(n, f, d).tb());
    be.matmul(&mut g[w.fc_w], x, dff2, Gemm::new(d, n, f).ta().add());
    be.bias_grad(&mut g[w.fc_b], dff2, n, f);
}
