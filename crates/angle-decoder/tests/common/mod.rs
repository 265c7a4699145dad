//! Shared test helpers: the decoder fixtures (`ANGLE_DECODER_FIXTURES`, default `../shared/fixtures/decoder`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use safetensors::tensor::Dtype;

pub fn shared(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared")
        .join(rel)
}

pub fn fixtures_root() -> PathBuf {
    std::env::var_os("ANGLE_DECODER_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| shared("fixtures/decoder"))
}

/// Every case folder (holding `reference.safetensors`); panics when there is none.
pub fn cases() -> Vec<PathBuf> {
    let root = fixtures_root();
    let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("decoder fixtures {}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("reference.safetensors").is_file())
        .collect();
    v.sort();
    assert!(
        !v.is_empty(),
        "no decoder fixture folders under {}",
        root.display()
    );
    v
}

pub struct Tensor {
    pub shape: Vec<usize>,
    pub f: Vec<f64>,
    pub i: Vec<i64>,
}

pub struct Reference {
    pub dir: PathBuf,
    pub meta: HashMap<String, String>,
    pub tensors: HashMap<String, Tensor>,
    /// packed ids, offsets and (b, t) of every packed token
    pub ids: Vec<u32>,
    pub seq_offsets: Vec<usize>,
    pub rows: Vec<(usize, usize)>,
    pub b: usize,
    pub t: usize,
}

impl Reference {
    pub fn load(dir: &Path) -> Reference {
        let path = dir.join("reference.safetensors");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
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
        let (b, t) = {
            let s = &tensors["input_ids"].shape;
            (s[0], s[1])
        };
        let (mut ids, mut seq_offsets, mut rows) = (vec![], vec![0], vec![]);
        {
            let x = &tensors["input_ids"].i;
            let m = &tensors["attention_mask"].i;
            for bi in 0..b {
                for ti in 0..t {
                    if m[bi * t + ti] != 0 {
                        ids.push(x[bi * t + ti] as u32);
                        rows.push((bi, ti));
                    }
                }
                seq_offsets.push(ids.len());
            }
        }
        Reference {
            dir: dir.to_path_buf(),
            meta,
            tensors,
            ids,
            seq_offsets,
            rows,
            b,
            t,
        }
    }

    pub fn meta(&self, key: &str) -> &str {
        self.meta
            .get(key)
            .unwrap_or_else(|| panic!("{}: metadata has no `{key}`", self.dir.display()))
    }

    pub fn floats(&self, name: &str) -> &[f64] {
        &self
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("{}: no tensor {name}", self.dir.display()))
            .f
    }

    pub fn flag(&self, key: &str) -> bool {
        match self.meta(key) {
            "true" | "True" => true,
            "false" | "False" => false,
            v => panic!("metadata `{key}` = {v:?} is not a boolean"),
        }
    }
}

/// `key X` pairs of the objective text, e.g. `cosine_w 1, ibn_w 1, angle_w 0.02, taus 20`.
pub fn objective_value(text: &str, key: &str) -> f64 {
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

pub fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    num / den
}

/// Copies a folder (flat, plus one level of subfolders) into `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}
