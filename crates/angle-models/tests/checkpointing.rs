//! Gradient checkpointing (`Model::checkpointing`): a forward keeps each layer's input only and backward
//! recomputes each layer just before its backward. The gradients are bit for bit the plain step's, dropout
//! on (the counter-based masks are drawn again from the same seeds), with and without LoRA, on every family
//! fixture (`ANGLE_FAMILY_FIXTURES`, default `../shared/fixtures/families`).

mod common;

use angle_encoder::Batch;
use angle_models::{LoraSpec, Model, ModelOptions};

/// Loss `Σ hidden · probe` after one forward with dropout seed 7; its gradients.
fn step(m: &mut Model) -> (Vec<f32>, Vec<f32>) {
    let vocab = m.blocks.embeddings.vocab as u32;
    let ids: Vec<u32> = (0..29u32).map(|i| 2 + (i * 37) % (vocab - 2)).collect();
    let offs = [0usize, 11, 17, 29];
    let batch = Batch {
        input_ids: &ids,
        token_type_ids: None,
        seq_offsets: &offs,
    };
    let hidden = m.forward(&batch, Some(7)).unwrap().to_vec();
    m.zero_grad();
    m.backward(&common::probe(hidden.len())).unwrap();
    (hidden, m.buffers.grads.clone())
}

#[test]
fn checkpointed_gradients_are_the_plain_ones_bit_for_bit() {
    for base in common::family_models() {
        for lora in [
            None,
            Some(LoraSpec {
                r: 4,
                dropout: 0.1,
                ..LoraSpec::default()
            }),
        ] {
            let opts = ModelOptions {
                lora: lora.clone(),
                frozen: false,
            };
            let mut plain = Model::from_dir(&base, &opts).unwrap();
            let mut ckpt = Model::from_dir(&base, &opts).unwrap();
            ckpt.checkpointing = true;
            let (h1, g1) = step(&mut plain);
            let (h2, g2) = step(&mut ckpt);
            assert_eq!(h1, h2, "{}: hidden state", base.display());
            assert!(
                g1 == g2,
                "{} (LoRA {}): gradients differ",
                base.display(),
                lora.is_some()
            );
            assert!(g1.iter().all(|x| x.is_finite()) && g1.iter().any(|&x| x != 0.0));
            // twice in a row: the single recompute state carries nothing over
            let (_, g3) = step(&mut ckpt);
            assert!(g3 == g1);
        }
    }
}
