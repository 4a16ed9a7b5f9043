//! Launchers for `kernels/dispatch.cu`: gather tokens into expert-contiguous
//! rows (writing the bf16 operand of the expert GEMM in the same pass),
//! scatter-free backward, gate-weighted combine and its backward.

use super::kernels::{DISPATCH_BWD, DISPATCH_COMBINE_BWD, DISPATCH_COMBINE_FWD, DISPATCH_FWD};
use super::params::DispatchParams;
use super::{Cuda, CudaBuf, CudaIBuf};

/// Threads per block: 8 warps, one output row each.
const BLOCK: u32 = 256;
const ROWS_PER_BLOCK: usize = BLOCK as usize / 32;

fn blocks(rows: usize) -> (u32, u32, u32) {
    (rows.div_ceil(ROWS_PER_BLOCK) as u32, 1, 1)
}

fn params(n: usize, n_rows: usize, k: usize, d: usize) -> DispatchParams {
    DispatchParams { n: n as i32, n_rows: n_rows as i32, k: k as i32, d: d as i32, ..Default::default() }
}

/// `xe[r] = x[row_assign[r] / k]`, and xe's bf16 copy.
pub(super) fn fwd(
    cu: &Cuda,
    xe: &mut CudaBuf,
    x: &CudaBuf,
    row_assign: &CudaIBuf,
    (n_rows, k, d): (usize, usize, usize),
) {
    assert!(
        xe.len() >= n_rows * d && row_assign.len() >= n_rows && x.len().is_multiple_of(d.max(1)),
        "dispatch_fwd: shapes"
    );
    let (out, out_bf16) = cu.out_with_bf16(xe);
    let p = DispatchParams {
        out,
        out_bf16,
        src: cu.ptr(&x.data),
        row_assign: cu.ptr(&row_assign.data),
        ..params(x.len() / d.max(1), n_rows, k, d)
    };
    cu.launch(DISPATCH_FWD, blocks(n_rows), BLOCK, 0, p);
}

/// `dx[t] += sum_j dxe[row[t*k + j]]`.
pub(super) fn bwd(cu: &Cuda, dx: &mut CudaBuf, dxe: &CudaBuf, row: &CudaIBuf, (n, k, d): (usize, usize, usize)) {
    assert!(dx.len() >= n * d && row.len() >= n * k, "dispatch_bwd: shapes");
    let p = DispatchParams {
        out: cu.out(dx),
        src: cu.ptr(&dxe.data),
        row: cu.ptr(&row.data),
        ..params(n, dxe.len() / d.max(1), k, d)
    };
    cu.launch(DISPATCH_BWD, blocks(n), BLOCK, 0, p);
}

/// `out[t] = sum_j gate[a] * ye[row[a]]` over kept assignments.
pub(super) fn combine_fwd(
    cu: &Cuda,
    out: &mut CudaBuf,
    ye: &CudaBuf,
    row: &CudaIBuf,
    gate: &CudaBuf,
    (n, k, d): (usize, usize, usize),
) {
    assert!(out.len() >= n * d && row.len() >= n * k && gate.len() >= n * k, "combine_fwd: shapes");
    let p = DispatchParams {
        out: cu.out(out),
        src: cu.ptr(&ye.data),
        row: cu.ptr(&row.data),
        gate: cu.ptr(&gate.data),
        ..params(n, ye.len() / d.max(1), k, d)
    };
    cu.launch(DISPATCH_COMBINE_FWD, blocks(n), BLOCK, 0, p);
}

/// `dye[row[a]] = gate[a] * dout[t]` (and its bf16 copy), `dgate[a] = <dout[t], ye[row[a]]>`.
pub(super) fn combine_bwd(
    cu: &Cuda,
    dye: &mut CudaBuf,
    dgate: &mut CudaBuf,
    [dout, ye, gate]: [&CudaBuf; 3],
    row: &CudaIBuf,
    n_rows: usize,
    (n, k, d): (usize, usize, usize),
) {
    assert!(dye.len() >= n_rows * d && ye.len() >= n_rows * d && dout.len() >= n * d, "combine_bwd: shapes");
    assert!(dgate.len() >= n * k && row.len() >= n * k && gate.len() >= n * k, "combine_bwd: [n*k]");
    let (out, out_bf16) = cu.out_with_bf16(dye);
    let p = DispatchParams {
        out,
        out_bf16,
        dgate: cu.out(dgate),
        src: cu.ptr(&dout.data),
        ye: cu.ptr(&ye.data),
        row: cu.ptr(&row.data),
        gate: cu.ptr(&gate.data),
        ..params(n, n_rows, k, d)
    };
    cu.launch(DISPATCH_COMBINE_BWD, blocks(n * k), BLOCK, 0, p);
}
