//! switchyard: a Mixture-of-Experts research engine.
//!
//! A decoder-only Switch Transformer (DESIGN.md §2) with explicit forward and
//! backward passes over a [`backend::Backend`] trait. The pure-Rust CPU backend
//! ([`backend::cpu::Cpu`]) is the numerical reference for every CUDA kernel.

pub mod backend;
pub mod config;
pub mod error;
pub mod model;

pub use config::Config;
pub use error::{Error, Result};
