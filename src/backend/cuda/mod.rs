//! The CUDA backend: the model's op set on an NVIDIA GPU through the
//! hand-written kernels of `kernels/` (embedded as fatbins by build.rs) and
//! cuBLAS for dense matmuls.
//!
//! Precision (DESIGN.md §3): every [`CudaBuf`] holds fp32 values (master
//! weights, optimizer state, gradients, LayerNorm/softmax statistics, losses).
//! Matmuls and attention read bf16: the launchers round their operands to
//! bf16 on the way in (a cast kernel into scratch), except parameters, whose
//! bf16 copy the fused AdamW kernel writes as it updates the fp32 master.
//! Accumulation is fp32 throughout.
//!
//! Errors: CUDA reports failures asynchronously, so the backend keeps the
//! first one ("sticky", like the driver itself), turns later ops into no-ops,
//! and returns it from [`Backend::check`], which the model calls after every
//! micro-batch. Debug builds synchronize after every launch so the error names
//! the kernel that failed.
//!
//! One launcher file per kernel family, with the family's name:
//! `kernels/norm.cu` <-> `norm.rs`, and so on.

mod activation;
mod attention;
mod dispatch;
mod elementwise;
mod embedding;
mod expert;
pub mod kernels;
mod loss;
mod matmul;
mod norm;
mod optim;
pub mod params;
mod router;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg,
};

use super::{AdamW, AttnShape, Backend, DecodeShape, Gemm, Grouped, Precision, RouterParams, Routing};
use crate::config::Config;
use crate::{Error, Result};
pub use attention::{Shape as AttentionShape, HEAD_DIMS};
pub use kernels::Kernel;
pub use router::{MAX_EXPERTS, MAX_TOP_K};

/// Why the CUDA backend cannot start, each with its fix.
#[derive(Clone, Debug, PartialEq)]
pub enum Unavailable {
    /// No `libcuda.so` could be loaded.
    NoDriver,
    /// The driver loaded but reports no device (or not the one asked for).
    NoDevice {
        /// Ordinal requested.
        ordinal: usize,
        /// Devices the driver reports.
        count: usize,
    },
    /// This binary was built without nvcc, so it carries no kernels.
    NoKernels,
    /// The driver loaded but cuBLAS (`libcublas.so.13`) did not.
    NoCublas,
    /// Driver initialisation or context creation failed.
    Init(String),
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unavailable::NoDriver => write!(
                f,
                "no CUDA driver: libcuda.so could not be loaded; install the NVIDIA driver (580+ for CUDA 13) \
                 or use --device cpu"
            ),
            Unavailable::NoDevice { ordinal, count: 0 } => write!(
                f,
                "no CUDA device: the driver reports no GPU (asked for cuda:{ordinal}); check nvidia-smi and \
                 CUDA_VISIBLE_DEVICES, or use --device cpu"
            ),
            Unavailable::NoDevice { ordinal, count } => write!(
                f,
                "no CUDA device {ordinal}: the driver reports {count} GPU(s) (cuda:0..cuda:{}); pick one of those",
                count - 1
            ),
            Unavailable::NoKernels => write!(
                f,
                "no embedded CUDA kernels: this binary was built without nvcc; run scripts/cuda-toolchain.sh \
                 (or set NVCC / CUDA_HOME) and rebuild"
            ),
            Unavailable::NoCublas => write!(
                f,
                "no cuBLAS: libcublas.so.13 could not be loaded; add the CUDA 13 library folder (or the \
                 nvidia-cublas wheel's nvidia/cu13/lib) to LD_LIBRARY_PATH"
            ),
            Unavailable::Init(e) => write!(f, "CUDA initialisation failed: {e}"),
        }
    }
}

/// Whether the CUDA backend can run here: driver, device 0 and embedded kernels.
pub fn cuda_available() -> bool {
    probe(0).is_ok()
}

/// Check the three preconditions of [`Cuda::new`] in order (driver, device,
/// kernels, cuBLAS) without creating a context.
pub fn probe(ordinal: usize) -> std::result::Result<(), Unavailable> {
    // SAFETY: only tries to dlopen libcuda; device_count() would panic without it.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Unavailable::NoDriver);
    }
    let count = CudaContext::device_count().map_err(|e| Unavailable::Init(e.to_string()))?.max(0) as usize;
    if ordinal >= count {
        return Err(Unavailable::NoDevice { ordinal, count });
    }
    if kernels::FATBINS.is_empty() {
        return Err(Unavailable::NoKernels);
    }
    // SAFETY: only tries to dlopen libcublas.
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err(Unavailable::NoCublas);
    }
    Ok(())
}

/// Threads per block the launchers use for kernel `name` (every family but
/// attention, the embedding rank kernel and the single-block scans launch
/// 256-thread blocks).
pub fn block_size(name: &str) -> u32 {
    if name.starts_with("attention_") {
        attention::block_of(name)
    } else if name == kernels::EMBEDDING_BWD_RANK.name {
        512
    } else if name == kernels::ROUTER_FINISH.name || name == kernels::EXPERT_SCHEDULE.name {
        1024
    } else {
        256
    }
}

/// Dynamic shared memory the launchers give kernel `name`: the expert GEMMs'
/// cp.async ring; every other kernel has static shared memory only (which
/// the ptxas report lists).
pub fn dynamic_smem(name: &str) -> u32 {
    if [kernels::EXPERT_FWD.name, kernels::EXPERT_DX.name, kernels::EXPERT_DW.name].contains(&name) {
        expert::SMEM
    } else {
        0
    }
}

/// Whether the CUDA kernels can run `cfg`: a head dimension with an
/// attention kernel, and for MoE layers the expert counts, top-k and FFN
/// width the router and expert kernels support. Needs no GPU, so configs are
/// refused before any device work.
pub fn check_config(cfg: &Config) -> Result<()> {
    let m = &cfg.model;
    let hd = m.d_model / m.n_head.max(1);
    if !attention::HEAD_DIMS.contains(&hd) {
        return Err(Error::Config(format!(
            "head_dim = model.d_model / model.n_head = {} / {} = {hd}: the CUDA attention kernels support head_dim \
             {:?}; change model.n_head or model.d_model, or use --device cpu",
            m.d_model,
            m.n_head,
            attention::HEAD_DIMS
        )));
    }
    if m.moe_every > 0 {
        if m.n_experts > MAX_EXPERTS {
            return Err(Error::Config(format!(
                "model.n_experts = {}: the CUDA router and expert kernels support at most {MAX_EXPERTS} experts; \
                 use fewer experts or --device cpu",
                m.n_experts
            )));
        }
        if m.top_k > MAX_TOP_K {
            return Err(Error::Config(format!(
                "model.top_k = {}: the CUDA router supports top-k up to {MAX_TOP_K}; lower model.top_k or use \
                 --device cpu",
                m.top_k
            )));
        }
        if !m.d_ff.is_multiple_of(8) {
            return Err(Error::Config(format!(
                "model.d_ff = {}: the CUDA expert GEMM needs d_ff to be a multiple of 8 (16-byte rows); use {} or \
                 --device cpu",
                m.d_ff,
                m.d_ff.div_ceil(8) * 8
            )));
        }
    }
    Ok(())
}

/// An fp32 device buffer, with the bf16 copy of its values when it is a
/// parameter the optimizer has updated (`half_valid`).
/// (The allocation holds at least one element: CUDA refuses empty ones.)
pub struct CudaBuf {
    data: CudaSlice<f32>,
    len: usize,
    half: Option<CudaSlice<u16>>,
    half_valid: bool,
}

impl CudaBuf {
    /// Elements.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// An i32 device buffer (at least one element allocated, like [`CudaBuf`]).
pub struct CudaIBuf {
    data: CudaSlice<i32>,
    len: usize,
}

impl CudaIBuf {
    /// Elements.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Grow-only scratch buffers, reused across launches (stream order makes
/// reuse safe: one stream, launches in program order).
#[derive(Default)]
struct Scratch {
    f32s: HashMap<&'static str, CudaSlice<f32>>,
    u16s: HashMap<&'static str, CudaSlice<u16>>,
    i32s: HashMap<&'static str, CudaSlice<i32>>,
}

/// The CUDA backend on one device and one stream.
pub struct Cuda {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: cudarc::cublas::CudaBlas,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
    /// Dynamic shared memory each kernel has been opted into (above 48 KiB).
    smem_opt_in: Mutex<HashMap<&'static str, u32>>,
    scratch: Mutex<Scratch>,
    error: Mutex<Option<String>>,
    label: String,
    sync_every_launch: bool,
}

impl Cuda {
    /// Open device `ordinal`: checks driver, device, kernels and cuBLAS first
    /// (see [`probe`]), so a missing piece is a clear error, never a panic.
    pub fn new(ordinal: usize) -> Result<Cuda> {
        probe(ordinal).map_err(|e| Error::Backend(e.to_string()))?;
        let init = |e: &dyn fmt::Display| Error::Backend(format!("CUDA initialisation failed on cuda:{ordinal}: {e}"));
        let ctx = CudaContext::new(ordinal).map_err(|e| init(&e))?;
        // One stream and no cross-stream sharing: event tracking would only add work.
        // SAFETY: every buffer is created and used on `stream` only.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let blas = cudarc::cublas::CudaBlas::new(stream.clone()).map_err(|e| init(&e))?;
        let name = ctx.name().map_err(|e| init(&e))?;
        let (major, minor) = ctx.compute_capability().map_err(|e| init(&e))?;
        if major < 8 {
            return Err(Error::Backend(format!(
                "cuda:{ordinal} is {name} (sm_{major}{minor}); the kernels need sm_80 or newer (bf16 tensor cores)"
            )));
        }
        let label = format!("cuda:{ordinal} ({name}, sm_{major}{minor})");
        let sync_every_launch = cfg!(debug_assertions) || std::env::var_os("SWITCHYARD_CUDA_SYNC").is_some();
        Ok(Cuda {
            ctx,
            stream,
            blas,
            modules: Mutex::default(),
            functions: Mutex::default(),
            smem_opt_in: Mutex::default(),
            scratch: Mutex::default(),
            error: Mutex::new(None),
            label,
            sync_every_launch,
        })
    }

    /// The stream every op runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Wait for all queued work; returns the first error seen.
    pub fn synchronize(&self) -> Result<()> {
        if let Err(e) = self.stream.synchronize() {
            self.fail(format!("stream synchronize: {e}"));
        }
        self.check_error()
    }

    fn check_error(&self) -> Result<()> {
        match &*self.error.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(Error::Backend(e.clone())),
            None => Ok(()),
        }
    }

    /// Record the first failure; later ops become no-ops until it is reported.
    fn fail(&self, msg: String) {
        let mut e = self.error.lock().unwrap_or_else(|e| e.into_inner());
        if e.is_none() {
            *e = Some(msg);
        }
    }

    fn failed(&self) -> bool {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Refuse an op whose shapes the kernels do not support (a programming
    /// error upstream: [`Backend::supports`] refuses such configs first).
    fn refuse(&self, op: &str, why: String) {
        self.fail(format!("{op}: {why}"));
    }

    /// `true` when `why` is `None`; otherwise refuse `op` for that reason.
    fn accept(&self, op: &str, why: Option<String>) -> bool {
        match why {
            Some(w) => {
                self.refuse(op, w);
                false
            }
            None => true,
        }
    }

    fn function(&self, k: Kernel) -> std::result::Result<CudaFunction, String> {
        if let Some(f) = self.functions.lock().unwrap_or_else(|e| e.into_inner()).get(k.name) {
            return Ok(f.clone());
        }
        let module = {
            let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
            match modules.get(k.family) {
                Some(m) => m.clone(),
                None => {
                    let image = kernels::fatbin(k.family)
                        .ok_or_else(|| format!("kernel family {} is not embedded in this binary", k.family))?;
                    let m = self
                        .ctx
                        .load_module(cudarc::nvrtc::Ptx::from_binary(image.to_vec()))
                        .map_err(|e| format!("loading kernels/{}.cu: {e}", k.family))?;
                    modules.insert(k.family, m.clone());
                    m
                }
            }
        };
        let f = module.load_function(k.name).map_err(|e| format!("kernel {}: {e}", k.name))?;
        self.functions.lock().unwrap_or_else(|e| e.into_inner()).insert(k.name, f.clone());
        Ok(f)
    }

    /// Launch `k` with its parameter struct. Shared memory above the 48 KiB
    /// default is opted into once per kernel.
    fn launch<P: DeviceRepr>(&self, k: Kernel, grid: (u32, u32, u32), block: u32, smem: u32, p: P) {
        if self.failed() || grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return;
        }
        let f = match self.function(k) {
            Ok(f) => f,
            Err(e) => return self.fail(e),
        };
        if smem > 48 * 1024 {
            let mut opted = self.smem_opt_in.lock().unwrap_or_else(|e| e.into_inner());
            if opted.get(k.name).is_none_or(|&have| have < smem) {
                use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
                if let Err(e) = f.set_attribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32) {
                    return self.fail(format!("{}: shared memory {smem} B: {e}", k.name));
                }
                opted.insert(k.name, smem);
            }
        }
        let cfg = LaunchConfig { grid_dim: grid, block_dim: (block, 1, 1), shared_mem_bytes: smem };
        let mut b = self.stream.launch_builder(&f);
        b.arg(&p);
        // SAFETY: `P` mirrors the kernel's parameter struct (generated from
        // kernels/params.h) and every address in it points at a live buffer of
        // the size the kernel's contract documents; the launchers check sizes.
        if let Err(e) = unsafe { b.launch(cfg) } {
            return self.fail(format!("launching {}: {e}", k.name));
        }
        if self.sync_every_launch {
            if let Err(e) = self.stream.synchronize() {
                self.fail(format!("{} failed: {e}", k.name));
            }
        }
    }

    /// Device address of a buffer (the buffer must outlive the launch: all
    /// are owned by the model or the backend's scratch).
    fn ptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        let (p, _sync) = s.device_ptr(&self.stream);
        p
    }

    /// A scratch buffer of at least `n` elements in `map`, by role (grown,
    /// never shrunk); its device address, or 0 after recording an OOM.
    fn scratch_in<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        map: &mut HashMap<&'static str, CudaSlice<T>>,
        role: &'static str,
        n: usize,
    ) -> u64 {
        if map.get(role).is_none_or(|b| b.len() < n) {
            match self.stream.alloc_zeros::<T>(n.max(1)) {
                Ok(b) => {
                    map.insert(role, b);
                }
                Err(e) => {
                    self.fail(oom(&self.ctx, role, n * std::mem::size_of::<T>(), &e));
                    return 0;
                }
            }
        }
        self.ptr(&map[role])
    }

    /// A scratch f32 buffer of at least `n` elements, by role.
    fn scratch_f32(&self, role: &'static str, n: usize) -> u64 {
        self.scratch_in(&mut self.scratch.lock().unwrap_or_else(|e| e.into_inner()).f32s, role, n)
    }

    fn scratch_u16(&self, role: &'static str, n: usize) -> u64 {
        self.scratch_in(&mut self.scratch.lock().unwrap_or_else(|e| e.into_inner()).u16s, role, n)
    }

    fn scratch_i32(&self, role: &'static str, n: usize) -> u64 {
        self.scratch_in(&mut self.scratch.lock().unwrap_or_else(|e| e.into_inner()).i32s, role, n)
    }

    /// bf16 view of `x` for a matmul or attention operand: its optimizer-kept
    /// copy when valid, else a fresh cast into the scratch slot `role`.
    fn bf16_of(&self, x: &CudaBuf, role: &'static str) -> u64 {
        if x.half_valid {
            if let Some(h) = &x.half {
                return self.ptr(h);
            }
        }
        let dst = self.scratch_u16(role, x.len());
        elementwise::cast_to_bf16(self, dst, self.ptr(&x.data), x.len());
        dst
    }

    /// Mutable access to an output buffer's address; invalidates its bf16 copy.
    fn out(&self, x: &mut CudaBuf) -> u64 {
        x.half_valid = false;
        self.ptr(&x.data)
    }

    /// An output buffer's address and its bf16 copy's, for kernels that write
    /// both in one pass (the expert GEMM operands): the copy counts as valid
    /// afterwards, so the next matmul reads it without a cast. `(ptr, 0)`
    /// after recording an out-of-memory error.
    fn out_with_bf16(&self, x: &mut CudaBuf) -> (u64, u64) {
        if x.half.is_none() {
            match self.stream.alloc_zeros::<u16>(x.len().max(1)) {
                Ok(h) => x.half = Some(h),
                Err(e) => {
                    self.fail(oom(&self.ctx, "bf16 copy", x.len() * 2, &e));
                    return (self.ptr(&x.data), 0);
                }
            }
        }
        x.half_valid = true;
        (self.ptr(&x.data), self.ptr(x.half.as_ref().expect("allocated above")))
    }

    /// Keep a bf16 copy of `x` beside it, as AdamW does for parameters, so
    /// matmuls and attention read it without casting (for frozen weights,
    /// and for benchmarks that time the kernels alone). Any later write to
    /// `x` drops the copy.
    pub fn prepare_bf16(&self, x: &mut CudaBuf) {
        if x.half.is_none() {
            match self.stream.alloc_zeros::<u16>(x.len().max(1)) {
                Ok(h) => x.half = Some(h),
                Err(e) => return self.fail(oom(&self.ctx, "bf16 copy", x.len() * 2, &e)),
            }
        }
        let dst = self.ptr(x.half.as_ref().expect("allocated above"));
        elementwise::cast_to_bf16(self, dst, self.ptr(&x.data), x.len());
        x.half_valid = !self.failed();
    }

    /// Device time of `iters` calls of `f`, in milliseconds, measured with
    /// CUDA events on the backend's stream (`f` only queues work).
    pub fn time_ms(&self, iters: usize, mut f: impl FnMut()) -> Result<f64> {
        use cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT;
        let err = |e: cudarc::driver::DriverError| Error::Backend(format!("CUDA event: {e}"));
        let start = self.ctx.new_event(Some(CU_EVENT_DEFAULT)).map_err(err)?;
        let end = self.ctx.new_event(Some(CU_EVENT_DEFAULT)).map_err(err)?;
        start.record(&self.stream).map_err(err)?;
        for _ in 0..iters {
            f();
        }
        end.record(&self.stream).map_err(err)?;
        end.synchronize().map_err(err)?;
        self.check_error()?;
        Ok(f64::from(start.elapsed_ms(&end).map_err(err)?))
    }

    /// Free and total device memory, in bytes.
    pub fn memory(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().map_err(|e| Error::Backend(format!("cuMemGetInfo: {e}")))
    }

    /// The bf16 copy of a parameter that the last AdamW step wrote (bit
    /// patterns), or `None` if it is missing or stale.
    pub fn bf16_copy(&self, x: &CudaBuf) -> Option<Vec<u16>> {
        let h = x.half.as_ref().filter(|_| x.half_valid)?;
        self.stream.clone_dtoh(&h.slice(..x.len())).ok()
    }
}

/// The out-of-memory message: what was being allocated, its size, and what is free.
fn oom(ctx: &CudaContext, what: &str, bytes: usize, e: &dyn fmt::Display) -> String {
    let free = ctx.mem_get_info().map(|(f, t)| format!("{} free of {}", mib(f), mib(t))).unwrap_or_default();
    format!(
        "GPU allocation of {what} ({}) failed: {e}; {free}. Reduce train.batch_size or model.max_seq_len so it fits",
        mib(bytes)
    )
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Blocks for a grid-stride elementwise kernel over `n` elements.
fn grid_1d(n: usize, block: u32) -> u32 {
    n.div_ceil(block as usize).clamp(1, 65_535) as u32
}

impl Backend for Cuda {
    type Buf = CudaBuf;
    type IBuf = CudaIBuf;

    fn name(&self) -> String {
        self.label.clone()
    }

    fn check(&self) -> Result<()> {
        self.synchronize()
    }

    fn supports(&self, cfg: &Config) -> Result<()> {
        check_config(cfg)
    }

    fn available_memory(&self) -> Option<crate::memory::Available> {
        let (free, total) = self.memory().ok()?;
        Some(crate::memory::Available {
            bytes: free as u64,
            source: format!("free device memory of {} total (cuMemGetInfo)", crate::memory::human_bytes(total as u64)),
        })
    }

    /// bf16 copies of the parameters (written by AdamW for the tensor-core
    /// matmuls), and bf16 operand copies and scratch of the activations,
    /// bounded by half their f32 size. Not yet measured on a GPU.
    fn extra_memory(&self, est: &crate::memory::Estimate) -> u64 {
        let part = |name: &str| est.parts.iter().filter(|p| p.what.starts_with(name)).map(|p| p.bytes).sum::<u64>();
        part("parameters") / 2 + part("activations") / 2 + part("inference work") / 2
    }

    fn alloc(&self, n: usize, what: &str) -> Result<CudaBuf> {
        let data =
            self.stream.alloc_zeros::<f32>(n.max(1)).map_err(|e| Error::Backend(oom(&self.ctx, what, n * 4, &e)))?;
        Ok(CudaBuf { data, len: n, half: None, half_valid: false })
    }

    fn alloc_i(&self, n: usize, what: &str) -> Result<CudaIBuf> {
        let data =
            self.stream.alloc_zeros::<i32>(n.max(1)).map_err(|e| Error::Backend(oom(&self.ctx, what, n * 4, &e)))?;
        Ok(CudaIBuf { data, len: n })
    }

    fn upload(&self, dst: &mut CudaBuf, src: &[f32]) {
        assert_eq!(dst.len(), src.len(), "upload: length mismatch");
        dst.half_valid = false;
        if src.is_empty() || self.failed() {
            return;
        }
        if let Err(e) = self.stream.memcpy_htod(src, &mut dst.data.slice_mut(..src.len())) {
            self.fail(format!("upload: {e}"));
        }
    }

    fn upload_i(&self, dst: &mut CudaIBuf, src: &[i32]) {
        assert_eq!(dst.len(), src.len(), "upload_i: length mismatch");
        if src.is_empty() || self.failed() {
            return;
        }
        if let Err(e) = self.stream.memcpy_htod(src, &mut dst.data.slice_mut(..src.len())) {
            self.fail(format!("upload: {e}"));
        }
    }

    fn download(&self, src: &CudaBuf) -> Vec<f32> {
        if src.is_empty() {
            return Vec::new();
        }
        if !self.failed() {
            match self.stream.clone_dtoh(&src.data.slice(..src.len())) {
                Ok(v) => return v,
                Err(e) => self.fail(format!("download: {e}")),
            }
        }
        vec![f32::NAN; src.len()]
    }

    fn download_i(&self, src: &CudaIBuf) -> Vec<i32> {
        if src.is_empty() {
            return Vec::new();
        }
        if !self.failed() {
            match self.stream.clone_dtoh(&src.data.slice(..src.len())) {
                Ok(v) => return v,
                Err(e) => self.fail(format!("download: {e}")),
            }
        }
        vec![-1; src.len()]
    }

    fn zero(&self, buf: &mut CudaBuf) {
        buf.half_valid = false;
        if let Err(e) = self.stream.memset_zeros(&mut buf.data) {
            self.fail(format!("zero: {e}"));
        }
    }

    fn matmul(&self, c: &mut CudaBuf, a: &CudaBuf, b: &CudaBuf, g: Gemm) {
        let (ta, tb, acc) = g.flags();
        let operands = match g.precision {
            Precision::Mixed => matmul::Operands::Bf16,
            Precision::Fp32 => matmul::Operands::Fp32,
        };
        matmul::matmul(self, c, a, b, (g.m, g.k, g.n), (ta, tb), acc, operands);
    }

    fn add_bias(&self, out: &mut CudaBuf, bias: &CudaBuf, rows: usize, n: usize) {
        activation::bias_fwd(self, out, bias, rows, n);
    }

    fn bias_grad(&self, dbias: &mut CudaBuf, dout: &CudaBuf, rows: usize, n: usize) {
        activation::bias_grad(self, dbias, dout, rows, n);
    }

    fn bias_gelu_fwd(&self, pre: &mut CudaBuf, out: &mut CudaBuf, bias: &CudaBuf, rows: usize, n: usize) {
        activation::bias_gelu_fwd(self, pre, out, bias, rows, n);
    }

    fn grouped_matmul(&self, out: &mut CudaBuf, x: &CudaBuf, w: &CudaBuf, b: &CudaBuf, offsets: &CudaIBuf, g: Grouped) {
        expert::fwd(self, out, None, [x, w, b], offsets, (g.e, g.k, g.n));
    }

    fn grouped_matmul_bwd(
        &self,
        dx: &mut CudaBuf,
        dw: &mut CudaBuf,
        db: &mut CudaBuf,
        dy: &CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        offsets: &CudaIBuf,
        g: Grouped,
    ) {
        expert::bwd(self, [dx, dw, db], [dy, x, w], None, offsets, (g.e, g.k, g.n));
    }

    fn grouped_matmul_gelu(
        &self,
        pre: &mut CudaBuf,
        act: &mut CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        b: &CudaBuf,
        offsets: &CudaIBuf,
        g: Grouped,
    ) {
        expert::fwd(self, pre, Some(act), [x, w, b], offsets, (g.e, g.k, g.n));
    }

    fn grouped_matmul_bwd_gelu(
        &self,
        dpre: &mut CudaBuf,
        dw: &mut CudaBuf,
        db: &mut CudaBuf,
        dy: &CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        pre: &CudaBuf,
        offsets: &CudaIBuf,
        g: Grouped,
    ) {
        expert::bwd(self, [dpre, dw, db], [dy, x, w], Some(pre), offsets, (g.e, g.k, g.n));
    }

    fn copy_at(&self, dst: &mut CudaBuf, offset: usize, src: &CudaBuf) {
        assert!(offset + src.len() <= dst.len(), "copy_at: {} + {} past {}", offset, src.len(), dst.len());
        dst.half_valid = false;
        if src.is_empty() || self.failed() {
            return;
        }
        let range = offset..offset + src.len();
        if let Err(e) = self.stream.memcpy_dtod(&src.data.slice(..src.len()), &mut dst.data.slice_mut(range)) {
            self.fail(format!("copy_at: {e}"));
        }
    }

    fn add_inplace(&self, a: &mut CudaBuf, b: &CudaBuf) {
        elementwise::add(self, a, b);
    }

    fn copy(&self, dst: &mut CudaBuf, src: &CudaBuf) {
        assert_eq!(dst.len(), src.len(), "copy: length mismatch");
        dst.half_valid = false;
        if src.is_empty() || self.failed() {
            return;
        }
        if let Err(e) = self.stream.memcpy_dtod(&src.data.slice(..src.len()), &mut dst.data.slice_mut(..src.len())) {
            self.fail(format!("copy: {e}"));
        }
    }

    fn gelu_fwd(&self, out: &mut CudaBuf, x: &CudaBuf, len: usize) {
        activation::gelu_fwd(self, out, x, len);
    }

    fn gelu_bwd(&self, dx: &mut CudaBuf, dout: &CudaBuf, x: &CudaBuf, len: usize) {
        activation::gelu_bwd(self, dx, dout, x, len);
    }

    fn layernorm_fwd(
        &self,
        out: &mut CudaBuf,
        mean: &mut CudaBuf,
        rstd: &mut CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        b: &CudaBuf,
        rows: usize,
        c: usize,
    ) {
        norm::layernorm_fwd(self, [out, mean, rstd], [x, w, b], rows, c);
    }

    fn layernorm_bwd(
        &self,
        dx: &mut CudaBuf,
        dw: &mut CudaBuf,
        db: &mut CudaBuf,
        dout: &CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        mean: &CudaBuf,
        rstd: &CudaBuf,
        rows: usize,
        c: usize,
    ) {
        norm::layernorm_bwd(self, [dx, dw, db], [dout, x, w, mean, rstd], rows, c);
    }

    fn embedding_fwd(
        &self,
        out: &mut CudaBuf,
        tokens: &CudaIBuf,
        wte: &CudaBuf,
        wpe: &CudaBuf,
        b: usize,
        t: usize,
        d: usize,
    ) {
        embedding::fwd(self, out, tokens, wte, wpe, (b, t, d));
    }

    fn embedding_bwd(
        &self,
        dwte: &mut CudaBuf,
        dwpe: &mut CudaBuf,
        dout: &CudaBuf,
        tokens: &CudaIBuf,
        b: usize,
        t: usize,
        d: usize,
    ) {
        embedding::bwd(self, dwte, dwpe, dout, tokens, (b, t, d));
    }

    fn attention_fwd(&self, out: &mut CudaBuf, lse: &mut CudaBuf, qkv: &CudaBuf, s: AttnShape) {
        attention::fwd(self, out, lse, qkv, attention::Shape { b: s.b, t: s.t, h: s.h, hd: s.hd, causal: true });
    }

    fn attention_bwd(
        &self,
        dqkv: &mut CudaBuf,
        dout: &CudaBuf,
        qkv: &CudaBuf,
        out: &CudaBuf,
        lse: &CudaBuf,
        s: AttnShape,
    ) {
        let shape = attention::Shape { b: s.b, t: s.t, h: s.h, hd: s.hd, causal: true };
        attention::bwd(self, dqkv, dout, qkv, out, lse, shape);
    }

    fn embedding_at(
        &self,
        out: &mut CudaBuf,
        tokens: &CudaIBuf,
        positions: &CudaIBuf,
        wte: &CudaBuf,
        wpe: &CudaBuf,
        n: usize,
        d: usize,
    ) {
        embedding::at(self, out, tokens, positions, wte, wpe, (n, d));
    }

    fn kv_append(
        &self,
        k_cache: &mut CudaBuf,
        v_cache: &mut CudaBuf,
        qkv: &CudaBuf,
        slots: &CudaIBuf,
        n: usize,
        h: usize,
        hd: usize,
    ) {
        attention::kv_append(self, k_cache, v_cache, qkv, slots, (n, h, hd));
    }

    fn attention_decode(
        &self,
        out: &mut CudaBuf,
        qkv: &CudaBuf,
        k_cache: &CudaBuf,
        v_cache: &CudaBuf,
        lens: &CudaIBuf,
        s: DecodeShape,
    ) {
        attention::decode(self, out, qkv, k_cache, v_cache, lens, (s.n_seq, s.h, s.hd, s.max_t));
    }

    fn router_jitter(&self, out: &mut CudaBuf, mult: &mut CudaBuf, x: &CudaBuf, eps: f32, seed: u64) {
        router::jitter(self, out, mult, x, eps, seed);
    }

    fn router_jitter_bwd(&self, dx: &mut CudaBuf, dout: &CudaBuf, mult: &CudaBuf) {
        router::jitter_bwd(self, dx, dout, mult);
    }

    fn router_fwd(&self, r: &mut Routing<Cuda>, logits: &CudaBuf, p: &RouterParams) {
        debug_assert!((p.n_tokens, p.n_experts, p.top_k) == (r.n, r.e, r.k), "router_fwd: sizes");
        let Routing { probs, expert, gate, row, row_assign, offsets, stats, .. } = r;
        router::fwd(self, [probs, gate, stats], [expert, row, row_assign, offsets], logits, p);
    }

    fn router_bwd(
        &self,
        dlogits: &mut CudaBuf,
        dgate: &CudaBuf,
        logits: &CudaBuf,
        r: &Routing<Cuda>,
        p: &RouterParams,
        dloss: f32,
    ) {
        router::bwd(self, dlogits, [dgate, logits, &r.probs, &r.stats], &r.expert, p, dloss);
    }

    fn dispatch_fwd(&self, xe: &mut CudaBuf, x: &CudaBuf, r: &Routing<Cuda>, d: usize) {
        dispatch::fwd(self, xe, x, &r.row_assign, (r.rows(), r.k, d));
    }

    fn dispatch_bwd(&self, dx: &mut CudaBuf, dxe: &CudaBuf, r: &Routing<Cuda>, d: usize) {
        dispatch::bwd(self, dx, dxe, &r.row, (r.n, r.k, d));
    }

    fn combine_fwd(&self, out: &mut CudaBuf, ye: &CudaBuf, r: &Routing<Cuda>, d: usize) {
        dispatch::combine_fwd(self, out, ye, &r.row, &r.gate, (r.n, r.k, d));
    }

    fn combine_bwd(
        &self,
        dye: &mut CudaBuf,
        dgate: &mut CudaBuf,
        dout: &CudaBuf,
        ye: &CudaBuf,
        r: &Routing<Cuda>,
        d: usize,
    ) {
        dispatch::combine_bwd(self, dye, dgate, [dout, ye, &r.gate], &r.row, r.rows(), (r.n, r.k, d));
    }

    fn cross_entropy(
        &self,
        losses: &mut CudaBuf,
        dlogits: Option<&mut CudaBuf>,
        logits: &CudaBuf,
        targets: &CudaIBuf,
        rows: usize,
        v: usize,
        dloss: f32,
    ) {
        loss::cross_entropy(self, losses, dlogits, logits, targets, (rows, v), dloss);
    }

    fn sum_squares(&self, acc: &mut CudaBuf, g: &CudaBuf) {
        optim::sum_squares(self, acc, g);
    }

    fn adamw(
        &self,
        param: &mut CudaBuf,
        grad: &CudaBuf,
        m: &mut CudaBuf,
        v: &mut CudaBuf,
        norm_sq: &CudaBuf,
        h: &AdamW,
    ) {
        optim::adamw(self, param, grad, m, v, norm_sq, h);
    }
}
