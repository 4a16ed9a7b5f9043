//! The `switchyard` command line: train, evaluate, and print configs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use switchyard::backend::cuda;
use switchyard::backend::Backend;
use switchyard::config::{Config, PRESETS};
use switchyard::data::Dataset;
use switchyard::device::Device;
use switchyard::model::Model;
use switchyard::on_device;
use switchyard::train::{self, checkpoint, TrainOptions};

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
    /// Generate text from a checkpoint: KV-cached, streamed for one prompt, batched JSONL for many.
    Generate(GenerateArgs),
    /// Time training steps (forward + backward + AdamW) on random tokens, or with --generate
    /// prefill and decode tokens/s.
    Bench(BenchArgs),
    /// Run an experiment sweep (experiments/*.toml): every point trained into its own run
    /// directory, resumable; writes results.jsonl, results.csv and plots.
    Sweep(SweepArgs),
    /// (Re)draw the plots of a run directory or a sweep directory (SVG and PNG, into DIR/plots).
    Plot {
        /// A run directory (has metrics.jsonl) or a sweep directory (has results.jsonl).
        dir: PathBuf,
    },
    /// The embedded CUDA kernels: registers, spills, shared memory and occupancy per kernel (from ptxas).
    Kernels {
        /// Print the table as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a full, commented TOML config to start from (a preset, or a config file with
    /// --set overrides), with the memory it needs.
    Config(ConfigArgs),
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
            (None, None, Some(r)) => match checkpoint::resolve_resume(r)? {
                checkpoint::ResumeFrom::Checkpoint(d) => checkpoint::read_config(&d)?,
                checkpoint::ResumeFrom::Restart(d) => Config::from_file(&d.join("config.toml"))?,
            },
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
    /// Tokenizer file to use instead of the checkpoint's (its data.tokenizer), e.g. after moving it.
    #[arg(long)]
    tokenizer: Option<String>,
    /// Validation batches (default: the config's train.eval_batches).
    #[arg(long)]
    batches: Option<usize>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Per-layer routing statistics: which experts the tokens of each synthetic
    /// domain reach (a domain x expert table), or for text the most frequent
    /// tokens per expert.
    #[arg(long)]
    stats: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
struct GenerateArgs {
    /// Checkpoint directory or run directory (uses its latest checkpoint).
    #[arg(long)]
    checkpoint: PathBuf,
    /// One prompt; the completion streams to stdout as it is produced. For models
    /// trained on the synthetic corpus, space-separated token ids, e.g. "3 17 22".
    #[arg(long, conflicts_with = "prompts", required_unless_present = "prompts")]
    prompt: Option<String>,
    /// A file with one prompt per line, generated together as one batch;
    /// writes one JSON line per prompt (to stdout, or --out).
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// New tokens per prompt (prompt + new tokens must fit model.max_seq_len).
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
    temperature: f64,
    /// Sample from the k most likely tokens only (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling: the smallest set of most likely tokens with probability >= p, in (0, 1].
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
    top_p: f64,
    /// Random seed; prompt i samples from stream (seed, i).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// MoE routing: dropless (default: a token's output never depends on the rest of the
    /// batch) or capacity (the config's eval capacity factor per call).
    #[arg(long, default_value = "dropless")]
    routing: String,
    /// Expert load of every step per MoE layer (stderr for one prompt, in the JSON for many).
    #[arg(long)]
    stats: bool,
    /// Write the JSON lines here instead of stdout (with --prompts).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Tokenizer file to use instead of the checkpoint's (its data.tokenizer), e.g. after moving it.
    #[arg(long)]
    tokenizer: Option<String>,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
struct SweepArgs {
    /// The sweep file, e.g. experiments/capacity.toml.
    file: PathBuf,
    /// Sweep directory (default: runs/sweeps/<name>); re-running continues it.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Data source for every point (a text file, directory, .u16 file or "synthetic").
    #[arg(long)]
    data: Option<String>,
    /// Override a config key for every point (repeatable; the axes still win).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Multiply every point's train.steps (and eval/checkpoint cadence): grow a CPU-sized sweep.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// List the points and exit.
    #[arg(long)]
    dry_run: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
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
    /// Time inference instead: prefill and KV-cached decode tokens/s per batch size.
    #[arg(long)]
    generate: bool,
    /// Time every op of the backend instead: one table of op, shape, time and TFLOP/s or GB/s
    /// against ceilings measured in the same run (a large copy, a large GEMM), plus a roofline plot.
    #[arg(long)]
    ops: bool,
    /// With --ops: only ops whose name contains this.
    #[arg(long)]
    op: Option<String>,
    /// With --ops: shape override, e.g. --shape tokens=4096 (tokens, d_model, d_ff, n_head, vocab,
    /// n_experts, top_k, seq; repeatable).
    #[arg(long = "shape", value_name = "KEY=VALUE")]
    shapes: Vec<String>,
    /// With --ops: timed repeats per op (median reported).
    #[arg(long, default_value_t = 10)]
    repeats: usize,
    /// With --ops: directory for the roofline plot (default runs/bench-ops-<UTC time>).
    #[arg(long)]
    plot_dir: Option<PathBuf>,
    /// Batch sizes of --generate (comma-separated).
    #[arg(long, default_value = "1,8,64", value_delimiter = ',')]
    batch_sizes: Vec<usize>,
    /// Prompt tokens per sequence for --generate.
    #[arg(long, default_value_t = 64)]
    prompt_len: usize,
    /// New tokens per sequence for --generate.
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    #[command(flatten)]
    device: DeviceArgs,
}

fn cmd_bench(a: BenchArgs) -> Result<ExitCode> {
    let cfg = a.cfg.load(None)?;
    cfg.validate()?;
    if a.steps == 0 {
        bail!("--steps 0: time at least one step");
    }
    if a.warmup.checked_add(a.steps).is_none() {
        bail!("--warmup {} plus --steps {} overflows; give realistic step counts", a.warmup, a.steps);
    }
    let dev = backend(&a.device, &cfg)?;
    if a.generate {
        return bench_generate(&dev, &cfg, &a);
    }
    if a.ops {
        return bench_ops(&dev, &a);
    }
    let need =
        on_device!(&dev, |be| switchyard::memory::require(be, &cfg, switchyard::memory::Purpose::Train, "training"))?;
    eprintln!("memory: about {}", need.describe());
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

/// Open the device `--device` names (see [`Device::open`]), printing the
/// notice of an `auto` that falls back to the CPU.
fn backend(d: &DeviceArgs, cfg: &Config) -> Result<Device> {
    let opened = Device::open(&d.device, d.threads, cfg)?;
    if let Some(notice) = &opened.notice {
        eprintln!("{notice}");
    }
    Ok(opened.device)
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
    writeln!(t, "(smem: static + the launchers' dynamic shared memory per block; occupancy: theoretical resident")
        .unwrap();
    writeln!(t, " warps / 64 at the launchers' block size)").unwrap();
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
        let smem = r.smem + cuda::dynamic_smem(&r.kernel);
        let occ = kernels::occupancy(r.registers, block, smem, smem_sm);
        writeln!(
            t,
            "{:<28} {:<7} {:>5} {:>6} {:>6} {:>6} {:>7} {:>5.0}%",
            r.kernel,
            r.arch,
            r.registers,
            r.spill_stores + r.spill_loads,
            r.stack,
            smem,
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
    cfg.data.resolve_paths();
    cfg.validate()?;
    Ok(cfg)
}

fn cmd_train(a: TrainArgs) -> Result<ExitCode> {
    let cfg = load_config(&a)?;
    let resume = a.resume.as_deref().map(checkpoint::resolve_resume).transpose()?;
    let out = match (&a.out, &resume) {
        (Some(o), _) => o.clone(),
        (None, Some(checkpoint::ResumeFrom::Checkpoint(dir))) => {
            dir.parent().map(PathBuf::from).context("checkpoint has no parent directory")?
        }
        (None, Some(checkpoint::ResumeFrom::Restart(dir))) => dir.clone(),
        (None, None) => {
            PathBuf::from("runs").join(format!("{}-{}", a.cfg.preset.as_deref().unwrap_or("tiny"), utc_stamp()))
        }
    };
    let opts =
        TrainOptions { out: out.clone(), resume: a.resume.clone(), progress: !a.quiet, max_steps_this_run: None };
    train::check_resume(&cfg, &opts)?;
    let data = Dataset::open(&cfg)?;
    let info = data.info().clone();
    drop(data);
    // After the config and data checks, so their errors come first and alone.
    let dev = backend(&a.device, &cfg)?;
    let need =
        on_device!(&dev, |be| switchyard::memory::require(be, &cfg, switchyard::memory::Purpose::Train, "training"))?;
    let m = &cfg.model;
    eprintln!("switchyard train -> {}", out.display());
    if let Some(checkpoint::ResumeFrom::Restart(dir)) = resume.as_ref().filter(|_| a.out.is_none()) {
        eprintln!(
            "{} has no checkpoint yet (the run stopped before its first one): starting it over from step 0",
            dir.display()
        );
    }
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
        human(need.params as usize),
        human(switchyard::memory::active_param_count(&cfg)? as usize)
    );
    eprintln!("memory: about {}", need.describe());
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

/// Where a missing data or tokenizer path of a checkpoint's config can be
/// given instead.
fn paths_hint(data: bool, tokenizer: bool) -> &'static str {
    match (data, tokenizer) {
        (false, false) => "the paths are the checkpoint's; --data PATH and --tokenizer PATH give others",
        (false, true) => "the data path is the checkpoint's; --data PATH gives another",
        (true, false) => "the tokenizer path is the checkpoint's; --tokenizer PATH gives another",
        (true, true) => "",
    }
}

fn cmd_eval(a: EvalArgs) -> Result<ExitCode> {
    let dir = checkpoint::resolve(&a.checkpoint)?;
    let mut cfg = checkpoint::read_config(&dir)?;
    if let Some(d) = &a.data {
        cfg.data.source = d.clone();
    }
    if let Some(t) = &a.tokenizer {
        cfg.data.tokenizer = t.clone();
    }
    cfg.data.resolve_paths();
    cfg.validate()?;
    let batches = a.batches.unwrap_or(cfg.train.eval_batches);
    if batches == 0 {
        bail!("--batches 0: evaluate at least one batch");
    }
    let data = Dataset::open(&cfg).with_context(|| paths_hint(a.data.is_some(), a.tokenizer.is_some()))?;
    let dev = backend(&a.device, &cfg)?;
    on_device!(&dev, |be| switchyard::memory::require(be, &cfg, switchyard::memory::Purpose::Eval, "evaluation"))?;
    let (mut rec, routing, step) = on_device!(&dev, |be| {
        let mut model = Model::new(be, &cfg)?;
        let ck = checkpoint::restore_from(be, &dir, &cfg, &mut model, None)?;
        let rec = train::evaluate(be, &mut model, &data, batches)?;
        let routing = if a.stats { train::routing::routing_stats(be, &mut model, &data, batches)? } else { Vec::new() };
        (rec, routing, ck.step)
    });
    rec.step = step;
    let info = data.info();
    if a.json {
        let mut v = serde_json::to_value(&rec)?;
        v["checkpoint"] = serde_json::json!(dir.display().to_string());
        v["loss_floor"] = serde_json::json!(info.loss_floor);
        v["unigram_entropy"] = serde_json::json!(info.unigram_entropy);
        if a.stats {
            v["routing"] = serde_json::to_value(&routing)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("checkpoint: {} (step {step})", dir.display());
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
    if a.stats {
        print_routing(&routing, &data, cfg.model.moe_every == 0);
    }
    Ok(ExitCode::SUCCESS)
}

/// The `eval --stats` tables.
fn print_routing(routing: &[switchyard::train::routing::LayerRouting], data: &Dataset, dense: bool) {
    if dense {
        println!("routing: this is a dense model (model.moe_every = 0); there are no experts to report");
        return;
    }
    for l in routing {
        let total: u64 = l.per_expert.iter().sum();
        if !l.by_domain.is_empty() {
            println!(
                "layer {:>2}: share of each domain's kept assignments per expert (%), and its top expert",
                l.layer
            );
            let head: Vec<String> = (0..l.per_expert.len()).map(|e| format!("{:>5}", format!("e{e}"))).collect();
            println!("  domain {}  top", head.join(""));
            for (dm, row) in l.by_domain.iter().enumerate() {
                let n: u64 = row.iter().sum::<u64>().max(1);
                let cells: Vec<String> = row.iter().map(|&c| format!("{:>5.1}", 100.0 * c as f64 / n as f64)).collect();
                let (top, &c) = row.iter().enumerate().max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i))).unwrap();
                println!("  {dm:>6} {}  e{top} ({:.0}%)", cells.join(""), 100.0 * c as f64 / n as f64);
            }
        } else {
            println!("layer {:>2}: most frequent tokens per expert (share of the expert's assignments)", l.layer);
            for (e, top) in l.top_tokens.iter().enumerate() {
                let n = l.per_expert[e].max(1) as f64;
                let toks: Vec<String> = top
                    .iter()
                    .map(|&(t, c)| format!("{:?} {:.0}%", data.tokenizer().decode(&[t]), 100.0 * c as f64 / n))
                    .collect();
                println!(
                    "  e{e:<3} {:>5.1}% of tokens: {}",
                    100.0 * l.per_expert[e] as f64 / total.max(1) as f64,
                    toks.join(", ")
                );
            }
        }
    }
}

/// Prompt text <-> token ids for a model: space-separated ids for the
/// synthetic corpus (its tokens have no text), else the data's tokenizer.
enum PromptCodec {
    Ids { vocab: usize },
    Text(switchyard::data::Tokenizer),
}

impl PromptCodec {
    fn for_config(cfg: &Config, given: bool) -> Result<PromptCodec> {
        if cfg.data.source == "synthetic" {
            return Ok(PromptCodec::Ids { vocab: cfg.model.vocab_size });
        }
        let t = switchyard::data::Tokenizer::from_spec(&cfg.data.tokenizer).with_context(|| {
            if given {
                "--tokenizer".to_string()
            } else {
                "the checkpoint's tokenizer (data.tokenizer); --tokenizer PATH gives another".to_string()
            }
        })?;
        if let switchyard::data::Tokenizer::Hf(_) = t {
            let tv = t.vocab_size();
            if tv > cfg.model.vocab_size {
                bail!(
                    "tokenizer {} has {tv} ids but the model's vocabulary (model.vocab_size) is {}: it is not the \
                     tokenizer the model was trained with; give that one with --tokenizer PATH",
                    cfg.data.tokenizer,
                    cfg.model.vocab_size
                );
            }
        }
        Ok(PromptCodec::Text(t))
    }

    fn encode(&self, text: &str, what: &str) -> Result<Vec<u32>> {
        match self {
            PromptCodec::Ids { vocab } => text
                .split_whitespace()
                .map(|w| match w.parse::<u32>() {
                    Ok(id) if (id as usize) < *vocab => Ok(id),
                    _ => bail!(
                        "{what}: {w:?} is not a token id below {vocab}; this model was trained on the synthetic \
                         corpus, whose tokens are ids: give the prompt as space-separated ids, e.g. \"3 17 22\""
                    ),
                })
                .collect(),
            PromptCodec::Text(t) => Ok(t.encode(text).with_context(|| format!("{what}: cannot encode"))?),
        }
    }

    fn decode(&self, ids: &[u32]) -> String {
        match self {
            PromptCodec::Ids { .. } => ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" "),
            PromptCodec::Text(t) => t.decode(ids),
        }
    }
}

fn parse_routing(s: &str, cfg: &Config) -> Result<switchyard::infer::Routing> {
    use switchyard::infer::Routing;
    match s {
        "dropless" => Ok(Routing::Dropless),
        "capacity" => Ok(Routing::Capacity(cfg.model.eval_capacity_factor)),
        other => bail!("--routing {other}: use dropless or capacity"),
    }
}

fn cmd_generate(a: GenerateArgs) -> Result<ExitCode> {
    use std::io::Write as _;
    use switchyard::infer::generate::{generate, GenOptions};
    use switchyard::infer::sample::Sampler;
    let dir = checkpoint::resolve(&a.checkpoint)?;
    let mut cfg = checkpoint::read_config(&dir)?;
    if let Some(t) = &a.tokenizer {
        cfg.data.tokenizer = t.clone();
        cfg.data.resolve_paths();
    }
    let sampler = Sampler { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p };
    sampler.validate()?;
    let codec = PromptCodec::for_config(&cfg, a.tokenizer.is_some())?;
    let texts: Vec<String> = match (&a.prompt, &a.prompts) {
        (Some(p), _) => vec![p.clone()],
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --prompts {} (one prompt per line)", path.display()))?;
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            if let Some(i) = lines.iter().position(|l| l.trim().is_empty()) {
                bail!("--prompts {}: line {} is empty; give one non-empty prompt per line", path.display(), i + 1);
            }
            lines
        }
        (None, None) => bail!("give --prompt TEXT or --prompts FILE"),
    };
    let prompts: Vec<Vec<u32>> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| codec.encode(t, &if texts.len() == 1 { "--prompt".to_string() } else { format!("prompt {i}") }))
        .collect::<Result<_>>()?;
    let opts = GenOptions {
        max_new_tokens: a.max_new_tokens,
        sampler,
        seed: a.seed,
        routing: parse_routing(&a.routing, &cfg)?,
        stats: a.stats,
    };
    switchyard::infer::generate::check_lengths(&prompts, opts.max_new_tokens, cfg.model.max_seq_len)?;
    let dev = backend(&a.device, &cfg)?;
    let purpose = switchyard::memory::Purpose::Generate {
        sequences: prompts.len(),
        max_prompt: prompts.iter().map(Vec::len).max().unwrap_or(0),
    };
    on_device!(&dev, |be| switchyard::memory::require(be, &cfg, purpose, "generation"))?;
    let single = prompts.len() == 1 && a.prompts.is_none();
    // Streaming: print the decoded text's new suffix as tokens arrive (holding
    // back a trailing partial UTF-8 character).
    let mut ids: Vec<u32> = Vec::new();
    let mut printed = String::new();
    let mut stream = |_: usize, tok: u32| {
        if !single {
            return;
        }
        ids.push(tok);
        let text = codec.decode(&ids);
        if text.starts_with(&printed) && !text.ends_with(char::REPLACEMENT_CHARACTER) {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "{}", &text[printed.len()..]);
            let _ = out.flush();
            printed = text;
        }
    };
    let result = on_device!(&dev, |be| {
        let mut model = Model::new(be, &cfg)?;
        checkpoint::restore_from(be, &dir, &cfg, &mut model, None)?;
        generate(be, &model, &prompts, &opts, &mut stream).map(|g| (g, be.name()))
    });
    let (gen, device) = match result {
        Ok(r) => r,
        Err(e) => {
            // End the streamed text's line, so the error gets its own.
            if !printed.is_empty() {
                println!();
            }
            return Err(e.into());
        }
    };
    if single {
        let text = codec.decode(&gen.tokens[0]);
        let rest = text.strip_prefix(printed.as_str()).unwrap_or("");
        println!("{rest}");
    } else {
        let mut sink: Box<dyn std::io::Write> = match &a.out {
            Some(p) => {
                Box::new(std::fs::File::create(p).with_context(|| format!("cannot create --out {}", p.display()))?)
            }
            None => Box::new(std::io::stdout().lock()),
        };
        for (i, toks) in gen.tokens.iter().enumerate() {
            let mut v = serde_json::json!({
                "index": i,
                "prompt": texts[i],
                "completion": codec.decode(toks),
                "prompt_tokens": prompts[i].len(),
                "tokens": toks,
            });
            if a.stats {
                v["prefill_expert_load"] = serde_json::to_value(&gen.prefill_load[i])?;
            }
            writeln!(sink, "{v}")?;
        }
        if a.stats {
            writeln!(sink, "{}", serde_json::json!({ "decode_expert_load": gen.step_load }))?;
        }
    }
    if a.stats && single {
        for (step, load) in gen.step_load.iter().enumerate() {
            let layers: Vec<String> = load
                .iter()
                .map(|l| {
                    let used: Vec<String> =
                        l.kept.iter().enumerate().filter(|(_, &c)| c > 0.0).map(|(e, _)| format!("e{e}")).collect();
                    format!("layer {}: {}", l.layer, used.join(" "))
                })
                .collect();
            eprintln!("step {:>3}: {}", step + 2, layers.join("; "));
        }
    }
    eprintln!(
        "{} prompt(s) on {device}: prefill {} tokens at {:.0} tokens/s; decode {} tokens at {:.0} tokens/s \
         (batch {}); KV cache {:.1} MiB",
        prompts.len(),
        gen.prefill_tokens,
        gen.prefill_tokens_per_s(),
        gen.decode_tokens,
        gen.decode_tokens_per_s(),
        prompts.len(),
        gen.kv_cache_bytes as f64 / (1024.0 * 1024.0)
    );
    Ok(ExitCode::SUCCESS)
}

/// `bench --generate`: prefill and decode throughput of a freshly initialized
/// model per batch size (speed does not depend on the weights).
fn bench_generate(dev: &Device, cfg: &Config, a: &BenchArgs) -> Result<ExitCode> {
    use switchyard::infer::generate::{generate, GenOptions};
    use switchyard::infer::sample::Sampler;
    if a.batch_sizes.is_empty() || a.batch_sizes.contains(&0) {
        bail!("--batch-sizes: give positive sizes, e.g. 1,8,64");
    }
    let mut rows = Vec::new();
    println!(
        "{:>6} {:>8} {:>8} {:>14} {:>14} {:>10}",
        "batch", "prompt", "new", "prefill tok/s", "decode tok/s", "KV MiB"
    );
    for &b in &a.batch_sizes {
        let purpose = switchyard::memory::Purpose::Generate { sequences: b, max_prompt: a.prompt_len };
        on_device!(dev, |be| switchyard::memory::require(be, cfg, purpose, &format!("--batch-sizes {b}")))?;
        let v = cfg.model.vocab_size as u32;
        let prompts: Vec<Vec<u32>> =
            (0..b).map(|i| (0..a.prompt_len).map(|j| ((i * 131 + j * 7) as u32) % v).collect()).collect();
        let opts = GenOptions {
            max_new_tokens: a.new_tokens,
            sampler: Sampler { temperature: 0.0, ..Sampler::default() },
            ..GenOptions::default()
        };
        let (g, device) = on_device!(dev, |be| {
            let model = Model::new(be, cfg)?;
            (generate(be, &model, &prompts, &opts, &mut |_, _| {})?, be.name())
        });
        println!(
            "{:>6} {:>8} {:>8} {:>14.0} {:>14.0} {:>10.1}",
            b,
            a.prompt_len,
            a.new_tokens,
            g.prefill_tokens_per_s(),
            g.decode_tokens_per_s(),
            g.kv_cache_bytes as f64 / (1024.0 * 1024.0)
        );
        rows.push(serde_json::json!({
            "batch": b, "prompt_len": a.prompt_len, "new_tokens": a.new_tokens,
            "prefill_tokens_per_s": g.prefill_tokens_per_s(), "decode_tokens_per_s": g.decode_tokens_per_s(),
            "kv_cache_bytes": g.kv_cache_bytes, "device": device,
        }));
    }
    if let Some(path) = &a.json {
        let doc = serde_json::json!({ "commit": switchyard::GIT_COMMIT, "results": rows });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `bench --ops`: the per-op table against the ceilings of this run.
fn bench_ops(dev: &Device, a: &BenchArgs) -> Result<ExitCode> {
    use switchyard::opbench::{self, Shapes};
    let mut shapes = Shapes::default();
    for kv in &a.shapes {
        shapes.apply(kv)?;
    }
    shapes.validate()?;
    on_device!(dev, |be| switchyard::memory::check(
        &shapes.memory()?,
        be.available_memory(),
        "bench --ops",
        &be.name()
    ))?;
    if a.repeats == 0 {
        bail!("--repeats 0: time each op at least once");
    }
    let bar = indicatif::ProgressBar::new_spinner();
    let report = on_device!(dev, |be| opbench::run(be, &shapes, a.repeats, a.op.as_deref(), &mut |op: &str| {
        bar.set_message(format!("timing {op}"));
        bar.tick();
    })?);
    bar.finish_and_clear();
    print!("{}", opbench::print_table(&report));
    let dir = a.plot_dir.clone().unwrap_or_else(|| PathBuf::from("runs").join(format!("bench-ops-{}", utc_stamp())));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = a.json.clone().unwrap_or_else(|| dir.join("bench-ops.json"));
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    let points: Vec<switchyard::plot::RooflinePoint> = report
        .results
        .iter()
        .filter(|r| r.intensity.is_finite() && r.intensity > 0.0 && r.flops > 0.0)
        .map(|r| switchyard::plot::RooflinePoint {
            name: r.op.clone(),
            intensity: r.intensity,
            achieved: r.flops / (r.median_ms / 1e3),
        })
        .collect();
    let files = switchyard::plot::roofline(
        &dir.join("roofline"),
        &format!("roofline on {}", report.device),
        report.ceilings.gemm_flops,
        report.ceilings.copy_bytes_per_s,
        &points,
    )?;
    eprintln!(
        "wrote {} and {}",
        json.display(),
        files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

fn cmd_plot(dir: &std::path::Path) -> Result<ExitCode> {
    if !dir.is_dir() {
        bail!("{} is not a directory; give a run directory or a sweep directory", dir.display());
    }
    let files = if dir.join("results.jsonl").exists() {
        let mut files = switchyard::plot::plot_sweep(dir)?;
        // Each point's own plots too.
        let text = std::fs::read_to_string(dir.join("results.jsonl"))?;
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            if let Some(run) = v["run_dir"].as_str() {
                match switchyard::plot::plot_run(std::path::Path::new(run)) {
                    Ok(f) => files.extend(f),
                    Err(e) => eprintln!("warning: {run}: {e}"),
                }
            }
        }
        files
    } else {
        switchyard::plot::plot_run(dir)?
    };
    for f in &files {
        println!("{}", f.display());
    }
    Ok(ExitCode::SUCCESS)
}

struct SweepBar {
    bar: indicatif::ProgressBar,
}

impl switchyard::sweep::Progress for SweepBar {
    fn point(&mut self, p: &switchyard::sweep::Point, skipped: bool) {
        self.bar.set_message(format!("{}{}", p.label, if skipped { " (done before)" } else { "" }));
    }
    fn done(&mut self, p: &switchyard::sweep::Point, r: &switchyard::sweep::ResultRow) {
        let mut line = format!("{:>2} {:<40} ", p.index, p.label);
        match r.val_loss {
            Some(v) => line.push_str(&format!("val {v:.4}")),
            None => line.push_str(&format!("loss {:.4}", r.final_loss)),
        }
        if let Some(g) = r.gap {
            line.push_str(&format!("  gap {g:.4}"));
        }
        if let Some(d) = r.dropped_frac {
            line.push_str(&format!("  dropped {:.2}%", 100.0 * d));
        }
        line.push_str(&format!("  {:.0} s", r.wall_s));
        self.bar.println(line);
        self.bar.inc(1);
    }
    fn failed(&mut self, p: &switchyard::sweep::Point, error: &str) {
        self.bar.println(format!("{:>2} {:<40} FAILED: {error}", p.index, p.label));
        self.bar.inc(1);
    }
}

fn cmd_sweep(a: SweepArgs) -> Result<ExitCode> {
    use switchyard::sweep::{self, Sweep};
    let s = Sweep::load(&a.file, &a.sets, a.data.as_deref(), a.scale)?;
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from("runs").join("sweeps").join(&s.name));
    if a.dry_run {
        println!("sweep {} ({} points) -> {}", s.name, s.points.len(), out.display());
        for p in &s.points {
            let m = &p.cfg.model;
            println!(
                "{:>2} {:<44} {} steps, {}",
                p.index,
                p.label,
                p.cfg.train.steps,
                if m.moe_every == 0 { "dense".into() } else { format!("E {} top-{}", m.n_experts, m.top_k) }
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    // auto picks the GPU only if it can run every point.
    let probe = s.points.iter().find(|p| p.cfg.model.moe_every > 0).unwrap_or(&s.points[0]);
    let dev = backend(&a.device, &probe.cfg)?;
    eprintln!("sweep {}: {} points -> {}", s.name, s.points.len(), out.display());
    if !s.description.is_empty() {
        eprintln!("{}", s.description);
    }
    let bar =
        if a.quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(s.points.len() as u64) };
    bar.set_style(
        indicatif::ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} points  {msg}")
            .expect("valid template"),
    );
    let mut progress = SweepBar { bar };
    let t0 = std::time::Instant::now();
    let outcome = on_device!(&dev, |be| sweep::run(be, &s, &out, &mut progress)?);
    progress.bar.finish_and_clear();
    if outcome.interrupted {
        eprintln!(
            "interrupted after {} of {} points; re-run the same command to continue",
            outcome.rows.len() + outcome.failures.len(),
            s.points.len()
        );
        return Ok(ExitCode::from(130));
    }
    match switchyard::plot::plot_sweep(&out) {
        Ok(files) => eprintln!("plots: {}", files.iter().filter(|f| f.extension().is_some_and(|x| x == "png")).count()),
        Err(e) => eprintln!("warning: could not plot the sweep: {e}"),
    }
    eprintln!(
        "done in {:.0} s: {} and {}",
        t0.elapsed().as_secs_f64(),
        out.join("results.jsonl").display(),
        out.join("results.csv").display()
    );
    if !outcome.failures.is_empty() {
        let names: Vec<String> = outcome.failures.iter().map(|f| format!("{} {}", f.index, f.label)).collect();
        bail!(
            "{} of {} points failed ({}); their errors are in {} (status \"failed\"); re-running the same command \
             retries only the failed and unfinished points",
            outcome.failures.len(),
            s.points.len(),
            names.join("; "),
            out.join("results.jsonl").display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

static PRESSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.cmd, Cmd::Train(_) | Cmd::Sweep(_)) {
        // Training stops cleanly: finish the step, save a checkpoint.
        let _ = ctrlc::set_handler(|| {
            eprintln!("\ninterrupt: saving a checkpoint after this step (press Ctrl-C again to force quit)");
            if PRESSED.swap(true, std::sync::atomic::Ordering::SeqCst) {
                std::process::exit(130);
            }
            train::request_stop();
        });
    } else {
        // Everything else has nothing to save: stop at once.
        let _ = ctrlc::set_handler(|| {
            eprintln!("\ninterrupted");
            std::process::exit(130);
        });
    }
    let r = match cli.cmd {
        Cmd::Train(a) => cmd_train(a),
        Cmd::Eval(a) => cmd_eval(a),
        Cmd::Generate(a) => cmd_generate(a),
        Cmd::Bench(a) => cmd_bench(a),
        Cmd::Kernels { json } => cmd_kernels(json),
        Cmd::Sweep(a) => cmd_sweep(a),
        Cmd::Plot { dir } => cmd_plot(&dir),
        Cmd::Config(a) => cmd_config(&a),
    };
    match r {
        Ok(code) => code,
        Err(e) => match e.downcast_ref::<switchyard::Error>() {
            // Nothing to do is not a failure (a job scheduler re-running
            // `train --resume` on a finished run must not loop on it).
            Some(switchyard::Error::Complete(msg)) => {
                eprintln!("{msg}");
                ExitCode::SUCCESS
            }
            _ => {
                eprintln!("error: {}", one_line(&format!("{e:#}")));
                ExitCode::from(1)
            }
        },
    }
}

/// An error message on one line (causes joined by `: `, newlines folded).
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `switchyard config`: the commented TOML, preceded by the memory it needs.
fn cmd_config(a: &ConfigArgs) -> Result<ExitCode> {
    let cfg = a.load(None).map_err(|e| match (&a.preset, &a.config) {
        (Some(_), None) => anyhow::anyhow!("{e} (presets: {})", PRESETS.join(", ")),
        _ => e,
    })?;
    cfg.validate()?;
    print!("{}", memory_comment(&cfg)?);
    print!("{}", cfg.to_commented_toml());
    Ok(ExitCode::SUCCESS)
}

/// The memory estimate of a config as TOML comment lines.
fn memory_comment(cfg: &Config) -> Result<String> {
    use switchyard::memory::{estimate, human_bytes, Purpose};
    let train = estimate(cfg, Purpose::Train)?;
    let eval = estimate(cfg, Purpose::Eval)?;
    let mut out = format!(
        "# memory (CPU, f32; the GPU adds bf16 copies): {} parameters\n#   training:   {}\n#   evaluation: {}\n",
        human(train.params as usize),
        train.describe(),
        eval.describe()
    );
    if let Some(avail) = switchyard::memory::host_available() {
        out.push_str(&format!("#   this machine has {} available ({})\n", human_bytes(avail.bytes), avail.source));
    }
    Ok(out)
}
