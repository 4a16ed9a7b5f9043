//! Data sources: the synthetic multi-domain Markov corpus ([`synthetic`]) and
//! file corpora ([`text`]: a text file, a directory of text files, a `.u16`
//! token file), behind one [`Dataset`] that fills micro-batches.
//!
//! Batches are pure functions of their arguments: training micro-batch
//! `(step, micro)` depends only on `train.seed`, `step` and `micro` (so a
//! resumed run sees the same tokens), and validation batch `index` only on
//! `index`, from a stream disjoint from training.
//!
//! The source name `"synthetic"` is reserved; a file of that name is read as
//! `./synthetic`.

pub mod synthetic;
pub mod text;
pub mod tokenizer;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::config::Config;
use crate::error::{Error, Result};

pub use synthetic::SyntheticSource;
pub use tokenizer::Tokenizer;

use text::FileCorpus;

/// First word of the seeds of the synthetic sources themselves.
const SOURCE_STREAM: u64 = 0x534f_5552;
/// First word of the seeds of training batches.
const TRAIN_STREAM: u64 = 0x5452_4149;
/// First word of the seeds of validation batches.
const VAL_STREAM: u64 = 0x5641_4c49;

/// What a data source is, for logs, metrics and the README.
#[derive(Clone, Debug, PartialEq)]
pub struct DataInfo {
    /// One line, e.g. `synthetic: 8 domains x 32 tokens, order-2 Markov, branching 3, teleport 0.02`.
    pub description: String,
    /// Tokens in the training split; `None` for the (unbounded) synthetic corpus.
    pub train_tokens: Option<u64>,
    /// Tokens in the validation split; `None` for the synthetic corpus.
    pub val_tokens: Option<u64>,
    /// Exact optimal mean cross-entropy (nats/token) over windows of
    /// `train.seq_len` predictions; synthetic only.
    pub loss_floor: Option<f64>,
    /// Entropy rate (nats/token); synthetic only.
    pub entropy_rate: Option<f64>,
    /// Entropy of the marginal token distribution (nats); for files, of the train split.
    pub unigram_entropy: Option<f64>,
    /// `H(X_{t+1} | X_t)` (nats): what a bigram model can reach; synthetic only.
    pub bigram_entropy: Option<f64>,
}

#[derive(Debug)]
enum Source {
    Synthetic(SyntheticSource),
    Files(FileCorpus),
}

/// An opened data source that fills training and validation micro-batches.
#[derive(Debug)]
pub struct Dataset {
    source: Source,
    seed: u64,
    info: DataInfo,
    tokenizer: Tokenizer,
}

impl Dataset {
    /// Open `cfg.data`: `"synthetic"`, a text file, a directory of text files or
    /// a `.u16` token file. Checks that every token id is below
    /// `model.vocab_size` and that each split holds at least one window of
    /// `train.seq_len + 1` tokens. Batches are seeded by `train.seed`; the
    /// synthetic loss floor is for windows of `train.seq_len`.
    pub fn open(cfg: &Config) -> Result<Dataset> {
        let seq = cfg.train.seq_len;
        let vocab = cfg.model.vocab_size;
        if seq == 0 {
            return Err(Error::Config("train.seq_len = 0; it must be at least 1".into()));
        }
        let d = &cfg.data;
        if d.source == "synthetic" {
            let src = SyntheticSource::new(&d.synthetic)?;
            let ids = src.domains() * src.domain_vocab();
            if ids > vocab {
                return Err(Error::Data(format!(
                    "the synthetic corpus (data.synthetic.domains * domain_vocab = {} * {}) uses token ids up to {}, \
                     but model.vocab_size = {vocab}; raise model.vocab_size to at least {ids} or shrink the corpus",
                    src.domains(),
                    src.domain_vocab(),
                    ids - 1
                )));
            }
            let s = &d.synthetic;
            let info = DataInfo {
                description: format!(
                    "synthetic: {} domains x {} tokens, order-{} Markov, branching {}, pool {}, teleport {}, seed {}",
                    s.domains,
                    s.domain_vocab,
                    s.order,
                    s.branching,
                    if s.pool == 0 { s.domain_vocab } else { s.pool },
                    s.teleport,
                    s.seed
                ),
                train_tokens: None,
                val_tokens: None,
                loss_floor: Some(src.loss_floor(seq)),
                entropy_rate: Some(src.entropy_rate()),
                unigram_entropy: Some(src.unigram_entropy()),
                bigram_entropy: Some(src.bigram_entropy()),
            };
            return Ok(Dataset {
                source: Source::Synthetic(src),
                seed: cfg.train.seed,
                info,
                tokenizer: Tokenizer::Byte,
            });
        }
        if !(d.val_fraction > 0.0 && d.val_fraction < 1.0) {
            return Err(Error::Config(format!(
                "data.val_fraction = {} must be in (0, 1) (0.1 holds out the last 10%)",
                d.val_fraction
            )));
        }
        let tokenizer = Tokenizer::from_spec(&d.tokenizer)?;
        if let Tokenizer::Hf(_) = tokenizer {
            let tv = tokenizer.vocab_size();
            if tv > vocab {
                return Err(Error::Data(format!(
                    "tokenizer {} has a vocabulary of {tv} ids, more than model.vocab_size = {vocab}; \
                     set model.vocab_size to at least {tv}",
                    d.tokenizer
                )));
            }
        }
        let corpus = FileCorpus::open(&d.source, &tokenizer, vocab, d.val_fraction, seq)?;
        let info = DataInfo {
            description: corpus.description.clone(),
            train_tokens: Some(corpus.train_tokens() as u64),
            val_tokens: Some(corpus.val_tokens() as u64),
            loss_floor: None,
            entropy_rate: None,
            unigram_entropy: Some(corpus.train_unigram_entropy()),
            bigram_entropy: None,
        };
        Ok(Dataset { source: Source::Files(corpus), seed: cfg.train.seed, info, tokenizer })
    }

    /// What this source is.
    pub fn info(&self) -> &DataInfo {
        &self.info
    }

    /// Training micro-batch `(step, micro)`.
    ///
    /// # Shapes
    /// `x`, `y`: `[batch, seq]` row-major; `y[i]` is the token after `x[i]`.
    ///
    /// A pure function of `(train.seed, step, micro)`.
    ///
    /// # Panics
    /// If `x` or `y` does not hold `batch * seq` tokens, or, for a file corpus,
    /// if the training split is shorter than `seq + 1` tokens (`open` checked
    /// that it holds `train.seq_len + 1`).
    pub fn train_batch(&self, step: u64, micro: u64, batch: usize, seq: usize, x: &mut [u32], y: &mut [u32]) {
        check_shapes(batch, seq, x, y);
        match &self.source {
            Source::Synthetic(src) => {
                let mut buf = vec![0u32; seq + 1];
                for row in 0..batch {
                    let parts = [TRAIN_STREAM, self.seed, step, micro, row as u64];
                    let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(&parts));
                    src.sample(&mut rng, &mut buf);
                    x[row * seq..(row + 1) * seq].copy_from_slice(&buf[..seq]);
                    y[row * seq..(row + 1) * seq].copy_from_slice(&buf[1..]);
                }
            }
            Source::Files(c) => {
                let parts = [TRAIN_STREAM, self.seed, step, micro];
                let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(&parts));
                c.train_batch(&mut rng, batch, seq, x, y);
            }
        }
    }

    /// Validation micro-batch `index` (0, 1, 2, ...): deterministic and
    /// independent of training.
    ///
    /// # Shapes
    /// `x`, `y`: `[batch, seq]` row-major; `y[i]` is the token after `x[i]`.
    ///
    /// # Panics
    /// As [`Dataset::train_batch`], for the validation split.
    pub fn val_batch(&self, index: u64, batch: usize, seq: usize, x: &mut [u32], y: &mut [u32]) {
        check_shapes(batch, seq, x, y);
        match &self.source {
            Source::Synthetic(src) => {
                let mut buf = vec![0u32; seq + 1];
                for row in 0..batch {
                    let parts = [VAL_STREAM, self.seed, index, row as u64];
                    let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(&parts));
                    src.sample(&mut rng, &mut buf);
                    x[row * seq..(row + 1) * seq].copy_from_slice(&buf[..seq]);
                    y[row * seq..(row + 1) * seq].copy_from_slice(&buf[1..]);
                }
            }
            Source::Files(c) => c.val_batch(index, batch, seq, x, y),
        }
    }

    /// The tokenizer, for decoding samples (`Byte` for the synthetic corpus,
    /// whose ids are not text).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The synthetic source (the true model), if this is the synthetic corpus.
    pub fn synthetic(&self) -> Option<&SyntheticSource> {
        match &self.source {
            Source::Synthetic(src) => Some(src),
            Source::Files(_) => None,
        }
    }

    /// The synthetic domain owning `token`; `None` for file corpora and for ids
    /// outside every domain.
    pub fn domain_of(&self, token: u32) -> Option<usize> {
        self.synthetic().and_then(|src| src.domain_of(token))
    }
}

fn check_shapes(batch: usize, seq: usize, x: &[u32], y: &[u32]) {
    assert!(
        x.len() == batch * seq && y.len() == batch * seq,
        "batch buffers must hold batch * seq = {} tokens, got x: {}, y: {}",
        batch * seq,
        x.len(),
        y.len()
    );
}

/// SplitMix64 finalizer: a bijection on u64 with good avalanche.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Mix a tuple of words into one seed; distinct tuples give unrelated seeds.
fn mix_seed(parts: &[u64]) -> u64 {
    parts.iter().fold(0x6a09_e667_f3bc_c908, |h, &p| splitmix64(h ^ p))
}
