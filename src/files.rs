//! Files a run owns: an exclusive lock on a run (or sweep) directory for the
//! life of the process, atomic writes, and the cleanup of partial writes a
//! crash or a full disk left behind.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Name of the lock file inside a locked directory.
pub const LOCK: &str = ".lock";

/// An exclusive advisory lock (`flock`) on a directory, held until dropped.
/// The operating system releases it when the process ends, however it ends
/// (`kill -9` included), so a crashed run never leaves a stale lock. The
/// lock file holds the holder's pid and command line for the error a second
/// process gets.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Lock `dir` (which must exist). `what` names the directory in errors
    /// (`run directory`, `sweep directory`); `fix` says what the user can do
    /// instead (`choose another --out`).
    pub fn acquire(dir: &Path, what: &str, fix: &str) -> Result<DirLock> {
        let path = dir.join(LOCK);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.lines().collect::<Vec<_>>().join(", ");
                let holder = if holder.is_empty() { "a process that is just starting".to_string() } else { holder };
                return Err(Error::Busy(format!(
                    "the {what} {} is in use by another switchyard process ({holder}); two processes writing one \
                     directory would mix their files: wait for it to finish or stop it, or {fix}",
                    dir.display()
                )));
            }
            Err(fs::TryLockError::Error(e)) => {
                // Some network filesystems have no flock: run unprotected, but say so.
                eprintln!(
                    "warning: cannot lock {} ({e}); nothing stops a second process from writing the same {what}",
                    path.display()
                );
            }
        }
        let args: Vec<String> = std::env::args().collect();
        let note = format!("pid {}\ncommand: {}\n", std::process::id(), args.join(" "));
        let write = file.set_len(0).and_then(|_| file.rewind()).and_then(|_| file.write_all(note.as_bytes()));
        write.map_err(|e| Error::io(&path, e))?;
        Ok(DirLock { _file: file })
    }
}

/// Write `bytes` to `path` atomically: a temporary file beside it, fsync,
/// rename over `path`, fsync of the directory. A crash leaves either the old
/// file or the new one, never a mix; on failure the temporary is removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!("{name}.tmp"));
    let r = (|| -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    r.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Files switchyard writes atomically (through `NAME.tmp`) into run and
/// sweep directories.
const ATOMIC_FILES: &[&str] = &[
    "latest",
    "config.toml",
    "run.json",
    "metrics.jsonl",
    "summary.json",
    "routing.json",
    "results.jsonl",
    "results.csv",
    "sweep.json",
];

/// Whether `name` is a partial write of ours: `NAME.tmp` of an atomically
/// written file, a checkpoint directory being written (`ckpt-N.tmp`), or
/// the write probe. Nothing else (a sweep point's directory, a user's file)
/// ever matches.
fn is_partial_write(name: &str, is_dir: bool) -> bool {
    match name.strip_suffix(".tmp") {
        Some(base) if is_dir => crate::train::checkpoint::step_of(base).is_some(),
        Some(base) => ATOMIC_FILES.contains(&base),
        None => name == WRITE_PROBE && !is_dir,
    }
}

/// Remove what an interrupted write left in `dir`: a checkpoint directory
/// that was being written, a half-written `latest`, summary or results
/// file, the write probe. Called with the directory's lock held, so nothing
/// else is writing them.
pub fn remove_partial_writes(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(removed);
    };
    for entry in entries.flatten() {
        let p = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_partial_write(&entry.file_name().to_string_lossy(), is_dir) {
            continue;
        }
        let r = if is_dir { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
        r.map_err(|e| Error::io(&p, e))?;
        removed.push(p);
    }
    Ok(removed)
}

/// The file a write check creates and removes.
pub const WRITE_PROBE: &str = ".write-test";

/// Check that `dir` takes writes: create and remove a small file. The error
/// names the real cause (a full disk is not a permissions problem).
pub fn check_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(WRITE_PROBE);
    let r = fs::write(&probe, b"ok");
    let _ = fs::remove_file(&probe);
    r
}

/// A short hint for an I/O error whose cause has a usual fix; empty if none.
pub fn io_hint(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::StorageFull => {
            "; the disk is full: free some space (old runs, old checkpoints; train.keep_checkpoints keeps fewer) \
             or write to another disk"
        }
        K::QuotaExceeded => "; the disk quota is exhausted: free some space or write to another disk",
        K::FileTooLarge => "; the file exceeds a size limit (ulimit -f or the filesystem's)",
        K::PermissionDenied => "; permission denied: choose a location you can write to",
        K::ReadOnlyFilesystem => "; the filesystem is read-only: choose a writable location",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_directory_is_refused_with_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path(), "run directory", "choose another --out").unwrap();
        let e = DirLock::acquire(dir.path(), "run directory", "choose another --out").unwrap_err().to_string();
        assert!(
            e.contains("in use by another switchyard process") && e.contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        assert!(e.contains("choose another --out"), "{e}");
        drop(first);
        DirLock::acquire(dir.path(), "run directory", "choose another --out").unwrap();
    }

    #[test]
    fn atomic_writes_replace_and_partial_writes_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("summary.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        fs::create_dir(dir.path().join("ckpt-000004.tmp")).unwrap();
        fs::write(dir.path().join("ckpt-000004.tmp/model.safetensors"), b"half").unwrap();
        fs::write(dir.path().join("latest.tmp"), b"ckpt").unwrap();
        // Not ours: a sweep point whose label ends in .tmp, a user's file.
        fs::create_dir(dir.path().join("00-source=corpus.tmp")).unwrap();
        fs::write(dir.path().join("notes.tmp"), b"mine").unwrap();
        let mut removed = remove_partial_writes(dir.path()).unwrap();
        removed.sort();
        assert_eq!(removed, [dir.path().join("ckpt-000004.tmp"), dir.path().join("latest.tmp")]);
        assert!(
            p.exists() && dir.path().join("00-source=corpus.tmp").is_dir() && dir.path().join("notes.tmp").exists()
        );
    }

    #[test]
    fn full_disk_hint_is_not_a_permission_hint() {
        let e = std::io::Error::from_raw_os_error(28);
        assert!(io_hint(&e).contains("disk is full"), "{}", io_hint(&e));
        let e = std::io::Error::from_raw_os_error(13);
        assert!(io_hint(&e).contains("permission denied"));
    }
}
