//! Format U (unsupervised): a plain file of one sentence per line, a `text` column in CSV / JSONL, batches of two
//! rows per text, never detected from the columns, and the errors when the columns do not fit.

use std::path::{Path, PathBuf};

use angle_data::{
    BatchConfig, Dataset, DuplicatePolicy, Format, PackedBatch, Prompts, ReadOptions, TextTokenizer,
    read_file,
};

fn tokenizer() -> TextTokenizer {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/models/all-MiniLM-L6-v2/tokenizer.json");
    assert!(p.is_file(), "tokenizer missing: {}", p.display());
    TextTokenizer::from_file(p, 32).unwrap()
}

fn unsupervised() -> ReadOptions {
    ReadOptions {
        format: Some(Format::U),
        ..ReadOptions::default()
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const SENTENCES: &str =
    "A man is playing a guitar.\nA woman slices an onion.\nA dog runs, fast.\nA man is playing a guitar.\n";

#[test]
fn a_plain_text_file_csv_and_jsonl_give_the_same_texts() {
    let tmp = tempfile::tempdir().unwrap();
    let txt = write(tmp.path(), "s.txt", SENTENCES);
    let csv = write(
        tmp.path(),
        "s.csv",
        "text\n\"A man is playing a guitar.\"\nA woman slices an onion.\n\"A dog runs, fast.\"\nA man is playing a guitar.\n",
    );
    let jsonl = write(
        tmp.path(),
        "s.jsonl",
        &SENTENCES
            .lines()
            .map(|l| format!("{{\"text\": {}, \"id\": 3}}\n", serde_json::to_string(l).unwrap()))
            .collect::<String>(),
    );
    let read = |p: &Path| read_file(p, &unsupervised()).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let (a, b, c) = (read(&txt), read(&csv), read(&jsonl));
    assert_eq!(a.format, Format::U);
    assert_eq!(a.len(), 4);
    assert_eq!(a.examples[2].texts, vec![vec!["A dog runs, fast.".to_string()]]);
    for other in [&b, &c] {
        let texts =
            |d: &angle_data::RawDataset| d.examples.iter().map(|e| e.texts.clone()).collect::<Vec<_>>();
        assert_eq!(texts(other), texts(&a));
    }
}

#[test]
fn batches_hold_two_rows_per_text_and_masks_other_copies_only() {
    let tmp = tempfile::tempdir().unwrap();
    let txt = write(tmp.path(), "s.txt", SENTENCES);
    let data = Dataset::load(&txt, &unsupervised(), &Prompts::default(), &tokenizer()).unwrap();
    assert_eq!((data.format(), data.len()), (Format::U, 4));
    let config = BatchConfig {
        shuffle: false,
        ..BatchConfig::eval(4)
    };
    let plan = data.plan_epoch(&config, 0).unwrap();
    let mut batch = PackedBatch::default();
    data.fill_batch(&plan, 0, &mut batch).unwrap();
    assert_eq!((batch.rows(), batch.rows_per_example), (8, 2));
    assert!(batch.labels.is_empty());
    for k in 0..4 {
        let row = |r: usize| &batch.input_ids[batch.seq_offsets[r]..batch.seq_offsets[r + 1]];
        assert_eq!(
            row(2 * k),
            row(2 * k + 1),
            "text {k}: the two views hold the same tokens"
        );
        assert_eq!(batch.text_ids[2 * k], batch.text_ids[2 * k + 1]);
    }
    // Texts 0 and 3 are the same sentence: one identity, which the loss masks across texts (not within one).
    assert_eq!(batch.text_ids[0], batch.text_ids[6]);
    assert_ne!(batch.text_ids[0], batch.text_ids[2]);

    // angle-emb's filter_duplicate drops the later copy; a text is never a duplicate of its own second view.
    let drop = BatchConfig {
        duplicates: DuplicatePolicy::Drop,
        ..config
    };
    let plan = data.plan_epoch(&drop, 0).unwrap();
    data.fill_batch(&plan, 0, &mut batch).unwrap();
    assert_eq!((batch.rows(), batch.dropped), (6, 1));
}

#[test]
fn is_never_detected_and_refuses_files_without_a_text_column() {
    let tmp = tempfile::tempdir().unwrap();
    // Without --format U a one-column file is no known layout (never silently unsupervised).
    let txt = write(tmp.path(), "s.txt", SENTENCES);
    let err = read_file(&txt, &ReadOptions::default()).unwrap_err().to_string();
    assert!(err.contains("s.txt"), "{err}");
    let jsonl = write(tmp.path(), "t.jsonl", "{\"text\": \"a\"}\n");
    assert!(read_file(&jsonl, &ReadOptions::default()).is_err());

    // Forced U on a file that has no text column: the error names the file and the columns it has.
    let qp = write(
        tmp.path(),
        "qp.jsonl",
        "{\"query\": \"a\", \"positive\": \"b\"}\n",
    );
    let err = read_file(&qp, &unsupervised()).unwrap_err().to_string();
    assert!(err.contains("qp.jsonl:1") && err.contains("`text`"), "{err}");
    let csv = write(tmp.path(), "qp.csv", "query,positive\na,b\n");
    let err = read_file(&csv, &unsupervised()).unwrap_err().to_string();
    assert!(err.contains("qp.csv"), "{err}");

    // A line with a tab in a plain text file is two fields: named by line, not split silently.
    let tabbed = write(tmp.path(), "tab.txt", "one sentence\ntwo\tparts\n");
    let err = read_file(&tabbed, &unsupervised()).unwrap_err().to_string();
    assert!(err.contains("tab.txt") && err.contains('2'), "{err}");
    // An empty line is skipped by the reader, an empty text field is an error naming its line.
    let blank = write(tmp.path(), "blank.jsonl", "{\"text\": \"a\"}\n{\"text\": \"\"}\n");
    let err = read_file(&blank, &unsupervised()).unwrap_err().to_string();
    assert!(err.contains("blank.jsonl:2"), "{err}");
}

#[test]
fn format_names_parse() {
    assert_eq!("U".parse::<Format>().unwrap(), Format::U);
    assert_eq!("u".parse::<Format>().unwrap(), Format::U);
    let err = "D".parse::<Format>().unwrap_err().to_string();
    assert!(err.contains("U (unsupervised)"), "{err}");
    assert_eq!(
        (Format::U.texts_per_example(), Format::U.rows_per_example()),
        (1, 2)
    );
}
