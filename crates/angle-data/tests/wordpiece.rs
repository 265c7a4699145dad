//! The fast WordPiece path gives exactly the ids, type ids and truncation flags of `tokenizers`: on every
//! STS-B sentence (English and Chinese), at several maximum lengths, with `--append-eos`, and on random text
//! built to reach every branch (punctuation, control bytes, added tokens, over-long words, unknown pieces).

use std::path::PathBuf;

use angle_data::TextTokenizer;
use proptest::prelude::*;

fn shared() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    assert!(p.is_dir(), "shared material missing: {}", p.display());
    p
}

fn minilm(max_len: usize) -> TextTokenizer {
    let t = TextTokenizer::from_file(shared().join("models/all-MiniLM-L6-v2"), max_len).unwrap();
    assert!(t.has_fast_path(), "MiniLM's tokenizer.json is BERT's pipeline");
    t
}

fn stsb_sentences() -> Vec<String> {
    let mut out = Vec::new();
    for lang in ["en", "zh"] {
        for split in ["train", "dev", "test"] {
            let p = shared().join(format!("data/stsb/stsb-{lang}-{split}.csv"));
            let mut r = csv::Reader::from_path(&p).unwrap();
            for rec in r.records() {
                let rec = rec.unwrap();
                out.extend([rec[0].to_string(), rec[1].to_string()]);
            }
        }
    }
    assert!(out.len() > 20_000, "{} sentences", out.len());
    out
}

fn assert_same(tok: &TextTokenizer, text: &str) {
    let fast = tok.encode(text).unwrap();
    let general = tok.encode_general(text).unwrap();
    assert_eq!(fast, general, "text {text:?} (max length {})", tok.max_len());
}

#[test]
fn stsb_identical_to_tokenizers() {
    let texts = stsb_sentences();
    for max_len in [3, 16, 64, 512] {
        let tok = minilm(max_len);
        let fast = tok.encode_batch(&texts).unwrap();
        for (t, f) in texts.iter().zip(&fast) {
            assert_eq!(
                f,
                &tok.encode_general(t).unwrap(),
                "text {t:?} (max length {max_len})"
            );
        }
        if max_len == 16 {
            assert!(fast.iter().any(|e| e.truncated) && fast.iter().any(|e| !e.truncated));
        }
    }
}

#[test]
fn append_eos_identical_to_tokenizers() {
    let tok = minilm(12).with_eos_appended(102).unwrap();
    for t in stsb_sentences().iter().step_by(37) {
        assert_same(&tok, t);
    }
}

#[test]
fn other_pipelines_take_the_general_path() {
    for model in ["llama-causal-last", "qwen2-lora-last", "qwen3-bidir-mean"] {
        let p = shared().join("fixtures/decoder").join(model).join("model");
        let tok = TextTokenizer::from_file(&p, 64).unwrap();
        assert!(!tok.has_fast_path(), "{model}: a BPE tokenizer is not WordPiece");
    }
}

#[test]
fn edge_cases() {
    let tok = minilm(64);
    let long = "a".repeat(101);
    let cases = [
        "",
        " ",
        "...",
        "Hello, World!",
        "a [MASK] b",
        "a [mask] b",
        "[CLS][SEP]",
        "x\u{7}y",
        "tab\there\nnew\rline",
        "form\u{c}feed",
        "a\u{0}b",
        long.as_str(),
        "zzzzzzzzqqqqqq",
        "don't won't can't",
        "e-mail@host.example, $3.50 (50%) ~ `code` {a|b} ^_^",
        "naïve café",
        "12345678901234567890",
    ];
    for t in cases {
        assert_same(&tok, t);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn random_text_identical(
        parts in proptest::collection::vec(
            prop_oneof![
                "[a-zA-Z]{1,12}",
                "[0-9]{1,6}",
                "[ \\t\\n\\r]{1,3}",
                "[!-/:-@\\[-`{-~]{1,3}",
                Just("[MASK]".to_string()),
                Just("[UNK]".to_string()),
                Just("\u{1}".to_string()),
                Just("é".to_string()),
                "[a-z]{90,110}",
                "[bcdfghjklmnpqrstvwxz]{4,20}",
            ],
            0..24,
        ),
        which in 0usize..4,
    ) {
        // tokenizers loaded once: reading tokenizer.json per case would dominate the test
        static TOKS: std::sync::OnceLock<Vec<TextTokenizer>> = std::sync::OnceLock::new();
        let tok = &TOKS.get_or_init(|| [3, 7, 16, 40].map(minilm).to_vec())[which];
        let text: String = parts.concat();
        prop_assert_eq!(tok.encode(&text).unwrap(), tok.encode_general(&text).unwrap(), "text {:?}", text);
    }
}
