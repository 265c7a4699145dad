//! Parity with PyTorch: forward activations, pooled embeddings, the format-A loss and every saved gradient
//! of `minilm-mean-reference.safetensors` (override with `ANGLE_ENCODER_FIXTURE`, model with
//! `ANGLE_MODEL_DIR`). Pooling and max length come from the fixture's metadata.

mod common;

use angle_encoder::{Capacity, Encoder, Mode, Pooler, Pooling, model::Batch};
use angle_loss::{AngleLoss, AngleLossConfig, AnglePooling};
use common::{Fixture, model_dir, rel_l2};
use ndarray::ArrayView2;

#[test]
fn minilm_matches_pytorch_reference() {
    let fx = Fixture::load();
    let mut enc = Encoder::from_dir(model_dir()).unwrap();
    let h = enc.config.hidden_size;
    let pooling = Pooling::parse(fx.meta("pooling")).expect("fixture pooling");
    let maxlen: usize = fx.meta("maxlen").parse().unwrap();
    let longest = fx.seq_offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        longest <= maxlen,
        "fixture sequence of {longest} tokens exceeds its maxlen {maxlen}"
    );

    let batch = Batch {
        input_ids: &fx.ids,
        token_type_ids: Some(&fx.type_ids),
        seq_offsets: &fx.seq_offsets,
    };
    let cap = Capacity {
        max_tokens: fx.ids.len(),
        max_seq_len: maxlen,
    };
    let mut acts = enc.activations(cap, Mode::Train);
    let hidden = enc.forward(&batch, &mut acts, None).unwrap().to_vec();

    // last_hidden_state on unmasked tokens
    let lhs = fx.floats("last_hidden_state");
    let mut max_err = 0.0f64;
    for (k, &(b, t)) in fx.rows.iter().enumerate() {
        let r = &lhs[(b * fx.t + t) * h..][..h];
        for (x, y) in hidden[k * h..(k + 1) * h].iter().zip(r) {
            max_err = max_err.max((*x as f64 - y).abs());
        }
    }
    println!("last_hidden_state max abs err {max_err:.3e}");
    assert!(
        max_err <= 2e-4,
        "last_hidden_state max abs err {max_err:.3e} > 2e-4"
    );

    // pooled
    let mut pooler = Pooler::new(pooling);
    let mut pooled = vec![0.0f32; fx.b * h];
    pooler.forward(&mut pooled, &hidden, &fx.seq_offsets, h).unwrap();
    let pooled64: Vec<f64> = pooled.iter().map(|&x| x as f64).collect();
    let ref_pooled = fx.floats("pooled");
    let perr = pooled64
        .iter()
        .zip(ref_pooled)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    println!("pooled max abs err {perr:.3e}");
    assert!(perr <= 1e-4, "pooled max abs err {perr:.3e} > 1e-4");

    // format-A loss on our pooled embeddings
    let tau = fx.objective_value("taus");
    let loss_fn = AngleLoss::new(AngleLossConfig {
        cosine_w: fx.objective_value("cosine_w"),
        ibn_w: fx.objective_value("ibn_w"),
        angle_w: fx.objective_value("angle_w"),
        cosine_tau: tau,
        ibn_tau: tau,
        angle_tau: tau,
        angle_pooling: AnglePooling::Sum,
        ..Default::default()
    });
    let labels: Vec<f64> = fx.floats("labels").to_vec();
    let out = loss_fn
        .format_a(
            ArrayView2::from_shape((fx.b, h), &pooled64).unwrap(),
            &labels,
            None,
        )
        .unwrap();
    let ref_loss = fx.floats("loss")[0];
    let lerr = (out.loss - ref_loss).abs() / ref_loss.abs();
    println!("loss {} vs {ref_loss}: rel err {lerr:.3e}", out.loss);
    assert!(lerr <= 1e-4, "loss rel err {lerr:.3e} > 1e-4");
    let dpooled: Vec<f64> = out.grad.iter().copied().collect();
    let gp = rel_l2(&dpooled, fx.floats("grad.pooled"));
    println!("grad.pooled rel err {gp:.3e}");
    assert!(gp <= 1e-3, "grad.pooled rel err {gp:.3e}");

    // backward from our loss gradient
    enc.zero_grad();
    let dpooled32: Vec<f32> = dpooled.iter().map(|&x| x as f32).collect();
    pooler
        .backward(acts.dhidden_mut(), &dpooled32, &fx.seq_offsets, h)
        .unwrap();
    enc.backward(&mut acts).unwrap();

    let mut failures = vec![];
    let checked = common::check_param_grads(&fx, &enc, |name: &str| name == "pooled", &mut failures);
    assert!(
        checked >= 5 + 2 * 16,
        "only {checked} gradient tensors in the fixture"
    );
    assert!(
        failures.is_empty(),
        "gradient mismatches:\n{}",
        failures.join("\n")
    );
}

/// The fixture holds token ids only: decoding them and re-encoding the text with the model's
/// `tokenizer.json` (our tokenisation: no fixed padding, truncation at the fixture's maxlen) gives them back.
/// `[UNK]` (the fixture has Chinese rows the English vocabulary lacks) is kept as text so that it re-encodes
/// to itself; `[CLS]`/`[SEP]` are dropped before decoding and re-added by the encoder.
#[test]
fn fixture_token_ids_are_ours() {
    let fx = Fixture::load();
    let maxlen: usize = fx.meta("maxlen").parse().unwrap();
    let tok = angle_data::TextTokenizer::from_file(model_dir(), maxlen).unwrap();
    for (b, w) in fx.seq_offsets.windows(2).enumerate() {
        let ids = &fx.ids[w[0]..w[1]];
        let text = tok.inner().decode(&ids[1..ids.len() - 1], false).unwrap();
        let ours = tok.encode(&text).unwrap();
        assert_eq!(ours.ids, ids, "row {b}: {text:?}");
        assert_eq!(ours.type_ids, &fx.type_ids[w[0]..w[1]], "row {b}: token types");
    }
}
