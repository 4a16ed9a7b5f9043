//! switchyard: a Mixture-of-Experts research engine.
//!
//! A decoder-only Switch Transformer (DESIGN.md §2) with explicit forward and
//! backward passes over a [`backend::Backend`] trait. The pure-Rust CPU backend
//! ([`backend::cpu::Cpu`]) is the numerical reference for every CUDA kernel.
//!
//! - [`config`]: run configuration, presets, validation.
//! - [`data`]: tokenizers, the synthetic multi-domain corpus (with its exact
//!   loss floor), text and token-file loaders.
//! - [`model`]: parameters, forward and backward.
//! - [`train`]: optimizer, schedule, training loop, checkpoints, metrics.
//! - [`infer`]: KV cache, batched generation, sampling.
//! - [`sweep`]: experiment sweeps (axes -> points -> run directories -> results table).
//! - [`plot`]: SVG/PNG plots of runs, sweeps and rooflines.
//! - [`device`]: opening the backend a job runs on (`auto`, `cpu`, `cuda:N`).
//! - [`memory`]: the memory a config needs, checked before allocating.
//! - [`files`]: run-directory locks, atomic writes, cleanup of partial writes.
//! - [`opbench`]: per-op throughput against measured ceilings (`switchyard bench --ops`).

pub mod backend;
pub mod config;
pub mod data;
pub mod device;
pub mod error;
pub mod files;
pub mod infer;
pub mod memory;
pub mod model;
pub mod opbench;
pub mod plot;
pub mod sweep;
pub mod train;

pub use config::Config;
pub use error::{Error, Result};

/// The git commit this library was built from (`-dirty` if the tree had
/// uncommitted changes), or `unknown`.
pub const GIT_COMMIT: &str = env!("SWITCHYARD_GIT_COMMIT");
