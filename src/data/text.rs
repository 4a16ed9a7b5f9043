//! File corpora: a text file, a directory of text files, or a `.u16` token file.
//!
//! # Reading
//! - A text file is read as bytes and tokenized whole: the byte tokenizer
//!   makes every byte a token; a Hugging Face tokenizer needs UTF-8.
//! - A directory contributes every regular file under it, recursively, sorted
//!   by path. Hidden entries (name starting with '.') are skipped, and so are
//!   empty files; symbolic links to files are followed, links to directories
//!   are not (no cycles). Each file is tokenized on its own and the token
//!   streams are concatenated. With the byte tokenizer a single `'\n'` token
//!   separates two files when the earlier one does not already end with
//!   `'\n'`; with a Hugging Face tokenizer nothing is inserted. A directory is
//!   read as text, so a `.u16` file inside one is an error.
//! - A file whose name ends in `.u16` holds pre-tokenized ids as little-endian
//!   u16, no header.
//!
//! # Split
//! The last `ceil(val_fraction * n)` tokens (a product within a relative 1e-12
//! of an integer counts as that integer) of the concatenated stream of `n`
//! tokens are the validation split, the rest the training split. Each split
//! must hold at least one window of `seq_len + 1` tokens.
//!
//! # Windows
//! Training micro-batch `(step, micro)` draws `batch` start offsets uniformly
//! from `[0, n_train - seq - 1]` with a ChaCha8 generator seeded by
//! `(train.seed, step, micro)`. Validation batch `index` takes the
//! non-overlapping windows `w = index * batch + row` (modulo the number of
//! whole windows `(n_val - 1) / seq`), window `w` starting at token `w * seq`;
//! so consecutive indices sweep the split in order and then wrap around.

use std::path::{Path, PathBuf};

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

use super::tokenizer::Tokenizer;

/// A tokenized file corpus, split into train and validation.
#[derive(Debug)]
pub(crate) struct FileCorpus {
    /// The whole stream: `[0, n_train)` is training, the rest validation.
    tokens: Vec<u32>,
    n_train: usize,
    /// One line for logs: what was read.
    pub(crate) description: String,
}

impl FileCorpus {
    /// Read and tokenize `source`, check ids against `vocab_size` and split it.
    pub(crate) fn open(
        source: &str,
        tokenizer: &Tokenizer,
        vocab_size: usize,
        val_fraction: f64,
        seq_len: usize,
    ) -> Result<FileCorpus> {
        let path = Path::new(source);
        let meta = std::fs::metadata(path).map_err(|e| {
            Error::Data(format!(
                "data.source = {source}: cannot open it ({e}); give an existing text file, a directory of text \
                 files, a .u16 token file, or \"synthetic\""
            ))
        })?;
        let tok_name = match tokenizer {
            Tokenizer::Byte => "byte tokenizer",
            Tokenizer::Hf(_) => "Hugging Face tokenizer",
        };
        let (tokens, what) = if meta.is_dir() {
            let (tokens, files) = read_dir_tokens(path, tokenizer, vocab_size)?;
            (tokens, format!("text directory {source} ({files} files, {tok_name})"))
        } else if source.ends_with(".u16") {
            let tokens = read_u16(path, vocab_size)?;
            (tokens, format!("token file {source} (u16)"))
        } else {
            let bytes = read_nonempty(path)?;
            let tokens = tokenizer.encode_bytes(&bytes, source)?;
            check_ids(&tokens, vocab_size, source)?;
            (tokens, format!("text file {source} ({tok_name})"))
        };
        let n = tokens.len();
        let n_val = val_len(n, val_fraction);
        let n_train = n - n_val;
        let need = seq_len + 1;
        if n_train < need || n_val < need {
            return Err(Error::Data(format!(
                "{source} has {n} tokens, split into {n_train} train and {n_val} validation tokens \
                 (data.val_fraction = {val_fraction}); each split needs at least train.seq_len + 1 = {need} tokens, \
                 so at least {} tokens are needed; use more text, lower train.seq_len, or adjust data.val_fraction",
                min_total(need, val_fraction)
            )));
        }
        Ok(FileCorpus { tokens, n_train, description: format!("{what}: {n_train} train + {n_val} val tokens") })
    }

    /// Tokens in the training split.
    pub(crate) fn train_tokens(&self) -> usize {
        self.n_train
    }

    /// Tokens in the validation split.
    pub(crate) fn val_tokens(&self) -> usize {
        self.tokens.len() - self.n_train
    }

    /// Entropy (nats) of the training split's empirical token distribution.
    pub(crate) fn train_unigram_entropy(&self) -> f64 {
        let train = &self.tokens[..self.n_train];
        let mut counts = vec![0u64; train.iter().map(|&t| t as usize + 1).max().unwrap_or(0)];
        for &t in train {
            counts[t as usize] += 1;
        }
        let n = train.len() as f64;
        -counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / n;
                p * p.ln()
            })
            .sum::<f64>()
    }

    /// Training windows: `batch` uniform start offsets drawn from `rng`
    /// (seeded by `(train.seed, step, micro)`); `x`, `y` are `[batch, seq]`.
    pub(crate) fn train_batch(&self, rng: &mut ChaCha8Rng, batch: usize, seq: usize, x: &mut [u32], y: &mut [u32]) {
        assert!(
            seq < self.n_train,
            "train_batch: seq = {seq} needs {} training tokens, the split has {}",
            seq + 1,
            self.n_train
        );
        for row in 0..batch {
            let start = rng.random_range(0..=self.n_train - seq - 1);
            self.copy_window(start, seq, row, x, y);
        }
    }

    /// Validation batch `index`: consecutive non-overlapping windows (module docs).
    pub(crate) fn val_batch(&self, index: u64, batch: usize, seq: usize, x: &mut [u32], y: &mut [u32]) {
        let n_val = self.val_tokens();
        assert!(
            seq >= 1 && seq < n_val,
            "val_batch: seq = {seq} needs {} validation tokens, the split has {n_val}",
            seq + 1
        );
        let windows = ((n_val - 1) / seq) as u128;
        for row in 0..batch {
            let w = (index as u128 * batch as u128 + row as u128) % windows;
            self.copy_window(self.n_train + w as usize * seq, seq, row, x, y);
        }
    }

    fn copy_window(&self, start: usize, seq: usize, row: usize, x: &mut [u32], y: &mut [u32]) {
        x[row * seq..(row + 1) * seq].copy_from_slice(&self.tokens[start..start + seq]);
        y[row * seq..(row + 1) * seq].copy_from_slice(&self.tokens[start + 1..start + seq + 1]);
    }
}

/// Validation tokens of an `n`-token stream: `ceil(val_fraction * n)`. The
/// product is shrunk by a relative 1e-12 first, so that a product that is an
/// integer up to rounding (`0.7 * 10 = 7.000000000000001`) is not rounded up
/// past it.
fn val_len(n: usize, val_fraction: f64) -> usize {
    ((val_fraction * n as f64 * (1.0 - 1e-12)).ceil() as usize).min(n)
}

/// The smallest corpus whose both splits hold `need` tokens (`0 < val_fraction < 1`).
fn min_total(need: usize, val_fraction: f64) -> usize {
    let fits = |n: usize| {
        let v = val_len(n, val_fraction);
        v >= need && n - v >= need
    };
    let guess = ((need - 1) as f64 / val_fraction.min(1.0 - val_fraction)).floor() as usize;
    let mut n = guess.saturating_sub(2).max(2 * need);
    while !fits(n) {
        n += 1;
    }
    n
}

/// Read a file that must not be empty.
fn read_nonempty(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.is_empty() {
        return Err(Error::Data(format!("{} is empty; point data.source at a file with text in it", path.display())));
    }
    Ok(bytes)
}

/// Read a `.u16` token file (little-endian ids, no header).
fn read_u16(path: &Path, vocab_size: usize) -> Result<Vec<u32>> {
    let bytes = read_nonempty(path)?;
    let origin = path.display().to_string();
    if bytes.len() % 2 != 0 {
        return Err(Error::Data(format!(
            "{origin} has {} bytes, an odd number, so it is not a sequence of u16 token ids; the file is truncated \
             or not a .u16 token file (write ids as little-endian u16, e.g. numpy `ids.astype('<u2').tofile(path)`)",
            bytes.len()
        )));
    }
    let tokens: Vec<u32> = bytes.chunks_exact(2).map(|c| u32::from(u16::from_le_bytes([c[0], c[1]]))).collect();
    check_ids(&tokens, vocab_size, &origin)?;
    Ok(tokens)
}

/// Tokenize every usable file under `dir` (module docs); returns the tokens and the file count.
fn read_dir_tokens(dir: &Path, tokenizer: &Tokenizer, vocab_size: usize) -> Result<(Vec<u32>, usize)> {
    let mut files = Vec::new();
    collect_files(dir, &mut files)?;
    files.sort();
    let mut tokens = Vec::new();
    let mut used = 0;
    for file in &files {
        let origin = file.display().to_string();
        if origin.ends_with(".u16") {
            return Err(Error::Data(format!(
                "directory {} contains the token file {origin}; a directory is read as text, so point data.source \
                 at the .u16 file itself or move it out of the directory",
                dir.display()
            )));
        }
        let bytes = std::fs::read(file).map_err(|e| Error::io(file, e))?;
        if bytes.is_empty() {
            continue;
        }
        let ids = tokenizer.encode_bytes(&bytes, &origin)?;
        check_ids(&ids, vocab_size, &origin)?;
        if ids.is_empty() {
            continue;
        }
        let newline = u32::from(b'\n');
        if matches!(tokenizer, Tokenizer::Byte) && tokens.last().is_some_and(|&t| t != newline) {
            tokens.push(newline);
        }
        tokens.extend_from_slice(&ids);
        used += 1;
    }
    if used == 0 {
        return Err(Error::Data(format!(
            "directory {} has no usable files ({} non-hidden regular files found, all empty); put text files in it \
             (hidden files and directories, starting with '.', are skipped)",
            dir.display(),
            files.len()
        )));
    }
    Ok((tokens, used))
}

/// Every non-hidden regular file under `dir`, recursively.
fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| Error::io(&path, e))?;
        if kind.is_dir() {
            collect_files(&path, out)?;
        } else if kind.is_file() || (kind.is_symlink() && path.is_file()) {
            out.push(path);
        }
    }
    Ok(())
}

/// Every id must index a row of the embedding.
fn check_ids(ids: &[u32], vocab_size: usize, origin: &str) -> Result<()> {
    if let Some(pos) = ids.iter().position(|&t| t as usize >= vocab_size) {
        let max = ids.iter().copied().max().unwrap_or(0);
        return Err(Error::Data(format!(
            "{origin} contains token id {} (token {pos}), but model.vocab_size = {vocab_size}; every id must be below \
             it: raise model.vocab_size to at least {} (the largest id in the file plus one)",
            ids[pos],
            max as u64 + 1
        )));
    }
    Ok(())
}
