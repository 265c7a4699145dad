//! `angle train --ese`: the run logs the same loss parts as a plain run (the base objective on the whole model).

mod common;

use angle_loss::EseConfig;
use angle_train::{TrainOptions, train};
use common::{stsb_head, tiny_config, tiny_model};

#[test]
fn an_ese_run_logs_the_base_objective_parts() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 11);
    let data = stsb_head(tmp.path(), "train", 16, "train.csv");
    let mut c = tiny_config(&model, &data, None, &tmp.path().join("run"));
    c.max_steps = Some(2);
    c.ese = Some(EseConfig {
        compression_size: 16,
        ..EseConfig::default()
    });
    train(c, None, &TrainOptions::default()).unwrap();
    let log = std::fs::read_to_string(tmp.path().join("run/metrics.jsonl")).unwrap();
    let steps: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .collect();
    assert!(!steps.is_empty(), "{log}");
    for s in &steps {
        let parts = s["parts"].as_object().unwrap_or_else(|| panic!("no parts: {s}"));
        for name in ["cosine", "angle"] {
            assert!(
                parts[name].as_f64().is_some_and(f64::is_finite),
                "{name} missing: {s}"
            );
        }
    }
}
