//! Launchers for `kernels/embedding.cu`: token + position embedding forward
//! and the deterministic (sort-free ranking, single-owner) backward.

use super::kernels::{EMBEDDING_BWD_RANK, EMBEDDING_BWD_WPE, EMBEDDING_BWD_WTE, EMBEDDING_FWD};
use super::params::{EmbeddingBwdParams, EmbeddingParams};
use super::{Cuda, CudaBuf, CudaIBuf};

/// Threads per block (8 warps; the forward handles one row per warp).
const BLOCK: u32 = 256;
/// Rows per block of the forward: one per warp.
const FWD_ROWS_PER_BLOCK: usize = BLOCK as usize / 32;
/// The rank kernel's block: 128 rows x 4 key slices, exactly (kernels/embedding.cu).
const RANK_BLOCK: u32 = 512;
/// Rows ranked per block of the rank kernel.
const RANK_ROWS_PER_BLOCK: usize = 128;

/// `out[n] = wte[tokens[n]] + wpe[n % t]`.
pub(super) fn fwd(
    cu: &Cuda,
    out: &mut CudaBuf,
    tokens: &CudaIBuf,
    wte: &CudaBuf,
    wpe: &CudaBuf,
    (b, t, d): (usize, usize, usize),
) {
    let n = b * t;
    assert!(out.len() >= n * d && tokens.len() >= n && wpe.len() >= t * d, "embedding_fwd: shapes");
    let p = EmbeddingParams {
        out: cu.out(out),
        tokens: cu.ptr(&tokens.data),
        positions: 0,
        wte: cu.ptr(&wte.data),
        wpe: cu.ptr(&wpe.data),
        b: b as i32,
        t: t as i32,
        d: d as i32,
        vocab: (wte.len() / d.max(1)) as i32,
        max_t: (wpe.len() / d.max(1)) as i32,
    };
    cu.launch(EMBEDDING_FWD, (n.div_ceil(FWD_ROWS_PER_BLOCK) as u32, 1, 1), BLOCK, 0, p);
}

/// `out[i] = wte[tokens[i]] + wpe[positions[i]]` (inference).
#[allow(clippy::too_many_arguments)]
pub(super) fn at(
    cu: &Cuda,
    out: &mut CudaBuf,
    tokens: &CudaIBuf,
    positions: &CudaIBuf,
    wte: &CudaBuf,
    wpe: &CudaBuf,
    (n, d): (usize, usize),
) {
    assert!(out.len() >= n * d && tokens.len() >= n && positions.len() >= n, "embedding_at: shapes");
    let p = EmbeddingParams {
        out: cu.out(out),
        tokens: cu.ptr(&tokens.data),
        positions: cu.ptr(&positions.data),
        wte: cu.ptr(&wte.data),
        wpe: cu.ptr(&wpe.data),
        b: 1,
        t: n.max(1) as i32,
        d: d as i32,
        vocab: (wte.len() / d.max(1)) as i32,
        max_t: (wpe.len() / d.max(1)) as i32,
    };
    cu.launch(EMBEDDING_FWD, (n.div_ceil(FWD_ROWS_PER_BLOCK) as u32, 1, 1), BLOCK, 0, p);
}

/// `dwte[tokens[n]] += dout[n]`, `dwpe[t] += dout[b*T + t]`.
pub(super) fn bwd(
    cu: &Cuda,
    dwte: &mut CudaBuf,
    dwpe: &mut CudaBuf,
    dout: &CudaBuf,
    tokens: &CudaIBuf,
    (b, t, d): (usize, usize, usize),
) {
    let n = b * t;
    assert!(dout.len() >= n * d && tokens.len() >= n && dwpe.len() >= t * d, "embedding_bwd: shapes");
    if n == 0 {
        return;
    }
    let p = EmbeddingBwdParams {
        dwte: cu.out(dwte),
        dwpe: cu.out(dwpe),
        order: cu.scratch_i32("embedding.order", n),
        dout: cu.ptr(&dout.data),
        tokens: cu.ptr(&tokens.data),
        b: b as i32,
        t: t as i32,
        d: d as i32,
        vocab: (dwte.len() / d.max(1)) as i32,
    };
    cu.launch(EMBEDDING_BWD_RANK, (n.div_ceil(RANK_ROWS_PER_BLOCK) as u32, 1, 1), RANK_BLOCK, 0, p);
    cu.launch(EMBEDDING_BWD_WTE, (n as u32, 1, 1), BLOCK, 0, p);
    cu.launch(EMBEDDING_BWD_WPE, (t as u32, 1, 1), BLOCK, 0, p);
}
