//! `cargo xtask bench-decoder`: the decoder family's train step and encode throughput beside PyTorch + peft,
//! on random-initialised models of real shapes (no download): a Qwen3-0.6B shape with LoRA r 32 on every linear
//! layer, a Qwen2.5-0.5B shape fully fine-tuned, and eval-mode encoding of the 0.6B shape.
//!
//! The models are written once (bf16 safetensors + `config.json`) into a temporary folder that both sides load,
//! so they compute on the same weights. Every text is `--len` random token ids (no padding on either side: the
//! same work). Each measurement runs in its own child process, so its peak resident set is its own. A step is
//! forward, last-token pooling, the format-A objective (cosine 1 + in-batch 1 + angle 0.02, taus 20), backward
//! and AdamW; one warm-up step, then the median of `--steps`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use angle_decoder::{Decoder, DecoderOptions, LoraConfig, WeightDtype};
use angle_encoder::{AdamW, Pooling, Precision};
use angle_models::weights::{DEFAULT_MAX_SHARD_BYTES, TensorSpec, write_sharded};
use anyhow::{Context, bail};
use ndarray::ArrayView2;
use safetensors::tensor::Dtype;
use serde_json::{Value, json};

use crate::bench::{bench_objective, cpu_seconds, median, peak_rss, splitmix};

#[derive(Debug)]
struct Opts {
    pairs: usize,
    len: usize,
    steps: usize,
    threads: usize,
    torch: Option<PathBuf>,
    only: Option<String>,
    /// Also (the parent) or only (a child) bf16 products: ours with `Precision::Bf16`, PyTorch's autocast.
    bf16: bool,
    /// Gradient checkpointing in the train rows (ours: `Decoder::checkpointing`; PyTorch:
    /// `gradient_checkpointing_enable()`).
    checkpointing: bool,
    /// Also (the parent) or only (a child) int8 products on the frozen weights: LoRA's 8-bit base
    /// (`--load-kbit 8`) and int8 encoding; ours only (PyTorch has no CPU int8 LoRA to set beside it).
    int8: bool,
    /// child: the measurement and the model folder
    child: Option<(String, PathBuf)>,
}

fn usage() -> &'static str {
    "cargo xtask bench-decoder [--pairs 32] [--len 64] [--steps 2] [--threads N] [--only lora|full|encode] [--bf16] [--int8] [--checkpointing] [--torch PYTHON]\n\n\
     Train step of a Qwen3-0.6B shape with LoRA r 32 (all linear), of a Qwen2.5-0.5B shape fully fine-tuned, and\n\
     encode throughput of the 0.6B shape, on random weights; with --torch, the same work in PyTorch + peft\n\
     (scripts/bench/torch_cpu_decoder.py) on the same weights, threads and token ids. --bf16: every row again\n\
     with bf16 products (ours: --precision bf16 on the CPU's bf16 kernel; PyTorch: bf16 autocast, with the base\n\
     loaded in bf16 for LoRA and encoding as angle-emb loads an LLM, f32 master weights for full fine-tuning).\n\
     --int8: the LoRA and encode rows again with the frozen weights in int8 (ours: --load-kbit 8 / --precision\n\
     int8; no PyTorch column). --checkpointing: gradient checkpointing in the train rows on both sides\n\
     (PyTorch: gradient_checkpointing_enable(), non-reentrant).\n\
     Each ratio is ours / PyTorch within one row: the same work and precision, measured in this run."
}

fn parse(args: &[String]) -> anyhow::Result<Opts> {
    let mut o = Opts {
        pairs: 32,
        len: 64,
        steps: 2,
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        torch: None,
        only: None,
        bf16: false,
        checkpointing: false,
        int8: false,
        child: None,
    };
    let mut unknown = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--pairs" => o.pairs = value()?.parse()?,
            "--len" => o.len = value()?.parse()?,
            "--steps" => o.steps = value()?.parse()?,
            "--threads" => o.threads = value()?.parse()?,
            "--torch" => o.torch = Some(PathBuf::from(value()?)),
            "--only" => o.only = Some(value()?.clone()),
            "--bf16" => o.bf16 = true,
            "--checkpointing" => o.checkpointing = true,
            "--int8" => o.int8 = true,
            "--child" => {
                let kind = value()?.clone();
                o.child = Some((kind, PathBuf::from(value()?)));
            }
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            _ => unknown.push(a.clone()),
        }
    }
    crate::args::reject_unknown("bench-decoder", &unknown, usage())?;
    if o.only.as_deref().is_some_and(|k| !ROWS.iter().any(|r| r.0 == k)) {
        bail!("--only takes lora, full or encode");
    }
    if o.pairs < 2 || o.len < 2 || o.steps == 0 {
        bail!("--pairs and --len need at least 2, --steps at least 1");
    }
    Ok(o)
}

/// (measurement, model shape): the three rows of the table.
const ROWS: [(&str, &str); 3] = [
    ("lora", "qwen3-0.6b"),
    ("full", "qwen2.5-0.5b"),
    ("encode", "qwen3-0.6b"),
];

fn config(name: &str) -> Value {
    let common = json!({
        "hidden_act": "silu", "rms_norm_eps": 1e-6, "vocab_size": 151936, "rope_theta": 1000000.0,
        "tie_word_embeddings": true, "torch_dtype": "bfloat16", "bos_token_id": 151643, "attention_dropout": 0.0,
        "initializer_range": 0.02, "use_cache": false,
    });
    let shape = match name {
        "qwen3-0.6b" => json!({
            "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 1024,
            "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16,
            "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 40960, "eos_token_id": 151645,
            "attention_bias": false,
        }),
        "mistral-7b" => json!({
            "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 32768, "vocab_size": 32000,
            "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "sliding_window": 4096, "bos_token_id": 1,
            "eos_token_id": 2,
        }),
        _ => json!({
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
            "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
            "num_key_value_heads": 2, "max_position_embeddings": 32768, "eos_token_id": 151643,
            "use_sliding_window": false,
        }),
    };
    let mut v = common;
    v.as_object_mut()
        .unwrap()
        .extend(shape.as_object().unwrap().clone());
    v
}

/// The tensors of a `*ForCausalLM` checkpoint of this config (tied embeddings: no `lm_head`).
fn tensor_shapes(c: &Value) -> Vec<(String, Vec<usize>)> {
    let g = |k: &str| c[k].as_u64().unwrap() as usize;
    let (h, inter, layers, heads, kv) = (
        g("hidden_size"),
        g("intermediate_size"),
        g("num_hidden_layers"),
        g("num_attention_heads"),
        g("num_key_value_heads"),
    );
    let hd = c["head_dim"].as_u64().map_or(h / heads, |d| d as usize);
    let (qwen3, qwen2) = (c["model_type"] == "qwen3", c["model_type"] == "qwen2");
    let mut t = vec![("model.embed_tokens.weight".to_string(), vec![g("vocab_size"), h])];
    for l in 0..layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        t.push((p("input_layernorm.weight"), vec![h]));
        t.push((p("post_attention_layernorm.weight"), vec![h]));
        t.push((p("self_attn.q_proj.weight"), vec![heads * hd, h]));
        t.push((p("self_attn.k_proj.weight"), vec![kv * hd, h]));
        t.push((p("self_attn.v_proj.weight"), vec![kv * hd, h]));
        t.push((p("self_attn.o_proj.weight"), vec![h, heads * hd]));
        if qwen3 {
            t.push((p("self_attn.q_norm.weight"), vec![hd]));
            t.push((p("self_attn.k_norm.weight"), vec![hd]));
        } else if qwen2 {
            t.push((p("self_attn.q_proj.bias"), vec![heads * hd]));
            t.push((p("self_attn.k_proj.bias"), vec![kv * hd]));
            t.push((p("self_attn.v_proj.bias"), vec![kv * hd]));
        }
        t.push((p("mlp.gate_proj.weight"), vec![inter, h]));
        t.push((p("mlp.up_proj.weight"), vec![inter, h]));
        t.push((p("mlp.down_proj.weight"), vec![h, inter]));
    }
    t.push(("model.norm.weight".to_string(), vec![h]));
    t
}

/// Writes `config.json` and bf16 safetensors of random weights (norms 1, the rest uniform with the standard
/// deviation 0.02 of transformers' initialisation) into `dir`, tensor by tensor: in shards with
/// `model.safetensors.index.json` above 5 GB (a Mistral-7B shape), never more than one tensor in memory.
pub(crate) fn write_model(dir: &Path, name: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let c = config(name);
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&c)?)?;
    let shapes = tensor_shapes(&c);
    let specs: Vec<TensorSpec> = shapes
        .iter()
        .map(|(n, s)| TensorSpec {
            name: n.clone(),
            dtype: Dtype::BF16,
            shape: s.clone(),
        })
        .collect();
    let half_width = 0.02 * 3f64.sqrt();
    let mut values = Vec::new();
    write_sharded(dir, &specs, DEFAULT_MAX_SHARD_BYTES, |ti, bytes| {
        let (tname, shape) = &shapes[ti];
        let n: usize = shape.iter().product();
        let norm = tname.ends_with("norm.weight");
        values.clear();
        values.extend((0..n).map(|i| {
            if norm {
                1.0
            } else {
                let u = (splitmix(ti as u64, i as u64) >> 11) as f64 / (1u64 << 53) as f64;
                ((2.0 * u - 1.0) * half_width) as f32
            }
        }));
        WeightDtype::Bf16.encode(&values, bytes);
        Ok(())
    })?;
    Ok(())
}

/// Random token ids (the same on both sides: the torch script draws them with the same splitmix), `texts × len`.
fn token_ids(batch: usize, texts: usize, len: usize) -> Vec<u32> {
    (0..texts * len)
        .map(|i| 1 + (splitmix(1000 + batch as u64, i as u64) % 151_000) as u32)
        .collect()
}

fn labels(batch: usize, pairs: usize) -> Vec<f64> {
    (0..pairs)
        .map(|i| (splitmix(2000 + batch as u64, i as u64) % 51) as f64 / 10.0)
        .collect()
}

/// One child measurement: `lora` / `full` train steps or `encode` passes on the model in `dir`.
fn child(o: &Opts, kind: &str, dir: &Path) -> anyhow::Result<Value> {
    let lora = (kind == "lora").then(|| LoraConfig {
        r: 32,
        alpha: 32.0,
        dropout: 0.1,
        targets: vec!["all-linear".into()],
        seed: 7,
    });
    let t_load = Instant::now();
    let mut dec = Decoder::load(
        dir,
        DecoderOptions {
            lora,
            pooling: Some(Pooling::Last),
            frozen: kind == "encode",
            ..DecoderOptions::default()
        },
    )?;
    if o.int8 {
        dec.set_precision(Precision::Int8)?;
    } else if o.bf16 {
        dec.set_precision(Precision::Bf16)?;
    }
    dec.checkpointing = o.checkpointing;
    let load_s = t_load.elapsed().as_secs_f64();
    let h = dec.config.hidden_size;
    let texts = 2 * o.pairs;
    let offsets: Vec<usize> = (0..=texts).map(|i| i * o.len).collect();
    let mut pooled = vec![0.0f32; texts * h];
    let (mut times, mut cpu0) = (Vec::new(), 0.0);
    if kind == "encode" {
        for pass in 0..=o.steps {
            if pass == 1 {
                cpu0 = cpu_seconds()?;
            }
            let ids = token_ids(pass, texts, o.len);
            let t = Instant::now();
            dec.forward(&ids, &offsets, None)?;
            dec.pool(&mut pooled)?;
            if pass > 0 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
    } else {
        let loss = bench_objective();
        let adamw = AdamW {
            lr: 1e-4,
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut dpooled = vec![0.0f32; texts * h];
        let mut p64 = vec![0.0f64; texts * h];
        for step in 0..=o.steps {
            if step == 1 {
                cpu0 = cpu_seconds()?;
            }
            let ids = token_ids(step, texts, o.len);
            let t = Instant::now();
            dec.forward(&ids, &offsets, Some(step as u64))?;
            dec.pool(&mut pooled)?;
            p64.iter_mut().zip(&pooled).for_each(|(d, &x)| *d = f64::from(x));
            let out = loss.format_a(
                ArrayView2::from_shape((texts, h), &p64)?,
                &labels(step, o.pairs),
                None,
            )?;
            if !out.loss.is_finite() {
                bail!("{kind} step {step}: loss {}", out.loss);
            }
            dpooled
                .iter_mut()
                .zip(out.grad.iter())
                .for_each(|(d, &g)| *d = g as f32);
            dec.zero_grad();
            dec.backward_pooled(&dpooled)?;
            dec.adamw_step(&adamw, step as u64 + 1)?;
            if step > 0 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
    }
    let cpu = (cpu_seconds()? - cpu0) / o.steps as f64;
    let s = median(&mut times);
    Ok(json!({
        "kind": kind, "seconds": s, "texts_per_s": texts as f64 / s, "tokens_per_s": (texts * o.len) as f64 / s,
        "cpu_seconds": cpu, "peak_rss_bytes": peak_rss()?, "load_seconds": load_s,
        "trainable": dec.buffers.params.len(), "bf16": o.bf16, "int8": o.int8,
        "bf16_kernel": o.bf16.then(angle_encoder::bf16_kernel_name),
        "bf16_copy_bytes": dec.bf16_bytes(),
    }))
}

fn run_child(exe: &Path, args: &[String]) -> anyhow::Result<Value> {
    let out = Command::new(exe).args(args).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} {} failed ({}):\n{stdout}\n{}",
            exe.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("no JSON line")?;
    Ok(serde_json::from_str(line)?)
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let o = parse(args)?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(o.threads)
        .build_global()
        .ok();
    if let Some((kind, dir)) = &o.child {
        println!("{}", child(&o, kind, dir)?);
        return Ok(());
    }
    let tmp = std::env::temp_dir().join(format!("angle-bench-decoder-{}", std::process::id()));
    let result = measure(&o, &tmp);
    std::fs::remove_dir_all(&tmp).ok();
    result
}

fn measure(o: &Opts, tmp: &Path) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for (kind, model) in ROWS {
        if o.only.as_deref().is_some_and(|k| k != kind) {
            continue;
        }
        let dir = tmp.join(model);
        if !dir.join("model.safetensors").is_file() {
            let t = Instant::now();
            write_model(&dir, model)?;
            eprintln!(
                "bench-decoder: wrote random {model} in {:.1} s",
                t.elapsed().as_secs_f64()
            );
        }
        let wanted = |p: &str| match p {
            "bf16" => o.bf16,
            // full fine-tuning trains the linear weights themselves: no int8 copy of them
            "int8" => o.int8 && kind != "full",
            _ => true,
        };
        for products in ["f32", "bf16", "int8"].into_iter().filter(|p| wanted(p)) {
            let row = measure_row(o, kind, model, &dir, products)?;
            rows.push(row);
        }
    }
    print_table(o, &rows);
    Ok(())
}

type Row<'a> = (&'a str, &'a str, &'static str, Value, Option<Value>);

/// One row of the table: ours and (with --torch) PyTorch's, each in its own process.
fn measure_row<'a>(
    o: &Opts,
    kind: &'a str,
    model: &'a str,
    dir: &Path,
    precision: &'static str,
) -> anyhow::Result<Row<'a>> {
    let exe = std::env::current_exe()?;
    let root = crate::train::workspace_root()?;
    let mut common = vec![
        "--pairs".to_string(),
        o.pairs.to_string(),
        "--len".into(),
        o.len.to_string(),
        "--steps".into(),
        o.steps.to_string(),
        "--threads".into(),
        o.threads.to_string(),
    ];
    if precision != "f32" {
        common.push(format!("--{precision}"));
    }
    if o.checkpointing {
        common.push("--checkpointing".into());
    }
    eprintln!("bench-decoder: angle {kind} on {model}, {precision} ...");
    let mut args = vec!["bench-decoder".to_string()];
    args.extend(common.iter().cloned());
    args.extend(["--child".into(), kind.into(), dir.display().to_string()]);
    // a failed measurement (e.g. out of memory) is a row that says so, not the end of the table
    let ours = run_child(&exe, &args).unwrap_or_else(|e| json!({"error": e.to_string()}));
    let theirs = match o.torch.as_ref().filter(|_| precision != "int8") {
        Some(py) => {
            eprintln!("bench-decoder: PyTorch + peft {kind} on {model}, {precision} ...");
            let mut a = vec![
                root.join("scripts/bench/torch_cpu_decoder.py")
                    .display()
                    .to_string(),
                kind.to_string(),
                dir.display().to_string(),
            ];
            a.extend(common.iter().cloned());
            let mut cmd = Command::new(py);
            if std::env::var_os("OMP_WAIT_POLICY").is_none() {
                cmd.env("OMP_WAIT_POLICY", "PASSIVE");
            }
            let out = cmd.args(&a).output()?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            let line = stdout.lines().rev().find(|l| l.starts_with('{'));
            Some(match (out.status.success(), line) {
                (true, Some(l)) => serde_json::from_str::<Value>(l)?,
                _ => {
                    let err = String::from_utf8_lossy(&out.stderr);
                    let tail: String = err.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
                    json!({"error": format!("{} ({tail})", out.status)})
                }
            })
        }
        None => None,
    };
    Ok((kind, model, precision, ours, theirs))
}

fn print_table(o: &Opts, rows: &[Row<'_>]) {
    let what = |k: &str| match k {
        "lora" => "train step, LoRA r 32 all linear (frozen bf16 base)",
        "full" => "train step, full fine-tuning",
        _ => "encode (eval mode, last-token pooling)",
    };
    println!(
        "\n{} texts of {} tokens per step/pass ({} pairs), {} threads, random weights{}\n",
        2 * o.pairs,
        o.len,
        o.pairs,
        o.threads,
        if o.checkpointing {
            ", gradient checkpointing in the train steps"
        } else {
            ""
        }
    );
    println!(
        "| work | model | products | PyTorch tokens/s | angle tokens/s | ratio | PyTorch peak RSS | angle peak RSS |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (kind, model, precision, ours, theirs) in rows {
        let products = if *precision == "int8" {
            format!(
                "int8 frozen weights (ours: {}; {})",
                angle_tensor::cpu::int8_kernel().name(),
                if *kind == "lora" {
                    "--load-kbit 8"
                } else {
                    "--precision int8"
                }
            )
        } else if *precision == "bf16" {
            format!(
                "bf16 (ours: {}; PyTorch: {})",
                angle_encoder::bf16_kernel_name(),
                if *kind == "full" {
                    "f32 master weights, autocast"
                } else {
                    "base loaded in bf16, autocast"
                }
            )
        } else {
            "f32".to_string()
        };
        let f = |v: &Value, k: &str| v[k].as_f64().filter(|x| x.is_finite());
        let fmt = |x: Option<f64>, unit: &str| x.map_or("—".to_string(), |x| format!("{x:.2}{unit}"));
        let (ot, om) = (
            f(ours, "tokens_per_s"),
            f(ours, "peak_rss_bytes").map(|b| b / 1e9),
        );
        let (tt, tm) = theirs.as_ref().map_or((None, None), |t| {
            (f(t, "tokens_per_s"), f(t, "peak_rss_bytes").map(|b| b / 1e9))
        });
        let ratio = ot.zip(tt).map(|(o, t)| o / t);
        println!(
            "| {} | {model} | {products} | {} | {} | {} | {} | {} |",
            what(kind),
            fmt(tt, ""),
            fmt(ot, ""),
            fmt(ratio, "×"),
            fmt(tm, " GB"),
            fmt(om, " GB")
        );
    }
    for (kind, _, _, ours, theirs) in rows {
        println!("{kind}: angle {ours}");
        if let Some(t) = theirs {
            println!("{kind}: torch {t}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn options_parse_and_unknown_ones_are_named() {
        let o = parse(&v(&["--pairs", "8", "--only", "lora", "--bf16"])).unwrap();
        assert_eq!((o.pairs, o.only.as_deref(), o.bf16), (8, Some("lora"), true));
        let err = parse(&v(&["--pairs", "8", "--model", "x", "--fast"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"--model\", \"x\", \"--fast\""), "{err}");
        assert!(parse(&v(&["--only", "decode"])).is_err());
    }
}
