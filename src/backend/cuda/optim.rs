//! Launchers for `kernels/optim.cu`: the deterministic global gradient norm
//! and the fused AdamW step (clip folded in, bf16 weight copy written).

use super::kernels::{OPTIM_ADAMW, OPTIM_SUM_SQUARES_FINISH, OPTIM_SUM_SQUARES_PARTIAL};
use super::params::{AdamWParams, SumSquaresParams};
use super::{grid_1d, Cuda, CudaBuf};
use crate::backend::AdamW;

/// Threads per block.
const BLOCK: u32 = 256;
/// Elements per partial sum of squares: 16k elements per block keeps the
/// partial buffer tiny (n / 16k floats) and each block busy for a few µs.
const SUMSQ_CHUNK: usize = 16 * 1024;

/// `acc[0] += sum(g^2)`.
pub(super) fn sum_squares(cu: &Cuda, acc: &mut CudaBuf, g: &CudaBuf) {
    let n = g.len();
    if n == 0 {
        return;
    }
    let chunks = n.div_ceil(SUMSQ_CHUNK);
    let p = SumSquaresParams {
        acc: cu.out(acc),
        partial: cu.scratch_f32("sum_squares.partial", chunks),
        g: cu.ptr(&g.data),
        n: n as i64,
        chunk: SUMSQ_CHUNK as i32,
    };
    cu.launch(OPTIM_SUM_SQUARES_PARTIAL, (chunks as u32, 1, 1), BLOCK, 0, p);
    cu.launch(OPTIM_SUM_SQUARES_FINISH, (1, 1, 1), BLOCK, 0, p);
}

/// One AdamW step on one tensor; writes the parameter's bf16 copy.
pub(super) fn adamw(
    cu: &Cuda,
    param: &mut CudaBuf,
    grad: &CudaBuf,
    m: &mut CudaBuf,
    v: &mut CudaBuf,
    norm_sq: &CudaBuf,
    h: &AdamW,
) {
    let n = param.len();
    assert!(grad.len() == n && m.len() == n && v.len() == n, "adamw: tensor lengths differ");
    if param.half.is_none() {
        match cu.stream.alloc_zeros::<u16>(n.max(1)) {
            Ok(b) => param.half = Some(b),
            Err(e) => return cu.fail(super::oom(&cu.ctx, "bf16 weight copy", n * 2, &e)),
        }
    }
    let t = h.t as i32;
    let p = AdamWParams {
        param: cu.ptr(&param.data),
        param_bf16: cu.ptr(param.half.as_ref().expect("allocated above")),
        m: cu.out(m),
        v: cu.out(v),
        grad: cu.ptr(&grad.data),
        norm_sq: cu.ptr(&norm_sq.data),
        n: n as i64,
        lr: h.lr,
        beta1: h.beta1,
        beta2: h.beta2,
        eps: h.eps,
        weight_decay: h.weight_decay,
        // Exactly the CPU reference's f32 expressions (src/backend/cpu/optim.rs).
        bias_corr1: 1.0 - h.beta1.powi(t),
        bias_corr2: 1.0 - h.beta2.powi(t),
        max_norm: h.max_norm,
    };
    cu.launch(OPTIM_ADAMW, (grid_1d(n, BLOCK), 1, 1), BLOCK, 0, p);
    param.half_valid = !cu.failed();
}
