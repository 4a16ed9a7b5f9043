//! Launchers for `kernels/activation.cu`: bias add, fused bias + GELU, GELU
//! forward/backward and the deterministic bias gradient (column sums).

use super::kernels::{
    ACTIVATION_BIAS_FWD, ACTIVATION_BIAS_GELU_FWD, ACTIVATION_COLSUM_FINISH, ACTIVATION_COLSUM_PARTIAL,
    ACTIVATION_GELU_BWD, ACTIVATION_GELU_FWD,
};
use super::params::{BiasGeluParams, BiasParams, ColSumParams, GeluParams};
use super::{grid_1d, Cuda, CudaBuf};

/// Threads per block of the elementwise kernels.
const BLOCK: u32 = 256;
/// Rows per partial-sum block of the column sums: 64 keeps the partial
/// buffer small (rows / 64 x cols) while giving rows / 64 blocks of
/// parallelism (128 blocks for 8k tokens).
const COLSUM_CHUNK_ROWS: usize = 64;

/// `out[r, :] += bias`.
pub(super) fn bias_fwd(cu: &Cuda, out: &mut CudaBuf, bias: &CudaBuf, rows: usize, cols: usize) {
    assert!(out.len() >= rows * cols && bias.len() >= cols, "add_bias: buffer smaller than its shape");
    let p = BiasParams { out: cu.out(out), bias: cu.ptr(&bias.data), rows: rows as i32, cols: cols as i32 };
    cu.launch(ACTIVATION_BIAS_FWD, (grid_1d(rows * cols, BLOCK), 1, 1), BLOCK, 0, p);
}

/// `pre += bias; out = gelu(pre)`.
pub(super) fn bias_gelu_fwd(cu: &Cuda, pre: &mut CudaBuf, out: &mut CudaBuf, bias: &CudaBuf, rows: usize, cols: usize) {
    assert!(pre.len() >= rows * cols && out.len() >= rows * cols && bias.len() >= cols, "bias_gelu_fwd: shapes");
    let p = BiasGeluParams {
        pre: cu.out(pre),
        out: cu.out(out),
        bias: cu.ptr(&bias.data),
        rows: rows as i32,
        cols: cols as i32,
    };
    cu.launch(ACTIVATION_BIAS_GELU_FWD, (grid_1d(rows * cols, BLOCK), 1, 1), BLOCK, 0, p);
}

/// `out = gelu(x)` over `len` elements.
pub(super) fn gelu_fwd(cu: &Cuda, out: &mut CudaBuf, x: &CudaBuf, len: usize) {
    assert!(out.len() >= len && x.len() >= len, "gelu_fwd: buffer smaller than len");
    let p = GeluParams { out: cu.out(out), x: cu.ptr(&x.data), dout: 0, n: len as i64 };
    cu.launch(ACTIVATION_GELU_FWD, (grid_1d(len, BLOCK), 1, 1), BLOCK, 0, p);
}

/// `dx = dout * gelu'(x)` over `len` elements.
pub(super) fn gelu_bwd(cu: &Cuda, dx: &mut CudaBuf, dout: &CudaBuf, x: &CudaBuf, len: usize) {
    assert!(dx.len() >= len && dout.len() >= len && x.len() >= len, "gelu_bwd: buffer smaller than len");
    let p = GeluParams { out: cu.out(dx), x: cu.ptr(&x.data), dout: cu.ptr(&dout.data), n: len as i64 };
    cu.launch(ACTIVATION_GELU_BWD, (grid_1d(len, BLOCK), 1, 1), BLOCK, 0, p);
}

/// `dbias += sum_r dout[r, :]` in a fixed order (two launches, no atomics).
pub(super) fn bias_grad(cu: &Cuda, dbias: &mut CudaBuf, dout: &CudaBuf, rows: usize, cols: usize) {
    assert!(dbias.len() >= cols && dout.len() >= rows * cols, "bias_grad: buffer smaller than its shape");
    if rows == 0 || cols == 0 {
        return;
    }
    let chunks = rows.div_ceil(COLSUM_CHUNK_ROWS);
    let p = ColSumParams {
        dst: cu.out(dbias),
        partial: cu.scratch_f32("colsum.partial", chunks * cols),
        src: cu.ptr(&dout.data),
        rows: rows as i32,
        cols: cols as i32,
        chunk_rows: COLSUM_CHUNK_ROWS as i32,
    };
    cu.launch(ACTIVATION_COLSUM_PARTIAL, (chunks as u32, cols.div_ceil(BLOCK as usize) as u32, 1), BLOCK, 0, p);
    cu.launch(ACTIVATION_COLSUM_FINISH, (grid_1d(cols, BLOCK), 1, 1), BLOCK, 0, p);
}
