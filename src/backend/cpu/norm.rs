//! Norm family on the CPU: LayerNorm over the last dimension, eps 1e-5, with
//! affine weight and bias. Statistics in f32, saved for the backward pass as
//! `mean` and `rstd = 1/sqrt(var + eps)` (biased variance, as PyTorch).

use rayon::prelude::*;

use super::{fastmath, reduce_rows};

/// LayerNorm epsilon (DESIGN.md §2).
pub const EPS: f32 = 1e-5;

/// `out = (x - mean) * rstd * w + b` per row.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_fwd(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    x: &[f32],
    w: &[f32],
    b: &[f32],
    rows: usize,
    c: usize,
) {
    out[..rows * c]
        .par_chunks_mut(c)
        .zip(mean[..rows].par_iter_mut())
        .zip(rstd[..rows].par_iter_mut())
        .enumerate()
        .for_each(|(r, ((o, m), s))| {
            let xr = &x[r * c..(r + 1) * c];
            let mu = fastmath::sum(xr) / c as f32;
            // The output row holds x - mean first: no scratch allocation.
            for (d, &v) in o.iter_mut().zip(xr) {
                *d = v - mu;
            }
            let var = fastmath::dot(o, o) / c as f32;
            let rs = 1.0 / (var + EPS).sqrt();
            for i in 0..c {
                o[i] = o[i] * rs * w[i] + b[i];
            }
            *m = mu;
            *s = rs;
        });
}

/// LayerNorm backward: `dx += rstd * (g - mean(g) - xhat * mean(g * xhat))`
/// with `g = dout * w`; `dw += sum_r dout * xhat`; `db += sum_r dout`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_bwd(
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    mean: &[f32],
    rstd: &[f32],
    rows: usize,
    c: usize,
) {
    // Rows in groups of ROWS per task, so the two scratch rows are
    // allocated once per group rather than once per row.
    const ROWS: usize = 32;
    dx[..rows * c].par_chunks_mut(c * ROWS).enumerate().for_each(|(grp, dxg)| {
        let mut g = vec![0.0f32; c];
        let mut xhat = vec![0.0f32; c];
        for (i_row, dxr) in dxg.chunks_mut(c).enumerate() {
            let r = grp * ROWS + i_row;
            let xr = &x[r * c..(r + 1) * c];
            let gr = &dout[r * c..(r + 1) * c];
            let (mu, rs) = (mean[r], rstd[r]);
            for i in 0..c {
                g[i] = gr[i] * w[i];
                xhat[i] = (xr[i] - mu) * rs;
            }
            let mean_g = fastmath::sum(&g) / c as f32;
            let mean_gx = fastmath::dot(&g, &xhat) / c as f32;
            for i in 0..c {
                dxr[i] += rs * (g[i] - mean_g - xhat[i] * mean_gx);
            }
        }
    });
    let mut dwb = vec![0.0f32; 2 * c];
    reduce_rows(&mut dwb, rows, |range, part| {
        let (pw, pb) = part.split_at_mut(c);
        for r in range {
            let xr = &x[r * c..(r + 1) * c];
            let gr = &dout[r * c..(r + 1) * c];
            let (mu, rs) = (mean[r], rstd[r]);
            for i in 0..c {
                pw[i] += gr[i] * (xr[i] - mu) * rs;
                pb[i] += gr[i];
            }
        }
    });
    for i in 0..c {
        dw[i] += dwb[i];
        db[i] += dwb[c + i];
    }
}
