//! Embedding family on the CPU: token + position embedding lookup and its
//! scatter-add backward (sequential in token order, so deterministic).

use rayon::prelude::*;

use super::index_of;

/// `out[b*T + t] = wte[tokens[b*T + t]] + wpe[t]`.
pub fn embedding_fwd(out: &mut [f32], tokens: &[i32], wte: &[f32], wpe: &[f32], b: usize, t: usize, d: usize) {
    out[..b * t * d].par_chunks_mut(d).enumerate().for_each(|(n, o)| {
        let tok = index_of(tokens[n]).expect("token ids are validated on load");
        let pos = n % t;
        let e = &wte[tok * d..(tok + 1) * d];
        let p = &wpe[pos * d..(pos + 1) * d];
        for i in 0..d {
            o[i] = e[i] + p[i];
        }
    });
}

/// `out[i] = wte[tokens[i]] + wpe[positions[i]]` (inference: each row at its own position).
pub fn embedding_at(out: &mut [f32], tokens: &[i32], positions: &[i32], wte: &[f32], wpe: &[f32], n: usize, d: usize) {
    out[..n * d].par_chunks_mut(d).enumerate().for_each(|(i, o)| {
        let tok = index_of(tokens[i]).expect("token ids are validated before upload");
        let pos = index_of(positions[i]).expect("positions are validated before upload");
        let e = &wte[tok * d..(tok + 1) * d];
        let p = &wpe[pos * d..(pos + 1) * d];
        for j in 0..d {
            o[j] = e[j] + p[j];
        }
    });
}

/// `dwte[tokens[n]] += dout[n]`, `dwpe[t] += dout[b*T + t]`, rows in order.
pub fn embedding_bwd(dwte: &mut [f32], dwpe: &mut [f32], dout: &[f32], tokens: &[i32], b: usize, t: usize, d: usize) {
    for n in 0..b * t {
        let tok = index_of(tokens[n]).expect("token ids are validated on load");
        let pos = n % t;
        let g = &dout[n * d..(n + 1) * d];
        for (w, g) in dwte[tok * d..(tok + 1) * d].iter_mut().zip(g) {
            *w += g;
        }
        for (w, g) in dwpe[pos * d..(pos + 1) * d].iter_mut().zip(g) {
            *w += g;
        }
    }
}
