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

/// Two STS-B shards as a hub dataset's `data/train-0000K-of-00002.csv` in the cache.
fn cache_dataset(hf_home: &Path, shards: &[PathBuf]) -> PathBuf {
    let repo = hf_home.join("hub").join("datasets--angle-test--pairs");
    let snap = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(snap.join("data")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    for (i, s) in shards.iter().enumerate() {
        let name = format!("data/train-{i:05}-of-{:05}.csv", shards.len());
        std::fs::copy(s, snap.join(name)).unwrap();
    }
    std::fs::write(snap.join("README.md"), "# pairs").unwrap();
    snap
}

#[test]
fn train_reads_several_files_a_folder_or_a_hub_dataset_as_one() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 3);
    let home = tmp.path().join("hf");
    let shards = tmp.path().join("shards");
    std::fs::create_dir_all(&shards).unwrap();
    let a = stsb_head(&shards, "train", 8, "part-0.csv");
    let b = stsb_head(&shards, "dev", 8, "part-1.csv");
    cache_dataset(&home, &[a.clone(), b.clone()]);
    let train = |out: &str, data: &[&dyn AsRef<std::ffi::OsStr>]| {
        let mut c = angle(&home);
        c.args(["train", "--model"]).arg(&model).arg("--train");
        for d in data {
            c.arg(d);
        }
        let out = tmp.path().join(out);
        c.arg("--output")
            .arg(&out)
            .args(["--max-steps", "1", "--batch-size", "4", "--max-length", "32"]);
        let (ok, _, err) = output(&mut c);
        assert!(ok, "{err}");
        let s: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("checkpoint-last/trainer_state.json")).unwrap(),
        )
        .unwrap();
        s
    };
    let files = train("files", &[&a, &b]);
    let folder = train("folder", &[&shards]);
    let hub = train("hub", &[&"hf://datasets/angle-test/pairs"]);
    for s in [&files, &folder, &hub] {
        assert_eq!(s["train_examples"], 16, "{s}");
    }
    // A bad row in the second file is reported with that file's name and line.
    let bad = shards.join("part-2.csv");
    std::fs::write(&bad, "a b,c d,1.0\ne f,g h,abc\n").unwrap();
    let (ok, _, err) = output(
        angle(&home)
            .args(["train", "--model"])
            .arg(&model)
            .arg("--train")
            .arg(&shards)
            .arg("--output")
            .arg(tmp.path().join("bad"))
            .args(["--max-steps", "1"]),
    );
    assert!(!ok);
    assert!(err.contains("part-2.csv:2"), "{err}");
    // An uncached hub split names the split and the splits there are.
    let (ok, _, err) = output(
        angle(&home)
            .args(["train", "--model"])
            .arg(&model)
            .args([
                "--train",
                "hf://datasets/angle-test/pairs",
                "--split",
                "test",
                "--output",
            ])
            .arg(tmp.path().join("nosplit"))
            .args(["--max-steps", "1"]),
    );
    assert!(!ok);
    assert!(err.contains("\"test\"") && err.contains("train"), "{err}");
}

/// `angle eval --retrieval hf://datasets/ORG/NAME`: a BEIR dataset repository read from the cache, scored as its
/// local copy is; a split the repository lacks is named.
#[test]
fn retrieval_reads_a_beir_dataset_from_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 5);
    let home = tmp.path().join("hf");
    let local = tmp.path().join("beir");
    std::fs::create_dir_all(local.join("qrels")).unwrap();
    std::fs::write(
        local.join("corpus.jsonl"),
        "{\"_id\": \"d1\", \"title\": \"\", \"text\": \"A man plays a guitar.\"}\n\
         {\"_id\": \"d2\", \"title\": \"Cooking\", \"text\": \"A woman slices an onion.\"}\n",
    )
    .unwrap();
    std::fs::write(
        local.join("queries.jsonl"),
        "{\"_id\": \"q1\", \"text\": \"guitar\"}\n{\"_id\": \"q2\", \"text\": \"onion\"}\n",
    )
    .unwrap();
    std::fs::write(
        local.join("qrels/test.tsv"),
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n",
    )
    .unwrap();
    let repo = home.join("hub").join("datasets--angle-test--beir");
    let snap = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(snap.join("qrels")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    for f in ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"] {
        std::fs::copy(local.join(f), snap.join(f)).unwrap();
    }
    let eval = |spec: &str, split: &str| {
        output(angle(&home).args([
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--retrieval",
            spec,
            "--split",
            split,
            "--json",
            "--precision",
            "f32",
        ]))
    };
    let (ok_hub, hub, err) = eval("hf://datasets/angle-test/beir", "test");
    assert!(ok_hub, "{err}");
    let (ok_local, local_out, err) = eval(local.to_str().unwrap(), "test");
    assert!(ok_local, "{err}");
    let score = |s: &str| -> serde_json::Value {
        let mut v: serde_json::Value = serde_json::from_str(s.trim().lines().last().unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("seconds");
        v
    };
    assert_eq!(score(&hub), score(&local_out));
    let (ok, _, err) = eval("hf://datasets/angle-test/beir", "dev");
    assert!(!ok);
    assert!(err.contains("qrels/dev.tsv"), "{err}");
}

/// The tokenizer files the Hub client downloads are the ones every save carries along.
#[test]
fn the_hub_downloads_the_tokenizer_files_a_checkpoint_carries() {
    assert_eq!(
        angle_hub::select::TOKENIZER_FILES,
        angle_models::weights::TOKENIZER_FILES
    );
}
