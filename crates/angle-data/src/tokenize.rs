//! Tokenisation with a model's `tokenizer.json`.
//!
//! The file's own padding and truncation are switched off (all-MiniLM-L6-v2's pads every text to 128): padding is
//! the batcher's business (packed batches have none) and truncation is ours, at the requested maximum length with
//! the special tokens kept, exactly as Hugging Face's `truncation=True, max_length=L` does (`[CLS] t1 .. t(L-2)
//! [SEP]` for BERT). Every text is encoded on its own, as angle-emb does.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use tokenizers::{PostProcessor, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::DataError;
use crate::batch::PackedBatch;
use crate::wordpiece::FastWordPiece;

/// One tokenised text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// The text was longer than the maximum length and was cut.
    pub truncated: bool,
}

/// A `tokenizer.json` set up for AnglE: no padding, truncation at `max_len` keeping special tokens.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    max_len: usize,
    pad_id: u32,
    /// Appended to every text after truncation to `max_len - 1` tokens (LLM embedders pool the last token).
    append_eos: Option<u32>,
    /// BERT's WordPiece pipeline for ASCII texts, where the file spells exactly that (same ids, ~10× faster).
    fast: Option<Arc<FastWordPiece>>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("path", &self.path)
            .field("max_len", &self.max_len)
            .field("pad_id", &self.pad_id)
            .field("append_eos", &self.append_eos)
            .field("fast_wordpiece", &self.fast.is_some())
            .finish()
    }
}

impl TextTokenizer {
    /// Loads `tokenizer.json` (give the file, or a model folder holding it).
    pub fn from_file(path: impl AsRef<Path>, max_len: usize) -> Result<Self, DataError> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path.push("tokenizer.json");
        }
        let err = |message: String, path: &Path| DataError::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        let mut inner = Tokenizer::from_file(&path).map_err(|e| err(e.to_string(), &path))?;
        // The padding id is taken from the file's padding section before it is switched off; `[PAD]` otherwise.
        let pad_id = inner
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| inner.token_to_id("[PAD]"))
            .unwrap_or(0);
        let added = inner.get_post_processor().map_or(0, |p| p.added_tokens(false));
        if max_len <= added {
            return Err(err(
                format!("max length {max_len} leaves no room for text beside the {added} special tokens"),
                &path,
            ));
        }
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| err(e.to_string(), &path))?;
        let fast = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .and_then(|json| FastWordPiece::from_json(&json))
            .map(Arc::new);
        Ok(TextTokenizer {
            inner,
            path,
            max_len,
            pad_id,
            append_eos: None,
            fast,
        })
    }

    /// Appends `eos_id` to every text, after truncating it to `max_len - 1` tokens, as LLM embedders do
    /// (the last token, pooled, is then always the EOS token).
    pub fn with_eos_appended(mut self, eos_id: u32) -> Result<Self, DataError> {
        let max_length = self.max_len - 1;
        let added = self
            .inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        if max_length <= added {
            return Err(DataError::Tokenizer {
                path: self.path.clone(),
                message: format!("max length {} leaves no room for text beside EOS", self.max_len),
            });
        }
        let set = self.inner.with_truncation(Some(TruncationParams {
            direction: TruncationDirection::Right,
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        }));
        if let Err(e) = set {
            return Err(self.error(e));
        }
        self.append_eos = Some(eos_id);
        Ok(self)
    }

    /// The id of the EOS token a model folder names: `tokenizer_config.json`'s `eos_token` (a string or
    /// `{"content": ...}`), looked up in this tokenizer.
    pub fn eos_id_from(&self, dir: &Path) -> Result<u32, DataError> {
        let p = dir.join("tokenizer_config.json");
        let err = |message: String| DataError::Tokenizer {
            path: p.clone(),
            message,
        };
        let text = std::fs::read_to_string(&p).map_err(|e| err(format!("cannot read it: {e}")))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        let name = match v.get("eos_token") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(o) => match o.get("content").and_then(|c| c.as_str()) {
                Some(s) => s.to_string(),
                None => return Err(err("eos_token is neither a string nor {\"content\": ...}".into())),
            },
            None => return Err(err("no eos_token: --append-eos needs one".into())),
        };
        self.inner
            .token_to_id(&name)
            .ok_or_else(|| err(format!("eos_token {name:?} is not in {}", self.path.display())))
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The id padded positions get in [`crate::PaddedBatch`] (the file's padding token).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying `tokenizers` tokenizer (padding and truncation as set here).
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Whether ASCII texts take the fast WordPiece path ([`crate::wordpiece`]) rather than `tokenizers`.
    pub fn has_fast_path(&self) -> bool {
        self.fast.is_some()
    }

    pub fn encode(&self, text: &str) -> Result<Encoded, DataError> {
        let fast = self.fast.as_ref().and_then(|f| {
            let cap = self.max_len - usize::from(self.append_eos.is_some());
            f.encode(text, cap)
        });
        if let Some(e) = fast {
            let mut out = Encoded {
                type_ids: vec![0; e.ids.len()],
                ids: e.ids,
                truncated: e.truncated,
            };
            if let Some(eos) = self.append_eos {
                out.ids.push(eos);
                out.type_ids.push(0);
            }
            return Ok(out);
        }
        self.encode_general(text)
    }

    /// `text` through `tokenizers` itself, whatever the fast path would do.
    pub fn encode_general(&self, text: &str) -> Result<Encoded, DataError> {
        // `encode_fast` skips the character offsets, which angle never reads.
        let enc = self.inner.encode_fast(text, true).map_err(|e| self.error(e))?;
        Ok(self.finish(&enc))
    }

    /// Encodes many texts in parallel (one text per task on rayon's pool), each on its own.
    pub fn encode_batch<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Vec<Encoded>, DataError> {
        texts.par_iter().map(|t| self.encode(t.as_ref())).collect()
    }

    /// Texts to one packed batch, rows in the given order (for encoding and evaluation; labels empty, text ids the
    /// row numbers).
    pub fn encode_packed(&self, texts: &[String]) -> Result<PackedBatch, DataError> {
        let encs = self.encode_batch(texts)?;
        let mut batch = PackedBatch::default();
        for (i, e) in encs.iter().enumerate() {
            batch.push_row(&e.ids, &e.type_ids, i as u64);
        }
        Ok(batch)
    }

    fn finish(&self, e: &tokenizers::Encoding) -> Encoded {
        let mut out = to_encoded(e);
        if let Some(eos) = self.append_eos {
            out.ids.push(eos);
            out.type_ids.push(0);
        }
        out
    }

    fn error(&self, e: tokenizers::Error) -> DataError {
        DataError::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }
}

fn to_encoded(e: &tokenizers::Encoding) -> Encoded {
    Encoded {
        ids: e.get_ids().to_vec(),
        type_ids: e.get_type_ids().to_vec(),
        truncated: !e.get_overflowing().is_empty(),
    }
}
