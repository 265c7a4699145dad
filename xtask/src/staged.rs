//! `cargo xtask staged`: does the angle objective help an unsupervised (SimCSE) stage? For each seed, trains the
//! unsupervised stage (`angle train --unsupervised` on a corpus of sentences, default `data/stsb-sentences`) in each
//! variant of [`STAGE1`], then the supervised default recipe (cosine + angle on STS-B train, as `cargo xtask train`)
//! from each result and from the base model; scores every model on STS-B test and dev and the `--eval` sets, and
//! writes `staged.md`, `staged.json` and `staged.svg` (the ablation's JSON and SVG form) into the output folder.
//!
//! Resume as the ablation's: each stage of each (variant, seed) writes its `result.json` last (atomically), a rerun
//! reuses every finished stage, and a rerun with other settings into the same folder is refused.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::ablation::{
    RECIPE, eval_with, read_json, render_svg, scores_json, seed_scores, spearmans, write_atomic,
};

/// The unsupervised stage's variants: name, cosine_w, ibn_w, angle_w. In format U the cosine and angle terms rank
/// the two views of each text (label 1) above the batch's other pairs (label 0); 0.02 is angle-emb's weight of the
/// angle term beside its contrastive terms, 1 the weight the cosine variant also gets.
pub const STAGE1: &[(&str, f64, f64, f64)] = &[
    ("simcse", 0.0, 1.0, 0.0),
    ("simcse+angle0.02", 0.0, 1.0, 0.02),
    ("simcse+angle1", 0.0, 1.0, 1.0),
    ("simcse+cosine1", 1.0, 1.0, 0.0),
];

/// SimCSE's unsupervised recipe (Gao et al. 2021: batch 64, 32 tokens, lr 3e-5, one epoch, temperature 0.05 =
/// scale 20), with the model's mean pooling.
const STAGE1_RECIPE: &[(&str, &str)] = &[
    ("--lr", "3e-5"),
    ("--batch-size", "64"),
    ("--max-length", "32"),
    ("--epochs", "1"),
    ("--ibn-tau", "20"),
    ("--angle-tau", "20"),
    ("--cosine-tau", "20"),
    ("--pooling", "mean"),
    ("--warmup-steps", "0"),
    ("--weight-decay", "0"),
];

/// The supervised stage: the default recipe's objective (cosine 1, angle 1).
const STAGE2_WEIGHTS: (f64, f64, f64) = (1.0, 0.0, 1.0);

#[derive(Debug, Clone)]
pub struct Options {
    pub bin: PathBuf,
    pub model: PathBuf,
    /// The unsupervised corpus (format U).
    pub corpus: PathBuf,
    /// The supervised training set (format A).
    pub train: PathBuf,
    /// STS-B test and dev first, then `--eval` files or folders.
    pub eval: Vec<PathBuf>,
    pub output: PathBuf,
    pub seeds: u64,
    /// Caps of each stage's steps (the recipes' epochs otherwise).
    pub stage1_steps: Option<u64>,
    pub stage2_steps: Option<u64>,
    /// Extra `angle train` arguments for both stages (after `--`).
    pub extra: Vec<String>,
    /// Stop (with an error) after this many stages were trained in this call: the interruption of the tests.
    pub stop_after: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub trained: usize,
    pub reused: usize,
    pub report: Value,
}

fn seeds(n: u64) -> Vec<u64> {
    (0..n).map(|k| 42 + k).collect()
}

fn settings(o: &Options) -> Value {
    let recipe = |r: &[(&str, &str)]| r.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>();
    json!({
        "model": o.model, "corpus": o.corpus, "train": o.train, "eval": o.eval,
        "stage1_steps": o.stage1_steps, "stage2_steps": o.stage2_steps, "extra": o.extra,
        "stage1_recipe": recipe(STAGE1_RECIPE), "stage2_recipe": recipe(RECIPE), "stage1": STAGE1,
    })
}

/// One stage to train: what it starts from, what it reads, its weights and recipe.
struct Stage<'a> {
    label: String,
    model: PathBuf,
    data: &'a Path,
    unsupervised: bool,
    weights: (f64, f64, f64),
    seed: u64,
    dir: PathBuf,
}

struct Runner<'a> {
    o: &'a Options,
    trained: usize,
    reused: usize,
}

impl Runner<'_> {
    /// Trains `s` (or reuses its `result.json`), scores its final model; returns the result.
    fn stage(&mut self, s: &Stage<'_>) -> anyhow::Result<Value> {
        let o = self.o;
        let result_path = s.dir.join("result.json");
        if result_path.is_file() {
            self.reused += 1;
            return read_json(&result_path);
        }
        if o.stop_after == Some(self.trained) {
            bail!("stopped after {} stages (as asked)", self.trained);
        }
        // An unfinished stage starts over: training is deterministic, so nothing but time is lost.
        let run_dir = s.dir.join("train");
        if run_dir.exists() {
            std::fs::remove_dir_all(&run_dir).with_context(|| format!("removing {}", run_dir.display()))?;
        }
        std::fs::create_dir_all(&s.dir)?;
        let (cw, iw, aw) = s.weights;
        println!(
            "== {}, seed {}: cosine_w {cw}, ibn_w {iw}, angle_w {aw}",
            s.label, s.seed
        );
        let mut cmd = Command::new(&o.bin);
        cmd.arg("train")
            .arg("--model")
            .arg(&s.model)
            .arg("--train")
            .arg(s.data)
            .arg("--output")
            .arg(&run_dir)
            .args([
                "--progress",
                "false",
                "--seed",
                &s.seed.to_string(),
                "--precision",
                "f32",
            ])
            .args(["--cosine-w", &cw.to_string(), "--ibn-w", &iw.to_string()])
            .args(["--angle-w", &aw.to_string()]);
        let (recipe, steps) = match s.unsupervised {
            true => (STAGE1_RECIPE, o.stage1_steps),
            false => (RECIPE, o.stage2_steps),
        };
        if s.unsupervised {
            cmd.arg("--unsupervised");
        }
        for (flag, value) in recipe {
            cmd.arg(flag).arg(value);
        }
        if let Some(n) = steps {
            cmd.args(["--max-steps", &n.to_string()]);
        }
        cmd.args(&o.extra);
        let out = cmd
            .output()
            .with_context(|| format!("running {}", o.bin.display()))?;
        if !out.status.success() {
            bail!(
                "angle train ({}, seed {}) failed ({}):\n{}",
                s.label,
                s.seed,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let summary = read_json(&run_dir.join("summary.json"))?;
        let scores = eval_with(&o.bin, &o.eval, &run_dir.join("checkpoint-last"))?;
        let train_s = summary["train_seconds"].as_f64().unwrap_or(0.0);
        let line: Vec<String> = scores.iter().map(|(n, v)| format!("{n} {v:.2}")).collect();
        println!("   {} ({train_s:.0} s training)", line.join(", "));
        let v = json!({
            "variant": s.label, "seed": s.seed, "weights": {"cosine_w": cw, "ibn_w": iw, "angle_w": aw},
            "steps": summary["steps"], "train_seconds": train_s, "scores": scores_json(&scores),
        });
        write_atomic(&result_path, &serde_json::to_string_pretty(&v)?)?;
        self.trained += 1;
        Ok(v)
    }
}

/// Every row of the report, in order: each stage-1 variant alone, the supervised recipe from the base model, then
/// from each stage-1 variant.
fn row_names() -> Vec<String> {
    let mut rows: Vec<String> = STAGE1.iter().map(|v| v.0.to_string()).collect();
    rows.push("supervised".into());
    rows.extend(STAGE1.iter().map(|v| format!("{} → supervised", v.0)));
    rows
}

/// Trains (or reuses) every stage, then writes the three reports.
pub fn run_staged(o: &Options) -> anyhow::Result<Outcome> {
    std::fs::create_dir_all(o.output.join("runs"))
        .with_context(|| format!("creating {}", o.output.display()))?;
    let want = settings(o);
    let settings_path = o.output.join("settings.json");
    if settings_path.is_file() {
        if read_json(&settings_path)? != want {
            bail!(
                "{} holds staged runs with other settings ({}); choose another --output or remove it",
                o.output.display(),
                settings_path.display()
            );
        }
    } else {
        write_atomic(&settings_path, &serde_json::to_string_pretty(&want)?)?;
    }
    let zs_path = o.output.join("zero-shot.json");
    let zero_shot = if zs_path.is_file() {
        read_json(&zs_path)?
    } else {
        let v = json!({"scores": scores_json(&eval_with(&o.bin, &o.eval, &o.model)?)});
        write_atomic(&zs_path, &serde_json::to_string_pretty(&v)?)?;
        v
    };

    let mut r = Runner {
        o,
        trained: 0,
        reused: 0,
    };
    // (row, seed) → result
    let mut results: BTreeMap<(usize, u64), Value> = BTreeMap::new();
    let runs = o.output.join("runs");
    for seed in seeds(o.seeds) {
        let sup = STAGE1.len();
        let base = Stage {
            label: "supervised".into(),
            model: o.model.clone(),
            data: &o.train,
            unsupervised: false,
            weights: STAGE2_WEIGHTS,
            seed,
            dir: runs.join(format!("supervised-seed{seed}")),
        };
        results.insert((sup, seed), r.stage(&base)?);
        for (vi, &(name, cw, iw, aw)) in STAGE1.iter().enumerate() {
            let dir = runs.join(format!("{name}-seed{seed}"));
            let first = Stage {
                label: name.into(),
                model: o.model.clone(),
                data: &o.corpus,
                unsupervised: true,
                weights: (cw, iw, aw),
                seed,
                dir: dir.join("unsupervised"),
            };
            results.insert((vi, seed), r.stage(&first)?);
            let second = Stage {
                label: format!("{name} → supervised"),
                model: first.dir.join("train").join("checkpoint-last"),
                data: &o.train,
                unsupervised: false,
                weights: STAGE2_WEIGHTS,
                seed,
                dir: dir.join("supervised"),
            };
            results.insert((sup + 1 + vi, seed), r.stage(&second)?);
        }
    }
    let report = aggregate(o, &zero_shot, &results);
    write_atomic(
        &o.output.join("staged.json"),
        &serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(o.output.join("staged.md"), render_markdown(&report))?;
    std::fs::write(o.output.join("staged.svg"), render_svg(&report))?;
    Ok(Outcome {
        trained: r.trained,
        reused: r.reused,
        report,
    })
}

/// `staged.json`: per row and eval set the mean, min and max over seeds (and every seed's score), in the
/// ablation's form (`variants`), each row with its stages' weights and steps.
fn aggregate(o: &Options, zero_shot: &Value, results: &BTreeMap<(usize, u64), Value>) -> Value {
    let zs = spearmans(zero_shot);
    let sets: Vec<String> = zs.iter().map(|(n, _)| n.clone()).collect();
    let mut rows = Vec::new();
    let mut total = 0.0;
    for (ri, name) in row_names().iter().enumerate() {
        let runs: Vec<&Value> = seeds(o.seeds)
            .iter()
            .filter_map(|s| results.get(&(ri, *s)))
            .collect();
        let per_set = seed_scores(&runs, &sets);
        let secs: f64 = runs
            .iter()
            .map(|r| r["train_seconds"].as_f64().unwrap_or(0.0))
            .sum();
        total += secs;
        rows.push(json!({
            "variant": name, "weights": runs.first().map(|r| r["weights"].clone()),
            "seeds": seeds(o.seeds), "steps": runs.first().map(|r| r["steps"].clone()), "scores": per_set,
            "train_seconds": secs,
        }));
    }
    json!({
        "model": o.model, "corpus": o.corpus, "train": o.train, "eval_sets": sets,
        "zero_shot": scores_json(&zs), "variants": rows, "total_train_seconds": total,
        "stage1_steps": o.stage1_steps, "stage2_steps": o.stage2_steps,
    })
}

/// `staged.md`: row × eval set, mean ± half the seed range, the zero-shot row first; a "→ supervised" row's
/// weights are its first stage's (the second stage is always the default recipe, cosine 1 / angle 1).
pub fn render_markdown(r: &Value) -> String {
    let sets: Vec<&str> = r["eval_sets"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut s = String::from("| model (stage-1 cosine_w / ibn_w / angle_w) | steps |");
    for set in &sets {
        let _ = write!(s, " {set} |");
    }
    s.push_str("\n| --- | --- |");
    s.push_str(&" --- |".repeat(sets.len()));
    s.push_str("\n| zero-shot | 0 |");
    for (_, v) in spearmans(&json!({"scores": r["zero_shot"]})) {
        let _ = write!(s, " {v:.2} |");
    }
    s.push('\n');
    let empty = Vec::new();
    let stage1 = STAGE1
        .iter()
        .map(|v| (v.0, (v.1, v.2, v.3)))
        .collect::<BTreeMap<_, _>>();
    for v in r["variants"].as_array().unwrap_or(&empty) {
        let name = v["variant"].as_str().unwrap_or("?");
        let first = name.split(" → ").next().unwrap_or(name);
        let weights = match stage1.get(first) {
            Some((c, i, a)) => format!(" ({c} / {i} / {a})"),
            None => String::new(),
        };
        let _ = write!(s, "| {name}{weights} | {} |", v["steps"]);
        for sc in v["scores"].as_array().unwrap_or(&empty) {
            let f = |k: &str| sc[k].as_f64().unwrap_or(f64::NAN);
            let _ = write!(s, " {:.2} ± {:.2} |", f("mean"), (f("max") - f("min")) / 2.0);
        }
        s.push('\n');
    }
    let n = r["variants"][0]["seeds"].as_array().map_or(0, Vec::len);
    let _ = writeln!(
        s,
        "\nSpearman × 100 of the cosine similarity; mean over {n} seed(s) ± half the range between them; steps of \
         the row's last stage; stage 1 trains on {} (format U), stage 2 (\"supervised\") is the default recipe on \
         {}; total training {:.0} s.",
        Path::new(r["corpus"].as_str().unwrap_or("?")).display(),
        Path::new(r["train"].as_str().unwrap_or("?")).display(),
        r["total_train_seconds"].as_f64().unwrap_or(0.0)
    );
    s
}

fn usage() -> &'static str {
    "cargo xtask staged [--output DIR] [--seeds N] [--stage1-steps N] [--stage2-steps N] [--eval FILE_OR_DIR]... \
     [--model DIR] [--corpus FILE] [--train FILE] [-- ANGLE_TRAIN_ARGS...]\n\n\
     Trains an unsupervised stage (SimCSE: --unsupervised, batch 64, 32 tokens, lr 3e-5, one epoch of --corpus, \
     default data/stsb-sentences/sentences.txt) in the variants simcse, simcse+angle0.02, simcse+angle1, \
     simcse+cosine1, then the default supervised recipe on --train (default STS-B train) from each result and from \
     the base model, for each seed (default 2: 42, 43); scores every model on STS-B test and dev and the --eval \
     sets and writes staged.md, staged.json, staged.svg into DIR (default runs/staged). A rerun reuses finished \
     stages. Arguments after -- go to every angle train run. Environment: ANGLE_MODEL_DIR, ANGLE_STSB_DIR as for \
     cargo xtask train; ANGLE_BIN: use this angle binary."
}

#[derive(Debug, Default, PartialEq)]
struct Cli {
    help: bool,
    output: Option<PathBuf>,
    model: Option<PathBuf>,
    corpus: Option<PathBuf>,
    train: Option<PathBuf>,
    evals: Vec<PathBuf>,
    seeds: Option<u64>,
    stage1_steps: Option<u64>,
    stage2_steps: Option<u64>,
    extra: Vec<String>,
}

/// What each run's command line sets itself: refused after `--`.
const OWNED: &[&str] = &[
    "--model",
    "--train",
    "--output",
    "--seed",
    "--cosine-w",
    "--ibn-w",
    "--angle-w",
    "--unsupervised",
    "--format",
    "--max-steps",
    "--epochs",
];

fn parse(args: &[String]) -> anyhow::Result<Cli> {
    let (own, extra) = crate::args::split_passthrough(args);
    let mut c = Cli {
        extra: extra.to_vec(),
        ..Cli::default()
    };
    let mut unknown = Vec::new();
    let mut it = own.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "-h" | "--help" => c.help = true,
            "--output" => c.output = Some(PathBuf::from(val()?)),
            "--model" => c.model = Some(PathBuf::from(val()?)),
            "--corpus" => c.corpus = Some(PathBuf::from(val()?)),
            "--train" => c.train = Some(PathBuf::from(val()?)),
            "--eval" => c.evals.push(PathBuf::from(val()?)),
            "--seeds" => c.seeds = Some(val()?.parse().context("--seeds: a number")?),
            "--stage1-steps" => c.stage1_steps = Some(val()?.parse().context("--stage1-steps: a number")?),
            "--stage2-steps" => c.stage2_steps = Some(val()?.parse().context("--stage2-steps: a number")?),
            _ => unknown.push(a.clone()),
        }
    }
    crate::args::reject_unknown("staged", &unknown, usage())?;
    crate::args::reject_owned(
        "staged",
        &c.extra,
        OWNED,
        "the staged runs set these themselves; give the task's own options (--model, --corpus, --train, \
         --stage1-steps, --stage2-steps, --seeds) before `--`",
    )?;
    if c.seeds == Some(0) {
        bail!("--seeds must be at least 1");
    }
    Ok(c)
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let cli = parse(args)?;
    if cli.help {
        println!("{}", usage());
        return Ok(());
    }
    let root = crate::train::workspace_root()?;
    let cache = root.join(".angle-cache");
    let model = match cli.model {
        Some(m) => m,
        None => crate::train::find_model(&root, &cache)?,
    };
    let stsb = crate::train::find_stsb(&root, &cache)?;
    let corpus = cli
        .corpus
        .unwrap_or_else(|| root.join("data/stsb-sentences/sentences.txt"));
    if !corpus.is_file() {
        bail!("--corpus {}: no such file", corpus.display());
    }
    let mut eval = vec![stsb.join("stsb-en-test.csv"), stsb.join("stsb-en-dev.csv")];
    eval.extend(cli.evals);
    let bin = match std::env::var_os("ANGLE_BIN") {
        Some(b) => PathBuf::from(b),
        None => crate::train::build_angle(&root)?,
    };
    let o = Options {
        bin,
        model,
        corpus,
        train: cli.train.unwrap_or_else(|| stsb.join("stsb-en-train.csv")),
        eval,
        output: cli.output.unwrap_or_else(|| root.join("runs").join("staged")),
        seeds: cli.seeds.unwrap_or(2),
        stage1_steps: cli.stage1_steps,
        stage2_steps: cli.stage2_steps,
        extra: cli.extra,
        stop_after: None,
    };
    println!(
        "{} stage-1 variants × {} seeds, each followed by the supervised recipe, plus the recipe alone: {} runs; \
         finished stages in {} are reused",
        STAGE1.len(),
        o.seeds,
        (2 * STAGE1.len() as u64 + 1) * o.seeds,
        o.output.display()
    );
    let started = Instant::now();
    let out = run_staged(&o)?;
    println!("\n{}", render_markdown(&out.report));
    println!(
        "{} stages trained now, {} reused; {:.0} s wall; written: {}",
        out.trained,
        out.reused,
        started.elapsed().as_secs_f64(),
        ["staged.md", "staged.json", "staged.svg"]
            .map(|f| o.output.join(f).display().to_string())
            .join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ablation::tests::{angle_bin, fixtures};

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn options_parse_and_what_each_run_sets_itself_is_refused_after_the_double_dash() {
        let c = parse(&v(&[
            "--stage1-steps",
            "2",
            "--corpus",
            "c.txt",
            "--",
            "--dropout",
            "true",
        ]))
        .unwrap();
        assert_eq!(c.stage1_steps, Some(2));
        assert_eq!(c.corpus, Some(PathBuf::from("c.txt")));
        assert_eq!(c.extra, v(&["--dropout", "true"]));
        let err = parse(&v(&["--", "--unsupervised", "--angle-w", "1"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"--unsupervised\", \"--angle-w\""), "{err}");
        assert!(parse(&v(&["--lr", "1"])).is_err());
        assert!(parse(&v(&["--seeds", "0"])).is_err());
    }

    #[test]
    fn tiny_staged_run_writes_its_reports_and_resumes() {
        let bin = angle_bin();
        let tmp = tempfile::tempdir().unwrap();
        let (model, train, eval) = fixtures(tmp.path());
        let corpus = tmp.path().join("corpus.txt");
        let text = std::fs::read_to_string(&train).unwrap();
        // The first sentence of each training pair, one per line (quotes dropped: a plain text file).
        let lines: Vec<String> = text
            .lines()
            .map(|l| l.split(',').next().unwrap().replace('"', ""))
            .collect();
        std::fs::write(&corpus, lines.join("\n") + "\n").unwrap();
        let o = |out: &str, stop: Option<usize>| Options {
            bin: bin.clone(),
            model: model.clone(),
            corpus: corpus.clone(),
            train: train.clone(),
            eval: eval.clone(),
            output: tmp.path().join(out),
            seeds: 1,
            stage1_steps: Some(2),
            stage2_steps: Some(2),
            extra: v(&["--max-length", "32", "--batch-size", "8", "--lr", "1e-3"]),
            stop_after: stop,
        };
        let err = run_staged(&o("cut", Some(3))).unwrap_err().to_string();
        assert!(err.contains("stopped after 3"), "{err}");
        let done = run_staged(&o("cut", None)).unwrap();
        // 1 seed: the recipe alone, then 4 × (stage 1, stage 2); 3 were done before the interruption.
        assert_eq!((done.trained, done.reused), (6, 3));
        let rows: Vec<&str> = done.report["variants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["variant"].as_str().unwrap())
            .collect();
        assert_eq!(rows.len(), 9);
        assert_eq!(rows[4], "supervised");
        assert_eq!(rows[8], "simcse+cosine1 → supervised");
        for v in done.report["variants"].as_array().unwrap() {
            assert_eq!(v["steps"], json!(2), "{v}");
            let mean = v["scores"][0]["mean"].as_f64().unwrap();
            assert!((-100.0..=100.0).contains(&mean), "{v}");
        }
        let md = std::fs::read_to_string(tmp.path().join("cut/staged.md")).unwrap();
        assert!(md.contains("| simcse+angle1 (0 / 1 / 1) | 2 |"), "{md}");
        assert!(
            md.contains("| simcse+angle1 → supervised (0 / 1 / 1) | 2 |"),
            "{md}"
        );
        assert!(tmp.path().join("cut/staged.svg").is_file());
        // The unsupervised stage ran as format U with its weights.
        let cfg = read_json(
            &tmp.path()
                .join("cut/runs/simcse+angle1-seed42/unsupervised/train/checkpoint-last/angle_config.json"),
        )
        .unwrap();
        assert_eq!(cfg["train"]["format"], "U");
        assert_eq!(cfg["train"]["loss"]["angle_w"], json!(1.0));
        assert_eq!(run_staged(&o("cut", None)).unwrap().trained, 0);
        let mut other = o("cut", None);
        other.stage2_steps = Some(3);
        assert!(
            run_staged(&other)
                .unwrap_err()
                .to_string()
                .contains("other settings")
        );
    }
}
