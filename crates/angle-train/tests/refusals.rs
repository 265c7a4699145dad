//! Option combinations that cannot run are refused before anything loads, naming the option (issue 23).
//!
//! Each case runs the binary with a model folder that holds only `config.json` (no weights, no tokenizer) or
//! does not exist, and a training file that does not exist: loading either would fail with another message, so
//! the option's error coming back proves it came first. Nothing may be printed before it (no precision line)
//! and no output folder may appear.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use angle_train::{TrainConfig, TrainOptions, train};
use common::{minilm_dir, shared};

fn angle() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_angle"));
    c.stdin(Stdio::null());
    c
}

/// A folder with only `src`'s `config.json`, edited by `edit`.
fn config_only(root: &Path, name: &str, src: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(src.join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut v);
    std::fs::write(dir.join("config.json"), v.to_string()).unwrap();
    dir
}

fn bert(root: &Path) -> PathBuf {
    config_only(root, "bert", &minilm_dir(), |_| {})
}

fn decoder(root: &Path) -> PathBuf {
    let src = shared("fixtures/decoder/llama-causal-last/model");
    config_only(root, "decoder", &src, |_| {})
}

/// The run failed with an error that contains every one of `says`, and it was the first thing printed.
fn assert_refused(o: &Output, what: &str, says: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{what}: ran\n{err}");
    assert!(
        err.starts_with("Error: "),
        "{what}: printed before the error:\n{err}"
    );
    assert!(!err.contains("panicked"), "{what}: panicked:\n{err}");
    for s in says {
        assert!(err.contains(s), "{what}: the error lacks {s:?}:\n{err}");
    }
}

/// `angle train` on `model` with a missing training file and `extra`, refused with `says`.
fn train_refused(model: &Path, extra: &[&str], says: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = angle()
        .args(["train", "--progress", "false", "--model"])
        .arg(model)
        .arg("--train")
        .arg(tmp.path().join("missing.csv"))
        .arg("--output")
        .arg(&out)
        .args(extra)
        .output()
        .unwrap();
    let what = format!("train {extra:?}");
    assert_refused(&o, &what, says);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !err.contains("missing.csv"),
        "{what}: the data was read first:\n{err}"
    );
    assert!(!out.exists(), "{what}: the refused run wrote {}", out.display());
}

#[test]
fn odd_matryoshka_width_with_the_angle_objective() {
    let tmp = tempfile::tempdir().unwrap();
    let says = ["--matryoshka-dims 383,64", "383 is odd", "--angle-w 0"];
    train_refused(
        &bert(tmp.path()),
        &["--matryoshka-dims", "383,64", "--angle-w", "1"],
        &says,
    );
    // Wrong whatever the model: refused before the model's name is resolved.
    train_refused(
        &tmp.path().join("no-model"),
        &["--matryoshka-dims", "383,64"],
        &says,
    );
    // Without the angle objective an odd width is fine: the run gets as far as the missing data.
    let o = angle()
        .args(["train", "--progress", "false", "--precision", "f32", "--model"])
        .arg(bert(tmp.path()))
        .arg("--train")
        .arg(tmp.path().join("missing.csv"))
        .arg("--output")
        .arg(tmp.path().join("run"))
        .args(["--matryoshka-dims", "383,64", "--angle-w", "0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("missing.csv"), "{err}");
}

#[test]
fn a_missing_data_file_is_reported_before_the_model_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let train_file = common::stsb_head(tmp.path(), "train", 9, "train.csv");
    for (train, valid) in [
        (tmp.path().join("missing.csv"), None),
        (train_file, Some(tmp.path().join("missing-valid.csv"))),
    ] {
        let mut c = angle();
        c.args(["train", "--progress", "false", "--precision", "f32", "--model"])
            .arg(bert(tmp.path()))
            .arg("--train")
            .arg(&train)
            .arg("--output")
            .arg(tmp.path().join("run"));
        if let Some(v) = &valid {
            c.arg("--valid").arg(v);
        }
        let o = c.output().unwrap();
        let missing = valid.as_ref().unwrap_or(&train).display().to_string();
        // The folder holds no weights: the data error coming back shows the model was not loaded first.
        assert_refused(&o, "missing data", &[&missing]);
        assert!(!tmp.path().join("run").exists());
    }
}

#[test]
fn append_eos_without_an_eos_token() {
    let tmp = tempfile::tempdir().unwrap();
    let m = bert(tmp.path());
    std::fs::copy(
        minilm_dir().join("tokenizer_config.json"),
        m.join("tokenizer_config.json"),
    )
    .unwrap();
    train_refused(&m, &["--append-eos"], &["--append-eos", "eos_token"]);
    embed_refused("encode", &m, &["--append-eos"], &["--append-eos", "eos_token"]);
}

#[test]
fn odd_hidden_size_with_the_angle_objective() {
    let tmp = tempfile::tempdir().unwrap();
    let model = config_only(tmp.path(), "odd", &minilm_dir(), |v| {
        v["hidden_size"] = 387.into();
        v["num_attention_heads"] = 9.into();
    });
    train_refused(&model, &[], &["hidden size 387 is odd", "--angle-w"]);
}

#[test]
fn ese_on_a_decoder() {
    let tmp = tempfile::tempdir().unwrap();
    train_refused(&decoder(tmp.path()), &["--ese"], &["--ese", "decoder-family"]);
    // The library refuses it as early: no output folder, the missing data not reached.
    let out = tmp.path().join("lib-run");
    let c = TrainConfig {
        model: decoder(tmp.path()),
        train: vec![tmp.path().join("missing.csv")],
        output: out.clone(),
        ese: Some(angle_loss::EseConfig {
            compression_size: 16,
            ..Default::default()
        }),
        ..TrainConfig::default()
    };
    let e = train(c, None, &TrainOptions::default()).unwrap_err().to_string();
    assert!(e.contains("--ese") && !e.contains("missing.csv"), "{e}");
    assert!(!out.exists());
}

#[test]
fn ese_settings_the_model_cannot_take() {
    let tmp = tempfile::tempdir().unwrap();
    let m = bert(tmp.path());
    train_refused(
        &m,
        &["--ese", "--ese-compression-size", "127"],
        &["--ese-compression-size 127", "odd"],
    );
    train_refused(
        &m,
        &["--ese", "--ese-compression-size", "512"],
        &["--ese-compression-size 512", "384"],
    );
    train_refused(
        &m,
        &["--ese", "--ese-compression-size", "0"],
        &["--ese-compression-size 0"],
    );
    train_refused(
        &m,
        &["--ese", "--ese-kl-temperature", "0"],
        &["--ese-kl-temperature 0"],
    );
}

#[test]
fn matryoshka_settings_the_model_cannot_take() {
    let tmp = tempfile::tempdir().unwrap();
    let m = bert(tmp.path());
    train_refused(
        &m,
        &["--matryoshka-dims", "512,64"],
        &["--matryoshka-dims 512,64", "512", "384"],
    );
    train_refused(
        &m,
        &["--matryoshka-dims", "256,64", "--matryoshka-weights", "1"],
        &["--matryoshka-weights", "one weight per width"],
    );
    train_refused(
        &m,
        &["--matryoshka-dims", "256,0"],
        &["--matryoshka-dims", "positive"],
    );
}

#[test]
fn lora_and_attention_options_on_a_bert_model() {
    let tmp = tempfile::tempdir().unwrap();
    let m = bert(tmp.path());
    // LoRA on an encoder takes its module names (checked before any data is read)
    train_refused(
        &m,
        &["--lora-targets", "q_proj"],
        &["--lora-targets", "q_proj", "attention.self.query"],
    );
    train_refused(&m, &["--lora-r", "8", "--ese"], &["--ese", "LoRA"]);
    train_refused(&m, &["--bidirectional"], &["--bidirectional", "decoder family"]);
    train_refused(&m, &["--merge-lora"], &["--merge-lora", "LoRA"]);
}

#[test]
fn lora_settings_that_cannot_run() {
    let tmp = tempfile::tempdir().unwrap();
    let m = decoder(tmp.path());
    train_refused(
        &m,
        &["--lora-targets", "q_proj,attn_c"],
        &["--lora-targets", "attn_c"],
    );
    train_refused(&m, &["--lora-r", "0"], &["--lora-r 0"]);
    train_refused(&m, &["--lora-dropout", "1.5"], &["--lora-dropout 1.5"]);
    // A full fine-tune has no adapter to merge, which used to fail after the last step.
    train_refused(&m, &["--merge-lora"], &["--merge-lora", "LoRA"]);
}

#[test]
fn data_options_that_cannot_parse() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("no-model");
    train_refused(&m, &["--format", "D"], &["--format", "\"D\""]);
    train_refused(&m, &["--columns", "sentence1"], &["--columns", "sentence1"]);
    train_refused(&m, &["--text-prompt", "no placeholder"], &["--text-prompt"]);
    train_refused(&m, &["--query-prompt", "no placeholder"], &["--query-prompt"]);
}

#[test]
fn gpu_only_and_cpu_only_combinations() {
    let tmp = tempfile::tempdir().unwrap();
    let cuda = ["--device", "cuda"];
    if cfg!(feature = "cuda") {
        train_refused(
            &bert(tmp.path()),
            &["--device", "cuda", "--ese"],
            &["--ese", "--device cpu"],
        );
        train_refused(&decoder(tmp.path()), &cuda, &["--device cuda", "decoder-family"]);
        train_refused(
            &bert(tmp.path()),
            &["--device", "cuda", "--pooling", "max"],
            &["--pooling max"],
        );
    } else {
        // Without the feature no combination with --device cuda runs: said before anything else.
        for m in [bert(tmp.path()), decoder(tmp.path()), tmp.path().join("no-model")] {
            train_refused(&m, &cuda, &[angle_train::device::NO_CUDA]);
        }
    }
}

#[test]
fn an_output_folder_that_the_run_would_refuse_at_its_end() {
    let tmp = tempfile::tempdir().unwrap();
    let m = decoder(tmp.path());
    let out = tmp.path().join("run");
    std::fs::create_dir_all(out.join("merged")).unwrap();
    std::fs::write(out.join("metrics.jsonl"), "").unwrap();
    let run = |extra: &[&str]| {
        angle()
            .args(["train", "--progress", "false", "--model"])
            .arg(&m)
            .arg("--train")
            .arg(tmp.path().join("missing.csv"))
            .arg("--output")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    // An earlier run's files: before the data is read (it was after the model and data had loaded).
    assert_refused(
        &run(&["--lora-r", "4"]),
        "earlier run",
        &["earlier run", "--overwrite"],
    );
    // --overwrite replaces the run, but the earlier merged model would stop --merge-lora after the last step.
    let o = run(&["--lora-r", "4", "--merge-lora", "--overwrite"]);
    assert_refused(&o, "merged exists", &["--merge-lora", "merged"]);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("missing.csv"));
}

#[test]
fn resume_from_a_folder_that_is_not_a_training_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let best = tmp.path().join("run/best");
    std::fs::create_dir_all(&best).unwrap();
    std::fs::write(best.join("angle_config.json"), "{}").unwrap();
    let o = angle().args(["train", "--resume"]).arg(&best).output().unwrap();
    assert_refused(
        &o,
        "resume best",
        &["--resume", "trainer_state.json", "checkpoint-last"],
    );
    // The run folder instead of its checkpoint-last: the error says which folder to give.
    std::fs::create_dir_all(tmp.path().join("run/checkpoint-last")).unwrap();
    let o = angle()
        .args(["train", "--resume"])
        .arg(tmp.path().join("run"))
        .output()
        .unwrap();
    let hint = tmp.path().join("run/checkpoint-last").display().to_string();
    assert_refused(&o, "resume run folder", &["--resume", &hint]);
}

/// `angle CMD --model MODEL ARGS` with an input file that exists, refused with `says`.
fn embed_refused(cmd: &str, model: &Path, extra: &[&str], says: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.txt");
    std::fs::write(&input, "a cat sits\n").unwrap();
    let mut c = angle();
    c.arg(cmd).arg("--model").arg(model);
    match cmd {
        "encode" => c.arg("--input").arg(&input),
        "eval" => c.arg("--data").arg(common::stsb_dir().join("stsb-en-test.csv")),
        "similarity" => c.args(["a cat", "a dog"]),
        _ => &mut c,
    };
    let o = c.args(extra).output().unwrap();
    assert_refused(&o, &format!("{cmd} {extra:?}"), says);
}

#[test]
fn inference_options_the_model_cannot_take() {
    let tmp = tempfile::tempdir().unwrap();
    let (b, d) = (bert(tmp.path()), decoder(tmp.path()));
    embed_refused("encode", &b, &["--dim", "500"], &["--dim 500", "384 dimensions"]);
    embed_refused("similarity", &b, &["--dim", "500"], &["--dim 500"]);
    embed_refused("encode", &b, &["--layers", "9"], &["--layers 9", "6 layers"]);
    embed_refused("encode", &b, &["--dim", "0"], &["--dim 0", "1..=384"]);
    embed_refused("encode", &b, &["--layers", "0"], &["--layers 0", "1..=6"]);
    embed_refused("encode", &d, &["--layers", "1"], &["--layers", "BERT family"]);
    embed_refused(
        "encode",
        &d,
        &["--bidirectional-from", "1", "--bidirectional"],
        &["--bidirectional-from"],
    );
    embed_refused(
        "encode",
        &b,
        &["--bidirectional"],
        &["--bidirectional", "decoder family"],
    );
    // Wrong whatever the model.
    let none = tmp.path().join("no-model");
    embed_refused("encode", &none, &["--max-length", "0"], &["--max-length 0"]);
    embed_refused(
        "encode",
        &none,
        &["--pooling", "median"],
        &["--pooling", "median"],
    );
    // eval scores the angle measure too: an odd width used to fail after every text was embedded.
    embed_refused("eval", &b, &["--dim", "383"], &["--dim 383", "angle"]);
    if !cfg!(feature = "cuda") {
        embed_refused(
            "encode",
            &b,
            &["--device", "cuda"],
            &[angle_train::device::NO_CUDA],
        );
    }
}

#[test]
fn files_an_inference_command_needs_are_checked_before_the_model_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let b = bert(tmp.path());
    let exists = tmp.path().join("exists");
    std::fs::create_dir_all(&exists).unwrap();
    embed_refused(
        "export",
        &b,
        &["--output", exists.to_str().unwrap()],
        &["--output", "exists"],
    );
    let o = angle()
        .args(["encode", "--model"])
        .arg(&b)
        .arg("--input")
        .arg(tmp.path().join("missing.txt"))
        .output()
        .unwrap();
    assert_refused(&o, "encode missing input", &["--input", "missing.txt"]);
    let input = tmp.path().join("in.txt");
    std::fs::write(&input, "a cat sits\n").unwrap();
    let o = angle()
        .args(["encode", "--model"])
        .arg(&b)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(tmp.path().join("no-such-folder/out.npy"))
        .output()
        .unwrap();
    assert_refused(&o, "encode output folder", &["--output", "no-such-folder"]);
    let adapter = shared("fixtures/decoder/qwen2-lora-last/model/adapter");
    let o = angle()
        .args(["merge", "--adapter"])
        .arg(&adapter)
        .arg("--base-model")
        .arg(shared("fixtures/decoder/qwen2-lora-last/model"))
        .arg("--output")
        .arg(&exists)
        .output()
        .unwrap();
    assert_refused(&o, "merge into an existing folder", &["--output", "exists"]);
}
