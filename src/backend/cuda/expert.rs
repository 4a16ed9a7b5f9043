//! Launchers for `kernels/expert.cu`: the grouped expert GEMM (forward with
//! bias and optional GELU, input gradient with optional GELU derivative,
//! weight gradient) and the deterministic per-expert bias gradient.
//!
//! Every launch reads the expert segments from `offsets` on the device: a
//! tiny schedule kernel turns them into row-tile starts and the GEMM grids
//! are sized for the worst case (`ceil(M / 128) + E` row tiles), so the host
//! never waits for the router.

use super::kernels::{
    EXPERT_BIAS_GRAD_FINISH, EXPERT_BIAS_GRAD_PARTIAL, EXPERT_DW, EXPERT_DX, EXPERT_FWD, EXPERT_SCHEDULE,
};
use super::params::ExpertParams;
use super::{Cuda, CudaBuf, CudaIBuf};

/// Output tile of the GEMM kernels (kernels/expert.cu, "Launch").
const TILE: usize = 128;
/// Threads per GEMM CTA (8 warps).
const THREADS: u32 = 256;
/// Dynamic shared memory per GEMM CTA: 3 stages of 128x32 A and B tiles.
pub(super) const SMEM: u32 = 61_440;
/// Threads of the schedule kernel (one per expert, up to 1024).
const SCHEDULE_BLOCK: u32 = 1024;
/// Threads per bias-gradient block (one column each).
const BIAS_BLOCK: usize = 256;

/// Shape checks the kernels rely on; a violation is refused, not launched
/// (configs that would hit one are refused earlier, with the fix, by
/// `check_config`).
fn supported(cu: &Cuda, op: &str, rows: usize, e: usize, k: usize, n: usize) -> bool {
    let why = if !k.is_multiple_of(8) || !n.is_multiple_of(8) || k == 0 || n == 0 {
        Some(format!("expert dims {k} x {n}: both must be positive multiples of 8"))
    } else if e == 0 || e > super::router::MAX_EXPERTS {
        Some(format!("{e} experts (1..={} supported)", super::router::MAX_EXPERTS))
    } else if rows.div_ceil(TILE) + e > 65_535 {
        Some(format!("{rows} dispatched rows exceed the grid"))
    } else {
        None
    };
    cu.accept(op, why)
}

/// Row-tile starts of the current segments; returns `(tile_start, max_tiles)`.
fn schedule(cu: &Cuda, offsets: &CudaIBuf, e: usize, rows: usize) -> (u64, usize) {
    assert!(offsets.len() > e, "expert offsets shorter than E + 1");
    let tile_start = cu.scratch_i32("expert.tile_start", e + 1);
    let p = ExpertParams { offsets: cu.ptr(&offsets.data), tile_start, e: e as i32, ..Default::default() };
    cu.launch(EXPERT_SCHEDULE, (1, 1, 1), SCHEDULE_BLOCK, 0, p);
    (tile_start, rows.div_ceil(TILE) + e)
}

/// `out = x @ w[e] + b[e]` per segment; with `act`, `out` is the
/// pre-activation and `act = gelu(out)` (plus act's bf16 copy).
pub(super) fn fwd(
    cu: &Cuda,
    out: &mut CudaBuf,
    act: Option<&mut CudaBuf>,
    [x, w, b]: [&CudaBuf; 3],
    offsets: &CudaIBuf,
    (e, k, n): (usize, usize, usize),
) {
    let rows = x.len() / k.max(1);
    if !supported(cu, "grouped_matmul", rows, e, k, n) {
        return;
    }
    assert!(out.len() >= rows * n && w.len() >= e * k * n && b.len() >= e * n, "grouped_matmul: shapes");
    let a = cu.bf16_of(x, "expert.x");
    let wb = cu.bf16_of(w, "expert.w");
    let (tile_start, tiles) = schedule(cu, offsets, e, rows);
    let (act_ptr, act_bf16, gelu) = match act {
        Some(act) => {
            assert!(act.len() >= rows * n, "grouped_matmul_gelu: act shorter than out");
            let (p, h) = cu.out_with_bf16(act);
            (p, h, 1)
        }
        None => (0, 0, 0),
    };
    let p = ExpertParams {
        a,
        b: wb,
        bias: cu.ptr(&b.data),
        out: cu.out(out),
        act: act_ptr,
        out_bf16: act_bf16,
        offsets: cu.ptr(&offsets.data),
        tile_start,
        e: e as i32,
        k: k as i32,
        n: n as i32,
        max_tiles: tiles as i32,
        gelu,
        ..Default::default()
    };
    cu.launch(EXPERT_FWD, (n.div_ceil(TILE) as u32, tiles as u32, 1), THREADS, SMEM, p);
}

/// Backward: `dx = dy @ w[e]^T` per segment (times `gelu'(pre)` and with a
/// bf16 copy of dx when `pre` is given), `dw[e] += x^T dy`, `db[e] += colsum(dy)`.
pub(super) fn bwd(
    cu: &Cuda,
    [dx, dw, db]: [&mut CudaBuf; 3],
    [dy, x, w]: [&CudaBuf; 3],
    pre: Option<&CudaBuf>,
    offsets: &CudaIBuf,
    (e, k, n): (usize, usize, usize),
) {
    let rows = dy.len() / n.max(1);
    if !supported(cu, "grouped_matmul_bwd", rows, e, k, n) {
        return;
    }
    assert!(dx.len() >= rows * k && x.len() >= rows * k, "grouped_matmul_bwd: [M, k] buffers");
    assert!(dw.len() >= e * k * n && w.len() >= e * k * n && db.len() >= e * n, "grouped_matmul_bwd: weights");
    let dy16 = cu.bf16_of(dy, "expert.dy");
    let w16 = cu.bf16_of(w, "expert.w");
    let x16 = cu.bf16_of(x, "expert.x");
    let (tile_start, tiles) = schedule(cu, offsets, e, rows);
    let base = ExpertParams {
        offsets: cu.ptr(&offsets.data),
        tile_start,
        e: e as i32,
        k: k as i32,
        n: n as i32,
        max_tiles: tiles as i32,
        ..Default::default()
    };
    let (dx_ptr, dx_bf16, pre_ptr, gelu) = match pre {
        Some(pre) => {
            assert!(pre.len() >= rows * k, "grouped_matmul_bwd_gelu: pre shorter than dx");
            let (p, h) = cu.out_with_bf16(dx);
            (p, h, cu.ptr(&pre.data), 1)
        }
        None => (cu.out(dx), 0, 0, 0),
    };
    let pdx = ExpertParams { a: dy16, b: w16, pre: pre_ptr, out: dx_ptr, out_bf16: dx_bf16, gelu, ..base };
    cu.launch(EXPERT_DX, (k.div_ceil(TILE) as u32, tiles as u32, 1), THREADS, SMEM, pdx);
    let pdw = ExpertParams { a: x16, b: dy16, out: cu.out(dw), ..base };
    cu.launch(EXPERT_DW, (n.div_ceil(TILE) as u32, k.div_ceil(TILE) as u32, e as u32), THREADS, SMEM, pdw);
    let col_blocks = n.div_ceil(BIAS_BLOCK) as u32;
    let pdb = ExpertParams {
        partial: cu.scratch_f32("expert.bias_partial", tiles * n),
        grad: cu.ptr(&dy.data),
        bias_grad: cu.out(db),
        ..base
    };
    cu.launch(EXPERT_BIAS_GRAD_PARTIAL, (tiles as u32, col_blocks, 1), BIAS_BLOCK as u32, 0, pdb);
    cu.launch(EXPERT_BIAS_GRAD_FINISH, (e as u32, col_blocks, 1), BIAS_BLOCK as u32, 0, pdb);
}
