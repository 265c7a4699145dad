//! End-to-end checks of the decoder family through the trainer and the `angle` binary, on the tiny random
//! models of `../shared/fixtures/decoder`: LoRA runs write peft adapters that resume bit for bit, encode and
//! merge; full fine-tuning writes a checkpoint that loads again; bad options fail clearly.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use angle_train::checkpoint::{OPTIMIZER, TRAINER_STATE};
use angle_train::config::LoraSettings;
use angle_train::trainer::{BEST, CHECKPOINT_LAST, MERGED};
use angle_train::{TrainConfig, TrainOptions, train};
use common::{cosine, encode, shared, stsb_head, tiny_model};

fn decoder_model(case: &str) -> PathBuf {
    let root = std::env::var_os("ANGLE_DECODER_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| shared("fixtures/decoder"));
    let p = root.join(case).join("model");
    assert!(
        p.join("config.json").is_file(),
        "missing fixture model {}",
        p.display()
    );
    p
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn angle() -> Command {
    Command::new(env!("CARGO_BIN_EXE_angle"))
}

fn config(model: &Path, train: &Path, valid: Option<&Path>, out: &Path) -> TrainConfig {
    TrainConfig {
        model: model.to_path_buf(),
        train: vec![train.to_path_buf()],
        valid: valid.map(Path::to_path_buf).into_iter().collect(),
        output: out.to_path_buf(),
        max_length: 24,
        batch_size: 4,
        epochs: 2,
        lr: 1e-3,
        log_steps: 1,
        save_steps: 3,
        eval_batch_size: 8,
        pooling: "last".into(),
        append_eos: true,
        ..TrainConfig::default()
    }
}

#[test]
fn lora_run_writes_a_peft_adapter_that_resumes_bit_for_bit_encodes_and_merges() {
    let tmp = tempfile::tempdir().unwrap();
    let base = decoder_model("qwen2-lora-last");
    // 18 pairs, batch 4: 5 batches per epoch, 2 epochs = 10 steps.
    let train_file = stsb_head(tmp.path(), "train", 18, "train.csv");
    let valid = stsb_head(tmp.path(), "dev", 12, "dev.csv");
    let cfg = |out: &str| TrainConfig {
        lora: Some(LoraSettings {
            r: 4,
            alpha: 8.0,
            dropout: 0.1,
            targets: "q_proj,v_proj,down_proj".into(),
        }),
        merge_lora: true,
        ..config(&base, &train_file, Some(&valid), &tmp.path().join(out))
    };
    let full = train(cfg("full"), None, &TrainOptions::default()).unwrap();
    assert_eq!(full.steps, 10);
    let last = tmp.path().join("full").join(CHECKPOINT_LAST);
    // peft's layout, nothing of the base copied: the adapter names its base.
    assert!(!last.join("model.safetensors").exists());
    let adapter: serde_json::Value =
        serde_json::from_slice(&read(&last.join("adapter_config.json"))).unwrap();
    assert_eq!(adapter["peft_type"], "LORA");
    assert_eq!(adapter["r"], 4);
    let named = PathBuf::from(adapter["base_model_name_or_path"].as_str().unwrap());
    assert_eq!(named, std::fs::canonicalize(&base).unwrap());
    let adapter_bytes = read(&last.join("adapter_model.safetensors"));
    let weights: Vec<String> = safetensors::SafeTensors::deserialize(&adapter_bytes)
        .unwrap()
        .names()
        .into_iter()
        .map(str::to_string)
        .collect();
    assert!(
        weights.contains(&"base_model.model.model.layers.1.mlp.down_proj.lora_B.weight".to_string()),
        "{weights:?}"
    );
    assert_eq!(
        weights.len(),
        2 * 2 * 3,
        "A and B for 3 modules in 2 layers: {weights:?}"
    );
    assert!(
        tmp.path()
            .join("full")
            .join(BEST)
            .join("adapter_config.json")
            .is_file()
    );

    // Killed after step 7 (last save at 6), then resumed: the same adapter and moments as the straight run.
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
    let state = |p: &Path| -> serde_json::Value {
        let mut v: serde_json::Value = serde_json::from_slice(&read(&p.join(TRAINER_STATE))).unwrap();
        v.as_object_mut().unwrap().remove("train_seconds");
        v.as_object_mut().unwrap().remove("train_cpu_seconds");
        v
    };
    assert_eq!(state(&last), state(&ckpt));

    // The adapter folder encodes (base from the adapter config; EOS and pooling from angle_config.json);
    // the merged model (bf16 like its base) gives nearly the same embeddings; `angle merge` writes the same files.
    let texts = tmp.path().join("texts.txt");
    std::fs::write(
        &texts,
        "A man is playing a guitar.\nTwo dogs run on the beach.\nA woman slices an onion.\n",
    )
    .unwrap();
    let from_adapter = encode(&last, &texts, &[]);
    assert_eq!(from_adapter.len(), 3);
    let merged = tmp.path().join("full").join(MERGED);
    assert!(merged.join("model.safetensors").is_file() && merged.join("config.json").is_file());
    // The merged folder carries the adapter's settings: no flags needed to encode it as trained.
    let from_merged = encode(&merged, &texts, &[]);
    for (a, m) in from_adapter.iter().zip(&from_merged) {
        let c = cosine(a, m);
        assert!(c > 0.999, "merged model drifts from the adapter: cosine {c}");
    }
    let again = tmp.path().join("merged-again");
    let o = angle()
        .args(["merge", "--adapter"])
        .arg(&last)
        .arg("--output")
        .arg(&again)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "model.safetensors",
        "angle_config.json",
        "modules.json",
        "1_Pooling/config.json",
    ] {
        assert!(read(&again.join(f)) == read(&merged.join(f)), "{f} differs");
    }
    // ... and refuses to overwrite.
    let o = angle()
        .args(["merge", "--adapter"])
        .arg(&last)
        .arg("--output")
        .arg(&again)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("exists"));
}

#[test]
fn full_fine_tuning_of_a_decoder_saves_a_checkpoint_that_loads_again() {
    let tmp = tempfile::tempdir().unwrap();
    let base = decoder_model("llama-causal-last");
    let train_file = stsb_head(tmp.path(), "train", 8, "train.csv");
    let c = TrainConfig {
        epochs: 1,
        append_eos: false,
        ..config(&base, &train_file, None, &tmp.path().join("out"))
    };
    let s = train(c, None, &TrainOptions::default()).unwrap();
    assert_eq!(s.steps, 2);
    let last = tmp.path().join("out").join(CHECKPOINT_LAST);
    // The trained tensors stay f32 in a training checkpoint: it resumes exactly.
    let bytes = read(&last.join("model.safetensors"));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("model.layers.0.self_attn.q_proj.weight").unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    let texts = tmp.path().join("texts.txt");
    std::fs::write(&texts, "A man is playing a guitar.\nA dog.\n").unwrap();
    let before = encode(&base, &texts, &[]);
    let after = encode(&last, &texts, &[]);
    assert_eq!(after.len(), 2);
    assert_ne!(before, after, "training changed nothing");
}

/// `--gradient-checkpointing` on a decoder: the same adapter bit for bit (LoRA dropout on: the recompute
/// draws the masks again from the layer's seeds), and the same full fine-tune.
#[test]
fn gradient_checkpointing_trains_a_decoder_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let train_file = stsb_head(tmp.path(), "train", 8, "train.csv");
    for (case, lora, file) in [
        ("qwen2-lora-last", true, "adapter_model.safetensors"),
        ("llama-causal-last", false, "model.safetensors"),
    ] {
        let base = decoder_model(case);
        let run = |out: &str, ckpt: bool| {
            let c = TrainConfig {
                epochs: 1,
                gradient_checkpointing: ckpt,
                lora: lora.then(|| LoraSettings {
                    r: 4,
                    alpha: 8.0,
                    dropout: 0.1,
                    targets: "all-linear".into(),
                }),
                ..config(&base, &train_file, None, &tmp.path().join(out))
            };
            train(c, None, &TrainOptions::default()).unwrap();
            read(&tmp.path().join(out).join(CHECKPOINT_LAST).join(file))
        };
        let plain = run(&format!("{case}-plain"), false);
        assert!(plain == run(&format!("{case}-ckpt"), true), "{case}");
    }
}

#[test]
fn decoder_options_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let train_file = stsb_head(tmp.path(), "train", 8, "train.csv");
    // LoRA on a target that matches no module names it.
    let c = TrainConfig {
        lora: Some(LoraSettings {
            targets: "q_proj,attn_c".into(),
            ..LoraSettings::default()
        }),
        ..config(
            &decoder_model("qwen2-lora-last"),
            &train_file,
            None,
            &tmp.path().join("a"),
        )
    };
    let e = train(c, None, &TrainOptions::default()).unwrap_err().to_string();
    assert!(e.contains("attn_c"), "{e}");
    // LoRA on a BERT model takes the encoder's module names: a decoder's is named as matching nothing.
    let bert = tiny_model(tmp.path(), 1);
    let c = TrainConfig {
        lora: Some(LoraSettings {
            targets: "query,q_proj".into(),
            ..LoraSettings::default()
        }),
        append_eos: false,
        pooling: "mean".into(),
        ..config(&bert, &train_file, None, &tmp.path().join("b"))
    };
    let e = train(c, None, &TrainOptions::default()).unwrap_err().to_string();
    assert!(
        e.contains("q_proj") && e.contains("matches no linear module"),
        "{e}"
    );
    // An adapter whose base is gone asks for --base-model.
    let adapter = tmp.path().join("adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    let src = decoder_model("qwen2-lora-last").join("adapter");
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(src.join(f), adapter.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&read(&adapter.join("adapter_config.json"))).unwrap();
    cfg["base_model_name_or_path"] = "/nonexistent/base".into();
    std::fs::write(adapter.join("adapter_config.json"), cfg.to_string()).unwrap();
    let texts = tmp.path().join("t.txt");
    std::fs::write(&texts, "hello\n").unwrap();
    let o = angle()
        .args(["encode", "--model"])
        .arg(&adapter)
        .arg("--input")
        .arg(&texts)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--base-model"), "{err}");
    // With --base-model it encodes.
    let o = angle()
        .args(["encode", "--model"])
        .arg(&adapter)
        .arg("--base-model")
        .arg(decoder_model("qwen2-lora-last"))
        .arg("--input")
        .arg(&texts)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The merged folder's sentence-transformers files describe the pooling it was trained with, whatever the
/// base's say: rewritten for a pooling they can express, absent (with a note in `angle_config.json`) for one
/// they cannot. `--merge-lora` and `angle merge` agree.
#[test]
fn merged_sentence_transformers_files_follow_the_trained_pooling() {
    let tmp = tempfile::tempdir().unwrap();
    // a base whose sentence-transformers files claim mean pooling
    let base = tmp.path().join("base");
    std::fs::create_dir_all(base.join("1_Pooling")).unwrap();
    for e in std::fs::read_dir(decoder_model("qwen2-lora-last")).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, base.join(p.file_name().unwrap())).unwrap();
        }
    }
    let modules = r#"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]"#;
    std::fs::write(base.join("modules.json"), modules).unwrap();
    let mean = r#"{"word_embedding_dimension": 64, "pooling_mode_mean_tokens": true}"#;
    std::fs::write(base.join("1_Pooling/config.json"), mean).unwrap();
    let train_file = stsb_head(tmp.path(), "train", 8, "train.csv");
    let json = |p: &Path| -> serde_json::Value { serde_json::from_slice(&read(p)).unwrap() };
    for (pooling, st_mode) in [("last", Some("pooling_mode_lasttoken")), ("3", None)] {
        let out = tmp.path().join(format!("run-{pooling}"));
        let cfg = TrainConfig {
            lora: Some(LoraSettings {
                r: 2,
                alpha: 4.0,
                dropout: 0.0,
                targets: "q_proj".into(),
            }),
            merge_lora: true,
            epochs: 1,
            pooling: pooling.into(),
            ..config(&base, &train_file, None, &out)
        };
        train(cfg, None, &TrainOptions::default()).unwrap();
        let again = tmp.path().join(format!("merged-again-{pooling}"));
        let o = angle()
            .args(["merge", "--adapter"])
            .arg(out.join(CHECKPOINT_LAST))
            .arg("--output")
            .arg(&again)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        for merged in [out.join(MERGED), again] {
            let angle_cfg = json(&merged.join("angle_config.json"));
            assert_eq!(angle_cfg["pooling"], pooling, "{}", merged.display());
            match st_mode {
                Some(mode) => {
                    let pool = json(&merged.join("1_Pooling/config.json"));
                    assert_eq!(pool[mode], true, "{}: {pool}", merged.display());
                    assert_eq!(pool["pooling_mode_mean_tokens"], false, "{}", merged.display());
                    assert_eq!(pool["word_embedding_dimension"], 64);
                    let m = json(&merged.join("modules.json"));
                    assert_eq!(m[1]["path"], "1_Pooling", "{}", merged.display());
                    assert!(angle_cfg.get("sentence_transformers").is_none());
                }
                None => {
                    assert!(!merged.join("modules.json").exists(), "{}", merged.display());
                    assert!(!merged.join("1_Pooling").exists(), "{}", merged.display());
                    let note = angle_cfg["sentence_transformers"].as_str().unwrap_or_default();
                    assert!(note.contains("no sentence-transformers equivalent"), "{note:?}");
                }
            }
        }
    }
}

/// `--load-kbit 8`: a LoRA run on an 8-bit base trains (loss finite, the adapter written), resumes bit for bit,
/// merges into the checkpoint's own base weights, encodes in int8 (`--load-kbit 8` on encode); the options that
/// cannot hold are refused by name.
#[test]
fn lora_on_an_8_bit_base_trains_resumes_and_is_refused_where_it_cannot_run() {
    let tmp = tempfile::tempdir().unwrap();
    let base = decoder_model("qwen2-lora-last");
    let train_file = stsb_head(tmp.path(), "train", 18, "train.csv");
    let cfg = |out: &str, kbit: Option<u8>| TrainConfig {
        lora: Some(LoraSettings {
            r: 4,
            alpha: 8.0,
            dropout: 0.1,
            targets: "all-linear".into(),
        }),
        load_kbit: kbit,
        merge_lora: true,
        ..config(&base, &train_file, None, &tmp.path().join(out))
    };
    let full = train(cfg("q8", Some(8)), None, &TrainOptions::default()).unwrap();
    assert_eq!(full.steps, 10);
    let last = tmp.path().join("q8").join(CHECKPOINT_LAST);
    let saved: serde_json::Value = serde_json::from_slice(&read(&last.join("angle_config.json"))).unwrap();
    assert_eq!(saved["train"]["load_kbit"], 8);
    // Not the f32 base's run: the same seed and data give other weights.
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
    // Interrupted and resumed: the same adapter, bit for bit.
    let halted = TrainOptions {
        halt_after: Some(4),
        ..TrainOptions::default()
    };
    train(cfg("part", Some(8)), None, &halted).unwrap();
    let ckpt = tmp.path().join("part").join(CHECKPOINT_LAST);
    train(cfg("part", Some(8)), Some(&ckpt), &TrainOptions::default()).unwrap();
    assert!(adapter("part") == adapter("q8"), "resumed 8-bit run differs");
    // The merged model encodes; in int8 too.
    let texts = tmp.path().join("t.txt");
    std::fs::write(&texts, "a man plays a guitar\nthe cat sleeps\n").unwrap();
    let merged = tmp.path().join("q8").join("merged");
    let f = encode(&merged, &texts, &[]);
    let q = encode(&merged, &texts, &["--load-kbit", "8"]);
    for (a, b) in f.iter().zip(&q) {
        assert!(
            cosine(a, b) > 0.95,
            "int8 encode of the merged model: cosine {}",
            cosine(a, b)
        );
    }

    for (c, needle) in [
        (
            TrainConfig {
                lora: None,
                ..cfg("x1", Some(8))
            },
            "--lora-r",
        ),
        (cfg("x2", Some(4)), "--load-kbit 4"),
        (cfg("x3", Some(6)), "--load-kbit 6"),
    ] {
        let e = train(c, None, &TrainOptions::default()).unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
    }
    let o = angle()
        .args(["encode", "--model"])
        .arg(&merged)
        .args([
            "--input",
            texts.to_str().unwrap(),
            "--load-kbit",
            "8",
            "--precision",
            "bf16",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--load-kbit 8 is --precision int8"));
}
