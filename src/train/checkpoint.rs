//! Checkpoints (DESIGN.md §7): a directory `ckpt-NNNNNN/` holding
//!
//! - `model.safetensors`: every parameter under its DESIGN.md name, f32,
//!   linear weights `[in, out]`; metadata `config` (the run config as JSON),
//!   `step`, `format = "switchyard-v2"`, `checksum`.
//! - `optimizer.safetensors`: `exp_avg.<name>` and `exp_avg_sq.<name>`;
//!   metadata `format`, `step`, `rng` (JSON), `checksum`.
//!
//! All randomness in a run is counter-based (data order and router jitter are
//! pure functions of `train.seed`, the step and the micro-batch), so the RNG
//! state is `{seed, next_step}`, stored for completeness and checked on load.
//!
//! Writes are atomic: both files go to `ckpt-NNNNNN.tmp/`, are fsynced, the
//! directory is renamed into place and fsynced, and only then is the run's
//! `latest` pointer replaced (write + fsync + rename). A crash at any moment
//! leaves the previous checkpoint intact; a failed write (a full disk)
//! removes its partial directory and names the cause.
//!
//! Each file carries an FNV-1a checksum over everything it holds: every
//! metadata entry (config, step, RNG state, format) and every tensor's name,
//! dtype, shape and bytes. A truncated or corrupted file, header included,
//! is reported, never loaded. (`switchyard-v1` files, whose checksum covers
//! the tensor bytes only, still load.)
//!
//! Checkpoint directories are ordered by their step number, not by name, so
//! `ckpt-1000000` is newer than `ckpt-999999`.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::config::Config;
use crate::model::{Model, ParamTable};
use crate::train::optimizer::Optimizer;
use crate::{Error, Result};

/// Format tag written into every checkpoint.
pub const FORMAT: &str = "switchyard-v2";
/// The earlier format (checksum over tensor bytes only), still readable.
const FORMAT_V1: &str = "switchyard-v1";
/// Name of the pointer file in a run directory.
pub const LATEST: &str = "latest";

/// The RNG state of a run (all streams are counter-based).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// `train.seed`.
    pub seed: u64,
    /// The next optimizer step to run.
    pub next_step: u64,
}

/// AdamW moments `(exp_avg, exp_avg_sq)` per tensor, table order.
pub type Moments = (Vec<Vec<f32>>, Vec<Vec<f32>>);

/// Host copy of a checkpoint.
pub struct Checkpoint {
    /// The directory it was read from.
    pub dir: PathBuf,
    /// Run configuration stored with it.
    pub config: Config,
    /// Completed optimizer steps.
    pub step: u64,
    /// Parameter values, table order.
    pub params: Vec<Vec<f32>>,
    /// Optimizer moments, table order (absent for weights-only loads).
    pub moments: Option<Moments>,
    /// RNG state.
    pub rng: Option<RngState>,
}

/// FNV-1a, 64 bit, over a sequence of byte strings. Any single changed byte
/// changes the result (each step is a bijection of the state).
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn eat(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    /// A length-prefixed field, so field boundaries cannot shift.
    fn field(&mut self, bytes: &[u8]) {
        self.eat(&(bytes.len() as u64).to_le_bytes());
        self.eat(bytes);
    }
    fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// The v2 checksum, built incrementally: every metadata entry but
/// `checksum` (sorted by key), then every tensor (in name order) as name,
/// dtype, shape and bytes.
struct ChecksumV2(Fnv);

impl ChecksumV2 {
    fn new(meta: &HashMap<String, String>, n_tensors: usize) -> ChecksumV2 {
        let mut h = Fnv::new();
        let mut keys: Vec<&String> = meta.keys().filter(|k| k.as_str() != "checksum").collect();
        keys.sort();
        h.field(&(keys.len() as u64).to_le_bytes());
        for k in keys {
            h.field(k.as_bytes());
            h.field(meta[k].as_bytes());
        }
        h.field(&(n_tensors as u64).to_le_bytes());
        ChecksumV2(h)
    }

    /// The next tensor (callers go in name order).
    fn tensor(&mut self, name: &str, dtype: Dtype, shape: &[usize], data: &[u8]) {
        self.0.field(name.as_bytes());
        self.0.field(format!("{dtype:?}").as_bytes());
        let dims: Vec<u8> = shape.iter().flat_map(|&d| (d as u64).to_le_bytes()).collect();
        self.0.field(&dims);
        self.0.field(data);
    }
}

/// The v1 checksum: tensor bytes only, sorted by name.
fn checksum_v1(chunks: &[&[u8]]) -> String {
    let mut h = Fnv::new();
    for c in chunks {
        h.eat(c);
    }
    h.hex()
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    fs::File::open(path).and_then(|f| f.sync_all())
}

/// A safetensors header: `__metadata__` and every tensor's dtype, shape and
/// byte range, padded with spaces to a multiple of 8 bytes.
fn header(meta: &HashMap<String, String>, tensors: &[(String, Vec<usize>, u64, u64)]) -> Vec<u8> {
    let mut root = serde_json::Map::new();
    let sorted: std::collections::BTreeMap<&String, &String> = meta.iter().collect();
    root.insert("__metadata__".into(), serde_json::json!(sorted));
    for (name, shape, start, end) in tensors {
        root.insert(name.clone(), serde_json::json!({ "dtype": "F32", "shape": shape, "data_offsets": [start, end] }));
    }
    let mut bytes = serde_json::Value::Object(root).to_string().into_bytes();
    bytes.resize(bytes.len().next_multiple_of(8), b' ');
    bytes
}

/// Write a safetensors file of f32 tensors, streamed: each tensor is
/// downloaded and written in turn (name order), so the host holds one tensor
/// at a time, not the whole file. The header goes first with a placeholder
/// checksum of the same length and is rewritten once the data is hashed.
/// Fsynced.
fn write_streamed<B: Backend>(
    be: &B,
    path: &Path,
    mut meta: HashMap<String, String>,
    mut tensors: Vec<(String, Vec<usize>, &B::Buf)>,
) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    meta.insert("format".into(), FORMAT.into());
    meta.insert("checksum".into(), "0".repeat(16));
    let mut offset = 0u64;
    let layout: Vec<(String, Vec<usize>, u64, u64)> = tensors
        .iter()
        .map(|(name, shape, _)| {
            let start = offset;
            offset += shape.iter().product::<usize>() as u64 * 4;
            (name.clone(), shape.clone(), start, offset)
        })
        .collect();
    let placeholder = header(&meta, &layout);
    let mut sum = ChecksumV2::new(&meta, tensors.len());
    let mut f = std::io::BufWriter::new(fs::File::create(path)?);
    f.write_all(&(placeholder.len() as u64).to_le_bytes())?;
    f.write_all(&placeholder)?;
    for (name, shape, buf) in &tensors {
        let bytes: Vec<u8> = be.download(buf).iter().flat_map(|x| x.to_le_bytes()).collect();
        sum.tensor(name, Dtype::F32, shape, &bytes);
        f.write_all(&bytes)?;
    }
    meta.insert("checksum".into(), sum.0.hex());
    let real = header(&meta, &layout);
    debug_assert_eq!(real.len(), placeholder.len(), "the checksum has a fixed width");
    let mut f = f.into_inner().map_err(|e| e.into_error())?;
    f.seek(SeekFrom::Start(8))?;
    f.write_all(&real)?;
    f.sync_all()
}

/// The directory name of the checkpoint after `step` steps.
pub fn dir_name(step: u64) -> String {
    format!("ckpt-{step:06}")
}

/// The step of a checkpoint directory name (`ckpt-` and digits), any width.
pub fn step_of(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("ckpt-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Write a checkpoint of `model` (and `opt`) after `step` completed steps
/// into `run_dir/ckpt-{step:06}`, atomically, then point `latest` at it and
/// delete checkpoints beyond the newest `keep` (by step). If a write fails
/// (a full disk), the partial checkpoint is removed, the previous one stays
/// intact and the error names the cause.
pub fn save<B: Backend>(
    be: &B,
    run_dir: &Path,
    model: &Model<B>,
    opt: &Optimizer<B>,
    step: u64,
    keep: usize,
) -> Result<PathBuf> {
    let name = dir_name(step);
    let final_dir = run_dir.join(&name);
    let tmp_dir = run_dir.join(format!("{name}.tmp"));
    let config_json = serde_json::to_string(&model.cfg)
        .map_err(|e| Error::Checkpoint(format!("cannot encode the run config: {e}")))?;
    let rng = RngState { seed: model.cfg.train.seed, next_step: step };
    let rng_json = serde_json::to_string(&rng).map_err(|e| Error::Checkpoint(format!("cannot encode {rng:?}: {e}")))?;
    let specs = &model.table.specs;
    let written = (|| -> std::io::Result<()> {
        if tmp_dir.exists() {
            fs::remove_dir_all(&tmp_dir)?;
        }
        fs::create_dir_all(&tmp_dir)?;
        let weights = specs.iter().zip(&model.params).map(|(s, p)| (s.name.clone(), s.shape.clone(), p)).collect();
        let meta = [("config".to_string(), config_json), ("step".to_string(), step.to_string())].into();
        write_streamed(be, &tmp_dir.join("model.safetensors"), meta, weights)?;
        let mut moments = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            moments.push((format!("exp_avg.{}", s.name), s.shape.clone(), &opt.m[i]));
            moments.push((format!("exp_avg_sq.{}", s.name), s.shape.clone(), &opt.v[i]));
        }
        let meta = [("step".to_string(), step.to_string()), ("rng".to_string(), rng_json)].into();
        write_streamed(be, &tmp_dir.join("optimizer.safetensors"), meta, moments)?;
        sync_dir(&tmp_dir)?;
        if final_dir.exists() {
            fs::remove_dir_all(&final_dir)?;
        }
        fs::rename(&tmp_dir, &final_dir)?;
        sync_dir(run_dir)
    })();
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&tmp_dir);
        let previous = match resolve(run_dir) {
            Ok(p) => format!("the previous checkpoint {} is intact", p.display()),
            Err(_) => "no earlier checkpoint exists".into(),
        };
        return Err(Error::Checkpoint(format!(
            "could not write checkpoint {} ({e}{}); the partial write was removed and {previous}",
            final_dir.display(),
            crate::files::io_hint(&e)
        )));
    }
    crate::files::write_atomic(&run_dir.join(LATEST), name.as_bytes())?;
    prune(run_dir, keep, &name)?;
    Ok(final_dir)
}

/// Checkpoint directories in `run_dir`, oldest first (by step number).
pub fn list(run_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<(u64, PathBuf)> = fs::read_dir(run_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let step = step_of(e.file_name().to_str()?)?;
            let p = e.path();
            p.is_dir().then_some((step, p))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

/// Delete the oldest checkpoints beyond the newest `keep`; never `current`
/// (the one `latest` names).
fn prune(run_dir: &Path, keep: usize, current: &str) -> Result<()> {
    let all = list(run_dir);
    if all.len() > keep {
        for old in &all[..all.len() - keep] {
            if old.file_name().and_then(|n| n.to_str()) == Some(current) {
                continue;
            }
            fs::remove_dir_all(old).map_err(|e| Error::io(old, e))?;
        }
    }
    Ok(())
}

/// Resolve a path given by the user: a checkpoint directory, or a run
/// directory (the checkpoint its `latest` file names; without one, its
/// newest checkpoint). `latest` must name a checkpoint of that directory
/// (`ckpt-N`): a path there could lead a resume into another run.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if !path.exists() {
        return Err(Error::Checkpoint(format!(
            "{} does not exist; pass a run directory (with a `latest` file) or a ckpt-NNNNNN directory",
            path.display()
        )));
    }
    if path.join("model.safetensors").exists() {
        return Ok(path.to_path_buf());
    }
    let latest = path.join(LATEST);
    if latest.exists() {
        let name = fs::read_to_string(&latest).map_err(|e| Error::io(&latest, e))?;
        let name = name.trim();
        if step_of(name).is_none() {
            return Err(Error::Checkpoint(format!(
                "{} holds {name:?}, which is not the name of a checkpoint in this directory (ckpt-NNNNNN); it was \
                 edited or damaged: write the name of one of the checkpoints that exist into it ({})",
                latest.display(),
                names(&list(path))
            )));
        }
        let dir = path.join(name);
        if dir.join("model.safetensors").exists() {
            return Ok(dir);
        }
        return Err(Error::Checkpoint(format!(
            "{} points at {}, which holds no model.safetensors; pass one of the checkpoints that exist: {}",
            latest.display(),
            dir.display(),
            names(&list(path))
        )));
    }
    // A crash between a first checkpoint's rename and its `latest` leaves a
    // complete checkpoint without a pointer.
    if let Some(newest) = list(path).into_iter().rev().find(|d| d.join("model.safetensors").exists()) {
        return Ok(newest);
    }
    Err(Error::Checkpoint(format!(
        "{} is neither a checkpoint (no model.safetensors) nor a run directory with a checkpoint (no `latest` \
         file, no ckpt-NNNNNN directory)",
        path.display(),
    )))
}

/// What `train --resume PATH` continues from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResumeFrom {
    /// A checkpoint directory.
    Checkpoint(PathBuf),
    /// A run directory that stopped before its first checkpoint (killed, or
    /// stopped by a NaN): there is nothing to continue, so it starts over
    /// from step 0 in the same directory.
    Restart(PathBuf),
}

/// Resolve `--resume PATH`: a checkpoint (as [`resolve`]), or a run
/// directory that has a `config.toml` but no checkpoint yet.
pub fn resolve_resume(path: &Path) -> Result<ResumeFrom> {
    match resolve(path) {
        Ok(dir) => Ok(ResumeFrom::Checkpoint(dir)),
        Err(e) => {
            let started = path.join("config.toml").is_file();
            if started && !path.join(LATEST).exists() && list(path).is_empty() {
                Ok(ResumeFrom::Restart(path.to_path_buf()))
            } else {
                Err(e)
            }
        }
    }
}

fn names(l: &[PathBuf]) -> String {
    if l.is_empty() {
        return "none".into();
    }
    l.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// A checkpoint file mapped into memory: read in place, never copied whole.
struct Loaded {
    bytes: memmap2::Mmap,
}

impl Loaded {
    fn read(path: &Path) -> Result<Loaded> {
        let cannot = |e: std::io::Error| {
            Error::Checkpoint(format!(
                "cannot read {}: {e}; the checkpoint is incomplete, use an earlier one",
                path.display()
            ))
        };
        let f = fs::File::open(path).map_err(cannot)?;
        // SAFETY: checkpoint files are never changed in place: they are
        // written under a temporary name and renamed, and deleting one (a
        // prune) leaves an existing mapping valid. A file truncated by hand
        // while it is mapped could fault; that is outside what a run does.
        let bytes = unsafe { memmap2::Mmap::map(&f) }.map_err(cannot)?;
        Ok(Loaded { bytes })
    }

    fn parse(&self, path: &Path) -> Result<(SafeTensors<'_>, HashMap<String, String>)> {
        let corrupt = |why: String| {
            Error::Checkpoint(format!(
                "{} is truncated or corrupted ({why}); use an earlier checkpoint of the run",
                path.display()
            ))
        };
        let (_, meta) = SafeTensors::read_metadata(&self.bytes).map_err(|e| corrupt(e.to_string()))?;
        let st = SafeTensors::deserialize(&self.bytes).map_err(|e| corrupt(e.to_string()))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let sum = match meta.get("format").map(String::as_str) {
            Some(FORMAT) => {
                let mut names: Vec<&str> = st.names();
                names.sort();
                let mut sum = ChecksumV2::new(&meta, names.len());
                for n in names {
                    let t = st.tensor(n).map_err(|e| corrupt(e.to_string()))?;
                    sum.tensor(n, t.dtype(), t.shape(), t.data());
                }
                sum.0.hex()
            }
            Some(FORMAT_V1) => {
                let mut names: Vec<&str> = st.names();
                names.sort();
                let chunks: Vec<&[u8]> = names.iter().map(|n| st.tensor(n).map(|t| t.data()).unwrap_or(&[])).collect();
                checksum_v1(&chunks)
            }
            other => {
                return Err(Error::Checkpoint(format!(
                    "{} is not a switchyard checkpoint, or it is corrupted (format tag {other:?}, expected \
                     {FORMAT:?})",
                    path.display(),
                )))
            }
        };
        if meta.get("checksum") != Some(&sum) {
            return Err(corrupt(format!("checksum {sum} does not match the stored {:?}", meta.get("checksum"))));
        }
        Ok((st, meta))
    }
}

/// Tensor `name` of `st` must exist with `shape` and dtype F32.
fn check_tensor(st: &SafeTensors<'_>, name: &str, shape: &[usize], path: &Path) -> Result<()> {
    let t = st.tensor(name).map_err(|_| {
        Error::Checkpoint(format!(
            "{} has no tensor `{name}`: the checkpoint was written for a different model (layers, MoE placement or experts differ)",
            path.display()
        ))
    })?;
    if t.dtype() != Dtype::F32 || t.shape() != shape {
        return Err(Error::Checkpoint(format!(
            "tensor `{name}` in {} has shape {:?} ({:?}) but the config needs {:?} (F32): the checkpoint does not match the config",
            path.display(),
            t.shape(),
            t.dtype(),
            shape
        )));
    }
    Ok(())
}

fn read_tensor(st: &SafeTensors<'_>, name: &str, shape: &[usize], path: &Path) -> Result<Vec<f32>> {
    check_tensor(st, name, shape, path)?;
    let t = st.tensor(name).map_err(|e| Error::Checkpoint(format!("{}: {e}", path.display())))?;
    Ok(t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// The config stored in a checkpoint directory.
pub fn read_config(dir: &Path) -> Result<Config> {
    let path = dir.join("model.safetensors");
    let l = Loaded::read(&path)?;
    let (_, meta) = l.parse(&path)?;
    config_from_meta(&meta, &path)
}

fn config_from_meta(meta: &HashMap<String, String>, path: &Path) -> Result<Config> {
    let json = meta
        .get("config")
        .ok_or_else(|| Error::Checkpoint(format!("{} carries no config metadata", path.display())))?;
    let cfg: Config = serde_json::from_str(json).map_err(|e| {
        Error::Checkpoint(format!(
            "the config stored in {} does not parse ({e}); it was written by an incompatible version",
            path.display()
        ))
    })?;
    cfg.validate().map_err(|e| {
        Error::Checkpoint(format!(
            "the config stored in {} is not valid ({e}); the checkpoint was edited or written by an incompatible \
             version",
            path.display()
        ))
    })?;
    Ok(cfg)
}

fn step_from_meta(meta: &HashMap<String, String>, path: &Path) -> Result<u64> {
    meta.get("step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Checkpoint(format!("{} has no valid `step` metadata", path.display())))
}

/// The step a checkpoint directory was written after (its file verified).
pub fn read_step(dir: &Path) -> Result<u64> {
    let path = dir.join("model.safetensors");
    let l = Loaded::read(&path)?;
    let (_, meta) = l.parse(&path)?;
    step_from_meta(&meta, &path)
}

/// Read checkpoint `dir` for a model of config `expect` (its model section
/// must match the stored one: every mismatching key is named), with the
/// optimizer state when `with_optimizer`. Refuses a checkpoint whose tensors
/// would not fit the host's memory before reading them.
pub fn load(dir: &Path, expect: &Config, with_optimizer: bool) -> Result<Checkpoint> {
    let path = dir.join("model.safetensors");
    let l = Loaded::read(&path)?;
    let (st, stored, step) = open_model(&l, &path, expect, dir)?;
    let copies = if with_optimizer { 3 } else { 1 };
    let host = crate::memory::Estimate::single(
        format!("{} as host tensors", dir.display()),
        crate::memory::param_count(expect)?.saturating_mul(4 * copies),
        "the model size",
    );
    crate::memory::check(&host, crate::memory::host_available(), "reading the checkpoint", "the host")?;
    let table = ParamTable::new(expect);
    let params = table.specs.iter().map(|s| read_tensor(&st, &s.name, &s.shape, &path)).collect::<Result<Vec<_>>>()?;
    let (moments, rng) = if with_optimizer {
        let opath = dir.join("optimizer.safetensors");
        let ol = Loaded::read(&opath)?;
        let (ost, ometa) = ol.parse(&opath)?;
        let rng = verify_optimizer(&ost, &ometa, step, &table.specs, &opath)?;
        let mut m = Vec::new();
        let mut v = Vec::new();
        for s in &table.specs {
            m.push(read_tensor(&ost, &format!("exp_avg.{}", s.name), &s.shape, &opath)?);
            v.push(read_tensor(&ost, &format!("exp_avg_sq.{}", s.name), &s.shape, &opath)?);
        }
        (Some((m, v)), Some(rng))
    } else {
        (None, None)
    };
    Ok(Checkpoint { dir: dir.to_path_buf(), config: stored, step, params, moments, rng })
}

/// The model-section keys whose values differ, as `key: stored vs given`.
pub fn model_diffs(stored: &Config, given: &Config) -> Vec<String> {
    // JSON, not TOML: it holds every integer a config can (TOML stops at i64).
    let as_map = |c: &Config| match serde_json::to_value(&c.model) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let (a, b) = (as_map(stored), as_map(given));
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .filter(|(k, _)| ARCH_KEYS.contains(&k.as_str()))
        .map(|(k, v)| {
            format!(
                "model.{k} is {v} in the checkpoint but {} in the config",
                b.get(k).map(|x| x.to_string()).unwrap_or_default()
            )
        })
        .collect()
}

/// Model keys that change tensor shapes, names or the head layout (the others,
/// such as top_k, the capacity factor or loss coefficients, may differ between runs).
const ARCH_KEYS: &[&str] =
    &["vocab_size", "max_seq_len", "n_layer", "n_head", "d_model", "d_ff", "moe_every", "n_experts"];

/// What a checkpoint holds besides its tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointInfo {
    /// The directory it was read from.
    pub dir: PathBuf,
    /// Run configuration stored with it.
    pub config: Config,
    /// Completed optimizer steps.
    pub step: u64,
    /// RNG state (with the optimizer state).
    pub rng: Option<RngState>,
}

/// Read checkpoint `dir` straight into `model` (and `opt`): each tensor is
/// converted and uploaded in turn from the mapped file, so the host never
/// holds a copy of the model. The same checks as [`load`] (checksums, the
/// model config, every tensor's shape) come first: on any error, `model`
/// and `opt` are untouched.
pub fn restore_from<B: Backend>(
    be: &B,
    dir: &Path,
    expect: &Config,
    model: &mut Model<B>,
    opt: Option<&mut Optimizer<B>>,
) -> Result<CheckpointInfo> {
    let path = dir.join("model.safetensors");
    let l = Loaded::read(&path)?;
    let (st, stored, step) = open_model(&l, &path, expect, dir)?;
    let specs = &model.table.specs;
    for s in specs {
        check_tensor(&st, &s.name, &s.shape, &path)?;
    }
    let opath = dir.join("optimizer.safetensors");
    let ol = opt.as_ref().map(|_| Loaded::read(&opath)).transpose()?;
    let parsed = ol.as_ref().map(|ol| ol.parse(&opath)).transpose()?;
    let rng = match &parsed {
        Some((ost, ometa)) => Some(verify_optimizer(ost, ometa, step, specs, &opath)?),
        None => None,
    };
    // Everything is checked: only now is anything overwritten.
    for (s, buf) in specs.iter().zip(model.params.iter_mut()) {
        be.upload(buf, &read_tensor(&st, &s.name, &s.shape, &path)?);
    }
    if let (Some(opt), Some((ost, _))) = (opt, &parsed) {
        for (i, s) in specs.iter().enumerate() {
            be.upload(&mut opt.m[i], &read_tensor(ost, &format!("exp_avg.{}", s.name), &s.shape, &opath)?);
            be.upload(&mut opt.v[i], &read_tensor(ost, &format!("exp_avg_sq.{}", s.name), &s.shape, &opath)?);
        }
    }
    Ok(CheckpointInfo { dir: dir.to_path_buf(), config: stored, step, rng })
}

/// Check an optimizer file against its checkpoint at `step`: the step, the
/// RNG state and every moment tensor's shape. Returns the RNG state.
fn verify_optimizer(
    ost: &SafeTensors<'_>,
    ometa: &HashMap<String, String>,
    step: u64,
    specs: &[crate::model::ParamSpec],
    opath: &Path,
) -> Result<RngState> {
    let ostep: u64 = ometa.get("step").and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
    if ostep != step {
        return Err(Error::Checkpoint(format!(
            "{} is at step {ostep} but model.safetensors is at step {step}: the checkpoint is inconsistent, use an earlier one",
            opath.display()
        )));
    }
    for s in specs {
        check_tensor(ost, &format!("exp_avg.{}", s.name), &s.shape, opath)?;
        check_tensor(ost, &format!("exp_avg_sq.{}", s.name), &s.shape, opath)?;
    }
    rng_from_meta(ometa, opath)
}

fn rng_from_meta(meta: &HashMap<String, String>, path: &Path) -> Result<RngState> {
    meta.get("rng")
        .and_then(|r| serde_json::from_str(r).ok())
        .ok_or_else(|| Error::Checkpoint(format!("{} has no valid `rng` metadata", path.display())))
}

/// The verified contents of a checkpoint's `model.safetensors` at `path`:
/// its tensors, its stored config (whose model section must match
/// `expect`'s) and its step.
fn open_model<'a>(l: &'a Loaded, path: &Path, expect: &Config, dir: &Path) -> Result<(SafeTensors<'a>, Config, u64)> {
    let (st, meta) = l.parse(path)?;
    let stored = config_from_meta(&meta, path)?;
    check_model(&stored, expect, dir)?;
    let step = step_from_meta(&meta, path)?;
    Ok((st, stored, step))
}

/// Refuse a checkpoint whose model section differs from the config's.
fn check_model(stored: &Config, expect: &Config, dir: &Path) -> Result<()> {
    let diffs = model_diffs(stored, expect);
    if diffs.is_empty() {
        return Ok(());
    }
    Err(Error::Checkpoint(format!(
        "{} was trained with a different model config: {}; use the checkpoint's own config (switchyard reads it from the checkpoint when you pass no --config) or a matching one",
        dir.display(),
        diffs.join(", ")
    )))
}

/// Copy checkpoint values into `model` (and `opt`).
pub fn restore<B: Backend>(be: &B, ck: &Checkpoint, model: &mut Model<B>, opt: Option<&mut Optimizer<B>>) {
    for (buf, vals) in model.params.iter_mut().zip(&ck.params) {
        be.upload(buf, vals);
    }
    if let (Some(opt), Some((m, v))) = (opt, &ck.moments) {
        for (buf, vals) in opt.m.iter_mut().zip(m) {
            be.upload(buf, vals);
        }
        for (buf, vals) in opt.v.iter_mut().zip(v) {
            be.upload(buf, vals);
        }
    }
}
