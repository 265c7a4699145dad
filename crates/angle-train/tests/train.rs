//! End-to-end checks of the trainer on a tiny random BERT: resume equivalence, checkpoint round trip through the
//! `angle` binary, formats B and C, bad input.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use angle_train::checkpoint::{ANGLE_CONFIG, OPTIMIZER, TRAINER_STATE};
use angle_train::embed::{Embedder, LoadOptions, ModelDefaults, load_backbone};
use angle_train::precision::Precision;
use angle_train::trainer::{BEST, CHECKPOINT_LAST, METRICS, PLOT, SUMMARY};
use angle_train::{TrainConfig, TrainOptions, train};
use common::{stsb_head, tiny_config, tiny_model};

fn quiet() -> TrainOptions {
    TrainOptions::default()
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn same_checkpoint(a: &Path, b: &Path) {
    for f in ["model.safetensors", OPTIMIZER] {
        assert!(
            read(&a.join(f)) == read(&b.join(f)),
            "{f} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
    let state = |p: &Path| -> serde_json::Value {
        let mut v: serde_json::Value = serde_json::from_slice(&read(&p.join(TRAINER_STATE))).unwrap();
        // Wall-clock counters legitimately differ.
        v.as_object_mut().unwrap().remove("train_seconds");
        v.as_object_mut().unwrap().remove("train_cpu_seconds");
        v
    };
    assert_eq!(state(a), state(b));
}

#[test]
fn resumed_runs_end_with_bit_identical_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 1);
    // 60 pairs, batch 8: 8 batches per epoch, the last one short; 2 epochs = 16 steps.
    let train_file = stsb_head(tmp.path(), "train", 60, "train.csv");
    let base = |out: &str| TrainConfig {
        save_steps: 3,
        grad_accum: 1,
        ..tiny_config(&model, &train_file, None, &tmp.path().join(out))
    };

    let full = train(base("full"), None, &quiet()).unwrap();
    assert_eq!((full.steps, full.total_steps), (16, 16));
    assert!(!full.interrupted);

    // A hard kill after step 10: the last checkpoint is step 9 (save every 3), in the second epoch.
    let killed = train(
        base("killed"),
        None,
        &TrainOptions {
            halt_after: Some(10),
            ..quiet()
        },
    )
    .unwrap();
    assert!(killed.interrupted);
    let ckpt = tmp.path().join("killed").join(CHECKPOINT_LAST);
    let state: serde_json::Value = serde_json::from_slice(&read(&ckpt.join(TRAINER_STATE))).unwrap();
    assert_eq!(state["step"], 9);
    assert_eq!(state["epoch"], 1);
    let resumed = train(base("killed"), Some(&ckpt), &quiet()).unwrap();
    assert_eq!((resumed.steps, resumed.resumed_from_step), (16, Some(9)));
    same_checkpoint(&tmp.path().join("full").join(CHECKPOINT_LAST), &ckpt);

    // Ctrl-C before the first step ends: saved at step 1, then resumed (a resume of a resume, with a save
    // interval changed, which is allowed).
    let stop = Arc::new(AtomicBool::new(true));
    let stopped = train(base("stopped"), None, &TrainOptions { stop, ..quiet() }).unwrap();
    assert!(stopped.interrupted);
    assert_eq!(stopped.steps, 1);
    let ckpt = tmp.path().join("stopped").join(CHECKPOINT_LAST);
    let again = train(
        base("stopped"),
        Some(&ckpt),
        &TrainOptions {
            halt_after: Some(5),
            ..quiet()
        },
    )
    .unwrap();
    assert!(again.interrupted);
    let cfg = TrainConfig {
        save_steps: 4,
        ..base("stopped")
    };
    let done = train(cfg, Some(&ckpt), &quiet()).unwrap();
    assert_eq!(done.steps, 16);
    same_checkpoint(&tmp.path().join("full").join(CHECKPOINT_LAST), &ckpt);

    // The training records of the resumed run cover every step once (saturation records ride along).
    let steps: Vec<u64> = angle_train::metrics::read_records(&tmp.path().join("killed").join(METRICS))
        .unwrap()
        .iter()
        .filter(|r| matches!(r, angle_train::metrics::Record::Train(_)))
        .map(|r| r.step())
        .collect();
    assert_eq!(steps, (1..=16).collect::<Vec<_>>());
}

#[test]
fn gradient_accumulation_and_warmup_resume_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 2);
    let train_file = stsb_head(tmp.path(), "train", 40, "train.csv");
    let base = |out: &str| TrainConfig {
        grad_accum: 2,
        warmup_steps: 2,
        weight_decay: 0.01,
        max_grad_norm: 0.5,
        save_steps: 2,
        ..tiny_config(&model, &train_file, None, &tmp.path().join(out))
    };
    // 5 batches per epoch → 3 steps (2 + 2 + 1 micro-batches), 2 epochs = 6 steps.
    let full = train(base("full"), None, &quiet()).unwrap();
    assert_eq!(full.total_steps, 6);
    let ckpt = tmp.path().join("part").join(CHECKPOINT_LAST);
    train(
        base("part"),
        None,
        &TrainOptions {
            halt_after: Some(3),
            ..quiet()
        },
    )
    .unwrap();
    train(base("part"), Some(&ckpt), &quiet()).unwrap();
    same_checkpoint(&tmp.path().join("full").join(CHECKPOINT_LAST), &ckpt);
}

fn angle() -> Command {
    Command::new(env!("CARGO_BIN_EXE_angle"))
}

#[test]
fn saved_checkpoint_gives_the_trainers_embeddings() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 3);
    let train_file = stsb_head(tmp.path(), "train", 48, "train.csv");
    let valid = stsb_head(tmp.path(), "dev", 40, "dev.csv");
    let out = tmp.path().join("run");
    let cfg = TrainConfig {
        pooling: "max".into(),
        ..tiny_config(&model, &train_file, Some(&valid), &out)
    };
    let s = train(cfg, None, &quiet()).unwrap();
    let last = s.last_eval.expect("the end of training is evaluated");

    for f in [METRICS, PLOT, SUMMARY] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let evals: Vec<u64> = angle_train::metrics::read_records(&out.join(METRICS))
        .unwrap()
        .iter()
        .filter(|r| matches!(r, angle_train::metrics::Record::Eval(_)))
        .map(|r| r.step())
        .collect();
    // The untrained model, each epoch's end (epochs = 2, 6 batches each).
    assert_eq!(evals, vec![0, 6, 12]);
    let ckpt = out.join(CHECKPOINT_LAST);
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "modules.json",
        "1_Pooling/config.json",
    ] {
        assert!(ckpt.join(f).is_file(), "{f} missing");
    }
    assert!(out.join(BEST).join(ANGLE_CONFIG).is_file());
    let defaults = ModelDefaults::from_dir(&ckpt).unwrap();
    assert_eq!(
        (defaults.pooling, defaults.max_length),
        (angle_encoder::Pooling::Max, Some(32))
    );
    // sentence-transformers reads the same pooling from its own files.
    let st = angle_encoder::Pooling::from_model_dir(&ckpt).unwrap();
    assert_eq!(st, angle_encoder::Pooling::Max);

    // `angle eval` on the saved weights reproduces the score the trainer computed in memory at the last step
    // (validation is f32 on every CPU; `auto` would pick bf16 where AMX or AVX512-BF16 is fast).
    let o = angle()
        .args(["eval", "--precision", "f32", "--json", "--model"])
        .arg(&ckpt)
        .arg("--data")
        .arg(&valid)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["spearman"].as_f64().unwrap(), last.spearman);
    assert_eq!(v["pearson"].as_f64().unwrap(), last.pearson);

    // `angle encode --precision f32` (JSONL and .npy) gives exactly the library's embeddings of the saved model.
    let texts = [
        "A man is playing a guitar.",
        "Someone plays an instrument.",
        "A cat sleeps.",
    ];
    let input = tmp.path().join("texts.txt");
    std::fs::write(&input, texts.join("\n")).unwrap();
    let jsonl = tmp.path().join("emb.jsonl");
    let npy = tmp.path().join("emb.npy");
    for dest in [&jsonl, &npy] {
        let o = angle()
            .args(["encode", "--precision", "f32", "--model"])
            .arg(&ckpt)
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(dest)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let opts = LoadOptions {
        pooling: Some(angle_encoder::Pooling::Max),
        ..LoadOptions::default()
    };
    let (mut model, tok) = load_backbone(&ckpt, 32, opts).unwrap();
    let mut emb = Embedder::new(8, 32);
    model.reserve(emb.sizes()).unwrap();
    let owned: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
    let mut ours = Vec::new();
    emb.embed_texts(&mut *model, &tok, &owned, &mut ours).unwrap();
    let from_cli: Vec<f32> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .flat_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(from_cli, ours);
    let bytes = read(&npy);
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let from_npy: Vec<f32> = bytes[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(from_npy, ours);

    let o = angle()
        .args(["similarity", "--model"])
        .arg(&ckpt)
        .args(texts)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 2);
}

/// Formats B and C from STS-B: pairs scored >= 4 are query/positive, the i-th pair scored <= 1 gives the negative.
fn write_bc(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let src = common::stsb_dir().join("stsb-en-train.csv");
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(&src)
        .unwrap();
    let rows: Vec<(String, String, f32)> = rdr
        .records()
        .map(|r| {
            let r = r.unwrap();
            (r[0].to_string(), r[1].to_string(), r[2].parse().unwrap())
        })
        .collect();
    let high: Vec<_> = rows.iter().filter(|r| r.2 >= 4.0).take(24).collect();
    let low: Vec<_> = rows.iter().filter(|r| r.2 <= 1.0).take(24).collect();
    let b = dir.join("b.csv");
    let mut w = csv::Writer::from_path(&b).unwrap();
    w.write_record(["query", "positive"]).unwrap();
    for h in &high {
        w.write_record([&h.0, &h.1]).unwrap();
    }
    w.flush().unwrap();
    let c = dir.join("c.jsonl");
    let lines: Vec<String> = high
        .iter()
        .zip(&low)
        .map(|(h, l)| serde_json::json!({"query": h.0, "positive": h.1, "negative": l.1}).to_string())
        .collect();
    std::fs::write(&c, lines.join("\n") + "\n").unwrap();
    (b, c)
}

#[test]
fn formats_b_and_c_train_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 4);
    let (b, c) = write_bc(tmp.path());
    let valid = stsb_head(tmp.path(), "dev", 30, "dev.csv");
    for (file, name, part) in [(&b, "b", "contrastive"), (&c, "c", "contrastive_negative")] {
        let out = tmp.path().join(name);
        let cfg = TrainConfig {
            query_prompt: Some("query: {text}".into()),
            doc_prompt: Some("passage: {text}".into()),
            epochs: 1,
            ..tiny_config(&model, file, Some(&valid), &out)
        };
        let s = train(cfg, None, &quiet()).unwrap();
        assert_eq!(s.steps, 3, "{name}");
        assert!(s.last_eval.is_some());
        let recs = angle_train::metrics::read_records(&out.join(METRICS)).unwrap();
        let first = recs
            .iter()
            .find_map(|r| match r {
                angle_train::metrics::Record::Train(t) => Some(t.clone()),
                _ => None,
            })
            .unwrap();
        assert!(first.loss.is_finite() && first.loss > 0.0, "{name}: {first:?}");
        assert!(first.parts.contains_key(part), "{name}: {:?}", first.parts);
        let angle_cfg: serde_json::Value =
            serde_json::from_slice(&read(&out.join(CHECKPOINT_LAST).join(ANGLE_CONFIG))).unwrap();
        assert_eq!(angle_cfg["query_prompt"], "query: {text}");
    }
}

#[test]
fn bad_rows_fail_with_file_and_line_or_are_skipped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 5);
    let good = stsb_head(tmp.path(), "train", 20, "good.csv");
    let mut text = std::fs::read_to_string(&good).unwrap();
    text.push_str("a lonely sentence,another one,not-a-number\n");
    let bad = tmp.path().join("bad.csv");
    std::fs::write(&bad, text).unwrap();
    let out = tmp.path().join("run");
    let err = train(tiny_config(&model, &bad, None, &out), None, &quiet())
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad.csv") && err.contains(":21"), "{err}");
    let cfg = TrainConfig {
        skip_invalid: true,
        max_steps: Some(1),
        ..tiny_config(&model, &bad, None, &out)
    };
    let s = train(cfg, None, &quiet()).unwrap();
    assert_eq!(s.skipped_train_rows, 1);
    let summary: serde_json::Value = serde_json::from_slice(&read(&out.join(SUMMARY))).unwrap();
    assert_eq!(summary["skipped_train_rows"], 1);
}

#[test]
fn cli_booleans_take_true_or_false_and_resume_refuses_changed_options() {
    let tmp = tempfile::tempdir().unwrap();
    // angle-emb's `--fp16 0` means true; here `0` is rejected outright.
    let o = angle()
        .args([
            "train",
            "--model",
            "m",
            "--train",
            "t.csv",
            "--output",
            "o",
            "--dropout",
            "0",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("invalid value"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let model = tiny_model(tmp.path(), 6);
    let train_file = stsb_head(tmp.path(), "train", 16, "train.csv");
    let out = tmp.path().join("run");
    let o = angle()
        .arg("train")
        .arg("--model")
        .arg(&model)
        .arg("--train")
        .arg(&train_file)
        .arg("--output")
        .arg(&out)
        .args([
            "--max-length",
            "32",
            "--batch-size",
            "8",
            "--epochs",
            "1",
            "--dropout",
            "false",
            "--progress",
            "false",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("run summary"));
    let saved: serde_json::Value =
        serde_json::from_slice(&read(&out.join(CHECKPOINT_LAST).join(ANGLE_CONFIG))).unwrap();
    assert_eq!(saved["train"]["dropout"], false);
    assert_eq!(saved["train"]["loss"]["angle_w"], 1.0);

    let o = angle()
        .arg("train")
        .arg("--resume")
        .arg(out.join(CHECKPOINT_LAST))
        .args(["--lr", "0.1"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("lr"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[cfg(unix)]
#[test]
fn ctrl_c_saves_a_resumable_checkpoint_and_exits_130() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 7);
    let train_file = stsb_head(tmp.path(), "train", 16, "train.csv");
    let out = tmp.path().join("run");
    let child = angle()
        .arg("train")
        .arg("--model")
        .arg(&model)
        .arg("--train")
        .arg(&train_file)
        .arg("--output")
        .arg(&out)
        .args([
            "--max-length",
            "32",
            "--batch-size",
            "4",
            "--max-steps",
            "100000000",
            "--log-steps",
            "1",
        ])
        .args(["--progress", "false"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until steps are being logged, then interrupt as a terminal's Ctrl-C would.
    let metrics = out.join(METRICS);
    let t0 = std::time::Instant::now();
    while std::fs::metadata(&metrics).map_or(true, |m| m.len() == 0) {
        assert!(t0.elapsed().as_secs() < 120, "training never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("interrupted"));
    let state: serde_json::Value =
        serde_json::from_slice(&read(&out.join(CHECKPOINT_LAST).join(TRAINER_STATE))).unwrap();
    assert!(state["step"].as_u64().unwrap() >= 1);
}

/// `--valid-precision int8` on the BERT family: the same weights as an f32-validated run (validation has its own
/// copies), validation scores from the int8 products, and the choice recorded; the decoder family, whose one set
/// of products serves both modes, refuses a validation precision other than its training one.
#[test]
fn validation_runs_in_its_own_precision() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 3);
    let train_file = stsb_head(tmp.path(), "train", 24, "train.csv");
    let valid_file = stsb_head(tmp.path(), "dev", 40, "dev.csv");
    let cfg = |out: &str, p: Option<Precision>| TrainConfig {
        valid_precision: p,
        ..tiny_config(&model, &train_file, Some(&valid_file), &tmp.path().join(out))
    };
    let f = train(cfg("f32", None), None, &quiet()).unwrap();
    let q = train(cfg("int8", Some(Precision::Int8)), None, &quiet()).unwrap();
    let last = |d: &str| tmp.path().join(d).join(CHECKPOINT_LAST);
    assert!(read(&last("f32").join("model.safetensors")) == read(&last("int8").join("model.safetensors")));
    // Pearson: 40 pairs' ranks need not move, the scores do
    let (fs, qs) = (f.last_eval.unwrap().pearson, q.last_eval.unwrap().pearson);
    assert!(fs != qs && (fs - qs).abs() < 5.0, "f32 {fs}, int8 {qs}");
    let saved: serde_json::Value =
        serde_json::from_slice(&read(&last("int8").join("angle_config.json"))).unwrap();
    assert_eq!(saved["train"]["valid_precision"], "int8");

    let decoder = common::shared("fixtures/decoder/qwen2-lora-last/model");
    let e = train(
        TrainConfig {
            valid_precision: Some(Precision::Bf16),
            pooling: "last".into(),
            ..tiny_config(&decoder, &train_file, Some(&valid_file), &tmp.path().join("dec"))
        },
        None,
        &quiet(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("--valid-precision bf16"), "{e}");
}
