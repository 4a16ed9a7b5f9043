//! Matmul family on the CPU: dense GEMM through the `gemm` crate, bias add and
//! bias gradient. The grouped per-expert GEMM is the expert family
//! (`expert.rs`).

use rayon::prelude::*;

use super::reduce_rows;

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
