//! Choosing the backend a job runs on: `auto`, `cpu`, `cuda` or `cuda:N`.
//!
//! The command line, tests, benches and any other front end open a device
//! here and run generic code on it with [`on_device!`](crate::on_device):
//!
//! ```no_run
//! use switchyard::{device::Device, on_device, Config};
//! let cfg = Config::preset("tiny").unwrap();
//! let opened = Device::open("auto", 0, &cfg).unwrap();
//! if let Some(why) = &opened.notice {
//!     eprintln!("{why}");
//! }
//! let name = on_device!(&opened.device, |be| switchyard::backend::Backend::name(be));
//! ```

use crate::backend::cpu::Cpu;
use crate::backend::cuda::{self, Cuda};
use crate::backend::Backend;
use crate::config::Config;
use crate::{Error, Result};

/// An opened backend. The model and trainer are generic over [`Backend`];
/// [`on_device!`](crate::on_device) compiles a body once per variant.
pub enum Device {
    /// The pure-Rust CPU backend.
    Cpu(Cpu),
    /// A CUDA device.
    Cuda(Box<Cuda>),
}

/// A device and, for `auto` falling back to the CPU, the reason (one line,
/// for the user).
pub struct Opened {
    /// The backend.
    pub device: Device,
    /// Why `auto` chose the CPU, e.g. `device auto: using the CPU (no CUDA
    /// driver; --device cuda says more)`; `None` otherwise.
    pub notice: Option<String>,
}

/// Run `$body` with `$be` bound to the backend of a [`Device`] (each arm is
/// compiled for its own backend type).
#[macro_export]
macro_rules! on_device {
    ($dev:expr, |$be:ident| $body:expr) => {
        match $dev {
            $crate::device::Device::Cpu($be) => $body,
            $crate::device::Device::Cuda(b) => {
                let $be: &$crate::backend::cuda::Cuda = b;
                $body
            }
        }
    };
}

impl Device {
    /// Open the device `spec` names (`auto`, `cpu`, `cuda`, `cuda:N`) for a
    /// model of config `cfg`, with `threads` CPU workers (0 = one per core).
    /// `auto` takes the GPU when a driver, a device and embedded kernels are
    /// there and it can run `cfg`, else the CPU with a notice saying why; an
    /// explicit `cuda` that cannot start is an error naming the missing
    /// piece and the fix.
    pub fn open(spec: &str, threads: usize, cfg: &Config) -> Result<Opened> {
        let cpu = |notice: Option<String>| -> Result<Opened> {
            Ok(Opened { device: Device::Cpu(Cpu::new(threads)?), notice })
        };
        match spec {
            "cpu" => cpu(None),
            "auto" => {
                let why = match cuda::probe(0) {
                    Err(e) => e.to_string(),
                    Ok(()) => match Cuda::new(0) {
                        Err(e) => e.to_string(),
                        Ok(gpu) => match gpu.supports(cfg) {
                            Ok(()) => return Ok(Opened { device: Device::Cuda(Box::new(gpu)), notice: None }),
                            Err(e) => format!("the GPU cannot run this model: {e}"),
                        },
                    },
                };
                let short = why.split(':').next().unwrap_or(&why).to_string();
                cpu(Some(format!("device auto: using the CPU ({short}; --device cuda says more)")))
            }
            other => {
                let ordinal = match other.strip_prefix("cuda") {
                    Some("") => 0,
                    Some(n) => n.strip_prefix(':').and_then(|n| n.parse().ok()).ok_or_else(|| {
                        Error::Config(format!("--device {other}: expected cuda or cuda:N with N a device number"))
                    })?,
                    None => {
                        return Err(Error::Config(format!(
                            "--device {other}: unknown device; use auto, cpu, cuda or cuda:N"
                        )))
                    }
                };
                let named = |e: Error| match e {
                    Error::Backend(m) => Error::Backend(format!("--device {other}: {m}")),
                    Error::Config(m) => Error::Config(format!("--device {other}: {m}")),
                    e => e,
                };
                let gpu = Cuda::new(ordinal).map_err(named)?;
                gpu.supports(cfg).map_err(named)?;
                Ok(Opened { device: Device::Cuda(Box::new(gpu)), notice: None })
            }
        }
    }

    /// The backend's name, e.g. `cpu (2 threads)`.
    pub fn name(&self) -> String {
        crate::on_device!(self, |be| be.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_name_the_fix() {
        let cfg = Config::preset("tiny").unwrap();
        let cpu = Device::open("cpu", 1, &cfg).unwrap();
        assert!(matches!(cpu.device, Device::Cpu(_)) && cpu.notice.is_none());
        assert_eq!(cpu.device.name(), "cpu (1 threads)");
        for (spec, want) in [("tpu", "unknown device"), ("cuda:x", "expected cuda or cuda:N")] {
            let e = Device::open(spec, 1, &cfg).err().expect("refused").to_string();
            assert!(e.contains(want), "{spec}: {e}");
        }
    }
}
