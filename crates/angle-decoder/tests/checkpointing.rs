//! Gradient checkpointing (`Decoder::checkpointing`): forward keeps each layer's input only and backward
//! recomputes each layer from it with the layer's own dropout seeds, so every gradient equals the plain
//! step's bit for bit (LoRA dropout on, full fine-tuning, bf16 products, BiLLM). What it saves instead is
//! checked in `tests/memory.rs`.

mod common;

use angle_decoder::{Decoder, DecoderOptions, LoraConfig};
use angle_encoder::Precision;

/// Hidden states and every gradient of two steps (the second reusing every buffer the first sized).
fn step(
    dir: &std::path::Path,
    opts: &DecoderOptions,
    precision: Precision,
    ckpt: bool,
) -> (Vec<f32>, Vec<f32>) {
    let mut dec = Decoder::load(dir, opts.clone()).unwrap();
    dec.set_precision(precision).unwrap();
    dec.checkpointing = ckpt;
    let vocab = dec.config.vocab_size as u32;
    let ids: Vec<u32> = (0..17u32).map(|i| (i * 7 + 3) % vocab).collect();
    let offsets = [0, 6, 11, 17];
    let h = dec.config.hidden_size;
    let mut grads = Vec::new();
    let mut hidden = Vec::new();
    // two steps: the second reuses every buffer the first sized
    for seed in [11u64, 12] {
        hidden = dec.forward(&ids, &offsets, Some(seed)).unwrap().to_vec();
        let mut pooled = vec![0.0f32; 3 * h];
        dec.pool(&mut pooled).unwrap();
        let dpooled: Vec<f32> = pooled
            .iter()
            .enumerate()
            .map(|(i, v)| v * 0.5 - (i % 5) as f32 * 0.01)
            .collect();
        dec.backward_pooled(&dpooled).unwrap();
        grads = dec.buffers.grads.clone();
    }
    assert!(grads.iter().all(|g| g.is_finite()));
    (hidden, grads)
}

#[test]
fn checkpointed_gradients_equal_the_plain_step_bit_for_bit() {
    let lora = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.2,
        targets: vec!["all-linear".into()],
        seed: 3,
    };
    let cases = common::cases();
    assert!(!cases.is_empty(), "no decoder fixture cases");
    for case in cases {
        let model = case.join("model");
        let settings = [
            ("LoRA, dropout 0.2", Some(lora.clone()), None, Precision::F32),
            ("full fine-tuning", None, None, Precision::F32),
            (
                "LoRA, BiLLM from layer 1",
                Some(lora.clone()),
                Some(1),
                Precision::F32,
            ),
            ("LoRA, bf16 products", Some(lora.clone()), None, Precision::Bf16),
        ];
        for (what, l, from, precision) in settings {
            let opts = DecoderOptions {
                lora: l,
                bidirectional_from: from,
                ..DecoderOptions::default()
            };
            let (h0, g0) = step(&model, &opts, precision, false);
            let (h1, g1) = step(&model, &opts, precision, true);
            let what = format!("{} ({what})", case.display());
            assert_eq!(h0, h1, "{what}: hidden states");
            assert!(g0.iter().any(|g| *g != 0.0), "{what}: no gradient at all");
            assert_eq!(g0, g1, "{what}: gradients");
        }
    }
}
