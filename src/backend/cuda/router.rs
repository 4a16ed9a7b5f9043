//! Launchers for `kernels/router.cu`: the input jitter, the five-launch
//! routing forward (top-k, per-chunk counts, statistics partials, scan and
//! offsets, slot assignment) and the backward into the router logits.

use super::kernels::{
    ROUTER_ASSIGN, ROUTER_BWD, ROUTER_BWD_WIDE, ROUTER_COUNT, ROUTER_FINISH, ROUTER_JITTER, ROUTER_JITTER_BWD,
    ROUTER_STATS, ROUTER_TOPK, ROUTER_TOPK_WIDE,
};
use super::params::{RouterBwdParams, RouterFwdParams, RouterJitterParams};
use super::{grid_1d, Cuda, CudaBuf, CudaIBuf};
use crate::backend::{RouterParams, RouterStats};

/// Threads per block of every router kernel but `router_finish`.
const BLOCK: u32 = 256;
/// Tokens per block of the one-warp-per-token kernels.
const TOKENS_PER_BLOCK: usize = BLOCK as usize / 32;
/// Assignments per `router_count` block (= its thread count, kernels/router.cu).
const CHUNK: usize = 256;
/// Tokens per `router_stats` block: 256 keeps the f64 partials at
/// `n / 256 x (E + 2)` and each column sum a short sequential loop.
const TOK_CHUNK: usize = 256;
/// Threads of `router_finish` (one per expert, up to the 1024 supported).
const FINISH_BLOCK: u32 = 1024;
/// Largest expert count the kernels support.
pub const MAX_EXPERTS: usize = 1024;
/// Experts up to which `router_topk`/`router_bwd` run; above, their `_wide`
/// variants (which hold up to 1024 logits per warp in registers).
const NARROW_EXPERTS: usize = 128;
/// Largest top-k the kernels support.
pub const MAX_TOP_K: usize = 8;

/// Whether the kernels handle this routing shape (configs are refused
/// earlier with the fix, by `check_config`).
fn supported(cu: &Cuda, op: &str, rp: &RouterParams) -> bool {
    let (n, e, k) = (rp.n_tokens, rp.n_experts, rp.top_k);
    let why = if e == 0 || e > MAX_EXPERTS {
        Some(format!("{e} experts (1..={MAX_EXPERTS} supported)"))
    } else if k == 0 || k > MAX_TOP_K.min(e) {
        Some(format!("top-{k} of {e} experts (1..={} supported)", MAX_TOP_K.min(e)))
    } else if n * k > i32::MAX as usize {
        Some(format!("{n} tokens x top-{k} exceeds 2^31 assignments"))
    } else {
        None
    };
    cu.accept(op, why)
}

/// `mult = U(1-eps, 1+eps)` (counter-based), `out = x * mult`.
pub(super) fn jitter(cu: &Cuda, out: &mut CudaBuf, mult: &mut CudaBuf, x: &CudaBuf, eps: f32, seed: u64) {
    let n = x.len();
    assert!(out.len() >= n && mult.len() >= n, "router_jitter: buffers shorter than x");
    let p = RouterJitterParams { out: cu.out(out), mult: cu.out(mult), x: cu.ptr(&x.data), seed, n: n as i64, eps };
    cu.launch(ROUTER_JITTER, (grid_1d(n, BLOCK), 1, 1), BLOCK, 0, p);
}

/// `dx = dout * mult`.
pub(super) fn jitter_bwd(cu: &Cuda, dx: &mut CudaBuf, dout: &CudaBuf, mult: &CudaBuf) {
    let n = dout.len();
    assert!(dx.len() >= n && mult.len() >= n, "router_jitter_bwd: buffers shorter than dout");
    let p = RouterJitterParams {
        out: cu.out(dx),
        mult: cu.ptr(&mult.data),
        x: cu.ptr(&dout.data),
        seed: 0,
        n: n as i64,
        eps: 0.0,
    };
    cu.launch(ROUTER_JITTER_BWD, (grid_1d(n, BLOCK), 1, 1), BLOCK, 0, p);
}

/// Routing forward, shapes as [`crate::backend::Backend::router_fwd`].
pub(super) fn fwd(
    cu: &Cuda,
    [probs, gate, stats]: [&mut CudaBuf; 3],
    [expert, row, row_assign, offsets]: [&mut CudaIBuf; 4],
    logits: &CudaBuf,
    rp: &RouterParams,
) {
    if !supported(cu, "router_fwd", rp) {
        return;
    }
    let (n, e, k) = (rp.n_tokens, rp.n_experts, rp.top_k);
    let s = n * k;
    assert!(logits.len() >= n * e && probs.len() >= n * e, "router_fwd: logits/probs shorter than [n, E]");
    assert!(expert.len() >= s && gate.len() >= s && row.len() >= s && row_assign.len() >= s, "router_fwd: [n*k]");
    assert!(offsets.len() > e && stats.len() >= RouterStats::len(e), "router_fwd: offsets/stats");
    if n == 0 {
        return;
    }
    let chunks = s.div_ceil(CHUNK);
    let tok_chunks = n.div_ceil(TOK_CHUNK);
    let p = RouterFwdParams {
        logits: cu.ptr(&logits.data),
        probs: cu.out(probs),
        expert: cu.ptr(&expert.data),
        gate: cu.out(gate),
        row: cu.ptr(&row.data),
        row_assign: cu.ptr(&row_assign.data),
        offsets: cu.ptr(&offsets.data),
        stats: cu.out(stats),
        tok_stats: cu.scratch_f32("router.tok_stats", 2 * n),
        rank: cu.scratch_i32("router.rank", s),
        chunk_counts: cu.scratch_i32("router.chunk_counts", chunks * e),
        // f64 partials, in an f32 scratch of twice the length (8-byte aligned).
        partial: cu.scratch_f32("router.partial", 2 * tok_chunks * (e + 2)),
        n: n as i32,
        e: e as i32,
        k: k as i32,
        capacity: rp.capacity.min(i32::MAX as usize) as i32,
        normalize: rp.normalize_gates as i32,
        chunk: CHUNK as i32,
        tok_chunk: TOK_CHUNK as i32,
        aux_coef: rp.aux_coef,
        z_coef: rp.z_coef,
    };
    let topk = if e <= NARROW_EXPERTS { ROUTER_TOPK } else { ROUTER_TOPK_WIDE };
    cu.launch(topk, (n.div_ceil(TOKENS_PER_BLOCK) as u32, 1, 1), BLOCK, 0, p);
    cu.launch(ROUTER_COUNT, (chunks as u32, 1, 1), BLOCK, 0, p);
    cu.launch(ROUTER_STATS, (tok_chunks as u32, 1, 1), BLOCK, 0, p);
    cu.launch(ROUTER_FINISH, (1, 1, 1), FINISH_BLOCK, 0, p);
    cu.launch(ROUTER_ASSIGN, (chunks as u32, 1, 1), BLOCK, 0, p);
}

/// Routing backward into the logits, as [`crate::backend::Backend::router_bwd`].
pub(super) fn bwd(
    cu: &Cuda,
    dlogits: &mut CudaBuf,
    [dgate, logits, probs, stats]: [&CudaBuf; 4],
    expert: &CudaIBuf,
    rp: &RouterParams,
    dloss: f32,
) {
    if !supported(cu, "router_bwd", rp) {
        return;
    }
    let (n, e, k) = (rp.n_tokens, rp.n_experts, rp.top_k);
    assert!(dlogits.len() >= n * e && logits.len() >= n * e && probs.len() >= n * e, "router_bwd: [n, E]");
    assert!(dgate.len() >= n * k && expert.len() >= n * k && stats.len() >= RouterStats::len(e), "router_bwd");
    let p = RouterBwdParams {
        dlogits: cu.out(dlogits),
        dgate: cu.ptr(&dgate.data),
        logits: cu.ptr(&logits.data),
        probs: cu.ptr(&probs.data),
        expert: cu.ptr(&expert.data),
        stats: cu.ptr(&stats.data),
        n: n as i32,
        e: e as i32,
        k: k as i32,
        normalize: rp.normalize_gates as i32,
        aux_coef: rp.aux_coef,
        z_coef: rp.z_coef,
        dloss,
    };
    let bwd = if e <= NARROW_EXPERTS { ROUTER_BWD } else { ROUTER_BWD_WIDE };
    cu.launch(bwd, (n.div_ceil(TOKENS_PER_BLOCK) as u32, 1, 1), BLOCK, 0, p);
}
