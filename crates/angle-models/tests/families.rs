//! Parity of every encoder family with transformers: each folder under `ANGLE_FAMILY_FIXTURES`
//! (default `../shared/fixtures/families`; ours in `tests/fixtures/families` too) holds a tiny model in
//! Hugging Face layout and `reference.safetensors`: the last hidden state, the pooled embeddings, the
//! format-A loss and the float64 gradient of every parameter. Every size and setting comes from the
//! files. Goals: hidden state ≤ 1e-4 abs, loss ≤ 1e-4 rel, every gradient ≤ 1e-3 rel, every
//! parameter a finite gradient.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use angle_encoder::{Batch, Pooler, Pooling};
use angle_loss::{AngleLoss, AngleLossConfig, AnglePooling};
use angle_models::{Model, ModelOptions};
use ndarray::ArrayView2;
use safetensors::SafeTensors;
use safetensors::tensor::Dtype;

fn shared(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared")
        .join(rel)
}

struct Reference {
    meta: HashMap<String, String>,
    floats: HashMap<String, (Vec<usize>, Vec<f64>)>,
    ints: HashMap<String, (Vec<usize>, Vec<i64>)>,
}

fn read_reference(path: &Path) -> Reference {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (mut floats, mut ints) = (HashMap::new(), HashMap::new());
    for (name, v) in st.iter() {
        let d = v.data();
        let shape = v.shape().to_vec();
        match v.dtype() {
            Dtype::F32 => {
                let x = d
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64);
                floats.insert(name.to_string(), (shape, x.collect()));
            }
            Dtype::F64 => {
                let x = d
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()));
                floats.insert(name.to_string(), (shape, x.collect()));
            }
            Dtype::I64 => {
                let x = d
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()));
                ints.insert(name.to_string(), (shape, x.collect()));
            }
            other => panic!("{}: {name}: unexpected dtype {other:?}", path.display()),
        }
    }
    Reference { meta, floats, ints }
}

impl Reference {
    fn f(&self, name: &str) -> &[f64] {
        &self
            .floats
            .get(name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
            .1
    }
}

/// `‖a − b‖∞ / max(‖b‖∞, 1e-6)`
fn rel_max(a: &[f64], b: &[f64]) -> f64 {
    let num = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    num / b.iter().map(|x| x.abs()).fold(1e-6, f64::max)
}

/// Runs one case folder; returns its report line or the failures.
fn run_case(case: &Path) -> Result<String, String> {
    let fx = read_reference(&case.join("reference.safetensors"));
    let mut model =
        Model::from_dir(case.join("model"), &ModelOptions::default()).map_err(|e| e.to_string())?;
    let h = model.hidden_size();
    let (shape, ids) = &fx.ints["input_ids"];
    let (b, t) = (shape[0], shape[1]);
    let mask = &fx.ints["attention_mask"].1;
    let types = &fx.ints["token_type_ids"].1;
    let (mut packed, mut type_ids, mut offsets, mut rows) = (vec![], vec![], vec![0usize], vec![]);
    for bi in 0..b {
        for ti in (0..t).filter(|&ti| mask[bi * t + ti] != 0) {
            packed.push(ids[bi * t + ti] as u32);
            type_ids.push(types[bi * t + ti] as u32);
            rows.push(bi * t + ti);
        }
        offsets.push(packed.len());
    }
    let maxlen: usize = fx.meta["maxlen"].parse().unwrap();
    assert!(offsets.windows(2).all(|w| w[1] - w[0] <= maxlen));
    let batch = Batch {
        input_ids: &packed,
        token_type_ids: Some(&type_ids),
        seq_offsets: &offsets,
    };
    let hidden: Vec<f64> = model
        .forward(&batch, None)
        .unwrap()
        .iter()
        .map(|&x| x as f64)
        .collect();
    let lhs = fx.f("last_hidden_state");
    let mut errs = vec![];
    let herr = rows
        .iter()
        .enumerate()
        .flat_map(|(k, &r)| (0..h).map(move |j| (k * h + j, r * h + j)))
        .map(|(a, r)| (hidden[a] - lhs[r]).abs())
        .fold(0.0, f64::max);
    if herr > 1e-4 {
        errs.push(format!("last_hidden_state max abs err {herr:.3e} > 1e-4"));
    }

    let pooling = Pooling::parse(&fx.meta["pooling"]).expect("pooling");
    let mut pooler = Pooler::new(pooling);
    let mut pooled = vec![0.0f32; b * h];
    model.pool(&mut pooler, &mut pooled).unwrap();
    let pooled: Vec<f64> = pooled.iter().map(|&x| x as f64).collect();
    let perr = rel_max(&pooled, fx.f("pooled"));

    let w: HashMap<String, f64> = serde_json::from_str(&fx.meta["loss"]).unwrap();
    let tau: f64 = fx.meta["taus"].parse().unwrap();
    let loss_fn = AngleLoss::new(AngleLossConfig {
        cosine_w: w["cosine_w"],
        ibn_w: w["ibn_w"],
        angle_w: w["angle_w"],
        cosine_tau: tau,
        ibn_tau: tau,
        angle_tau: tau,
        angle_pooling: AnglePooling::Sum,
        ..Default::default()
    });
    let out = loss_fn
        .format_a(
            ArrayView2::from_shape((b, h), &pooled).unwrap(),
            fx.f("labels"),
            None,
        )
        .unwrap();
    let ref_loss = fx.f("loss")[0];
    let lerr = (out.loss - ref_loss).abs() / ref_loss.abs().max(1e-12);
    if lerr > 1e-4 {
        errs.push(format!(
            "loss {} vs {ref_loss}: rel err {lerr:.3e} > 1e-4",
            out.loss
        ));
    }
    let dpooled: Vec<f32> = out.grad.iter().map(|&x| x as f32).collect();
    let gperr = rel_max(&out.grad.iter().copied().collect::<Vec<_>>(), fx.f("grad.pooled"));

    model.zero_grad();
    let mut dhidden = vec![0.0f32; packed.len() * h];
    pooler.backward(&mut dhidden, &dpooled, &offsets, h).unwrap();
    model.backward(&dhidden).unwrap();
    let mut worst = (0.0f64, String::new());
    let mut seen = 0;
    for e in &model.vars.entries {
        let g = &model.buffers.grads[e.var.range.clone()];
        if g.iter().any(|x| !x.is_finite()) {
            errs.push(format!("{}: non-finite gradient", e.name));
        }
        let Some((_, want)) = fx.floats.get(&format!("grad.{}", e.name)) else {
            errs.push(format!("{}: no reference gradient", e.name));
            continue;
        };
        seen += 1;
        let got: Vec<f64> = g.iter().map(|&x| x as f64).collect();
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm(want) < 1e-6 {
            // exactly 0 in exact arithmetic (a key bias shifts every score of a row alike): ours is noise
            if norm(&got) > 1e-5 {
                errs.push(format!(
                    "grad.{}: |ours| {:.3e} > 1e-5 (the exact gradient is 0)",
                    e.name,
                    norm(&got)
                ));
            }
            continue;
        }
        let r = rel_max(&got, want);
        if r > 1e-3 {
            errs.push(format!("grad.{}: rel err {r:.3e} > 1e-3", e.name));
        }
        if r > worst.0 {
            worst = (r, e.name.clone());
        }
    }
    let expected = fx
        .floats
        .keys()
        .filter(|k| k.starts_with("grad.") && *k != "grad.pooled")
        .count();
    if seen != expected {
        errs.push(format!(
            "{seen} parameters checked, the reference has {expected} gradients"
        ));
    }
    if errs.is_empty() {
        Ok(format!(
            "{}: hidden {herr:.2e} abs, pooled {perr:.2e}, loss {lerr:.2e}, grad.pooled {gperr:.2e}, \
             {seen} parameter gradients, worst {:.2e} ({})",
            case.display(),
            worst.0,
            worst.1
        ))
    } else {
        Err(format!("{}:\n  {}", case.display(), errs.join("\n  ")))
    }
}

fn run_all(root: &Path) {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("reference.safetensors").is_file())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no fixture folders under {}", root.display());
    let mut failures = vec![];
    for case in &cases {
        match run_case(case) {
            Ok(line) => println!("{line}"),
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_family_fixture_matches_transformers() {
    let root = std::env::var_os("ANGLE_FAMILY_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| shared("fixtures/families"));
    run_all(&root);
}

#[test]
fn our_family_fixtures_match_transformers() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families");
    if root.is_dir() {
        run_all(&root);
    }
}
