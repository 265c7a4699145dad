//! `--model ORG/NAME` through a Hugging Face cache in a temporary HF_HOME, offline (these machines reach no hub).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{stsb_head, tiny_model};

const COMMIT: &str = "fedcba9876543210fedcba9876543210fedcba98";
const ID: &str = "angle-test/tiny-bert";

/// A cache holding `model`'s files as huggingface_hub stores them: blobs, a snapshot of links, refs/main.
fn cache_with(model: &Path, hf_home: &Path, skip: &[&str]) -> PathBuf {
    let repo = hf_home.join("hub").join("models--angle-test--tiny-bert");
    let snap = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    for e in std::fs::read_dir(model).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_file() && !skip.contains(&name.as_str()) {
            let blob = repo.join("blobs").join(format!("blob-{name}"));
            std::fs::copy(e.path(), &blob).unwrap();
            std::os::unix::fs::symlink(&blob, snap.join(&name)).unwrap();
        }
    }
    snap
}

fn angle(hf_home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_angle"));
    c.env("HF_HOME", hf_home)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HUGGINGFACE_HUB_CACHE");
    c
}

fn output(c: &mut Command) -> (bool, String, String) {
    let o = c.output().unwrap();
    let s = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (o.status.success(), s(o.stdout), s(o.stderr))
}

#[test]
fn a_hub_id_encodes_from_the_cache_as_its_folder_does() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 3);
    let home = tmp.path().join("hf");
    cache_with(&model, &home, &[]);
    let input = tmp.path().join("in.txt");
    std::fs::write(&input, "A man plays guitar.\nA dog runs.\n").unwrap();
    let run = |m: &str| {
        let (ok, out, err) = output(
            angle(&home)
                .args(["encode", "--model", m])
                .arg("--input")
                .arg(&input),
        );
        assert!(ok, "{err}");
        out
    };
    assert_eq!(run(ID), run(model.to_str().unwrap()));
    // A local folder always wins over a hub id of the same spelling.
    let local = tmp.path().join("angle-test/tiny-bert");
    std::fs::create_dir_all(local.parent().unwrap()).unwrap();
    std::fs::rename(&model, &local).unwrap();
    let (ok, _, err) = output(
        angle(&tmp.path().join("empty-home"))
            .current_dir(tmp.path())
            .args(["encode", "--model", ID])
            .arg("--input")
            .arg(&input),
    );
    assert!(ok, "the local folder should have been used: {err}");
}

#[test]
fn a_file_missing_offline_names_the_cache_and_the_variable() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 3);
    let home = tmp.path().join("hf");
    let snap = cache_with(&model, &home, &["tokenizer.json"]);
    let input = tmp.path().join("in.txt");
    std::fs::write(&input, "x\n").unwrap();
    let (ok, _, err) = output(
        angle(&home)
            .args(["encode", "--model", ID])
            .arg("--input")
            .arg(&input),
    );
    assert!(!ok);
    assert!(err.contains("tokenizer.json"), "{err}");
    assert!(err.contains(&snap.display().to_string()), "{err}");
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    assert!(!err.contains("stack backtrace"), "{err}");
    // Not cached at all: the message says which folder was looked in.
    let (ok, _, err) = output(
        angle(&home)
            .args(["encode", "--model", "angle-test/absent"])
            .arg("--input")
            .arg(&input),
    );
    assert!(!ok);
    assert!(err.contains("models--angle-test--absent"), "{err}");
}

#[test]
fn a_checkpoint_trained_from_a_hub_id_records_it() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 3);
    let home = tmp.path().join("hf");
    cache_with(&model, &home, &[]);
    let train = stsb_head(tmp.path(), "train", 16, "train.csv");
    let out = tmp.path().join("run");
    let (ok, _, err) = output(
        angle(&home)
            .args(["train", "--model", ID, "--train"])
            .arg(&train)
            .arg("--output")
            .arg(&out)
            .args(["--max-steps", "1", "--batch-size", "8", "--max-length", "32"]),
    );
    assert!(ok, "{err}");
    for dir in ["checkpoint-last", "final"] {
        let p = out.join(dir).join("angle_config.json");
        if !p.exists() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(v["base_model"]["id"], ID, "{}", p.display());
        assert_eq!(v["base_model"]["commit"], COMMIT);
        assert_eq!(v["train"]["model"], ID);
    }
    assert!(out.join("checkpoint-last/angle_config.json").exists());
}
