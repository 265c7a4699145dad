//! Unsupervised training (format U, `--unsupervised`) on a tiny random BERT: the two views of a text differ under
//! dropout and are equal without it, backward regenerates both masks (finite differences of the whole objective
//! through the encoder, dropout on), an interrupted run resumes bit for bit, and the options that cannot work are
//! refused by name.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use angle_data::{BatchConfig, Dataset, Format, PackedBatch, Prompts, ReadOptions, TextTokenizer};
use angle_encoder::{Capacity, Encoder, Mode, Pooler, Pooling, model::Batch};
use angle_loss::{AngleLoss, AngleLossConfig, DataFormat};
use angle_train::checkpoint::TRAINER_STATE;
use angle_train::trainer::CHECKPOINT_LAST;
use angle_train::{TrainConfig, TrainOptions, train};
use common::{tiny_config, tiny_model};
use ndarray::ArrayView2;

const SENTENCES: &[&str] = &[
    "A man is playing a guitar.",
    "A woman slices an onion.",
    "A dog runs across the field.",
    "Two kids are playing in the snow.",
    "A man is playing a guitar.",
    "The stock market fell sharply today.",
];

fn sentences(dir: &Path, copies: usize) -> PathBuf {
    let p = dir.join("sentences.txt");
    let mut text = String::new();
    for k in 0..copies {
        for s in SENTENCES {
            text.push_str(&format!("{s} ({k})\n"));
        }
    }
    std::fs::write(&p, text).unwrap();
    p
}

fn u_batch(model: &Path, file: &Path, texts: usize) -> PackedBatch {
    let tok = TextTokenizer::from_file(model.join("tokenizer.json"), 16).unwrap();
    let opts = ReadOptions {
        format: Some(Format::U),
        ..ReadOptions::default()
    };
    let data = Dataset::load(file, &opts, &Prompts::default(), &tok).unwrap();
    let plan = data.plan_epoch(&BatchConfig::eval(texts), 0).unwrap();
    data.batch(&plan, 0).unwrap()
}

fn capacity(b: &Batch<'_>) -> Capacity {
    Capacity {
        max_tokens: b.num_tokens(),
        max_seq_len: b.seq_offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(1),
    }
}

/// Forward (dropout `seed`), mean pooling, the format-U objective; with `grad`, its backward into the encoder's
/// gradient buffer. Returns (loss, pooled).
fn objective(
    enc: &mut Encoder,
    b: &Batch<'_>,
    ids: &[u64],
    seed: Option<u64>,
    grad: bool,
) -> (f64, Vec<f32>) {
    let h = enc.config.hidden_size;
    let rows = b.num_seqs();
    let mut acts = enc.activations(capacity(b), Mode::Train);
    let hidden = enc.forward(b, &mut acts, seed).unwrap();
    let mut pooler = Pooler::new(Pooling::Mean);
    let mut pooled = vec![0.0; rows * h];
    pooler.forward(&mut pooled, hidden, b.seq_offsets, h).unwrap();
    let loss = AngleLoss::new(AngleLossConfig {
        ibn_w: 1.0,
        angle_w: 1.0,
        cosine_w: 0.5,
        ibn_tau: 5.0,
        angle_tau: 5.0,
        cosine_tau: 5.0,
        ..AngleLossConfig::default()
    });
    let y = ArrayView2::from_shape((rows, h), &pooled).unwrap();
    let out = loss.compute(DataFormat::U, y, &[], Some(ids)).unwrap();
    if grad {
        enc.zero_grad();
        let g: Vec<f32> = out.grad.iter().copied().collect();
        pooler.backward(acts.dhidden_mut(), &g, b.seq_offsets, h).unwrap();
        enc.backward(&mut acts).unwrap();
    }
    (out.loss as f64, pooled)
}

#[test]
fn views_differ_under_dropout_and_backward_regenerates_both_masks() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 11);
    let file = sentences(tmp.path(), 1);
    let pb = u_batch(&model, &file, 4);
    let b = Batch {
        input_ids: &pb.input_ids,
        token_type_ids: Some(&pb.token_type_ids),
        seq_offsets: &pb.seq_offsets,
    };
    let mut enc = Encoder::from_dir(&model).unwrap();
    assert!(enc.config.hidden_dropout_prob > 0.0);
    let h = enc.config.hidden_size;
    let row = |p: &[f32], r: usize| p[r * h..(r + 1) * h].to_vec();

    // Without dropout the two views are the same vector; with it, each row of the packed batch draws its own mask.
    let (_, plain) = objective(&mut enc, &b, &pb.text_ids, None, false);
    let (_, dropped) = objective(&mut enc, &b, &pb.text_ids, Some(5), false);
    for k in 0..4 {
        assert_eq!(
            row(&plain, 2 * k),
            row(&plain, 2 * k + 1),
            "text {k}: views differ without dropout"
        );
        assert_ne!(
            row(&dropped, 2 * k),
            row(&dropped, 2 * k + 1),
            "text {k}: views equal under dropout"
        );
    }

    // Directional finite differences of every parameter tensor, dropout on (the same seed each time): backward
    // regenerates both views' masks, or these would disagree.
    let seed = Some(9);
    objective(&mut enc, &b, &pb.text_ids, seed, true);
    let g = enc.buffers.grads.clone();
    let base = enc.buffers.params.clone();
    let eps = 1e-2f32;
    let mut state = 0x1234_5678u64;
    for e in enc.layout.entries.clone() {
        let u: Vec<f32> = (0..e.len())
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect();
        let un = u.iter().map(|x| x * x).sum::<f32>().sqrt();
        let analytic: f64 = g[e.range()]
            .iter()
            .zip(&u)
            .map(|(a, d)| (a * d / un) as f64)
            .sum();
        let mut at = |s: f32| {
            enc.buffers.params.copy_from_slice(&base);
            enc.buffers.params[e.range()]
                .iter_mut()
                .zip(&u)
                .for_each(|(p, d)| *p += s * d / un);
            objective(&mut enc, &b, &pb.text_ids, seed, false).0
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
        let tol = 2e-2 * analytic.abs().max(fd.abs()) + 1e-3;
        assert!(
            (fd - analytic).abs() <= tol,
            "{}: finite difference {fd:.6e} vs backward {analytic:.6e}",
            e.name
        );
    }
}

fn unsupervised_config(model: &Path, file: &Path, out: &Path) -> TrainConfig {
    let mut c = tiny_config(model, file, None, out);
    c.format = Some("U".into());
    c.loss = AngleLossConfig {
        cosine_w: 0.0,
        ibn_w: 1.0,
        angle_w: 0.02,
        ..AngleLossConfig::default()
    };
    c.save_steps = 2;
    c
}

#[test]
fn an_interrupted_unsupervised_run_resumes_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 12);
    // 30 texts (copies of each sentence differ by a suffix; one sentence occurs twice per copy), batch 8: 4 batches
    // an epoch, 2 epochs.
    let file = sentences(tmp.path(), 5);
    let full = train(
        unsupervised_config(&model, &file, &tmp.path().join("full")),
        None,
        &TrainOptions::default(),
    )
    .unwrap();
    assert_eq!(full.total_steps, 8);
    let metrics = std::fs::read_to_string(tmp.path().join("full/metrics.jsonl")).unwrap();
    assert!(
        metrics.contains("\"ibn\"") && metrics.contains("\"angle\""),
        "{metrics}"
    );

    let part = tmp.path().join("part");
    let halted = TrainOptions {
        halt_after: Some(5),
        ..TrainOptions::default()
    };
    train(unsupervised_config(&model, &file, &part), None, &halted).unwrap();
    let ckpt = part.join(CHECKPOINT_LAST);
    train(
        unsupervised_config(&model, &file, &part),
        Some(&ckpt),
        &TrainOptions::default(),
    )
    .unwrap();
    let full_ckpt = tmp.path().join("full").join(CHECKPOINT_LAST);
    for f in ["model.safetensors", "optimizer.safetensors"] {
        assert!(
            std::fs::read(full_ckpt.join(f)).unwrap() == std::fs::read(ckpt.join(f)).unwrap(),
            "{f} differs after resume"
        );
    }
    let step = |p: &Path| -> serde_json::Value {
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(p.join(TRAINER_STATE)).unwrap()).unwrap()["step"]
            .clone()
    };
    assert_eq!(step(&full_ckpt), step(&ckpt));
}

fn angle() -> Command {
    Command::new(env!("CARGO_BIN_EXE_angle"))
}

fn refused(args: &[&str]) -> String {
    let out = angle().args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} should be refused");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn options_that_cannot_learn_from_two_views_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 13);
    let file = sentences(tmp.path(), 1);
    let (m, f) = (model.to_str().unwrap(), file.to_str().unwrap());
    let out = tmp.path().join("out");
    let o = out.to_str().unwrap();
    let base = [
        "train",
        "--model",
        m,
        "--train",
        f,
        "--output",
        o,
        "--unsupervised",
    ];

    let err = refused(&[&base[..], &["--dropout", "false"]].concat());
    assert!(
        err.contains("--dropout false") && err.contains("format U"),
        "{err}"
    );
    let err = refused(&[&base[..], &["--format", "B"]].concat());
    assert!(
        err.contains("--unsupervised") && err.contains("--format"),
        "{err}"
    );
    let err = refused(&[
        "train",
        "--model",
        m,
        "--train",
        f,
        "--output",
        o,
        "--format",
        "U",
        "--dropout",
        "false",
    ]);
    assert!(err.contains("--dropout false"), "{err}");

    // A model whose config turns dropout off: the views would be identical.
    let cfg_path = model.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["hidden_dropout_prob"] = 0.0.into();
    cfg["attention_probs_dropout_prob"] = 0.0.into();
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let err = refused(&base);
    assert!(err.contains("hidden_dropout_prob"), "{err}");
    assert!(!out.exists(), "a refused run must not create its output folder");
}

#[test]
fn the_unsupervised_flag_sets_simcse_defaults_and_records_them() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 14);
    let file = sentences(tmp.path(), 2);
    let out = tmp.path().join("out");
    let status = angle()
        .args([
            "train",
            "--model",
            model.to_str().unwrap(),
            "--train",
            file.to_str().unwrap(),
        ])
        .args([
            "--output",
            out.to_str().unwrap(),
            "--unsupervised",
            "--max-steps",
            "1",
            "--progress",
            "false",
        ])
        .args(["--batch-size", "4", "--max-length", "16"])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join(CHECKPOINT_LAST).join("angle_config.json")).unwrap())
            .unwrap();
    let loss = &saved["train"]["loss"];
    assert_eq!(saved["train"]["format"], "U", "{saved}");
    assert_eq!(
        (loss["ibn_w"].as_f64(), loss["cosine_w"].as_f64()),
        (Some(1.0), Some(0.0)),
        "{loss}"
    );
    assert_eq!(loss["angle_w"].as_f64(), Some(0.0), "{loss}");
}
