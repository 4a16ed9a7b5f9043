//! Activation family on the CPU: GELU with the tanh approximation
//! (PyTorch: `gelu(x, approximate='tanh')`).

use rayon::prelude::*;

use super::fastmath;

const CHUNK: usize = 4096;
/// `sqrt(2 / pi)`.
const S2PI: f32 = 0.797_884_6;
const C3: f32 = 0.044_715;

/// `gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
#[inline]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + fastmath::tanh(S2PI * (x + C3 * x * x * x)))
}

/// `d gelu / dx`.
#[inline]
pub fn gelu_grad(x: f32) -> f32 {
    let u = S2PI * (x + C3 * x * x * x);
    let th = fastmath::tanh(u);
    let sech2 = 1.0 - th * th;
    0.5 * (1.0 + th) + 0.5 * x * sech2 * S2PI * (1.0 + 3.0 * C3 * x * x)
}

/// `out = gelu(x)` elementwise.
pub fn gelu_fwd(out: &mut [f32], x: &[f32]) {
    out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(o, x)| {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = gelu(x);
        }
    });
}

/// `dx = dout * gelu'(x)` elementwise.
pub fn gelu_bwd(dx: &mut [f32], dout: &[f32], x: &[f32]) {
    dx.par_chunks_mut(CHUNK).zip(dout.par_chunks(CHUNK)).zip(x.par_chunks(CHUNK)).for_each(|((d, g), x)| {
        for ((d, &g), &x) in d.iter_mut().zip(g).zip(x) {
            *d = g * gelu_grad(x);
        }
    });
}
