//! `cargo xtask memory-check`: the memory estimate `angle train` prints at start-up against the peak resident
//! set of real training steps (`VmHWM`, which the run summary prints), on the bench shapes: all-MiniLM-L6-v2
//! fully fine-tuned (angle-encoder), with GradCache, and with LoRA r 32 with and without checkpointing
//! (angle-models' blocks), a Qwen3-0.6B shape with LoRA r 32 (with and without gradient
//! checkpointing) and a Qwen2.5-0.5B shape fully fine-tuned (random bf16 weights written here, as
//! `bench-decoder` writes them). Every text is long enough to be cut at `--max-length`, so every sequence
//! has the length the estimate assumes. Each run is one process (its peak is its own) of `--max-steps`
//! steps. Goal: every estimate within 15% of the measured peak. `--only Mistral` runs a Mistral-7B shape
//! (LoRA r 16, checkpointing, 4 pairs × 256; bf16 shards written tensor by tensor), left out by default.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::bench::splitmix;

/// One run: its name, the model (`minilm` or a bench shape), and the options that differ.
struct Case {
    name: &'static str,
    model: &'static str,
    args: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "MiniLM full, 32 pairs x 64",
        model: "minilm",
        args: &["--batch-size", "32", "--max-length", "64"],
    },
    Case {
        name: "MiniLM full, 256 pairs x 64, GradCache 64",
        model: "minilm",
        args: &["--batch-size", "256", "--max-length", "64", "--grad-cache", "64"],
    },
    Case {
        name: "MiniLM LoRA r32, 128 pairs x 64",
        model: "minilm",
        args: &["--batch-size", "128", "--max-length", "64", "--lora-r", "32"],
    },
    Case {
        name: "MiniLM LoRA r32, 128 pairs x 64, checkpointing",
        model: "minilm",
        args: &[
            "--batch-size",
            "128",
            "--max-length",
            "64",
            "--lora-r",
            "32",
            "--gradient-checkpointing",
        ],
    },
    Case {
        name: "Qwen3-0.6B LoRA r32, 4 pairs x 128",
        model: "qwen3-0.6b",
        args: &[
            "--batch-size",
            "4",
            "--max-length",
            "128",
            "--lora-r",
            "32",
            "--pooling",
            "last",
        ],
    },
    Case {
        name: "Qwen3-0.6B LoRA r32, 4 pairs x 128, checkpointing",
        model: "qwen3-0.6b",
        args: &[
            "--batch-size",
            "4",
            "--max-length",
            "128",
            "--lora-r",
            "32",
            "--pooling",
            "last",
            "--gradient-checkpointing",
        ],
    },
    Case {
        name: "Mistral-7B LoRA r16, 4 pairs x 256, checkpointing (--only Mistral)",
        model: "mistral-7b",
        args: &[
            "--batch-size",
            "4",
            "--max-length",
            "256",
            "--lora-r",
            "16",
            "--pooling",
            "last",
            "--gradient-checkpointing",
        ],
    },
    Case {
        name: "Qwen2.5-0.5B full, 2 pairs x 64",
        model: "qwen2.5-0.5b",
        args: &["--batch-size", "2", "--max-length", "64", "--pooling", "last"],
    },
];

fn usage() -> &'static str {
    "cargo xtask memory-check [--only SUBSTRING] [--steps 1]\n\n\
     Runs `angle train` on each bench shape (--only: the cases whose name contains SUBSTRING) and prints the\n\
     memory estimate of its start-up line beside the peak resident set of the run, and their ratio."
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let (mut only, mut steps) = (None, 1u32);
    let mut unknown = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--only" => only = Some(value()?.clone()),
            "--steps" => steps = value()?.parse()?,
            "-h" | "--help" => {
                println!("{}", usage());
                return Ok(());
            }
            _ => unknown.push(a.clone()),
        }
    }
    crate::args::reject_unknown("memory-check", &unknown, usage())?;
    let root = crate::train::workspace_root()?;
    let angle = crate::train::build_angle(&root)?;
    let minilm = root.join("../shared/models/all-MiniLM-L6-v2");
    // the random models are kept between runs (target/memory-check), the outputs are not
    let work = root.join("target").join("memory-check");
    std::fs::create_dir_all(&work)?;
    let data = work.join("pairs.csv");
    write_pairs(&data, 400)?;
    let cases: Vec<&Case> = CASES
        .iter()
        // the Mistral-7B shape (14 GB of weights, ~30 min a step on 2 cores) runs only when asked for
        .filter(|c| match only.as_deref() {
            Some(o) => c.name.contains(o),
            None => c.model != "mistral-7b",
        })
        .collect();
    if cases.is_empty() {
        bail!("--only {only:?} matches no case");
    }
    let mut rows = Vec::new();
    for c in cases {
        let model = match c.model {
            "minilm" => minilm.clone(),
            shape => {
                let dir = work.join(shape);
                if !dir.join("config.json").is_file() {
                    crate::bench_decoder::write_model(&dir, shape)?;
                    // any tokenizer whose ids the vocabulary holds: the texts only need their length
                    std::fs::copy(minilm.join("tokenizer.json"), dir.join("tokenizer.json"))?;
                }
                dir
            }
        };
        let out = work.join(format!("out-{}", rows.len()));
        let o = Command::new(&angle)
            .arg("train")
            .arg("--model")
            .arg(&model)
            .arg("--train")
            .arg(&data)
            .arg("--output")
            .arg(&out)
            .args([
                "--max-steps",
                &steps.to_string(),
                "--precision",
                "f32",
                "--progress",
                "false",
            ])
            .args(c.args)
            .output()
            .context("running angle train")?;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        if !o.status.success() {
            bail!("{}: angle train failed:\n{stderr}", c.name);
        }
        let estimate = gb_after(&stderr, "memory estimate ").context("no memory estimate printed")?;
        let peak = gb_after(&stdout, "peak resident set ").context("no peak resident set printed")?;
        println!("{}: estimate {estimate:.2} GB, peak {peak:.2} GB", c.name);
        rows.push((c.name, estimate, peak));
        std::fs::remove_dir_all(&out).ok();
    }
    println!("\n| run ({steps} step, f32) | estimate | peak RSS | estimate / peak |");
    println!("| --- | --- | --- | --- |");
    let mut worst: f64 = 0.0;
    for (name, e, p) in &rows {
        println!("| {name} | {e:.2} GB | {p:.2} GB | {:.2} |", e / p);
        worst = worst.max((e / p - 1.0).abs());
    }
    println!(
        "\nworst deviation {:.1}% (goal: within 15%); CPU: {}",
        100.0 * worst,
        cpu_description()
    );
    Ok(())
}

/// The number of GB after `key` in `text` (`key1.23 GB`).
fn gb_after(text: &str, key: &str) -> Option<f64> {
    let at = text.find(key)? + key.len();
    text[at..].split_whitespace().next()?.parse().ok()
}

/// `n` format-A rows whose texts are 600 common words each: cut at any `--max-length` up to 512.
fn write_pairs(path: &Path, n: usize) -> anyhow::Result<PathBuf> {
    const WORDS: &[&str] = &[
        "the", "man", "is", "playing", "a", "guitar", "woman", "dog", "runs", "in", "park", "child", "reads",
        "book", "car", "drives", "on", "road", "cat", "sleeps", "house", "red", "blue", "small", "large",
    ];
    let text = |row: usize, col: usize| {
        (0..600)
            .map(|i| WORDS[(splitmix((row * 2 + col) as u64, i) % WORDS.len() as u64) as usize])
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut s = String::from("text1,text2,label\n");
    for r in 0..n {
        s.push_str(&format!("{},{},{}\n", text(r, 0), text(r, 1), r % 6));
    }
    std::fs::write(path, s)?;
    Ok(path.to_path_buf())
}

/// The CPU's brand and the flags that decide its kernels.
fn cpu_description() -> String {
    let m = angle_tensor::cpu::cpu_model();
    let flags: Vec<&str> = angle_tensor::cpu::cpu_flags()
        .into_iter()
        .filter_map(|(f, on)| on.then_some(f))
        .collect();
    format!(
        "{} ({}), {} threads",
        m.brand,
        flags.join(" "),
        rayon::current_num_threads()
    )
}
