//! Format U, the unsupervised (SimCSE-style) objective: parity with sentence-transformers' MNRL and angle-emb's
//! angle / cosine losses in float64 on every case of `tests/fixtures/unsupervised.json` (written by
//! `scripts/fixtures/unsupervised_reference.py`; another file from `ANGLE_UNSUPERVISED_FIXTURE`), the pair layout,
//! and the gradient against central finite differences over random batches with duplicate texts.

use angle_loss::{AngleLoss, AngleLossConfig, AnglePooling, DataFormat, unsupervised_pairs};
use ndarray::Array2;
use proptest::prelude::*;
use serde_json::Value;

fn fixture() -> (String, Value) {
    let path = std::env::var("ANGLE_UNSUPERVISED_FIXTURE").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/unsupervised.json").to_string()
    });
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let doc = serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {path}: {e}"));
    (path, doc)
}

fn matrix(v: &Value) -> Array2<f64> {
    let rows: Vec<Vec<f64>> = serde_json::from_value(v.clone()).unwrap();
    let (n, d) = (rows.len(), rows[0].len());
    Array2::from_shape_vec((n, d), rows.concat()).unwrap()
}

fn config(c: &Value) -> AngleLossConfig {
    let f = |k: &str| c[k].as_f64().unwrap_or_else(|| panic!("config.{k} missing"));
    AngleLossConfig {
        cosine_w: f("cosine_w"),
        ibn_w: f("ibn_w"),
        cln_w: 0.0,
        angle_w: f("angle_w"),
        cosine_tau: f("cosine_tau"),
        ibn_tau: f("ibn_tau"),
        angle_tau: f("angle_tau"),
        angle_pooling: match c["angle_pooling"].as_str().unwrap() {
            "sum" => AnglePooling::Sum,
            "mean" => AnglePooling::Mean,
            other => panic!("unknown angle_pooling {other}"),
        },
    }
}

/// |a − b| relative to max(1, |b|).
fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1.0)
}

#[test]
fn matches_sentence_transformers_and_angle_emb_in_f64() {
    let (path, doc) = fixture();
    let cases = doc["cases"].as_array().expect("cases");
    assert!(!cases.is_empty(), "{path}: no cases");
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let y = matrix(&case["y"]);
        let ids: Vec<u64> = serde_json::from_value(case["text_ids"].clone()).unwrap();
        let texts = case["texts"].as_u64().unwrap() as usize;
        assert_eq!(y.nrows(), 2 * texts, "{name}: rows");
        let (pairs, labels) = unsupervised_pairs(texts, Some(&ids));
        assert_eq!(
            pairs.len() as u64,
            case["pairs"].as_u64().unwrap(),
            "{name}: pair count"
        );
        assert_eq!(
            labels.iter().filter(|&&l| l == 1.0).count(),
            texts,
            "{name}: positives"
        );

        let out = AngleLoss::new(config(&case["config"]))
            .compute(DataFormat::U, y.view(), &[], Some(&ids))
            .unwrap();
        let want = case["loss"].as_f64().unwrap();
        assert!(rel(out.loss, want) < 1e-10, "{name}: loss {} vs {want}", out.loss);
        let parts = &case["parts"];
        for (key, got) in [
            ("in_batch_negative", out.parts.in_batch_negative),
            ("angle", out.parts.angle),
            ("cosine", out.parts.cosine),
        ] {
            match (parts.get(key).and_then(Value::as_f64), got) {
                (Some(w), Some(g)) => assert!(rel(g, w) < 1e-10, "{name}: {key} {g} vs {w}"),
                (None, None) => {}
                (w, g) => panic!("{name}: {key} expected {w:?}, got {g:?}"),
            }
        }
        let grad = matrix(&case["grad"]);
        let scale = grad.iter().fold(1.0f64, |m, g| m.max(g.abs()));
        let worst = (&out.grad - &grad).iter().fold(0.0f64, |m, d| m.max(d.abs())) / scale;
        assert!(
            worst < 1e-10,
            "{name}: gradient off by {worst:e} (relative to its largest entry)"
        );

        // f32: the same math, rounded.
        let out32 = AngleLoss::new(config(&case["config"]))
            .compute(DataFormat::U, y.mapv(|v| v as f32).view(), &[], Some(&ids))
            .unwrap();
        assert!(
            rel(out32.loss as f64, want) < 1e-5,
            "{name}: f32 loss {}",
            out32.loss
        );
    }
}

#[test]
fn pairs_put_the_views_first_and_leave_duplicate_texts_out() {
    // Texts 0 and 2 are the same: (a_0, b_2) and (a_2, b_0) are no negatives.
    let ids = [7, 7, 8, 8, 7, 7];
    let (pairs, labels) = unsupervised_pairs(3, Some(&ids));
    assert_eq!(&pairs[..3], &[(0, 1), (2, 3), (4, 5)]);
    assert_eq!(&pairs[3..], &[(0, 3), (2, 1), (2, 5), (4, 3)]);
    assert_eq!(labels, vec![1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    let (all, _) = unsupervised_pairs(3, None);
    assert_eq!(all.len(), 9);
}

#[test]
fn needs_whole_pairs_of_rows() {
    let y = Array2::<f64>::zeros((3, 4));
    let err = AngleLoss::new(AngleLossConfig::default())
        .compute(DataFormat::U, y.view(), &[], None)
        .unwrap_err();
    assert!(err.to_string().contains("3"), "{err}");
}

const H: f64 = 1e-6;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn gradient_matches_finite_differences(
        (y, ids) in (1usize..=5, 1usize..=4).prop_flat_map(|(b, h)| (
            proptest::collection::vec(-2.0f64..2.0, 2 * b * 2 * h)
                .prop_map(move |v| Array2::from_shape_vec((2 * b, 2 * h), v).unwrap()),
            proptest::collection::vec(0u64..3, b),
        )),
        ibn_w in prop_oneof![Just(0.0), Just(1.0)],
        angle_w in prop_oneof![Just(0.0), Just(0.02), Just(1.0)],
        cosine_w in prop_oneof![Just(0.0), Just(1.0)],
        tau in prop_oneof![Just(1.0), Just(5.0), Just(20.0)],
        pooling in prop_oneof![Just(AnglePooling::Sum), Just(AnglePooling::Mean)],
    ) {
        let config = AngleLossConfig {
            cosine_w, ibn_w, cln_w: 0.0, angle_w, cosine_tau: tau, ibn_tau: tau, angle_tau: tau,
            angle_pooling: pooling,
        };
        let loss = AngleLoss::new(config);
        // Both views of a text carry its identity; texts repeat (ids from a small set).
        let ids: Vec<u64> = ids.iter().flat_map(|&t| [t, t]).collect();
        let f = |y: &Array2<f64>| loss.compute(DataFormat::U, y.view(), &[], Some(&ids)).unwrap();
        let base = f(&y);
        let scale = base.grad.iter().fold(1.0f64, |m, g| m.max(g.abs()));
        let mut yp = y.clone();
        let mut worst = 0.0f64;
        for r in 0..y.nrows() {
            for c in 0..y.ncols() {
                let orig = y[[r, c]];
                yp[[r, c]] = orig + H;
                let up = f(&yp).loss;
                yp[[r, c]] = orig - H;
                let down = f(&yp).loss;
                yp[[r, c]] = orig;
                worst = worst.max(((up - down) / (2.0 * H) - base.grad[[r, c]]).abs());
            }
        }
        prop_assert!(worst / scale < 2e-6, "finite differences off by {}", worst / scale);
    }
}
