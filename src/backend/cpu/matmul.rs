//! Matmul family on the CPU: dense GEMM through the `gemm` crate, bias add and
//! bias gradient, and the grouped (per-expert) GEMM over expert-contiguous
//! row segments that the MoE layer uses in both capacity and dropless modes.

use rayon::prelude::*;

use super::{index_of, reduce_rows};

/// `c (=|+=) op(a) @ op(b)` through `gemm`, with strides expressing the
/// transposes (no copies).
///
/// # Shapes
/// `op(a)`: `[m, k]`, `op(b)`: `[k, n]`, `c`: `[m, n]`, all row-major.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
    accumulate: bool,
    par: gemm::Parallelism,
) {
    assert!(
        c.len() >= m * n && a.len() >= m * k && b.len() >= k * n,
        "matmul: buffer too small for [{m},{k}]x[{k},{n}]"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    // Element (i, p) of op(a) lives at i*a_rs + p*a_cs.
    let (a_rs, a_cs) = if ta { (1, m as isize) } else { (k as isize, 1) };
    let (b_rs, b_cs) = if tb { (1, k as isize) } else { (n as isize, 1) };
    // SAFETY: the asserts above bound every index the strides reach; c does
    // not alias a or b (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// `out[r, :] += bias` for every row.
pub fn add_bias(out: &mut [f32], bias: &[f32], n: usize) {
    out.par_chunks_mut(n).for_each(|row| {
        for (o, b) in row.iter_mut().zip(bias) {
            *o += b;
        }
    });
}

/// `dbias += sum_r dout[r, :]` in the fixed chunk order of [`reduce_rows`].
pub fn bias_grad(dbias: &mut [f32], dout: &[f32], rows: usize, n: usize) {
    reduce_rows(&mut dbias[..n], rows, |range, part| {
        for r in range {
            for (p, g) in part.iter_mut().zip(&dout[r * n..(r + 1) * n]) {
                *p += g;
            }
        }
    });
}

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
///
/// # Shapes
/// `x`: `[M, k]`, `w`: `[E, k, n]`, `b`: `[E, n]`, `offsets`: `[E + 1]`, `out`: `[M, n]`.
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
