//! Dense matmuls through cuBLAS: bf16 operands, fp32 accumulate and output
//! (`cublasGemmEx`, `CUBLAS_COMPUTE_32F`); and the router's fp32 matmuls
//! (fp32 operands, `CUBLAS_COMPUTE_32F` without TF32: the default math mode
//! does not downconvert). The CPU reference is `src/backend/cpu/matmul.rs`.
//!
//! Row-major `C[m, n] = op(A) op(B)` is computed as the column-major product
//! `C^T = op(B)^T op(A)^T`, so no transposes are materialized. cuBLAS GEMMs
//! are bitwise reproducible run to run on one GPU model and toolkit (cuBLAS
//! documentation, "Results reproducibility"): one stream, no split-K atomics.

use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};

use super::{Cuda, CudaBuf};

/// Operand precision of a cuBLAS matmul.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Operands {
    /// bf16 (the parameters' copies, or casts into scratch): every dense matmul.
    Bf16,
    /// fp32 as stored: the router (DESIGN.md §3).
    Fp32,
}

/// `c (=|+=) op(a) @ op(b)`, shapes as [`crate::backend::Backend::matmul`],
/// with operands of the given precision.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    cu: &Cuda,
    c: &mut CudaBuf,
    a: &CudaBuf,
    b: &CudaBuf,
    (m, k, n): (usize, usize, usize),
    (ta, tb): (bool, bool),
    accumulate: bool,
    operands: Operands,
) {
    let op = match operands {
        Operands::Bf16 => "matmul",
        Operands::Fp32 => "matmul_fp32",
    };
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n, "{op}: buffer smaller than its shape");
    if cu.failed() || m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            let p = cu.out(c);
            super::elementwise::fill_zero(cu, p, m * n);
        }
        return;
    }
    if [m, k, n].iter().any(|&x| x > i32::MAX as usize) {
        return cu.refuse(op, format!("dimension over 2^31 ({m} x {k} x {n})"));
    }
    let ab = match operands {
        Operands::Bf16 => (cu.bf16_of(a, "matmul.a"), cu.bf16_of(b, "matmul.b"), cudaDataType::CUDA_R_16BF),
        Operands::Fp32 => (cu.ptr(&a.data), cu.ptr(&b.data), cudaDataType::CUDA_R_32F),
    };
    gemm(cu, c, ab, (m, k, n), (ta, tb), accumulate);
}

/// One `cublasGemmEx` of row-major `c = op(a) op(b)` (operands of `dtype` at
/// device addresses `a`, `b`; fp32 output and accumulation).
fn gemm(
    cu: &Cuda,
    c: &mut CudaBuf,
    (a16, b16, dtype): (u64, u64, cudaDataType),
    (m, k, n): (usize, usize, usize),
    (ta, tb): (bool, bool),
    accumulate: bool,
) {
    let c32 = cu.out(c);
    let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
    let alpha = 1.0f32;
    let beta = if accumulate { 1.0f32 } else { 0.0 };
    let (lda_b, lda_a) = (if tb { k } else { n }, if ta { m } else { k });
    // SAFETY: the pointers address live buffers holding at least the extents
    // checked above; alpha and beta are host f32 as COMPUTE_32F requires.
    let r = unsafe {
        cudarc::cublas::result::gemm_ex(
            *cu.blas.handle(),
            op(tb),
            op(ta),
            n as i32,
            m as i32,
            k as i32,
            (&alpha as *const f32).cast(),
            b16 as *const std::ffi::c_void,
            dtype,
            lda_b as i32,
            a16 as *const std::ffi::c_void,
            dtype,
            lda_a as i32,
            (&beta as *const f32).cast(),
            c32 as *mut std::ffi::c_void,
            cudaDataType::CUDA_R_32F,
            n as i32,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    };
    if let Err(e) = r {
        cu.fail(format!("cublasGemmEx ({m} x {k} x {n}, ta={ta}, tb={tb}, {dtype:?}): {e}"));
    }
}
