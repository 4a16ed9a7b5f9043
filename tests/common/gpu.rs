//! Helpers of the GPU tests: the device or a visible skip, uploads,
//! poisoned outputs, relative errors, bf16 rounding.

use switchyard::backend::cpu::Cpu;
use switchyard::backend::cuda::{self, Cuda, CudaBuf, CudaIBuf};
use switchyard::backend::Backend;

/// The GPU, or `None` after printing why this test is skipped.
pub fn gpu(test: &str) -> Option<(Cuda, Cpu)> {
    match cuda::probe(0) {
        Ok(()) => Some((Cuda::new(0).expect("probe passed, so the device opens"), Cpu::new(0).unwrap())),
        Err(e) if std::env::var_os("SWITCHYARD_REQUIRE_GPU").is_some() => {
            panic!("SWITCHYARD_REQUIRE_GPU is set but the GPU is unavailable: {e}")
        }
        Err(e) => {
            super::skip(test, &format!("no CUDA device ({})", e.to_string().split(':').next().unwrap_or_default()));
            None
        }
    }
}

/// A device copy of `v`.
pub fn up(g: &Cuda, v: &[f32]) -> CudaBuf {
    let mut b = g.alloc(v.len(), "test input").unwrap();
    g.upload(&mut b, v);
    b
}

/// A device copy of `v`.
pub fn up_i(g: &Cuda, v: &[i32]) -> CudaIBuf {
    let mut b = g.alloc_i(v.len(), "test input").unwrap();
    g.upload_i(&mut b, v);
    b
}

/// An output buffer filled with NaN, so an unwritten element fails the test.
pub fn poisoned(g: &Cuda, n: usize) -> CudaBuf {
    up(g, &vec![f32::NAN; n])
}

/// An i32 output buffer filled with `i32::MIN`, which no index kernel writes.
pub fn poisoned_i(g: &Cuda, n: usize) -> CudaIBuf {
    up_i(g, &vec![i32::MIN; n])
}

/// `||got - want|| / ||want||` in f64; infinite if `got` has a non-finite value.
pub fn rel(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    if got.iter().any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&a, &b) in got.iter().zip(want) {
        num += (a as f64 - b as f64).powi(2);
        den += (b as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

/// Panic naming `what` unless `rel(got, want) < bound`.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], bound: f64) {
    let e = rel(got, want);
    assert!(e < bound, "{what}: relative error {e:.3e} over bound {bound:.0e}");
}

/// Panic naming `what` unless the two are the same bits (NaN patterns included).
pub fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a.to_bits() != b.to_bits()) {
        panic!(
            "{what}: element {i} is {} (bits {:#x}), want {} (bits {:#x})",
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        );
    }
}

/// The first `len` values of the bf16 copy a kernel wrote beside `buf`, as
/// f32; panics naming `what` if the kernel left none.
pub fn bf16_copy(g: &Cuda, buf: &CudaBuf, len: usize, what: &str) -> Vec<f32> {
    let copy = g.bf16_copy(buf).unwrap_or_else(|| panic!("{what}: no valid bf16 copy was written"));
    copy[..len].iter().map(|&h| f32::from_bits((h as u32) << 16)).collect()
}

/// Round to bf16 (nearest even) and back, as the device casts do.
pub fn bf16_round(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|&x| {
            let b = x.to_bits();
            let r = b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000;
            f32::from_bits(r)
        })
        .collect()
}
