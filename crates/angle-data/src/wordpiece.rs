//! A fast path for BERT's WordPiece pipeline on ASCII text, exact to `tokenizers`.
//!
//! `tokenizers` runs every text through a general machinery (normalised strings with alignment
//! tracking, offsets, `Encoding` objects): about 75 µs for a 17-word sentence on the machines here,
//! which made tokenisation the whole cost of loading a million-row dataset. For the pipeline
//! BERT-family `tokenizer.json` files spell (`BertNormalizer` with `clean_text`, `BertPreTokenizer`,
//! a `WordPiece` model, a `[CLS] $A [SEP]` template) and an ASCII text, every step reduces to byte
//! tests: the normaliser lowercases (accents, Chinese characters and
//! Unicode whitespace cannot occur), the pre-tokeniser splits on whitespace and isolates each ASCII
//! punctuation byte, and WordPiece is the greedy longest-match over the vocabulary. Anything else
//! (a non-ASCII text, one with a control character other than tab and newline, one containing an added token such as `[MASK]`, another pipeline) goes
//! to `tokenizers` itself, so the result never differs (tests compare both on STS-B and on random
//! text).

use std::collections::HashMap;

use serde_json::Value;

/// BERT's WordPiece pipeline, for ASCII texts; built from `tokenizer.json` when it spells exactly that.
#[derive(Clone, Debug)]
pub struct FastWordPiece {
    vocab: HashMap<String, u32>,
    unk_id: u32,
    prefix: String,
    max_word_chars: usize,
    lowercase: bool,
    /// The template's ids before and after the text (`[CLS]`, `[SEP]`).
    before: Vec<u32>,
    after: Vec<u32>,
    /// Added tokens as `tokenizers` matches them in raw text (`normalized: false`) or in the
    /// lowercased text (`normalized: true`); a text containing one takes the general path.
    added_raw: Vec<String>,
    added_normalized: Vec<String>,
}

/// One text's ids.
pub(crate) struct FastEncoding {
    pub ids: Vec<u32>,
    pub truncated: bool,
}

impl FastWordPiece {
    /// The fast path for this `tokenizer.json`, or `None` when its pipeline is not BERT's exactly.
    pub fn from_json(json: &Value) -> Option<Self> {
        let norm = json.get("normalizer")?;
        if norm.get("type")?.as_str()? != "BertNormalizer" || norm.get("clean_text")?.as_bool() != Some(true)
        {
            return None;
        }
        let lowercase = norm.get("lowercase")?.as_bool()?;
        if json.get("pre_tokenizer")?.get("type")?.as_str()? != "BertPreTokenizer" {
            return None;
        }
        let model = json.get("model")?;
        if model.get("type")?.as_str()? != "WordPiece" {
            return None;
        }
        let vocab: HashMap<String, u32> = model
            .get("vocab")?
            .as_object()?
            .iter()
            .map(|(k, v)| Some((k.clone(), u32::try_from(v.as_u64()?).ok()?)))
            .collect::<Option<_>>()?;
        let unk_id = *vocab.get(model.get("unk_token")?.as_str()?)?;
        let prefix = model.get("continuing_subword_prefix")?.as_str()?.to_string();
        let max_word_chars = usize::try_from(model.get("max_input_chars_per_word")?.as_u64()?).ok()?;
        let (before, after) = template(json.get("post_processor")?)?;
        let (mut added_raw, mut added_normalized) = (Vec::new(), Vec::new());
        for t in json.get("added_tokens")?.as_array()? {
            let content = t.get("content")?.as_str()?;
            if content.is_empty() {
                continue;
            }
            if t.get("normalized").and_then(Value::as_bool).unwrap_or(true) {
                added_normalized.push(if lowercase {
                    content.to_lowercase()
                } else {
                    content.to_string()
                });
            } else {
                added_raw.push(content.to_string());
            }
        }
        Some(FastWordPiece {
            vocab,
            unk_id,
            prefix,
            max_word_chars,
            lowercase,
            before,
            after,
            added_raw,
            added_normalized,
        })
    }

    /// The ids of `text` with the template's special tokens, its content cut to `max_len` tokens in
    /// all (specials included), as `tokenizers`' right truncation does; `None` for a text this path
    /// does not take.
    pub(crate) fn encode(&self, text: &str, max_len: usize) -> Option<FastEncoding> {
        // Other control bytes are dropped by clean_text and could join an added token: rare, general path.
        let plain = |b: &u8| b.is_ascii() && (!b.is_ascii_control() || matches!(b, b'\t' | b'\n' | b'\r'));
        if !text.as_bytes().iter().all(plain) || self.has_added_token(text) {
            return None;
        }
        let room = max_len.checked_sub(self.before.len() + self.after.len())?;
        let mut ids = Vec::with_capacity(self.before.len() + self.after.len() + text.len() / 3);
        ids.extend_from_slice(&self.before);
        let mut word = String::new();
        let mut piece = String::new();
        let mut content = 0usize;
        let mut flush = |word: &mut String, ids: &mut Vec<u32>| {
            if !word.is_empty() {
                content += self.word_pieces(word, &mut piece, ids);
                word.clear();
            }
        };
        for b in text.bytes() {
            let c = char::from(b);
            if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                flush(&mut word, &mut ids);
            } else if c.is_ascii_punctuation() {
                flush(&mut word, &mut ids);
                word.push(c);
                flush(&mut word, &mut ids);
            } else {
                word.push(if self.lowercase { c.to_ascii_lowercase() } else { c });
            }
        }
        flush(&mut word, &mut ids);
        let truncated = content > room;
        ids.truncate(self.before.len() + room.min(content));
        ids.extend_from_slice(&self.after);
        Some(FastEncoding { ids, truncated })
    }

    /// Whether `text` holds an added token, which `tokenizers` splits out before normalising.
    fn has_added_token(&self, text: &str) -> bool {
        if self.added_raw.iter().any(|t| text.contains(t.as_str())) {
            return true;
        }
        if self.added_normalized.is_empty() {
            return false;
        }
        let norm: String = if self.lowercase {
            text.to_ascii_lowercase()
        } else {
            text.to_string()
        };
        self.added_normalized.iter().any(|t| norm.contains(t.as_str()))
    }

    /// Greedy longest-match-first WordPiece of one word into `ids`; the word becomes one unknown
    /// token when it is too long or any of its rest has no piece. Returns how many ids it added.
    fn word_pieces(&self, word: &str, piece: &mut String, ids: &mut Vec<u32>) -> usize {
        if word.len() > self.max_word_chars {
            ids.push(self.unk_id);
            return 1;
        }
        let first = ids.len();
        let mut start = 0;
        while start < word.len() {
            let mut end = word.len();
            let found = loop {
                piece.clear();
                if start > 0 {
                    piece.push_str(&self.prefix);
                }
                piece.push_str(&word[start..end]);
                if let Some(&id) = self.vocab.get(piece.as_str()) {
                    break Some(id);
                }
                end -= 1;
                if end == start {
                    break None;
                }
            };
            match found {
                Some(id) => ids.push(id),
                None => {
                    ids.truncate(first);
                    ids.push(self.unk_id);
                    return 1;
                }
            }
            start = end;
        }
        ids.len() - first
    }
}

/// The ids a post-processor puts before and after a single text: `TemplateProcessing` whose single
/// template is special tokens, `$A`, special tokens (all type id 0), or `BertProcessing`.
fn template(post: &Value) -> Option<(Vec<u32>, Vec<u32>)> {
    match post.get("type")?.as_str()? {
        "BertProcessing" => {
            let id = |k: &str| u32::try_from(post.get(k)?.get(1)?.as_u64()?).ok();
            Some((vec![id("cls")?], vec![id("sep")?]))
        }
        "TemplateProcessing" => {
            let specials = post.get("special_tokens")?;
            let (mut before, mut after, mut seen_a) = (Vec::new(), Vec::new(), false);
            for part in post.get("single")?.as_array()? {
                if let Some(seq) = part.get("Sequence") {
                    if seq.get("id")?.as_str()? != "A" || seq.get("type_id")?.as_u64()? != 0 || seen_a {
                        return None;
                    }
                    seen_a = true;
                } else {
                    let sp = part.get("SpecialToken")?;
                    if sp.get("type_id")?.as_u64()? != 0 {
                        return None;
                    }
                    let ids = specials.get(sp.get("id")?.as_str()?)?.get("ids")?.as_array()?;
                    let side = if seen_a { &mut after } else { &mut before };
                    for id in ids {
                        side.push(u32::try_from(id.as_u64()?).ok()?);
                    }
                }
            }
            seen_a.then_some((before, after))
        }
        _ => None,
    }
}
