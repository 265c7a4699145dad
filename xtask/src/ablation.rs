//! `cargo xtask ablation`: the AnglE paper's ablation in one command. Trains every objective variant from one base
//! model on one training set (default: all-MiniLM-L6-v2 on STS-B train, the default recipe otherwise) for each
//! seed, scores each final model on STS-B test and dev and on any `--eval` files or folders (`angle eval`, cosine
//! Spearman × 100), and writes `ablation.md`, `ablation.json` and `ablation.svg` into the output folder.
//!
//! Resume: each (variant, seed) run writes `runs/<variant>-seed<seed>/result.json` last (atomically); a rerun with
//! the same settings reuses every finished run and redoes any unfinished one, so an interrupted ablation loses at
//! most the run it was in. A rerun with other settings into the same folder is refused.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// The objective variants: name, cosine_w, ibn_w, angle_w.
pub const VARIANTS: &[(&str, f64, f64, f64)] = &[
    ("cosine", 1.0, 0.0, 0.0),
    ("angle", 0.0, 0.0, 1.0),
    ("cosine+angle", 1.0, 0.0, 1.0),
    ("ibn", 0.0, 1.0, 0.0),
    ("cosine+ibn", 1.0, 1.0, 0.0),
    ("cosine+ibn+angle", 1.0, 1.0, 0.02),
];

/// The default recipe apart from the objective weights and the seed (as `cargo xtask train` runs it).
pub(crate) const RECIPE: &[(&str, &str)] = &[
    ("--cosine-tau", "20"),
    ("--ibn-tau", "20"),
    ("--angle-tau", "20"),
    ("--angle-pooling", "sum"),
    ("--pooling", "mean"),
    ("--lr", "5e-5"),
    ("--batch-size", "32"),
    ("--max-length", "64"),
    ("--warmup-steps", "0"),
    ("--weight-decay", "0"),
];

/// The default recipe's training time in f32 on 2 cores of an Intel Xeon (crates/angle-train/README.md: 266 s of
/// training, 540 steps, 3 epochs): only for the up-front estimate of how long the ablation takes.
const RECIPE_SECONDS: f64 = 266.0;
const RECIPE_STEPS: f64 = 540.0;

#[derive(Debug, Clone)]
pub struct Options {
    pub bin: PathBuf,
    pub model: PathBuf,
    pub train: PathBuf,
    /// STS-B test and dev first, then `--eval` files or folders.
    pub eval: Vec<PathBuf>,
    pub output: PathBuf,
    pub seeds: u64,
    pub epochs: Option<u32>,
    pub max_steps: Option<u64>,
    /// Extra `angle train` arguments (after `--`).
    pub extra: Vec<String>,
    /// Stop (with an error) after this many runs were trained in this call: the interruption of the tests.
    pub stop_after: Option<usize>,
}

/// What a call did: runs trained now and runs reused from an earlier call.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub trained: usize,
    pub reused: usize,
    pub report: Value,
}

fn seeds(n: u64) -> Vec<u64> {
    (0..n).map(|k| 42 + k).collect()
}

/// The settings a finished run must share with this call to be reused.
fn settings(o: &Options) -> Value {
    json!({
        "model": o.model, "train": o.train, "eval": o.eval, "epochs": o.epochs, "max_steps": o.max_steps,
        "extra": o.extra, "recipe": RECIPE.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>(),
    })
}

/// Writes `path` through a temporary file and a rename: a kill leaves the old file or the new one, never half.
pub(crate) fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))
}

pub(crate) fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// `angle eval --json` of a model on every eval set: file name → cosine Spearman × 100, in order.
fn eval(o: &Options, model: &Path) -> anyhow::Result<Vec<(String, f64)>> {
    eval_with(&o.bin, &o.eval, model)
}

/// [`eval`] with the binary and the eval sets given.
pub(crate) fn eval_with(bin: &Path, sets: &[PathBuf], model: &Path) -> anyhow::Result<Vec<(String, f64)>> {
    let out = Command::new(bin)
        .args([
            "eval",
            "--json",
            // f32 on every CPU (auto would take bf16 where AMX is), so tables from different machines compare
            "--precision",
            "f32",
            "--max-length",
            "64",
            "--pooling",
            "mean",
            "--model",
        ])
        .arg(model)
        .arg("--data")
        .args(sets)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "angle eval of {} failed:\n{}",
            model.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("parsing angle eval's JSON")?;
    let files = v["files"].as_array().context("angle eval's JSON has no files")?;
    files
        .iter()
        .map(|f| {
            let name = Path::new(f["data"].as_str().unwrap_or("?"))
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let s = f["scores"]["cosine"]["spearman"]
                .as_f64()
                .context("angle eval's JSON lacks a cosine Spearman")?;
            Ok((name, s))
        })
        .collect()
}

pub(crate) fn scores_json(s: &[(String, f64)]) -> Value {
    Value::Array(s.iter().map(|(n, v)| json!({"data": n, "spearman": v})).collect())
}

/// Trains (or reuses) every run, then writes the three reports. Returns what it did.
pub fn run_ablation(o: &Options) -> anyhow::Result<Outcome> {
    std::fs::create_dir_all(o.output.join("runs"))
        .with_context(|| format!("creating {}", o.output.display()))?;
    let want = settings(o);
    let settings_path = o.output.join("settings.json");
    if settings_path.is_file() {
        let had = read_json(&settings_path)?;
        if had != want {
            bail!(
                "{} holds an ablation with other settings ({}); choose another --output or remove it",
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
        let v = json!({"scores": scores_json(&eval(o, &o.model)?)});
        write_atomic(&zs_path, &serde_json::to_string_pretty(&v)?)?;
        v
    };

    let (mut trained, mut reused) = (0, 0);
    let mut results: BTreeMap<(usize, u64), Value> = BTreeMap::new();
    for (vi, &(name, cw, iw, aw)) in VARIANTS.iter().enumerate() {
        for seed in seeds(o.seeds) {
            let dir = o.output.join("runs").join(format!("{name}-seed{seed}"));
            let result_path = dir.join("result.json");
            if result_path.is_file() {
                results.insert((vi, seed), read_json(&result_path)?);
                reused += 1;
                continue;
            }
            if o.stop_after == Some(trained) {
                bail!("stopped after {trained} runs (as asked)");
            }
            // An unfinished run starts over: training is deterministic, so nothing but time is lost.
            let run_dir = dir.join("train");
            if run_dir.exists() {
                std::fs::remove_dir_all(&run_dir)
                    .with_context(|| format!("removing {}", run_dir.display()))?;
            }
            std::fs::create_dir_all(&dir)?;
            println!("== {name}, seed {seed}: cosine_w {cw}, ibn_w {iw}, angle_w {aw}");
            let mut cmd = Command::new(&o.bin);
            cmd.arg("train")
                .arg("--model")
                .arg(&o.model)
                .arg("--train")
                .arg(&o.train)
                .arg("--output")
                .arg(&run_dir)
                .args(["--progress", "false", "--seed", &seed.to_string()])
                .args(["--cosine-w", &cw.to_string(), "--ibn-w", &iw.to_string()])
                .args(["--angle-w", &aw.to_string()])
                // f32 on every CPU (the default takes bf16 products where they are faster), so runs on
                // different machines give the same numbers
                .args(["--precision", "f32"]);
            for (flag, value) in RECIPE {
                cmd.arg(flag).arg(value);
            }
            if let Some(e) = o.epochs {
                cmd.args(["--epochs", &e.to_string()]);
            }
            if let Some(s) = o.max_steps {
                cmd.args(["--max-steps", &s.to_string()]);
            }
            cmd.args(&o.extra);
            let out = cmd
                .output()
                .with_context(|| format!("running {}", o.bin.display()))?;
            if !out.status.success() {
                bail!(
                    "angle train ({name}, seed {seed}) failed ({}):\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let summary = read_json(&run_dir.join("summary.json"))?;
            let scores = eval(o, &run_dir.join("checkpoint-last"))?;
            let line: Vec<String> = scores.iter().map(|(n, s)| format!("{n} {s:.2}")).collect();
            let train_s = summary["train_seconds"].as_f64().unwrap_or(0.0);
            println!("   {} ({train_s:.0} s training)", line.join(", "));
            let v = json!({
                "variant": name, "seed": seed, "weights": {"cosine_w": cw, "ibn_w": iw, "angle_w": aw},
                "steps": summary["steps"], "train_seconds": train_s, "scores": scores_json(&scores),
            });
            write_atomic(&result_path, &serde_json::to_string_pretty(&v)?)?;
            results.insert((vi, seed), v);
            trained += 1;
        }
    }
    let report = aggregate(o, &zero_shot, &results)?;
    write_atomic(
        &o.output.join("ablation.json"),
        &serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(o.output.join("ablation.md"), render_markdown(&report))?;
    std::fs::write(o.output.join("ablation.svg"), render_svg(&report))?;
    Ok(Outcome {
        trained,
        reused,
        report,
    })
}

pub(crate) fn spearmans(v: &Value) -> Vec<(String, f64)> {
    v["scores"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["data"].as_str().unwrap_or("?").to_string(),
                        s["spearman"].as_f64().unwrap_or(f64::NAN),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `ablation.json`: per variant and eval set the mean, min and max over seeds (and every seed's score).
fn aggregate(
    o: &Options,
    zero_shot: &Value,
    results: &BTreeMap<(usize, u64), Value>,
) -> anyhow::Result<Value> {
    let zs = spearmans(zero_shot);
    let sets: Vec<String> = zs.iter().map(|(n, _)| n.clone()).collect();
    let mut variants = Vec::new();
    let mut total_train = 0.0;
    for (vi, &(name, cw, iw, aw)) in VARIANTS.iter().enumerate() {
        let runs: Vec<&Value> = seeds(o.seeds)
            .iter()
            .filter_map(|s| results.get(&(vi, *s)))
            .collect();
        let per_set = seed_scores(&runs, &sets);
        let secs: f64 = runs
            .iter()
            .map(|r| r["train_seconds"].as_f64().unwrap_or(0.0))
            .sum();
        total_train += secs;
        variants.push(json!({
            "variant": name, "weights": {"cosine_w": cw, "ibn_w": iw, "angle_w": aw},
            "seeds": seeds(o.seeds), "steps": runs.first().map(|r| r["steps"].clone()), "scores": per_set,
            "train_seconds": secs,
        }));
    }
    Ok(json!({
        "model": o.model, "train": o.train, "epochs": o.epochs, "max_steps": o.max_steps,
        "eval_sets": sets, "zero_shot": scores_json(&zs), "variants": variants,
        "total_train_seconds": total_train,
    }))
}

/// Per eval set (in `sets` order), the mean, min and max of the runs' Spearmans over seeds, and each seed's.
pub(crate) fn seed_scores(runs: &[&Value], sets: &[String]) -> Vec<Value> {
    sets.iter()
        .enumerate()
        .map(|(k, set)| {
            let xs: Vec<f64> = runs
                .iter()
                .map(|r| spearmans(r).get(k).map_or(f64::NAN, |x| x.1))
                .collect();
            let mean = xs.iter().sum::<f64>() / xs.len().max(1) as f64;
            let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
            let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            json!({"data": set, "mean": mean, "min": min, "max": max, "seeds": xs})
        })
        .collect()
}

/// `ablation.md`: variant × eval set, mean ± half the seed range, and the zero-shot row.
pub fn render_markdown(r: &Value) -> String {
    let sets: Vec<&str> = r["eval_sets"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut s = String::from("| variant (cosine_w / ibn_w / angle_w) |");
    for set in &sets {
        let _ = write!(s, " {set} |");
    }
    s.push_str("\n| --- |");
    for _ in &sets {
        s.push_str(" --- |");
    }
    s.push('\n');
    s.push_str("| zero-shot |");
    for (_, v) in spearmans(&json!({"scores": r["zero_shot"]})) {
        let _ = write!(s, " {v:.2} |");
    }
    s.push('\n');
    let empty = Vec::new();
    for v in r["variants"].as_array().unwrap_or(&empty) {
        let w = &v["weights"];
        let _ = write!(
            s,
            "| {} ({} / {} / {}) |",
            v["variant"].as_str().unwrap_or("?"),
            w["cosine_w"],
            w["ibn_w"],
            w["angle_w"]
        );
        for sc in v["scores"].as_array().unwrap_or(&empty) {
            let (mean, min, max) = (
                sc["mean"].as_f64().unwrap_or(f64::NAN),
                sc["min"].as_f64().unwrap_or(f64::NAN),
                sc["max"].as_f64().unwrap_or(f64::NAN),
            );
            let _ = write!(s, " {mean:.2} ± {:.2} |", (max - min) / 2.0);
        }
        s.push('\n');
    }
    let n = r["variants"][0]["seeds"].as_array().map_or(0, Vec::len);
    let steps = &r["variants"][0]["steps"];
    let _ = writeln!(
        s,
        "\nSpearman × 100 of the cosine similarity; mean over {n} seed(s) ± half the range between them; {steps} \
         steps per run; total training {:.0} s.",
        r["total_train_seconds"].as_f64().unwrap_or(0.0)
    );
    s
}

/// `ablation.svg`: one group of bars per eval set, one bar per variant (mean over seeds) with a line from the
/// lowest to the highest seed, the zero-shot score as a dashed line across each group.
pub fn render_svg(r: &Value) -> String {
    const COLORS: [&str; 6] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"];
    let empty = Vec::new();
    let variants = r["variants"].as_array().unwrap_or(&empty);
    let sets = r["eval_sets"].as_array().map_or(0, Vec::len).max(1);
    let zs: Vec<f64> = spearmans(&json!({"scores": r["zero_shot"]}))
        .iter()
        .map(|x| x.1)
        .collect();
    let (w, h, left, top, bottom) = (160.0 * sets as f64 + 260.0, 340.0, 60.0, 30.0, 50.0);
    let plot_w = 160.0 * sets as f64;
    let vals = variants
        .iter()
        .flat_map(|v| v["scores"].as_array().unwrap_or(&empty).iter())
        .flat_map(|s| [s["min"].as_f64(), s["max"].as_f64()])
        .flatten()
        .chain(zs.iter().copied())
        .filter(|v| v.is_finite());
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        (lo, hi) = (0.0, 100.0);
    }
    let pad = ((hi - lo) * 0.15).max(0.5);
    let (lo, hi) = ((lo - pad).floor(), (hi + pad / 3.0).ceil());
    let sy = |v: f64| top + (h - top - bottom) * (1.0 - (v - lo) / (hi - lo));
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="18" text-anchor="middle" font-size="13">Spearman × 100 by objective (bar: mean over seeds, line: seed range)</text>"#,
        left + plot_w / 2.0
    );
    let steps = 5;
    for k in 0..=steps {
        let v = lo + (hi - lo) * k as f64 / steps as f64;
        let y = sy(v);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{v:.1}</text>"##,
            left + plot_w,
            left - 4.0,
            y + 4.0
        );
    }
    let group_w = plot_w / sets as f64;
    let bar_w = (group_w - 30.0) / variants.len().max(1) as f64;
    for g in 0..sets {
        let gx = left + g as f64 * group_w + 15.0;
        let name = r["eval_sets"][g].as_str().unwrap_or("?");
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            gx + (group_w - 30.0) / 2.0,
            h - bottom + 16.0,
            name.replace('&', "&amp;").replace('<', "&lt;")
        );
        for (vi, v) in variants.iter().enumerate() {
            let sc = &v["scores"][g];
            let (Some(mean), Some(min), Some(max)) =
                (sc["mean"].as_f64(), sc["min"].as_f64(), sc["max"].as_f64())
            else {
                continue;
            };
            if !mean.is_finite() {
                continue;
            }
            let x = gx + vi as f64 * bar_w;
            let y = sy(mean);
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {mean:.2}</title></rect>"#,
                bar_w - 2.0,
                (sy(lo) - y).max(0.0),
                COLORS[vi % COLORS.len()],
                v["variant"].as_str().unwrap_or("?")
            );
            let cx = x + (bar_w - 2.0) / 2.0;
            let _ = writeln!(
                s,
                r##"<line x1="{cx:.1}" y1="{:.1}" x2="{cx:.1}" y2="{:.1}" stroke="#000" stroke-width="1.5"/>"##,
                sy(min),
                sy(max)
            );
        }
        if let Some(z) = zs.get(g).filter(|z| z.is_finite()) {
            let _ = writeln!(
                s,
                r##"<line x1="{gx:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#444" stroke-dasharray="4,3"/>"##,
                gx + group_w - 30.0,
                y = sy(*z)
            );
        }
    }
    let lx = left + plot_w + 20.0;
    for (vi, v) in variants.iter().enumerate() {
        let y = top + 10.0 + 18.0 * vi as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            y - 10.0,
            COLORS[vi % COLORS.len()],
            lx + 18.0,
            y,
            v["variant"].as_str().unwrap_or("?")
        );
    }
    let y = top + 10.0 + 18.0 * variants.len() as f64;
    let _ = writeln!(
        s,
        r##"<line x1="{lx:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#444" stroke-dasharray="4,3"/><text x="{:.1}" y="{y:.1}">zero-shot</text>"##,
        y - 4.0,
        lx + 12.0,
        y - 4.0,
        lx + 18.0
    );
    s.push_str("</svg>\n");
    s
}

fn usage() -> &'static str {
    "cargo xtask ablation [--output DIR] [--seeds N] [--epochs N | --max-steps N] [--eval FILE_OR_DIR]... \
     [--model DIR] [--train FILE] [-- ANGLE_TRAIN_ARGS...]\n\n\
     Trains the objective variants cosine, angle, cosine+angle, ibn, cosine+ibn, cosine+ibn+angle (1/1/0.02) with \
     the default recipe for each seed (default 2: 42, 43), scores each on STS-B test and dev and the --eval sets, \
     and writes ablation.md, ablation.json, ablation.svg into DIR (default runs/ablation). A rerun reuses the \
     finished runs. Environment: ANGLE_MODEL_DIR, ANGLE_STSB_DIR as for cargo xtask train; ANGLE_BIN: use this angle binary."
}

/// What the command line asks for, before any model or data is looked up.
#[derive(Debug, Default, PartialEq)]
struct Cli {
    help: bool,
    output: Option<PathBuf>,
    model: Option<PathBuf>,
    train: Option<PathBuf>,
    evals: Vec<PathBuf>,
    seeds: Option<u64>,
    epochs: Option<u32>,
    max_steps: Option<u64>,
    /// After `--`: passed to every `angle train` run.
    extra: Vec<String>,
}

/// Options that must not follow `--`: the ablation's own (`angle train` would get them, the ablation would not),
/// and what it sets per run (the variant's weights, the seed): passed on, they would make every variant the same
/// run, or put it where the ablation does not look.
const OWNED: &[&str] = &[
    "--output",
    "--model",
    "--train",
    "--eval",
    "--seeds",
    "--epochs",
    "--max-steps",
    "--seed",
    "--cosine-w",
    "--ibn-w",
    "--angle-w",
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
            "--train" => c.train = Some(PathBuf::from(val()?)),
            "--eval" => c.evals.push(PathBuf::from(val()?)),
            "--seeds" => c.seeds = Some(val()?.parse().context("--seeds: a number")?),
            "--epochs" => c.epochs = Some(val()?.parse().context("--epochs: a number")?),
            "--max-steps" => c.max_steps = Some(val()?.parse().context("--max-steps: a number")?),
            _ => unknown.push(a.clone()),
        }
    }
    crate::args::reject_unknown("ablation", &unknown, usage())?;
    crate::args::reject_owned(
        "ablation",
        &c.extra,
        OWNED,
        "the ablation's own options (--output, --model, --train, --eval, --seeds, --epochs, --max-steps) go \
             before `--`, e.g. `cargo xtask ablation --max-steps 3 --seeds 1 --output DIR`; --seed, --cosine-w, \
             --ibn-w and --angle-w are what each run varies",
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
    let output = cli.output.unwrap_or_else(|| root.join("runs").join("ablation"));
    let (model, train, evals, extra) = (cli.model, cli.train, cli.evals, cli.extra);
    let (seeds_n, epochs, max_steps) = (cli.seeds.unwrap_or(2), cli.epochs, cli.max_steps);
    let model = match model {
        Some(m) => m,
        None => crate::train::find_model(&root, &cache)?,
    };
    let stsb = crate::train::find_stsb(&root, &cache)?;
    let train = train.unwrap_or_else(|| stsb.join("stsb-en-train.csv"));
    let mut eval_sets = vec![stsb.join("stsb-en-test.csv"), stsb.join("stsb-en-dev.csv")];
    eval_sets.extend(evals);
    // ANGLE_BIN: an `angle` binary built already (skips the release build).
    let bin = match std::env::var_os("ANGLE_BIN") {
        Some(b) => PathBuf::from(b),
        None => crate::train::build_angle(&root)?,
    };
    let o = Options {
        bin,
        model,
        train,
        eval: eval_sets,
        output,
        seeds: seeds_n,
        epochs,
        max_steps,
        extra,
        stop_after: None,
    };
    let runs = VARIANTS.len() as u64 * seeds_n;
    let steps = max_steps.map_or(RECIPE_STEPS * epochs.unwrap_or(3) as f64 / 3.0, |s| s as f64);
    let each = RECIPE_SECONDS * steps / RECIPE_STEPS;
    println!(
        "{} variants × {seeds_n} seeds = {runs} runs of about {steps:.0} steps; at the default recipe's {RECIPE_SECONDS:.0} s \
         per {RECIPE_STEPS:.0} steps (f32, 2 cores of an Intel Xeon; another CPU takes more or less) that is about \
         {:.0} min of training plus two evaluations per run; finished runs in {} are reused",
        VARIANTS.len(),
        runs as f64 * each / 60.0,
        o.output.display()
    );
    let started = Instant::now();
    let out = run_ablation(&o)?;
    println!("\n{}", render_markdown(&out.report));
    println!(
        "{} runs trained now, {} reused; {:.0} s wall; written: {}",
        out.trained,
        out.reused,
        started.elapsed().as_secs_f64(),
        ["ablation.md", "ablation.json", "ablation.svg"]
            .map(|f| o.output.join(f).display().to_string())
            .join(", ")
    );
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    /// The issue's case: options after `--` used to start the full 12-run default into runs/ablation.
    #[test]
    fn the_ablations_own_options_after_the_double_dash_are_refused_by_name() {
        let err = parse(&v(&["--", "--max-steps", "3", "--seeds", "1", "--output", "DIR"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"--max-steps\", \"--seeds\", \"--output\""),
            "{err}"
        );
        assert!(
            err.contains("cargo xtask ablation --max-steps 3 --seeds 1 --output DIR"),
            "{err}"
        );
        let err = parse(&v(&["--", "--angle-w=0.5"])).unwrap_err().to_string();
        assert!(err.contains("\"--angle-w=0.5\""), "{err}");
    }

    #[test]
    fn options_parse_and_the_rest_after_the_double_dash_goes_to_angle_train() {
        let c = parse(&v(&[
            "--max-steps",
            "3",
            "--seeds",
            "1",
            "--output",
            "DIR",
            "--eval",
            "a.csv",
            "--",
            "--dropout",
            "false",
        ]))
        .unwrap();
        assert_eq!(
            c,
            Cli {
                output: Some(PathBuf::from("DIR")),
                evals: vec![PathBuf::from("a.csv")],
                seeds: Some(1),
                max_steps: Some(3),
                extra: v(&["--dropout", "false"]),
                ..Cli::default()
            }
        );
        let err = parse(&v(&["--max-steps", "3", "--lr", "1e-5"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"--lr\", \"1e-5\""), "{err}");
        assert!(parse(&v(&["--seeds", "0"])).is_err());
    }

    /// The debug `angle` binary: the one `cargo test --workspace` built beside this test when it is newer than
    /// every source file (a build here would differ in features and compile the workspace again), else built
    /// here (cargo's lock is free while tests run).
    pub(crate) fn angle_bin() -> PathBuf {
        let root = crate::train::workspace_root().unwrap();
        let bin = debug_dir(&root).join("angle");
        let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
        if built.is_some_and(|t| newest_source(&root) < t) {
            return bin;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .current_dir(&root)
            .args(["build", "--quiet", "-p", "angle-train", "--bin", "angle"])
            .status()
            .unwrap();
        assert!(st.success(), "building the angle binary failed");
        assert!(bin.is_file(), "{} missing", bin.display());
        bin
    }

    /// The latest modification time of the workspace's manifests and sources (`crates/*/{Cargo.toml,src/**}`).
    fn newest_source(root: &Path) -> std::time::SystemTime {
        fn walk(p: &Path, newest: &mut std::time::SystemTime) {
            let Ok(meta) = std::fs::metadata(p) else { return };
            if let Ok(t) = meta.modified() {
                *newest = (*newest).max(t);
            }
            if meta.is_dir() {
                for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                    walk(&e.path(), newest);
                }
            }
        }
        let mut newest = std::time::SystemTime::UNIX_EPOCH;
        for f in ["Cargo.toml", "Cargo.lock"] {
            walk(&root.join(f), &mut newest);
        }
        for c in std::fs::read_dir(root.join("crates")).unwrap().flatten() {
            walk(&c.path().join("Cargo.toml"), &mut newest);
            walk(&c.path().join("src"), &mut newest);
        }
        newest
    }

    fn debug_dir(root: &Path) -> PathBuf {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let target = if target.is_relative() {
            root.join(target)
        } else {
            target
        };
        target.join("debug")
    }

    /// A 2-layer hidden-32 BERT with random weights and MiniLM's tokenizer, and heads of STS-B.
    pub(crate) fn fixtures(dir: &Path) -> (PathBuf, PathBuf, Vec<PathBuf>) {
        let root = crate::train::workspace_root().unwrap();
        let shared = root.join("../shared");
        let tokenizer = shared.join("models/all-MiniLM-L6-v2/tokenizer.json");
        assert!(tokenizer.is_file(), "missing fixture {}", tokenizer.display());
        let cfg = angle_encoder::BertConfig::bert(32, 2, 2, 64, 30522, 64);
        let layout = angle_encoder::ParamLayout::new(&cfg);
        let mut params = vec![0.0f32; layout.total];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for e in &layout.entries {
            let r = e.range();
            if e.name.ends_with("LayerNorm.weight") {
                params[r].fill(1.0);
            } else if e.name.ends_with(".weight") {
                for p in &mut params[r] {
                    state ^= state >> 12;
                    state ^= state << 25;
                    state ^= state >> 27;
                    *p = ((state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32
                        - 0.5)
                        * 0.1;
                }
            }
        }
        let model = dir.join("model");
        angle_encoder::Encoder::from_params(cfg, params)
            .unwrap()
            .save_dir(&model)
            .unwrap();
        std::fs::copy(&tokenizer, model.join("tokenizer.json")).unwrap();
        let head = |split: &str, n: usize| {
            let src = shared.join(format!("data/stsb/stsb-en-{split}.csv"));
            let text = std::fs::read_to_string(&src)
                .unwrap_or_else(|e| panic!("missing fixture {}: {e}", src.display()));
            let dst = dir.join(format!("{split}.csv"));
            std::fs::write(&dst, text.lines().take(n).collect::<Vec<_>>().join("\n") + "\n").unwrap();
            dst
        };
        (model, head("train", 64), vec![head("test", 30), head("dev", 30)])
    }

    fn options(bin: &Path, dir: &Path, out: &str) -> Options {
        let (model, train, eval) = fixtures(dir);
        Options {
            bin: bin.to_path_buf(),
            model,
            train,
            eval,
            output: dir.join(out),
            seeds: 2,
            epochs: None,
            max_steps: Some(2),
            extra: vec![
                "--max-length".into(),
                "32".into(),
                "--batch-size".into(),
                "8".into(),
                "--lr".into(),
                "1e-3".into(),
            ],
            stop_after: None,
        }
    }

    #[test]
    fn tiny_ablation_writes_its_reports_and_resumes_after_an_interruption() {
        let bin = angle_bin();
        let tmp = tempfile::tempdir().unwrap();
        let full = options(&bin, tmp.path(), "full");
        let done = run_ablation(&full).unwrap();
        assert_eq!((done.trained, done.reused), (12, 0));
        let r = &done.report;
        assert_eq!(r["eval_sets"], json!(["test.csv", "dev.csv"]));
        let variants = r["variants"].as_array().unwrap();
        assert_eq!(
            variants
                .iter()
                .map(|v| v["variant"].as_str().unwrap())
                .collect::<Vec<_>>(),
            VARIANTS.iter().map(|v| v.0).collect::<Vec<_>>()
        );
        for v in variants {
            assert_eq!(v["steps"], json!(2));
            for s in v["scores"].as_array().unwrap() {
                let (mean, min, max) = (
                    s["mean"].as_f64().unwrap(),
                    s["min"].as_f64().unwrap(),
                    s["max"].as_f64().unwrap(),
                );
                assert!(
                    min <= mean && mean <= max && (-100.0..=100.0).contains(&mean),
                    "{s}"
                );
                assert_eq!(s["seeds"].as_array().unwrap().len(), 2);
            }
        }
        let md = std::fs::read_to_string(full.output.join("ablation.md")).unwrap();
        assert_eq!(md, render_markdown(r));
        assert!(
            md.contains("| zero-shot |") && md.contains("| cosine+ibn+angle (1.0 / 1.0 / 0.02) |"),
            "{md}"
        );
        assert_eq!(md.lines().filter(|l| l.starts_with("| ")).count(), 3 + 6); // header, rule, zero-shot, variants
        let json_file = read_json(&full.output.join("ablation.json")).unwrap();
        // Through the same text round trip (serde_json's float parsing is not exact without float_roundtrip).
        let r_text: serde_json::Value = serde_json::from_str(&serde_json::to_string(r).unwrap()).unwrap();
        assert_eq!(json_file, r_text);
        let svg = std::fs::read_to_string(full.output.join("ablation.svg")).unwrap();
        assert_eq!(svg.matches("<rect x=").count(), 12 + 6); // bars + legend
        // Seeds differ: the two seeds' scores are not all equal.
        let spread = variants
            .iter()
            .any(|v| v["scores"][0]["min"] != v["scores"][0]["max"]);
        assert!(spread, "two seeds gave identical scores everywhere");

        // Interrupted after 5 runs, then rerun: the 5 are reused, the rest trained, the same reports.
        let mut cut = options(&bin, tmp.path(), "cut");
        cut.stop_after = Some(5);
        let err = run_ablation(&cut).unwrap_err().to_string();
        assert!(err.contains("stopped after 5"), "{err}");
        assert!(!cut.output.join("ablation.json").exists());
        // A half-done sixth run (its training folder only) is redone.
        std::fs::create_dir_all(cut.output.join("runs/ibn-seed42/train")).unwrap();
        cut.stop_after = None;
        let resumed = run_ablation(&cut).unwrap();
        assert_eq!((resumed.trained, resumed.reused), (7, 5));
        let strip = |mut v: Value| {
            for x in v["variants"].as_array_mut().unwrap() {
                x["train_seconds"] = json!(0);
            }
            v["total_train_seconds"] = json!(0);
            v
        };
        assert_eq!(strip(resumed.report.clone()), strip(done.report.clone()));
        // A third call reuses everything; other settings into the same folder are refused.
        assert_eq!(run_ablation(&cut).unwrap().trained, 0);
        cut.max_steps = Some(3);
        let err = run_ablation(&cut).unwrap_err().to_string();
        assert!(err.contains("other settings"), "{err}");
    }
}
