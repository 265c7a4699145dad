//! The STS evaluation suite (`angle eval` on several files, every similarity measure) and the saturation records of
//! `metrics.jsonl`, on a tiny random BERT and heads of the STS-B files.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use angle_train::embed::{Embedder, LoadOptions, load_backbone};
use angle_train::metrics::{Record, read_records};
use angle_train::similarity::Measure;
use angle_train::stats::{pearson, spearman};
use angle_train::suite::{collect_files, evaluate_all, load_all};
use angle_train::trainer::METRICS;
use angle_train::{TrainOptions, train};
use common::{stsb_head, tiny_config, tiny_model};

const MAX_LEN: usize = 32;

/// The rows of a headerless STS-B CSV: (text1, text2, score).
fn read_rows(path: &Path) -> Vec<(String, String, f64)> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(path)
        .unwrap();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            (rec[0].to_string(), rec[1].to_string(), rec[2].parse().unwrap())
        })
        .collect()
}

/// A SentEval STS TSV (`score<TAB>s1<TAB>s2`) with the rows of a CSV.
fn write_tsv(rows: &[(String, String, f64)], path: &Path) -> PathBuf {
    let text: String = rows.iter().map(|(a, b, s)| format!("{s}\t{a}\t{b}\n")).collect();
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

fn files(dir: &Path) -> (PathBuf, Vec<PathBuf>) {
    let model = tiny_model(dir, 11);
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let dev = stsb_head(&data, "dev", 40, "a-dev.csv");
    let test = stsb_head(&data, "test", 30, "b-test.csv");
    let tsv = write_tsv(
        &read_rows(&stsb_head(dir, "test", 60, "t.csv"))[20..],
        &data.join("c-sts.tsv"),
    );
    (model, vec![dev, test, tsv])
}

#[test]
fn several_files_score_as_each_file_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, paths) = files(tmp.path());
    let opts = LoadOptions {
        pooling: Some(angle_encoder::Pooling::Mean),
        ..LoadOptions::default()
    };
    let (mut model, tok) = load_backbone(&model, MAX_LEN, opts).unwrap();
    let prompts = angle_data::Prompts::default();
    let mut emb = Embedder::new(16, tok.max_len());
    model.reserve(emb.sizes()).unwrap();
    let sets = load_all(&paths, &tok, &prompts, false).unwrap();
    let all = evaluate_all(&mut *model, &mut emb, &sets).unwrap();
    assert_eq!(all.files.len(), 3);
    // The test head and the TSV share 10 rows: their texts are embedded once.
    let distinct: usize = sets.iter().map(|s| s.num_texts()).sum();
    assert!(all.texts < distinct, "{} vs {distinct}", all.texts);
    for (k, set) in sets.iter().enumerate() {
        let one = evaluate_all(&mut *model, &mut emb, std::slice::from_ref(set)).unwrap();
        assert_eq!(one.files[0].pairs, all.files[k].pairs);
        for m in Measure::ALL {
            let (a, b) = (all.files[k].scores.get(m), one.files[0].scores.get(m));
            // Each sequence's embedding does not depend on its batch neighbours beyond rounding.
            assert!(
                (a.spearman - b.spearman).abs() < 1e-9 && (a.pearson - b.pearson).abs() < 1e-9,
                "{} {}: {a:?} vs {b:?}",
                paths[k].display(),
                m.name()
            );
        }
        // One file: the mean is that file's score.
        assert_eq!(one.mean, one.files[0].scores);
    }
    for m in Measure::ALL {
        let mean = all.files.iter().map(|f| f.scores.get(m).spearman).sum::<f64>() / 3.0;
        assert!((all.mean.get(m).spearman - mean).abs() < 1e-12);
    }
    // A folder is its readable files in name order.
    let folder = collect_files(&[paths[0].parent().unwrap().to_path_buf()]).unwrap();
    assert_eq!(folder, paths);
    let err = collect_files(&[tmp.path().join("nope.csv")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope.csv"), "{err}");
}

#[test]
fn each_measure_matches_a_direct_computation() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, paths) = files(tmp.path());
    let opts = LoadOptions {
        pooling: Some(angle_encoder::Pooling::Mean),
        ..LoadOptions::default()
    };
    let (mut model, tok) = load_backbone(&model, MAX_LEN, opts).unwrap();
    let mut emb = Embedder::new(16, tok.max_len());
    model.reserve(emb.sizes()).unwrap();
    let h = model.hidden_size();
    let sets = load_all(&paths[..1], &tok, &Default::default(), false).unwrap();
    let report = evaluate_all(&mut *model, &mut emb, &sets).unwrap();

    let rows = read_rows(&paths[0]);
    let texts: Vec<String> = rows.iter().flat_map(|(a, b, _)| [a.clone(), b.clone()]).collect();
    let mut v = Vec::new();
    emb.embed_texts(&mut *model, &tok, &texts, &mut v).unwrap();
    let gold: Vec<f64> = rows.iter().map(|r| r.2).collect();
    let pair = |k: usize| -> (Vec<f64>, Vec<f64>) {
        let x = v[2 * k * h..(2 * k + 1) * h].iter().map(|&a| a as f64).collect();
        let y = v[(2 * k + 1) * h..(2 * k + 2) * h]
            .iter()
            .map(|&a| a as f64)
            .collect();
        (x, y)
    };
    let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f64>();
    let direct = |m: Measure| -> Vec<f64> {
        (0..rows.len())
            .map(|k| {
                let (x, y) = pair(k);
                match m {
                    Measure::Cosine => dot(&x, &y) / (dot(&x, &x).sqrt() * dot(&y, &y).sqrt()),
                    Measure::Dot => dot(&x, &y),
                    Measure::Euclidean => -x.iter().zip(&y).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt(),
                    Measure::Manhattan => -x.iter().zip(&y).map(|(a, b)| (a - b).abs()).sum::<f64>(),
                    Measure::Angle => {
                        // (a + bi) / (c + di) element-wise, scaled by ‖(c, d)‖ / ‖(a, b)‖ · 1/|c + di|², summed.
                        let n = h / 2;
                        let (mut re, mut im) = (0.0, 0.0);
                        for t in 0..n {
                            let (a, b, c, d) = (x[t], x[n + t], y[t], y[n + t]);
                            re += a * c + b * d;
                            im += b * c - a * d;
                        }
                        ((re + im) / (dot(&x, &x).sqrt() * dot(&y, &y).sqrt())).abs()
                    }
                }
            })
            .collect()
    };
    for m in Measure::ALL {
        let sims = direct(m);
        let got = report.files[0].scores.get(m);
        let s = 100.0 * spearman(&sims, &gold).unwrap();
        let p = 100.0 * pearson(&sims, &gold).unwrap();
        // Texts embedded in another batch order: equal up to f32 rounding of the encoder.
        assert!(
            (got.spearman - s).abs() < 1e-6,
            "{}: {} vs {s}",
            m.name(),
            got.spearman
        );
        assert!(
            (got.pearson - p).abs() < 1e-6,
            "{}: {} vs {p}",
            m.name(),
            got.pearson
        );
    }
    // The measures really differ from one another on this data.
    assert_ne!(report.files[0].scores.cosine, report.files[0].scores.manhattan);
}

#[test]
fn cli_prints_text_markdown_and_json_for_files_and_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, paths) = files(tmp.path());
    let run = |extra: &[&str], data: &[&Path]| -> String {
        let mut c = Command::new(env!("CARGO_BIN_EXE_angle"));
        c.args(["eval", "--max-length", "32", "--model"])
            .arg(&model)
            .arg("--data");
        c.args(data).args(extra);
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let folder = paths[0].parent().unwrap();
    let v: serde_json::Value = serde_json::from_str(&run(&["--json"], &[folder])).unwrap();
    assert_eq!(v["files"].as_array().unwrap().len(), 3);
    let mean = v["mean"]["cosine"]["spearman"].as_f64().unwrap();
    assert_eq!(v["spearman"].as_f64().unwrap(), mean);
    let one: serde_json::Value = serde_json::from_str(&run(&["--json"], &[&paths[1]])).unwrap();
    assert_eq!(
        one["spearman"].as_f64().unwrap(),
        v["files"][1]["scores"]["cosine"]["spearman"].as_f64().unwrap()
    );
    assert_eq!(one["pairs"].as_u64(), Some(30));
    let md = run(&["--markdown"], &[&paths[0], &paths[1]]);
    assert!(
        md.starts_with("| data | pairs | cosine | dot | euclidean | manhattan | angle |"),
        "{md}"
    );
    assert!(md.contains("| **mean** |"), "{md}");
    let text = run(&[], &[&paths[2]]);
    assert!(
        text.contains("c-sts.tsv (40 pairs") && text.contains("manhattan"),
        "{text}"
    );
}

#[test]
fn logged_steps_record_saturation_per_objective() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 5);
    let train_file = stsb_head(tmp.path(), "train", 48, "train.csv");
    let out = tmp.path().join("run");
    let mut cfg = tiny_config(&model, &train_file, None, &out);
    cfg.epochs = 1;
    cfg.log_steps = 2;
    cfg.loss.ibn_w = 1.0;
    train(cfg, None, &TrainOptions::default()).unwrap();
    let recs = read_records(&out.join(METRICS)).unwrap();
    let train_steps: Vec<u64> = recs
        .iter()
        .filter(|r| matches!(r, Record::Train(_)))
        .map(Record::step)
        .collect();
    let sat: Vec<_> = recs
        .iter()
        .filter_map(|r| match r {
            Record::Saturation(s) => Some(s),
            _ => None,
        })
        .collect();
    // 6 steps, logged every 2: one saturation record per logged step.
    assert_eq!(train_steps, vec![2, 4, 6]);
    assert_eq!(sat.iter().map(|s| s.step).collect::<Vec<_>>(), train_steps);
    for s in sat {
        assert_eq!(s.pairs, 8);
        for name in ["cosine", "angle", "ibn"] {
            let o = s.objectives[name];
            assert!(
                o.active && o.grad_norm > 0.0 && o.grad_norm.is_finite(),
                "{name}: {o:?}"
            );
        }
        for name in ["cosine", "angle"] {
            let share = s.objectives[name].saturated.unwrap();
            assert!((0.0..1.0).contains(&share), "{name}: {share}");
        }
    }
    let svg = std::fs::read_to_string(out.join(angle_train::trainer::PLOT)).unwrap();
    assert!(
        svg.contains("saturation") && svg.matches("<polyline").count() == 3,
        "{svg}"
    );
}
