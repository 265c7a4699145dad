//! Test helpers: a tiny random BERT in Hugging Face layout, small STS-B files, paths to `../shared`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use angle_encoder::{BertConfig, Encoder};
use angle_train::TrainConfig;

/// `../shared/<rel>` from the workspace root.
pub fn shared(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared")
        .join(rel)
}

pub fn minilm_dir() -> PathBuf {
    std::env::var_os("ANGLE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| shared("models/all-MiniLM-L6-v2"))
}

pub fn stsb_dir() -> PathBuf {
    std::env::var_os("ANGLE_STSB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| shared("data/stsb"))
}

/// A 2-layer, hidden-32 BERT with random weights and all-MiniLM-L6-v2's tokenizer, written to `dir`.
pub fn tiny_model(dir: &Path, seed: u64) -> PathBuf {
    let tokenizer = minilm_dir().join("tokenizer.json");
    assert!(tokenizer.is_file(), "missing fixture {}", tokenizer.display());
    let cfg = BertConfig::bert(32, 2, 2, 64, 30522, 64);
    let layout = angle_encoder::ParamLayout::new(&cfg);
    let mut params = vec![0.0f32; layout.total];
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for e in &layout.entries {
        let r = e.range();
        if e.name.ends_with("LayerNorm.weight") {
            params[r].fill(1.0);
        } else if e.name.ends_with(".weight") {
            for p in &mut params[r] {
                // xorshift64*: uniform in [-0.05, 0.05), enough spread for a random encoder to separate texts.
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                let u = (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
                *p = (u - 0.5) * 0.1;
            }
        }
    }
    let enc = Encoder::from_params(cfg, params).unwrap();
    let model = dir.join("tiny-model");
    enc.save_dir(&model).unwrap();
    std::fs::copy(&tokenizer, model.join("tokenizer.json")).unwrap();
    model
}

/// The first `n` rows of an STS-B split, copied to `dir/name`.
pub fn stsb_head(dir: &Path, split: &str, n: usize, name: &str) -> PathBuf {
    let src = stsb_dir().join(format!("stsb-en-{split}.csv"));
    let text =
        std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("missing fixture {}: {e}", src.display()));
    let head: Vec<&str> = text.lines().take(n).collect();
    let dst = dir.join(name);
    std::fs::write(&dst, head.join("\n") + "\n").unwrap();
    dst
}

/// A fast configuration for the tiny model.
pub fn tiny_config(model: &Path, train: &Path, valid: Option<&Path>, output: &Path) -> TrainConfig {
    TrainConfig {
        model: model.to_path_buf(),
        train: vec![train.to_path_buf()],
        valid: valid.map(Path::to_path_buf).into_iter().collect(),
        output: output.to_path_buf(),
        max_length: 32,
        batch_size: 8,
        epochs: 2,
        lr: 1e-3,
        log_steps: 1,
        eval_batch_size: 16,
        ..TrainConfig::default()
    }
}

/// Embeddings of `texts` by the `angle encode` binary (one JSON line per text), with `extra` options.
pub fn encode(model: &Path, texts: &Path, extra: &[&str]) -> Vec<Vec<f32>> {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_angle"))
        .args(["encode", "--model"])
        .arg(model)
        .arg("--input")
        .arg(texts)
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64) * (*y as f64)).sum();
    let n = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}
