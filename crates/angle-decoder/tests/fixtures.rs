//! Parity with transformers (+ peft): every case folder under `ANGLE_DECODER_FIXTURES` (default
//! `../shared/fixtures/decoder`). Model type, pooling, attention, maxlen, EOS and LoRA come from the files.

mod common;

use angle_decoder::{Decoder, DecoderOptions};
use angle_encoder::{AdamW, Pooling, Precision};
use angle_loss::{AngleLoss, AngleLossConfig, AnglePooling};
use common::{Reference, cases, objective_value, rel_l2};
use ndarray::ArrayView2;
use serde_json::Value;

fn loss_fn(objective: &str) -> AngleLoss {
    let tau = objective_value(objective, "taus");
    assert!(
        objective.contains("angle pooling sum"),
        "objective `{objective}`: only angle pooling sum is read"
    );
    AngleLoss::new(AngleLossConfig {
        cosine_w: objective_value(objective, "cosine_w"),
        ibn_w: objective_value(objective, "ibn_w"),
        angle_w: objective_value(objective, "angle_w"),
        cosine_tau: tau,
        ibn_tau: tau,
        angle_tau: tau,
        angle_pooling: AnglePooling::Sum,
        ..Default::default()
    })
}

fn open(fx: &Reference) -> Decoder {
    let model = fx.dir.join("model");
    let lora: Value = serde_json::from_str(fx.meta("lora")).expect("metadata `lora` is JSON");
    let adapter = (!lora.is_null()).then(|| model.join("adapter"));
    let opts = DecoderOptions {
        lora: None,
        adapter,
        causal: fx.flag("causal"),
        bidirectional_from: None,
        pooling: Some(Pooling::parse(fx.meta("pooling")).expect("fixture pooling")),
        frozen: false,
    };
    let dec = Decoder::load(&model, opts).unwrap();
    assert_eq!(dec.config.model_type.name(), fx.meta("model_type"));
    if let Some(l) = &dec.lora {
        assert_eq!(l.r as u64, lora["r"].as_u64().unwrap(), "adapter r vs metadata");
        assert_eq!(
            l.alpha,
            lora["alpha"].as_f64().unwrap(),
            "adapter alpha vs metadata"
        );
        let mut want: Vec<String> = lora["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        want.sort();
        assert_eq!(l.target_names().unwrap(), want, "adapter targets vs metadata");
    }
    dec
}

fn loss_of(dec: &mut Decoder, fx: &Reference, lf: &AngleLoss, labels: &[f64]) -> (f64, Vec<f32>, Vec<f64>) {
    let h = dec.config.hidden_size;
    dec.forward(&fx.ids, &fx.seq_offsets, None).unwrap();
    let mut pooled = vec![0.0f32; fx.b * h];
    dec.pool(&mut pooled).unwrap();
    let p64: Vec<f64> = pooled.iter().map(|&x| x as f64).collect();
    let out = lf
        .format_a(ArrayView2::from_shape((fx.b, h), &p64).unwrap(), labels, None)
        .unwrap();
    (out.loss, pooled, out.grad.iter().copied().collect())
}

/// Our gradient of tensor `e` as the reference stores it: whole, or (the token embedding) only the rows listed
/// under `grad.<name>.rows`.
fn as_reference(fx: &Reference, e: &angle_encoder::ParamEntry, g: &[f32]) -> Vec<f64> {
    match fx.tensors.get(&format!("grad.{}.rows", e.name)) {
        Some(rows) => {
            let w = e.shape[1];
            rows.i
                .iter()
                .flat_map(|&r| g[r as usize * w..(r as usize + 1) * w].iter().map(|&x| x as f64))
                .collect()
        }
        None => g.iter().map(|&x| x as f64).collect(),
    }
}

#[test]
fn token_ids_are_ours() {
    for dir in cases() {
        let fx = Reference::load(&dir);
        let maxlen: usize = fx.meta("maxlen").parse().unwrap();
        let append_eos = fx.flag("append_eos");
        let model = dir.join("model");
        let cfg = angle_decoder::DecoderConfig::from_dir(&model).unwrap();
        // The trainer's own path: truncation to maxlen - 1 and the tokenizer_config's EOS appended.
        let plain = angle_data::TextTokenizer::from_file(&model, maxlen).unwrap();
        let eos = plain.eos_id_from(&model).unwrap();
        if let Some(e) = cfg.eos_token_id {
            assert_eq!(e, eos, "{}: config and tokenizer disagree on EOS", dir.display());
        }
        let tok = if append_eos {
            plain.clone().with_eos_appended(eos).unwrap()
        } else {
            plain.clone()
        };
        for (b, w) in fx.seq_offsets.windows(2).enumerate() {
            let ids = &fx.ids[w[0]..w[1]];
            let body = if append_eos {
                assert_eq!(
                    *ids.last().unwrap(),
                    eos,
                    "{}: row {b} does not end in EOS",
                    dir.display()
                );
                &ids[..ids.len() - 1]
            } else {
                ids
            };
            let text = plain.inner().decode(body, true).unwrap();
            let ours = tok.encode(&text).unwrap().ids;
            assert_eq!(ours, ids, "{}: row {b}: {text:?}", dir.display());
        }
        println!("{}: {} rows re-tokenised identically", dir.display(), fx.b);
    }
}

#[test]
fn forward_loss_and_gradients_match_reference() {
    let mut failures = vec![];
    for dir in cases() {
        let fx = Reference::load(&dir);
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let mut dec = open(&fx);
        let h = dec.config.hidden_size;
        let maxlen: usize = fx.meta("maxlen").parse().unwrap();
        assert!(fx.seq_offsets.windows(2).all(|w| w[1] - w[0] <= maxlen));
        let hidden = dec.forward(&fx.ids, &fx.seq_offsets, None).unwrap().to_vec();
        let lhs = fx.floats("last_hidden_state");
        let mut herr = 0.0f64;
        for (k, &(b, t)) in fx.rows.iter().enumerate() {
            let r = &lhs[(b * fx.t + t) * h..][..h];
            for (x, y) in hidden[k * h..(k + 1) * h].iter().zip(r) {
                herr = herr.max((*x as f64 - y).abs());
            }
        }
        println!("{name}: last_hidden_state max abs err {herr:.3e}");
        if herr > 1e-4 {
            failures.push(format!("{name}: last_hidden_state max abs err {herr:.3e} > 1e-4"));
        }
        let lf = loss_fn(fx.meta("objective"));
        let labels = fx.floats("labels").to_vec();
        let (loss, pooled, dpooled) = loss_of(&mut dec, &fx, &lf, &labels);
        let perr = pooled
            .iter()
            .zip(fx.floats("pooled"))
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        println!("{name}: pooled max abs err {perr:.3e}");
        if perr > 1e-4 {
            failures.push(format!("{name}: pooled max abs err {perr:.3e} > 1e-4"));
        }
        let ref_loss = fx.floats("loss")[0];
        let lerr = (loss - ref_loss).abs() / ref_loss.abs();
        println!("{name}: loss {loss} vs {ref_loss}: rel err {lerr:.3e}");
        if lerr > 1e-4 {
            failures.push(format!("{name}: loss rel err {lerr:.3e} > 1e-4"));
        }
        let gp = rel_l2(&dpooled, fx.floats("grad.pooled"));
        if gp > 1e-3 {
            failures.push(format!("{name}: grad.pooled rel err {gp:.3e}"));
        }

        dec.zero_grad();
        let d32: Vec<f32> = dpooled.iter().map(|&x| x as f32).collect();
        dec.backward_pooled(&d32).unwrap();
        let grads = dec.buffers.grads.clone();
        // the trainable set is exactly the reference's gradient set; nothing else has a gradient buffer
        assert_eq!(grads.len(), dec.entries.iter().map(|e| e.len()).sum::<usize>());
        let ref_names: std::collections::BTreeSet<String> = fx
            .tensors
            .keys()
            .filter_map(|k| k.strip_prefix("grad."))
            .filter(|k| *k != "pooled" && !k.ends_with(".rows"))
            .map(str::to_string)
            .collect();
        let ours: std::collections::BTreeSet<String> = dec.entries.iter().map(|e| e.name.clone()).collect();
        assert_eq!(
            ours, ref_names,
            "{name}: trainable tensors differ from the reference's gradient set"
        );
        for e in &dec.entries {
            let g = &grads[e.range()];
            if let Some(i) = g.iter().position(|x| !x.is_finite()) {
                failures.push(format!("{name}: {} has a non-finite gradient at {i}", e.name));
            }
            let err = rel_l2(&as_reference(&fx, e, g), fx.floats(&format!("grad.{}", e.name)));
            println!("{name}: {}: rel err {err:.3e}", e.name);
            if err > 1e-3 || !err.is_finite() {
                failures.push(format!("{name}: {}: rel err {err:.3e} > 1e-3", e.name));
            }
        }
    }
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
}

/// `frozen` (what `angle encode` loads): nothing trainable, the weights left in the checkpoint's dtype, two
/// layers' activations reused in turn, and the same hidden states, bit for bit, as the trainable model's
/// eval-mode forward; no backward. Every case's base model (its adapter, if any, left out), with the case's
/// attention and pooling.
#[test]
fn frozen_model_encodes_identically_with_nothing_trainable() {
    for dir in cases() {
        let fx = Reference::load(&dir);
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let load = |frozen| {
            Decoder::load(
                dir.join("model"),
                DecoderOptions {
                    causal: fx.flag("causal"),
                    pooling: Some(Pooling::parse(fx.meta("pooling")).unwrap()),
                    frozen,
                    ..DecoderOptions::default()
                },
            )
            .unwrap()
        };
        let (mut trainable, mut frozen) = (load(false), load(true));
        assert!(
            frozen.buffers.params.is_empty(),
            "{name}: frozen model has parameters"
        );
        assert!(!trainable.buffers.params.is_empty());
        let want = trainable
            .forward(&fx.ids, &fx.seq_offsets, None)
            .unwrap()
            .to_vec();
        let got = frozen.forward(&fx.ids, &fx.seq_offsets, None).unwrap();
        assert!(got == want.as_slice(), "{name}: frozen forward differs");
        let h = frozen.config.hidden_size;
        let e = frozen
            .backward(&vec![1.0; fx.ids.len() * h])
            .unwrap_err()
            .to_string();
        assert!(e.contains("frozen"), "{e}");
    }
}

/// The same on a 6-layer model (the fixture's two layers repeated), so that the two activation slots are
/// reused several times over.
#[test]
fn frozen_model_reuses_two_slots_over_six_layers() {
    // any case's base model (an adapter folder beside it is not copied)
    let src = cases().first().expect("a decoder fixture").join("model");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for f in std::fs::read_dir(&src).unwrap().flatten() {
        if f.path().is_file() {
            std::fs::copy(f.path(), dir.join(f.file_name())).unwrap();
        }
    }
    let mut config: Value = serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    let layers = config["num_hidden_layers"].as_u64().unwrap() as usize;
    config["num_hidden_layers"] = (3 * layers).into();
    // transformers 5 lists each layer's attention type: repeat it with the layers
    if let Some(types) = config.get("layer_types").and_then(Value::as_array).cloned() {
        config["layer_types"] = Value::Array((0..3).flat_map(|_| types.iter().cloned()).collect());
    }
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = Vec::new();
    for (name, view) in st.tensors() {
        if let Some(rest) = name.strip_prefix("model.layers.") {
            let (l, tail) = rest.split_once('.').unwrap();
            let l: usize = l.parse().unwrap();
            for k in 0..3 {
                tensors.push((format!("model.layers.{}.{tail}", l + k * layers), view.clone()));
            }
        } else {
            tensors.push((name, view));
        }
    }
    safetensors::serialize_to_file(tensors, None, &dir.join("model.safetensors")).unwrap();
    let load = |frozen| {
        Decoder::load(
            dir,
            DecoderOptions {
                pooling: Some(Pooling::Last),
                frozen,
                ..DecoderOptions::default()
            },
        )
        .unwrap()
    };
    let (mut trainable, mut frozen) = (load(false), load(true));
    let ids: Vec<u32> = (3..40).collect();
    let offsets = [0, 9, 22, 37];
    let want = trainable.forward(&ids, &offsets, None).unwrap().to_vec();
    assert!(frozen.forward(&ids, &offsets, None).unwrap() == want.as_slice());
}

#[test]
fn adamw_trajectory_matches_reference() {
    let mut failures = vec![];
    for dir in cases() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let path = dir.join("adamw-steps.json");
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let hp = &v["hyperparameters"];
        let batch = v["batch"].as_str().expect("`batch` names the reference file");
        assert_eq!(batch, "reference.safetensors", "{}", path.display());
        let fx = Reference::load(&dir);
        let mut dec = open(&fx);
        assert_eq!(hp["pooling"].as_str().unwrap(), fx.meta("pooling"));
        assert_eq!(hp["causal"].as_bool().unwrap(), fx.flag("causal"));
        let trainable = hp["trainable"].as_str().unwrap();
        assert_eq!(
            trainable.contains("LoRA"),
            dec.lora.is_some(),
            "{name}: trainable `{trainable}`"
        );
        let betas = hp["betas"].as_array().unwrap();
        let opt = AdamW {
            lr: hp["lr"].as_f64().unwrap(),
            beta1: betas[0].as_f64().unwrap(),
            beta2: betas[1].as_f64().unwrap(),
            eps: hp["eps"].as_f64().unwrap(),
            weight_decay: hp["weight_decay"].as_f64().unwrap(),
        };
        let lf = loss_fn(hp["objective"].as_str().unwrap());
        let labels = fx.floats("labels").to_vec();
        let want: Vec<f64> = v["losses_before_each_step"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        for (step, &w) in want.iter().enumerate() {
            let (loss, _, dpooled) = loss_of(&mut dec, &fx, &lf, &labels);
            let err = (loss - w).abs() / w.abs();
            println!(
                "{name}: step {}: loss {loss:.8} vs {w:.8}: rel err {err:.2e}",
                step + 1
            );
            if err > 1e-4 {
                failures.push(format!("{name}: step {}: rel err {err:.2e} > 1e-4", step + 1));
            }
            dec.zero_grad();
            let d32: Vec<f32> = dpooled.iter().map(|&x| x as f32).collect();
            dec.backward_pooled(&d32).unwrap();
            dec.adamw_step(&opt, step as u64 + 1).unwrap();
        }
    }
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
}

/// The forward's last hidden state against the reference's (its real tokens), relative L2 error.
fn hidden_rel_err(dec: &mut Decoder, fx: &Reference) -> f64 {
    let h = dec.config.hidden_size;
    let hidden = dec.forward(&fx.ids, &fx.seq_offsets, None).unwrap().to_vec();
    let lhs = fx.floats("last_hidden_state");
    let (mut got, mut want) = (vec![], vec![]);
    for (k, &(b, t)) in fx.rows.iter().enumerate() {
        got.extend(hidden[k * h..(k + 1) * h].iter().map(|&x| x as f64));
        want.extend_from_slice(&lhs[(b * fx.t + t) * h..][..h]);
    }
    rel_l2(&got, &want)
}

/// `Precision::Bf16` (every linear product on bf16-rounded inputs and weights, f32 sums) against the same
/// float64 reference, with bf16's own, looser tolerance: the fixtures' weights are bf16 already, so only the
/// activations' rounding (8 bits of mantissa) moves the results. Measured on the three fixture cases: hidden
/// states and pooled 3–5e-3 relative (L2), the loss 4–8e-3, gradients 4e-3–1.5e-2 (`docs/decoder.md`); the
/// bounds are about three to four times those. Every trainable tensor still gets a finite
/// gradient, and the frozen ones none.
#[test]
fn bf16_products_stay_close_to_reference() {
    let mut failures = vec![];
    let mut check = |what: String, err: f64, bound: f64| {
        println!("{what}: rel err {err:.3e} (bound {bound:.0e})");
        if err > bound || !err.is_finite() {
            failures.push(format!("{what}: rel err {err:.3e} > {bound:.0e}"));
        }
    };
    for dir in cases() {
        let fx = Reference::load(&dir);
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let mut dec = open(&fx);
        dec.set_precision(Precision::Bf16).unwrap();
        assert!(dec.bf16_bytes() > 0, "{name}: no bf16 copies");
        check(
            format!("{name}: last_hidden_state"),
            hidden_rel_err(&mut dec, &fx),
            2e-2,
        );
        let lf = loss_fn(fx.meta("objective"));
        let labels = fx.floats("labels").to_vec();
        let (loss, pooled, dpooled) = loss_of(&mut dec, &fx, &lf, &labels);
        let p64: Vec<f64> = pooled.iter().map(|&x| x as f64).collect();
        check(format!("{name}: pooled"), rel_l2(&p64, fx.floats("pooled")), 2e-2);
        let ref_loss = fx.floats("loss")[0];
        check(
            format!("{name}: loss"),
            (loss - ref_loss).abs() / ref_loss.abs(),
            3e-2,
        );
        dec.zero_grad();
        let d32: Vec<f32> = dpooled.iter().map(|&x| x as f32).collect();
        dec.backward_pooled(&d32).unwrap();
        let grads = dec.buffers.grads.clone();
        assert_eq!(grads.len(), dec.entries.iter().map(|e| e.len()).sum::<usize>());
        for e in &dec.entries {
            let got = as_reference(&fx, e, &grads[e.range()]);
            let err = rel_l2(&got, fx.floats(&format!("grad.{}", e.name)));
            check(format!("{name}: grad {}", e.name), err, 5e-2);
        }
    }
    assert!(
        failures.is_empty(),
        "bf16 beyond its tolerance:\n{}",
        failures.join("\n")
    );
}

/// After an AdamW step, a bf16 model computes with its updated weights: its forward equals, bit for bit, that of
/// the same weights packed afresh (full fine-tuning repacks every trainable weight; a LoRA base never changes).
#[test]
fn bf16_copies_follow_adamw_steps() {
    for dir in cases() {
        let fx = Reference::load(&dir);
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let mut dec = open(&fx);
        dec.set_precision(Precision::Bf16).unwrap();
        let before = dec.forward(&fx.ids, &fx.seq_offsets, None).unwrap().to_vec();
        dec.zero_grad();
        let h = dec.config.hidden_size;
        dec.backward(&vec![1e-2f32; before.len() / h * h]).unwrap();
        let opt = AdamW {
            lr: 1e-3,
            ..AdamW::default()
        };
        dec.adamw_step(&opt, 1).unwrap();
        let stepped = dec.forward(&fx.ids, &fx.seq_offsets, None).unwrap().to_vec();
        assert_ne!(before, stepped, "{name}: the step changed nothing");
        let mut fresh = dec.clone();
        fresh.set_precision(Precision::Bf16).unwrap();
        let want = fresh.forward(&fx.ids, &fx.seq_offsets, None).unwrap().to_vec();
        assert_eq!(stepped, want, "{name}: bf16 copies out of step with the weights");
        println!("{name}: bf16 copies follow the AdamW step");
    }
}

/// `Precision::Int8` for a model that only encodes (loaded frozen, no adapter): every linear product on the int8
/// kernels, against the float64 reference with int8's tolerance (hidden states within 6e-2 relative, L2); full
/// fine-tuning refuses it (the LoRA cases: `int8_base_lora_gradients_stay_close`).
#[test]
fn int8_products_encode_close_to_reference() {
    for dir in cases() {
        let fx = Reference::load(&dir);
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let lora: Value = serde_json::from_str(fx.meta("lora")).unwrap();
        if !lora.is_null() {
            continue;
        }
        let mut trainable = open(&fx);
        assert!(
            trainable.set_precision(Precision::Int8).is_err(),
            "{name}: int8 on a trainable model"
        );
        let opts = DecoderOptions {
            lora: None,
            adapter: None,
            causal: fx.flag("causal"),
            bidirectional_from: None,
            pooling: Some(Pooling::parse(fx.meta("pooling")).unwrap()),
            frozen: true,
        };
        let mut dec = Decoder::load(fx.dir.join("model"), opts).unwrap();
        dec.set_precision(Precision::Int8).unwrap();
        assert!(dec.bf16_bytes() > 0, "{name}: no int8 copies");
        let err = hidden_rel_err(&mut dec, &fx);
        println!("{name}: int8 last_hidden_state rel err {err:.3e}");
        assert!(err < 6e-2 && err > 0.0, "{name}: int8 hidden state rel err {err}");
    }
}

/// `--load-kbit 8`: LoRA on an 8-bit base (every frozen linear weight quantized per output channel, forward
/// products on the int8 kernels, the input gradients an f32 product with the dequantized weights) against the
/// float64 reference of the f32 base: loss, pooled and every LoRA gradient within int8's tolerance (measured on
/// the fixture cases and printed), every trainable tensor a finite gradient.
#[test]
fn int8_base_lora_gradients_stay_close() {
    let mut ran = 0;
    let mut failures = vec![];
    let mut check = |what: String, err: f64, bound: f64| {
        println!("{what}: rel err {err:.3e} (bound {bound:.0e})");
        if err > bound || !err.is_finite() {
            failures.push(format!("{what}: rel err {err:.3e} > {bound:.0e}"));
        }
    };
    for dir in cases() {
        let fx = Reference::load(&dir);
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let lora: Value = serde_json::from_str(fx.meta("lora")).unwrap();
        if lora.is_null() {
            continue;
        }
        ran += 1;
        let mut dec = open(&fx);
        dec.set_precision(Precision::Int8).unwrap();
        assert!(dec.bf16_bytes() > 0, "{name}: no int8 copies");
        let lf = loss_fn(fx.meta("objective"));
        let labels = fx.floats("labels").to_vec();
        let (loss, pooled, dpooled) = loss_of(&mut dec, &fx, &lf, &labels);
        let p64: Vec<f64> = pooled.iter().map(|&x| x as f64).collect();
        check(format!("{name}: pooled"), rel_l2(&p64, fx.floats("pooled")), 1e-1);
        let ref_loss = fx.floats("loss")[0];
        check(
            format!("{name}: loss"),
            (loss - ref_loss).abs() / ref_loss.abs(),
            1e-1,
        );
        dec.zero_grad();
        let d32: Vec<f32> = dpooled.iter().map(|&x| x as f32).collect();
        dec.backward_pooled(&d32).unwrap();
        let grads = dec.buffers.grads.clone();
        for e in &dec.entries {
            let g = &grads[e.range()];
            assert!(g.iter().all(|x| x.is_finite()), "{name}: {} not finite", e.name);
            let got = as_reference(&fx, e, g);
            let err = rel_l2(&got, fx.floats(&format!("grad.{}", e.name)));
            check(format!("{name}: grad {}", e.name), err, 2e-1);
        }
    }
    assert!(ran > 0, "no LoRA fixture case to check the 8-bit base on");
    assert!(
        failures.is_empty(),
        "8-bit base beyond its tolerance:\n{}",
        failures.join("\n")
    );
}
