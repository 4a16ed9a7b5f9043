//! Launchers for `kernels/elementwise.cu`: residual add and the fp32 <-> bf16
//! casts. Grid-stride kernels: any grid works, [`super::grid_1d`] sizes it.

use super::kernels::{ELEMENTWISE_ADD, ELEMENTWISE_CAST_BF16_F32, ELEMENTWISE_CAST_F32_BF16};
use super::params::{AddParams, CastBf16Params, CastF32Params};
use super::{grid_1d, Cuda, CudaBuf};

/// Threads per block of the grid-stride kernels (memory bound: any multiple
/// of 128 saturates bandwidth once the grid covers the SMs).
const BLOCK: u32 = 256;

/// `a += b` (residual add).
pub(super) fn add(cu: &Cuda, a: &mut CudaBuf, b: &CudaBuf) {
    assert_eq!(a.len(), b.len(), "add_inplace: length mismatch");
    let n = a.len();
    let p = AddParams { a: cu.out(a), b: cu.ptr(&b.data), n: n as i64 };
    cu.launch(ELEMENTWISE_ADD, (grid_1d(n, BLOCK), 1, 1), BLOCK, 0, p);
}

/// `dst[i] = bf16(src[i])` over `n` elements (device addresses).
pub(super) fn cast_to_bf16(cu: &Cuda, dst: u64, src: u64, n: usize) {
    let p = CastBf16Params { dst, src, n: n as i64 };
    cu.launch(ELEMENTWISE_CAST_F32_BF16, (grid_1d(n, BLOCK), 1, 1), BLOCK, 0, p);
}

/// `dst[i] = f32(src[i])` over `n` elements (device addresses).
pub(super) fn cast_to_f32(cu: &Cuda, dst: u64, src: u64, n: usize) {
    let p = CastF32Params { dst, src, n: n as i64 };
    cu.launch(ELEMENTWISE_CAST_BF16_F32, (grid_1d(n, BLOCK), 1, 1), BLOCK, 0, p);
}

/// Zero `n` f32 elements at a device address.
pub(super) fn fill_zero(cu: &Cuda, dst: u64, n: usize) {
    // SAFETY: `dst` addresses at least `n` f32 elements of a live buffer.
    let r = unsafe { cudarc::driver::result::memset_d8_async(dst, 0, n * 4, cu.stream.cu_stream()) };
    if let Err(e) = r {
        cu.fail(format!("memset: {e}"));
    }
}

impl Cuda {
    /// Round `x` to bf16 and back, on the device: what a bf16 operand holds.
    /// Tests use it to build the CPU reference from exactly the values the
    /// tensor cores see.
    pub fn round_to_bf16(&self, x: &mut CudaBuf) {
        let n = x.len();
        let tmp = self.scratch_u16("round_to_bf16", n);
        let p = self.out(x);
        cast_to_bf16(self, tmp, p, n);
        cast_to_f32(self, p, tmp, n);
    }
}
