//! Shared test helpers: paths to `../shared`, the encoder fixture, padded-to-packed conversion.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use safetensors::SafeTensors;
use safetensors::tensor::Dtype;

/// `../shared/<rel>` from the workspace root.
pub fn shared(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared")
        .join(rel)
}

pub fn model_dir() -> PathBuf {
    std::env::var_os("ANGLE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| shared("models/all-MiniLM-L6-v2"))
}

pub fn fixture_path() -> PathBuf {
    std::env::var_os("ANGLE_ENCODER_FIXTURE")
        .map(PathBuf::from)
        .unwrap_or_else(|| shared("fixtures/encoder/minilm-mean-reference.safetensors"))
}

/// A tensor of the fixture, as f64 (floats) or i64 (ids), with its shape.
pub struct Tensor {
    pub shape: Vec<usize>,
    pub f: Vec<f64>,
    pub i: Vec<i64>,
}

pub struct Fixture {
    pub path: PathBuf,
    pub meta: HashMap<String, String>,
    pub tensors: HashMap<String, Tensor>,
    /// Packed batch: ids, type ids, offsets; `rows[t]` = (b, position) of packed token t in the padded [B, T].
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    pub seq_offsets: Vec<usize>,
    pub rows: Vec<(usize, usize)>,
    pub b: usize,
    pub t: usize,
}

impl Fixture {
    pub fn load() -> Fixture {
        Self::load_from(fixture_path())
    }

    /// Any fixture of the encoder format (or one that extends it, such as the ESE fixture).
    pub fn load_from(path: PathBuf) -> Fixture {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = header.metadata().clone().unwrap_or_default();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors = HashMap::new();
        for (name, v) in st.iter() {
            let d = v.data();
            let (f, i) = match v.dtype() {
                Dtype::F32 => (
                    d.chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                        .collect(),
                    vec![],
                ),
                Dtype::F64 => (
                    d.chunks_exact(8)
                        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                    vec![],
                ),
                Dtype::I64 => (
                    vec![],
                    d.chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                ),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            tensors.insert(
                name.to_string(),
                Tensor {
                    shape: v.shape().to_vec(),
                    f,
                    i,
                },
            );
        }
        let ids = &tensors["input_ids"];
        let (b, t) = (ids.shape[0], ids.shape[1]);
        let mask = &tensors["attention_mask"].i;
        let tt = &tensors["token_type_ids"].i;
        let mut f = Fixture {
            path,
            meta,
            ids: vec![],
            type_ids: vec![],
            seq_offsets: vec![0],
            rows: vec![],
            b,
            t,
            tensors: HashMap::new(),
        };
        // Drop masked positions: what remains of each row is its packed sequence.
        for bi in 0..b {
            for ti in 0..t {
                if mask[bi * t + ti] != 0 {
                    f.ids.push(ids.i[bi * t + ti] as u32);
                    f.type_ids.push(tt[bi * t + ti] as u32);
                    f.rows.push((bi, ti));
                }
            }
            f.seq_offsets.push(f.ids.len());
        }
        f.tensors = tensors;
        f
    }

    pub fn floats(&self, name: &str) -> &[f64] {
        &self
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture has no tensor {name}"))
            .f
    }

    pub fn meta(&self, key: &str) -> &str {
        self.meta
            .get(key)
            .unwrap_or_else(|| panic!("fixture metadata has no `{key}`"))
    }

    /// `key X` pairs of the objective description, e.g. `cosine_w 1, ibn_w 1, angle_w 0.02, taus 20`.
    pub fn objective_value(&self, key: &str) -> f64 {
        let text = self.meta("objective");
        let words: Vec<&str> = text
            .split(|c: char| c == ',' || c == ':' || c.is_whitespace())
            .filter(|w| !w.is_empty())
            .collect();
        words
            .windows(2)
            .find(|w| w[0] == key)
            .and_then(|w| w[1].parse().ok())
            .unwrap_or_else(|| panic!("objective `{text}` has no `{key} <number>`"))
    }
}

/// ‖a − b‖ / ‖b‖.
pub fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

pub fn norm(a: &[f64]) -> f64 {
    a.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// Deterministic pseudo-random floats in [-scale, scale).
pub fn random_vec(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    (0..n as u64)
        .map(|i| ((angle_tensor::rng::uniform(seed, i) * 2.0 - 1.0) as f32) * scale)
        .collect()
}

/// A tiny BERT with random weights (layer norms near identity so activations stay well scaled).
pub fn tiny_encoder(seed: u64) -> angle_encoder::Encoder {
    let cfg = angle_encoder::BertConfig::bert(16, 2, 4, 32, 30, 24);
    let layout = angle_encoder::ParamLayout::new(&cfg);
    let mut params = random_vec(layout.total, seed, 0.3);
    for e in &layout.entries {
        if e.name.ends_with("LayerNorm.weight") {
            params[e.range()].iter_mut().for_each(|x| *x += 1.0);
        }
    }
    angle_encoder::Encoder::from_params(cfg, params).unwrap()
}

/// Compares every `grad.<parameter>` of the fixture (those `skip` does not exclude) with the encoder's gradients:
/// ‖ours − ref‖ / ‖ref‖ ≤ 1e-3, the word embeddings on the fixture's rows only, and each key bias (whose exact
/// gradient is 0) by its size. Mismatches go into `failures`; returns the number of tensors checked.
pub fn check_param_grads(
    fx: &Fixture,
    enc: &angle_encoder::Encoder,
    skip: impl Fn(&str) -> bool,
    failures: &mut Vec<String>,
) -> usize {
    let (grads, h) = (&enc.buffers.grads, enc.config.hidden_size);
    let mut checked = 0;
    for name in fx.tensors.keys().filter_map(|k| k.strip_prefix("grad.")) {
        if skip(name) || name == "embeddings.word_embeddings.rows" {
            continue;
        }
        let want = fx.floats(&format!("grad.{name}"));
        let ours: Vec<f64> = if name == "embeddings.word_embeddings.weight" {
            let rows = &fx.tensors["grad.embeddings.word_embeddings.rows"].i;
            let table = enc.layout.view(grads, name).unwrap();
            rows.iter()
                .flat_map(|&r| {
                    table[r as usize * h..(r as usize + 1) * h]
                        .iter()
                        .map(|&x| x as f64)
                })
                .collect()
        } else {
            let v = enc
                .layout
                .view(grads, name)
                .unwrap_or_else(|| panic!("no parameter {name}"));
            v.iter().map(|&x| x as f64).collect()
        };
        checked += 1;
        if name.ends_with("attention.self.key.bias") {
            let n = norm(&ours);
            println!("{name}: |ours| {n:.3e} (exact gradient is 0)");
            if n > 1e-5 {
                failures.push(format!("{name}: |ours| = {n:.3e} > 1e-5"));
            }
        } else {
            let e = rel_l2(&ours, want);
            println!("{name}: rel err {e:.3e}");
            if e > 1e-3 {
                failures.push(format!("{name}: rel err {e:.3e} > 1e-3"));
            }
        }
    }
    checked
}
