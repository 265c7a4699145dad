//! Sharded saves (`--max-shard-size`): full checkpoints of the BERT family and the block families, `angle
//! export`, and merged LoRA models of the decoder family are written tensor by tensor into `model-0000i-of-0000n.safetensors` with
//! `model.safetensors.index.json` above the size, and load back to the very same embeddings as an unsharded
//! save; a size that does not parse is refused by name.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use angle_train::config::LoraSettings;
use angle_train::trainer::{CHECKPOINT_LAST, MERGED};
use angle_train::{TrainConfig, TrainOptions, train};
use common::{encode, minilm_dir, shared, stsb_head, tiny_config, tiny_model};

fn shards(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("model-"))
        .collect();
    v.sort();
    v
}

fn texts(dir: &Path) -> PathBuf {
    let p = dir.join("texts.txt");
    std::fs::write(&p, "A man is playing a guitar.\nTwo dogs run on the beach.\n").unwrap();
    p
}

#[test]
fn a_block_family_checkpoint_in_shards_encodes_as_one_file() {
    let tmp = tempfile::tempdir().unwrap();
    let model = shared("fixtures/families/electra-cls/model");
    let data = stsb_head(tmp.path(), "train", 8, "train.csv");
    let run = |out: &str, shard: Option<&str>| {
        let cfg = TrainConfig {
            max_length: 24,
            batch_size: 4,
            epochs: 1,
            pooling: "mean".into(),
            max_shard_size: shard.map(str::to_string),
            ..tiny_config(&model, &data, None, &tmp.path().join(out))
        };
        train(cfg, None, &TrainOptions::default()).unwrap();
        tmp.path().join(out).join(CHECKPOINT_LAST)
    };
    let (one, many) = (run("one", None), run("many", Some("100KB")));
    assert!(one.join("model.safetensors").is_file() && shards(&one).is_empty());
    let parts = shards(&many);
    assert!(parts.len() >= 3, "{parts:?}");
    assert!(many.join("model.safetensors.index.json").is_file() && !many.join("model.safetensors").exists());
    let t = texts(tmp.path());
    assert_eq!(encode(&one, &t, &[]), encode(&many, &t, &[]));
}

/// The BERT family's own path (angle-encoder): a checkpoint in shards encodes and resumes as one file does, and
/// `angle export` of all-MiniLM-L6-v2 in shards carries its untrained pooler too.
#[test]
fn a_bert_checkpoint_and_an_export_in_shards_encode_as_one_file() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 7);
    let data = stsb_head(tmp.path(), "train", 16, "train.csv");
    let cfg = |out: &str, shard: Option<&str>| TrainConfig {
        max_length: 24,
        batch_size: 4,
        epochs: 1,
        max_shard_size: shard.map(str::to_string),
        save_steps: 2,
        ..tiny_config(&model, &data, None, &tmp.path().join(out))
    };
    train(cfg("one", None), None, &TrainOptions::default()).unwrap();
    train(cfg("many", Some("1MB")), None, &TrainOptions::default()).unwrap();
    let (one, many) = (
        tmp.path().join("one").join(CHECKPOINT_LAST),
        tmp.path().join("many").join(CHECKPOINT_LAST),
    );
    assert!(one.join("model.safetensors").is_file() && shards(&one).is_empty());
    assert!(shards(&many).len() >= 2, "{:?}", shards(&many));
    assert!(many.join("model.safetensors.index.json").is_file() && !many.join("model.safetensors").exists());
    let t = texts(tmp.path());
    assert_eq!(encode(&one, &t, &[]), encode(&many, &t, &[]));
    // interrupted after a sharded save and resumed from it: the same weights as the run that went through
    let halted = TrainOptions {
        halt_after: Some(3),
        ..TrainOptions::default()
    };
    train(cfg("part", Some("1MB")), None, &halted).unwrap();
    let part = tmp.path().join("part").join(CHECKPOINT_LAST);
    train(cfg("part", Some("1MB")), Some(&part), &TrainOptions::default()).unwrap();
    assert_eq!(encode(&part, &t, &[]), encode(&one, &t, &[]));

    let exported = tmp.path().join("exported");
    let o = Command::new(env!("CARGO_BIN_EXE_angle"))
        .args(["export", "--max-shard-size", "20MB", "--model"])
        .arg(minilm_dir())
        .arg("--output")
        .arg(&exported)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(shards(&exported).len() >= 4, "{:?}", shards(&exported));
    let index = std::fs::read_to_string(exported.join("model.safetensors.index.json")).unwrap();
    assert!(
        index.contains("pooler.dense.weight"),
        "the untrained pooler is carried"
    );
    assert_eq!(encode(&exported, &t, &[]), encode(&minilm_dir(), &t, &[]));
}

#[test]
fn a_merged_decoder_in_shards_encodes_as_one_file() {
    let tmp = tempfile::tempdir().unwrap();
    let base = shared("fixtures/decoder/qwen2-lora-last/model");
    let data = stsb_head(tmp.path(), "train", 8, "train.csv");
    let cfg = TrainConfig {
        lora: Some(LoraSettings {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: "all-linear".into(),
        }),
        merge_lora: true,
        max_length: 24,
        batch_size: 4,
        epochs: 1,
        pooling: "last".into(),
        max_shard_size: Some("50KB".into()),
        ..tiny_config(&base, &data, None, &tmp.path().join("run"))
    };
    train(cfg, None, &TrainOptions::default()).unwrap();
    let merged = tmp.path().join("run").join(MERGED);
    assert!(shards(&merged).len() >= 2 && merged.join("model.safetensors.index.json").is_file());
    // `angle merge` of the same adapter into one file gives the same embeddings
    let one = tmp.path().join("one");
    let o = Command::new(env!("CARGO_BIN_EXE_angle"))
        .args(["merge", "--adapter"])
        .arg(tmp.path().join("run").join(CHECKPOINT_LAST))
        .arg("--output")
        .arg(&one)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(one.join("model.safetensors").is_file());
    let t = texts(tmp.path());
    assert_eq!(encode(&one, &t, &[]), encode(&merged, &t, &[]));
    // a size that does not parse
    let o = Command::new(env!("CARGO_BIN_EXE_angle"))
        .args(["merge", "--max-shard-size", "lots", "--adapter"])
        .arg(tmp.path().join("run").join(CHECKPOINT_LAST))
        .arg("--output")
        .arg(tmp.path().join("bad"))
        .output()
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--max-shard-size"));
}
