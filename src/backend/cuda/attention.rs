//! Launchers for `kernels/attention.cu`: flash attention forward (online
//! softmax, logsumexp saved) and the deterministic backward (delta, then dK/dV
//! per key tile, then dQ per query tile; no atomics).
//!
//! Operands are bf16: `qkv` and `dout` are cast into scratch on the way in;
//! outputs (`out`, `lse`, `dqkv`) are fp32.

use super::kernels::{
    Kernel, ATTENTION_BWD_DELTA, ATTENTION_BWD_DKDV_HD128, ATTENTION_BWD_DKDV_HD32, ATTENTION_BWD_DKDV_HD64,
    ATTENTION_BWD_DQ_HD128, ATTENTION_BWD_DQ_HD32, ATTENTION_BWD_DQ_HD64, ATTENTION_FWD_HD128, ATTENTION_FWD_HD32,
    ATTENTION_FWD_HD64,
};
use super::kernels::{
    ATTENTION_DECODE_HD128, ATTENTION_DECODE_HD32, ATTENTION_DECODE_HD64, ATTENTION_DECODE_REDUCE, ATTENTION_KV_APPEND,
};
use super::params::{AttentionParams, DecodeParams};
use super::{grid_1d, Cuda, CudaBuf, CudaIBuf};

/// Head dimensions with a compiled kernel.
pub const HEAD_DIMS: [usize; 3] = [32, 64, 128];

/// Query rows per forward CTA (kernels/attention.cu, "Launch").
const FWD_TILE: usize = 64;
/// Threads per forward CTA (4 warps x 16 query rows).
const FWD_BLOCK: u32 = 128;

/// Backward tile (keys per dK/dV CTA, queries per dQ CTA) and threads per
/// CTA: 64 x 64 with 4 warps, except head_dim 128, where 32 x 32 with 2 warps
/// keeps shared memory under 48 KiB and registers under 255
/// (kernels/attention.cu, "Launch").
fn bwd_tile(hd: usize) -> (usize, u32) {
    if hd == 128 {
        (32, 64)
    } else {
        (64, 128)
    }
}
/// (row, head) pairs per CTA of the delta kernel: one warp each.
const DELTA_ROWS_PER_BLOCK: usize = 8;
/// Threads per CTA of the delta kernel.
const DELTA_BLOCK: u32 = 32 * DELTA_ROWS_PER_BLOCK as u32;

/// One attention call's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Batch.
    pub b: usize,
    /// Sequence length.
    pub t: usize,
    /// Heads.
    pub h: usize,
    /// Head dimension.
    pub hd: usize,
    /// Mask keys after the query.
    pub causal: bool,
}

impl Shape {
    /// Matmul FLOPs of the forward pass (QK^T and PV; causal counts the
    /// computed half, as FlashAttention's benchmarks do).
    pub fn fwd_flops(&self) -> f64 {
        let full = 4.0 * (self.b * self.h * self.hd) as f64 * (self.t as f64) * (self.t as f64);
        if self.causal {
            full / 2.0
        } else {
            full
        }
    }
    /// Matmul FLOPs of the backward pass as FlashAttention counts them (2.5x
    /// the forward: five products).
    pub fn bwd_flops(&self) -> f64 {
        2.5 * self.fwd_flops()
    }
}

fn kernels(hd: usize) -> Option<(Kernel, Kernel, Kernel)> {
    match hd {
        32 => Some((ATTENTION_FWD_HD32, ATTENTION_BWD_DKDV_HD32, ATTENTION_BWD_DQ_HD32)),
        64 => Some((ATTENTION_FWD_HD64, ATTENTION_BWD_DKDV_HD64, ATTENTION_BWD_DQ_HD64)),
        128 => Some((ATTENTION_FWD_HD128, ATTENTION_BWD_DKDV_HD128, ATTENTION_BWD_DQ_HD128)),
        _ => None,
    }
}

/// Refuse shapes the kernels do not support, before any launch.
fn check(cu: &Cuda, op: &str, s: &Shape) -> Option<(Kernel, Kernel, Kernel)> {
    let Some(k) = kernels(s.hd) else {
        cu.refuse(op, format!("head_dim {} has no kernel; supported: {HEAD_DIMS:?}", s.hd));
        return None;
    };
    if s.t > 65_535 * 32 || s.h > 65_535 || s.b > 65_535 {
        cu.refuse(op, format!("grid too large for b {} x h {} x t {}", s.b, s.h, s.t));
        return None;
    }
    Some(k)
}

fn params(s: &Shape) -> AttentionParams {
    AttentionParams {
        b: s.b as i32,
        t: s.t as i32,
        h: s.h as i32,
        hd: s.hd as i32,
        causal: i32::from(s.causal),
        scale: 1.0 / (s.hd as f32).sqrt(),
        ..Default::default()
    }
}

/// Threads per CTA of an attention kernel, by name (for the occupancy report).
pub(super) fn block_of(name: &str) -> u32 {
    if name == ATTENTION_BWD_DELTA.name {
        DELTA_BLOCK
    } else if name == ATTENTION_KV_APPEND.name {
        APPEND_BLOCK
    } else if name.contains("_decode") {
        DECODE_BLOCK
    } else if name.contains("_fwd_") {
        FWD_BLOCK
    } else {
        bwd_tile(name.rsplit("hd").next().and_then(|x| x.parse().ok()).unwrap_or(64)).1
    }
}

fn grid(s: &Shape, tile: usize) -> (u32, u32, u32) {
    (s.t.div_ceil(tile) as u32, s.h as u32, s.b as u32)
}

/// Forward: `out` `[b*t, h*hd]`, `lse` `[b, h, t]` from packed `qkv` `[b*t, 3*h*hd]`.
pub(super) fn fwd(cu: &Cuda, out: &mut CudaBuf, lse: &mut CudaBuf, qkv: &CudaBuf, s: Shape) {
    let (n, d) = (s.b * s.t, s.h * s.hd);
    assert!(qkv.len() >= n * 3 * d && out.len() >= n * d && lse.len() >= s.b * s.h * s.t, "attention_fwd: shapes");
    let Some((kfwd, _, _)) = check(cu, "attention_fwd", &s) else { return };
    let mut p = params(&s);
    p.qkv = cu.bf16_of(qkv, "attention.qkv");
    p.out = cu.out(out);
    p.lse = cu.out(lse);
    cu.launch(kfwd, grid(&s, FWD_TILE), FWD_BLOCK, 0, p);
}

/// Backward: `dqkv` (`=`) from `dout`, recomputing P from `qkv` and `lse`.
#[allow(clippy::too_many_arguments)]
pub(super) fn bwd(
    cu: &Cuda,
    dqkv: &mut CudaBuf,
    dout: &CudaBuf,
    qkv: &CudaBuf,
    out: &CudaBuf,
    lse: &CudaBuf,
    s: Shape,
) {
    let (n, d) = (s.b * s.t, s.h * s.hd);
    assert!(qkv.len() >= n * 3 * d && dqkv.len() >= n * 3 * d, "attention_bwd: qkv shapes");
    assert!(out.len() >= n * d && dout.len() >= n * d && lse.len() >= s.b * s.h * s.t, "attention_bwd: shapes");
    let Some((_, kdkdv, kdq)) = check(cu, "attention_bwd", &s) else { return };
    let mut p = params(&s);
    p.qkv = cu.bf16_of(qkv, "attention.qkv");
    p.dout = cu.bf16_of(dout, "attention.dout");
    p.out_f32 = cu.ptr(&out.data);
    p.dout_f32 = cu.ptr(&dout.data);
    p.lse = cu.ptr(&lse.data);
    p.delta = cu.scratch_f32("attention.delta", s.b * s.h * s.t);
    p.dqkv = cu.out(dqkv);
    let rows = s.b * s.h * s.t;
    cu.launch(ATTENTION_BWD_DELTA, (rows.div_ceil(DELTA_ROWS_PER_BLOCK) as u32, 1, 1), DELTA_BLOCK, 0, p);
    let (tile, block) = bwd_tile(s.hd);
    cu.launch(kdkdv, grid(&s, tile), block, 0, p);
    cu.launch(kdq, grid(&s, tile), block, 0, p);
}

/// Keys per decode chunk: the sequence is split into chunks of this many keys,
/// one CTA each, then reduced in chunk order (deterministic split-K). 256
/// keys give long contexts many CTAs (64 chunks at 16k) while a short
/// context stays one chunk.
const DECODE_CHUNK: usize = 256;
/// Threads per decode CTA (4 warps) and per reduce CTA.
const DECODE_BLOCK: u32 = 128;
/// Threads per block of the KV append (grid-stride copy).
const APPEND_BLOCK: u32 = 256;

/// Append the k and v of `n` qkv rows to the caches at `slots`.
#[allow(clippy::too_many_arguments)]
pub(super) fn kv_append(
    cu: &Cuda,
    k_cache: &mut CudaBuf,
    v_cache: &mut CudaBuf,
    qkv: &CudaBuf,
    slots: &CudaIBuf,
    (n, h, hd): (usize, usize, usize),
) {
    let d = h * hd;
    assert!(qkv.len() >= n * 3 * d && slots.len() >= n && k_cache.len() == v_cache.len(), "kv_append: shapes");
    let p = DecodeParams {
        k_cache: cu.out(k_cache),
        v_cache: cu.out(v_cache),
        qkv: cu.ptr(&qkv.data),
        slots: cu.ptr(&slots.data),
        n: n as i32,
        h: h as i32,
        hd: hd as i32,
        ..Default::default()
    };
    cu.launch(ATTENTION_KV_APPEND, (grid_1d(n * d, APPEND_BLOCK), 1, 1), APPEND_BLOCK, 0, p);
}

/// One query per sequence against its cache: chunked scores, then the
/// in-order reduction.
#[allow(clippy::too_many_arguments)]
pub(super) fn decode(
    cu: &Cuda,
    out: &mut CudaBuf,
    qkv: &CudaBuf,
    k_cache: &CudaBuf,
    v_cache: &CudaBuf,
    lens: &CudaIBuf,
    (n_seq, h, hd, max_t): (usize, usize, usize, usize),
) {
    let d = h * hd;
    assert!(qkv.len() >= n_seq * 3 * d && out.len() >= n_seq * d && lens.len() >= n_seq, "attention_decode: shapes");
    assert!(k_cache.len() >= n_seq * max_t * d && v_cache.len() >= n_seq * max_t * d, "attention_decode: cache");
    let kernel = match hd {
        32 => ATTENTION_DECODE_HD32,
        64 => ATTENTION_DECODE_HD64,
        128 => ATTENTION_DECODE_HD128,
        _ => return cu.refuse("attention_decode", format!("head_dim {hd} has no kernel; supported: {HEAD_DIMS:?}")),
    };
    if n_seq == 0 {
        return;
    }
    let n_chunks = max_t.div_ceil(DECODE_CHUNK).max(1);
    let p = DecodeParams {
        k_cache: cu.ptr(&k_cache.data),
        v_cache: cu.ptr(&v_cache.data),
        q: cu.ptr(&qkv.data),
        lens: cu.ptr(&lens.data),
        part_o: cu.scratch_f32("decode.part_o", n_seq * h * n_chunks * hd),
        part_ml: cu.scratch_f32("decode.part_ml", n_seq * h * n_chunks * 2),
        out: cu.out(out),
        n_seq: n_seq as i32,
        h: h as i32,
        hd: hd as i32,
        max_t: max_t as i32,
        q_stride: (3 * d) as i32,
        chunk: DECODE_CHUNK as i32,
        n_chunks: n_chunks as i32,
        scale: 1.0 / (hd as f32).sqrt(),
        ..Default::default()
    };
    cu.launch(kernel, (n_chunks as u32, h as u32, n_seq as u32), DECODE_BLOCK, 0, p);
    cu.launch(ATTENTION_DECODE_REDUCE, (h as u32, n_seq as u32, 1), DECODE_BLOCK, 0, p);
}

impl Cuda {
    /// Attention forward with an explicit shape (causal or not), for tests and
    /// benchmarks; the model always calls the causal form through the trait.
    pub fn attention_fwd_shaped(&self, out: &mut CudaBuf, lse: &mut CudaBuf, qkv: &CudaBuf, s: Shape) {
        fwd(self, out, lse, qkv, s);
    }

    /// Attention backward with an explicit shape (see [`Cuda::attention_fwd_shaped`]).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_bwd_shaped(
        &self,
        dqkv: &mut CudaBuf,
        dout: &CudaBuf,
        qkv: &CudaBuf,
        out: &CudaBuf,
        lse: &CudaBuf,
        s: Shape,
    ) {
        bwd(self, dqkv, dout, qkv, out, lse, s);
    }
}
