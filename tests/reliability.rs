//! Reliability: no lost runs, no silent wrong results, no panics on bad
//! input. One test per class of failure a hostile-but-fair user found
//! (issue 15; `experiments/results/2026-12-02-reliability.md` has the table
//! of before and after): checkpoint order past step 999,999, resuming a
//! finished run, sweeps with a missing summary or a failing point, runs
//! killed before their first checkpoint, failed checkpoint writes (file-size
//! limit and a real full disk), two processes on one run directory, bit
//! flips anywhere in a checkpoint, sampling and length overflows, unknown
//! token ids, a `latest` pointing elsewhere, data paths from another
//! directory, sizes that cannot fit, oversized integers in a checkpoint
//! config, one-line errors, Ctrl-C outside training, and `kill -9` during
//! checkpoint writes.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use rand::Rng;
use switchyard::backend::cpu::Cpu;
use switchyard::backend::Backend;
use switchyard::model::Model;
use switchyard::sweep::{self, Point, Progress, ResultRow, Sweep};
use switchyard::train::optimizer::Optimizer;
use switchyard::train::{self, checkpoint, TrainOptions};
use switchyard::{Config, Error};

use common::cli::{args, cmd, run, sets, stderr, stdout, wait_for_lines, BIN, SMALL};

/// `train --quiet --out DIR` with the small model and `extra` overrides.
fn train_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = args(&["train", "--quiet", "--out", out.to_str().unwrap()]);
    a.extend(sets(extra));
    a
}

fn assert_ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what} failed ({:?}): {}", o.status, stderr(o));
}

/// The command failed with exit status 1 and its error is one line, the last
/// on stderr, `error: ...` containing every `want` (progress lines such as
/// the run banner may come before it); returns the line.
fn assert_error(o: &Output, want: &[&str]) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "exit status of {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "one error line, got: {err}");
    assert_eq!(err.lines().last(), Some(errors[0]), "the error is the last line: {err}");
    for w in want {
        assert!(errors[0].contains(w), "missing {w:?} in: {err}");
    }
    errors[0].to_string()
}

/// Every file under `dir` with its bytes and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let meta = std::fs::metadata(&p).unwrap();
                out.insert(p.clone(), (std::fs::read(&p).unwrap(), meta.modified().unwrap()));
            }
        }
    }
    out
}

/// `(step, loss bits)` of every train record of a run.
fn train_losses(run: &Path) -> Vec<(u64, u64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap().to_bits()))
        .collect()
}

/// Every tensor of a checkpoint (weights and moments) as bits.
fn tensor_bits(ckpt: &Path, cfg: &Config) -> Vec<Vec<u32>> {
    let ck = checkpoint::load(ckpt, cfg, true).unwrap();
    let (m, v) = ck.moments.unwrap();
    ck.params.iter().chain(&m).chain(&v).map(|t| t.iter().map(|x| x.to_bits()).collect()).collect()
}

fn small_cfg(extra: &[&str]) -> Config {
    let all: Vec<String> = SMALL.iter().chain(extra).map(|s| s.to_string()).collect();
    Config::preset("tiny").unwrap().apply_overrides(&all).unwrap()
}

fn lib_train(cfg: &Config, out: &Path, resume: Option<PathBuf>) -> switchyard::Result<train::TrainSummary> {
    let be = Cpu::new(1).unwrap();
    train::train(&be, cfg, &TrainOptions { out: out.to_path_buf(), resume, progress: false, max_steps_this_run: None })
}

// ------------------------------------------------------------------ data loss

#[test]
fn checkpoints_past_step_999999_are_ordered_by_step() {
    let cfg = common::micro_config(2, 4, 1);
    let be = Cpu::new(1).unwrap();
    let model = Model::new(&be, &cfg).unwrap();
    let opt = Optimizer::new(&be, &model).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for step in [999_998, 999_999, 1_000_000, 1_000_001] {
        checkpoint::save(&be, dir.path(), &model, &opt, step, 2).unwrap();
        assert_eq!(checkpoint::read_step(&checkpoint::resolve(dir.path()).unwrap()).unwrap(), step);
    }
    // By name, ckpt-1000000 sorts before ckpt-999998: pruning by name deleted
    // every new checkpoint and left `latest` dangling.
    let names: Vec<String> =
        checkpoint::list(dir.path()).iter().map(|p| p.file_name().unwrap().to_string_lossy().into()).collect();
    assert_eq!(names, ["ckpt-1000000", "ckpt-1000001"]);
    assert!(checkpoint::resolve(dir.path()).unwrap().ends_with("ckpt-1000001"));
}

#[test]
fn resuming_a_finished_run_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    assert_ok(&run(&train_args(&out, &["train.steps=4"])), "training");
    let before = snapshot(&out);
    let o = run(&args(&["train", "--resume", out.to_str().unwrap()]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("already complete (step 4 of 4)") && err.contains("train.steps"), "{err}");
    assert!(!err.contains("NaN") && !err.contains("device"), "nothing else is printed: {err}");
    assert_eq!(snapshot(&out), before, "every file stays as it was");
    // Fewer steps than the checkpoint: an error, still nothing touched.
    let o = run(&args(&["train", "--resume", out.to_str().unwrap(), "--set", "train.steps=3"]));
    assert_error(&o, &["is at step 4, past train.steps = 3", "raise train.steps"]);
    assert_eq!(snapshot(&out), before);
    // Extending it works.
    let o = run(&args(&["train", "--quiet", "--resume", out.to_str().unwrap(), "--set", "train.steps=6"]));
    assert_ok(&o, "extending");
    assert!(out.join("ckpt-000006").is_dir());
}

#[derive(Default)]
struct Log {
    started: Vec<(usize, bool)>,
    failed: Vec<(usize, String)>,
}

impl Progress for Log {
    fn point(&mut self, p: &Point, skipped: bool) {
        self.started.push((p.index, skipped));
    }
    fn done(&mut self, _: &Point, _: &ResultRow) {}
    fn failed(&mut self, p: &Point, error: &str) {
        self.failed.push((p.index, error.to_string()));
    }
}

fn sweep_file(dir: &Path, axes: &str) -> PathBuf {
    let mut text = String::from("name = \"t\"\npreset = \"tiny\"\n[set]\n");
    for s in SMALL {
        let (k, v) = s.split_once('=').unwrap();
        text.push_str(&format!("\"{k}\" = {v}\n"));
    }
    text.push_str("\"train.steps\" = 4\n\"train.eval_every\" = 2\n\"train.checkpoint_every\" = 2\n[axes]\n");
    text.push_str(axes);
    let path = dir.join("t.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_sweep_point_without_its_summary_is_completed() {
    let dir = tempfile::tempdir().unwrap();
    let s = Sweep::load(&sweep_file(dir.path(), "\"model.n_experts\" = [2]\n"), &[], None, 1.0).unwrap();
    let out = dir.path().join("out");
    let be = Cpu::new(1).unwrap();
    let first = sweep::run(&be, &s, &out, &mut Log::default()).unwrap();
    // Killed between the last checkpoint and the summary write.
    let run_dir = out.join(s.points[0].dir_name());
    for f in ["summary.json", "routing.json"] {
        std::fs::remove_file(run_dir.join(f)).unwrap();
    }
    let mut log = Log::default();
    let again = sweep::run(&be, &s, &out, &mut log).unwrap();
    assert_eq!(log.started, [(0, false)], "recognised as unfinished");
    let (a, b) = (&first.rows[0], &again.rows[0]);
    assert!(b.final_loss.is_finite() && b.val_loss.is_some_and(f64::is_finite), "{b:?}");
    assert_eq!(
        (a.steps, a.final_loss.to_bits(), a.val_loss, a.dropped_frac),
        (b.steps, b.final_loss.to_bits(), b.val_loss, b.dropped_frac)
    );
    assert!(run_dir.join("summary.json").is_file() && run_dir.join("routing.json").is_file());
    // The checkpoint was not retrained: still the same step-4 checkpoint.
    assert!(checkpoint::resolve(&run_dir).unwrap().ends_with("ckpt-000004"));
}

#[test]
fn a_failing_sweep_point_is_recorded_and_retried_alone() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    let axes =
        format!("\"data.source\" = [\"synthetic\", \"{}\", \"synthetic\"]\n\"train.seed\" = [1]\n", corpus.display());
    let file = sweep_file(dir.path(), &axes);
    let out = dir.path().join("out");
    let sweep_cmd = args(&["sweep", file.to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"]);
    // Point 1's corpus does not exist yet: it fails, the others run.
    let o = run(&sweep_cmd);
    let line = assert_error(&o, &["1 of 3 points failed", "1 source=", "re-running the same command retries"]);
    assert!(line.contains("results.jsonl"), "{line}");
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let status: Vec<&str> = rows.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(status, ["done", "failed", "done"]);
    assert!(rows[1]["error"].as_str().unwrap().contains("corpus.txt"), "{}", rows[1]);
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert!(csv.lines().nth(2).unwrap().contains("\"failed\""), "{csv}");
    let done_before = snapshot(&out.join(rows[0]["run_dir"].as_str().unwrap()));
    // Fix the cause and re-run: only the failed point trains.
    std::fs::write(&corpus, "the quick brown fox jumps over the lazy dog\n".repeat(200)).unwrap();
    let o = run(&sweep_cmd);
    assert_ok(&o, "the re-run");
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(rows.iter().all(|r| r["status"] == "done" && r["val_loss"].as_f64().is_some()), "{rows:?}");
    assert_eq!(snapshot(&out.join(rows[0]["run_dir"].as_str().unwrap())), done_before, "finished points are skipped");
}

#[test]
fn a_run_killed_before_its_first_checkpoint_starts_over_with_resume() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let long = train_args(&out, &["train.steps=100000", "train.checkpoint_every=0", "train.eval_every=0"]);
    let mut child = cmd(&long).stderr(Stdio::null()).spawn().unwrap();
    assert!(wait_for_lines(&out.join("metrics.jsonl"), 3, Duration::from_secs(60)), "training did not start");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(checkpoint::list(&out).is_empty(), "killed before any checkpoint");
    // Both commands agree: --out refuses and points at --resume, which works.
    let o = run(&train_args(&out, &["train.steps=5"]));
    assert_error(&o, &["already holds a run", &format!("--resume {}", out.display())]);
    let o = run(&args(&["train", "--quiet", "--resume", out.to_str().unwrap(), "--set", "train.steps=5"]));
    assert_ok(&o, "resume");
    assert!(stderr(&o).contains("starting it over from step 0"), "{}", stderr(&o));
    // Exactly a fresh 5-step run.
    let fresh = dir.path().join("fresh");
    assert_ok(&run(&train_args(&fresh, &["train.steps=5", "train.checkpoint_every=0", "train.eval_every=0"])), "fresh");
    assert_eq!(train_losses(&out), train_losses(&fresh));

    // Stopped by a NaN before the first checkpoint: the error says how to
    // start over, and that works with a saner learning rate.
    let nan = dir.path().join("nan");
    let mut cfg = small_cfg(&["train.lr=1e6", "train.min_lr=1e5", "train.warmup_steps=0", "train.grad_clip=0"]);
    cfg.train.steps = 30;
    cfg.train.checkpoint_every = 0;
    let e = lib_train(&cfg, &nan, None).unwrap_err();
    assert!(matches!(e, Error::Diverged(_)), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("no checkpoint was written") && msg.contains(&format!("--resume {}", nan.display())), "{msg}");
    cfg.train.lr = 1e-3;
    cfg.train.min_lr = 1e-4;
    let s = lib_train(&cfg, &nan, Some(nan.clone())).unwrap();
    assert_eq!(s.steps, 30);
}

#[test]
fn a_failed_checkpoint_write_is_removed_and_named() {
    // A file-size limit (ulimit -f, signal ignored so the write fails with
    // EFBIG instead of killing the process) that metrics fit and a
    // checkpoint (~220 KiB of weights) does not.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let a = train_args(&out, &["train.steps=4", "train.checkpoint_every=2"]);
    let script = "ulimit -f 150; trap '' XFSZ; exec \"$0\" \"$@\"".to_string();
    let o = Command::new("bash").arg("-c").arg(&script).arg(BIN).args(&a).stdin(Stdio::null()).output().unwrap();
    assert_error(&o, &["could not write checkpoint", "ckpt-000002", "File too large", "partial write was removed"]);
    let left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "partial writes left behind: {left:?}");
    // Without the limit the run starts over (no checkpoint was written) and finishes.
    let o = run(&args(&["train", "--quiet", "--resume", out.to_str().unwrap()]));
    assert_ok(&o, "resume after the failed write");
    assert!(out.join("ckpt-000004").is_dir());
}

/// Runs `script` in a private mount namespace (so it can mount a tmpfs);
/// `None` if this machine does not allow it.
fn in_mount_namespace(script: &str) -> Option<Output> {
    let probe = Command::new("unshare").args(["-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"]).output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            common::skip(
                "a_full_disk_is_named_and_cleaned_up",
                &format!("no private tmpfs here: {}", stderr(&o).trim()),
            );
            return None;
        }
        Err(e) => {
            common::skip("a_full_disk_is_named_and_cleaned_up", &format!("no unshare here: {e}"));
            return None;
        }
    }
    Some(Command::new("unshare").args(["-m", "bash", "-c", script]).stdin(Stdio::null()).output().unwrap())
}

#[test]
fn a_full_disk_is_named_and_cleaned_up() {
    // A real full disk: a 1.5 MiB tmpfs holds two checkpoints (~660 KiB each
    // with the optimizer state) but not a third.
    let host = tempfile::tempdir().unwrap();
    let mnt = host.path().join("disk");
    std::fs::create_dir(&mnt).unwrap();
    let a = train_args(&mnt.join("run"), &["train.steps=8", "train.checkpoint_every=2", "train.keep_checkpoints=2"]);
    let quoted: Vec<String> = a.iter().map(|s| format!("'{s}'")).collect();
    let log = |n: &str| host.path().join(n).display().to_string();
    let run_dir = mnt.join("run");
    let script = format!(
        "set -u\n\
         mount -t tmpfs -o size=1536k tmpfs {mnt}\n\
         {bin} {args} 2> {e1}; echo $? > {r1}\n\
         ls -a {run} > {ls1}\n\
         cp {run}/latest {latest1}\n\
         dd if=/dev/zero of={mnt}/filler bs=4k 2>/dev/null\n\
         {bin} train --quiet --resume {run} 2> {e2}; echo $? > {r2}\n\
         rm {mnt}/filler; rm -r {run}/ckpt-000002\n\
         {bin} train --quiet --resume {run} --set train.keep_checkpoints=1 2> {e3}; echo $? > {r3}\n\
         cp {run}/metrics.jsonl {metrics}\n",
        mnt = mnt.display(),
        bin = BIN,
        args = quoted.join(" "),
        run = run_dir.display(),
        e1 = log("e1"),
        r1 = log("r1"),
        ls1 = log("ls1"),
        latest1 = log("latest1"),
        e2 = log("e2"),
        r2 = log("r2"),
        e3 = log("e3"),
        r3 = log("r3"),
        metrics = log("metrics.jsonl"),
    );
    let Some(o) = in_mount_namespace(&script) else {
        return;
    };
    let read =
        |n: &str| std::fs::read_to_string(host.path().join(n)).unwrap_or_else(|e| panic!("{n}: {e}; {}", stderr(&o)));
    // 1. The third checkpoint hits the full disk: named, removed, the previous intact.
    let (e1, ls1) = (read("e1"), read("ls1"));
    assert_eq!(read("r1").trim(), "1", "{e1}");
    assert!(e1.contains("No space left on device") && e1.contains("the disk is full"), "{e1}");
    assert!(e1.contains("ckpt-000006") && e1.contains("ckpt-000004 is intact"), "{e1}");
    assert!(!ls1.contains(".tmp"), "a partial checkpoint was left: {ls1}");
    assert_eq!(read("latest1").trim(), "ckpt-000004");
    // 2. Resuming on a disk that is still full blames the disk, not --out.
    let e2 = read("e2");
    assert_eq!(read("r2").trim(), "1", "{e2}");
    assert!(e2.contains("the disk is full") && !e2.contains("choose a writable --out"), "{e2}");
    // 3. With space freed the run finishes, and its losses are those of a run on a roomy disk.
    assert_eq!(read("r3").trim(), "0", "{}", read("e3"));
    let roomy = host.path().join("roomy");
    assert_ok(&run(&train_args(&roomy, &["train.steps=8", "train.checkpoint_every=2"])), "roomy run");
    std::fs::create_dir_all(host.path().join("full")).unwrap();
    std::fs::copy(host.path().join("metrics.jsonl"), host.path().join("full/metrics.jsonl")).unwrap();
    assert_eq!(train_losses(&host.path().join("full")), train_losses(&roomy));
}

// ------------------------------------------------------ silent wrong results

#[test]
fn two_trainers_on_one_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let long = train_args(&out, &["train.steps=100000", "train.checkpoint_every=50", "train.eval_every=0"]);
    let first = cmd(&long).stderr(Stdio::piped()).spawn().unwrap();
    assert!(wait_for_lines(&out.join("metrics.jsonl"), 3, Duration::from_secs(60)), "training did not start");
    let pid = format!("pid {}", first.id());
    // A second fresh run and a resume into the same directory are refused, naming the holder.
    for second in [train_args(&out, &["train.steps=10"]), args(&["train", "--resume", out.to_str().unwrap()])] {
        let o = run(&second);
        assert_error(&o, &["in use by another switchyard process", &pid, "another --out"]);
    }
    Command::new("kill").args(["-INT", &first.id().to_string()]).status().unwrap();
    let o = first.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    // The first run's files are its own: one unbroken sequence of steps.
    let steps: Vec<u64> = train_losses(&out).iter().map(|s| s.0).collect();
    assert_eq!(steps, (1..=steps.len() as u64).collect::<Vec<_>>());
    let ck = checkpoint::resolve(&out).unwrap();
    assert_eq!(checkpoint::read_step(&ck).unwrap(), *steps.last().unwrap());

    // A sweep directory is locked the same way.
    let s = Sweep::load(&sweep_file(dir.path(), "\"model.n_experts\" = [2]\n"), &[], None, 1.0).unwrap();
    let sweep_dir = dir.path().join("sweep");
    std::fs::create_dir_all(&sweep_dir).unwrap();
    let _held = switchyard::files::DirLock::acquire(&sweep_dir, "sweep directory", "x").unwrap();
    let e = sweep::run(&Cpu::new(1).unwrap(), &s, &sweep_dir, &mut Log::default()).unwrap_err();
    assert!(matches!(e, Error::Busy(_)) && e.to_string().contains("sweep directory"), "{e}");
}

/// What a checkpoint load gives: every tensor's bits, the config, the step and the RNG state.
type Loaded = (Vec<Vec<u32>>, Config, u64, checkpoint::RngState);

/// The outcome of loading a checkpoint whose bytes were changed.
fn load_outcome(ck: &Path, cfg: &Config) -> Result<Option<Loaded>, String> {
    let r = std::panic::catch_unwind(|| checkpoint::load(ck, cfg, true));
    match r {
        Err(_) => Err("panicked".into()),
        Ok(Err(_)) => Ok(None),
        Ok(Ok(c)) => {
            let (m, v) = c.moments.clone().unwrap();
            let bits = c.params.iter().chain(&m).chain(&v).map(|t| t.iter().map(|x| x.to_bits()).collect()).collect();
            Ok(Some((bits, c.config, c.step, c.rng.unwrap())))
        }
    }
}

#[test]
fn bit_flips_anywhere_in_a_checkpoint_are_refused_or_harmless() {
    let cfg = common::micro_config(2, 4, 1);
    let dir = tempfile::tempdir().unwrap();
    let mut short = cfg.clone();
    short.train.steps = 1;
    lib_train(&short, dir.path(), None).unwrap();
    let ck = checkpoint::resolve(dir.path()).unwrap();
    let good = load_outcome(&ck, &short).unwrap().expect("the checkpoint loads");
    let mut rng = common::rng(15);
    let (mut refused, mut harmless) = (0usize, 0usize);
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let path = ck.join(file);
        let bytes = std::fs::read(&path).unwrap();
        let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        // A random bit of every byte of the length prefix and the header
        // (metadata: config, step, RNG state, format, checksum; tensor
        // names, shapes, offsets), and 400 random bits of the tensor data.
        let mut bits: Vec<usize> = (0..header).map(|byte| byte * 8 + rng.random_range(0..8)).collect();
        bits.extend((0..400).map(|_| rng.random_range(header * 8..bytes.len() * 8)));
        for bit in bits {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            std::fs::write(&path, &bad).unwrap();
            match load_outcome(&ck, &short) {
                Err(why) => panic!("{file}: flipping bit {bit} {why}"),
                Ok(None) => refused += 1,
                Ok(Some(got)) => {
                    assert!(got == good, "{file}: flipping bit {bit} loaded a different checkpoint silently");
                    harmless += 1;
                }
            }
        }
        std::fs::write(&path, &bytes).unwrap();
    }
    eprintln!("bit flips: {refused} refused, {harmless} loaded bit-identical");
    assert!(refused > 1000, "the checksum refuses changed files ({refused})");
}

#[test]
fn a_tiny_temperature_is_greedy_and_huge_lengths_are_refused_before_streaming() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    assert_ok(&run(&train_args(&out, &["train.steps=2", "train.eval_every=0"])), "training");
    let gen = |extra: &[&str]| {
        let mut a = args(&["generate", "--checkpoint", out.to_str().unwrap(), "--prompt", "1 2 3"]);
        a.extend(args(extra));
        run(&a)
    };
    let greedy = gen(&["--temperature", "0", "--max-new-tokens", "8"]);
    assert_ok(&greedy, "greedy");
    for t in ["1e-320", "5e-324", "1e-300"] {
        let o = gen(&["--temperature", t, "--max-new-tokens", "8"]);
        assert_ok(&o, t);
        assert_eq!(stdout(&o), stdout(&greedy), "--temperature {t} samples like greedy");
    }
    let o = gen(&["--max-new-tokens", "18446744073709551615"]);
    assert_error(&o, &["--max-new-tokens 18446744073709551615", "at most 29 new tokens fit"]);
    assert_eq!(stdout(&o), "", "nothing streamed before the error");
}

#[test]
fn ids_the_tokenizer_does_not_know_decode_as_placeholders() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
"model":{"type":"WordLevel","vocab":{"[UNK]":0,"hello":1,"world":2},"unk_token":"[UNK]"}}"#;
    std::fs::write(&path, json).unwrap();
    let t = switchyard::data::Tokenizer::from_spec(path.to_str().unwrap()).unwrap();
    // A model's vocabulary may be larger than its tokenizer's: sampled ids 7
    // and 300 have no token and were dropped silently.
    let text = t.decode(&[1, 7, 2, 300]);
    assert!(
        text.contains("hello") && text.contains("<7>") && text.contains("world") && text.ends_with("<300>"),
        "{text}"
    );
    assert_eq!(t.decode(&[1, 2]), "hello world", "known ids decode as before");
}

#[test]
fn a_latest_file_naming_another_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for d in [&a, &b] {
        assert_ok(&run(&train_args(d, &["train.steps=2"])), "training");
    }
    let other = snapshot(&a);
    std::fs::write(b.join("latest"), a.join("ckpt-000002").display().to_string()).unwrap();
    let o = run(&args(&["train", "--resume", b.to_str().unwrap(), "--set", "train.steps=4"]));
    assert_error(&o, &["latest", "not the name of a checkpoint in this directory"]);
    let o = run(&args(&["eval", "--checkpoint", b.to_str().unwrap()]));
    assert_error(&o, &["not the name of a checkpoint"]);
    assert_eq!(snapshot(&a), other, "the other run is untouched");
}

#[test]
fn data_and_tokenizer_paths_work_from_any_directory() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(work.join("corpus.txt"), "hello world, the quick brown fox\n".repeat(300)).unwrap();
    let mut a = args(&["train", "--quiet", "--out", "run", "--data", "corpus.txt"]);
    a.extend(sets(&["train.steps=2"]));
    assert_ok(&cmd(&a).current_dir(&work).output().unwrap(), "training with a relative --data");
    let run_dir = work.join("run");
    let eval =
        || cmd(&args(&["eval", "--checkpoint", run_dir.to_str().unwrap()])).current_dir(&elsewhere).output().unwrap();
    assert_ok(&eval(), "eval from another directory");
    let gen = cmd(&args(&[
        "generate",
        "--checkpoint",
        run_dir.to_str().unwrap(),
        "--prompt",
        "the",
        "--max-new-tokens",
        "3",
    ]))
    .current_dir(&elsewhere)
    .output()
    .unwrap();
    assert_ok(&gen, "generate from another directory");
    // Moved away: the error names the missing path and how to give another.
    std::fs::rename(work.join("corpus.txt"), work.join("moved.txt")).unwrap();
    let missing = work.join("corpus.txt").display().to_string();
    assert_error(&eval(), &[&missing, "--data PATH"]);
}

// ------------------------------------------------------------- bad input

#[test]
fn sizes_that_cannot_fit_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r").display().to_string();
    let sweep = sweep_file(dir.path(), "\"model.n_experts\" = [2]\n").display().to_string();
    let big_model = [
        "--set",
        "model.n_layer=24",
        "--set",
        "model.d_model=2048",
        "--set",
        "model.n_head=16",
        "--set",
        "model.d_ff=8192",
    ];
    let cases: Vec<(Vec<String>, Option<&str>, Vec<&str>)> = vec![
        (
            args(&["train", "--out", &out, "--set", "train.batch_size=1000000000"]),
            None,
            vec!["dispatched rows exceed 2^31 - 1", "train.batch_size"],
        ),
        (
            args(&["train", "--out", &out, "--set", "model.moe_every=0", "--set", "train.batch_size=1000000000"]),
            None,
            vec!["needs about", "train.batch_size"],
        ),
        (
            args(&["train", "--out", &out, "--set", "model.n_layer=1000000000"]),
            None,
            vec!["needs about", "model.n_layer"],
        ),
        (
            args(&["train", "--out", &out, "--set", "model.vocab_size=4294967296000"]),
            None,
            vec!["model.vocab_size", "2^31 - 1"],
        ),
        (
            args(&["train", "--out", &out, "--set", "model.d_model=4294967296", "--set", "model.n_head=1"]),
            None,
            vec!["2^64", "model.d_model"],
        ),
        (
            [&["train", "--out", &out][..], &big_model[..]].concat().iter().map(|s| s.to_string()).collect(),
            Some("4G"),
            vec!["needs about", "only 4.0 GiB is available (SWITCHYARD_MEMORY_LIMIT)", "the model"],
        ),
        (
            [&["bench"][..], &big_model[..]].concat().iter().map(|s| s.to_string()).collect(),
            Some("4G"),
            vec!["needs about"],
        ),
        (
            args(&["bench", "--generate", "--batch-sizes", "100000000"]),
            None,
            vec!["--batch-sizes 100000000 needs about", "KV cache"],
        ),
        (args(&["bench", "--steps", "18446744073709551615"]), None, vec!["overflows"]),
        (
            args(&["bench", "--ops", "--shape", "tokens=4611686018427387904", "--shape", "seq=1"]),
            None,
            vec!["i32 indices"],
        ),
        (args(&["sweep", &sweep, "--scale", "1e30", "--dry-run"]), None, vec!["--scale 1e30", "train.steps"]),
        (args(&["config", "--set", "train.steps=9223372036854775808"]), None, vec!["train.steps", "below 2^63"]),
        (args(&["bench", "--threads", "1000000", "--steps", "1"]), None, vec!["--threads 1000000"]),
    ];
    for (a, limit, want) in cases {
        let mut c = cmd(&a);
        if let Some(l) = limit {
            c.env("SWITCHYARD_MEMORY_LIMIT", l);
        }
        let o = c.output().unwrap();
        assert_error(&o, &want);
        assert!(!Path::new(&out).exists(), "{a:?} created the run directory");
    }
    // A real address-space limit (ulimit -v) is read too.
    let mut a = vec!["train".to_string(), "--out".into(), out.clone()];
    a.extend(big_model.iter().map(|s| s.to_string()));
    let o =
        Command::new("bash").arg("-c").arg("ulimit -v 3000000; exec \"$0\" \"$@\"").arg(BIN).args(&a).output().unwrap();
    assert_error(&o, &["needs about", "ulimit -v"]);
}

/// The FNV-1a checksum of the v1 format (tensor bytes only, by name).
fn v1_checksum(st: &safetensors::SafeTensors<'_>) -> String {
    let mut names = st.names();
    names.sort();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for n in names {
        for &b in st.tensor(n).unwrap().data() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

#[test]
fn a_checkpoint_config_with_an_oversized_integer_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    assert_ok(&run(&train_args(&out, &["train.steps=2"])), "training");
    let ck = checkpoint::resolve(&out).unwrap();
    // Rewrite model.safetensors in the v1 format (its checksum does not cover
    // the metadata), with integers no TOML file can hold.
    let path = ck.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    for (key, value) in
        [("\"seed\":7", "\"seed\":18446744073709551615"), ("\"steps\":2", "\"steps\":18446744073709551615")]
    {
        let mut m = meta.clone();
        let config = m["config"].replace(key, value);
        assert_ne!(config, m["config"], "{key} is in the stored config");
        m.insert("config".into(), config);
        m.insert("format".into(), "switchyard-v1".into());
        m.insert("checksum".into(), v1_checksum(&st));
        let tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = st.tensors().into_iter().collect();
        std::fs::write(&path, safetensors::tensor::serialize(tensors, Some(m)).unwrap()).unwrap();
        for a in [
            args(&["eval", "--checkpoint", out.to_str().unwrap()]),
            args(&["generate", "--checkpoint", out.to_str().unwrap(), "--prompt", "1 2"]),
            args(&["train", "--resume", out.to_str().unwrap()]),
        ] {
            let o = run(&a);
            assert_error(&o, &["is not valid", "larger than any config can hold"]);
        }
    }
}

#[test]
fn errors_are_one_line_and_io_causes_appear_once() {
    let dir = tempfile::tempdir().unwrap();
    // TOML errors: the parser's own message spans several lines.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[model]\nn_layer = \"four\"\n").unwrap();
    assert_error(
        &run(&args(&["train", "--config", bad.to_str().unwrap()])),
        &["bad.toml, line 2, column 11", "invalid type"],
    );
    std::fs::write(&bad, "[model\nn_layer = 4\n").unwrap();
    assert_error(&run(&args(&["config", "--config", bad.to_str().unwrap()])), &["bad.toml, line 1"]);
    let sweep = dir.path().join("s.toml");
    std::fs::write(&sweep, "name = \n").unwrap();
    assert_error(&run(&args(&["sweep", sweep.to_str().unwrap(), "--dry-run"])), &["not valid TOML", "line 1"]);
    // I/O errors name their cause once.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let line = assert_error(&run(&train_args(&file.join("run"), &[])), &["choose a writable --out"]);
    assert_eq!(line.matches("os error").count(), 1, "{line}");
    // Usage errors are the argument parser's: status 2, as the README says.
    assert_eq!(run(&args(&["train", "--no-such-flag"])).status.code(), Some(2));
}

#[test]
fn ctrl_c_outside_training_just_stops() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    assert_ok(&run(&train_args(&out, &["train.steps=2"])), "training");
    let child = cmd(&args(&["eval", "--checkpoint", out.to_str().unwrap(), "--batches", "100000000"]))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let t = Instant::now();
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let o = child.wait_with_output().unwrap();
    // Status 130 from the handler, or the signal itself if it arrived before
    // the handler was installed: either way, stopped.
    use std::os::unix::process::ExitStatusExt;
    assert!(o.status.code() == Some(130) || o.status.signal() == Some(2), "{:?}: {}", o.status, stderr(&o));
    assert!(t.elapsed() < Duration::from_secs(5), "stopped at once");
    assert!(!stderr(&o).contains("checkpoint"), "{}", stderr(&o));
}

// --------------------------------------------------------------- crash test

#[test]
fn kill_9_during_checkpoint_writes_then_resume_is_bit_identical() {
    // A checkpoint every step: most of the wall time is in checkpoint writes
    // (two fsynced files, a rename, the `latest` pointer, pruning), so most
    // kills land inside one.
    let extra = [
        "train.steps=300",
        "train.checkpoint_every=1",
        "train.eval_every=50",
        "train.keep_checkpoints=2",
        // Rows no token uses: a 3 MiB checkpoint for the same compute.
        "model.vocab_size=8192",
    ];
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference");
    assert_ok(&run(&train_args(&reference, &extra)), "the uninterrupted run");
    let out = dir.path().join("crashed");
    let mut rng = common::rng(9);
    let (mut kills, mut torn) = (0, 0);
    for _ in 0..12 {
        let a = if out.join("config.toml").exists() {
            args(&["train", "--quiet", "--resume", out.to_str().unwrap()])
        } else {
            train_args(&out, &extra)
        };
        let mut child = cmd(&a).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(30..500)));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        if std::fs::read_dir(&out)
            .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".tmp")))
            .unwrap_or(false)
        {
            torn += 1;
        }
    }
    // Finish it (resuming until the run reports complete).
    for _ in 0..3 {
        let o = run(&args(&["train", "--quiet", "--resume", out.to_str().unwrap()]));
        assert_ok(&o, "resume after the kills");
        if stderr(&o).contains("already complete") {
            break;
        }
    }
    eprintln!("kill -9: {kills} kills, {torn} of them left a partial write behind");
    assert!(kills >= 3, "the run was killed several times ({kills})");
    assert_eq!(train_losses(&out), train_losses(&reference), "every step's loss, bit for bit");
    let cfg = checkpoint::read_config(&checkpoint::resolve(&reference).unwrap()).unwrap();
    assert_eq!(
        tensor_bits(&checkpoint::resolve(&out).unwrap(), &cfg),
        tensor_bits(&checkpoint::resolve(&reference).unwrap(), &cfg),
        "the final weights and optimizer state, bit for bit"
    );
    let summary = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("summary.json")).unwrap()).unwrap()
    };
    assert_eq!(summary(&out)["val_loss"], summary(&reference)["val_loss"]);
    assert!(out.join("routing.json").is_file() && out.join("plots").is_dir());
}

#[test]
fn the_default_backend_reports_its_memory() {
    // The CPU reads the host's memory (Linux): what every refusal above relies on.
    let be = Cpu::new(1).unwrap();
    let a = be.available_memory().expect("Linux exposes /proc/meminfo");
    assert!(a.bytes > 0 && !a.source.is_empty(), "{a:?}");
}
