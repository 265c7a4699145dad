//! int8 weights on the blocks (`Model::set_int8`), for every family of `ANGLE_FAMILY_FIXTURES` (default
//! `../shared/fixtures/families`): a model that encodes stays close to its f32 hidden states and returns to
//! them bit for bit; a LoRA run on an 8-bit base gives adapter gradients close to the f32 base's, every one
//! finite; weights that train are refused.

mod common;

use angle_models::nn::Init;
use angle_models::{LoraSpec, Model, ModelOptions};
use common::{batch, forward, probe};

/// Relative L2 distance.
fn rel(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

#[test]
fn int8_encoding_is_close_to_f32_and_reversible() {
    for dir in common::family_models() {
        let opts = ModelOptions {
            lora: None,
            frozen: true,
        };
        let mut m = Model::from_dir(&dir, &opts).unwrap();
        let (ids, offs) = batch(m.blocks.embeddings.vocab);
        let f32_hidden = forward(&mut m, &ids, &offs);
        m.set_int8(true).unwrap();
        assert!(m.int8_bytes() > 0, "{}: no int8 copies", dir.display());
        let q = forward(&mut m, &ids, &offs);
        let e = rel(&q, &f32_hidden);
        println!("{}: int8 hidden rel err {e:.3e}", dir.display());
        assert!(
            q.iter().all(|x| x.is_finite()) && e < 5e-2 && e > 1e-6,
            "{}: {e}",
            dir.display()
        );
        m.set_int8(false).unwrap();
        assert_eq!(m.int8_bytes(), 0);
        assert_eq!(forward(&mut m, &ids, &offs), f32_hidden, "{}", dir.display());
    }
}

#[test]
fn lora_on_an_int8_base_has_close_adapter_gradients() {
    for dir in common::family_models() {
        let spec = LoraSpec {
            r: 3,
            alpha: 6.0,
            dropout: 0.0,
            targets: vec!["all-linear".into()],
            seed: 5,
        };
        let opts = ModelOptions {
            lora: Some(spec),
            frozen: false,
        };
        let grads = |int8: bool| {
            let mut m = Model::from_dir(&dir, &opts).unwrap();
            // B starts at zero (peft): give it values so that every product is exercised
            for e in m.vars.entries.iter().filter(|e| e.init == Init::Zero) {
                for (i, x) in m.buffers.params[e.var.range.clone()].iter_mut().enumerate() {
                    *x = ((i * 31 % 17) as f32 - 8.0) * 0.01;
                }
            }
            m.set_int8(int8).unwrap();
            let (ids, offs) = batch(m.blocks.embeddings.vocab);
            let hidden = forward(&mut m, &ids, &offs);
            m.zero_grad();
            m.backward(&probe(hidden.len())).unwrap();
            (hidden, m.buffers.grads.clone())
        };
        let ((h32, g32), (h8, g8)) = (grads(false), grads(true));
        assert!(g8.iter().all(|x| x.is_finite()), "{}", dir.display());
        let (eh, eg) = (rel(&h8, &h32), rel(&g8, &g32));
        println!(
            "{}: 8-bit base: hidden rel err {eh:.3e}, adapter gradients {eg:.3e}",
            dir.display()
        );
        assert!(
            eh < 5e-2 && eg < 1e-1,
            "{}: hidden {eh}, gradients {eg}",
            dir.display()
        );

        // full fine-tuning trains the linear weights: no int8 copies of them
        let mut full = Model::from_dir(&dir, &ModelOptions::default()).unwrap();
        let e = full.set_int8(true).unwrap_err().to_string();
        assert!(e.contains("--load-kbit 8"), "{e}");
    }
}
