//! The trainer hands the batch's text identities to the loss for formats B and C too (duplicate policy `Mask`):
//! a positive text shared by every query of a batch is then no query's negative.

mod common;

use angle_train::metrics::{Record, read_records};
use angle_train::trainer::METRICS;
use angle_train::{TrainConfig, TrainOptions, train};
use common::{tiny_config, tiny_model};

/// Format B where every example has the same positive: with identities each query's softmax holds its own positive
/// alone, so the first step's loss is exactly 0 (without them it would be about ln(batch size)).
#[test]
fn a_positive_shared_by_the_batch_is_masked_in_format_b() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 5);
    let data = tmp.path().join("b.csv");
    let mut text = String::from("query,positive\n");
    for q in [
        "a man plays a guitar",
        "two dogs run in a field",
        "the stock market fell",
        "a child eats an apple",
    ] {
        text.push_str(&format!("{q},a cat sleeps on the mat\n"));
    }
    std::fs::write(&data, text).unwrap();
    for drop_duplicates in [false, true] {
        let out = tmp.path().join(format!("out-{drop_duplicates}"));
        let cfg = TrainConfig {
            batch_size: 4,
            epochs: 1,
            max_steps: Some(1),
            drop_duplicates,
            ..tiny_config(&model, &data, None, &out)
        };
        train(cfg, None, &TrainOptions::default()).unwrap();
        let first = read_records(&out.join(METRICS))
            .unwrap()
            .into_iter()
            .find_map(|r| match r {
                Record::Train(t) => Some(t),
                _ => None,
            })
            .unwrap();
        // Drop keeps one example of the batch: its softmax holds its positive alone as well.
        assert_eq!(first.loss, 0.0, "drop_duplicates {drop_duplicates}: {first:?}");
    }
}
