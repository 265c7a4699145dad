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

fn write(dir: &tempfile::TempDir, name: &str, content: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, content).unwrap();
    p
}

fn rows(batch: &PackedBatch) -> Vec<&[u32]> {
    (0..batch.rows())
        .map(|r| &batch.input_ids[batch.seq_offsets[r]..batch.seq_offsets[r + 1]])
        .collect()
}

#[test]
fn formats_b_and_c_interleave_rows_with_their_prompts() {
    let tok = tokenizer(32);
    let dir = tempfile::tempdir().unwrap();
    let prompts =
        Prompts::from_templates(Some("T {text}"), Some("query: {text}"), Some("doc: {text}")).unwrap();
    let p = write(
        &dir,
        "c.jsonl",
        "{\"query\":\"a cat\",\"positive\":\"a kitten\",\"negative\":\"a car\"}\n{\"query\":\"dogs\",\"positive\":\"puppies\",\"negative\":\"logs\"}\n",
    );
    let data = Dataset::load(&p, &ReadOptions::default(), &prompts, &tok).unwrap();
    assert_eq!(data.format(), Format::C);
    let batch = data
        .batch(&data.plan_epoch(&BatchConfig::eval(8), 0).unwrap(), 0)
        .unwrap();
    assert_eq!(
        (batch.rows(), batch.rows_per_example, batch.labels.len()),
        (6, 3, 0)
    );
    let expect = [
        "query: a cat",
        "doc: a kitten",
        "doc: a car",
        "query: dogs",
        "doc: puppies",
        "doc: logs",
    ];
    for (row, text) in rows(&batch).into_iter().zip(expect) {
        assert_eq!(row, tok.encode(text).unwrap().ids.as_slice(), "{text}");
    }
    assert_eq!(batch.token_type_ids, vec![0; batch.tokens()]);

    let p = write(&dir, "b.csv", "query,positive\nq1,p1\nq2,p2\nq3,p3\n");
    let data = Dataset::load(&p, &ReadOptions::default(), &Prompts::default(), &tok).unwrap();
    let plan = data.plan_epoch(&BatchConfig::eval(2), 0).unwrap();
    assert_eq!(plan.len(), 2);
    let b1 = data.batch(&plan, 1).unwrap();
    assert_eq!(
        rows(&b1),
        [
            tok.encode("q3").unwrap().ids.as_slice(),
            tok.encode("p3").unwrap().ids.as_slice()
        ]
    );
    assert!(
        data.batch(&plan, 2).is_err(),
        "out of range is an error, not a panic"
    );
    assert!(data.plan_epoch(&BatchConfig::eval(0), 0).is_err());
}

#[test]
fn duplicates_are_masked_by_identity_or_dropped() {
    let tok = tokenizer(32);
    let dir = tempfile::tempdir().unwrap();
    // "Same text" and "same  TEXT" tokenise alike (lower-casing, whitespace): one identity.
    let p = write(
        &dir,
        "d.csv",
        "text1,text2,label\nSame text,other,1\nthird,same  TEXT,0\nfourth,fifth,1\nsix,six,1\n",
    );
    let data = Dataset::load(&p, &ReadOptions::default(), &Prompts::default(), &tok).unwrap();
    assert_eq!(
        data.num_texts(),
        7,
        "distinct strings; identities are per token sequence"
    );
    let mut config = BatchConfig::eval(4);
    let plan = data.plan_epoch(&config, 0).unwrap();
    let masked = data.batch(&plan, 0).unwrap();
    assert_eq!(masked.rows(), 8);
    let ids = &masked.text_ids;
    assert_eq!(ids[0], ids[3]);
    assert_eq!(ids[6], ids[7]);
    let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), 6);

    config.duplicates = DuplicatePolicy::Drop;
    let plan = data.plan_epoch(&config, 0).unwrap();
    let dropped = data.batch(&plan, 0).unwrap();
    // Pair 1 repeats pair 0's text: dropped. Pair 3 repeats only itself: kept.
    assert_eq!(dropped.examples, [0, 2, 3]);
    assert_eq!(
        (dropped.dropped, dropped.rows(), dropped.labels),
        (1, 6, vec![1.0, 1.0, 1.0])
    );
}

#[test]
fn list_fields_are_drawn_per_epoch_from_the_seed() {
    let tok = tokenizer(32);
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "l.jsonl",
        "{\"query\":\"q\",\"positive\":[\"p one\",\"p two\",\"p three\",\"p four\"]}\n",
    );
    let data = Dataset::load(&p, &ReadOptions::default(), &Prompts::default(), &tok).unwrap();
    assert_eq!(data.num_alternatives(0, 1), 4);
    let config = BatchConfig::train(1, 42);
    let drawn: Vec<Vec<u32>> = (0..32)
        .map(|epoch| rows(&data.batch(&data.plan_epoch(&config, epoch).unwrap(), 0).unwrap())[1].to_vec())
        .collect();
    let again = rows(&data.batch(&data.plan_epoch(&config, 5).unwrap(), 0).unwrap())[1].to_vec();
    assert_eq!(drawn[5], again, "a pure function of (seed, epoch)");
    let distinct: std::collections::BTreeSet<_> = drawn.iter().collect();
    assert_eq!(distinct.len(), 4, "every alternative is drawn over 32 epochs");
}

#[test]
fn shuffle_is_deterministic_and_resumable() {
    let tok = tokenizer(64);
    let path = stsb("stsb-en-dev.csv");
    let a = Dataset::load(&path, &ReadOptions::stsb_csv(), &Prompts::default(), &tok).unwrap();
    let b = Dataset::load(&path, &ReadOptions::stsb_csv(), &Prompts::default(), &tok).unwrap();
    let config = BatchConfig::train(32, 42);
    // A "resumed" run rebuilds the plan of the epoch it stopped in and continues at the saved batch index.
    let plan = a.plan_epoch(&config, 1).unwrap();
    let resumed = b.plan_epoch(&config, 1).unwrap();
    assert_eq!(plan, resumed);
    for i in [0, 17, plan.len() - 1] {
        assert_eq!(a.batch(&plan, i).unwrap(), b.batch(&resumed, i).unwrap());
    }
    assert_ne!(a.plan_epoch(&config, 0).unwrap().examples(0), plan.examples(0));
    let other = BatchConfig::train(32, 7);
    assert_ne!(a.plan_epoch(&other, 1).unwrap().examples(0), plan.examples(0));
    // Evaluation keeps file order.
    let eval = a.plan_epoch(&BatchConfig::eval(32), 0).unwrap();
    assert_eq!(eval.examples(1), (32..64).collect::<Vec<u32>>().as_slice());
    // drop_last leaves out the partial batch.
    let mut dl = config.clone();
    dl.drop_last = true;
    let p = a.plan_epoch(&dl, 0).unwrap();
    assert_eq!((p.len(), a.batches_per_epoch(&dl)), (46, 46));
    assert!((0..p.len()).all(|i| p.examples(i).len() == 32));
}

#[test]
fn length_grouping_cuts_padding_and_keeps_every_example() {
    let tok = tokenizer(64);
    let data = Dataset::load(
        stsb("stsb-en-train.csv"),
        &ReadOptions::stsb_csv(),
        &Prompts::default(),
        &tok,
    )
    .unwrap();
    let padded_tokens = |config: &BatchConfig| {
        let plan = data.plan_epoch(config, 0).unwrap();
        let mut seen = vec![0u8; data.len()];
        let mut total = 0;
        for i in 0..plan.len() {
            let b = data.batch(&plan, i).unwrap();
            total += b.rows() * b.max_row_len();
            b.examples.iter().for_each(|&e| seen[e as usize] += 1);
        }
        assert!(seen.iter().all(|&n| n == 1));
        (total, plan.len())
    };
    let plain = BatchConfig::train(32, 42);
    let grouped = BatchConfig {
        length_grouped: true,
        ..plain.clone()
    };
    let (t_plain, n_plain) = padded_tokens(&plain);
    let (t_grouped, n_grouped) = padded_tokens(&grouped);
    assert_eq!(n_plain, n_grouped);
    let real = data
        .batch(&data.plan_epoch(&BatchConfig::eval(data.len()), 0).unwrap(), 0)
        .unwrap()
        .tokens();
    eprintln!(
        "STS-B train, batch 32: real tokens {real}, padded shuffled {t_plain}, padded length-grouped {t_grouped}"
    );
    assert!(
        t_grouped * 10 < t_plain * 9,
        "grouping should cut padded tokens by >10%: {t_grouped} vs {t_plain}"
    );
    // Batches are shuffled: the first is not simply the longest.
    let plan = data.plan_epoch(&grouped, 0).unwrap();
    assert_ne!(
        plan.examples(0),
        data.plan_epoch(&grouped, 1).unwrap().examples(0)
    );
}

#[test]
fn padded_form_matches_the_packed_one() {
    let mut b = PackedBatch::default();
    b.push_row(&[101, 5, 102], &[0, 0, 0], 0);
    b.push_row(&[101, 102], &[0, 0], 1);
    let p = b.to_padded(0);
    assert_eq!((p.rows, p.seq_len), (2, 3));
    assert_eq!(p.input_ids, [101, 5, 102, 101, 102, 0]);
    assert_eq!(p.attention_mask, [1, 1, 1, 1, 1, 0]);
    assert_eq!(p.token_type_ids, [0; 6]);
    assert_eq!((b.rows(), b.tokens(), b.sum_sq_len()), (2, 5, 13));
    let tok = tokenizer(16);
    let packed = tok
        .encode_packed(&["hello".to_string(), "hello world".to_string()])
        .unwrap();
    assert_eq!(packed.seq_offsets, [0, 3, 7]);
    assert_eq!(packed.text_ids, [0, 1]);
}

/// The encoder fixture's batch was tokenised by Hugging Face (padded, maxlen from its metadata). Its texts are not
/// stored, so decode each row and re-encode it: our ids, and our padded form of the packed batch, must equal the
/// fixture's `input_ids`, `token_type_ids` and `attention_mask` exactly.
#[test]
fn padded_batch_matches_the_hugging_face_fixture() {
    let path = std::env::var_os("ANGLE_ENCODER_FIXTURE")
        .map(PathBuf::from)
        .unwrap_or_else(|| shared().join("fixtures/encoder/minilm-mean-reference.safetensors"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let maxlen: usize = meta.metadata().as_ref().unwrap()["maxlen"].parse().unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ints = |name: &str| -> (Vec<u32>, Vec<usize>) {
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::I64);
        let v = t
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect();
        (v, t.shape().to_vec())
    };
    let (ids, shape) = ints("input_ids");
    let (mask, _) = ints("attention_mask");
    let (types, _) = ints("token_type_ids");
    let (rows, t) = (shape[0], shape[1]);
    let tok = tokenizer(maxlen);
    let texts: Vec<String> = (0..rows)
        .map(|r| {
            let len = mask[r * t..(r + 1) * t].iter().filter(|&&m| m == 1).count();
            // Without [CLS]/[SEP], keeping [UNK] (an added token: it re-encodes to its own id).
            tok.inner()
                .decode(&ids[r * t + 1..r * t + len - 1], false)
                .unwrap()
        })
        .collect();
    let padded = tok.encode_packed(&texts).unwrap().to_padded(tok.pad_id());
    assert_eq!((padded.rows, padded.seq_len), (rows, t));
    assert_eq!(padded.input_ids, ids, "texts: {texts:?}");
    assert_eq!(padded.attention_mask, mask);
    assert_eq!(padded.token_type_ids, types);
}

#[test]
fn append_eos_truncates_to_one_less_and_ends_every_text_with_eos() {
    let dir = shared().join("fixtures/decoder/qwen2-lora-last/model");
    let plain = TextTokenizer::from_file(&dir, 8).unwrap();
    let eos = plain.eos_id_from(&dir).unwrap();
    assert_eq!(Some(eos), plain.inner().token_to_id("<|endoftext|>"));
    let tok = plain.clone().with_eos_appended(eos).unwrap();
    let long = "A man is playing a large flute on a stage in front of many people.";
    let short = "A dog.";
    let (l, s) = (tok.encode(long).unwrap(), tok.encode(short).unwrap());
    assert_eq!(l.ids.len(), 8);
    assert_eq!(l.ids[..7], plain.encode(long).unwrap().ids[..7]);
    assert_eq!(*l.ids.last().unwrap(), eos);
    let mut expected = plain.encode(short).unwrap().ids;
    expected.push(eos);
    assert_eq!(s.ids, expected);
    assert_eq!(s.type_ids.len(), s.ids.len());
    let batch = tok.encode_batch(&[short.to_string()]).unwrap();
    assert_eq!(batch[0], s);
    // A folder without an EOS token is a clear error naming the file.
    let e = plain
        .eos_id_from(&shared().join("models/all-MiniLM-L6-v2"))
        .unwrap_err();
    assert!(e.to_string().contains("tokenizer_config.json"), "{e}");
}

#[test]
fn several_files_load_as_one_dataset_each_example_knowing_its_file() {
    let tok = tokenizer(64);
    let (dev, test) = (stsb("stsb-en-dev.csv"), stsb("stsb-en-test.csv"));
    let opts = ReadOptions::default();
    let both = Dataset::load_all(&[dev.clone(), test.clone()], &opts, &Prompts::default(), &tok).unwrap();
    let one = Dataset::load(&test, &opts, &Prompts::default(), &tok).unwrap();
    assert_eq!(both.len(), 1500 + 1379);
    assert_eq!(both.paths(), &[dev.clone(), test.clone()]);
    assert_eq!(both.path(), dev.as_path());
    assert_eq!(both.source_of(0), (dev.as_path(), 1));
    assert_eq!(both.source_of(1500), (test.as_path(), 1));
    assert_eq!(both.source_of(1500 + 1378), (test.as_path(), 1379));
    assert!(both.describe(1501).ends_with("stsb-en-test.csv:2"));
    // the second file's examples have the same texts and tokens as when it is read alone
    for e in [0, 17, 1378] {
        for slot in 0..2 {
            let (a, b) = (both.text_of(1500 + e, slot, 0, 0), one.text_of(e, slot, 0, 0));
            assert_eq!(both.text(a), one.text(b));
            assert_eq!(both.tokens(a), one.tokens(b));
            assert_eq!(both.tokens(a).0, tok.encode(both.text(a)).unwrap().ids.as_slice());
        }
    }
    assert_eq!(both.labels()[1500..], *one.labels());
}
