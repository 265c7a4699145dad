//! LoRA on every family: the adapter's gradients are the full model's weight gradient seen through the
//! adapter (`dB = s · dW · Aᵀ`, `dA = s · Bᵀ · dW` at the merged weights `W + s · B·A`), frozen weights get
//! none, every adapter tensor a finite one, and the merged weights give the adapter model's outputs.
//! Runs on every folder of `ANGLE_FAMILY_FIXTURES` (default `../shared/fixtures/families`).

mod common;

use std::path::Path;

use angle_models::nn::Init;
use angle_models::weights::write_safetensors;
use angle_models::{LoraSpec, Model, ModelOptions};
use common::{batch, forward, probe};
use safetensors::tensor::Dtype;

/// Writes the model's merged weights as a full checkpoint next to the base's config.
fn write_merged(m: &Model, base: &Path, out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    std::fs::copy(base.join("config.json"), out.join("config.json")).unwrap();
    let tensors = m
        .merged_tensors()
        .into_iter()
        .map(|(n, s, v)| (n, Dtype::F32, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    write_safetensors(&out.join("model.safetensors"), tensors).unwrap();
}

#[test]
fn adapter_gradients_are_the_weight_gradient_through_the_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    for base in common::family_models() {
        let mut lora = common::lora_model(&base);
        assert!(!lora.frozen.is_empty() && lora.buffers.params.len() < lora.frozen.len());
        let vocab = lora.blocks.embeddings.vocab;
        let (ids, offs) = batch(vocab);
        let hidden = forward(&mut lora, &ids, &offs);
        let p = probe(hidden.len());
        lora.zero_grad();
        lora.backward(&p).unwrap();

        let merged_dir = tmp.path().join(base.parent().unwrap().file_name().unwrap());
        write_merged(&lora, &base, &merged_dir);
        let mut full = Model::from_dir(&merged_dir, &ModelOptions::default()).unwrap();
        let h2 = forward(&mut full, &ids, &offs);
        let err = hidden
            .iter()
            .zip(&h2)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            err < 1e-4,
            "{}: merged weights differ from the adapter model by {err}",
            base.display()
        );
        full.zero_grad();
        full.backward(&p).unwrap();

        let mut checked = 0;
        for lin in lora.linears() {
            for ad in &lin.adapters {
                let dw_name = format!("{}.weight", ad.module);
                let dw = &full.buffers.grads[full.vars.get(&dw_name).unwrap().var.range.clone()];
                let (a, b) = (
                    &lora.buffers.params[ad.a.range.clone()],
                    &lora.buffers.params[ad.b.range.clone()],
                );
                let (ga, gb) = (
                    &lora.buffers.grads[ad.a.range.clone()],
                    &lora.buffers.grads[ad.b.range.clone()],
                );
                let (out, inp, r, s) = (ad.cols.len(), lin.in_dim, ad.r, ad.scale as f32);
                // dB[o, k] = s Σ_i dW[o, i] A[k, i];  dA[k, i] = s Σ_o B[o, k] dW[o, i]
                let want_b: Vec<f32> = (0..out * r)
                    .map(|j| {
                        s * (0..inp)
                            .map(|i| dw[(j / r) * inp + i] * a[(j % r) * inp + i])
                            .sum::<f32>()
                    })
                    .collect();
                let want_a: Vec<f32> = (0..r * inp)
                    .map(|j| {
                        s * (0..out)
                            .map(|o| b[o * r + j / inp] * dw[o * inp + j % inp])
                            .sum::<f32>()
                    })
                    .collect();
                for (got, want, what) in [(gb, &want_b, "B"), (ga, &want_a, "A")] {
                    assert!(
                        got.iter().all(|x| x.is_finite()),
                        "{}: {what} not finite",
                        ad.module
                    );
                    let scale = want.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
                    let e = got
                        .iter()
                        .zip(want)
                        .map(|(g, w)| (g - w).abs())
                        .fold(0.0f32, f32::max)
                        / scale;
                    assert!(
                        e < 2e-3,
                        "{}: {} lora_{what} gradient rel err {e:.3e}",
                        base.display(),
                        ad.module
                    );
                }
                checked += 1;
            }
        }
        let linears = lora
            .linears()
            .iter()
            .map(|l| l.out_dim / l.adapters.first().map_or(l.out_dim, |a| a.cols.len()))
            .sum::<usize>();
        assert_eq!(
            checked,
            linears,
            "{}: all-linear adapts every linear module",
            base.display()
        );
        // the base is frozen: only adapters are trainable
        assert_eq!(
            lora.buffers.params.len(),
            lora.vars
                .entries
                .iter()
                .filter(|e| e.init != Init::Checkpoint)
                .map(|e| e.var.len())
                .sum::<usize>()
        );
    }
}

#[test]
fn a_target_that_matches_nothing_is_named() {
    let base = &common::family_models()[0];
    let spec = LoraSpec {
        targets: vec!["q_proj".into()],
        ..Default::default()
    };
    let err = Model::from_dir(
        base,
        &ModelOptions {
            lora: Some(spec),
            frozen: false,
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("q_proj") && err.contains("matches no linear module"),
        "{err}"
    );
}
