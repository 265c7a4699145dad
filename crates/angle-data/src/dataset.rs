//! A tokenised dataset: every distinct text (after its prompt) is tokenised once, up front, in parallel.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{SkipCounts, SkippedRow};
use crate::rng::{STREAM_ALTERNATIVE, SplitMix64, derive};
use crate::{DataError, Format, Prompts, RawDataset, ReadOptions, TextTokenizer, read_file};

/// Examples of one file, tokenised. Cheap to batch: a batch copies token ids out of one contiguous store.
#[derive(Clone, Debug)]
pub struct Dataset {
    path: PathBuf,
    format: Format,
    max_len: usize,
    /// Distinct prompted texts; text `t`'s tokens are `tok_ids[tok_offsets[t]..tok_offsets[t + 1]]`.
    texts: Vec<String>,
    tok_ids: Vec<u32>,
    tok_type_ids: Vec<u32>,
    tok_offsets: Vec<usize>,
    /// Per distinct text: the number of its distinct token sequence. Texts that tokenise alike (case, spacing)
    /// share it, as angle-emb's duplicate check compares token ids.
    identity: Vec<u64>,
    /// Example `e`, text slot `s` (of `S = format.rows_per_example()`): its alternatives are
    /// `alternatives[alt_offsets[e * S + s]..alt_offsets[e * S + s + 1]]` (text numbers).
    alt_offsets: Vec<usize>,
    alternatives: Vec<u32>,
    labels: Vec<f32>,
    lines: Vec<u64>,
    truncated: usize,
    skipped: Vec<SkippedRow>,
}

impl Dataset {
    /// Reads, prompts and tokenises a file.
    pub fn load(
        path: impl AsRef<Path>,
        options: &ReadOptions,
        prompts: &Prompts,
        tokenizer: &TextTokenizer,
    ) -> Result<Self, DataError> {
        let raw = read_file(path, options)?;
        Dataset::new(&raw, prompts, tokenizer)
    }

    /// Prompts and tokenises read examples.
    pub fn new(raw: &RawDataset, prompts: &Prompts, tokenizer: &TextTokenizer) -> Result<Self, DataError> {
        let format = raw.format;
        let roles = format.text_roles();
        let mut index: HashMap<String, u32> = HashMap::new();
        let mut texts: Vec<String> = Vec::new();
        let mut alt_offsets = vec![0usize];
        let mut alternatives = Vec::new();
        let mut labels = Vec::with_capacity(raw.len());
        let mut lines = Vec::with_capacity(raw.len());
        for ex in &raw.examples {
            if ex.texts.len() != roles.len() || ex.texts.iter().any(Vec::is_empty) {
                return Err(DataError::Config(format!(
                    "{}:{}: example does not have the {} non-empty text fields of format {format:?}",
                    raw.path.display(),
                    ex.line,
                    roles.len()
                )));
            }
            for (&role, alts) in roles.iter().zip(&ex.texts) {
                for text in alts {
                    let prompted = prompts.apply(role, text);
                    let next = texts.len() as u32;
                    let t = *index.entry(prompted).or_insert_with_key(|k| {
                        texts.push(k.clone());
                        next
                    });
                    alternatives.push(t);
                }
                alt_offsets.push(alternatives.len());
            }
            if format.has_label() {
                labels.push(ex.label.ok_or_else(|| {
                    DataError::Config(format!(
                        "{}:{}: format A example without a label",
                        raw.path.display(),
                        ex.line
                    ))
                })?);
            }
            lines.push(ex.line);
        }

        let encoded = tokenizer.encode_batch(&texts)?;
        let total: usize = encoded.iter().map(|e| e.ids.len()).sum();
        let mut tok_ids = Vec::with_capacity(total);
        let mut tok_type_ids = Vec::with_capacity(total);
        let mut tok_offsets = Vec::with_capacity(texts.len() + 1);
        tok_offsets.push(0);
        let mut identity = Vec::with_capacity(texts.len());
        let mut seqs: HashMap<&[u32], u64> = HashMap::new();
        let mut truncated = 0;
        for e in &encoded {
            tok_ids.extend_from_slice(&e.ids);
            tok_type_ids.extend_from_slice(&e.type_ids);
            tok_offsets.push(tok_ids.len());
            let next = seqs.len() as u64;
            identity.push(*seqs.entry(&e.ids).or_insert(next));
            truncated += usize::from(e.truncated);
        }
        drop(seqs);

        Ok(Dataset {
            path: raw.path.clone(),
            format,
            max_len: tokenizer.max_len(),
            texts,
            tok_ids,
            tok_type_ids,
            tok_offsets,
            identity,
            alt_offsets,
            alternatives,
            labels,
            lines,
            truncated,
            skipped: raw.skipped.clone(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Number of examples (pairs for format A, (query, positive[, negative]) tuples for B/C).
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The maximum length texts were truncated at.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// One label per example (format A); empty for B and C.
    pub fn labels(&self) -> &[f32] {
        &self.labels
    }

    /// 1-based line of each example in its file.
    pub fn lines(&self) -> &[u64] {
        &self.lines
    }

    /// Distinct texts (after prompts) that were tokenised.
    pub fn num_texts(&self) -> usize {
        self.texts.len()
    }

    /// Distinct texts longer than the maximum length (cut to it).
    pub fn truncated_texts(&self) -> usize {
        self.truncated
    }

    /// Tokens of all distinct texts (what one pass over every text would encode).
    pub fn num_tokens(&self) -> usize {
        self.tok_ids.len()
    }

    /// Rows skipped while reading (`skip_invalid`).
    pub fn skipped(&self) -> &[SkippedRow] {
        &self.skipped
    }

    pub fn skip_counts(&self) -> SkipCounts {
        SkipCounts::from_rows(&self.skipped)
    }

    /// How many alternatives (list-valued JSONL field) text slot `slot` of `example` has.
    pub fn num_alternatives(&self, example: usize, slot: usize) -> usize {
        let k = example * self.format.rows_per_example() + slot;
        self.alt_offsets[k + 1] - self.alt_offsets[k]
    }

    /// The text number example `example`'s slot `slot` uses in `epoch`: its only alternative, or one drawn from
    /// (seed, epoch, example, slot), so that the choice is reproducible and a resumed run draws the same.
    pub fn text_of(&self, example: usize, slot: usize, seed: u64, epoch: u64) -> usize {
        let k = example * self.format.rows_per_example() + slot;
        let alts = &self.alternatives[self.alt_offsets[k]..self.alt_offsets[k + 1]];
        let pick = if alts.len() == 1 {
            0
        } else {
            let s = derive(&[seed, STREAM_ALTERNATIVE, epoch, example as u64, slot as u64]);
            SplitMix64::new(s).below(alts.len())
        };
        alts[pick] as usize
    }

    /// The prompted string of a text number.
    pub fn text(&self, text: usize) -> &str {
        &self.texts[text]
    }

    /// Token ids and token type ids of a text number.
    pub fn tokens(&self, text: usize) -> (&[u32], &[u32]) {
        let r = self.tok_offsets[text]..self.tok_offsets[text + 1];
        (&self.tok_ids[r.clone()], &self.tok_type_ids[r])
    }

    /// The identity of a text number (equal exactly when the token ids are equal).
    pub fn identity(&self, text: usize) -> u64 {
        self.identity[text]
    }

    pub(crate) fn token_len(&self, text: usize) -> usize {
        self.tok_offsets[text + 1] - self.tok_offsets[text]
    }
}
