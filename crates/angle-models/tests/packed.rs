//! int8 and bf16 copies of the weights that do not train (`Model::set_precision`), for every family of
//! `ANGLE_FAMILY_FIXTURES` (default `../shared/fixtures/families`): a model that encodes stays close to its f32
//! hidden states and returns to them bit for bit; a LoRA run on an 8-bit or bf16 base gives adapter gradients
//! close to the f32 base's, every one finite; weights that train are refused.

mod common;

use angle_models::{Model, ModelOptions};
use angle_tensor::Precision;
use common::{batch, forward, probe};

/// Relative L2 distance.
fn rel(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// The bound on the relative L2 distance to f32 of the hidden states and of the adapter gradients.
fn bound(p: Precision) -> f64 {
    match p {
        Precision::Int8 => 5e-2,
        _ => 2e-2,
    }
}

#[test]
fn packed_encoding_is_close_to_f32_and_reversible() {
    for (dir, p) in common::family_models()
        .into_iter()
        .flat_map(|d| [(d.clone(), Precision::Int8), (d, Precision::Bf16)])
    {
        let opts = ModelOptions {
            lora: None,
            frozen: true,
        };
        let mut m = Model::from_dir(&dir, &opts).unwrap();
        let (ids, offs) = batch(m.blocks.embeddings.vocab);
        let f32_hidden = forward(&mut m, &ids, &offs);
        m.set_precision(p).unwrap();
        assert!(m.packed_bytes() > 0, "{}: no {p} copies", dir.display());
        let q = forward(&mut m, &ids, &offs);
        let e = rel(&q, &f32_hidden);
        println!("{}: {p} hidden rel err {e:.3e}", dir.display());
        assert!(
            q.iter().all(|x| x.is_finite()) && e < bound(p) && e > 1e-6,
            "{}: {e}",
            dir.display()
        );
        m.set_precision(Precision::F32).unwrap();
        assert_eq!(m.packed_bytes(), 0);
        assert_eq!(forward(&mut m, &ids, &offs), f32_hidden, "{}", dir.display());
    }
}

#[test]
fn lora_on_a_packed_base_has_close_adapter_gradients() {
    for (dir, p) in common::family_models()
        .into_iter()
        .flat_map(|d| [(d.clone(), Precision::Int8), (d, Precision::Bf16)])
    {
        let grads = |precision: Precision| {
            let mut m = common::lora_model(&dir);
            m.set_precision(precision).unwrap();
            let (ids, offs) = batch(m.blocks.embeddings.vocab);
            let hidden = forward(&mut m, &ids, &offs);
            m.zero_grad();
            m.backward(&probe(hidden.len())).unwrap();
            (hidden, m.buffers.grads.clone())
        };
        let ((h32, g32), (hp, gp)) = (grads(Precision::F32), grads(p));
        assert!(gp.iter().all(|x| x.is_finite()), "{}", dir.display());
        let (eh, eg) = (rel(&hp, &h32), rel(&gp, &g32));
        println!(
            "{}: {p} base: hidden rel err {eh:.3e}, adapter gradients {eg:.3e}",
            dir.display()
        );
        assert!(
            eh < bound(p) && eg < 2.0 * bound(p),
            "{}: hidden {eh}, gradients {eg}",
            dir.display()
        );

        // full fine-tuning trains the linear weights: no copies of them
        let mut full = Model::from_dir(&dir, &ModelOptions::default()).unwrap();
        let e = full.set_precision(p).unwrap_err().to_string();
        assert!(e.contains("--load-kbit 8"), "{e}");
    }
}
