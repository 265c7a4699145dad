//! `--device cuda` from the command line: without the `cuda` feature a clear error naming the
//! rebuild; with it but no usable GPU (as on CI) the GPU layer's error. Never a panic, and nothing
//! written to the output directory.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{stsb_head, tiny_model};

fn angle() -> Command {
    Command::new(env!("CARGO_BIN_EXE_angle"))
}

fn cuda_usable() -> bool {
    cfg!(feature = "cuda") && std::env::var_os("ANGLE_TEST_GPU").is_some()
}

fn check_refusal(out: &std::process::Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{what}: --device cuda succeeded without a GPU"
    );
    assert!(!err.contains("panicked"), "{what}: panicked:\n{err}");
    if cfg!(feature = "cuda") {
        assert!(err.contains("device:"), "{what}: unexpected error:\n{err}");
    } else {
        assert!(
            err.contains(angle_train::device::NO_CUDA),
            "{what}: the error does not say how to rebuild:\n{err}"
        );
    }
}

#[test]
fn train_on_cuda_is_refused_clearly() {
    if cuda_usable() {
        eprintln!("skipped: ANGLE_TEST_GPU is set (a GPU is expected to work here)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), 1);
    let train = stsb_head(dir.path(), "train", 17, "train.csv");
    let output = dir.path().join("run");
    let out = angle()
        .args([
            "train",
            "--progress",
            "false",
            "--max-length",
            "32",
            "--batch-size",
            "8",
        ])
        .arg("--model")
        .arg(&model)
        .arg("--train")
        .arg(&train)
        .arg("--output")
        .arg(&output)
        .args(["--device", "cuda"])
        .output()
        .unwrap();
    check_refusal(&out, "angle train");
    assert!(!output.exists(), "the refused run wrote {}", output.display());
}

#[test]
fn encode_on_cuda_is_refused_clearly() {
    if cuda_usable() {
        eprintln!("skipped: ANGLE_TEST_GPU is set (a GPU is expected to work here)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), 2);
    let mut child = angle()
        .args(["encode", "--pooling", "mean", "--device", "cuda"])
        .arg("--model")
        .arg(&model)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The refusal may come before the text is read (the process gone, the pipe closed): only the answer counts.
    let _ = child.stdin.take().unwrap().write_all(b"a cat sits\n");
    let out = child.wait_with_output().unwrap();
    check_refusal(&out, "angle encode");
}

#[test]
fn unknown_device_is_a_usage_error() {
    let out = angle()
        .args(["encode", "--model", "x", "--device", "tpu"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown device"), "{err}");
}

#[test]
fn tf32_on_the_cpu_is_refused_before_anything_is_written_and_bf16_runs() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), 3);
    let train = stsb_head(dir.path(), "train", 9, "train.csv");
    let output = dir.path().join("run");
    let out = angle()
        .args(["train", "--progress", "false", "--precision", "tf32"])
        .arg("--model")
        .arg(&model)
        .arg("--train")
        .arg(&train)
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "tf32 on the CPU trained");
    assert!(!err.contains("panicked"), "panicked:\n{err}");
    assert!(err.contains("--precision tf32 needs --device cuda"), "{err}");
    assert!(!output.exists(), "the refused run wrote {}", output.display());

    // bf16 on the CPU trains (bf16 products, f32 weight gradients and AdamW)
    let out = angle()
        .args([
            "train",
            "--progress",
            "false",
            "--precision",
            "bf16",
            "--epochs",
            "1",
        ])
        .arg("--model")
        .arg(&model)
        .arg("--train")
        .arg(&train)
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bf16 training on the CPU failed:\n{err}");
    assert!(err.contains("training with bf16 products"), "{err}");
    // The run finished: every planned step taken, its weights saved.
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("summary.json")).unwrap()).unwrap();
    let steps = summary["steps"].as_u64().unwrap();
    assert!(
        steps >= 1 && Some(steps) == summary["total_steps"].as_u64(),
        "{summary}"
    );
    assert!(output.join("checkpoint-last/model.safetensors").is_file());
    // the run records its products, and a resume without --precision keeps them (whatever this CPU's default)
    let saved = output.join("checkpoint-last").join("angle_config.json");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert_eq!(cfg["train"]["cpu_precision"], "bf16", "{}", saved.display());
    let out = angle()
        .args(["train", "--progress", "false", "--resume"])
        .arg(output.join("checkpoint-last"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "resume failed:\n{err}");
    assert!(
        err.contains("training with bf16 products"),
        "resume changed the products:\n{err}"
    );

    let out = angle()
        .args([
            "encode",
            "--pooling",
            "mean",
            "--precision",
            "bf16",
            "--device",
            "cpu",
        ])
        .arg("--model")
        .arg(&model)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    // bf16 on the CPU is an inference precision: encode runs (AMX products, or the portable path)
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bf16 encode on the CPU failed: {err}");

    let out = angle()
        .args([
            "encode",
            "--pooling",
            "mean",
            "--precision",
            "tf32",
            "--device",
            "cpu",
        ])
        .arg("--model")
        .arg(&model)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "tf32 on the CPU encoded");
    assert!(err.contains("needs --device cuda"), "{err}");
}

#[test]
fn unknown_precision_is_a_usage_error() {
    let out = angle()
        .args(["encode", "--model", "x", "--device", "cuda", "--precision", "fp8"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown precision"), "{err}");
}
