//! Attention family on the CPU: causal multi-head attention with the
//! flash-attention contract, so it is the oracle of `kernels/attention.cu`.
//!
//! Forward writes `O` and the row logsumexp `lse` of the scaled, masked
//! scores; backward recomputes `P = exp(S * scale - lse)` from Q, K and `lse`
//! (it never reads a stored P), then `dV = P^T dO`, `dP = dO V^T`,
//! `D_i = rowsum(dO * O)`, `dS = P * (dP - D)`, `dQ = scale * dS K`,
//! `dK = scale * dS^T Q`. Each (batch, head) pair is one task writing its own
//! columns, so results do not depend on the thread count. The inner products
//! run through `gemm` on strided views of the packed `qkv` (no copies).
//!
//! # Shapes
//! `qkv`: `[B*T, 3*D]` with `D = H*hd` (q | k | v; head `h` at columns
//! `h*hd..(h+1)*hd` of each third); `out`: `[B*T, D]`; `lse`: `[B, H, T]`.

use rayon::prelude::*;

use super::{fastmath, SendPtr};

/// `dst = beta * lhs @ rhs` (overwrite) on raw strided views, single
/// threaded (the caller parallelizes over heads).
///
/// # Safety
/// Every pointer with its strides must address valid memory for the given
/// extents, and `dst` must not alias `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_view(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const f32,
    rhs_rs: isize,
    rhs_cs: isize,
    beta: f32,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        false,
        lhs,
        lhs_cs,
        lhs_rs,
        rhs,
        rhs_cs,
        rhs_rs,
        0.0,
        beta,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

/// Forward softmax of one head, unnormalized: on entry `s` holds raw `QK^T`;
/// on exit `s[i, j] = exp(s_ij * scale - m_i)` for `j <= i` (0 above the
/// diagonal) with `m_i` the row maximum, `lse[i] = m_i + ln(sum_j s[i, j])`
/// and `inv_sum[i] = 1 / sum_j s[i, j]`. The caller normalizes `O = S V`
/// row by row afterwards (`t * hd` multiplies instead of `t * t`), as
/// flash attention does.
fn causal_softmax_numerators(s: &mut [f32], t: usize, scale: f32, lse: &mut [f32], inv_sum: &mut [f32]) {
    for i in 0..t {
        let row = &mut s[i * t..(i + 1) * t];
        let (live, masked) = row.split_at_mut(i + 1);
        // scale > 0, so the maximum of the raw scores is the scaled maximum.
        let max = fastmath::max(live) * scale;
        let sum = fastmath::exp_in_place_sum(live, scale, max);
        masked.fill(0.0);
        lse[i] = max + sum.ln();
        inv_sum[i] = 1.0 / sum;
    }
}

/// Backward recomputation of one head's probabilities from the saved
/// logsumexp: `p[i, j] = exp(s_ij * scale - lse_i)` for `j <= i`, else 0.
fn causal_probs_from_lse(s: &mut [f32], t: usize, scale: f32, lse: &[f32]) {
    for i in 0..t {
        let row = &mut s[i * t..(i + 1) * t];
        let (live, masked) = row.split_at_mut(i + 1);
        fastmath::exp_in_place_sum(live, scale, lse[i]);
        masked.fill(0.0);
    }
}

/// Forward: `out` and `lse` from packed `qkv`.
#[allow(clippy::too_many_arguments)]
pub fn attention_fwd(out: &mut [f32], lse: &mut [f32], qkv: &[f32], b: usize, t: usize, h: usize, hd: usize) {
    let d = h * hd;
    assert!(
        qkv.len() >= b * t * 3 * d && out.len() >= b * t * d && lse.len() >= b * h * t,
        "attention_fwd: buffers too small"
    );
    let scale = 1.0 / (hd as f32).sqrt();
    let outp = SendPtr(out.as_mut_ptr());
    lse[..b * h * t].par_chunks_mut(t).enumerate().for_each(|(bh, lse_row)| {
        let (bi, hi) = (bh / h, bh % h);
        let base = bi * t * 3 * d + hi * hd;
        let q = qkv[base..].as_ptr();
        let k = qkv[base + d..].as_ptr();
        let v = qkv[base + 2 * d..].as_ptr();
        let mut s = vec![0.0f32; t * t];
        let mut inv_sum = vec![0.0f32; t];
        let o = outp;
        // SAFETY: q/k/v rows are t rows of stride 3d inside qkv (asserted);
        // each task writes only its own head's columns of `out`.
        unsafe {
            gemm_view(t, t, hd, s.as_mut_ptr(), t, q, 3 * d as isize, 1, k, 1, 3 * d as isize, 1.0);
            causal_softmax_numerators(&mut s, t, scale, lse_row, &mut inv_sum);
            let dst = o.0.add(bi * t * d + hi * hd);
            gemm_view(t, hd, t, dst, d, s.as_ptr(), t as isize, 1, v, 3 * d as isize, 1, 1.0);
            for (i, &inv) in inv_sum.iter().enumerate() {
                for c in 0..hd {
                    *dst.add(i * d + c) *= inv;
                }
            }
        }
    });
}

/// Backward: `dqkv` (`=`) from `dout`, recomputing P from `qkv` and `lse`.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    b: usize,
    t: usize,
    h: usize,
    hd: usize,
) {
    let d = h * hd;
    assert!(
        dqkv.len() >= b * t * 3 * d && dout.len() >= b * t * d && out.len() >= b * t * d && lse.len() >= b * h * t,
        "attention_bwd: buffers too small"
    );
    let scale = 1.0 / (hd as f32).sqrt();
    let dp = SendPtr(dqkv.as_mut_ptr());
    (0..b * h).into_par_iter().for_each(|bh| {
        let (bi, hi) = (bh / h, bh % h);
        let base = bi * t * 3 * d + hi * hd;
        let obase = bi * t * d + hi * hd;
        let q = qkv[base..].as_ptr();
        let k = qkv[base + d..].as_ptr();
        let v = qkv[base + 2 * d..].as_ptr();
        let dop = dout[obase..].as_ptr();
        let mut p = vec![0.0f32; t * t];
        let mut ds = vec![0.0f32; t * t];
        let dq_ptr = dp;
        // SAFETY: as in the forward pass; each task writes only the q, k and
        // v columns of its own head in `dqkv`.
        unsafe {
            gemm_view(t, t, hd, p.as_mut_ptr(), t, q, 3 * d as isize, 1, k, 1, 3 * d as isize, 1.0);
            causal_probs_from_lse(&mut p, t, scale, &lse[bh * t..(bh + 1) * t]);
            // dV = P^T dO
            let dv = dq_ptr.0.add(base + 2 * d);
            gemm_view(t, hd, t, dv, 3 * d, p.as_ptr(), 1, t as isize, dop, d as isize, 1, 1.0);
            // dP = dO V^T
            gemm_view(t, t, hd, ds.as_mut_ptr(), t, dop, d as isize, 1, v, 1, 3 * d as isize, 1.0);
            // dS = P * (dP - D_i), D_i = rowsum(dO * O)
            for i in 0..t {
                let o_row = &out[obase + i * d..obase + i * d + hd];
                let do_row = &dout[obase + i * d..obase + i * d + hd];
                let di = fastmath::dot(o_row, do_row);
                let prow = &p[i * t..(i + 1) * t];
                let srow = &mut ds[i * t..(i + 1) * t];
                for j in 0..=i {
                    srow[j] = prow[j] * (srow[j] - di);
                }
                srow[i + 1..].fill(0.0);
            }
            // dQ = scale * dS K, dK = scale * dS^T Q
            let dq = dq_ptr.0.add(base);
            gemm_view(t, hd, t, dq, 3 * d, ds.as_ptr(), t as isize, 1, k, 3 * d as isize, 1, scale);
            let dk = dq_ptr.0.add(base + d);
            gemm_view(t, hd, t, dk, 3 * d, ds.as_ptr(), 1, t as isize, q, 3 * d as isize, 1, scale);
        }
    });
}

/// Append the k and v thirds of `qkv` rows to the caches at `slots` (negative: skip).
pub fn kv_append(k_cache: &mut [f32], v_cache: &mut [f32], qkv: &[f32], slots: &[i32], n: usize, d: usize) {
    for i in 0..n {
        let Ok(slot) = usize::try_from(slots[i]) else { continue };
        let row = &qkv[i * 3 * d..(i + 1) * 3 * d];
        k_cache[slot * d..(slot + 1) * d].copy_from_slice(&row[d..2 * d]);
        v_cache[slot * d..(slot + 1) * d].copy_from_slice(&row[2 * d..]);
    }
}

/// Decode attention, one query per sequence against its cache (the oracle of
/// `attention_decode_*` in kernels/attention.cu): `out[s]` for head `hh` is
/// `softmax(scale * q . k_j) . v_j` over `j < lens[s]`. Each (sequence,
/// head) is one task writing its own columns.
#[allow(clippy::too_many_arguments)]
pub fn attention_decode(
    out: &mut [f32],
    qkv: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    lens: &[i32],
    n_seq: usize,
    h: usize,
    hd: usize,
    max_t: usize,
) {
    let d = h * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    out[..n_seq * d].par_chunks_mut(d).enumerate().for_each(|(s, o)| {
        let len = usize::try_from(lens[s]).expect("lens are validated").clamp(1, max_t);
        let mut w = vec![0.0f32; len];
        for hh in 0..h {
            let q = &qkv[s * 3 * d + hh * hd..s * 3 * d + (hh + 1) * hd];
            for (j, wj) in w.iter_mut().enumerate() {
                let k = &k_cache[(s * max_t + j) * d + hh * hd..(s * max_t + j) * d + (hh + 1) * hd];
                *wj = fastmath::dot(q, k) * scale;
            }
            let mx = fastmath::max(&w);
            let sum = fastmath::exp_in_place_sum(&mut w, 1.0, mx);
            let oh = &mut o[hh * hd..(hh + 1) * hd];
            oh.fill(0.0);
            for (j, &wj) in w.iter().enumerate() {
                let v = &v_cache[(s * max_t + j) * d + hh * hd..(s * max_t + j) * d + (hh + 1) * hd];
                for c in 0..hd {
                    oh[c] += wj * v[c];
                }
            }
            let inv = 1.0 / sum;
            oh.iter_mut().for_each(|x| *x *= inv);
        }
    });
}
