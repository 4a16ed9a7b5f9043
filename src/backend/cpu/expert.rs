//! Expert family on the CPU: the grouped (per-expert) GEMM over
//! expert-contiguous row segments that the MoE layer uses in both capacity
//! and dropless modes, with the experts' GELU fused where the CUDA kernels
//! fuse it (`kernels/expert.cu`). Each expert's product is one `gemm` call on
//! its segment; results do not depend on how experts are spread over threads.
//!
//! # Shapes
//! `x`: `[M, k]` (rows `offsets[e]..offsets[e+1]` belong to expert `e`),
//! `w`: `[E, k, n]`, `b`: `[E, n]`, `offsets`: `[E + 1]`, outputs `[M, n]`.

use rayon::prelude::*;

use super::activation::{gelu_fwd, gelu_grad};
use super::index_of;
use super::matmul::matmul;

fn segment(offsets: &[i32], e: usize) -> std::ops::Range<usize> {
    let lo = index_of(offsets[e]).expect("offsets are non-negative");
    let hi = index_of(offsets[e + 1]).expect("offsets are non-negative");
    lo..hi
}

/// Split the first `offsets[E]` rows of `buf` (rows of `width` values) into
/// one mutable slice per expert segment.
fn split_segments<'a>(mut buf: &'a mut [f32], offsets: &[i32], e: usize, width: usize) -> Vec<&'a mut [f32]> {
    let mut segs = Vec::with_capacity(e);
    for ex in 0..e {
        let (head, tail) = buf.split_at_mut(segment(offsets, ex).len() * width);
        segs.push(head);
        buf = tail;
    }
    segs
}

/// Whether to run experts in parallel (each gemm single-threaded) rather
/// than one after another (each gemm threaded). Parallel over experts wins
/// for the many small segments of a balanced router (measured on the tiny
/// preset: 8 segments of ~256 rows); a segment holding most rows (a collapsed
/// router) is better served by a threaded gemm. Both orders give identical
/// bits: gemm results do not depend on its thread count
/// (`tests/cpu_backend.rs`), and bias gradients are summed per expert in
/// row order either way.
fn experts_in_parallel(offsets: &[i32], e: usize, par: gemm::Parallelism) -> bool {
    let total = index_of(offsets[e]).unwrap_or(0);
    let largest = (0..e).map(|ex| segment(offsets, ex).len()).max().unwrap_or(0);
    !matches!(par, gemm::Parallelism::None) && e > 1 && 2 * largest <= total
}

/// `db += sum_rows dy` in row order (one expert's bias gradient).
fn colsum_into(db: &mut [f32], dy: &[f32], n: usize) {
    for row in dy.chunks_exact(n) {
        for (d, g) in db.iter_mut().zip(row) {
            *d += g;
        }
    }
}

/// `out[seg_e] = x[seg_e] @ w[e] + b[e]` for every expert `e`.
#[allow(clippy::too_many_arguments)]
pub fn grouped_matmul(
    out: &mut [f32],
    x: &[f32],
    w: &[f32],
    b: &[f32],
    offsets: &[i32],
    e: usize,
    k: usize,
    n: usize,
    par: gemm::Parallelism,
) {
    let parallel = experts_in_parallel(offsets, e, par);
    let inner = if parallel { gemm::Parallelism::None } else { par };
    let one = |ex: usize, o: &mut [f32]| {
        let seg = segment(offsets, ex);
        if seg.is_empty() {
            return;
        }
        let xs = &x[seg.start * k..seg.end * k];
        matmul(o, xs, &w[ex * k * n..(ex + 1) * k * n], seg.len(), k, n, false, false, false, inner);
        for row in o.chunks_exact_mut(n) {
            for (v, bias) in row.iter_mut().zip(&b[ex * n..(ex + 1) * n]) {
                *v += bias;
            }
        }
    };
    let segs = split_segments(out, offsets, e, n);
    if parallel {
        segs.into_par_iter().enumerate().for_each(|(ex, o)| one(ex, o));
    } else {
        segs.into_iter().enumerate().for_each(|(ex, o)| one(ex, o));
    }
}

/// Backward of [`grouped_matmul`]: `dx[seg] = dy[seg] @ w[e]^T` (`=`),
/// `dw[e] += x[seg]^T @ dy[seg]`, `db[e] += colsum(dy[seg])`.
#[allow(clippy::too_many_arguments)]
pub fn grouped_matmul_bwd(
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    offsets: &[i32],
    e: usize,
    k: usize,
    n: usize,
    par: gemm::Parallelism,
) {
    let parallel = experts_in_parallel(offsets, e, par);
    let inner = if parallel { gemm::Parallelism::None } else { par };
    let one = |ex: usize, dxs: &mut [f32], dwe: &mut [f32], dbe: &mut [f32]| {
        let seg = segment(offsets, ex);
        if seg.is_empty() {
            return;
        }
        let rows = seg.len();
        let dys = &dy[seg.start * n..seg.end * n];
        let xs = &x[seg.start * k..seg.end * k];
        matmul(dxs, dys, &w[ex * k * n..(ex + 1) * k * n], rows, n, k, false, true, false, inner);
        matmul(dwe, xs, dys, k, rows, n, true, false, true, inner);
        colsum_into(dbe, dys, n);
    };
    let segs = split_segments(dx, offsets, e, k);
    let work: Vec<_> = segs.into_iter().zip(dw[..e * k * n].chunks_mut(k * n)).zip(db[..e * n].chunks_mut(n)).collect();
    if parallel {
        work.into_par_iter().enumerate().for_each(|(ex, ((dxs, dwe), dbe))| one(ex, dxs, dwe, dbe));
    } else {
        work.into_iter().enumerate().for_each(|(ex, ((dxs, dwe), dbe))| one(ex, dxs, dwe, dbe));
    }
}

/// `pre[seg_e] = x[seg_e] @ w[e] + b[e]`, `act = gelu(pre)`: the two passes of
/// the unfused ops, so the values are theirs bit for bit.
#[allow(clippy::too_many_arguments)]
pub fn grouped_matmul_gelu(
    pre: &mut [f32],
    act: &mut [f32],
    x: &[f32],
    w: &[f32],
    b: &[f32],
    offsets: &[i32],
    e: usize,
    k: usize,
    n: usize,
    par: gemm::Parallelism,
) {
    grouped_matmul(pre, x, w, b, offsets, e, k, n, par);
    let rows = index_of(offsets[e]).unwrap_or(0);
    gelu_fwd(&mut act[..rows * n], &pre[..rows * n]);
}

/// Backward of `y = gelu(pre) @ w + b` per expert: `dpre = (dy @ w^T) * gelu'(pre)`,
/// `dw += act^T dy`, `db += colsum(dy)` (`act` = `x` = `gelu(pre)`).
#[allow(clippy::too_many_arguments)]
pub fn grouped_matmul_bwd_gelu(
    dpre: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    pre: &[f32],
    offsets: &[i32],
    e: usize,
    k: usize,
    n: usize,
    par: gemm::Parallelism,
) {
    grouped_matmul_bwd(dpre, dw, db, dy, x, w, offsets, e, k, n, par);
    let rows = index_of(offsets[e]).unwrap_or(0);
    dpre[..rows * k].par_chunks_mut(4096).zip(pre[..rows * k].par_chunks(4096)).for_each(|(d, p)| {
        for (d, &p) in d.iter_mut().zip(p) {
            *d *= gelu_grad(p);
        }
    });
}
