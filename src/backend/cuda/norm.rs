//! Launchers for `kernels/norm.cu`: LayerNorm forward and the deterministic
//! two-launch backward.

use super::kernels::{NORM_LAYERNORM_BWD, NORM_LAYERNORM_BWD_FINISH, NORM_LAYERNORM_FWD};
use super::params::{LayerNormBwdParams, LayerNormParams};
use super::{grid_1d, Cuda, CudaBuf};

/// LayerNorm epsilon (the CPU reference's, DESIGN.md §2).
const EPS: f32 = 1e-5;
/// Threads per block (8 warps, one row per warp in the forward).
const BLOCK: u32 = 256;
/// Rows per backward block: its dw/db partials cover this many rows.
const BWD_CHUNK_ROWS: usize = 64;

/// `out = LN(x) * w + b`, `mean`, `rstd` per row.
pub(super) fn layernorm_fwd(
    cu: &Cuda,
    [out, mean, rstd]: [&mut CudaBuf; 3],
    [x, w, b]: [&CudaBuf; 3],
    rows: usize,
    c: usize,
) {
    assert!(out.len() >= rows * c && x.len() >= rows * c && mean.len() >= rows && rstd.len() >= rows);
    assert!(w.len() >= c && b.len() >= c, "layernorm_fwd: weight shorter than c");
    let p = LayerNormParams {
        out: cu.out(out),
        mean: cu.out(mean),
        rstd: cu.out(rstd),
        x: cu.ptr(&x.data),
        w: cu.ptr(&w.data),
        b: cu.ptr(&b.data),
        rows: rows as i32,
        c: c as i32,
        eps: EPS,
    };
    let warps = (BLOCK / 32) as usize;
    cu.launch(NORM_LAYERNORM_FWD, (rows.div_ceil(warps) as u32, 1, 1), BLOCK, 0, p);
}

/// `dx += ...`, `dw += ...`, `db += ...`.
pub(super) fn layernorm_bwd(
    cu: &Cuda,
    [dx, dw, db]: [&mut CudaBuf; 3],
    [dout, x, w, mean, rstd]: [&CudaBuf; 5],
    rows: usize,
    c: usize,
) {
    assert!(dx.len() >= rows * c && dout.len() >= rows * c && x.len() >= rows * c);
    assert!(dw.len() >= c && db.len() >= c && w.len() >= c && mean.len() >= rows && rstd.len() >= rows);
    if rows == 0 || c == 0 {
        return;
    }
    let chunks = rows.div_ceil(BWD_CHUNK_ROWS);
    let p = LayerNormBwdParams {
        dx: cu.out(dx),
        dw: cu.out(dw),
        db: cu.out(db),
        partial: cu.scratch_f32("layernorm.partial", chunks * 2 * c),
        dout: cu.ptr(&dout.data),
        x: cu.ptr(&x.data),
        w: cu.ptr(&w.data),
        mean: cu.ptr(&mean.data),
        rstd: cu.ptr(&rstd.data),
        rows: rows as i32,
        c: c as i32,
        chunk_rows: BWD_CHUNK_ROWS as i32,
    };
    cu.launch(NORM_LAYERNORM_BWD, (chunks as u32, 1, 1), BLOCK, 0, p);
    cu.launch(NORM_LAYERNORM_BWD_FINISH, (grid_1d(c, BLOCK), 1, 1), BLOCK, 0, p);
}
