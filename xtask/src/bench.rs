//! `cargo xtask bench`: encode and train-step throughput and peak memory of a BERT-family model (default
//! all-MiniLM-L6-v2; `--model`), beside PyTorch measured in the same run (`--torch`).
//!
//! Each measurement runs in a fresh child process (this binary, `bench --child encode|train`) so that the
//! peak resident set (`VmHWM` of `/proc/self/status`) belongs to that measurement alone. The child prints one
//! `BENCH {json}` line; the parent prints the table.
//!
//! - encode: the 2,758 sentences of STS-B test, tokenisation included, batches of 64 after sorting by token
//!   length, max length 64, eval mode, mean pooling; median of `--repeat` passes after a warm-up pass.
//! - train: forward (dropout on), format-A objective (cosine 1 + in-batch 1 + angle 0.02, taus 20), backward
//!   and AdamW on 32 STS-B train pairs (64 texts, max length 64), a different batch each step; median of
//!   `--steps` steps after a warm-up step. Tokenisation happens before the steps, as in a trainer.
//!
//! - data (`--only data`, not part of the table): a generated 1,000,000-row format-A CSV (`--rows N`; pseudo-random
//!   sentences of 10–25 common English words, labels in [0, 5]) read and tokenised by `Dataset::load` with the
//!   model's tokenizer (max length 64): wall time and the load's peak resident set.
//!
//! `--torch PYTHON` (or `ANGLE_TORCH_PYTHON`) then measures PyTorch on the same machine in the same run, with
//! the same threads and data: `scripts/bench/torch_cpu_encode.py` (sorted by length as ours are, and in file
//! order for reference) and `scripts/bench/torch_cpu_train_step.py` (the same shuffled batches), each in its own
//! child process, and adds their column and the ratios to the table. Every ratio is like for like: f32 against
//! f32, our bf16 products against PyTorch's bf16 autocast, a bench process's peak memory against the same bench's.
//! Figures measured elsewhere (`../shared/reference/torch-cpu.md`) are never divided into ours: the CPU differs.
//! PyTorch's OpenMP runs with `OMP_WAIT_POLICY=PASSIVE` unless the caller sets it (see [`omp_wait_policy`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use angle_data::TextTokenizer;
use angle_encoder::{AdamW, Capacity, Encoder, Mode, Pooler, Pooling, Precision, model::Batch, profile};
use angle_loss::{AngleLoss, AngleLossConfig};
use anyhow::{Context, bail};
use ndarray::ArrayView2;
use serde_json::{Value, json};

const MAX_LEN: usize = 64;
const ENCODE_BATCH: usize = 64;
const TRAIN_PAIRS: usize = 32;

#[derive(Debug)]
struct Opts {
    model: PathBuf,
    data: PathBuf,
    threads: usize,
    steps: usize,
    repeat: usize,
    streams: usize,
    only: Option<String>,
    profile: bool,
    /// Also measure encode with bf16 products (ours on AMX; PyTorch with bf16 autocast).
    bf16: bool,
    /// Also measure encode with int8 products (ours; ONNX Runtime f32 and dynamic int8 with --torch).
    int8: bool,
    child: Option<String>,
    /// Python with torch and transformers for the same-run PyTorch baseline.
    torch: Option<PathBuf>,
    root: PathBuf,
    /// `--only data`: rows of the generated file, and the file (set by the parent for the child).
    rows: usize,
    data_file: Option<PathBuf>,
}

fn usage() -> &'static str {
    "cargo xtask bench [--threads N] [--steps N] [--repeat N] [--streams N] [--profile] [--bf16] [--int8] [--torch PYTHON] [--model DIR] [--data DIR]\n\n\
     Encode and train-step throughput of the model (default all-MiniLM-L6-v2) on STS-B with peak memory; with\n\
     --torch, beside PyTorch measured in the same run (the only PyTorch figures a ratio is taken to).\n\
     --threads  rayon threads (default: all cores, as PyTorch's 2 threads on the 2-core build machine)\n\
     --steps    timed train steps (default 10), --repeat timed encode passes (default 3)\n\
     --streams  encode batches on N independent workers, threads/N each (default 1)\n\
     --only     encode | train | data: run one measurement (no table); data: load and tokenise a generated\n\
                format-A CSV of --rows rows (default 1000000)\n\
     --profile  print the time per encoder op\n\
     --bf16     also encode and train with bf16 products (AMX tiles where the CPU has them; PyTorch: bf16 autocast)\n\
     --int8     also encode with int8 products (`--precision int8`); with --torch, ONNX Runtime f32 and dynamic\n\
                int8 (scripts/bench/ort_encode.py; the Python needs onnx and onnxruntime) beside them\n\
     --torch PYTHON  then run PyTorch's encode and train step (scripts/bench/torch_cpu_*.py) with this Python\n\
                (torch + transformers) on the same data and threads, and add a same-run PyTorch column\n\
                (OMP_WAIT_POLICY=PASSIVE unless set: spinning OpenMP threads collapse on a shared machine)\n\
     Environment: ANGLE_MODEL_DIR, ANGLE_STSB_DIR override where the model and the STS-B CSVs are found;\n\
     ANGLE_TORCH_PYTHON is --torch's default."
}

fn parse(args: &[String]) -> anyhow::Result<Opts> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent folder")?;
    let env_or = |var: &str, rel: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(rel))
    };
    let torch = std::env::var_os("ANGLE_TORCH_PYTHON")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let mut o = Opts {
        model: env_or("ANGLE_MODEL_DIR", "../shared/models/all-MiniLM-L6-v2"),
        data: env_or("ANGLE_STSB_DIR", "../shared/data/stsb"),
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        steps: 10,
        repeat: 3,
        streams: 1,
        only: None,
        profile: false,
        bf16: false,
        int8: false,
        child: None,
        torch,
        root: root.to_path_buf(),
        rows: 1_000_000,
        data_file: None,
    };
    let mut unknown = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--model" => o.model = val()?.into(),
            "--data" => o.data = val()?.into(),
            "--threads" => o.threads = val()?.parse().context("--threads")?,
            "--steps" => o.steps = val()?.parse().context("--steps")?,
            "--repeat" => o.repeat = val()?.parse().context("--repeat")?,
            "--streams" => o.streams = val()?.parse().context("--streams")?,
            "--only" => o.only = Some(val()?.clone()),
            "--child" => o.child = Some(val()?.clone()),
            "--profile" => o.profile = true,
            "--bf16" => o.bf16 = true,
            "--int8" => o.int8 = true,
            "--torch" => o.torch = Some(val()?.into()),
            "--rows" => o.rows = val()?.parse().context("--rows")?,
            "--data-file" => o.data_file = Some(val()?.into()),
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            _ => unknown.push(a.clone()),
        }
    }
    crate::args::reject_unknown("bench", &unknown, usage())?;
    if o.only
        .as_deref()
        .is_some_and(|k| !["encode", "train", "data"].contains(&k))
    {
        bail!("--only takes encode, train or data");
    }
    if o.steps == 0 || o.repeat == 0 || o.threads == 0 || o.streams == 0 {
        bail!("--steps, --repeat, --streams and --threads must be positive");
    }
    // the children get the parent's arguments (checked there) plus their own
    if o.child.is_none() {
        let unused = unused_options(o.only.as_deref(), args);
        if !unused.is_empty() {
            bail!(
                "cargo xtask bench{} does not use {}\n\n{}",
                o.only
                    .as_deref()
                    .map_or(String::new(), |k| format!(" --only {k}")),
                unused
                    .iter()
                    .map(|a| format!("{a:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                usage()
            );
        }
    }
    Ok(o)
}

/// The options given that the chosen measurement (`--only`, or the whole table) would not read.
fn unused_options<'a>(only: Option<&str>, args: &'a [String]) -> Vec<&'a str> {
    let unused: &[&str] = match only {
        Some("data") => &[
            "--steps",
            "--repeat",
            "--streams",
            "--profile",
            "--bf16",
            "--int8",
            "--torch",
            "--data-file",
        ],
        Some("encode") => &["--steps", "--rows", "--data-file"],
        Some("train") => &["--repeat", "--streams", "--int8", "--rows", "--data-file"],
        _ => &["--rows", "--data-file"],
    };
    args.iter()
        .map(String::as_str)
        .filter(|a| unused.contains(a))
        .collect()
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let o = parse(args)?;
    if let Some(kind) = &o.child {
        rayon::ThreadPoolBuilder::new()
            .num_threads(o.threads)
            .build_global()?;
        profile::enable(o.profile);
        let result = match kind.as_str() {
            "encode" => encode(&o, Precision::F32)?,
            "encode-bf16" => encode(&o, Precision::Bf16)?,
            "encode-int8" => encode(&o, Precision::Int8)?,
            "train" => train(&o, Precision::F32)?,
            "train-bf16" => train(&o, Precision::Bf16)?,
            "data" => data_child(&o)?,
            other => bail!("unknown child {other:?}"),
        };
        println!("BENCH {result}");
        return Ok(());
    }
    if o.only.as_deref() == Some("data") {
        return data_bench(&o, args);
    }

    // a Python without torch should fail now, not after minutes of our own measurements
    let torch_versions = match &o.torch {
        Some(py) => Some(check_torch(py)?),
        None => None,
    };
    let load_start = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    if o.bf16 {
        println!(
            "bf16 kernel: {} ({}); `auto` picks {}",
            angle_encoder::bf16_kernel_name(),
            if angle_encoder::bf16_is_fast() {
                "faster than f32 here"
            } else {
                "not faster than f32 here"
            },
            angle_encoder::fastest_precision().1
        );
    }
    let mut results = Vec::new();
    for kind in ["encode", "encode-bf16", "encode-int8", "train", "train-bf16"] {
        if o.only.as_deref().is_some_and(|k| !kind.starts_with(k))
            || (kind.ends_with("-bf16") && !o.bf16)
            || (kind.ends_with("-int8") && !o.int8)
        {
            continue;
        }
        eprintln!("bench: {kind} ({} threads) ...", o.threads);
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("bench").args(args).args(["--child", kind]);
        let out = cmd
            .output()
            .with_context(|| format!("running the {kind} child"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        for line in stdout.lines().filter(|l| !l.starts_with("BENCH ")) {
            println!("{line}");
        }
        results.push(child_result(&out, &format!("{kind} child"))?);
    }
    let torch = match &o.torch {
        Some(py) => Some(torch_runs(&o, py)?),
        None => None,
    };
    if o.only.is_some() {
        for r in &results {
            println!("{r}");
        }
        if let Some(t) = &torch {
            for r in [
                &t.encode,
                &t.encode_sorted,
                &t.encode_bf16,
                &t.train,
                &t.train_bf16,
            ]
            .into_iter()
            .flatten()
            {
                println!("{r}");
            }
        }
        return Ok(());
    }
    // encode, [encode-bf16], [encode-int8], train, [train-bf16]
    let mut rest = results.iter();
    let e = rest.next().context("no encode result")?;
    let eb = if o.bf16 { rest.next() } else { None };
    let ei8 = if o.int8 { rest.next() } else { None };
    let t = rest.next().context("no train result")?;
    let tb16 = if o.bf16 { rest.next() } else { None };
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    // PyTorch's same-run values (Null without --torch: those cells and ratios are not printed then)
    let nan = Value::Null;
    let (te, ts, tb, tt, ttb) = match &torch {
        Some(r) => (
            r.encode.as_ref().unwrap_or(&nan),
            r.encode_sorted.as_ref().unwrap_or(&nan),
            r.encode_bf16.as_ref().unwrap_or(&nan),
            r.train.as_ref().unwrap_or(&nan),
            r.train_bf16.as_ref().unwrap_or(&nan),
        ),
        None => (&nan, &nan, &nan, &nan, &nan),
    };
    let mb = |b: f64| format!("{:.0} MB", b / 1e6);
    let ratio = |ours: f64, theirs: f64| format!("{:.2}×", ours / theirs);
    let enc_rate = f(e, "sentences_per_s");
    let train_rate = f(t, "pairs_per_s");
    // Every ratio below divides like by like: the same work, batching and precision, both measured in this run.
    let mut rows = vec![
        Row {
            measure:
                "encode STS-B test (2,758 sentences, batch 64, max length 64, tokenisation included), f32, \
                      batches sorted by length on both sides"
                    .into(),
            torch: format!("{:.0} sentences/s", f(ts, "sentences_per_s")),
            ours: format!("{enc_rate:.0} sentences/s"),
            ratio: ratio(enc_rate, f(ts, "sentences_per_s")),
            torch_only: false,
        },
        Row {
            measure: "same, PyTorch's batches in file order (more padding; no ratio: not the same batches)"
                .into(),
            torch: format!("{:.0} sentences/s", f(te, "sentences_per_s")),
            ours: String::new(),
            ratio: String::new(),
            torch_only: true,
        },
        Row {
            measure:
                "train step (32 STS-B train pairs, max length 64, fwd + format-A loss + bwd + AdamW), f32"
                    .into(),
            torch: format!(
                "{:.1} pairs/s ({:.0} tokens/s)",
                f(tt, "pairs_per_s"),
                f(tt, "tokens_per_s")
            ),
            ours: format!("{train_rate:.1} pairs/s ({:.0} tokens/s)", f(t, "tokens_per_s")),
            ratio: ratio(train_rate, f(tt, "pairs_per_s")),
            torch_only: false,
        },
        Row {
            measure: format!(
                "f32 encode (sorted) and train step estimated from CPU time (work / (CPU seconds / threads): what {} \
                 uncontended cores would give)",
                o.threads
            ),
            torch: format!(
                "{:.0} sentences/s, {:.1} pairs/s",
                f(ts, "sentences_per_s_uncontended_estimate"),
                f(tt, "pairs_per_s_uncontended_estimate")
            ),
            ours: format!(
                "{:.0} sentences/s, {:.1} pairs/s",
                f(e, "sentences_per_s_uncontended_estimate"),
                f(t, "pairs_per_s_uncontended_estimate")
            ),
            ratio: format!(
                "{}, {}",
                ratio(
                    f(e, "sentences_per_s_uncontended_estimate"),
                    f(ts, "sentences_per_s_uncontended_estimate")
                ),
                ratio(
                    f(t, "pairs_per_s_uncontended_estimate"),
                    f(tt, "pairs_per_s_uncontended_estimate")
                )
            ),
            torch_only: false,
        },
        Row {
            measure: "f32, fastest timed pass (sorted) / step: the least disturbed by other processes".into(),
            torch: format!(
                "{:.0} sentences/s, {:.1} pairs/s",
                f(ts, "sentences") / f(ts, "seconds_min"),
                TRAIN_PAIRS as f64 / (f(tt, "step_ms_min") / 1e3)
            ),
            ours: format!(
                "{:.0} sentences/s, {:.1} pairs/s",
                f(e, "sentences") / f(e, "seconds_min"),
                TRAIN_PAIRS as f64 / f(t, "step_seconds_min")
            ),
            ratio: format!(
                "{}, {}",
                ratio(f(ts, "seconds_min"), f(e, "seconds_min")),
                ratio(f(tt, "step_ms_min") / 1e3, f(t, "step_seconds_min"))
            ),
            torch_only: false,
        },
        Row {
            measure: "peak RSS of the f32 encode process (sorted passes on both sides)".into(),
            torch: format!(
                "{} ({} before the first pass)",
                mb(f(ts, "peak_rss_bytes")),
                mb(f(ts, "rss_before_passes_bytes"))
            ),
            ours: mb(f(e, "peak_rss_bytes")),
            ratio: ratio(f(e, "peak_rss_bytes"), f(ts, "peak_rss_bytes")),
            torch_only: false,
        },
        Row {
            measure: "peak RSS of the f32 train-step process (the same bench steps on both sides)".into(),
            torch: format!(
                "{} ({} before the first step)",
                mb(f(tt, "peak_rss_bytes")),
                mb(f(tt, "rss_before_steps_bytes"))
            ),
            ours: mb(f(t, "peak_rss_bytes")),
            ratio: ratio(f(t, "peak_rss_bytes"), f(tt, "peak_rss_bytes")),
            torch_only: false,
        },
        Row {
            measure: "activations per sequence of 64 tokens (train / eval mode)".into(),
            torch: String::new(),
            ours: format!(
                "{:.2} MB / {:.2} MB",
                f(t, "activation_bytes_per_seq64") / 1e6,
                f(e, "activation_bytes_per_seq64") / 1e6
            ),
            ratio: String::new(),
            torch_only: false,
        },
    ];
    if let Some(eb) = eb {
        let rate = f(eb, "sentences_per_s");
        rows.insert(
            1,
            Row {
                measure: format!(
                    "same, bf16 products (ours: kernel {}{}, f32 sums, layer norm, softmax, GELU; PyTorch: bf16 \
                     autocast), sorted",
                    eb["bf16_kernel"].as_str().unwrap_or("?"),
                    if eb["bf16_faster_than_f32"].as_bool() == Some(true) {
                        ""
                    } else {
                        ", not faster than f32 here"
                    }
                ),
                torch: format!("{:.0} sentences/s", f(tb, "sentences_per_s")),
                ours: format!("{rate:.0} sentences/s"),
                ratio: ratio(rate, f(tb, "sentences_per_s")),
                torch_only: false,
            },
        );
    }
    if let Some(ei8) = ei8 {
        let rate = f(ei8, "sentences_per_s");
        let ort = torch.as_ref().and_then(|r| r.ort.as_ref());
        let at = rows
            .iter()
            .position(|r| r.measure.starts_with("same, PyTorch's batches"))
            .unwrap_or(1);
        let ort_f = |k: &str, field: &str| ort.map_or(f64::NAN, |v| f(&v[k], field));
        rows.insert(
            at,
            Row {
                measure: format!(
                    "same, int8 products (ours: `--precision int8`, kernel {}, weights per channel, activations per row; \
                     ONNX Runtime {}: quantize_dynamic per-channel QInt8), sorted; STS-B Spearman ours {:.2} (f32 {:.2}), \
                     ONNX Runtime {:.2} (f32 {:.2}); ours int8 / ours f32 {}",
                    ei8["int8_kernel"].as_str().unwrap_or("?"),
                    ort.and_then(|v| v["onnxruntime"].as_str()).unwrap_or("?"),
                    f(ei8, "spearman"),
                    f(e, "spearman"),
                    ort_f("int8", "spearman"),
                    ort_f("f32", "spearman"),
                    ratio(rate, enc_rate),
                ),
                torch: format!("{:.0} sentences/s", ort_f("int8", "sentences_per_s")),
                ours: format!("{rate:.0} sentences/s"),
                ratio: ratio(rate, ort_f("int8", "sentences_per_s")),
                torch_only: false,
            },
        );
        rows.insert(
            at + 1,
            Row {
                measure: "same, ONNX Runtime f32 (sorted; the f32 row above is ours against PyTorch)".into(),
                torch: format!("{:.0} sentences/s", ort_f("f32", "sentences_per_s")),
                ours: format!("{enc_rate:.0} sentences/s"),
                ratio: ratio(enc_rate, ort_f("f32", "sentences_per_s")),
                torch_only: true,
            },
        );
    }
    if let Some(t16) = tb16 {
        let rate = f(t16, "pairs_per_s");
        let at = rows
            .iter()
            .position(|r| r.measure.starts_with("train step"))
            .map_or(rows.len(), |i| i + 1);
        rows.insert(
            at,
            Row {
                measure: format!(
                    "same, bf16 products (ours: `--precision bf16`, kernel {}, all three products, bias sums and \
                     AdamW f32; PyTorch: bf16 autocast)",
                    angle_encoder::bf16_kernel_name()
                ),
                torch: format!("{:.1} pairs/s", f(ttb, "pairs_per_s")),
                ours: format!("{rate:.1} pairs/s"),
                ratio: ratio(rate, f(ttb, "pairs_per_s")),
                torch_only: false,
            },
        );
        rows.push(Row {
            measure: "peak RSS of the bf16 encode / train-step process".into(),
            torch: format!(
                "{} / {}",
                mb(f(tb, "peak_rss_bytes")),
                mb(f(ttb, "peak_rss_bytes"))
            ),
            ours: format!(
                "{} / {}",
                mb(f(eb.unwrap_or(&nan), "peak_rss_bytes")),
                mb(f(t16, "peak_rss_bytes"))
            ),
            ratio: format!(
                "{}, {}",
                ratio(f(eb.unwrap_or(&nan), "peak_rss_bytes"), f(tb, "peak_rss_bytes")),
                ratio(f(t16, "peak_rss_bytes"), f(ttb, "peak_rss_bytes"))
            ),
            torch_only: false,
        });
    }
    let model = model_name(&o.model);
    println!();
    if torch.is_some() {
        println!(
            "{model} on this machine, {} threads; PyTorch measured in this run with the same threads, data and precision",
            o.threads
        );
        println!();
        println!("| measure | PyTorch (this run) | angle (ours) | ours / PyTorch |");
        println!("| --- | --- | --- | --- |");
        for r in &rows {
            println!("| {} | {} | {} | {} |", r.measure, r.torch, r.ours, r.ratio);
        }
    } else {
        println!(
            "{model} on this machine, {} threads (no PyTorch in this run: --torch PYTHON measures it beside ours; \
             figures from other machines are no ratio to these)",
            o.threads
        );
        println!();
        println!("| measure | angle (ours) |");
        println!("| --- | --- |");
        for r in rows.iter().filter(|r| !r.torch_only) {
            println!("| {} | {} |", r.measure, r.ours);
        }
    }
    println!();
    if torch.is_some() {
        println!("load average at the start: {}", load_start.trim());
    }
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average at the end: {}", load.trim());
    }
    println!(
        "encode: {:.2} s per pass (median of {}), {} tokens; train: {:.3} s per step (median of {}, min {:.3}), {:.0} tokens per step",
        f(e, "seconds"),
        o.repeat,
        f(e, "tokens"),
        f(t, "step_seconds"),
        o.steps,
        f(t, "step_seconds_min"),
        f(t, "tokens_per_step")
    );
    if let Some(versions) = torch_versions {
        println!(
            "PyTorch ({versions}, {} threads, {} attention, OMP_WAIT_POLICY={}): encode {:.2} s per pass in file order, {:.2} s sorted \
             (medians of {} after a warm-up pass; {} and {} tokens with padding for {}); train: {:.3} s per step \
             (median of {}, min {:.3}), {:.0} tokens per step ({:.0} with padding)",
            f(tt, "threads"),
            tt["attn_implementation"].as_str().unwrap_or("?"),
            omp_wait_policy(),
            f(te, "seconds"),
            f(ts, "seconds"),
            o.repeat,
            f(te, "padded_tokens"),
            f(ts, "padded_tokens"),
            f(te, "tokens"),
            f(tt, "step_ms") / 1e3,
            o.steps,
            f(tt, "step_ms_min") / 1e3,
            f(tt, "tokens_per_step"),
            f(tt, "padded_tokens_per_step")
        );
    }
    Ok(())
}

/// One line of the table; the `torch` and `ratio` cells are printed only with `--torch`.
struct Row {
    measure: String,
    torch: String,
    ours: String,
    ratio: String,
    /// A row that only makes sense beside the same-run PyTorch numbers.
    torch_only: bool,
}

/// The model's folder name (a Hugging Face layout folder is named after the model), for the table's title.
fn model_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| dir.display().to_string())
}

/// PyTorch's same-run measurements, each `None` where `--only` left it out.
struct TorchRuns {
    encode: Option<Value>,
    encode_sorted: Option<Value>,
    /// Sorted by length, bf16 autocast (with `--bf16`).
    encode_bf16: Option<Value>,
    train: Option<Value>,
    /// bf16 autocast train step (with `--bf16`).
    train_bf16: Option<Value>,
    /// ONNX Runtime's f32 and int8 encode (with `--int8`): `{"f32": {...}, "int8": {...}, ...}`.
    ort: Option<Value>,
}

/// Checks that `python` runs and imports torch and transformers; returns their versions.
pub(crate) fn check_torch(python: &Path) -> anyhow::Result<String> {
    let out = Command::new(python)
        .args([
            "-c",
            "import torch, transformers; print(f'torch {torch.__version__}, transformers {transformers.__version__}')",
        ])
        .output()
        .with_context(|| {
            format!(
                "cannot run {} (--torch / ANGLE_TORCH_PYTHON: a Python with torch and transformers)",
                python.display()
            )
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").trim().to_string();
        bail!(
            "{} cannot import torch and transformers, which the PyTorch baseline (--torch / ANGLE_TORCH_PYTHON) needs: {last}",
            python.display()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs PyTorch's encode (file order, then sorted by length) and train step with our threads and data.
fn torch_runs(o: &Opts, python: &Path) -> anyhow::Result<TorchRuns> {
    let wants = |k: &str| o.only.as_deref().is_none_or(|only| only == k);
    let model = o.model.display().to_string();
    let (threads, repeat, steps) = (o.threads.to_string(), o.repeat.to_string(), o.steps.to_string());
    let mut runs = TorchRuns {
        encode: None,
        encode_sorted: None,
        encode_bf16: None,
        train_bf16: None,
        train: None,
        ort: None,
    };
    if wants("encode") {
        let data = o.data.join("stsb-en-test.csv").display().to_string();
        let args: &[&str] = &[
            "--model",
            &model,
            "--data",
            &data,
            "--threads",
            &threads,
            "--repeat",
            &repeat,
            "--warmup",
            "1",
            "--json",
        ];
        eprintln!("bench: PyTorch encode, batches in file order ({threads} threads) ...");
        runs.encode = Some(run_torch_script(o, python, "torch_cpu_encode.py", args)?);
        eprintln!("bench: PyTorch encode, batches sorted by length ...");
        let sorted: Vec<&str> = args.iter().copied().chain(["--sort"]).collect();
        runs.encode_sorted = Some(run_torch_script(o, python, "torch_cpu_encode.py", &sorted)?);
        if o.int8 {
            eprintln!("bench: ONNX Runtime encode, f32 and dynamic int8, sorted ...");
            let ort = [
                "--model",
                &model,
                "--data",
                &data,
                "--threads",
                &threads,
                "--repeat",
                &repeat,
                "--json",
            ];
            runs.ort = Some(run_torch_script(o, python, "ort_encode.py", &ort)?);
        }
        if o.bf16 {
            eprintln!("bench: PyTorch encode, sorted, bf16 autocast ...");
            let bf16: Vec<&str> = sorted.iter().copied().chain(["--bf16"]).collect();
            runs.encode_bf16 = Some(run_torch_script(o, python, "torch_cpu_encode.py", &bf16)?);
        }
    }
    if wants("train") {
        let data = o.data.join("stsb-en-train.csv").display().to_string();
        let args: &[&str] = &[
            "--model",
            &model,
            "--data",
            &data,
            "--threads",
            &threads,
            "--steps",
            &steps,
        ];
        eprintln!("bench: PyTorch train step ({threads} threads) ...");
        runs.train = Some(run_torch_script(o, python, "torch_cpu_train_step.py", args)?);
        if o.bf16 {
            eprintln!("bench: PyTorch train step, bf16 autocast ...");
            let bf16: Vec<&str> = args.iter().copied().chain(["--bf16"]).collect();
            runs.train_bf16 = Some(run_torch_script(o, python, "torch_cpu_train_step.py", &bf16)?);
        }
    }
    Ok(runs)
}

/// PyTorch's OpenMP threads spin at every barrier by default: when another process holds one of the two cores,
/// each parallel region then waits out a scheduler slice, and a train step took 2–3× longer (5.9–8.0 s against
/// 2.7 s with `PASSIVE`, load 4–5). rayon's workers sleep soon, so the fair baseline on a shared machine is
/// `PASSIVE`; an `OMP_WAIT_POLICY` set by the caller wins.
pub(crate) fn omp_wait_policy() -> String {
    std::env::var("OMP_WAIT_POLICY").unwrap_or_else(|_| "PASSIVE".into())
}

/// Runs `scripts/bench/<script>` in its own process (its own peak RSS); returns its last JSON line.
fn run_torch_script(o: &Opts, python: &Path, script: &str, args: &[&str]) -> anyhow::Result<Value> {
    let path = o.root.join("scripts/bench").join(script);
    let out = Command::new(python)
        .arg(&path)
        .args(args)
        .env("OMP_WAIT_POLICY", omp_wait_policy())
        .output()
        .with_context(|| format!("running {} {}", python.display(), path.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{stdout}\n{}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let json = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("{} printed no JSON line:\n{stdout}", path.display()))?;
    for line in stdout.lines().filter(|l| !l.starts_with('{')) {
        println!("{line}");
    }
    serde_json::from_str(json).with_context(|| format!("{}: its JSON line", path.display()))
}

/// Peak resident set of this process in bytes (`VmHWM`).
pub(crate) fn peak_rss() -> anyhow::Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM in /proc/self/status")?;
    let kb: f64 = line.split_whitespace().nth(1).context("VmHWM")?.parse()?;
    Ok(kb * 1024.0)
}

/// CPU seconds (user + system, all threads) this process has used: with other jobs on the machine, wall
/// time stretches but CPU time much less, so `work / (cpu_seconds / threads)` estimates the uncontended rate.
pub(crate) fn cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // fields after the command name (which may hold spaces) start at field 3; utime, stime are 14, 15
    let rest = stat.rsplit_once(')').context("/proc/self/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// STS-B CSV rows: (sentence1, sentence2, score).
fn read_stsb(path: &Path) -> anyhow::Result<Vec<(String, String, f32)>> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(path)
        .with_context(|| format!("{}", path.display()))?;
    let mut rows = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: record {}", path.display(), i + 1))?;
        let score = rec.get(2).and_then(|s| s.trim().parse().ok());
        match (rec.get(0), rec.get(1), score) {
            (Some(a), Some(b), Some(s)) => rows.push((a.to_string(), b.to_string(), s)),
            _ => bail!(
                "{}: record {} is not sentence1,sentence2,score",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(rows)
}

/// The benches' objective: format A with angle-emb's weights (cosine 1, in-batch 1, angle 0.02), taus 20, as
/// the PyTorch scripts compute it.
pub(crate) fn bench_objective() -> AngleLoss {
    AngleLoss::new(AngleLossConfig {
        cosine_w: 1.0,
        ibn_w: 1.0,
        angle_w: 0.02,
        ..Default::default()
    })
}

pub(crate) fn splitmix(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn print_profile(per: f64, what: &str) {
    let rows = profile::report();
    let total: f64 = rows.iter().map(|r| r.1).sum();
    println!(
        "{what}: encoder ops, ms per {}",
        if what == "encode" { "pass" } else { "step" }
    );
    for (name, s) in rows {
        println!(
            "  {name:<34} {:>8.1} ms  {:>5.1}%",
            s * 1e3 / per,
            100.0 * s / total
        );
    }
    println!("  {:<34} {:>8.1} ms", "total", total * 1e3 / per);
}

/// One encode worker: its own rayon pool, arena and buffers.
struct Stream {
    pool: rayon::ThreadPool,
    acts: angle_encoder::Activations,
    pooler: Pooler,
    ids: Vec<u32>,
    types: Vec<u32>,
    offs: Vec<usize>,
    pooled: Vec<f32>,
}

impl Stream {
    /// Encodes the texts `chunk` (indices into `encoded`) and writes their embeddings into `out`; returns
    /// the number of tokens.
    fn run(
        &mut self,
        enc: &Encoder,
        chunk: &[usize],
        encoded: &[angle_data::Encoded],
        out: &Mutex<Vec<f32>>,
    ) -> anyhow::Result<usize> {
        let h = enc.config.hidden_size;
        self.ids.clear();
        self.types.clear();
        self.offs.clear();
        self.offs.push(0);
        for &i in chunk {
            self.ids.extend_from_slice(&encoded[i].ids);
            self.types.extend_from_slice(&encoded[i].type_ids);
            self.offs.push(self.ids.len());
        }
        let batch = Batch {
            input_ids: &self.ids,
            token_type_ids: Some(&self.types),
            seq_offsets: &self.offs,
        };
        let (acts, pooler, pooled) = (&mut self.acts, &mut self.pooler, &mut self.pooled);
        let p = &mut pooled[..chunk.len() * h];
        self.pool.install(|| -> anyhow::Result<()> {
            let hidden = enc.forward(&batch, acts, None)?;
            pooler.forward(p, hidden, batch.seq_offsets, h)?;
            Ok(())
        })?;
        let mut out = out.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        for (k, &i) in chunk.iter().enumerate() {
            out[i * h..(i + 1) * h].copy_from_slice(&p[k * h..(k + 1) * h]);
        }
        Ok(self.ids.len())
    }
}

fn encode(o: &Opts, precision: Precision) -> anyhow::Result<Value> {
    let mut enc = Encoder::from_dir(&o.model)?;
    enc.set_inference_precision(precision)?;
    let tok = TextTokenizer::from_file(&o.model, MAX_LEN)?;
    let rows = read_stsb(&o.data.join("stsb-en-test.csv"))?;
    let texts: Vec<String> = rows.iter().flat_map(|(a, b, _)| [a.clone(), b.clone()]).collect();
    let h = enc.config.hidden_size;
    let cap = Capacity {
        max_tokens: ENCODE_BATCH * MAX_LEN,
        max_seq_len: MAX_LEN,
    };
    let per_stream = (o.threads / o.streams).max(1);
    let mut streams = (0..o.streams)
        .map(|_| -> anyhow::Result<Stream> {
            Ok(Stream {
                pool: rayon::ThreadPoolBuilder::new().num_threads(per_stream).build()?,
                acts: enc.activations(cap, Mode::Eval),
                pooler: Pooler::new(Pooling::Mean),
                ids: Vec::new(),
                types: Vec::new(),
                offs: Vec::new(),
                pooled: vec![0.0f32; ENCODE_BATCH * h],
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let out = Mutex::new(vec![0.0f32; texts.len() * h]);
    let mut times = Vec::new();
    let mut tokens = 0;
    let mut cpu0 = 0.0;
    for pass in 0..=o.repeat {
        if pass == 1 {
            profile::reset();
            cpu0 = cpu_seconds()?;
        }
        let t0 = Instant::now();
        let encoded = tok.encode_batch(&texts)?;
        // sorted by length: batches of similar lengths (even attention work, no padding anyway)
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| encoded[i].ids.len());
        let chunks: Vec<&[usize]> = order.chunks(ENCODE_BATCH).collect();
        // streams take the next batch as they finish one: longest batches last, so the tail stays short
        let next = AtomicUsize::new(0);
        let counts = std::thread::scope(|scope| {
            let handles: Vec<_> = streams
                .iter_mut()
                .map(|st| {
                    let (enc, chunks, encoded, out, next) = (&enc, &chunks, &encoded, &out, &next);
                    scope.spawn(move || -> anyhow::Result<usize> {
                        let mut n = 0;
                        loop {
                            let b = next.fetch_add(1, Ordering::Relaxed);
                            let Some(chunk) = chunks.get(b) else { return Ok(n) };
                            n += st.run(enc, chunk, encoded, out)?;
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("encode stream panicked"))
                .collect::<anyhow::Result<Vec<_>>>()
        })?;
        tokens = counts.iter().sum();
        if pass > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let cpu = (cpu_seconds()? - cpu0) / o.repeat as f64;
    let out = out.into_inner().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let acts = &streams[0].acts;
    if o.profile {
        print_profile(o.repeat as f64, "encode");
    }
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let secs = median(&mut times);
    // a sanity value: all-MiniLM-L6-v2's mean-pooled embeddings have norms of a few units
    let norm0 = out[..h].iter().map(|x| x * x).sum::<f32>().sqrt();
    // what the precision costs: STS-B test Spearman × 100 of the cosine (texts are zigzag pairs)
    let row = |i: usize| &out[i * h..(i + 1) * h];
    let cos: Vec<f64> = (0..rows.len())
        .map(|k| cosine(row(2 * k), row(2 * k + 1)))
        .collect();
    let gold: Vec<f64> = rows.iter().map(|r| r.2 as f64).collect();
    let spearman = 100.0 * angle_train::stats::spearman(&cos, &gold).unwrap_or(f64::NAN);
    Ok(json!({
        "sentences": texts.len(),
        "tokens": tokens,
        "seconds": secs,
        "seconds_min": min,
        "sentences_per_s": texts.len() as f64 / secs,
        "cpu_seconds": cpu,
        "sentences_per_s_uncontended_estimate": texts.len() as f64 / (cpu / o.threads as f64),
        "peak_rss_bytes": peak_rss()?,
        "arena_bytes_reserved": acts.bytes_reserved(),
        "activation_bytes_per_seq64": angle_encoder::Activations::bytes_per_sequence(&enc.config, MAX_LEN, Mode::Eval),
        "first_embedding_norm": norm0,
        "precision": format!("{precision:?}"),
        "bf16_faster_than_f32": angle_encoder::bf16_is_fast(),
        "bf16_kernel": angle_encoder::bf16_kernel_name(),
        "int8_kernel": angle_tensor::cpu::int8_kernel().name(),
        "spearman": spearman,
    }))
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    angle_train::stats::cosine(a, b)
}

/// Token ids, type ids, sequence offsets, labels of one zigzag batch.
type TrainBatch = (Vec<u32>, Vec<u32>, Vec<usize>, Vec<f64>);

fn train(o: &Opts, precision: Precision) -> anyhow::Result<Value> {
    let mut enc = Encoder::from_dir(&o.model)?;
    enc.set_train_precision(precision)?;
    let tok = TextTokenizer::from_file(&o.model, MAX_LEN)?;
    let mut rows = read_stsb(&o.data.join("stsb-en-train.csv"))?;
    // The file starts with short captions: shuffle (fixed seed) so batches have the data set's length mix, as
    // a trainer's shuffled epoch does.
    for i in (1..rows.len()).rev() {
        rows.swap(i, (splitmix(42, i as u64) % (i as u64 + 1)) as usize);
    }
    let steps = o.steps + 1;
    if rows.len() < steps * TRAIN_PAIRS {
        bail!(
            "{} train pairs cannot fill {steps} batches of {TRAIN_PAIRS}",
            rows.len()
        );
    }
    let h = enc.config.hidden_size;
    let loss_fn = bench_objective();
    let adamw = AdamW {
        lr: 2e-5,
        weight_decay: 0.0,
        ..Default::default()
    };
    // zigzag rows: text1, text2 of each pair
    let batches: Vec<TrainBatch> = rows[..steps * TRAIN_PAIRS]
        .chunks(TRAIN_PAIRS)
        .map(|chunk| -> anyhow::Result<_> {
            let texts: Vec<String> = chunk
                .iter()
                .flat_map(|(a, b, _)| [a.clone(), b.clone()])
                .collect();
            let enc = tok.encode_batch(&texts)?;
            let (mut ids, mut types, mut offs) = (Vec::new(), Vec::new(), vec![0]);
            for e in &enc {
                ids.extend_from_slice(&e.ids);
                types.extend_from_slice(&e.type_ids);
                offs.push(ids.len());
            }
            Ok((ids, types, offs, chunk.iter().map(|r| r.2 as f64).collect()))
        })
        .collect::<anyhow::Result<_>>()?;

    let cap = Capacity {
        max_tokens: 2 * TRAIN_PAIRS * MAX_LEN,
        max_seq_len: MAX_LEN,
    };
    let mut acts = enc.activations(cap, Mode::Train);
    enc.zero_grad();
    let mut pooler = Pooler::new(Pooling::Mean);
    let mut pooled = vec![0.0f32; 2 * TRAIN_PAIRS * h];
    let mut pooled64 = vec![0.0f64; 2 * TRAIN_PAIRS * h];
    let mut dpooled = vec![0.0f32; 2 * TRAIN_PAIRS * h];
    let mut times = Vec::new();
    let mut tokens = 0;
    let (mut t_loss, mut t_adamw, mut t_zero) = (0.0, 0.0, 0.0);
    let mut cpu0 = 0.0;
    for (step, (ids, types, offs, labels)) in batches.iter().enumerate() {
        if step == 1 {
            cpu0 = cpu_seconds()?;
            profile::reset();
            (t_loss, t_adamw, t_zero) = (0.0, 0.0, 0.0);
        }
        let t0 = Instant::now();
        let batch = Batch {
            input_ids: ids,
            token_type_ids: Some(types),
            seq_offsets: offs,
        };
        let hidden = enc.forward(&batch, &mut acts, Some(1000 + step as u64))?;
        pooler.forward(&mut pooled, hidden, offs, h)?;
        let tl = Instant::now();
        pooled64.iter_mut().zip(&pooled).for_each(|(d, &s)| *d = s as f64);
        let out = loss_fn.format_a(
            ArrayView2::from_shape((2 * TRAIN_PAIRS, h), &pooled64)?,
            labels,
            None,
        )?;
        dpooled
            .iter_mut()
            .zip(out.grad.iter())
            .for_each(|(d, &s)| *d = s as f32);
        t_loss += tl.elapsed().as_secs_f64();
        let tz = Instant::now();
        enc.buffers.zero_grad();
        t_zero += tz.elapsed().as_secs_f64();
        pooler.backward(acts.dhidden_mut(), &dpooled, offs, h)?;
        enc.backward(&mut acts)?;
        let ta = Instant::now();
        enc.adamw_step(&adamw, step as u64 + 1)?;
        t_adamw += ta.elapsed().as_secs_f64();
        if step > 0 {
            times.push(t0.elapsed().as_secs_f64());
            tokens += ids.len();
        }
        if !out.loss.is_finite() {
            bail!("step {step}: loss {}", out.loss);
        }
    }
    if o.profile {
        print_profile(o.steps as f64, "train");
        let per = |s: f64| s * 1e3 / o.steps as f64;
        println!("  {:<34} {:>8.1} ms", "loss (format A, f64)", per(t_loss));
        println!("  {:<34} {:>8.1} ms", "zero_grad", per(t_zero));
        println!("  {:<34} {:>8.1} ms", "adamw", per(t_adamw));
    }
    let cpu = (cpu_seconds()? - cpu0) / o.steps as f64;
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let step_s = median(&mut times);
    let tokens_per_step = tokens as f64 / o.steps as f64;
    Ok(json!({
        "step_seconds": step_s,
        "step_seconds_min": min,
        "pairs_per_s": TRAIN_PAIRS as f64 / step_s,
        "cpu_seconds_per_step": cpu,
        "pairs_per_s_uncontended_estimate": TRAIN_PAIRS as f64 / (cpu / o.threads as f64),
        "tokens_per_step": tokens_per_step,
        "tokens_per_s": tokens_per_step / step_s,
        "peak_rss_bytes": peak_rss()?,
        "arena_bytes_reserved": acts.bytes_reserved(),
        "activation_bytes_per_seq64": angle_encoder::Activations::bytes_per_sequence(&enc.config, MAX_LEN, Mode::Train),
    }))
}

/// Common English words for the generated sentences (WordPiece splits most into one token, as real text).
const WORDS: &str = "the of and to in a is that for it as was with be by on not he this are or his from at which \
    but have an they you were her she there been one all we their has would when if so no will more can who out \
    up said about what into than them only other new some could time these two may first then do any like my now \
    over such our man me even most made after also did many before must through back years where much your way \
    well down should because each just those people how too little state good very make world still own see men \
    work long get here between both life being under never day same another know while last might us great old \
    year off come since against go came right used take three small house water city music river garden dog cat \
    playing walking running sitting woman child children car train plane table window street morning evening \
    beautiful quickly slowly happy large green blue red white black game market school teacher student phone";

/// `--only data`: writes the file, then loads it in a child process so that the peak resident set is the load's.
fn data_bench(o: &Opts, args: &[String]) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("angle-bench-data-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("pairs.csv");
    let written = Instant::now();
    write_pairs(&file, o.rows)?;
    let bytes = std::fs::metadata(&file)?.len();
    eprintln!(
        "bench: data: wrote {} rows ({:.0} MB) in {:.1} s; loading ({} threads) ...",
        o.rows,
        bytes as f64 / 1e6,
        written.elapsed().as_secs_f64(),
        o.threads
    );
    let out = Command::new(std::env::current_exe()?)
        .arg("bench")
        .args(args)
        .args(["--child", "data", "--data-file"])
        .arg(&file)
        .output()
        .context("running the data child");
    std::fs::remove_dir_all(&dir).ok();
    let r = child_result(&out?, "data child")?;
    let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "data: {} rows ({:.0} MB CSV) -> {} distinct texts, {} tokens: loaded and tokenised in {:.1} s \
         ({:.0} rows/s, {:.1} s CPU), peak RSS {:.0} MB",
        r["rows"],
        bytes as f64 / 1e6,
        r["texts"],
        r["tokens"],
        f("seconds"),
        f("rows") / f("seconds"),
        f("cpu_seconds"),
        f("peak_rss_bytes") / 1e6
    );
    println!("{r}");
    Ok(())
}

/// A headed format-A CSV of `rows` pairs, deterministic: 10–25 words a sentence, labels in [0, 5] by tenths.
fn write_pairs(path: &Path, rows: usize) -> anyhow::Result<()> {
    use std::io::Write;
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        // SplitMix64
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(w, "text1,text2,label")?;
    let mut sentence = String::new();
    for _ in 0..rows {
        for _ in 0..2 {
            sentence.clear();
            let n = 10 + (next() % 16) as usize;
            for i in 0..n {
                if i > 0 {
                    sentence.push(' ');
                }
                sentence.push_str(words[(next() % words.len() as u64) as usize]);
            }
            sentence.push('.');
            w.write_all(sentence.as_bytes())?;
            w.write_all(b",")?;
        }
        writeln!(w, "{:.1}", (next() % 51) as f64 / 10.0)?;
    }
    w.flush()?;
    Ok(())
}

/// The child of `--only data`: `Dataset::load` of the generated file with the model's tokenizer.
fn data_child(o: &Opts) -> anyhow::Result<Value> {
    let file = o.data_file.as_ref().context("--child data needs --data-file")?;
    let tok = TextTokenizer::from_file(&o.model, MAX_LEN)?;
    let (t0, cpu0) = (Instant::now(), cpu_seconds()?);
    let data = angle_data::Dataset::load(
        file,
        &angle_data::ReadOptions::default(),
        &angle_data::Prompts::default(),
        &tok,
    )?;
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds()? - cpu0;
    Ok(json!({
        "measure": "data",
        "rows": data.len(),
        "texts": data.num_texts(),
        "tokens": data.num_tokens(),
        "truncated": data.truncated_texts(),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "threads": o.threads,
        "peak_rss_bytes": peak_rss()?,
    }))
}

/// The `BENCH {json}` line of a finished child process (`what` names it in errors, with its output).
pub(crate) fn child_result(out: &std::process::Output, what: &str) -> anyhow::Result<Value> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH "))
        .with_context(|| format!("{what} printed no BENCH line"))?;
    Ok(serde_json::from_str(line)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn options_parse() {
        let o = parse(&v(&[
            "--threads",
            "3",
            "--steps",
            "4",
            "--bf16",
            "--model",
            "/m/bge-small",
        ]))
        .unwrap();
        assert_eq!((o.threads, o.steps, o.bf16), (3, 4, true));
        assert_eq!(model_name(&o.model), "bge-small");
    }

    #[test]
    fn unknown_and_unused_arguments_are_named() {
        let err = parse(&v(&["--threads", "2", "--fast", "--max-steps", "3"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"--fast\", \"--max-steps\", \"3\""), "{err}");
        let err = parse(&v(&["--only", "encode", "--steps", "3"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--only encode does not use \"--steps\""), "{err}");
        let err = parse(&v(&["--rows", "10"])).unwrap_err().to_string();
        assert!(err.contains("\"--rows\""), "{err}");
        let err = parse(&v(&["--only", "data", "--torch", "py"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"--torch\""), "{err}");
        assert!(parse(&v(&["--only", "everything"])).is_err());
        parse(&v(&["--only", "data", "--rows", "10"])).unwrap();
        // the children get the parent's arguments and their own
        parse(&v(&["--only", "encode", "--steps", "3", "--child", "encode"])).unwrap();
    }
}
