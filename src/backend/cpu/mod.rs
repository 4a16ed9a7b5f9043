//! The CPU reference backend: f32 everywhere, one file per op family.
//!
//! Matmuls go through the `gemm` crate; everything else is plain Rust over
//! rayon. Work is split so that results never depend on the thread count:
//! parallel tasks write disjoint outputs, and reductions across rows use
//! fixed-size chunks whose partial sums are added in chunk order
//! ([`reduce_rows`]). `tests/cpu_backend.rs` checks this bit for bit.

pub mod activation;
pub mod attention;
pub mod dispatch;
pub mod embedding;
pub mod expert;
pub mod fastmath;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod router;

use rayon::prelude::*;

use super::{AdamW, AttnShape, Backend, DecodeShape, Gemm, Grouped, RouterParams, Routing};
use crate::{Error, Result};

/// Rows per chunk in cross-row reductions. Fixed (not derived from the
/// thread count) so that the summation order, and thus every bit of the
/// result, is the same on any machine.
pub const REDUCE_CHUNK: usize = 64;

/// The CPU backend. Owns a rayon pool of a fixed size.
pub struct Cpu {
    pool: rayon::ThreadPool,
    threads: usize,
    /// Bytes handed out by `alloc`/`alloc_i` over this backend's life (what
    /// `memory::estimate` predicts; tests hold the two equal).
    allocated: std::sync::atomic::AtomicU64,
}

impl Cpu {
    /// A backend with `threads` worker threads (0 = one per core).
    pub fn new(threads: usize) -> Result<Cpu> {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let threads = if threads == 0 { cores } else { threads };
        // Each worker reserves a stack; past this, thread creation itself fails.
        let most = 1024.max(cores);
        if threads > most {
            return Err(Error::Config(format!(
                "--threads {threads}: at most {most} CPU threads (this machine has {cores} cores; 0 = one per core)"
            )));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| Error::Backend(format!("cannot start {threads} CPU threads: {e}")))?;
        Ok(Cpu { pool, threads, allocated: Default::default() })
    }

    /// Bytes allocated through [`Backend::alloc`] and [`Backend::alloc_i`]
    /// so far (buffers are never returned to the count).
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Worker threads in use.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Run `f` inside this backend's thread pool.
    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    fn gemm_par(&self) -> gemm::Parallelism {
        if self.threads > 1 {
            gemm::Parallelism::Rayon(self.threads)
        } else {
            gemm::Parallelism::None
        }
    }
}

/// A raw pointer that parallel tasks may share because each writes a
/// disjoint region (the caller's invariant).
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
// SAFETY: only used where tasks write provably disjoint elements.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

/// Sum per-row contributions over `rows` into `out` (`+=`), in a fixed order:
/// `f(r0..r1, partial)` adds rows `r0..r1` into a zeroed `partial` of
/// `out.len()` values; chunks of [`REDUCE_CHUNK`] rows run in parallel and
/// their partials are added to `out` in chunk order.
pub fn reduce_rows(out: &mut [f32], rows: usize, f: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync) {
    let width = out.len();
    let chunks = rows.div_ceil(REDUCE_CHUNK);
    let mut partials = vec![0.0f32; chunks * width];
    if width == 0 {
        return;
    }
    partials.par_chunks_mut(width).enumerate().for_each(|(c, part)| {
        let r0 = c * REDUCE_CHUNK;
        f(r0..(r0 + REDUCE_CHUNK).min(rows), part);
    });
    for part in partials.chunks(width) {
        for (o, p) in out.iter_mut().zip(part) {
            *o += p;
        }
    }
}

/// A row/expert index stored as i32: `None` for the -1 "absent" marker.
pub(crate) fn index_of(i: i32) -> Option<usize> {
    usize::try_from(i).ok()
}

impl Backend for Cpu {
    type Buf = Vec<f32>;
    type IBuf = Vec<i32>;

    fn session<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    fn name(&self) -> String {
        format!("cpu ({} threads)", self.threads)
    }

    fn alloc(&self, n: usize, what: &str) -> Result<Vec<f32>> {
        self.allocated.fetch_add(n as u64 * 4, std::sync::atomic::Ordering::Relaxed);
        let mut v = Vec::new();
        v.try_reserve_exact(n).map_err(|_| {
            Error::Backend(format!(
                "out of host memory allocating {what} ({} MiB); use a smaller batch_size or seq_len",
                (n * 4) >> 20
            ))
        })?;
        v.resize(n, 0.0);
        Ok(v)
    }

    fn alloc_i(&self, n: usize, what: &str) -> Result<Vec<i32>> {
        self.allocated.fetch_add(n as u64 * 4, std::sync::atomic::Ordering::Relaxed);
        let mut v = Vec::new();
        v.try_reserve_exact(n)
            .map_err(|_| Error::Backend(format!("out of host memory allocating {what} ({} MiB)", (n * 4) >> 20)))?;
        v.resize(n, 0);
        Ok(v)
    }

    fn upload(&self, dst: &mut Vec<f32>, src: &[f32]) {
        dst.copy_from_slice(src);
    }

    fn upload_i(&self, dst: &mut Vec<i32>, src: &[i32]) {
        dst.copy_from_slice(src);
    }

    fn download(&self, src: &Vec<f32>) -> Vec<f32> {
        src.clone()
    }

    fn download_i(&self, src: &Vec<i32>) -> Vec<i32> {
        src.clone()
    }

    fn zero(&self, buf: &mut Vec<f32>) {
        buf.fill(0.0);
    }

    fn matmul(&self, c: &mut Vec<f32>, a: &Vec<f32>, b: &Vec<f32>, g: Gemm) {
        // f32 for either precision: the CPU is the reference.
        let (ta, tb, acc) = g.flags();
        let par = self.gemm_par();
        self.run(|| matmul::matmul(c, a, b, g.m, g.k, g.n, ta, tb, acc, par));
    }

    fn add_bias(&self, out: &mut Vec<f32>, bias: &Vec<f32>, rows: usize, n: usize) {
        self.run(|| matmul::add_bias(&mut out[..rows * n], bias, n));
    }

    fn bias_grad(&self, dbias: &mut Vec<f32>, dout: &Vec<f32>, rows: usize, n: usize) {
        self.run(|| matmul::bias_grad(dbias, &dout[..rows * n], rows, n));
    }

    fn grouped_matmul(
        &self,
        out: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &Vec<f32>,
        b: &Vec<f32>,
        offsets: &Vec<i32>,
        g: Grouped,
    ) {
        let par = self.gemm_par();
        self.run(|| expert::grouped_matmul(out, x, w, b, offsets, g.e, g.k, g.n, par));
    }

    fn grouped_matmul_gelu(
        &self,
        pre: &mut Vec<f32>,
        act: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &Vec<f32>,
        b: &Vec<f32>,
        offsets: &Vec<i32>,
        g: Grouped,
    ) {
        let par = self.gemm_par();
        self.run(|| expert::grouped_matmul_gelu(pre, act, x, w, b, offsets, g.e, g.k, g.n, par));
    }

    fn grouped_matmul_bwd(
        &self,
        dx: &mut Vec<f32>,
        dw: &mut Vec<f32>,
        db: &mut Vec<f32>,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        w: &Vec<f32>,
        offsets: &Vec<i32>,
        g: Grouped,
    ) {
        let par = self.gemm_par();
        self.run(|| expert::grouped_matmul_bwd(dx, dw, db, dy, x, w, offsets, g.e, g.k, g.n, par));
    }

    fn grouped_matmul_bwd_gelu(
        &self,
        dpre: &mut Vec<f32>,
        dw: &mut Vec<f32>,
        db: &mut Vec<f32>,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        w: &Vec<f32>,
        pre: &Vec<f32>,
        offsets: &Vec<i32>,
        g: Grouped,
    ) {
        let par = self.gemm_par();
        self.run(|| expert::grouped_matmul_bwd_gelu(dpre, dw, db, dy, x, w, pre, offsets, g.e, g.k, g.n, par));
    }

    fn add_inplace(&self, a: &mut Vec<f32>, b: &Vec<f32>) {
        assert_eq!(a.len(), b.len(), "add_inplace: length mismatch");
        self.run(|| {
            a.par_chunks_mut(4096).zip(b.par_chunks(4096)).for_each(|(a, b)| {
                for (x, y) in a.iter_mut().zip(b) {
                    *x += y;
                }
            })
        });
    }

    fn copy(&self, dst: &mut Vec<f32>, src: &Vec<f32>) {
        assert_eq!(dst.len(), src.len(), "copy: length mismatch");
        // Parallel above 1 MiB: one core does not saturate memory bandwidth
        // (and `bench --ops` measures its bandwidth ceiling with this copy).
        if dst.len() < (1 << 18) {
            dst.copy_from_slice(src);
        } else {
            self.run(|| {
                dst.par_chunks_mut(1 << 16).zip(src.par_chunks(1 << 16)).for_each(|(d, s)| d.copy_from_slice(s))
            });
        }
    }

    fn copy_at(&self, dst: &mut Vec<f32>, offset: usize, src: &Vec<f32>) {
        dst[offset..offset + src.len()].copy_from_slice(src);
    }

    fn gelu_fwd(&self, out: &mut Vec<f32>, x: &Vec<f32>, len: usize) {
        self.run(|| activation::gelu_fwd(&mut out[..len], &x[..len]));
    }

    fn gelu_bwd(&self, dx: &mut Vec<f32>, dout: &Vec<f32>, x: &Vec<f32>, len: usize) {
        self.run(|| activation::gelu_bwd(&mut dx[..len], &dout[..len], &x[..len]));
    }

    fn layernorm_fwd(
        &self,
        out: &mut Vec<f32>,
        mean: &mut Vec<f32>,
        rstd: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &Vec<f32>,
        b: &Vec<f32>,
        rows: usize,
        c: usize,
    ) {
        self.run(|| norm::layernorm_fwd(out, mean, rstd, x, w, b, rows, c));
    }

    fn layernorm_bwd(
        &self,
        dx: &mut Vec<f32>,
        dw: &mut Vec<f32>,
        db: &mut Vec<f32>,
        dout: &Vec<f32>,
        x: &Vec<f32>,
        w: &Vec<f32>,
        mean: &Vec<f32>,
        rstd: &Vec<f32>,
        rows: usize,
        c: usize,
    ) {
        self.run(|| norm::layernorm_bwd(dx, dw, db, dout, x, w, mean, rstd, rows, c));
    }

    fn embedding_fwd(
        &self,
        out: &mut Vec<f32>,
        tokens: &Vec<i32>,
        wte: &Vec<f32>,
        wpe: &Vec<f32>,
        b: usize,
        t: usize,
        d: usize,
    ) {
        self.run(|| embedding::embedding_fwd(out, tokens, wte, wpe, b, t, d));
    }

    fn embedding_bwd(
        &self,
        dwte: &mut Vec<f32>,
        dwpe: &mut Vec<f32>,
        dout: &Vec<f32>,
        tokens: &Vec<i32>,
        b: usize,
        t: usize,
        d: usize,
    ) {
        self.run(|| embedding::embedding_bwd(dwte, dwpe, dout, tokens, b, t, d));
    }

    fn embedding_at(
        &self,
        out: &mut Vec<f32>,
        tokens: &Vec<i32>,
        positions: &Vec<i32>,
        wte: &Vec<f32>,
        wpe: &Vec<f32>,
        n: usize,
        d: usize,
    ) {
        self.run(|| embedding::embedding_at(out, tokens, positions, wte, wpe, n, d));
    }

    fn kv_append(
        &self,
        k_cache: &mut Vec<f32>,
        v_cache: &mut Vec<f32>,
        qkv: &Vec<f32>,
        slots: &Vec<i32>,
        n: usize,
        h: usize,
        hd: usize,
    ) {
        attention::kv_append(k_cache, v_cache, qkv, slots, n, h * hd);
    }

    fn attention_decode(
        &self,
        out: &mut Vec<f32>,
        qkv: &Vec<f32>,
        k_cache: &Vec<f32>,
        v_cache: &Vec<f32>,
        lens: &Vec<i32>,
        s: DecodeShape,
    ) {
        self.run(|| attention::attention_decode(out, qkv, k_cache, v_cache, lens, s.n_seq, s.h, s.hd, s.max_t));
    }

    fn attention_fwd(&self, out: &mut Vec<f32>, lse: &mut Vec<f32>, qkv: &Vec<f32>, s: AttnShape) {
        self.run(|| attention::attention_fwd(out, lse, qkv, s.b, s.t, s.h, s.hd));
    }

    fn attention_bwd(
        &self,
        dqkv: &mut Vec<f32>,
        dout: &Vec<f32>,
        qkv: &Vec<f32>,
        out: &Vec<f32>,
        lse: &Vec<f32>,
        s: AttnShape,
    ) {
        self.run(|| attention::attention_bwd(dqkv, dout, qkv, out, lse, s.b, s.t, s.h, s.hd));
    }

    fn router_jitter(&self, out: &mut Vec<f32>, mult: &mut Vec<f32>, x: &Vec<f32>, eps: f32, seed: u64) {
        self.run(|| router::jitter(out, mult, x, eps, seed));
    }

    fn router_jitter_bwd(&self, dx: &mut Vec<f32>, dout: &Vec<f32>, mult: &Vec<f32>) {
        router::jitter_bwd(dx, dout, mult);
    }

    fn router_fwd(&self, r: &mut Routing<Cpu>, logits: &Vec<f32>, p: &RouterParams) {
        debug_assert!((p.n_tokens, p.n_experts, p.top_k) == (r.n, r.e, r.k), "router_fwd: sizes");
        let Routing { probs, expert, gate, row, row_assign, offsets, stats, .. } = r;
        self.run(|| router::router_fwd(probs, expert, gate, row, row_assign, offsets, stats, logits, p));
    }

    fn router_bwd(
        &self,
        dlogits: &mut Vec<f32>,
        dgate: &Vec<f32>,
        logits: &Vec<f32>,
        r: &Routing<Cpu>,
        p: &RouterParams,
        dloss: f32,
    ) {
        self.run(|| router::router_bwd(dlogits, dgate, logits, &r.probs, &r.expert, &r.stats, p, dloss));
    }

    fn dispatch_fwd(&self, xe: &mut Vec<f32>, x: &Vec<f32>, r: &Routing<Cpu>, d: usize) {
        self.run(|| dispatch::dispatch_fwd(xe, x, &r.row_assign, r.rows(), r.k, d));
    }

    fn dispatch_bwd(&self, dx: &mut Vec<f32>, dxe: &Vec<f32>, r: &Routing<Cpu>, d: usize) {
        self.run(|| dispatch::dispatch_bwd(dx, dxe, &r.row, r.n, r.k, d));
    }

    fn combine_fwd(&self, out: &mut Vec<f32>, ye: &Vec<f32>, r: &Routing<Cpu>, d: usize) {
        self.run(|| dispatch::combine_fwd(out, ye, &r.row, &r.gate, r.n, r.k, d));
    }

    fn combine_bwd(
        &self,
        dye: &mut Vec<f32>,
        dgate: &mut Vec<f32>,
        dout: &Vec<f32>,
        ye: &Vec<f32>,
        r: &Routing<Cpu>,
        d: usize,
    ) {
        self.run(|| dispatch::combine_bwd(dye, dgate, dout, ye, &r.row, &r.row_assign, &r.gate, r.rows(), r.n, r.k, d));
    }

    fn cross_entropy(
        &self,
        losses: &mut Vec<f32>,
        dlogits: Option<&mut Vec<f32>>,
        logits: &Vec<f32>,
        targets: &Vec<i32>,
        rows: usize,
        v: usize,
        dloss: f32,
    ) {
        self.run(|| loss::cross_entropy(losses, dlogits.map(|d| d.as_mut_slice()), logits, targets, rows, v, dloss));
    }

    fn sum_squares(&self, acc: &mut Vec<f32>, g: &Vec<f32>) {
        acc[0] += self.run(|| optim::sum_squares(g)) as f32;
    }

    fn adamw(
        &self,
        param: &mut Vec<f32>,
        grad: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        norm_sq: &Vec<f32>,
        h: &AdamW,
    ) {
        self.run(|| optim::adamw(param, grad, m, v, norm_sq[0], h));
    }
}
