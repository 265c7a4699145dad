//! `cargo xtask gpu-check`: prepares the one GPU run. The GPU machine has CUDA 13 and PyTorch
//! but no Rust and no network, and at most ~60 MB travel with the repository, so this builds
//! everything here (x86-64) into the git-ignored `.gpu/`:
//!
//! - `.gpu/bin/gpu_check`: the release build of `angle-encoder`'s `gpu_check` example (kernel
//!   checks against the CPU ops, parity, benchmark), stripped;
//! - `.gpu/data/minilm/`: all-MiniLM-L6-v2's config and weights, with the word-embedding rows
//!   that the parity batch does not use set to zero and the file gzipped (zeros compress to
//!   nothing; every row the check reads is exact);
//! - `.gpu/data/encoder-fixture.safetensors` and `.gpu/data/loss-fixture.json` (the format-A
//!   cases of the objective fixture);
//! - `.gpu/bin/angle.gz`: the `angle` CLI built with `--features cuda`, stripped and gzipped, with
//!   MiniLM's `tokenizer.json` and STS-B train/dev (`.gpu/data/stsb/`) for the end-to-end step
//!   (`angle train --device cuda`, then `angle encode` on the GPU against the CPU);
//!
//! and prints the one command to run there (`scripts/gpu/run.sh`, which also runs the PyTorch
//! baseline `scripts/gpu/torch_baseline.py` and prints the table last).
//!
//! Options: `--no-build` (reuse the binary), `--shared DIR` (default `../shared`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};

const LIMIT: u64 = 60 * 1024 * 1024;

const USAGE: &str = "cargo xtask gpu-check [--no-build] [--shared DIR]\n\n\
    Builds the GPU run's binaries and data into .gpu/ and prints the command to run on the GPU machine.\n\
    --no-build    reuse the binaries built before\n\
    --shared DIR  the shared material (default ../shared)";

/// (build, shared folder), or `None` for `--help`.
fn parse(args: &[String], mut shared: PathBuf) -> Result<Option<(bool, PathBuf)>> {
    let mut build = true;
    let mut unknown = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--no-build" => build = false,
            "--shared" => shared = PathBuf::from(it.next().context("--shared DIR")?),
            "-h" | "--help" => return Ok(None),
            _ => unknown.push(a.clone()),
        }
    }
    crate::args::reject_unknown("gpu-check", &unknown, USAGE)?;
    Ok(Some((build, shared)))
}

pub fn run(args: &[String]) -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = root.canonicalize().context("workspace root")?;
    let Some((build, shared)) = parse(args, root.join("../shared"))? else {
        println!("{USAGE}");
        return Ok(());
    };
    let gpu = root.join(".gpu");
    let (bin, data) = (gpu.join("bin"), gpu.join("data"));
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(data.join("minilm"))?;

    if build {
        println!("building the release gpu_check binary (x86-64)...");
        let status = Command::new(env!("CARGO"))
            .current_dir(&root)
            .args([
                "build",
                "--release",
                "-p",
                "angle-encoder",
                "--features",
                "cuda",
                "--example",
                "gpu_check",
            ])
            .status()
            .context("cargo build")?;
        if !status.success() {
            bail!("release build of gpu_check failed");
        }
        println!("building the release angle binary with --features cuda...");
        let status = Command::new(env!("CARGO"))
            .current_dir(&root)
            .args([
                "build",
                "--release",
                "-p",
                "angle-train",
                "--features",
                "cuda",
                "--bin",
                "angle",
            ])
            .status()
            .context("cargo build")?;
        if !status.success() {
            bail!("release build of angle --features cuda failed");
        }
    }
    let built = root.join("target/release/examples/gpu_check");
    let dst = bin.join("gpu_check");
    let _ = std::fs::remove_file(&dst);
    std::fs::copy(&built, &dst).with_context(|| format!("copy {}", built.display()))?;
    // Debug info would eat the transfer budget; the run reports errors by message, not backtrace.
    let _ = Command::new("strip").arg(&dst).status();

    // The CLI goes gzipped: the transfer budget is nearly spent on the model.
    let angle = bin.join("angle");
    let _ = std::fs::remove_file(&angle);
    let _ = std::fs::remove_file(bin.join("angle.gz"));
    std::fs::copy(root.join("target/release/angle"), &angle).context("copy target/release/angle")?;
    let _ = Command::new("strip").arg(&angle).status();
    if !Command::new("gzip").arg("-9f").arg(&angle).status()?.success() {
        bail!("gzip failed");
    }
    let stsb = data.join("stsb");
    std::fs::create_dir_all(&stsb)?;
    for f in ["stsb-en-train.csv", "stsb-en-dev.csv"] {
        let _ = std::fs::remove_file(stsb.join(f));
        std::fs::copy(shared.join("data/stsb").join(f), stsb.join(f))
            .with_context(|| format!("copy STS-B {f}"))?;
    }

    let fixture = shared.join("fixtures/encoder/minilm-mean-reference.safetensors");
    reduce_fixture(&fixture, &data.join("encoder-fixture.safetensors"))?;
    let used = fixture_ids(&fixture)?;
    let model = shared.join("models/all-MiniLM-L6-v2");
    let cfg_dst = data.join("minilm/config.json");
    let _ = std::fs::remove_file(&cfg_dst);
    std::fs::copy(model.join("config.json"), &cfg_dst)?;
    let tok_dst = data.join("minilm/tokenizer.json");
    let _ = std::fs::remove_file(&tok_dst);
    std::fs::copy(model.join("tokenizer.json"), &tok_dst)?;
    write_sparse_model(
        &model.join("model.safetensors"),
        &data.join("minilm/model.safetensors"),
        &used,
    )?;
    let _ = std::fs::remove_file(data.join("minilm/model.safetensors.gz"));
    let status = Command::new("gzip")
        .arg("-f")
        .arg(data.join("minilm/model.safetensors"))
        .status()?;
    if !status.success() {
        bail!("gzip failed");
    }
    filter_loss_fixture(
        &shared.join("fixtures/loss/angle-emb-reference.json"),
        &data.join("loss-fixture.json"),
    )?;

    let total = dir_size(&gpu)?;
    println!("\n.gpu/ holds {:.1} MiB:", total as f64 / 1048576.0);
    for p in [
        &dst,
        &bin.join("angle.gz"),
        &data.join("minilm/model.safetensors.gz"),
        &data.join("encoder-fixture.safetensors"),
        &data.join("loss-fixture.json"),
    ] {
        println!(
            "  {:>8.1} MiB  {}",
            std::fs::metadata(p)?.len() as f64 / 1048576.0,
            p.strip_prefix(&root)?.display()
        );
    }
    if total > LIMIT {
        bail!(
            "{:.1} MiB exceeds the transfer budget of {} MiB",
            total as f64 / 1048576.0,
            LIMIT >> 20
        );
    }
    println!("\nOn the GPU machine (repository root, .gpu/ carried along), run:\n");
    println!("  PYTHONUNBUFFERED=1 bash scripts/gpu/run.sh\n");
    println!(
        "(device tool: run(command=\"PYTHONUNBUFFERED=1 bash scripts/gpu/run.sh\", carry=[\".gpu\"], timeout_s=420);"
    );
    println!(" it writes gpu_check.log, torch.log, ours.json, torch.json, table.txt, device.txt to $OUT)");
    Ok(())
}

/// Copies the encoder fixture without the first layer's weight-matrix gradients (the transfer
/// budget; the last layer's and every bias and norm gradient stay).
fn reduce_fixture(src: &Path, dst: &Path) -> Result<()> {
    let bytes = std::fs::read(src).with_context(|| format!("read {}", src.display()))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)?;
    let meta = header.metadata().clone();
    let st = SafeTensors::deserialize(&bytes)?;
    let views: Vec<(String, TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| !(n.starts_with("grad.encoder.layer.0.") && n.ends_with("dense.weight")))
        .filter(|(n, _)| !(n.starts_with("grad.encoder.layer.0.") && n.ends_with("self.query.weight")))
        .filter(|(n, _)| !(n.starts_with("grad.encoder.layer.0.") && n.ends_with("self.key.weight")))
        .filter(|(n, _)| !(n.starts_with("grad.encoder.layer.0.") && n.ends_with("self.value.weight")))
        .collect();
    let _ = std::fs::remove_file(dst);
    safetensors::serialize_to_file(views, meta, dst)?;
    Ok(())
}

/// Token ids of the encoder fixture's batch (padding included).
fn fixture_ids(path: &Path) -> Result<HashSet<usize>> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)?;
    let ids = st.tensor("input_ids")?;
    if ids.dtype() != Dtype::I64 {
        bail!("{}: input_ids is {:?}, expected I64", path.display(), ids.dtype());
    }
    Ok(ids
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as usize)
        .collect())
}

/// Copies a checkpoint, zeroing the word-embedding rows not in `keep`.
fn write_sparse_model(src: &Path, dst: &Path, keep: &HashSet<usize>) -> Result<()> {
    let bytes = std::fs::read(src).with_context(|| format!("read {}", src.display()))?;
    let st = SafeTensors::deserialize(&bytes)?;
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, v) in st.tensors() {
        let mut data = v.data().to_vec();
        if name.ends_with("word_embeddings.weight") {
            if v.dtype() != Dtype::F32 || v.shape().len() != 2 {
                bail!("{name}: expected a 2-D F32 tensor");
            }
            let row = v.shape()[1] * 4;
            for (r, chunk) in data.chunks_exact_mut(row).enumerate() {
                if !keep.contains(&r) {
                    chunk.fill(0);
                }
            }
        }
        owned.push((name, v.dtype(), v.shape().to_vec(), data));
    }
    let views: Vec<(String, TensorView<'_>)> = owned
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?)))
        .collect::<Result<_>>()?;
    safetensors::serialize_to_file(views, None, dst)?;
    Ok(())
}

/// Keeps the objective fixture's format-A cases (what the GPU objective implements).
fn filter_loss_fixture(src: &Path, dst: &Path) -> Result<()> {
    let text = std::fs::read_to_string(src).with_context(|| format!("read {}", src.display()))?;
    let mut v: serde_json::Value = serde_json::from_str(&text)?;
    let keep = ["cosine", "angle", "in_batch_negative", "format_a"];
    let cases = v["cases"].as_array().context("cases")?;
    let kept: Vec<serde_json::Value> = cases
        .iter()
        .filter(|c| keep.contains(&c["objective"].as_str().unwrap_or("")))
        .filter(|c| c["y_pred"].as_array().is_some_and(|r| r.len() <= 32))
        .cloned()
        .collect();
    if kept.is_empty() {
        bail!("{}: no format-A case", src.display());
    }
    v["cases"] = serde_json::Value::Array(kept);
    std::fs::write(dst, serde_json::to_string(&v)?)?;
    Ok(())
}

fn dir_size(p: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(p)? {
        let e = e?;
        let m = e.metadata()?;
        if e.file_name() == "out" {
            continue;
        }
        total += if m.is_dir() { dir_size(&e.path())? } else { m.len() };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn options_parse_and_unknown_ones_are_named() {
        let d = PathBuf::from("d");
        assert_eq!(
            parse(&v(&["--no-build", "--shared", "s"]), d.clone()).unwrap(),
            Some((false, PathBuf::from("s")))
        );
        assert_eq!(parse(&[], d.clone()).unwrap(), Some((true, d.clone())));
        assert_eq!(parse(&v(&["--help"]), d.clone()).unwrap(), None);
        let err = parse(&v(&["--no-build", "--fast", "--steps=3"]), d)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"--fast\", \"--steps=3\""), "{err}");
    }
}
