//! Dispatch family on the CPU: permute token rows into expert-contiguous
//! rows and combine expert outputs back, weighted by the gates. Everything is
//! a gather (each output row is computed by one task from fixed inputs in a
//! fixed order), the property that makes `kernels/dispatch.cu` bitwise
//! reproducible too.
//!
//! # Shapes
//! `x`, `out`, `dx`, `dout`: `[N, d]`; `xe`, `ye`, `dxe`, `dye`: `[N*k, d]`
//! (only the first `offsets[E]` rows are used); `row`, `gate`, `dgate`:
//! `[N*k]` indexed by assignment `a = n*k + j`; `row_assign`: `[N*k]`
//! indexed by dispatched row.

use rayon::prelude::*;

use super::index_of;

/// `xe[r] = x[row_assign[r] / k]` for every dispatched row (rows with no
/// assignment are left untouched).
pub fn dispatch_fwd(xe: &mut [f32], x: &[f32], row_assign: &[i32], n_rows: usize, k: usize, d: usize) {
    xe[..n_rows * d].par_chunks_mut(d).zip(&row_assign[..n_rows]).for_each(|(dst, &a)| {
        if let Some(a) = index_of(a) {
            let t = a / k;
            dst.copy_from_slice(&x[t * d..(t + 1) * d]);
        }
    });
}

/// `dx[n] += sum_j dxe[row[n*k + j]]` over kept assignments, j ascending.
pub fn dispatch_bwd(dx: &mut [f32], dxe: &[f32], row: &[i32], n: usize, k: usize, d: usize) {
    dx[..n * d].par_chunks_mut(d).enumerate().for_each(|(t, dst)| {
        for &r in &row[t * k..(t + 1) * k] {
            if let Some(r) = index_of(r) {
                for (o, g) in dst.iter_mut().zip(&dxe[r * d..(r + 1) * d]) {
                    *o += g;
                }
            }
        }
    });
}

/// `out[n] = sum_j gate[n*k + j] * ye[row[n*k + j]]` over kept assignments
/// (`=`; a token with none kept gets 0 and the residual carries it).
pub fn combine_fwd(out: &mut [f32], ye: &[f32], row: &[i32], gate: &[f32], n: usize, k: usize, d: usize) {
    out[..n * d].par_chunks_mut(d).enumerate().for_each(|(t, dst)| {
        dst.fill(0.0);
        for j in 0..k {
            let a = t * k + j;
            if let Some(r) = index_of(row[a]) {
                let g = gate[a];
                for (o, y) in dst.iter_mut().zip(&ye[r * d..(r + 1) * d]) {
                    *o += g * y;
                }
            }
        }
    });
}

/// Combine backward: `dye[r] = gate[a] * dout[a / k]` for `a = row_assign[r]`,
/// and `dgate[a] = <dout[a / k], ye[row[a]]>` (0 for dropped assignments).
#[allow(clippy::too_many_arguments)]
pub fn combine_bwd(
    dye: &mut [f32],
    dgate: &mut [f32],
    dout: &[f32],
    ye: &[f32],
    row: &[i32],
    row_assign: &[i32],
    gate: &[f32],
    n_rows: usize,
    n: usize,
    k: usize,
    d: usize,
) {
    dye[..n_rows * d].par_chunks_mut(d).zip(&row_assign[..n_rows]).for_each(|(dst, &a)| {
        if let Some(a) = index_of(a) {
            let t = a / k;
            let g = gate[a];
            for (o, x) in dst.iter_mut().zip(&dout[t * d..(t + 1) * d]) {
                *o = g * x;
            }
        }
    });
    dgate[..n * k].par_iter_mut().enumerate().for_each(|(a, dg)| {
        *dg = match index_of(row[a]) {
            Some(r) => {
                let t = a / k;
                dout[t * d..(t + 1) * d].iter().zip(&ye[r * d..(r + 1) * d]).map(|(x, y)| x * y).sum()
            }
            None => 0.0,
        };
    });
}
