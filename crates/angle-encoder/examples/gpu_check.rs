//! The one GPU run (built by `cargo xtask gpu-check`, run on the GPU machine, which has no Rust):
//! 1. every CUDA kernel against its CPU op (fresh random inputs, poisoned outputs);
//! 2. the AnglE objective kernel against the angle-emb fixture, and the encoder on the GPU
//!    against the CPU encoder and the PyTorch float64 fixture (same weights);
//! 3. a training-step benchmark (BERT-base and MiniLM shapes, 64 x 128 tokens, AnglE loss, AdamW)
//!    in f32 (TF32 products) and bf16 mixed precision; results as JSON for the summary table.
//!
//! Usage: gpu_check [--data DIR] [--out DIR] [--steps N] [--only kernels,loss,parity,bench]
//! DIR holds minilm/ (config.json, model.safetensors), encoder-fixture.safetensors, loss-fixture.json.

#[cfg(not(feature = "cuda"))]
fn main() {
    eprintln!(
        "gpu_check needs the `cuda` feature: cargo run -p angle-encoder --features cuda --example gpu_check"
    );
    std::process::exit(2);
}

#[cfg(feature = "cuda")]
fn main() {
    match run::main() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("gpu_check: error: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(feature = "cuda")]
mod run {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::time::Instant;

    use angle_encoder::gpu::{GpuCapacity, GpuEncoder};
    use angle_encoder::{AdamW, Batch, BertConfig, Capacity, Encoder, Mode, Pooler, Pooling};
    use angle_tensor::cuda::check::{Elem, rel_err};
    use angle_tensor::cuda::{self as k, Gpu, GpuError};
    use safetensors::SafeTensors;
    use safetensors::tensor::Dtype;

    type Res<T> = Result<T, Box<dyn std::error::Error>>;

    struct Args {
        data: PathBuf,
        out: PathBuf,
        steps: usize,
        only: Option<String>,
        host_smoke: bool,
    }

    fn args() -> Res<Args> {
        let mut a = Args {
            data: PathBuf::from(".gpu/data"),
            out: PathBuf::from(std::env::var("OUT").unwrap_or_else(|_| ".gpu/out".into())),
            steps: 10,
            only: None,
            host_smoke: false,
        };
        let mut it = std::env::args().skip(1);
        while let Some(x) = it.next() {
            match x.as_str() {
                "--data" => a.data = it.next().ok_or("--data DIR")?.into(),
                "--out" => a.out = it.next().ok_or("--out DIR")?.into(),
                "--steps" => a.steps = it.next().ok_or("--steps N")?.parse()?,
                "--host-smoke" => a.host_smoke = true,
                "--only" => a.only = Some(it.next().ok_or("--only kernels,loss,parity,bench")?),
                other => return Err(format!("unknown argument {other}").into()),
            }
        }
        Ok(a)
    }

    /// Counts results; prints each line.
    #[derive(Default)]
    struct Tally {
        pass: usize,
        fail: usize,
    }
    impl Tally {
        fn check(&mut self, name: &str, err: f64, tol: f64) {
            let ok = err.is_finite() && err <= tol;
            if ok {
                self.pass += 1;
            } else {
                self.fail += 1;
            }
            println!(
                "{:<4} {name:<60} err {err:.3e} (threshold {tol:.0e})",
                if ok { "ok" } else { "FAIL" }
            );
        }
    }

    pub fn main() -> Res<i32> {
        let a = args()?;
        std::fs::create_dir_all(&a.out)?;
        let gpu = match Gpu::new(0) {
            Ok(g) => g,
            Err(GpuError::Unavailable { reason }) => {
                println!("skipped: no CUDA device ({reason})");
                if a.host_smoke {
                    host_smoke(&a.data)?;
                }
                return Ok(0);
            }
            Err(e) => return Err(e.into()),
        };
        println!("device: {}", gpu.describe());
        let mut tally = Tally::default();
        let want = |s: &str| a.only.as_deref().is_none_or(|o| o.split(',').any(|x| x == s));

        if want("kernels") {
            println!("\n== 1. kernels vs CPU ops");
            let t0 = Instant::now();
            for r in k::check::run_kernel_checks(&gpu)? {
                tally.check(&r.name, r.rel_err, r.threshold);
            }
            println!(
                "(kernel checks: {:.1} s, NVRTC compiles included)",
                t0.elapsed().as_secs_f64()
            );
        }
        if want("loss") {
            println!("\n== 2a. AnglE objective kernel vs angle-emb 0.6.1 (float64 fixture)");
            loss_fixture(&gpu, &a.data.join("loss-fixture.json"), &mut tally)?;
        }
        drop(gpu);

        if want("parity") {
            println!("\n== 2b. encoder on the GPU vs CPU encoder and PyTorch float64 fixture");
            encoder_parity::<f32>(&a.data, &mut tally, "f32")?;
            encoder_parity::<half::bf16>(&a.data, &mut tally, "bf16")?;
        }

        if want("bench") {
            println!("\n== 3. training-step benchmark (64 x 128 tokens, AnglE format A, AdamW)");
            let base = BertConfig::bert(768, 12, 12, 3072, 30522, 512);
            let mini = BertConfig::from_file(a.data.join("minilm/config.json"))?;
            let mut bench = Vec::new();
            for (name, cfg) in [("bert-base", &base), ("minilm-l6", &mini)] {
                let params = random_params(cfg);
                for prec in ["bf16", "tf32"] {
                    let r = if prec == "bf16" {
                        bench_one::<half::bf16>(name, cfg, &params, prec, a.steps)
                    } else {
                        bench_one::<f32>(name, cfg, &params, prec, a.steps)
                    };
                    match r {
                        Ok(v) => bench.push(v),
                        Err(e) => {
                            println!("FAIL bench {name} {prec}: {e}");
                            tally.fail += 1;
                        }
                    }
                }
            }
            let json = serde_json::Value::Array(bench);
            std::fs::write(a.out.join("ours.json"), serde_json::to_string_pretty(&json)?)?;
        }
        println!("\nchecks: {} passed, {} failed", tally.pass, tally.fail);
        Ok(if tally.fail == 0 { 0 } else { 1 })
    }

    /// Without a GPU: checks that the packaged data loads and that the CPU encoder on the
    /// packaged (sparse) model reproduces the fixture, so the GPU run's inputs are sound.
    fn host_smoke(data: &Path) -> Res<()> {
        let fx = load_fixture(&data.join("encoder-fixture.safetensors"))?;
        let enc = Encoder::from_dir(data.join("minilm"))?;
        let h = enc.config.hidden_size;
        let n = fx.ids.len();
        let maxlen = fx.offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(1);
        let mut acts = enc.activations(
            Capacity {
                max_tokens: n,
                max_seq_len: maxlen,
            },
            Mode::Eval,
        );
        let batch = Batch {
            input_ids: &fx.ids,
            token_type_ids: Some(&fx.types),
            seq_offsets: &fx.offsets,
        };
        let hidden = enc.forward(&batch, &mut acts, None)?.to_vec();
        let mut pooled = vec![0.0f32; (fx.offsets.len() - 1) * h];
        Pooler::new(Pooling::Mean).forward(&mut pooled, &hidden, &fx.offsets, h)?;
        let err = rel_err(&pooled, &f32s(&fx.tensors["pooled"].1));
        println!("host smoke: CPU encoder on the packaged model vs fixture pooled: rel err {err:.2e}");
        let text = std::fs::read_to_string(data.join("loss-fixture.json"))?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        println!(
            "host smoke: {} objective cases",
            v["cases"].as_array().map_or(0, |c| c.len())
        );
        let p = random_params(&BertConfig::bert(768, 12, 12, 3072, 30522, 512));
        let ms = (p.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / p.len() as f64).sqrt();
        println!(
            "host smoke: random BERT-base params: {} values, rms {ms:.4}",
            p.len()
        );
        if err > 1e-4 {
            return Err("packaged model does not reproduce the fixture".into());
        }
        Ok(())
    }

    fn loss_fixture(gpu: &Gpu, path: &Path, tally: &mut Tally) -> Res<()> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let cases = v["cases"].as_array().ok_or("loss fixture: no cases")?;
        let mut done = 0;
        for (ci, c) in cases.iter().enumerate() {
            let obj = c["objective"].as_str().unwrap_or("");
            let p = &c["params"];
            let f = |key: &str, d: f64| p[key].as_f64().unwrap_or(d) as f32;
            let labels: Vec<f32> = c["labels"]
                .as_array()
                .ok_or("labels")?
                .iter()
                .map(|x| x.as_f64().unwrap_or(0.0) as f32)
                .collect();
            let rows = c["y_pred"].as_array().ok_or("y_pred")?;
            let d = rows.first().and_then(|r| r.as_array()).map_or(0, |r| r.len());
            let y: Vec<f32> = rows
                .iter()
                .flat_map(|r| {
                    r.as_array()
                        .into_iter()
                        .flatten()
                        .map(|x| x.as_f64().unwrap_or(0.0) as f32)
                })
                .collect();
            let grad: Vec<f32> = c["grad"]
                .as_array()
                .ok_or("grad")?
                .iter()
                .flat_map(|r| {
                    r.as_array()
                        .into_iter()
                        .flatten()
                        .map(|x| x.as_f64().unwrap_or(0.0) as f32)
                })
                .collect();
            let want = c["loss"].as_f64().unwrap_or(f64::NAN);
            let pairs = labels.len();
            if pairs == 0 || rows.len() != 2 * pairs {
                continue;
            }
            let mut o = k::AngleObjective::new(gpu, pairs)?;
            let (mut cw, mut aw, mut iw) = (0.0, 0.0, 0.0);
            match obj {
                "cosine" => {
                    cw = 1.0;
                    o.cosine_tau = f("tau", 20.0);
                }
                "angle" => {
                    aw = 1.0;
                    o.angle_tau = f("tau", 20.0);
                    o.angle_mean = p["pooling"].as_str() == Some("mean");
                }
                "in_batch_negative" => {
                    iw = 1.0;
                    o.ibn_tau = f("tau", 20.0);
                }
                "format_a" => {
                    cw = f("cosine_w", 1.0);
                    aw = f("angle_w", 0.02);
                    iw = f("ibn_w", 1.0);
                    o.cosine_tau = f("cosine_tau", 20.0);
                    o.angle_tau = f("angle_tau", 20.0);
                    o.ibn_tau = f("ibn_tau", 20.0);
                    o.angle_mean = p["angle_pooling"].as_str() == Some("mean");
                }
                _ => continue,
            }
            o.cosine_w = cw;
            o.angle_w = aw;
            o.ibn_w = iw;
            let gy = gpu.alloc::<f32>(y.len())?;
            gpu.upload(gy.view(), &y)?;
            let gl = gpu.alloc::<f32>(pairs)?;
            gpu.upload(gl.view(), &labels)?;
            // With the parts (what `angle train --device cuda` logs): loss[1..4] are the
            // unweighted cosine, angle and in-batch values.
            let loss = gpu.alloc::<f32>(4)?;
            let dy = gpu.alloc::<f32>(y.len())?;
            k::fill(gpu, loss.view(), f32::NAN)?;
            k::fill(gpu, dy.view(), f32::NAN)?;
            k::angle_objective(gpu, &o, loss.view(), dy.view(), gy.view(), gl.view(), pairs, d)?;
            let lv = gpu.download(loss.view())?;
            let got = f64::from(lv[0]);
            let recombined = f64::from(cw) * f64::from(lv[1])
                + f64::from(aw) * f64::from(lv[2])
                + f64::from(iw) * f64::from(lv[3]);
            let perr = (recombined - got).abs() / got.abs().max(1e-6);
            tally.check(
                &format!("loss case {ci} {obj} pairs={pairs}: parts recombine"),
                if lv.iter().all(|x| x.is_finite()) {
                    perr
                } else {
                    f64::NAN
                },
                1e-5,
            );
            let lerr = if want == 0.0 {
                got.abs()
            } else {
                (got - want).abs() / want.abs()
            };
            let g = gpu.download(dy.view())?;
            let maxref = grad.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let maxdiff = g.iter().zip(&grad).fold(0.0f32, |m, (a, b)| {
                if a.is_nan() {
                    f32::NAN
                } else {
                    m.max((a - b).abs())
                }
            });
            let gerr = if maxref == 0.0 {
                f64::from(maxdiff)
            } else {
                f64::from(maxdiff / maxref)
            };
            tally.check(
                &format!("loss case {ci} {obj} pairs={pairs} dim={d}: loss"),
                lerr,
                1e-4,
            );
            tally.check(
                &format!("loss case {ci} {obj} pairs={pairs} dim={d}: grad"),
                gerr,
                1e-4,
            );
            done += 1;
        }
        if done == 0 {
            return Err("loss fixture: no format-A case checked".into());
        }
        Ok(())
    }

    struct Fixture {
        tensors: HashMap<String, (Vec<usize>, Vec<f64>)>,
        ids: Vec<u32>,
        types: Vec<u32>,
        offsets: Vec<usize>,
        /// packed token -> (b, t) in the padded batch
        rows: Vec<(usize, usize)>,
        pooling: String,
        t: usize,
    }

    fn load_fixture(path: &Path) -> Res<Fixture> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let (_, header) = SafeTensors::read_metadata(&bytes)?;
        let meta = header.metadata().clone().unwrap_or_default();
        let st = SafeTensors::deserialize(&bytes)?;
        let mut tensors = HashMap::new();
        for (name, v) in st.iter() {
            let d = v.data();
            let vals: Vec<f64> = match v.dtype() {
                Dtype::F32 => d
                    .chunks_exact(4)
                    .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                    .collect(),
                Dtype::F64 => d
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect(),
                Dtype::I64 => d
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f64)
                    .collect(),
                other => return Err(format!("{name}: dtype {other:?}").into()),
            };
            tensors.insert(name.to_string(), (v.shape().to_vec(), vals));
        }
        let (shape, ids2) = tensors.get("input_ids").ok_or("fixture: input_ids")?.clone();
        let mask = &tensors.get("attention_mask").ok_or("fixture: attention_mask")?.1;
        let tt = tensors.get("token_type_ids").map(|x| x.1.clone());
        let (b, t) = (shape[0], shape[1]);
        let (mut ids, mut types, mut offsets, mut rows) = (vec![], vec![], vec![0usize], vec![]);
        for bi in 0..b {
            for ti in 0..t {
                if mask[bi * t + ti] != 0.0 {
                    ids.push(ids2[bi * t + ti] as u32);
                    types.push(tt.as_ref().map_or(0, |v| v[bi * t + ti] as u32));
                    rows.push((bi, ti));
                }
            }
            offsets.push(ids.len());
        }
        Ok(Fixture {
            tensors,
            ids,
            types,
            offsets,
            rows,
            pooling: meta.get("pooling").cloned().unwrap_or_else(|| "mean".into()),
            t,
        })
    }

    fn f32s(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&x| x as f32).collect()
    }

    fn encoder_parity<T: Elem>(data: &Path, tally: &mut Tally, tag: &str) -> Res<()> {
        let fx = load_fixture(&data.join("encoder-fixture.safetensors"))?;
        let mut enc = Encoder::from_dir(data.join("minilm"))?;
        let pooling = if fx.pooling == "cls" {
            Pooling::Cls
        } else {
            Pooling::Mean
        };
        enc.default_pooling = pooling;
        let h = enc.config.hidden_size;
        let (b, n) = (fx.offsets.len() - 1, fx.ids.len());
        let maxlen = fx.offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(1);
        let gpu = Gpu::new(0)?;
        let cap = GpuCapacity {
            max_seqs: b,
            max_seq_len: maxlen,
            max_tokens: n,
        };
        let mut g = GpuEncoder::<T>::from_encoder(gpu, &enc, cap)?;
        let labels = f32s(&fx.tensors.get("labels").ok_or("fixture: labels")?.1);
        g.stage(&fx.ids, Some(&fx.types), &fx.offsets, Some(&labels))?;
        // f32: exact products (TF32 off), so the comparison sees kernel error alone. bf16: the
        // activations carry 8-bit mantissas through 6 layers; these bounds say what is expected.
        g.gpu.set_tf32(false);
        let (tol_f, tol_g) = if T::NAME == "bf16" {
            (3e-2, 1.5e-1)
        } else {
            (1e-4, 1e-3)
        };

        // (a) eval mode against the PyTorch float64 fixture, loss and gradients all on the GPU.
        g.zero_grad()?;
        g.forward(None)?;
        g.loss()?;
        g.backward()?;
        let hidden = g.download_hidden()?;
        let lhs = &fx
            .tensors
            .get("last_hidden_state")
            .ok_or("fixture: last_hidden_state")?
            .1;
        let mut want = Vec::with_capacity(n * h);
        for &(bi, ti) in &fx.rows {
            want.extend(
                lhs[(bi * fx.t + ti) * h..(bi * fx.t + ti + 1) * h]
                    .iter()
                    .map(|&x| x as f32),
            );
        }
        tally.check(
            &format!("{tag} encoder vs torch f64: last_hidden_state (real tokens)"),
            rel_err(&hidden, &want),
            tol_f,
        );
        let pooled = g.download_pooled()?;
        tally.check(
            &format!("{tag} encoder vs torch f64: pooled"),
            rel_err(&pooled, &f32s(&fx.tensors["pooled"].1)),
            tol_f,
        );
        let loss = f64::from(g.read_loss()?);
        let lref = fx.tensors["loss"].1[0];
        tally.check(
            &format!("{tag} encoder vs torch f64: loss (format A)"),
            (loss - lref).abs() / lref.abs(),
            tol_f,
        );
        let grads = g.download_grads()?;
        let mut worst = (0.0f64, String::new());
        for (name, (_, vals)) in &fx.tensors {
            let Some(pname) = name.strip_prefix("grad.") else {
                continue;
            };
            if pname == "pooled" || pname.ends_with(".rows") {
                continue;
            }
            let e = enc
                .layout
                .get(pname)
                .ok_or_else(|| format!("no parameter {pname}"))?;
            let mine: Vec<f32> = if pname == "embeddings.word_embeddings.weight" {
                let rows = &fx.tensors["grad.embeddings.word_embeddings.rows"].1;
                rows.iter()
                    .flat_map(|&r| grads[e.offset + r as usize * h..e.offset + (r as usize + 1) * h].to_vec())
                    .collect()
            } else {
                grads[e.range()].to_vec()
            };
            if pname.ends_with("attention.self.key.bias") {
                // exactly zero in exact arithmetic: check its size against the query bias gradient
                let q = pname.replace("key.bias", "query.bias");
                let qn = grads[enc.layout.get(&q).ok_or("query bias")?.range()]
                    .iter()
                    .map(|x| f64::from(*x).powi(2))
                    .sum::<f64>()
                    .sqrt();
                let kn = mine.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
                tally.check(
                    &format!("{tag} grad {pname} (|key bias| / |query bias|)"),
                    kn / qn.max(1e-30),
                    1e-2,
                );
                continue;
            }
            let err = rel_err(&mine, &f32s(vals));
            if err > worst.0 || worst.1.is_empty() {
                worst = (err, pname.to_string());
            }
        }
        tally.check(
            &format!("{tag} encoder vs torch f64: worst param grad ({})", worst.1),
            worst.0,
            tol_g,
        );

        // (b) train mode with dropout, against the CPU encoder on the same seed and pooled gradient.
        let seed = 20_240_917u64;
        let mut acts = enc.activations(
            Capacity {
                max_tokens: n,
                max_seq_len: maxlen,
            },
            Mode::Train,
        );
        let batch = Batch {
            input_ids: &fx.ids,
            token_type_ids: Some(&fx.types),
            seq_offsets: &fx.offsets,
        };
        let hidden_cpu = enc.forward(&batch, &mut acts, Some(seed))?.to_vec();
        let mut pooler = Pooler::new(pooling);
        let mut pooled_cpu = vec![0.0f32; b * h];
        pooler.forward(&mut pooled_cpu, &hidden_cpu, &fx.offsets, h)?;
        let dpooled = f32s(&fx.tensors["grad.pooled"].1);
        pooler.backward(acts.dhidden_mut(), &dpooled, &fx.offsets, h)?;
        enc.zero_grad();
        enc.backward(&mut acts)?;
        g.zero_grad()?;
        g.forward(Some(seed))?;
        g.set_dpooled(&dpooled)?;
        g.backward()?;
        tally.check(
            &format!("{tag} encoder vs CPU encoder, dropout on: last_hidden_state"),
            rel_err(&g.download_hidden()?, &hidden_cpu),
            tol_f,
        );
        tally.check(
            &format!("{tag} encoder vs CPU encoder, dropout on: pooled"),
            rel_err(&g.download_pooled()?, &pooled_cpu),
            tol_f,
        );
        tally.check(
            &format!("{tag} encoder vs CPU encoder, dropout on: all gradients"),
            rel_err(&g.download_grads()?, &enc.buffers.grads),
            tol_g,
        );
        let m = g.memory();
        println!(
            "     ({tag} MiniLM, {n} tokens: device memory {:.1} MiB, activations {:.1} MiB)",
            mb(m.total),
            mb(m.activations)
        );
        Ok(())
    }

    fn mb(b: usize) -> f64 {
        b as f64 / (1024.0 * 1024.0)
    }

    /// Normal(0, 0.02) weights, LayerNorm weights 1, biases 0 (BERT's initialisation).
    fn random_params(cfg: &BertConfig) -> Vec<f32> {
        let layout = angle_encoder::ParamLayout::new(cfg);
        let mut p = vec![0.0f32; layout.total];
        for (ei, e) in layout.entries.iter().enumerate() {
            let r = e.range();
            if e.name.ends_with("LayerNorm.weight") {
                p[r].fill(1.0);
            } else if e.shape.len() == 2 {
                for (i, x) in p[r].iter_mut().enumerate() {
                    // Box-Muller from two counter-based uniforms
                    let u1 = angle_tensor::rng::uniform(ei as u64, 2 * i as u64).max(1e-12);
                    let u2 = angle_tensor::rng::uniform(ei as u64, 2 * i as u64 + 1);
                    *x = (0.02 * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32;
                }
            }
        }
        p
    }

    fn bench_one<T: Elem>(
        name: &str,
        cfg: &BertConfig,
        params: &[f32],
        prec: &str,
        steps: usize,
    ) -> Res<serde_json::Value> {
        let (bsz, len) = (64usize, 128usize);
        let gpu = Gpu::new(0)?;
        gpu.set_tf32(true);
        let device = gpu.describe();
        let (free0, total) = gpu.mem_info()?;
        let cap = GpuCapacity {
            max_seqs: bsz,
            max_seq_len: len,
            max_tokens: bsz * len,
        };
        let mut g = GpuEncoder::<T>::new(gpu, cfg.clone(), params, Pooling::Mean, cap)?;
        let n = bsz * len;
        let ids: Vec<u32> = (0..n)
            .map(|i| {
                if i % len == 0 {
                    101
                } else {
                    1000 + (angle_tensor::rng::bits(7, i as u64) % 20_000) as u32
                }
            })
            .collect();
        let offsets: Vec<usize> = (0..=bsz).map(|b| b * len).collect();
        let labels: Vec<f32> = (0..bsz / 2)
            .map(|i| (angle_tensor::rng::bits(9, i as u64) % 6) as f32)
            .collect();
        g.stage(&ids, None, &offsets, Some(&labels))?;
        let hp = AdamW {
            lr: 2e-5,
            ..AdamW::default()
        };
        for t in 1..=3u64 {
            g.train_step(&hp, t, Some(t), Some(1.0))?;
        }
        g.gpu.synchronize()?;
        let first = g.read_loss()?;
        let t0 = Instant::now();
        for t in 4..4 + steps as u64 {
            g.train_step(&hp, t, Some(t), Some(1.0))?;
        }
        g.gpu.synchronize()?;
        let dt = t0.elapsed().as_secs_f64() / steps as f64;
        let last = g.read_loss()?;
        let (free1, _) = g.gpu.mem_info()?;
        // Where the step goes: each phase alone, averaged (for the next round of optimisation).
        let mut phases = Vec::new();
        for (pname, which) in [("forward", 0u8), ("loss", 1), ("backward", 2), ("adamw", 3)] {
            let reps = 5;
            g.gpu.synchronize()?;
            let t0 = Instant::now();
            for _ in 0..reps {
                match which {
                    0 => g.forward(Some(1))?,
                    1 => g.loss()?,
                    2 => g.backward()?,
                    _ => g.adamw_step(&hp, 100, Some(1.0))?,
                }
            }
            g.gpu.synchronize()?;
            phases.push((pname, t0.elapsed().as_secs_f64() * 1e3 / reps as f64));
        }
        // Per-op profile of two steps (each op synchronised: relative sizes, not the step time).
        g.set_profiling(true);
        for t in 0..2u64 {
            g.train_step(&hp, 200 + t, Some(t), Some(1.0))?;
        }
        let prof = g.profile();
        g.set_profiling(false);
        println!(
            "      profile (per step, synchronised): {}",
            prof.iter()
                .map(|(op, ms, c)| format!("{op} {:.2} ms/{}", ms / 2.0, c / 2))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "      phases: {}",
            phases
                .iter()
                .map(|(p, ms)| format!("{p} {ms:.2} ms"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let (h, l, inter) = (
            cfg.hidden_size as f64,
            cfg.num_hidden_layers as f64,
            cfg.intermediate_size as f64,
        );
        let per_layer = 4.0 * h * h + 2.0 * h * inter;
        let flops = 6.0 * l * per_layer * n as f64 + 12.0 * l * h * len as f64 * n as f64;
        let peak = if prec == "bf16" { 989.4e12 } else { 494.7e12 };
        let mfu = flops / dt / peak;
        let m = g.memory();
        println!(
            "ours  {name:<10} {prec:<5} step {:7.2} ms  {:9.0} tokens/s  MFU {:5.1}% (of {:.0} TFLOP/s)  memory {:.0} MiB allocated, {:.0} MiB used on device  loss {first:.3} -> {last:.3}",
            dt * 1e3,
            n as f64 / dt,
            mfu * 100.0,
            peak / 1e12,
            mb(m.total),
            mb(free0.saturating_sub(free1)),
        );
        if !last.is_finite() {
            return Err(format!("{name} {prec}: loss is not finite").into());
        }
        Ok(serde_json::json!({
            "impl": "ours", "model": name, "precision": prec, "device": device,
            "step_ms": dt * 1e3, "tokens_per_s": n as f64 / dt, "mfu": mfu, "peak_flops": peak,
            "flops_per_step": flops, "mem_mib": mb(free0.saturating_sub(free1)), "alloc_mib": mb(m.total),
            "mem_total_mib": mb(total), "loss_first": first, "loss_last": last,
            "profile_ms_per_step": prof.iter().map(|(op, ms, _)| (op.to_string(), serde_json::json!(ms / 2.0))).collect::<serde_json::Map<_, _>>(),
            "phases_ms": phases.iter().map(|(p, ms)| (p.to_string(), serde_json::json!(ms))).collect::<serde_json::Map<_, _>>(),
        }))
    }
}
