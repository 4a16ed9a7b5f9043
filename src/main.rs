//! The `switchyard` command line: train, evaluate, and print configs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use switchyard::backend::cpu::Cpu;
use switchyard::backend::cuda::{self, Cuda};
use switchyard::backend::Backend;
use switchyard::config::{Config, PRESETS};
use switchyard::data::Dataset;
use switchyard::model::Model;
use switchyard::train::{self, checkpoint, TrainOptions};

/// The backend a command runs on.
enum Device {
    Cpu(Cpu),
    Cuda(Box<Cuda>),
}

/// Run `$body` with `$be` bound to the chosen backend (each arm is compiled
/// for its own backend type: the model and trainer are generic).
macro_rules! on_device {
    ($dev:expr, |$be:ident| $body:expr) => {
        match $dev {
            Device::Cpu($be) => $body,
            Device::Cuda(b) => {
                let $be: &Cuda = b;
                $body
            }
        }
    };
}

/// switchyard: a Mixture-of-Experts research engine (Switch Transformer; CPU reference backend and CUDA kernels).
#[derive(Parser)]
#[command(name = "switchyard", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a model; writes config.toml, metrics.jsonl, checkpoints and summary.json to --out.
    Train(TrainArgs),
    /// Evaluate a checkpoint on the validation split: loss, perplexity, router statistics.
    Eval(EvalArgs),
    /// Time training steps (forward + backward + AdamW) on random tokens: median step time and tokens/s.
    Bench(BenchArgs),
    /// The embedded CUDA kernels: registers, spills, shared memory and occupancy per kernel (from ptxas).
    Kernels {
        /// Print the table as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a full, commented TOML config to start from.
    Config {
        /// Preset to print (tiny, small, switch-base).
        #[arg(long, default_value = "tiny")]
        preset: String,
    },
}

#[derive(Args)]
struct DeviceArgs {
    /// Compute device: auto (the GPU when a driver, a device and embedded kernels are there and the
    /// model runs on it, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// CPU worker threads (0 = one per core). Results do not depend on it.
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

#[derive(Args)]
struct ConfigArgs {
    /// TOML config file (see `switchyard config`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Built-in preset: tiny (default), small, switch-base.
    #[arg(long)]
    preset: Option<String>,
    /// Override a config key, e.g. --set model.n_experts=16 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

impl ConfigArgs {
    /// The config from --config or --preset (else `fallback`, else tiny),
    /// with the --set overrides applied; not yet validated.
    fn load(&self, fallback: Option<&std::path::Path>) -> Result<Config> {
        let base = match (&self.config, &self.preset, fallback) {
            (Some(_), Some(_), _) => bail!("give either --config or --preset, not both"),
            (Some(path), None, _) => Config::from_file(path)?,
            (None, Some(p), _) => Config::preset(p)?,
            (None, None, Some(r)) => checkpoint::read_config(&checkpoint::resolve(r)?)?,
            (None, None, None) => Config::preset("tiny")?,
        };
        Ok(base.apply_overrides(&self.sets)?)
    }
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    cfg: ConfigArgs,
    /// Data source: a text file, a directory of text files, a .u16 token file, or "synthetic".
    #[arg(long)]
    data: Option<String>,
    /// Run directory (default: runs/<preset>-<UTC time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Resume from a run directory or checkpoint (its config is used unless --config/--preset is given).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
struct EvalArgs {
    /// Checkpoint directory or run directory (uses its latest checkpoint).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Evaluate on another data source (default: the one the model was trained on).
    #[arg(long)]
    data: Option<String>,
    /// Validation batches (default: the config's train.eval_batches).
    #[arg(long)]
    batches: Option<usize>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    cfg: ConfigArgs,
    /// Timed steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
}

fn cmd_bench(a: BenchArgs) -> Result<ExitCode> {
    let cfg = a.cfg.load(None)?;
    cfg.validate()?;
    if a.steps == 0 {
        bail!("--steps 0: time at least one step");
    }
    let dev = backend(&a.device, &cfg)?;
    let r = on_device!(&dev, |be| switchyard::train::bench::train_steps(be, &cfg, a.warmup, a.steps))?;
    println!(
        "{}: median step {:.2} ms (min {:.2}, max {:.2}) over {} steps, {:.0} tokens/s, {:.1} GFLOP/s of matmul-equivalent work ({} tokens/step, {})",
        r.label, r.median_ms, r.min_ms, r.max_ms, r.steps, r.tokens_per_s, r.gflops, r.tokens_per_step, r.device
    );
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&r)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Open the device `--device` names. `auto` takes the GPU when it is there and
/// can run `cfg` (else the CPU, with a one-line notice saying why); an explicit
/// `cuda` that cannot start is an error naming the missing piece.
fn backend(d: &DeviceArgs, cfg: &Config) -> Result<Device> {
    let cpu = || -> Result<Device> { Ok(Device::Cpu(Cpu::new(d.threads)?)) };
    match d.device.as_str() {
        "cpu" => cpu(),
        "auto" => {
            let why = match cuda::probe(0) {
                Err(e) => e.to_string(),
                Ok(()) => match Cuda::new(0) {
                    Err(e) => e.to_string(),
                    Ok(gpu) => match gpu.supports(cfg) {
                        Ok(()) => return Ok(Device::Cuda(Box::new(gpu))),
                        Err(e) => format!("the GPU cannot run this model: {e}"),
                    },
                },
            };
            let short = why.split(':').next().unwrap_or(&why).to_string();
            eprintln!("device auto: using the CPU ({short}; --device cuda says more)");
            cpu()
        }
        other => {
            let ordinal = match other.strip_prefix("cuda") {
                Some("") => 0,
                Some(n) => n
                    .strip_prefix(':')
                    .and_then(|n| n.parse().ok())
                    .with_context(|| format!("--device {other}: expected cuda or cuda:N with N a device number"))?,
                None => bail!("--device {other}: unknown device; use auto, cpu, cuda or cuda:N"),
            };
            let gpu = Cuda::new(ordinal).with_context(|| format!("--device {other}"))?;
            gpu.supports(cfg).with_context(|| format!("--device {other}"))?;
            Ok(Device::Cuda(Box::new(gpu)))
        }
    }
}

fn cmd_kernels(json: bool) -> Result<ExitCode> {
    use switchyard::backend::cuda::kernels;
    let Some(nvcc) = kernels::NVCC_VERSION else {
        bail!(
            "this binary has no embedded CUDA kernels (built without nvcc): run scripts/cuda-toolchain.sh and rebuild"
        );
    };
    let rows = kernels::parse_ptxas(kernels::PTXAS_REPORT);
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    use std::fmt::Write as _;
    let mut t = String::new();
    writeln!(t, "kernels compiled by nvcc {nvcc}; ptxas resources per kernel and architecture").unwrap();
    writeln!(t, "(occupancy: theoretical resident warps / 64 at the launchers' block size)").unwrap();
    writeln!(
        t,
        "{:<28} {:<7} {:>5} {:>6} {:>6} {:>6} {:>7} {:>6}",
        "kernel", "arch", "regs", "spill", "stack", "smem", "block", "occ"
    )
    .unwrap();
    for r in rows.iter().filter(|r| !r.arch.starts_with("compute")) {
        let block = cuda::block_size(&r.kernel);
        // Usable shared memory per SM: 164 KiB on sm_80, 227 KiB on sm_90.
        let smem_sm = if r.arch.starts_with("sm_90") { 227 * 1024 } else { 164 * 1024 };
        let occ = kernels::occupancy(r.registers, block, r.smem, smem_sm);
        writeln!(
            t,
            "{:<28} {:<7} {:>5} {:>6} {:>6} {:>6} {:>7} {:>5.0}%",
            r.kernel,
            r.arch,
            r.registers,
            r.spill_stores + r.spill_loads,
            r.stack,
            r.smem,
            block,
            100.0 * occ
        )
        .unwrap();
    }
    if let Err(e) = cuda::probe(0) {
        writeln!(t, "(no GPU here: {e})").unwrap();
    }
    // Ignore a closed pipe (`switchyard kernels | head`).
    let _ = std::io::Write::write_all(&mut std::io::stdout(), t.as_bytes());
    Ok(ExitCode::SUCCESS)
}

fn utc_stamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem / 60 % 60, rem % 60)
}

fn load_config(a: &TrainArgs) -> Result<Config> {
    let mut cfg = a.cfg.load(a.resume.as_deref())?;
    if let Some(d) = &a.data {
        cfg.data.source = d.clone();
    }
    cfg.validate()?;
    Ok(cfg)
}

fn cmd_train(a: TrainArgs) -> Result<ExitCode> {
    let cfg = load_config(&a)?;
    let out = match (&a.out, &a.resume) {
        (Some(o), _) => o.clone(),
        (None, Some(r)) => {
            let dir = checkpoint::resolve(r)?;
            dir.parent().map(PathBuf::from).context("checkpoint has no parent directory")?
        }
        (None, None) => {
            PathBuf::from("runs").join(format!("{}-{}", a.cfg.preset.as_deref().unwrap_or("tiny"), utc_stamp()))
        }
    };
    let data = Dataset::open(&cfg)?;
    let info = data.info().clone();
    drop(data);
    // After the config and data checks, so their errors come first and alone.
    let dev = backend(&a.device, &cfg)?;
    let table = switchyard::model::ParamTable::new(&cfg);
    let m = &cfg.model;
    eprintln!("switchyard train -> {}", out.display());
    eprintln!(
        "model: {} layers, d {}, {} heads, d_ff {}, {} ({} params, {} active per token)",
        m.n_layer,
        m.d_model,
        m.n_head,
        m.d_ff,
        if m.moe_every == 0 {
            "dense".to_string()
        } else {
            format!("MoE every {} layer(s), {} experts, top-{}", m.moe_every, m.n_experts, m.top_k)
        },
        human(table.numel()),
        human(table.active_numel(if m.moe_every == 0 { 1 } else { m.top_k }))
    );
    eprintln!("data: {}", info.description);
    match (info.loss_floor, info.unigram_entropy) {
        (Some(f), _) => eprintln!(
            "loss floor (exact, seq {}): {f:.4} nats/token; unigram entropy {:.4}; bigram entropy {:.4}",
            cfg.train.seq_len,
            info.unigram_entropy.unwrap_or(f64::NAN),
            info.bigram_entropy.unwrap_or(f64::NAN)
        ),
        (None, Some(u)) => {
            eprintln!("unigram entropy of the training split: {u:.4} nats/token (a model must beat this)")
        }
        (None, None) => {}
    }
    eprintln!(
        "device: {}; {} steps of {} x {} tokens x {} micro-batches",
        on_device!(&dev, |be| be.name()),
        cfg.train.steps,
        cfg.train.batch_size,
        cfg.train.seq_len,
        cfg.train.grad_accum
    );
    let opts =
        TrainOptions { out: out.clone(), resume: a.resume.clone(), progress: !a.quiet, max_steps_this_run: None };
    let s = on_device!(&dev, |be| train::train(be, &cfg, &opts))?;
    let mut line = format!("step {}: train loss {:.4} (ce {:.4})", s.steps, s.final_loss, s.final_ce);
    if let Some(v) = s.val_loss {
        line.push_str(&format!(", val loss {v:.4}"));
    }
    if let Some(f) = s.loss_floor {
        line.push_str(&format!(", floor {f:.4} (gap {:.4})", s.val_loss.unwrap_or(s.final_ce) - f));
    }
    eprintln!("{line}");
    eprintln!("{:.0} tokens/s over {:.1} s", s.tokens_per_s, s.wall_s);
    if let Some(c) = &s.checkpoint {
        eprintln!("checkpoint: {}", c.display());
    }
    if s.interrupted {
        eprintln!("interrupted; continue with: switchyard train --resume {}", out.display());
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}

fn human(n: usize) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

fn cmd_eval(a: EvalArgs) -> Result<ExitCode> {
    let dir = checkpoint::resolve(&a.checkpoint)?;
    let mut cfg = checkpoint::read_config(&dir)?;
    if let Some(d) = &a.data {
        cfg.data.source = d.clone();
    }
    cfg.validate()?;
    let batches = a.batches.unwrap_or(cfg.train.eval_batches);
    if batches == 0 {
        bail!("--batches 0: evaluate at least one batch");
    }
    let dev = backend(&a.device, &cfg)?;
    let ck = checkpoint::load(&dir, &cfg, false)?;
    let data = Dataset::open(&cfg)?;
    let mut rec = on_device!(&dev, |be| {
        let mut model = Model::new(be, &cfg)?;
        checkpoint::restore(be, &ck, &mut model, None);
        train::evaluate(be, &mut model, &data, batches)?
    });
    rec.step = ck.step;
    let info = data.info();
    if a.json {
        let mut v = serde_json::to_value(&rec)?;
        v["checkpoint"] = serde_json::json!(dir.display().to_string());
        v["loss_floor"] = serde_json::json!(info.loss_floor);
        v["unigram_entropy"] = serde_json::json!(info.unigram_entropy);
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("checkpoint: {} (step {})", dir.display(), ck.step);
    println!("data: {}", info.description);
    println!(
        "val loss {:.4}  perplexity {:.3}  ({} tokens, eval capacity factor {})",
        rec.val_loss, rec.val_ppl, rec.tokens, cfg.model.eval_capacity_factor
    );
    if let Some(f) = info.loss_floor {
        println!("loss floor {f:.4}  gap {:.4}", rec.val_loss - f);
    }
    for l in &rec.moe {
        let total: f32 = l.tokens_per_expert.iter().sum();
        let shares: Vec<String> =
            l.tokens_per_expert.iter().map(|c| format!("{:.1}", 100.0 * c / total.max(1.0))).collect();
        println!(
            "layer {:>2}: dropped {:.2}%  router entropy {:.3} nats  aux {:.4}  z {:.4}  tokens per expert (%): [{}]",
            l.layer,
            100.0 * l.dropped_frac,
            l.router_entropy,
            l.aux,
            l.z,
            shares.join(" ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

static PRESSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = ctrlc::set_handler(|| {
        eprintln!("\ninterrupt: saving a checkpoint after this step (press Ctrl-C again to force quit)");
        if PRESSED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(130);
        }
        train::request_stop();
    });
    let r = match cli.cmd {
        Cmd::Train(a) => cmd_train(a),
        Cmd::Eval(a) => cmd_eval(a),
        Cmd::Bench(a) => cmd_bench(a),
        Cmd::Kernels { json } => cmd_kernels(json),
        Cmd::Config { preset } => match Config::preset(&preset) {
            Ok(c) => {
                print!("{}", c.to_commented_toml());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Err(anyhow::anyhow!("{e} (presets: {})", PRESETS.join(", "))),
        },
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
