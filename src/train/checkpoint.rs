//! Checkpoints (DESIGN.md §7): a directory `ckpt-NNNNNN/` holding
//!
//! - `model.safetensors`: every parameter under its DESIGN.md name, f32,
//!   linear weights `[in, out]`; metadata `config` (the run config as JSON),
//!   `step`, `format = "switchyard-v1"`, `checksum`.
//! - `optimizer.safetensors`: `exp_avg.<name>` and `exp_avg_sq.<name>`;
//!   metadata `step`, `rng` (JSON), `checksum`.
//!
//! All randomness in a run is counter-based (data order and router jitter are
//! pure functions of `train.seed`, the step and the micro-batch), so the RNG
//! state is `{seed, next_step}`, stored for completeness and checked on load.
//!
//! Writes are atomic: both files go to `ckpt-NNNNNN.tmp/`, are fsynced, the
//! directory is renamed into place and fsynced, and only then is the run's
//! `latest` pointer replaced (write + fsync + rename). A crash at any moment
//! leaves the previous checkpoint intact. Each file's tensor bytes carry an
//! FNV-1a checksum, so truncation or corruption is reported, never loaded.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::config::Config;
use crate::model::{Model, ParamTable};
use crate::train::optimizer::Optimizer;
use crate::{Error, Result};

/// Format tag written into every checkpoint.
pub const FORMAT: &str = "switchyard-v1";
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

fn fnv1a(chunks: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for c in chunks {
        for &b in *c {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

fn sync_dir(path: &Path) -> Result<()> {
    fs::File::open(path).and_then(|f| f.sync_all()).map_err(|e| Error::io(path, e))
}

fn serialize(
    tensors: Vec<(String, Vec<usize>, Vec<u8>)>,
    mut meta: HashMap<String, String>,
    path: &Path,
) -> Result<Vec<u8>> {
    let mut sorted: Vec<&(String, Vec<usize>, Vec<u8>)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let chunks: Vec<&[u8]> = sorted.iter().map(|t| t.2.as_slice()).collect();
    meta.insert("checksum".into(), format!("{:016x}", fnv1a(&chunks)));
    let views = tensors
        .iter()
        .map(|(n, s, b)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Checkpoint(format!("cannot build tensor views for {}: {e}", path.display())))?;
    safetensors::tensor::serialize(views, Some(meta))
        .map_err(|e| Error::Checkpoint(format!("cannot serialize {}: {e}", path.display())))
}

/// Write a checkpoint of `model` (and `opt`) after `step` completed steps
/// into `run_dir/ckpt-{step:06}`, atomically, then point `latest` at it and
/// delete checkpoints beyond the newest `keep`.
pub fn save<B: Backend>(
    be: &B,
    run_dir: &Path,
    model: &Model<B>,
    opt: &Optimizer<B>,
    step: u64,
    keep: usize,
) -> Result<PathBuf> {
    let name = format!("ckpt-{step:06}");
    let final_dir = run_dir.join(&name);
    let tmp_dir = run_dir.join(format!("{name}.tmp"));
    if tmp_dir.exists() {
        fs::remove_dir_all(&tmp_dir).map_err(|e| Error::io(&tmp_dir, e))?;
    }
    fs::create_dir_all(&tmp_dir).map_err(|e| Error::io(&tmp_dir, e))?;
    let config_json = serde_json::to_string(&model.cfg).expect("config serializes");
    let specs = &model.table.specs;

    let weights = specs
        .iter()
        .zip(&model.params)
        .map(|(s, p)| (s.name.clone(), s.shape.clone(), to_bytes(&be.download(p))))
        .collect();
    let meta: HashMap<String, String> = [
        ("format".to_string(), FORMAT.to_string()),
        ("config".to_string(), config_json),
        ("step".to_string(), step.to_string()),
    ]
    .into();
    let path = tmp_dir.join("model.safetensors");
    write_synced(&path, &serialize(weights, meta, &path)?)?;

    let mut moments = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        moments.push((format!("exp_avg.{}", s.name), s.shape.clone(), to_bytes(&be.download(&opt.m[i]))));
        moments.push((format!("exp_avg_sq.{}", s.name), s.shape.clone(), to_bytes(&be.download(&opt.v[i]))));
    }
    let rng = RngState { seed: model.cfg.train.seed, next_step: step };
    let meta: HashMap<String, String> = [
        ("format".to_string(), FORMAT.to_string()),
        ("step".to_string(), step.to_string()),
        ("rng".to_string(), serde_json::to_string(&rng).expect("rng serializes")),
    ]
    .into();
    let path = tmp_dir.join("optimizer.safetensors");
    write_synced(&path, &serialize(moments, meta, &path)?)?;
    sync_dir(&tmp_dir)?;

    if final_dir.exists() {
        fs::remove_dir_all(&final_dir).map_err(|e| Error::io(&final_dir, e))?;
    }
    fs::rename(&tmp_dir, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
    sync_dir(run_dir)?;
    let latest_tmp = run_dir.join(format!("{LATEST}.tmp"));
    write_synced(&latest_tmp, name.as_bytes())?;
    fs::rename(&latest_tmp, run_dir.join(LATEST)).map_err(|e| Error::io(run_dir.join(LATEST), e))?;
    sync_dir(run_dir)?;
    prune(run_dir, keep)?;
    Ok(final_dir)
}

/// Checkpoint directories in `run_dir`, oldest first.
pub fn list(run_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(run_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with("ckpt-") && !n.ends_with(".tmp") && n[5..].chars().all(|c| c.is_ascii_digit())
                })
        })
        .collect();
    v.sort();
    v
}

fn prune(run_dir: &Path, keep: usize) -> Result<()> {
    let all = list(run_dir);
    if all.len() > keep {
        for old in &all[..all.len() - keep] {
            fs::remove_dir_all(old).map_err(|e| Error::io(old, e))?;
        }
    }
    Ok(())
}

/// Resolve a path given by the user: a checkpoint directory, or a run
/// directory (its `latest` checkpoint).
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
        let dir = path.join(name.trim());
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
    Err(Error::Checkpoint(format!(
        "{} is neither a checkpoint (no model.safetensors) nor a run directory (no `latest` file){}",
        path.display(),
        match list(path).as_slice() {
            [] => String::new(),
            l => format!("; checkpoints found inside: {}", names(l)),
        }
    )))
}

fn names(l: &[PathBuf]) -> String {
    if l.is_empty() {
        return "none".into();
    }
    l.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

struct Loaded {
    bytes: Vec<u8>,
}

impl Loaded {
    fn read(path: &Path) -> Result<Loaded> {
        let bytes = fs::read(path).map_err(|e| {
            Error::Checkpoint(format!(
                "cannot read {}: {e}; the checkpoint is incomplete, use an earlier one",
                path.display()
            ))
        })?;
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
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(Error::Checkpoint(format!(
                "{} is not a switchyard checkpoint (format tag {:?}, expected {FORMAT:?})",
                path.display(),
                meta.get("format")
            )));
        }
        let mut names: Vec<&str> = st.names();
        names.sort();
        let chunks: Vec<&[u8]> = names.iter().map(|n| st.tensor(n).map(|t| t.data()).unwrap_or(&[])).collect();
        let sum = format!("{:016x}", fnv1a(&chunks));
        if meta.get("checksum") != Some(&sum) {
            return Err(corrupt(format!("checksum {sum} does not match the stored {:?}", meta.get("checksum"))));
        }
        Ok((st, meta))
    }
}

fn read_tensor(st: &SafeTensors<'_>, name: &str, shape: &[usize], path: &Path) -> Result<Vec<f32>> {
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
    serde_json::from_str(json).map_err(|e| {
        Error::Checkpoint(format!(
            "the config stored in {} does not parse ({e}); it was written by an incompatible version",
            path.display()
        ))
    })
}

/// Read checkpoint `dir` for a model of config `expect` (its model section
/// must match the stored one: every mismatching key is named), with the
/// optimizer state when `with_optimizer`.
pub fn load(dir: &Path, expect: &Config, with_optimizer: bool) -> Result<Checkpoint> {
    let path = dir.join("model.safetensors");
    let l = Loaded::read(&path)?;
    let (st, meta) = l.parse(&path)?;
    let stored = config_from_meta(&meta, &path)?;
    let diffs = model_diffs(&stored, expect);
    if !diffs.is_empty() {
        return Err(Error::Checkpoint(format!(
            "{} was trained with a different model config: {}; use the checkpoint's own config (switchyard reads it from the checkpoint when you pass no --config) or a matching one",
            dir.display(),
            diffs.join(", ")
        )));
    }
    let step: u64 = meta
        .get("step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Checkpoint(format!("{} has no valid `step` metadata", path.display())))?;
    let table = ParamTable::new(expect);
    let params = table.specs.iter().map(|s| read_tensor(&st, &s.name, &s.shape, &path)).collect::<Result<Vec<_>>>()?;
    let (moments, rng) = if with_optimizer {
        let opath = dir.join("optimizer.safetensors");
        let ol = Loaded::read(&opath)?;
        let (ost, ometa) = ol.parse(&opath)?;
        let ostep: u64 = ometa.get("step").and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
        if ostep != step {
            return Err(Error::Checkpoint(format!(
                "{} is at step {ostep} but model.safetensors is at step {step}: the checkpoint is inconsistent, use an earlier one",
                opath.display()
            )));
        }
        let mut m = Vec::new();
        let mut v = Vec::new();
        for s in &table.specs {
            m.push(read_tensor(&ost, &format!("exp_avg.{}", s.name), &s.shape, &opath)?);
            v.push(read_tensor(&ost, &format!("exp_avg_sq.{}", s.name), &s.shape, &opath)?);
        }
        let rng: RngState = ometa
            .get("rng")
            .and_then(|r| serde_json::from_str(r).ok())
            .ok_or_else(|| Error::Checkpoint(format!("{} has no valid `rng` metadata", opath.display())))?;
        (Some((m, v)), Some(rng))
    } else {
        (None, None)
    };
    Ok(Checkpoint { dir: dir.to_path_buf(), config: stored, step, params, moments, rng })
}

/// The model-section keys whose values differ, as `key: stored vs given`.
pub fn model_diffs(stored: &Config, given: &Config) -> Vec<String> {
    let a = toml::Value::try_from(&stored.model).expect("serializes");
    let b = toml::Value::try_from(&given.model).expect("serializes");
    let (a, b) = (a.as_table().expect("table"), b.as_table().expect("table"));
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
