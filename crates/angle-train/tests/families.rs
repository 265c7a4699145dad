//! The encoder families built from `angle-models`' blocks, end to end: a few training steps of every
//! family fixture (ModernBERT, ELECTRA, ALBERT; `ANGLE_FAMILY_FIXTURES` for others) write a checkpoint
//! that `angle encode` reads back to the same embeddings; a LoRA run of a BERT model writes a peft
//! adapter that resumes bit for bit, encodes and merges; unsupported options are refused by name.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use angle_train::checkpoint::OPTIMIZER;
use angle_train::config::LoraSettings;
use angle_train::trainer::{CHECKPOINT_LAST, MERGED};
use angle_train::{TrainConfig, TrainOptions, train};
use common::{cosine, encode, shared, stsb_head, tiny_config, tiny_model};

fn family_models() -> Vec<PathBuf> {
    let root = std::env::var_os("ANGLE_FAMILY_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| shared("fixtures/families"));
    let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path().join("model")))
        .filter(|p| p.join("config.json").is_file())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no family fixtures under {}", root.display());
    v
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn texts(dir: &Path) -> PathBuf {
    let p = dir.join("texts.txt");
    std::fs::write(
        &p,
        "A man is playing a guitar.\nTwo dogs run on the beach.\nA woman slices an onion.\n",
    )
    .unwrap();
    p
}

#[test]
fn every_family_trains_and_its_checkpoint_encodes_again() {
    let tmp = tempfile::tempdir().unwrap();
    let train_file = stsb_head(tmp.path(), "train", 8, "train.csv");
    let t = texts(tmp.path());
    for model in family_models() {
        let name = model
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        let out = tmp.path().join(&name);
        let cfg = TrainConfig {
            max_length: 24,
            batch_size: 4,
            epochs: 1,
            lr: 1e-3,
            pooling: "mean".into(),
            ..tiny_config(&model, &train_file, None, &out)
        };
        let r = train(cfg, None, &TrainOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r.steps, 2, "{name}");
        let last = out.join(CHECKPOINT_LAST);
        assert!(
            last.join("model.safetensors").is_file() && last.join("config.json").is_file(),
            "{name}"
        );
        let before = encode(&model, &t, &[]);
        let after = encode(&last, &t, &[]);
        assert_eq!(after.len(), 3);
        // trained: the embeddings moved, and they are finite
        let moved = before.iter().zip(&after).any(|(a, b)| cosine(a, b) < 0.999_999);
        assert!(moved, "{name}: training changed nothing");
        assert!(after.iter().flatten().all(|x| x.is_finite()), "{name}");
    }
}

#[test]
fn lora_on_a_bert_model_writes_a_peft_adapter_that_resumes_encodes_and_merges() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tiny_model(tmp.path(), 7);
    let train_file = stsb_head(tmp.path(), "train", 18, "train.csv");
    let cfg = |out: &str| TrainConfig {
        lora: Some(LoraSettings {
            r: 4,
            alpha: 8.0,
            dropout: 0.1,
            targets: "query,value,output.dense".into(),
        }),
        merge_lora: true,
        max_length: 24,
        batch_size: 4,
        epochs: 2,
        lr: 1e-3,
        save_steps: 3,
        ..tiny_config(&base, &train_file, None, &tmp.path().join(out))
    };
    let full = train(cfg("full"), None, &TrainOptions::default()).unwrap();
    assert_eq!(full.steps, 10);
    let last = tmp.path().join("full").join(CHECKPOINT_LAST);
    assert!(!last.join("model.safetensors").exists());
    let adapter: serde_json::Value =
        serde_json::from_slice(&read(&last.join("adapter_config.json"))).unwrap();
    assert_eq!(
        (adapter["peft_type"].as_str(), adapter["r"].as_u64()),
        (Some("LORA"), Some(4))
    );
    let bytes = read(&last.join("adapter_model.safetensors"));
    let names: Vec<String> = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap()
        .names()
        .into_iter()
        .map(str::to_string)
        .collect();
    assert!(
        names.contains(&"base_model.model.encoder.layer.0.attention.self.query.lora_A.weight".to_string()),
        "{names:?}"
    );
    // query, value, attention.output.dense and output.dense in every layer: A and B each
    let layers = names.iter().filter(|n| n.contains(".query.lora_A")).count();
    assert_eq!(names.len(), layers * 4 * 2, "{names:?}");

    // killed after step 7 (saved at 6) and resumed: the same adapter and moments as the straight run
    let killed = train(
        cfg("killed"),
        None,
        &TrainOptions {
            halt_after: Some(7),
            ..TrainOptions::default()
        },
    )
    .unwrap();
    assert!(killed.interrupted);
    let ckpt = tmp.path().join("killed").join(CHECKPOINT_LAST);
    let resumed = train(cfg("killed"), Some(&ckpt), &TrainOptions::default()).unwrap();
    assert_eq!((resumed.steps, resumed.resumed_from_step), (10, Some(6)));
    for f in ["adapter_model.safetensors", OPTIMIZER] {
        assert!(
            read(&last.join(f)) == read(&ckpt.join(f)),
            "{f} differs after resume"
        );
    }

    // the adapter encodes; the merged full checkpoint gives the same embeddings
    let t = texts(tmp.path());
    let from_adapter = encode(&last, &t, &[]);
    let merged = tmp.path().join("full").join(MERGED);
    let from_merged = encode(&merged, &t, &[]);
    for (a, m) in from_adapter.iter().zip(&from_merged) {
        let c = cosine(a, m);
        assert!(c > 0.99999, "merged model drifts from the adapter: cosine {c}");
    }
    let from_base = encode(&base, &t, &[]);
    assert!(
        from_adapter
            .iter()
            .zip(&from_base)
            .any(|(a, b)| cosine(a, b) < 0.999_999)
    );
}

/// `--load-kbit 8` and `--precision bf16` on angle-models' blocks: a LoRA run of a BERT model on an 8-bit or a
/// bf16 base trains (not the f32 base's adapter), the 8-bit one resumes bit for bit, and every block family
/// encodes with `--precision int8` and `bf16` close to f32.
#[test]
fn packed_bases_train_lora_on_the_blocks_and_every_family_encodes_in_int8_and_bf16() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tiny_model(tmp.path(), 7);
    let train_file = stsb_head(tmp.path(), "train", 18, "train.csv");
    let cfg = |out: &str, kbit: Option<u8>| TrainConfig {
        lora: Some(LoraSettings {
            r: 4,
            alpha: 8.0,
            dropout: 0.1,
            targets: "all-linear".into(),
        }),
        load_kbit: kbit,
        max_length: 24,
        batch_size: 4,
        epochs: 2,
        lr: 1e-3,
        save_steps: 3,
        ..tiny_config(&base, &train_file, None, &tmp.path().join(out))
    };
    train(cfg("q8", Some(8)), None, &TrainOptions::default()).unwrap();
    train(cfg("f32", None), None, &TrainOptions::default()).unwrap();
    let adapter = |d: &str| {
        read(
            &tmp.path()
                .join(d)
                .join(CHECKPOINT_LAST)
                .join("adapter_model.safetensors"),
        )
    };
    assert_ne!(adapter("q8"), adapter("f32"));
    let bf16 = TrainOptions {
        cpu_precision: angle_train::precision::Precision::Bf16,
        ..TrainOptions::default()
    };
    train(cfg("bf16", None), None, &bf16).unwrap();
    assert_ne!(adapter("bf16"), adapter("f32"));
    let saved: serde_json::Value = serde_json::from_slice(&read(
        &tmp.path()
            .join("q8")
            .join(CHECKPOINT_LAST)
            .join("angle_config.json"),
    ))
    .unwrap();
    assert_eq!(
        (
            saved["train"]["load_kbit"].as_u64(),
            saved["train"]["cpu_precision"].as_str()
        ),
        (Some(8), Some("int8"))
    );
    let halted = TrainOptions {
        halt_after: Some(7),
        ..TrainOptions::default()
    };
    train(cfg("part", Some(8)), None, &halted).unwrap();
    let ckpt = tmp.path().join("part").join(CHECKPOINT_LAST);
    train(cfg("part", Some(8)), Some(&ckpt), &TrainOptions::default()).unwrap();
    assert!(adapter("part") == adapter("q8"), "resumed 8-bit run differs");

    let t = texts(tmp.path());
    let adapted = tmp.path().join("q8").join(CHECKPOINT_LAST);
    for model in family_models().iter().chain([&adapted]) {
        let f = encode(model, &t, &[]);
        for (p, min) in [("int8", 0.99), ("bf16", 0.999)] {
            for (a, b) in f.iter().zip(&encode(model, &t, &["--precision", p])) {
                let c = cosine(a, b);
                assert!(c > min && c < 1.0, "{}: {p} cosine {c}", model.display());
            }
        }
    }
}

#[test]
fn family_options_that_cannot_run_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let train_file = stsb_head(tmp.path(), "train", 8, "train.csv");
    let model = family_models()[0].clone();
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_angle"))
            .args(["train", "--model"])
            .arg(&model)
            .arg("--train")
            .arg(&train_file)
            .arg("--output")
            .arg(tmp.path().join("out"))
            .args(args)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?} ran");
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    assert!(run(&["--ese"]).contains("--ese"));
    assert!(run(&["--bidirectional-from", "1"]).contains("--bidirectional-from"));
    assert!(run(&["--load-kbit", "8"]).contains("--lora-r"));
    assert!(run(&["--load-kbit", "4", "--lora-r", "4"]).contains("--load-kbit 4"));
    assert!(run(&["--precision", "bf16"]).contains("--precision bf16"));
    let cfg = tmp.path().join("bad");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(
        cfg.join("config.json"),
        r#"{"model_type": "funnel", "hidden_size": 8}"#,
    )
    .unwrap();
    let err = angle_models::Model::from_dir(&cfg, &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("funnel") && err.contains("modernbert") && err.contains("albert"),
        "{err}"
    );
}

#[test]
fn gradient_checkpointing_trains_the_same_weights_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let train_file = stsb_head(tmp.path(), "train", 8, "train.csv");
    for (k, model) in family_models().into_iter().enumerate() {
        let run = |out: &str, ckpt: bool| {
            let out = &format!("{out}-{k}");
            let cfg = TrainConfig {
                max_length: 24,
                batch_size: 4,
                epochs: 1,
                lr: 1e-3,
                pooling: "mean".into(),
                gradient_checkpointing: ckpt,
                ..tiny_config(&model, &train_file, None, &tmp.path().join(out))
            };
            train(cfg, None, &TrainOptions::default()).unwrap();
            read(
                &tmp.path()
                    .join(out)
                    .join(CHECKPOINT_LAST)
                    .join("model.safetensors"),
            )
        };
        assert!(run("plain", false) == run("ckpt", true), "{}", model.display());
    }
    // a BERT-family run with checkpointing trains on the blocks' BERT: the weights of the encoder path's
    // plain step, to float rounding (the two implementations sum in different orders)
    let bert = tiny_model(tmp.path(), 2);
    let floats = |p: &Path| {
        let bytes = read(p);
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut names: Vec<&str> = st.names();
        names.sort();
        let mut v = Vec::new();
        for n in names {
            let t = st.tensor(n).unwrap();
            if t.dtype() == safetensors::Dtype::F32 {
                v.extend(
                    t.data()
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                );
            }
        }
        v
    };
    let bert_run = |out: &str, ckpt: bool| {
        let cfg = TrainConfig {
            gradient_checkpointing: ckpt,
            ..tiny_config(&bert, &train_file, None, &tmp.path().join(out))
        };
        train(cfg, None, &TrainOptions::default()).unwrap();
        floats(
            &tmp.path()
                .join(out)
                .join(CHECKPOINT_LAST)
                .join("model.safetensors"),
        )
    };
    let (plain, ckpt) = (bert_run("bert-plain", false), bert_run("bert-ckpt", true));
    assert_eq!(plain.len(), ckpt.len());
    let worst = plain
        .iter()
        .zip(&ckpt)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst < 1e-5,
        "BERT with checkpointing drifts from the plain step by {worst}"
    );
}

/// The memory estimate of a blocks model (one sequence measured at `reserve`, times the sequences of a
/// batch) against what a real batch of that many full-length sequences makes the model hold, with and
/// without checkpointing and LoRA.
#[test]
fn memory_estimate_equals_what_a_batch_allocates() {
    use angle_train::backbone::{Backbone, Packed, Sizes};
    let lora = angle_decoder::LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.1,
        targets: vec!["all-linear".into()],
        seed: 1,
    };
    for model in family_models() {
        for (ckpt, l) in [
            (false, None),
            (true, None),
            (false, Some(&lora)),
            (true, Some(&lora)),
        ] {
            let spec = l.map(angle_train::blocks::lora_spec);
            let (mut b, _) = angle_train::blocks::load_blocks(&model, None, spec, None, false).unwrap();
            b.model.checkpointing = ckpt;
            let (seqs, len) = (3, 7);
            let sizes = Sizes {
                train_seqs: seqs,
                embed_seqs: 0,
                max_len: len,
            };
            b.reserve(sizes).unwrap();
            let plan = b.memory_plan(sizes).unwrap();
            let ids: Vec<u32> = (0..(seqs * len) as u32).map(|i| 1 + i % 5).collect();
            let offsets: Vec<usize> = (0..=seqs).map(|s| s * len).collect();
            let batch = Packed {
                input_ids: &ids,
                token_type_ids: &[],
                seq_offsets: &offsets,
            };
            let mut pooled = Vec::new();
            b.forward_train(&batch, Some(3), &mut pooled).unwrap();
            b.backward(&batch, &vec![0.01; pooled.len()]).unwrap();
            let what = format!("{} (checkpointing {ckpt}, LoRA {})", model.display(), l.is_some());
            assert_eq!(plan.activations, b.model.activation_bytes(), "{what}");
            assert_eq!(plan.trainable_state, 12 * b.trainable_len(), "{what}");
        }
    }
}
