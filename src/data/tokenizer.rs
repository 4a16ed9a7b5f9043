//! Tokenizers: the byte tokenizer (each byte is a token, vocabulary 256) and
//! Hugging Face `tokenizer.json` files through the `tokenizers` crate.
//!
//! Corpora are encoded without special tokens (`add_special_tokens = false`):
//! a training stream is one long run of text, not a set of prompts.

use std::path::Path;

use crate::error::{Error, Result};

/// A tokenizer: `"byte"` or a Hugging Face `tokenizer.json`.
#[derive(Clone, Debug)]
pub enum Tokenizer {
    /// Each byte is one token (ids 0..256).
    Byte,
    /// A Hugging Face tokenizer loaded from a `tokenizer.json`.
    Hf(Box<tokenizers::Tokenizer>),
}

impl Tokenizer {
    /// `"byte"`, or the path of a Hugging Face `tokenizer.json`.
    pub fn from_spec(spec: &str) -> Result<Tokenizer> {
        if spec == "byte" {
            return Ok(Tokenizer::Byte);
        }
        let path = Path::new(spec);
        if !path.is_file() {
            return Err(Error::Data(format!(
                "tokenizer file {spec} does not exist or is not a file; set data.tokenizer = \"byte\" \
                 or to the path of a Hugging Face tokenizer.json"
            )));
        }
        let tok = tokenizers::Tokenizer::from_file(path).map_err(|e| {
            Error::Data(format!(
                "cannot parse tokenizer file {spec}: {e}; it must be a Hugging Face tokenizer.json \
                 (saved by `tokenizer.save(...)` / `save_pretrained`), or set data.tokenizer = \"byte\""
            ))
        })?;
        Ok(Tokenizer::Hf(Box::new(tok)))
    }

    /// Number of embedding rows the ids need: 256 for `Byte`, one more than the
    /// largest id (added tokens included) for a Hugging Face tokenizer.
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Byte => 256,
            Tokenizer::Hf(t) => t.get_vocab(true).values().map(|&id| id as usize + 1).max().unwrap_or(0),
        }
    }

    /// Encode text (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Tokenizer::Byte => Ok(text.bytes().map(u32::from).collect()),
            Tokenizer::Hf(t) => t
                .encode(text, false)
                .map(|enc| enc.get_ids().to_vec())
                .map_err(|e| Error::Data(format!("the tokenizer failed to encode text: {e}"))),
        }
    }

    /// Encode the contents of a file; `origin` names it in errors. `Byte`
    /// accepts any bytes; a Hugging Face tokenizer needs UTF-8.
    pub fn encode_bytes(&self, bytes: &[u8], origin: &str) -> Result<Vec<u32>> {
        match self {
            Tokenizer::Byte => Ok(bytes.iter().map(|&b| u32::from(b)).collect()),
            Tokenizer::Hf(t) => {
                let text = std::str::from_utf8(bytes).map_err(|e| {
                    Error::Data(format!(
                        "{origin} is not valid UTF-8 (first bad byte at offset {}), which a Hugging Face \
                         tokenizer needs; use data.tokenizer = \"byte\" or convert the file to UTF-8 \
                         (e.g. `iconv -f latin1 -t utf-8`)",
                        e.valid_up_to()
                    ))
                })?;
                t.encode(text, false)
                    .map(|enc| enc.get_ids().to_vec())
                    .map_err(|e| Error::Data(format!("the tokenizer failed to encode {origin}: {e}")))
            }
        }
    }

    /// Decode ids to text. Lossy for `Byte` (invalid UTF-8 and ids >= 256
    /// become U+FFFD). With a Hugging Face tokenizer, an id it does not know
    /// (a model's vocabulary can be larger than its tokenizer's) becomes
    /// `<id>`, never silently nothing; a decode failure falls back to the
    /// tokens themselves.
    pub fn decode(&self, ids: &[u32]) -> String {
        match self {
            Tokenizer::Byte => {
                let mut out = String::new();
                let mut run = Vec::new();
                for &id in ids {
                    match u8::try_from(id) {
                        Ok(b) => run.push(b),
                        Err(_) => {
                            out.push_str(&String::from_utf8_lossy(&run));
                            run.clear();
                            out.push(char::REPLACEMENT_CHARACTER);
                        }
                    }
                }
                out.push_str(&String::from_utf8_lossy(&run));
                out
            }
            Tokenizer::Hf(t) => {
                // The crate skips unknown ids: decode each run of known ids,
                // and write the others as `<id>`.
                let mut out = String::new();
                let mut run: Vec<u32> = Vec::new();
                let flush =
                    |run: &mut Vec<u32>, out: &mut String| {
                        if !run.is_empty() {
                            out.push_str(&t.decode(run, false).unwrap_or_else(|_| {
                                run.iter().map(|&id| t.id_to_token(id).unwrap_or_default()).collect()
                            }));
                            run.clear();
                        }
                    };
                for &id in ids {
                    if t.id_to_token(id).is_some() {
                        run.push(id);
                    } else {
                        flush(&mut run, &mut out);
                        out.push_str(&format!("<{id}>"));
                    }
                }
                flush(&mut run, &mut out);
                out
            }
        }
    }
}
