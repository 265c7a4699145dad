//! Parity with angle-emb 0.6.1 (`angle_emb/loss.py`, float64 autograd) on every case of the reference fixture.
//! The file comes from `ANGLE_LOSS_FIXTURES` or `../shared/fixtures/loss/angle-emb-reference.json` (workspace root);
//! a missing file fails.

use angle_loss::{
    AngleLoss, AngleLossConfig, AnglePooling, ContrastiveLayout, DataFormat, LossGrad, Real, angle_loss,
    contrastive_loss, cosine_loss, in_batch_negative_loss,
};
use ndarray::Array2;
use serde_json::Value;

fn fixture_path() -> std::path::PathBuf {
    match std::env::var_os("ANGLE_LOSS_FIXTURES") {
        Some(p) => p.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/fixtures/loss/angle-emb-reference.json"),
    }
}

fn load() -> Value {
    let path = fixture_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("loss fixture {} is required: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn matrix(v: &Value) -> Array2<f64> {
    let rows: Vec<Vec<f64>> = serde_json::from_value(v.clone()).expect("matrix of numbers");
    let (n, d) = (rows.len(), rows.first().map_or(0, Vec::len));
    Array2::from_shape_vec((n, d), rows.into_iter().flatten().collect()).expect("rectangular")
}

fn param(case: &Value, key: &str) -> f64 {
    case["params"][key]
        .as_f64()
        .unwrap_or_else(|| panic!("{}: params.{key}", case["name"]))
}

fn run<F: Real>(case: &Value) -> LossGrad<F> {
    let y = matrix(&case["y_pred"]).mapv(F::of);
    let labels: Vec<F> = serde_json::from_value::<Vec<f64>>(case["labels"].clone())
        .expect("labels")
        .into_iter()
        .map(F::of)
        .collect();
    let tau = || F::of(param(case, "tau"));
    let pooling =
        || -> AnglePooling { serde_json::from_value(case["params"]["pooling"].clone()).expect("pooling") };
    let config =
        || -> AngleLossConfig { serde_json::from_value(case["params"].clone()).expect("AngleLoss params") };
    let objective = case["objective"].as_str().expect("objective");
    let out = match objective {
        "cosine" => cosine_loss(y.view(), &labels, tau()),
        "angle" => angle_loss(y.view(), &labels, tau(), pooling()),
        "in_batch_negative" => in_batch_negative_loss(y.view(), &labels, None, tau()),
        "contrastive" => {
            let layout = match case["params"]["layout"].as_str() {
                Some("qp") => ContrastiveLayout::QueryPositive,
                Some("qpn") => ContrastiveLayout::QueryPositiveNegative,
                other => panic!("{}: layout {other:?}", case["name"]),
            };
            contrastive_loss(y.view(), layout, tau())
        }
        "format_a" | "format_b" | "format_c" => {
            let format = match objective {
                "format_a" => DataFormat::A,
                "format_b" => DataFormat::B,
                _ => DataFormat::C,
            };
            AngleLoss::new(config())
                .compute(format, y.view(), &labels, None)
                .map(|o| LossGrad {
                    loss: o.loss,
                    grad: o.grad,
                })
        }
        other => panic!("{}: unknown objective {other}", case["name"]),
    };
    out.unwrap_or_else(|e| panic!("{}: {e}", case["name"]))
}

/// (loss relative error, gradient max |ours − ref| / max |ref|)
fn errors<F: Real>(case: &Value, got: &LossGrad<F>) -> (f64, f64) {
    let want_loss = case["loss"].as_f64().expect("loss");
    let want_grad = matrix(&case["grad"]);
    let loss_err = if want_loss == 0.0 {
        got.loss.f64().abs()
    } else {
        (got.loss.f64() - want_loss).abs() / want_loss.abs()
    };
    assert_eq!(got.grad.dim(), want_grad.dim(), "{}: grad shape", case["name"]);
    let scale = want_grad.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let diff = got
        .grad
        .iter()
        .zip(want_grad.iter())
        .fold(0.0f64, |m, (a, b)| m.max((a.f64() - b).abs()));
    let grad_err = if scale == 0.0 { diff } else { diff / scale };
    (loss_err, grad_err)
}

fn check_all<F: Real>(loss_tol: f64, grad_tol: f64) {
    let fixture = load();
    let cases = fixture["cases"].as_array().expect("cases");
    assert!(!cases.is_empty(), "fixture has no cases");
    let mut failures = Vec::new();
    let (mut worst_loss, mut worst_grad) = (0.0f64, 0.0f64);
    for case in cases {
        let got = run::<F>(case);
        let (le, ge) = errors(case, &got);
        worst_loss = worst_loss.max(le);
        worst_grad = worst_grad.max(ge);
        if !(le <= loss_tol && ge <= grad_tol) {
            failures.push(format!(
                "{}: loss rel err {le:.3e}, grad rel err {ge:.3e}",
                case["name"]
            ));
        }
    }
    eprintln!(
        "{} cases in {}: worst loss rel err {worst_loss:.3e}, worst grad rel err {worst_grad:.3e}",
        cases.len(),
        std::any::type_name::<F>()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases off:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn every_case_matches_in_f32() {
    check_all::<f32>(1e-5, 1e-4);
}

#[test]
fn every_case_matches_in_f64() {
    check_all::<f64>(1e-11, 1e-10);
}
