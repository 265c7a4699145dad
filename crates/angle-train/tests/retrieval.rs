//! The retrieval workflow end to end on a tiny random BERT (issue 22): `angle mine` → `angle train` on several
//! datasets, with a teacher and retrieval validation → `angle eval --retrieval`; resume with several datasets; the
//! bad inputs of each step.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use angle_train::metrics::{Record, read_records};
use angle_train::trainer::{CHECKPOINT_LAST, METRICS};
use angle_train::{TrainConfig, TrainOptions, train};
use common::{stsb_head, tiny_config, tiny_model};

fn angle() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_angle"));
    c.stdin(Stdio::null());
    c
}

fn run(args: &[&str]) -> Output {
    angle().args(args).output().unwrap()
}

fn ok(o: &Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{what} failed:\n{err}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn refused(o: &Output, what: &str, says: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{what}: ran\n{err}");
    assert!(!err.contains("panicked"), "{what}: panicked:\n{err}");
    for s in says {
        assert!(err.contains(s), "{what}: the error lacks {s:?}:\n{err}");
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A small BEIR folder: 4 documents, 3 queries, qrels for dev; `qrels_extra` appended to the qrels.
fn beir(dir: &Path, qrels_extra: &str) -> PathBuf {
    let d = dir.join("beir");
    std::fs::create_dir_all(d.join("qrels")).unwrap();
    let docs = [
        ("d1", "A man is playing a guitar."),
        ("d2", "A woman is slicing an onion."),
        ("d3", "A dog runs in the park."),
        ("d4", "Stocks fell sharply on Monday."),
    ];
    let corpus: Vec<String> = docs
        .iter()
        .map(|(id, t)| serde_json::json!({"_id": id, "title": "", "text": t}).to_string())
        .collect();
    std::fs::write(d.join("corpus.jsonl"), corpus.join("\n") + "\n").unwrap();
    let queries = [
        ("q1", "Someone plays guitar."),
        ("q2", "An onion is cut."),
        ("q3", "Markets dropped."),
    ];
    let q: Vec<String> = queries
        .iter()
        .map(|(id, t)| serde_json::json!({"_id": id, "text": t}).to_string())
        .collect();
    std::fs::write(d.join("queries.jsonl"), q.join("\n") + "\n").unwrap();
    let qrels = format!("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq3\td4\t1\n{qrels_extra}");
    std::fs::write(d.join("qrels/dev.tsv"), qrels).unwrap();
    d
}

/// Format-B pairs from STS-B train (score ≥ 4).
fn pairs(dir: &Path, n: usize) -> PathBuf {
    let src = common::stsb_dir().join("stsb-en-train.csv");
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(&src)
        .unwrap();
    let lines: Vec<String> = rdr
        .records()
        .map(|r| r.unwrap())
        .filter(|r| r[2].parse::<f32>().unwrap() >= 4.0)
        .take(n)
        .map(|r| serde_json::json!({"query": &r[0], "positive": &r[1]}).to_string())
        .collect();
    let p = dir.join("pairs.jsonl");
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

#[test]
fn mine_then_train_on_two_datasets_with_a_teacher_then_evaluate_retrieval() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 3);
    let teacher = tiny_model(&tmp.path().join("t"), 4);
    let pairs = pairs(tmp.path(), 40);
    let triples = tmp.path().join("triples.jsonl");
    let cache = tmp.path().join("cache");
    let mine = |extra: &[&str]| {
        let mut a = vec![
            "mine",
            "--model",
            s(&model),
            "--data",
            s(&pairs),
            "--output",
            s(&triples),
            "--cache-dir",
            s(&cache),
            "--precision",
            "f32",
            "--num-negatives",
            "2",
        ];
        a.extend_from_slice(extra);
        run(&a)
    };
    let out = ok(&mine(&[]), "angle mine");
    assert!(out.contains("40 rows from 40 pairs"), "{out}");
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&triples)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 40);
    for r in &rows {
        let negs = r["negative"].as_array().unwrap();
        assert_eq!(negs.len(), 2, "{r}");
        assert!(
            negs.iter().all(|n| n != &r["positive"] && n != &r["query"]),
            "{r}"
        );
    }
    // A rerun reads the cache; an existing output is refused without --overwrite.
    refused(&mine(&[]), "existing output", &["exists", "--overwrite"]);
    let o = mine(&["--overwrite"]);
    ok(&o, "rerun");
    assert!(String::from_utf8_lossy(&o.stderr).contains("embeddings read from"));

    let sts = stsb_head(tmp.path(), "train", 40, "sts.csv");
    let dir = beir(tmp.path(), "");
    let out = tmp.path().join("run");
    let o = run(&[
        "train",
        "--model",
        s(&model),
        "--train",
        &format!("sts={}", s(&sts)),
        &format!("mined={}", s(&triples)),
        "--objective",
        "mined=cosine:0,ibn:1,angle:0",
        "--sampler",
        "round-robin",
        "--teacher",
        s(&teacher),
        "--teacher-pooling",
        "mean",
        "--valid-retrieval",
        s(&dir),
        "--output",
        s(&out),
        "--batch-size",
        "8",
        "--max-length",
        "32",
        "--epochs",
        "1",
        "--log-steps",
        "1",
        "--precision",
        "f32",
    ]);
    ok(&o, "angle train");
    let records = read_records(&out.join(METRICS)).unwrap();
    let trains: Vec<_> = records
        .iter()
        .filter_map(|r| match r {
            Record::Train(t) => Some(t),
            _ => None,
        })
        .collect();
    // Round robin: 5 batches each, alternating; every step one dataset's batch and a distillation term.
    assert_eq!(trains.len(), 10);
    for (i, t) in trains.iter().enumerate() {
        let name = if i % 2 == 0 { "sts" } else { "mined" };
        assert_eq!(
            t.datasets.keys().collect::<Vec<_>>(),
            vec![name],
            "step {}",
            t.step
        );
        assert!(t.distill.is_some_and(|d| d.is_finite() && d >= 0.0));
    }
    let retrievals = records
        .iter()
        .filter(|r| matches!(r, Record::Retrieval(_)))
        .count();
    assert_eq!(retrievals, 2, "before the first step and at the end");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert!(summary["best_ndcg_at_10"].as_f64().is_some(), "{summary}");

    let o = run(&[
        "eval",
        "--model",
        s(&out.join("best")),
        "--retrieval",
        s(&dir),
        "--split",
        "dev",
        "--json",
        "--precision",
        "f32",
    ]);
    let v: serde_json::Value = serde_json::from_str(ok(&o, "angle eval --retrieval").trim()).unwrap();
    assert_eq!(v["queries"], 3);
    assert_eq!(v["documents"], 4);
    let ndcg = v["ndcg_at_10"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&ndcg));
}

#[test]
fn two_datasets_resume_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 5);
    let a = stsb_head(tmp.path(), "train", 30, "a.csv");
    let b = stsb_head(tmp.path(), "dev", 50, "b.csv");
    let base = |out: &str| TrainConfig {
        train: vec![
            PathBuf::from(format!("a={}", a.display())),
            PathBuf::from(format!("b={}", b.display())),
        ],
        objectives: vec!["b=cosine:1,ibn:1,angle:0".into()],
        save_steps: 3,
        ..tiny_config(&model, &a, None, &tmp.path().join(out))
    };
    let full = train(base("full"), None, &TrainOptions::default()).unwrap();
    // Proportional: 4 + 7 batches an epoch, 2 epochs.
    assert_eq!(full.total_steps, 22);
    let ckpt = tmp.path().join("part").join(CHECKPOINT_LAST);
    let part = TrainOptions {
        halt_after: Some(14),
        ..TrainOptions::default()
    };
    assert!(train(base("part"), None, &part).unwrap().interrupted);
    train(base("part"), Some(&ckpt), &TrainOptions::default()).unwrap();
    let read = |p: &Path| std::fs::read(p.join("model.safetensors")).unwrap();
    assert!(read(&tmp.path().join("full").join(CHECKPOINT_LAST)) == read(&ckpt));
    // Both datasets' losses are in the records, each step from one of them.
    let recs = read_records(&tmp.path().join("full").join(METRICS)).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for r in &recs {
        if let Record::Train(t) = r {
            assert_eq!(t.datasets.len(), 1, "step {}", t.step);
            seen.extend(t.datasets.keys().cloned());
        }
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec!["a", "b"]);
}

#[test]
fn a_teacher_equal_to_the_student_adds_nothing_at_the_first_step() {
    // Dropout off and f32: the student's first forward is the teacher's, so KL and MSE are 0 there.
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 6);
    let data = stsb_head(tmp.path(), "train", 16, "t.csv");
    for (kind, pooling) in [("kl", "mean"), ("mse", "mean"), ("kl", "all"), ("mse", "all")] {
        let out = tmp.path().join(format!("{kind}-{pooling}"));
        let c = TrainConfig {
            dropout: false,
            max_steps: Some(1),
            teacher: Some(angle_train::config::TeacherSettings {
                model: model.clone(),
                pooling: pooling.into(),
                kind: kind.into(),
                ..Default::default()
            }),
            ..tiny_config(&model, &data, None, &out)
        };
        train(c, None, &TrainOptions::default()).unwrap();
        let recs = read_records(&out.join(METRICS)).unwrap();
        let Some(Record::Train(t)) = recs.iter().find(|r| matches!(r, Record::Train(_))) else {
            panic!("no train record")
        };
        assert!(t.distill.unwrap().abs() < 1e-6, "{kind}: {:?}", t.distill);
    }
}

#[test]
fn bad_inputs_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 7);
    let pairs = pairs(tmp.path(), 8);
    let out = tmp.path().join("o.jsonl");
    let m = s(&model);

    // Mining: the range, an empty pair file.
    let o = run(&[
        "mine",
        "--model",
        m,
        "--data",
        s(&pairs),
        "--output",
        s(&out),
        "--range-min",
        "5",
        "--range-max",
        "2",
        "--no-cache",
    ]);
    refused(&o, "range", &["--range-min", "--range-max"]);
    let empty = tmp.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let o = run(&[
        "mine",
        "--model",
        m,
        "--data",
        s(&empty),
        "--output",
        s(&out),
        "--no-cache",
    ]);
    refused(&o, "empty data", &["empty.jsonl"]);

    // Retrieval evaluation: a qrels line naming a missing document, then skipped and counted; an empty corpus.
    let dir = beir(tmp.path(), "q2\tmissing-doc\t1\n");
    let o = run(&["eval", "--model", m, "--retrieval", s(&dir), "--split", "dev"]);
    refused(&o, "missing document", &["dev.tsv:5", "missing-doc"]);
    let o = run(&[
        "eval",
        "--model",
        m,
        "--retrieval",
        s(&dir),
        "--split",
        "dev",
        "--skip-invalid",
        "--precision",
        "f32",
    ]);
    let text = ok(&o, "skip-invalid");
    assert!(text.contains("qrels lines skipped (--skip-invalid): 1"), "{text}");
    std::fs::write(dir.join("corpus.jsonl"), "").unwrap();
    let o = run(&[
        "eval",
        "--model",
        m,
        "--retrieval",
        s(&dir),
        "--split",
        "dev",
        "--skip-invalid",
    ]);
    refused(&o, "empty corpus", &["corpus.jsonl"]);

    // Training: a dataset name twice; a teacher of another width with kl (both sizes named); margin-mse on pairs.
    let sts = stsb_head(tmp.path(), "train", 8, "sts.csv");
    let run_dir = tmp.path().join("run");
    let train = |extra: &[&str]| {
        let mut a = vec!["train", "--model", m, "--output", s(&run_dir), "--max-steps", "1"];
        a.extend_from_slice(extra);
        run(&a)
    };
    let (x, y) = (format!("a={}", s(&sts)), format!("a={}", s(&pairs)));
    refused(&train(&["--train", &x, &y]), "name twice", &["a is given twice"]);
    refused(
        &train(&["--train", &x, "--objective", "b=ibn:1"]),
        "unknown name",
        &["no training dataset is named b"],
    );
    let minilm = common::minilm_dir();
    refused(
        &train(&[
            "--train",
            s(&sts),
            "--teacher",
            s(&minilm),
            "--teacher-pooling",
            "mean",
        ]),
        "teacher width",
        &["384 dimensions", "the student's 32"],
    );
    refused(
        &train(&["--train", s(&sts), "--teacher", m, "--distill", "margin-mse"]),
        "margin-mse on format A",
        &["margin-mse", "format A"],
    );
    refused(
        &train(&[
            "--train",
            s(&sts),
            "--teacher",
            m,
            "--teacher-pooling",
            "all",
            "--teacher-cache",
        ]),
        "all pooling with a cache",
        &["--teacher-cache", "--teacher-pooling all"],
    );
}

/// Every `distill-e2e-*.json` under `ANGLE_DISTILL_E2E_FIXTURES` (a file or a folder; default `tests/fixtures`),
/// made by `scripts/distill/e2e_check.py --write-fixture` with angle-emb's own code: angle's first training step
/// (one batch of every row, dropout off, f32) gives angle-emb's objective and distillation term.
#[test]
fn first_step_with_a_teacher_equals_angle_emb() {
    let root = std::env::var_os("ANGLE_DISTILL_E2E_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"));
    let files: Vec<PathBuf> = if root.is_file() {
        vec![root.clone()]
    } else {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
            .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                n.starts_with("distill-e2e-") && n.ends_with(".json")
            })
            .collect();
        v.sort();
        v
    };
    assert!(!files.is_empty(), "no distill-e2e-*.json in {}", root.display());
    for f in files {
        let fx: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let teacher = common::shared(&format!("models/{}", fx["teacher"].as_str().unwrap()));
        let student = match fx["student_layers"].as_u64() {
            Some(n) => {
                let dir = tmp.path().join("student");
                let n = n.to_string();
                ok(
                    &run(&[
                        "export",
                        "--model",
                        s(&teacher),
                        "--layers",
                        &n,
                        "--output",
                        s(&dir),
                    ]),
                    "angle export",
                );
                dir
            }
            None => teacher.clone(),
        };
        let rows = fx["rows"].as_array().unwrap();
        let mut w = csv::Writer::from_path(tmp.path().join("pairs.csv")).unwrap();
        for r in rows {
            let r = r.as_array().unwrap();
            let label = r[2].as_f64().unwrap().to_string();
            w.write_record([r[0].as_str().unwrap(), r[1].as_str().unwrap(), &label])
                .unwrap();
        }
        w.flush().unwrap();
        let out = tmp.path().join("run");
        let (batch, max_len) = (rows.len().to_string(), fx["max_length"].to_string());
        let weight = |k: &str| {
            fx["objective"][k]
                .as_f64()
                .unwrap_or_else(|| panic!("{}: no objective.{k}", f.display()))
                .to_string()
        };
        let (cosine_w, ibn_w, angle_w) = (weight("cosine_w"), weight("ibn_w"), weight("angle_w"));
        let o = run(&[
            "train",
            "--model",
            s(&student),
            "--train",
            s(&tmp.path().join("pairs.csv")),
            "--output",
            s(&out),
            "--max-steps",
            "1",
            "--batch-size",
            &batch,
            "--dropout",
            "false",
            "--precision",
            "f32",
            "--log-steps",
            "1",
            "--max-length",
            &max_len,
            "--pooling",
            fx["student_pooling"].as_str().unwrap(),
            "--teacher",
            s(&teacher),
            "--teacher-pooling",
            fx["teacher_pooling"].as_str().unwrap(),
            "--cosine-w",
            &cosine_w,
            "--ibn-w",
            &ibn_w,
            "--angle-w",
            &angle_w,
        ]);
        ok(&o, "angle train --teacher");
        let recs = read_records(&out.join(METRICS)).unwrap();
        let Some(Record::Train(t)) = recs.iter().find(|r| matches!(r, Record::Train(_))) else {
            panic!("no train record")
        };
        for (name, ours) in [("loss", t.loss), ("distill", t.distill.unwrap())] {
            let want = fx[name].as_f64().unwrap();
            let rel = (ours - want).abs() / want.abs().max(1e-12);
            println!(
                "{}: {name} {ours} against angle-emb's {want} ({rel:.1e} relative)",
                f.display()
            );
            assert!(rel < 1e-5, "{}: {name} {ours} against {want}", f.display());
        }
    }
}

/// `--teacher-pooling all`: the gradient the term sends into every token's hidden state, through
/// `Backbone::backward_tokens` and the encoder's backward, against central differences of the term on the
/// parameters (the tiny BERT in f32, no dropout).
#[test]
fn token_term_gradient_matches_finite_differences() {
    use angle_train::backbone::{Backbone, BertCpu, Packed, Sizes};
    use ndarray::{Array2, ArrayView2};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_model(tmp.path(), 8);
    let (enc, tok) = angle_train::embed::load_model(&dir, 32).unwrap();
    let h = enc.config.hidden_size;
    let mut bb = BertCpu::new(enc, angle_encoder::Pooling::Mean);
    bb.reserve(Sizes {
        train_seqs: 3,
        embed_seqs: 0,
        max_len: 32,
    })
    .unwrap();
    let texts = [
        "a man plays the guitar",
        "dogs run",
        "the market fell sharply today",
    ]
    .map(String::from);
    let b = tok.encode_packed(&texts).unwrap();
    let packed = Packed {
        input_ids: &b.input_ids,
        token_type_ids: &b.token_type_ids,
        seq_offsets: &b.seq_offsets,
    };
    let n = b.input_ids.len();
    let target: Vec<f32> = (0..n * h).map(|i| (i * 37 % 101) as f32 / 50.0 - 1.0).collect();
    // The term (kl over each token's hidden state, batchmean over the 3 sequences) and its gradient.
    let term = |bb: &mut BertCpu| -> (f64, Vec<f32>) {
        let mut pooled = Vec::new();
        bb.forward_train(&packed, None, &mut pooled).unwrap();
        let st = ArrayView2::from_shape((n, h), bb.token_states(true).unwrap())
            .unwrap()
            .to_owned();
        let t = ArrayView2::from_shape((n, h), &target[..]).unwrap();
        let mut g = Array2::<f32>::zeros((n, h));
        let l = angle_loss::distill::kl_into(st.view(), t, 1.0, 3, 1.0, &mut g.view_mut()).unwrap();
        (l as f64, g.iter().copied().collect())
    };
    bb.zero_grad().unwrap();
    let (_, d) = term(&mut bb);
    bb.backward_tokens(&packed, &vec![0.0; 3 * h], &d).unwrap();
    let grads = bb.enc.buffers.grads.clone();
    let mut order: Vec<usize> = (0..grads.len()).collect();
    order.sort_by(|&a, &b| grads[b].abs().total_cmp(&grads[a].abs()));
    for &i in order.iter().take(8) {
        let p0 = bb.enc.buffers.params[i];
        let eps = 1e-2 * p0.abs().max(0.05);
        bb.enc.buffers.params[i] = p0 + eps;
        let up = term(&mut bb).0;
        bb.enc.buffers.params[i] = p0 - eps;
        let down = term(&mut bb).0;
        bb.enc.buffers.params[i] = p0;
        let fd = (up - down) / (2.0 * eps as f64);
        let g = grads[i] as f64;
        assert!(
            (fd - g).abs() <= 0.03 * g.abs() + 1e-5,
            "parameter {i}: backward {g}, finite differences {fd}"
        );
    }
}
