//! Running the `switchyard` binary from integration tests.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// Overrides that make a run take well under a second (about 660 KiB per checkpoint).
pub const SMALL: &[&str] = &[
    "model.n_layer=2",
    "model.d_model=32",
    "model.n_head=2",
    "model.d_ff=64",
    "model.max_seq_len=32",
    "train.seq_len=32",
    "train.batch_size=4",
    "train.eval_batches=2",
];

/// `--set` flags for [`SMALL`] and `extra`.
pub fn sets(extra: &[&str]) -> Vec<String> {
    SMALL.iter().chain(extra).flat_map(|s| ["--set".to_string(), s.to_string()]).collect()
}

/// Owned arguments.
pub fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// The binary with `a`, stdin closed.
pub fn cmd(a: &[String]) -> Command {
    let mut c = Command::new(BIN);
    c.args(a).stdin(Stdio::null());
    c
}

/// Run the binary with `a` to completion.
pub fn run(a: &[String]) -> Output {
    cmd(a).output().expect("binary runs")
}

/// Its stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Its stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Wait until `path` has at least `n` lines (a run has started writing).
pub fn wait_for_lines(path: &Path, n: usize, timeout: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if std::fs::read_to_string(path).map(|s| s.lines().count() >= n).unwrap_or(false) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}
