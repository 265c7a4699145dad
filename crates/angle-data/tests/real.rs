//! The real STS-B files and the all-MiniLM-L6-v2 tokenizer from `../shared`.

use std::path::PathBuf;

use angle_data::{
    BatchConfig, Dataset, DuplicatePolicy, Format, PackedBatch, Prompts, ReadOptions, TextTokenizer,
    read_file,
};

fn shared() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    assert!(p.is_dir(), "shared material missing: {}", p.display());
    p
}

fn stsb(name: &str) -> PathBuf {
    let p = shared().join("data/stsb").join(name);
    assert!(p.is_file(), "STS-B file missing: {}", p.display());
    p
}

fn tokenizer(max_len: usize) -> TextTokenizer {
    let p = shared().join("models/all-MiniLM-L6-v2/tokenizer.json");
    assert!(p.is_file(), "tokenizer missing: {}", p.display());
    TextTokenizer::from_file(p, max_len).unwrap()
}

#[test]
fn stsb_files_load_with_expected_counts() {
    for (split, n) in [("train", 5749), ("dev", 1500), ("test", 1379)] {
        for lang in ["en", "zh"] {
            let name = format!("stsb-{lang}-{split}.csv");
            // Detection alone (no header, 3 fields) and the explicit STS-B options must agree.
            let auto = read_file(stsb(&name), &ReadOptions::default()).unwrap();
            let explicit = read_file(stsb(&name), &ReadOptions::stsb_csv()).unwrap();
            assert_eq!(auto.format, Format::A);
            assert_eq!(auto.len(), n, "{name}");
            assert_eq!(auto.examples, explicit.examples, "{name}");
            assert!(auto.skipped.is_empty());
            assert!(
                auto.examples
                    .iter()
                    .all(|e| (0.0..=5.0).contains(&e.label.unwrap()))
            );
        }
    }
    let train = read_file(stsb("stsb-en-train.csv"), &ReadOptions::stsb_csv()).unwrap();
    let first = &train.examples[0];
    assert_eq!(first.line, 1);
    assert_eq!(
        first.texts,
        vec![
            vec!["A plane is taking off.".to_string()],
            vec!["An air plane is taking off.".to_string()]
        ]
    );
    assert_eq!(first.label, Some(5.0));
}

#[test]
fn token_ids_match_the_tokenizer_with_special_tokens() {
    let tok = tokenizer(64);
    // Ids of bert-base-uncased's vocabulary (all-MiniLM-L6-v2 uses it): [CLS]=101, [SEP]=102.
    let e = tok.encode("Hello world!").unwrap();
    assert_eq!(e.ids, vec![101, 7592, 2088, 999, 102]);
    assert_eq!(e.type_ids, vec![0; 5]);
    assert!(!e.truncated);
    let e = tok.encode("A plane is taking off.").unwrap();
    assert_eq!(e.ids, vec![101, 1037, 4946, 2003, 2635, 2125, 1012, 102]);

    // The batch API gives what the single API gives, with no padding even though the file pads to 128.
    let texts: Vec<String> = ["Hello world!", "A plane is taking off.", "x"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let batch = tok.encode_batch(&texts).unwrap();
    for (t, b) in texts.iter().zip(&batch) {
        assert_eq!(&tok.encode(t).unwrap(), b);
    }
    assert_eq!(batch[2].ids.len(), 3);
    assert_eq!(tok.pad_id(), 0);
}

#[test]
fn truncation_keeps_special_tokens() {
    let long = "word ".repeat(100);
    let full = tokenizer(512).encode(&long).unwrap();
    assert_eq!(full.ids.len(), 102);
    let cut = tokenizer(16).encode(&long).unwrap();
    assert!(cut.truncated);
    assert_eq!(cut.ids.len(), 16);
    assert_eq!(cut.ids[0], 101);
    assert_eq!(cut.ids[15], 102);
    assert_eq!(&cut.ids[1..15], &full.ids[1..15]);
    assert!(TextTokenizer::from_file(shared().join("models/all-MiniLM-L6-v2"), 2).is_err());
}

#[test]
fn stsb_train_batches_in_zigzag_layout() {
    let tok = tokenizer(64);
    let data = Dataset::load(
        stsb("stsb-en-train.csv"),
        &ReadOptions::stsb_csv(),
        &Prompts::default(),
        &tok,
    )
    .unwrap();
    assert_eq!(data.len(), 5749);
    let config = BatchConfig::train(32, 42);
    let plan = data.plan_epoch(&config, 0).unwrap();
    assert_eq!(plan.len(), 180);
    assert_eq!(data.batches_per_epoch(&config), 180);
    let mut batch = PackedBatch::default();
    let mut seen = vec![0u32; data.len()];
    for i in 0..plan.len() {
        data.fill_batch(&plan, i, &mut batch).unwrap();
        assert_eq!(batch.rows(), 2 * batch.examples.len());
        assert_eq!(batch.labels.len(), batch.examples.len());
        assert_eq!(*batch.seq_offsets.last().unwrap(), batch.input_ids.len());
        assert!(batch.max_row_len() <= 64);
        for (k, &e) in batch.examples.iter().enumerate() {
            seen[e as usize] += 1;
            assert_eq!(batch.labels[k], data.labels()[e as usize]);
            // Row 2k starts with [CLS] and ends with [SEP].
            let r = batch.seq_offsets[2 * k]..batch.seq_offsets[2 * k + 1];
            assert_eq!(batch.input_ids[r.start], 101);
            assert_eq!(batch.input_ids[r.end - 1], 102);
        }
    }
    assert!(seen.iter().all(|&n| n == 1), "every pair exactly once per epoch");
    let _ = DuplicatePolicy::Mask;
}
