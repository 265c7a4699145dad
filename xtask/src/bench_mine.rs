//! `cargo xtask bench-mine`: the hard-negative mining core at scale, and `angle mine` beside
//! sentence-transformers' `mine_hard_negatives` on real pairs in the same run (`--torch PYTHON`).
//!
//! - search: `--queries` (default 100,000) queries against a `--corpus` (default 1,000,000) texts, every query
//!   with one positive among them; seeded random `--dim`-wide embeddings (uniform in [-1, 1)^dim, normalised; a
//!   positive is its query plus as much noise, cosine ≈ 0.7), so nothing is encoded: the time is
//!   `angle_train::mine::mine` (exact blocked top-k, the filters, the choice) on a `MineTable` of generated
//!   sentences. It runs in a child process (this binary, `bench-mine --child`), so that the peak resident set
//!   (`VmHWM`) is the mining's alone: embeddings, table and search. A few queries are checked against a brute-force
//!   ranking. Issue 22's target: 100k × 1M within 4 GB.
//! - compare (`--torch PYTHON`, a Python with torch, sentence-transformers and datasets): `angle mine --precision
//!   f32 --no-cache` and `scripts/bench/st_mine.py` on `data/stsb-retrieval` (train pairs + corpus) with the model
//!   (default all-MiniLM-L6-v2), the same threads and mining options, one after the other: wall times, and how far
//!   the mined negatives agree. PyTorch's OpenMP runs with `OMP_WAIT_POLICY=PASSIVE` unless the caller sets it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use angle_train::mine::{MineOptions, MineTable, Sampling, mine};
use anyhow::{Context, bail};
use rayon::prelude::*;
use serde_json::{Value, json};

use crate::bench::{cpu_seconds, omp_wait_policy, peak_rss};

const SEED: u64 = 22;
/// Queries of the search run whose negatives are checked against a brute-force ranking.
const CHECKED: usize = 4;

#[derive(Debug)]
struct Opts {
    queries: usize,
    corpus: usize,
    dim: usize,
    threads: usize,
    mining: MineOptions,
    only: Option<String>,
    torch: Option<PathBuf>,
    model: PathBuf,
    pairs: PathBuf,
    corpus_texts: PathBuf,
    child: bool,
    root: PathBuf,
}

fn usage() -> &'static str {
    "cargo xtask bench-mine [--queries N] [--corpus N] [--dim D] [--threads N] [--range-min N] [--range-max N]\n\
     \x20                     [--margin M] [--num-negatives N] [--torch PYTHON] [--only search|compare]\n\
     \x20                     [--model DIR] [--pairs FILE] [--corpus-texts FILE]\n\n\
     search: angle mine's core (exact blocked top-k, filters, choice) on seeded random normalised embeddings,\n\
     each query with one positive in the corpus; wall time and peak RSS of a child process.\n\
     --queries, --corpus, --dim  sizes (default 100000 queries, 1000000 corpus texts, 384)\n\
     --threads  rayon threads (default: all cores); PyTorch gets as many\n\
     --range-min, --range-max, --margin, --num-negatives  mining options (default 0, 10, none, 3; sampling top),\n\
     \x20          the same for both runs and both sides of the comparison\n\
     --torch PYTHON  then compare: angle mine --precision f32 --no-cache and sentence-transformers'\n\
     \x20          mine_hard_negatives (scripts/bench/st_mine.py; this Python needs torch, sentence-transformers,\n\
     \x20          datasets) on --pairs (default data/stsb-retrieval/train-pairs.jsonl) with --corpus-texts (default\n\
     \x20          data/stsb-retrieval/corpus.jsonl) and --model (default all-MiniLM-L6-v2): times and overlap\n\
     --only     search | compare: one of the two (compare needs --torch)\n\
     Environment: ANGLE_MODEL_DIR (--model's default), ANGLE_TORCH_PYTHON (--torch's default), ANGLE_BIN (an\n\
     angle binary built already; otherwise compare builds it with cargo build --release)."
}

fn parse(args: &[String]) -> anyhow::Result<Opts> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent folder")?
        .to_path_buf();
    let mut o = Opts {
        queries: 100_000,
        corpus: 1_000_000,
        dim: 384,
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        mining: MineOptions::default(),
        only: None,
        torch: std::env::var_os("ANGLE_TORCH_PYTHON")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
        model: std::env::var_os("ANGLE_MODEL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("../shared/models/all-MiniLM-L6-v2")),
        pairs: root.join("data/stsb-retrieval/train-pairs.jsonl"),
        corpus_texts: root.join("data/stsb-retrieval/corpus.jsonl"),
        child: false,
        root,
    };
    let mut unknown = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--queries" => o.queries = val()?.parse().context("--queries")?,
            "--corpus" => o.corpus = val()?.parse().context("--corpus")?,
            "--dim" => o.dim = val()?.parse().context("--dim")?,
            "--threads" => o.threads = val()?.parse().context("--threads")?,
            "--range-min" => o.mining.range_min = val()?.parse().context("--range-min")?,
            "--range-max" => o.mining.range_max = val()?.parse().context("--range-max")?,
            "--margin" => o.mining.margin = Some(val()?.parse().context("--margin")?),
            "--num-negatives" => o.mining.num_negatives = val()?.parse().context("--num-negatives")?,
            "--only" => o.only = Some(val()?.clone()),
            "--torch" => o.torch = Some(val()?.into()),
            "--model" => o.model = val()?.into(),
            "--pairs" => o.pairs = val()?.into(),
            "--corpus-texts" => o.corpus_texts = val()?.into(),
            "--child" => o.child = true,
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            _ => unknown.push(a.clone()),
        }
    }
    crate::args::reject_unknown("bench-mine", &unknown, usage())?;
    o.mining.sampling = Sampling::Top;
    o.mining.validate()?;
    if o.queries == 0 || o.dim == 0 || o.threads == 0 {
        bail!("--queries, --dim and --threads must be positive");
    }
    if o.corpus < o.queries {
        bail!(
            "--corpus {} is smaller than --queries {}: the corpus holds every query's positive",
            o.corpus,
            o.queries
        );
    }
    let (search_only, compare_only): (&[&str], &[&str]) = (
        &["--queries", "--corpus", "--dim"],
        &["--torch", "--model", "--pairs", "--corpus-texts"],
    );
    let unused: &[&str] = match o.only.as_deref() {
        None => &[],
        Some("search") => compare_only,
        Some("compare") if o.torch.is_none() => bail!("--only compare needs --torch PYTHON"),
        Some("compare") => search_only,
        Some(other) => bail!("--only takes search or compare, not {other:?}"),
    };
    let unused: Vec<String> = args
        .iter()
        .filter(|a| unused.contains(&a.as_str()))
        .cloned()
        .collect();
    if !unused.is_empty() {
        bail!(
            "cargo xtask bench-mine --only {} does not use {}\n\n{}",
            o.only.as_deref().unwrap_or_default(),
            unused
                .iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            usage()
        );
    }
    if o.torch.is_none() && o.only.is_none() {
        let given: Vec<&String> = args
            .iter()
            .filter(|a| compare_only.contains(&a.as_str()))
            .collect();
        if !given.is_empty() {
            bail!(
                "{given:?}: options of the comparison, which runs with --torch PYTHON\n\n{}",
                usage()
            );
        }
    }
    Ok(o)
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let o = parse(args)?;
    if o.child {
        rayon::ThreadPoolBuilder::new()
            .num_threads(o.threads)
            .build_global()?;
        println!("BENCH {}", search_child(&o)?);
        return Ok(());
    }
    let st_versions = match &o.torch {
        Some(py) if o.only.as_deref() != Some("search") => Some(check_st(py)?),
        _ => None,
    };
    let machine = machine();
    println!("{machine}");
    if o.only.as_deref() != Some("compare") {
        let r = search(&o, args)?;
        print_search(&o, &r);
    }
    if let (Some(py), Some(versions)) = (&o.torch, st_versions) {
        let (ours, theirs) = compare(&o, py)?;
        print_compare(&o, &ours, &theirs, &versions);
    }
    Ok(())
}

/// CPU model, its SIMD flags, cores and the date: where a table's numbers come from.
fn machine() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let flags = field("flags");
    let simd: Vec<&str> = flags
        .split_whitespace()
        .filter(|f| {
            ["avx", "avx2", "fma", "f16c"].contains(f) || f.starts_with("avx512") || f.starts_with("amx")
        })
        .collect();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "CPU: {} ({cpus} logical CPUs available; SIMD flags: {}); {date}; load average {}",
        field("model name"),
        simd.join(" "),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// Runs the search child and returns its measurement.
fn search(o: &Opts, args: &[String]) -> anyhow::Result<Value> {
    eprintln!(
        "bench-mine: search, {} queries × {} corpus texts, dim {}, {} threads ...",
        o.queries, o.corpus, o.dim, o.threads
    );
    let out = Command::new(std::env::current_exe()?)
        .arg("bench-mine")
        .args(args)
        .arg("--child")
        .output()
        .context("running the search child")?;
    crate::bench::child_result(&out, "the search child")
}

/// A sentence for text `i` of a kind (`q` query, `p` positive, `c` corpus): STS-B's vocabulary, unique by `i`.
fn sentence(kind: char, i: usize) -> String {
    const WHO: &[&str] = &[
        "A man",
        "A woman",
        "Two dogs",
        "A child",
        "The cat",
        "Some people",
        "A girl",
    ];
    const DOES: &[&str] = &[
        "is playing",
        "is cutting",
        "is riding",
        "is slicing",
        "is walking past",
        "is eating",
    ];
    const WHAT: &[&str] = &[
        "a guitar",
        "an onion",
        "a horse",
        "the bread",
        "a red car",
        "the grass",
        "a flute",
    ];
    let (a, b, c) = (
        i % WHO.len(),
        (i / WHO.len()) % DOES.len(),
        (i / 7 / 6) % WHAT.len(),
    );
    format!("{} {} {} ({kind}{i}).", WHO[a], DOES[b], WHAT[c])
}

/// Writes the normalised random row of table row `r` (plus that of row `plus`, for a positive) into `out`.
fn random_row(out: &mut [f32], r: u32, plus: Option<u32>) {
    let dim = out.len() as u64;
    let u = |row: u32, t: u64| angle_tensor::rng::uniform(SEED, u64::from(row) * dim + t) as f32 * 2.0 - 1.0;
    let norm = |row: u32| (0..dim).map(|t| u(row, t).powi(2)).sum::<f32>().sqrt();
    let (nr, np) = (norm(r), plus.map_or(1.0, norm));
    for (t, v) in out.iter_mut().enumerate() {
        *v = u(r, t as u64) / nr + plus.map_or(0.0, |p| u(p, t as u64) / np);
    }
    let n = out.iter().map(|v| v * v).sum::<f32>().sqrt();
    out.iter_mut().for_each(|v| *v /= n);
}

/// The child: generated texts and embeddings, then `mine` timed; its peak RSS is the whole mining's.
fn search_child(o: &Opts) -> anyhow::Result<Value> {
    let t0 = Instant::now();
    let pairs: Vec<(String, String)> = (0..o.queries)
        .into_par_iter()
        .map(|i| (sentence('q', i), sentence('p', i)))
        .collect();
    let corpus: Vec<String> = (o.queries..o.corpus)
        .into_par_iter()
        .map(|i| sentence('c', i))
        .collect();
    let table = MineTable::new(&pairs, &corpus);
    drop((pairs, corpus));
    let table_s = t0.elapsed().as_secs_f64();

    let t0 = Instant::now();
    let (queries, candidates) = (table.query_rows(), table.candidate_rows());
    // a positive's row -> its query's row: the positive is built near its query
    let mut query_of = vec![u32::MAX; table.texts.len()];
    for &(q, p) in &table.pairs {
        query_of[p as usize] = q;
    }
    let dim = o.dim;
    let mut query_emb = vec![0f32; queries.len() * dim];
    query_emb
        .par_chunks_mut(dim)
        .zip(&queries)
        .for_each(|(row, &r)| random_row(row, r, None));
    let mut doc_emb = vec![0f32; candidates.len() * dim];
    doc_emb
        .par_chunks_mut(dim)
        .zip(&candidates)
        .for_each(|(row, &r)| {
            let q = query_of[r as usize];
            random_row(row, r, (q != u32::MAX).then_some(q))
        });
    drop(query_of);
    let embed_s = t0.elapsed().as_secs_f64();
    let rss_before = peak_rss()?;

    let (t0, cpu0) = (Instant::now(), cpu_seconds()?);
    let negatives = mine(&table, &query_emb, &doc_emb, dim, &o.mining)?;
    let search_s = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds()? - cpu0;
    let peak = peak_rss()?;

    let short = negatives
        .iter()
        .filter(|n| n.len() < o.mining.num_negatives)
        .count();
    let checked = check(&table, &query_emb, &doc_emb, dim, &o.mining, &negatives)?;
    Ok(json!({
        "queries": queries.len(),
        "candidates": candidates.len(),
        "dim": dim,
        "threads": o.threads,
        "table_seconds": table_s,
        "embed_seconds": embed_s,
        "search_seconds": search_s,
        "search_cpu_seconds": cpu,
        "peak_rss_bytes": peak,
        "peak_rss_before_search_bytes": rss_before,
        "embedding_bytes": (query_emb.len() + doc_emb.len()) * 4,
        "negatives": negatives.iter().map(Vec::len).sum::<usize>(),
        "short_pairs": short,
        "checked_queries": checked,
    }))
}

/// Brute force for a few queries (without a margin: the plain ranking): the mined negatives must be the best
/// candidates that are not the query's positive, `range_min` skipped. Returns how many queries were checked.
fn check(
    table: &MineTable,
    query_emb: &[f32],
    doc_emb: &[f32],
    dim: usize,
    o: &MineOptions,
    negatives: &[Vec<u32>],
) -> anyhow::Result<usize> {
    if o.margin.is_some() {
        return Ok(0);
    }
    let candidates = table.candidate_rows();
    let n = table.pairs.len();
    for pick in 0..CHECKED.min(n) {
        // every pair's query is a distinct row here, so pair i is query i
        let i = pick * (n / CHECKED.min(n));
        let (q, p) = table.pairs[i];
        let qv = &query_emb[i * dim..(i + 1) * dim];
        let mut scored: Vec<(f32, u32)> = doc_emb
            .par_chunks(dim)
            .zip(&candidates)
            .filter(|&(_, &r)| r != p && r != q)
            .map(|(d, &r)| (qv.iter().zip(d).map(|(a, b)| a * b).sum::<f32>(), r))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let want: Vec<u32> = scored
            .iter()
            .skip(o.range_min)
            .take(o.num_negatives)
            .map(|s| s.1)
            .collect();
        if negatives[i] != want {
            bail!(
                "pair {i}: mined {:?}, brute force {want:?} (scores {:?})",
                negatives[i],
                &scored[..o.range_min + o.num_negatives]
            );
        }
    }
    Ok(CHECKED.min(n))
}

fn print_search(o: &Opts, r: &Value) {
    let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let (q, c, d, s) = (f("queries"), f("candidates"), f("dim"), f("search_seconds"));
    let gb = |b: f64| format!("{:.2} GB", b / 1e9);
    println!(
        "\n| queries × corpus, dim | threads | mining (search + filters) | CPU time | scores/s | GFLOP/s | peak RSS |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n\
         | {} × {}, {} | {} | {:.1} s | {:.1} s | {:.2e} | {:.0} | {} (target 4 GB at 100k × 1M) |",
        thousands(q as usize),
        thousands(c as usize),
        d,
        r["threads"],
        s,
        f("search_cpu_seconds"),
        q * c / s,
        2.0 * q * c * d / s / 1e9,
        gb(f("peak_rss_bytes")),
    );
    println!(
        "\nrange {}..{}, {} negatives{}, sampling top: {} negatives, {} pairs short; {} queries equal to brute force. \
         Before the search: peak RSS {} (embeddings {}); generating the table took {:.1} s, the embeddings {:.1} s.",
        o.mining.range_min,
        o.mining.range_max,
        o.mining.num_negatives,
        o.mining.margin.map_or(String::new(), |m| format!(", margin {m}")),
        r["negatives"],
        r["short_pairs"],
        r["checked_queries"],
        gb(f("peak_rss_before_search_bytes")),
        gb(f("embedding_bytes")),
        f("table_seconds"),
        f("embed_seconds"),
    );
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Checks that `python` imports what `st_mine.py` needs; returns the versions.
fn check_st(python: &Path) -> anyhow::Result<String> {
    let out = Command::new(python)
        .args([
            "-c",
            "import torch, sentence_transformers, datasets; \
             print(f'sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}')",
        ])
        .output()
        .with_context(|| format!("cannot run {} (--torch)", python.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "{} cannot import torch, sentence_transformers and datasets, which --torch needs: {}",
            python.display(),
            err.lines().last().unwrap_or("").trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs a command to its end, reading its `VmHWM` while it runs (the last read is within 50 ms of its end);
/// returns its output, wall seconds and that peak.
fn run_watched(cmd: &mut Command) -> anyhow::Result<(std::process::Output, f64, f64)> {
    let t0 = Instant::now();
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let status = format!("/proc/{}/status", child.id());
    // pipes drained on threads: a full pipe would stall the child
    let mut so = child.stdout.take().context("stdout")?;
    let mut se = child.stderr.take().context("stderr")?;
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut so, &mut b).map(|_| b)
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut se, &mut b).map(|_| b)
    });
    let mut peak = 0f64;
    let exit = loop {
        if let Some(line) = std::fs::read_to_string(&status)
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        {
            let kb: f64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            peak = peak.max(kb * 1024.0);
        }
        if let Some(exit) = child.try_wait()? {
            break exit;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let seconds = t0.elapsed().as_secs_f64();
    let out = std::process::Output {
        status: exit,
        stdout: out_t.join().map_err(|_| anyhow::anyhow!("stdout reader"))??,
        stderr: err_t.join().map_err(|_| anyhow::anyhow!("stderr reader"))??,
    };
    Ok((out, seconds, peak))
}

/// `angle mine` and `st_mine.py` on the same pairs, corpus, model, threads and options.
fn compare(o: &Opts, python: &Path) -> anyhow::Result<(Value, Value)> {
    let bin = match std::env::var_os("ANGLE_BIN") {
        Some(b) => PathBuf::from(b),
        None => crate::train::build_angle(&o.root)?,
    };
    let dir = std::env::temp_dir().join(format!("angle-bench-mine-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let output = dir.join("ours.jsonl");
    let m = &o.mining;
    let mut options = vec![
        "--range-min".to_string(),
        m.range_min.to_string(),
        "--range-max".into(),
        m.range_max.to_string(),
        "--num-negatives".into(),
        m.num_negatives.to_string(),
    ];
    if let Some(margin) = m.margin {
        options.extend(["--margin".into(), margin.to_string()]);
    }
    let threads = o.threads.to_string();
    eprintln!(
        "bench-mine: angle mine on {} ({threads} threads) ...",
        o.pairs.display()
    );
    let result = (|| {
        let (out, wall, peak) = run_watched(
            Command::new(&bin)
                .arg("mine")
                .arg("--model")
                .arg(&o.model)
                .arg("--data")
                .arg(&o.pairs)
                .arg("--corpus")
                .arg(&o.corpus_texts)
                .arg("--output")
                .arg(&output)
                .args([
                    "--overwrite",
                    "--precision",
                    "f32",
                    "--no-cache",
                    "--sampling",
                    "top",
                ])
                .args(["--threads", &threads])
                .args(&options),
        )?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "angle mine failed ({}):\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // "...; embedding 24.0 s, search 0.1 s"
        let secs = |what: &str| {
            stdout
                .split(what)
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        };
        let ours = json!({
            "wall_seconds": wall,
            "peak_rss_bytes": peak,
            "embed_seconds": secs("embedding "),
            "search_seconds": secs("search "),
            "summary": stdout.trim(),
        });
        eprintln!("bench-mine: sentence-transformers mine_hard_negatives ...");
        let script = o.root.join("scripts/bench/st_mine.py");
        let (out, _, _) = run_watched(
            Command::new(python)
                .arg(&script)
                .arg("--model")
                .arg(&o.model)
                .arg("--data")
                .arg(&o.pairs)
                .arg("--corpus")
                .arg(&o.corpus_texts)
                .arg("--ours")
                .arg(&output)
                .args(["--threads", &threads, "--explain", "3", "--json"])
                .args(&options)
                .env("OMP_WAIT_POLICY", omp_wait_policy()),
        )?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!(
                "{} failed ({}):\n{stdout}\n{stderr}",
                script.display(),
                out.status
            );
        }
        // the differing queries it explains, without the progress bars
        for line in stderr
            .lines()
            .filter(|l| l.starts_with("query ") || l.starts_with("  "))
        {
            println!("{line}");
        }
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .with_context(|| format!("{} printed no JSON line:\n{stdout}", script.display()))?;
        Ok((ours, serde_json::from_str(line)?))
    })();
    std::fs::remove_dir_all(&dir).ok();
    result
}

fn print_compare(o: &Opts, ours: &Value, theirs: &Value, versions: &str) {
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let n = |v: &Value, k: &str| v[k].as_u64().map_or("?".into(), |x| thousands(x as usize));
    let m = &o.mining;
    println!(
        "\n{}: {} pairs ({} distinct queries) + {} corpus texts ({}), {}, {} threads; range {}..{}, {} negatives{}, \
         sampling top, exact search, f32; {versions}\n",
        o.pairs.display(),
        n(theirs, "pairs"),
        n(theirs, "queries"),
        n(theirs, "corpus"),
        o.corpus_texts.display(),
        o.model
            .file_name()
            .map_or(String::new(), |s| s.to_string_lossy().into_owned()),
        o.threads,
        m.range_min,
        m.range_max,
        m.num_negatives,
        m.margin.map_or(String::new(), |x| format!(", margin {x}")),
    );
    let pct = |k: &str| format!("{:.2}%", 100.0 * f(theirs, k));
    println!(
        "| | angle mine | sentence-transformers |\n| --- | --- | --- |\n\
         | process wall time: start, imports, model load, embedding, search (ours: and output) | {:.1} s | {:.1} s |\n\
         | embedding + search | {:.1} s + {:.1} s | {:.1} s (mine_hard_negatives: embedding, search, filters) |\n\
         | peak RSS | {:.0} MB | {:.0} MB |\n\
         | negatives (distinct query, negative) | {} | {} |\n\
         | (query, negative) pairs in common | {} ({} of ours, {} of theirs) | |\n\
         | queries with identical negative lists (same order) | {} of {} ({}) | |",
        f(ours, "wall_seconds"),
        f(theirs, "process_seconds"),
        f(ours, "embed_seconds"),
        f(ours, "search_seconds"),
        f(theirs, "mine_seconds"),
        f(ours, "peak_rss_bytes") / 1e6,
        f(theirs, "peak_rss_bytes") / 1e6,
        n(theirs, "ours_negatives"),
        n(theirs, "negatives"),
        n(theirs, "common_pairs"),
        pct("pairs_in_common_of_ours"),
        pct("pairs_in_common_of_theirs"),
        n(theirs, "identical_lists"),
        n(theirs, "compared_queries"),
        pct("identical_share"),
    );
    // its summary line without the (deleted) output path
    let summary = ours["summary"].as_str().unwrap_or("");
    println!(
        "\nangle mine: {}",
        summary.split_once(": ").map_or(summary, |s| s.1)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn options_parse_and_unknown_or_unused_ones_are_named() {
        let o = parse(&v(&[
            "--queries",
            "10",
            "--corpus",
            "50",
            "--dim",
            "8",
            "--margin",
            "0.1",
        ]))
        .unwrap();
        assert_eq!(
            (o.queries, o.corpus, o.dim, o.mining.margin),
            (10, 50, 8, Some(0.1))
        );
        let err = parse(&v(&["--queries", "10", "--fast"])).unwrap_err().to_string();
        assert!(err.contains("\"--fast\""), "{err}");
        let err = parse(&v(&["--only", "search", "--torch", "py"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not use \"--torch\""), "{err}");
        let err = parse(&v(&["--only", "compare", "--torch", "py", "--dim", "8"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not use \"--dim\""), "{err}");
        let err = parse(&v(&["--model", "m"])).unwrap_err().to_string();
        assert!(err.contains("--torch"), "{err}");
        assert!(parse(&v(&["--queries", "10", "--corpus", "5"])).is_err());
        assert!(parse(&v(&["--range-min", "10"])).is_err());
    }

    #[test]
    fn numbers_and_sentences() {
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(999), "999");
        assert_ne!(sentence('c', 1), sentence('c', 2));
        let mut row = vec![0f32; 16];
        random_row(&mut row, 3, Some(4));
        assert!((row.iter().map(|v| v * v).sum::<f32>() - 1.0).abs() < 1e-5);
    }
}
