//! A tokenised dataset: every distinct text (after its prompt) is tokenised once, up front, in parallel.
//!
//! Memory is what a million-pair file needs and no more: the distinct texts are kept once, back to back in one
//! string (deduplicated through a table of 64-bit hashes, not a second copy of every text), texts are tokenised in
//! chunks of [`ENCODE_CHUNK`] so that only one chunk's `tokenizers::Encoding`s exist at a time, and token type ids
//! are stored only when some are nonzero. [`Dataset::load`] drops the read examples before tokenising.

use std::collections::HashMap;
use std::collections::hash_map::{Entry, RandomState};
use std::hash::{BuildHasher, Hash};
use std::path::{Path, PathBuf};

use crate::error::{SkipCounts, SkippedRow};
use crate::rng::{STREAM_ALTERNATIVE, SplitMix64, derive};
use rayon::prelude::*;

use crate::{
    DataError, Encoded, Format, Prompts, RawDataset, ReadOptions, TextTokenizer, read_file, read_files,
};

/// Texts tokenised together (in parallel) while tokenising a dataset: enough to keep every core busy, few enough that the
/// chunk's `Encoding`s (with their token strings and offsets, ~100 bytes a token) stay in the tens of megabytes.
pub const ENCODE_CHUNK: usize = 16_384;

/// Examples of one file (or of several read as one), tokenised. Cheap to batch: a batch copies token ids out of one
/// contiguous store.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The files, in order, and the number of each one's first example.
    files: Vec<PathBuf>,
    file_starts: Vec<usize>,
    format: Format,
    max_len: usize,
    /// Distinct prompted texts back to back; text `t` is `text_data[text_offsets[t]..text_offsets[t + 1]]`.
    text_data: String,
    text_offsets: Vec<usize>,
    /// Text `t`'s tokens are `tok_ids[tok_offsets[t]..tok_offsets[t + 1]]`.
    tok_ids: Vec<u32>,
    /// Same layout as `tok_ids`; empty when every type id is 0 (single texts always are), `zeros` serving then.
    tok_type_ids: Vec<u32>,
    zeros: Vec<u32>,
    tok_offsets: Vec<usize>,
    /// Per distinct text: the number of its distinct token sequence. Texts that tokenise alike (case, spacing)
    /// share it, as angle-emb's duplicate check compares token ids.
    identity: Vec<u64>,
    /// Example `e`, text slot `s` (of `S = format.texts_per_example()`): its alternatives are
    /// `alternatives[alt_offsets[e * S + s]..alt_offsets[e * S + s + 1]]` (text numbers).
    alt_offsets: Vec<usize>,
    alternatives: Vec<u32>,
    labels: Vec<f32>,
    lines: Vec<u64>,
    truncated: usize,
    skipped: Vec<SkippedRow>,
}

/// Numbers distinct items in order of first appearance, holding only a 64-bit hash and a number per item (the
/// items stay in their caller's store): equal hashes of different items are told apart by `same`, probing the next
/// hash value, so the numbering is exact whatever the hashes.
struct Distinct {
    map: HashMap<u64, u32>,
    state: RandomState,
}

impl Distinct {
    fn with_capacity(n: usize) -> Self {
        Distinct {
            map: HashMap::with_capacity(n),
            state: RandomState::new(),
        }
    }

    /// The number of `item`: an earlier equal item's (`same(n)` says whether item `n` equals it), else `next`.
    fn number<T: Hash + ?Sized>(&mut self, item: &T, next: u32, same: impl Fn(u32) -> bool) -> u32 {
        let mut h = self.state.hash_one(item);
        loop {
            match self.map.entry(h) {
                Entry::Vacant(v) => return *v.insert(next),
                Entry::Occupied(o) if same(*o.get()) => return *o.get(),
                Entry::Occupied(_) => h = h.wrapping_add(1),
            }
        }
    }
}

/// The examples' texts, prompted and numbered, before tokenisation.
struct Indexed {
    files: Vec<PathBuf>,
    file_starts: Vec<usize>,
    format: Format,
    text_data: String,
    text_offsets: Vec<usize>,
    alt_offsets: Vec<usize>,
    alternatives: Vec<u32>,
    labels: Vec<f32>,
    lines: Vec<u64>,
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
        let indexed = index(&raw, prompts)?;
        drop(raw);
        tokenize(indexed, tokenizer)
    }

    /// Reads several files as one dataset ([`read_files`]: the shards of a published dataset, or
    /// [`crate::data_files`] of a folder), then prompts and tokenises them. Every example keeps its file and line
    /// ([`Dataset::source_of`]).
    pub fn load_all(
        paths: &[PathBuf],
        options: &ReadOptions,
        prompts: &Prompts,
        tokenizer: &TextTokenizer,
    ) -> Result<Self, DataError> {
        let raw = read_files(paths, options)?;
        let indexed = index(&raw, prompts)?;
        drop(raw);
        tokenize(indexed, tokenizer)
    }

    /// Prompts and tokenises read examples.
    pub fn new(raw: &RawDataset, prompts: &Prompts, tokenizer: &TextTokenizer) -> Result<Self, DataError> {
        tokenize(index(raw, prompts)?, tokenizer)
    }

    /// The (first) file.
    pub fn path(&self) -> &Path {
        &self.files[0]
    }

    /// Every file the examples came from, in order.
    pub fn paths(&self) -> &[PathBuf] {
        &self.files
    }

    /// The file and 1-based line (parquet: row) of example `example`.
    pub fn source_of(&self, example: usize) -> (&Path, u64) {
        let f = self
            .file_starts
            .partition_point(|&s| s <= example)
            .saturating_sub(1);
        (&self.files[f], self.lines[example])
    }

    /// `file:line` of example `example`, for messages.
    pub fn describe(&self, example: usize) -> String {
        let (path, line) = self.source_of(example);
        format!("{}:{line}", path.display())
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

    /// 1-based line of each example in its file ([`Dataset::source_of`] says which file).
    pub fn lines(&self) -> &[u64] {
        &self.lines
    }

    /// Distinct texts (after prompts) that were tokenised.
    pub fn num_texts(&self) -> usize {
        self.text_offsets.len() - 1
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
        let k = example * self.format.texts_per_example() + slot;
        self.alt_offsets[k + 1] - self.alt_offsets[k]
    }

    /// The text number example `example`'s slot `slot` uses in `epoch`: its only alternative, or one drawn from
    /// (seed, epoch, example, slot), so that the choice is reproducible and a resumed run draws the same.
    pub fn text_of(&self, example: usize, slot: usize, seed: u64, epoch: u64) -> usize {
        let k = example * self.format.texts_per_example() + slot;
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
        &self.text_data[self.text_offsets[text]..self.text_offsets[text + 1]]
    }

    /// Token ids and token type ids of a text number.
    pub fn tokens(&self, text: usize) -> (&[u32], &[u32]) {
        let r = self.tok_offsets[text]..self.tok_offsets[text + 1];
        let types = if self.tok_type_ids.is_empty() {
            &self.zeros[..r.len()]
        } else {
            &self.tok_type_ids[r.clone()]
        };
        (&self.tok_ids[r], types)
    }

    /// The identity of a text number (equal exactly when the token ids are equal).
    pub fn identity(&self, text: usize) -> u64 {
        self.identity[text]
    }

    pub(crate) fn token_len(&self, text: usize) -> usize {
        self.tok_offsets[text + 1] - self.tok_offsets[text]
    }
}

/// Prompts the texts of `raw` and numbers the distinct ones.
fn index(raw: &RawDataset, prompts: &Prompts) -> Result<Indexed, DataError> {
    let format = raw.format;
    let roles = format.text_roles();
    let mut distinct = Distinct::with_capacity(raw.len() * roles.len());
    let mut text_data = String::new();
    let mut text_offsets = vec![0usize];
    let mut alt_offsets = Vec::with_capacity(raw.len() * roles.len() + 1);
    alt_offsets.push(0);
    let mut alternatives = Vec::with_capacity(raw.len() * roles.len());
    let mut labels = Vec::with_capacity(if format.has_label() { raw.len() } else { 0 });
    let mut lines = Vec::with_capacity(raw.len());
    for (i, ex) in raw.examples.iter().enumerate() {
        let at = || format!("{}:{}", raw.file_of(i).display(), ex.line);
        if ex.texts.len() != roles.len() || ex.texts.iter().any(Vec::is_empty) {
            return Err(DataError::Config(format!(
                "{}: example does not have the {} non-empty text fields of format {format:?}",
                at(),
                roles.len()
            )));
        }
        for (&role, alts) in roles.iter().zip(&ex.texts) {
            for text in alts {
                let prompted = prompts.apply(role, text);
                let next = (text_offsets.len() - 1) as u32;
                let t = distinct.number(prompted.as_str(), next, |n| {
                    let n = n as usize;
                    text_data[text_offsets[n]..text_offsets[n + 1]] == *prompted
                });
                if t == next {
                    text_data.push_str(&prompted);
                    text_offsets.push(text_data.len());
                }
                alternatives.push(t);
            }
            alt_offsets.push(alternatives.len());
        }
        if format.has_label() {
            labels.push(
                ex.label.ok_or_else(|| {
                    DataError::Config(format!("{}: format A example without a label", at()))
                })?,
            );
        }
        lines.push(ex.line);
    }
    let (files, file_starts) = raw.files.iter().cloned().unzip();
    Ok(Indexed {
        files,
        file_starts,
        format,
        text_data,
        text_offsets,
        alt_offsets,
        alternatives,
        labels,
        lines,
        skipped: raw.skipped.clone(),
    })
}

/// Tokenises the distinct texts, [`ENCODE_CHUNK`] at a time (each chunk in parallel on rayon's pool), keeping
/// only ids.
fn tokenize(ix: Indexed, tokenizer: &TextTokenizer) -> Result<Dataset, DataError> {
    let n = ix.text_offsets.len() - 1;
    let text = |t: usize| &ix.text_data[ix.text_offsets[t]..ix.text_offsets[t + 1]];
    let mut tok_ids = Vec::new();
    let mut tok_type_ids: Vec<u32> = Vec::new();
    let mut tok_offsets = Vec::with_capacity(n + 1);
    tok_offsets.push(0);
    let mut truncated = 0;
    let mut chunk: Vec<&str> = Vec::with_capacity(ENCODE_CHUNK.min(n));
    for start in (0..n).step_by(ENCODE_CHUNK) {
        chunk.clear();
        chunk.extend((start..n.min(start + ENCODE_CHUNK)).map(text));
        // Our own rayon split, one text per task: the `tokenizers` batch API ran on one core here (2 threads,
        // CPU time = wall time), and each `Encoding` is dropped as soon as its ids are copied.
        let encoded: Vec<Encoded> = chunk
            .par_iter()
            .map(|t| tokenizer.encode(t))
            .collect::<Result<_, _>>()?;
        for e in encoded {
            tok_ids.extend_from_slice(&e.ids);
            let nonzero = e.type_ids.iter().any(|&t| t != 0);
            if nonzero && tok_type_ids.is_empty() {
                // the first nonzero type id: from here on every type id is stored
                tok_type_ids.resize(tok_ids.len() - e.ids.len(), 0);
            }
            if !tok_type_ids.is_empty() || nonzero {
                tok_type_ids.extend_from_slice(&e.type_ids);
            }
            tok_offsets.push(tok_ids.len());
            truncated += usize::from(e.truncated);
        }
    }
    drop(chunk);
    tok_ids.shrink_to_fit();
    tok_type_ids.shrink_to_fit();
    let longest = tok_offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);

    let mut distinct = Distinct::with_capacity(n);
    let mut first_of: Vec<u32> = Vec::new();
    let mut identity = Vec::with_capacity(n);
    let ids = |t: usize| &tok_ids[tok_offsets[t]..tok_offsets[t + 1]];
    for t in 0..n {
        let next = first_of.len() as u32;
        let id = distinct.number(ids(t), next, |k| ids(first_of[k as usize] as usize) == ids(t));
        if id == next {
            first_of.push(t as u32);
        }
        identity.push(u64::from(id));
    }
    drop(distinct);

    Ok(Dataset {
        files: ix.files,
        file_starts: ix.file_starts,
        format: ix.format,
        max_len: tokenizer.max_len(),
        text_data: ix.text_data,
        text_offsets: ix.text_offsets,
        tok_ids,
        tok_type_ids,
        zeros: vec![0; longest],
        tok_offsets,
        identity,
        alt_offsets: ix.alt_offsets,
        alternatives: ix.alternatives,
        labels: ix.labels,
        lines: ix.lines,
        truncated,
        skipped: ix.skipped,
    })
}
