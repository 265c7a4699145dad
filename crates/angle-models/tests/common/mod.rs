//! Shared by the tests: the family fixture folders.
#![allow(dead_code)]

use std::path::PathBuf;

use angle_encoder::Batch;
use angle_models::Model;

/// Every folder under `ANGLE_FAMILY_FIXTURES` (default `../shared/fixtures/families`) that holds a model.
pub fn family_models() -> Vec<PathBuf> {
    let root = std::env::var_os("ANGLE_FAMILY_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/families")
        });
    let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path().join("model")))
        .filter(|p| p.join("config.json").is_file())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no family fixtures under {}", root.display());
    v
}

/// A small packed batch of in-vocabulary ids (three sequences of 9, 5 and 9 tokens).
pub fn batch(vocab: usize) -> (Vec<u32>, Vec<usize>) {
    let ids: Vec<u32> = (0..23u32).map(|i| 2 + (i * 37) % (vocab as u32 - 2)).collect();
    (ids, vec![0, 9, 14, 23])
}

/// `Σ hidden · probe`: a scalar objective with a fixed gradient.
pub fn probe(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7919) % 101) as f32 / 101.0 - 0.5).collect()
}

/// The eval-mode last hidden state of `ids` packed at `offs`.
pub fn forward(m: &mut Model, ids: &[u32], offs: &[usize]) -> Vec<f32> {
    let b = Batch {
        input_ids: ids,
        token_type_ids: None,
        seq_offsets: offs,
    };
    m.forward(&b, None).unwrap().to_vec()
}

/// A LoRA r 3 model of `dir` (all linear modules, no dropout) whose B matrices, zero at peft's start, hold
/// values, so that every product of the adapters is exercised.
pub fn lora_model(dir: &std::path::Path) -> Model {
    let spec = angle_models::LoraSpec {
        r: 3,
        alpha: 6.0,
        dropout: 0.0,
        targets: vec!["all-linear".into()],
        seed: 5,
    };
    let opts = angle_models::ModelOptions {
        lora: Some(spec),
        frozen: false,
    };
    let mut m = Model::from_dir(dir, &opts).unwrap();
    for e in m
        .vars
        .entries
        .iter()
        .filter(|e| e.init == angle_models::nn::Init::Zero)
    {
        for (i, x) in m.buffers.params[e.var.range.clone()].iter_mut().enumerate() {
            *x = ((i * 31 % 17) as f32 - 8.0) * 0.01;
        }
    }
    m
}
