//! Defects found by trying the `angle` binary as a user would (issue 14), each pinned by a test.

mod common;

use std::process::Command;

use angle_train::checkpoint::save_model_dir;
use angle_train::embed::{LoadOptions, load_backbone};
use angle_train::trainer::CHECKPOINT_LAST;
use angle_train::{TrainConfig, TrainOptions, train};
use common::{minilm_dir, stsb_head, tiny_config, tiny_model};

fn angle() -> Command {
    Command::new(env!("CARGO_BIN_EXE_angle"))
}

fn run_ok(c: &mut Command) -> std::process::Output {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

#[test]
fn encode_keeps_empty_lines_so_row_i_is_line_i() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 5);
    let input = tmp.path().join("in.txt");
    std::fs::write(&input, "A man plays guitar.\n\n   \nA dog runs.\n").unwrap();
    let o = run_ok(
        angle()
            .args(["encode", "--model"])
            .arg(&model)
            .arg("--input")
            .arg(&input),
    );
    let rows: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let texts: Vec<&str> = rows.iter().map(|r| r["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["A man plays guitar.", "", "   ", "A dog runs."]);
    let npy = tmp.path().join("out.npy");
    run_ok(
        angle()
            .args(["encode", "--model"])
            .arg(&model)
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&npy),
    );
    let bytes = std::fs::read(&npy).unwrap();
    let header = String::from_utf8_lossy(&bytes[..128]);
    assert!(header.contains("'shape': (4, 32)"), "{header}");
    // The empty text is embedded as the tokenizer encodes it ([CLS] [SEP]), the same as on its own.
    let single = tmp.path().join("one.txt");
    std::fs::write(&single, "\n").unwrap();
    let o = run_ok(
        angle()
            .args(["encode", "--model"])
            .arg(&model)
            .arg("--input")
            .arg(&single),
    );
    let alone: serde_json::Value = serde_json::from_str(String::from_utf8(o.stdout).unwrap().trim()).unwrap();
    let close = |a: &serde_json::Value, b: &serde_json::Value| {
        let (a, b) = (a.as_array().unwrap(), b.as_array().unwrap());
        a.iter()
            .zip(b)
            .all(|(x, y)| (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-5)
    };
    assert!(close(&alone["embedding"], &rows[1]["embedding"]));
}

#[test]
fn training_into_an_earlier_runs_folder_is_refused_unless_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 6);
    let train_file = stsb_head(tmp.path(), "train", 16, "train.csv");
    let out = tmp.path().join("run");
    let cfg = || TrainConfig {
        epochs: 1,
        ..tiny_config(&model, &train_file, None, &out)
    };
    train(cfg(), None, &TrainOptions::default()).unwrap();
    let before = std::fs::read(out.join(CHECKPOINT_LAST).join("model.safetensors")).unwrap();
    let e = train(cfg(), None, &TrainOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("checkpoint-last") && e.contains("--overwrite") && e.contains("--resume"),
        "{e}"
    );
    assert_eq!(
        before,
        std::fs::read(out.join(CHECKPOINT_LAST).join("model.safetensors")).unwrap()
    );
    // Through the binary too, and --overwrite replaces it.
    let args = |c: &mut Command| {
        c.args([
            "train",
            "--progress",
            "false",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--max-length",
            "32",
        ])
        .arg("--model")
        .arg(&model)
        .arg("--train")
        .arg(&train_file)
        .arg("--output")
        .arg(&out);
    };
    let mut c = angle();
    args(&mut c);
    let o = c.output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("earlier run"));
    let mut c = angle();
    args(&mut c);
    run_ok(c.arg("--overwrite"));
}

#[test]
fn a_saved_checkpoint_carries_the_tensors_angle_does_not_train() {
    let tmp = tempfile::tempdir().unwrap();
    let src = minilm_dir();
    let (mut model, _) = load_backbone(&src, 64, LoadOptions::default()).unwrap();
    let cfg = TrainConfig {
        model: src.clone(),
        ..TrainConfig::default()
    };
    let dest = tmp.path().join("saved");
    save_model_dir(&dest, &mut *model, &src, &cfg, 0).unwrap();
    let (a, b) = (
        std::fs::read(src.join("model.safetensors")).unwrap(),
        std::fs::read(dest.join("model.safetensors")).unwrap(),
    );
    let (a, b) = (
        safetensors::SafeTensors::deserialize(&a).unwrap(),
        safetensors::SafeTensors::deserialize(&b).unwrap(),
    );
    let mut names_a = a.names();
    let mut names_b = b.names();
    names_a.sort();
    names_b.sort();
    assert_eq!(
        names_a, names_b,
        "every tensor of the source is in the saved checkpoint"
    );
    for name in ["pooler.dense.weight", "pooler.dense.bias"] {
        assert_eq!(
            a.tensor(name).unwrap().data(),
            b.tensor(name).unwrap().data(),
            "{name}"
        );
    }
}

#[test]
fn user_errors_print_no_backtrace_even_with_rust_backtrace_set() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    for args in [
        vec!["encode", "--model", missing.to_str().unwrap()],
        vec![
            "train",
            "--model",
            missing.to_str().unwrap(),
            "--train",
            "x.csv",
            "--output",
            "o",
            "--lr",
            "abc",
        ],
    ] {
        let o = angle().args(&args).env("RUST_BACKTRACE", "1").output().unwrap();
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.to_lowercase().contains("backtrace"), "{args:?}: {err}");
        assert!(!err.trim().is_empty());
    }
}

#[test]
fn encode_with_fewer_layers_and_dimensions() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 7);
    let input = tmp.path().join("in.txt");
    std::fs::write(&input, "A man plays guitar.\nA dog runs.\n").unwrap();
    let o = run_ok(
        angle()
            .args(["encode", "--layers", "1", "--dim", "8", "--normalize", "--model"])
            .arg(&model)
            .arg("--input")
            .arg(&input),
    );
    for line in String::from_utf8(o.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let e: Vec<f64> = v["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(e.len(), 8);
        let norm = e.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "renormalised after truncation: {norm}");
    }
    for (flag, value, says) in [
        ("--layers", "3", "2 layers"),
        ("--layers", "0", "1..=2"),
        ("--dim", "64", "32 dimensions"),
    ] {
        let o = angle()
            .args(["encode", flag, value, "--model"])
            .arg(&model)
            .arg("--input")
            .arg(&input)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{flag} {value} must fail");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(says), "{flag} {value}: {err}");
    }
}
