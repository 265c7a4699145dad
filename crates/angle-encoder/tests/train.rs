//! Training-mode behaviour: every parameter gets a gradient, dropout is deterministic and vanishes in eval
//! mode, backward matches finite differences (dropout on), and six AdamW steps follow PyTorch's losses.

mod common;

use angle_encoder::{AdamW, Capacity, Encoder, LayerGrad, Mode, Pooler, Pooling, model::Batch};
use angle_loss::{AngleLoss, AngleLossConfig};
use common::{Fixture, model_dir, random_vec, shared, tiny_encoder};
use ndarray::ArrayView2;

fn batch(fx: &Fixture) -> Batch<'_> {
    Batch {
        input_ids: &fx.ids,
        token_type_ids: Some(&fx.type_ids),
        seq_offsets: &fx.seq_offsets,
    }
}

/// An arena exactly the batch's size (tokens, longest sequence).
fn capacity(b: &Batch<'_>) -> Capacity {
    Capacity {
        max_tokens: b.num_tokens(),
        max_seq_len: b.seq_offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(1),
    }
}

/// Forward, then `L = Σ_l Σ w_l ⊙ mean-pool(output of layer l)` over `layers`, and one backward that takes every
/// layer's pooled gradient (`backward_layers`); returns (L, grads).
fn layered_loss_and_grads(
    enc: &mut Encoder,
    b: &Batch<'_>,
    layers: &[(usize, Vec<f32>)],
    seed: Option<u64>,
    with_grad: bool,
) -> (f64, Vec<f32>) {
    let h = enc.config.hidden_size;
    let mut acts = enc.activations(capacity(b), Mode::Train);
    enc.forward(b, &mut acts, seed).unwrap();
    let mut poolers = vec![];
    let mut loss = 0.0f64;
    for (l, w) in layers {
        let mut pooler = Pooler::new(Pooling::Mean);
        let mut pooled = vec![0.0; b.num_seqs() * h];
        pooler
            .forward(&mut pooled, acts.layer_output(*l).unwrap(), b.seq_offsets, h)
            .unwrap();
        loss += pooled.iter().zip(w).map(|(a, b)| (a * b) as f64).sum::<f64>();
        poolers.push(pooler);
    }
    if !with_grad {
        return (loss, vec![]);
    }
    enc.zero_grad();
    let lg: Vec<LayerGrad<'_>> = layers
        .iter()
        .zip(&poolers)
        .map(|((l, w), p)| LayerGrad {
            layer: *l,
            pooler: p,
            dpooled: w,
        })
        .collect();
    enc.backward_layers(&mut acts, &lg).unwrap();
    (loss, enc.buffers.grads.clone())
}

/// Directional finite differences of a loss on the pooled outputs of every layer (embedding output included),
/// dropout on: the gradients injected into the residual stream on the way down are right.
#[test]
fn layer_gradient_injection_matches_finite_differences() {
    let mut enc = tiny_encoder(6);
    enc.config.hidden_dropout_prob = 0.1;
    enc.config.attention_probs_dropout_prob = 0.1;
    let depth = enc.config.num_hidden_layers;
    let ids: Vec<u32> = (0..15).map(|i| (i * 7 % 30) as u32).collect();
    let offs = [0usize, 5, 6, 15];
    let b = Batch {
        input_ids: &ids,
        token_type_ids: None,
        seq_offsets: &offs,
    };
    let layers: Vec<(usize, Vec<f32>)> = (0..=depth)
        .map(|l| (l, random_vec(3 * 16, 40 + l as u64, 1.0)))
        .collect();
    let seed = Some(77);
    let (_, g) = layered_loss_and_grads(&mut enc, &b, &layers, seed, true);
    // the last layer alone through backward_layers equals the classic dhidden path
    let (_, g_last) = layered_loss_and_grads(&mut enc, &b, &layers[depth..], seed, true);
    let (_, g_classic) = loss_and_grads(&mut enc, &b, &layers[depth].1, seed, true);
    assert_eq!(g_last, g_classic);
    let base = enc.buffers.params.clone();
    let eps = 1e-2f32;
    for (k, e) in enc.layout.entries.clone().iter().enumerate() {
        let u = random_vec(e.len(), 300 + k as u64, 1.0);
        let un = u.iter().map(|x| x * x).sum::<f32>().sqrt();
        let analytic: f64 = g[e.range()]
            .iter()
            .zip(&u)
            .map(|(a, b)| (a * b / un) as f64)
            .sum();
        let mut at = |s: f32| {
            enc.buffers.params.copy_from_slice(&base);
            enc.buffers.params[e.range()]
                .iter_mut()
                .zip(&u)
                .for_each(|(p, d)| *p += s * d / un);
            layered_loss_and_grads(&mut enc, &b, &layers, seed, false).0
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
        let tol = 2e-3 * analytic.abs().max(fd.abs()) + 2e-4;
        assert!(
            (fd - analytic).abs() <= tol,
            "{}: finite difference {fd:.6e} vs backward {analytic:.6e}",
            e.name
        );
    }
    // a layer past the depth is an error, not a panic
    let mut acts = enc.activations(capacity(&b), Mode::Train);
    enc.forward(&b, &mut acts, None).unwrap();
    let p = Pooler::new(Pooling::Mean);
    let bad = [LayerGrad {
        layer: depth + 1,
        pooler: &p,
        dpooled: &layers[0].1,
    }];
    assert!(enc.backward_layers(&mut acts, &bad).is_err());
}

#[test]
fn truncated_model_is_the_first_layers() {
    let enc = tiny_encoder(8);
    let small = enc.truncated(1).unwrap();
    assert_eq!(small.config.num_hidden_layers, 1);
    let ids: Vec<u32> = (0..9).map(|i| (i * 5 % 30) as u32).collect();
    let offs = [0usize, 4, 9];
    let b = Batch {
        input_ids: &ids,
        token_type_ids: None,
        seq_offsets: &offs,
    };
    let mut acts = enc.activations(capacity(&b), Mode::Train);
    enc.forward(&b, &mut acts, None).unwrap();
    let want = acts.layer_output(1).unwrap().to_vec();
    let mut acts1 = small.activations(capacity(&b), Mode::Eval);
    let got = small.forward(&b, &mut acts1, None).unwrap();
    assert_eq!(got, &want[..]);
    assert!(enc.truncated(0).is_err());
    assert!(enc.truncated(3).is_err());
    // eval arenas keep only the last layer's output
    assert!(acts1.layer_output(0).is_none() && acts1.layer_output(1).is_some());
}

/// Forward, mean pooling, `L = Σ w ⊙ pooled`, backward; returns (L, grads).
fn loss_and_grads(
    enc: &mut Encoder,
    b: &Batch<'_>,
    w: &[f32],
    seed: Option<u64>,
    with_grad: bool,
) -> (f64, Vec<f32>) {
    let h = enc.config.hidden_size;
    let mut acts = enc.activations(capacity(b), Mode::Train);
    let hidden = enc.forward(b, &mut acts, seed).unwrap();
    let mut pooler = Pooler::new(Pooling::Mean);
    let mut pooled = vec![0.0; b.num_seqs() * h];
    pooler.forward(&mut pooled, hidden, b.seq_offsets, h).unwrap();
    let loss = pooled.iter().zip(w).map(|(a, b)| (a * b) as f64).sum();
    if !with_grad {
        return (loss, vec![]);
    }
    enc.zero_grad();
    pooler.backward(acts.dhidden_mut(), w, b.seq_offsets, h).unwrap();
    enc.backward(&mut acts).unwrap();
    (loss, enc.buffers.grads.clone())
}

#[test]
fn every_parameter_gets_a_finite_nonzero_gradient() {
    let fx = Fixture::load();
    let mut enc = Encoder::from_dir(model_dir()).unwrap();
    let w = random_vec(fx.b * enc.config.hidden_size, 5, 1.0);
    let (_, g) = loss_and_grads(&mut enc, &batch(&fx), &w, Some(11), true);
    for e in &enc.layout.entries {
        let v = &g[e.range()];
        assert!(v.iter().all(|x| x.is_finite()), "{}: non-finite gradient", e.name);
        let n = v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        if e.name.ends_with("attention.self.key.bias") {
            // softmax ignores a shift shared by all keys of a query: zero up to rounding
            assert!(n <= 1e-5, "{}: |grad| {n:.3e} should be ~0", e.name);
        } else {
            assert!(n > 0.0, "{}: zero gradient", e.name);
        }
    }
}

#[test]
fn eval_equals_train_without_dropout_and_seeds_are_deterministic() {
    let fx = Fixture::load();
    let enc = Encoder::from_dir(model_dir()).unwrap();
    let b = batch(&fx);
    let cap = capacity(&b);
    let mut eval = enc.activations(cap, Mode::Eval);
    let e = enc.forward(&b, &mut eval, None).unwrap().to_vec();

    // dropout probabilities 0 in a train-mode forward with a seed: the same numbers, bit for bit
    let mut no_drop = enc.clone();
    no_drop.config.hidden_dropout_prob = 0.0;
    no_drop.config.attention_probs_dropout_prob = 0.0;
    let mut train = no_drop.activations(cap, Mode::Train);
    let t = no_drop.forward(&b, &mut train, Some(3)).unwrap().to_vec();
    assert!(
        e.iter().zip(&t).all(|(a, b)| a.to_bits() == b.to_bits()),
        "eval != train with p = 0"
    );
    let t = enc.forward(&b, &mut train, None).unwrap().to_vec();
    assert!(
        e.iter().zip(&t).all(|(a, b)| a.to_bits() == b.to_bits()),
        "eval != train without dropout"
    );

    // same seed, same result; another seed, another mask
    let d1 = enc.forward(&b, &mut train, Some(42)).unwrap().to_vec();
    let d2 = enc.forward(&b, &mut train, Some(42)).unwrap().to_vec();
    let d3 = enc.forward(&b, &mut train, Some(43)).unwrap().to_vec();
    assert!(d1.iter().zip(&d2).all(|(a, b)| a.to_bits() == b.to_bits()));
    assert!(d1 != d3 && d1 != e);

    // and eval mode refuses dropout
    assert!(enc.forward(&b, &mut eval, Some(1)).is_err());
}

#[test]
fn same_seed_gives_identical_gradients() {
    let mut enc = tiny_encoder(7);
    let ids: Vec<u32> = (0..20).map(|i| (i * 7 % 30) as u32).collect();
    let offs = [0usize, 5, 12, 20];
    let b = Batch {
        input_ids: &ids,
        token_type_ids: None,
        seq_offsets: &offs,
    };
    let w = random_vec(3 * 16, 8, 1.0);
    let (l1, g1) = loss_and_grads(&mut enc, &b, &w, Some(9), true);
    let (l2, g2) = loss_and_grads(&mut enc, &b, &w, Some(9), true);
    assert_eq!(l1.to_bits(), l2.to_bits());
    assert!(g1.iter().zip(&g2).all(|(a, b)| a.to_bits() == b.to_bits()));
}

/// Directional finite differences, one random direction per parameter tensor, dropout on.
#[test]
fn backward_matches_finite_differences_with_dropout() {
    let mut enc = tiny_encoder(4);
    enc.config.hidden_dropout_prob = 0.2;
    enc.config.attention_probs_dropout_prob = 0.2;
    let ids: Vec<u32> = (0..19).map(|i| (i * 11 % 30) as u32).collect();
    let types: Vec<u32> = (0..19).map(|i| (i % 3 == 0) as u32).collect();
    let offs = [0usize, 6, 7, 19];
    let b = Batch {
        input_ids: &ids,
        token_type_ids: Some(&types),
        seq_offsets: &offs,
    };
    let w = random_vec(3 * 16, 12, 1.0);
    let seed = Some(1234);
    let (_, g) = loss_and_grads(&mut enc, &b, &w, seed, true);
    let base = enc.buffers.params.clone();
    let eps = 1e-2f32;
    for (k, e) in enc.layout.entries.clone().iter().enumerate() {
        let u = random_vec(e.len(), 100 + k as u64, 1.0);
        let un = u.iter().map(|x| x * x).sum::<f32>().sqrt();
        let analytic: f64 = g[e.range()]
            .iter()
            .zip(&u)
            .map(|(a, b)| (a * b / un) as f64)
            .sum();
        let mut at = |s: f32| {
            enc.buffers.params.copy_from_slice(&base);
            enc.buffers.params[e.range()]
                .iter_mut()
                .zip(&u)
                .for_each(|(p, d)| *p += s * d / un);
            loss_and_grads(&mut enc, &b, &w, seed, false).0
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
        let tol = 2e-3 * analytic.abs().max(fd.abs()) + 2e-4;
        assert!(
            (fd - analytic).abs() <= tol,
            "{}: finite difference {fd:.6e} vs backward {analytic:.6e}",
            e.name
        );
    }
}

#[test]
fn adamw_steps_follow_pytorch() {
    // ANGLE_ADAMW_STEPS points at another trajectory; its `batch` names the encoder fixture beside it
    let path = std::env::var_os("ANGLE_ADAMW_STEPS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| shared("fixtures/encoder/minilm-adamw-steps.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let hp = &v["hyperparameters"];
    let f = |k: &str| hp[k].as_f64().unwrap_or_else(|| panic!("hyperparameters.{k}"));
    let adamw = AdamW {
        lr: f("lr"),
        beta1: hp["betas"][0].as_f64().unwrap(),
        beta2: hp["betas"][1].as_f64().unwrap(),
        eps: f("eps"),
        weight_decay: f("weight_decay"),
    };
    assert!(hp["grad_clip"].is_null() && hp["schedule"] == "constant");
    let loss_cfg: AngleLossConfig = serde_json::from_value(hp["objective"].clone()).unwrap();
    let loss_fn = AngleLoss::new(loss_cfg);
    let pooling = Pooling::parse(hp["pooling"].as_str().unwrap()).unwrap();
    let want: Vec<f64> = v["losses_before_each_step"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(want.len() as u64, hp["steps"].as_u64().unwrap());

    // the batch is the encoder fixture the file names, beside it (else ANGLE_ENCODER_FIXTURE)
    let name = v["batch"]
        .as_str()
        .unwrap_or_else(|| panic!("{}: no `batch` file name", path.display()));
    let beside = path.parent().unwrap_or(std::path::Path::new(".")).join(name);
    let fx = if beside.exists() {
        Fixture::load_from(beside)
    } else {
        let fx = Fixture::load();
        assert!(
            fx.path.file_name().and_then(|f| f.to_str()) == Some(name),
            "{}: batch {name} is neither beside it nor ANGLE_ENCODER_FIXTURE ({})",
            path.display(),
            fx.path.display()
        );
        fx
    };
    let labels = fx.floats("labels").to_vec();
    let mut enc = Encoder::from_dir(model_dir()).unwrap();
    let h = enc.config.hidden_size;
    let b = batch(&fx);
    let mut acts = enc.activations(capacity(&b), Mode::Train);
    let mut pooler = Pooler::new(pooling);
    let mut pooled = vec![0.0f32; fx.b * h];
    for (step, &want) in want.iter().enumerate() {
        let hidden = enc.forward(&b, &mut acts, None).unwrap();
        pooler.forward(&mut pooled, hidden, b.seq_offsets, h).unwrap();
        let p64: Vec<f64> = pooled.iter().map(|&x| x as f64).collect();
        let out = loss_fn
            .format_a(ArrayView2::from_shape((fx.b, h), &p64).unwrap(), &labels, None)
            .unwrap();
        let rel = (out.loss - want).abs() / want.abs();
        println!(
            "step {}: loss {:.8} vs {want:.8} (rel {rel:.2e})",
            step + 1,
            out.loss
        );
        assert!(
            rel <= 1e-4,
            "step {}: loss {} vs PyTorch {want} (rel {rel:.2e})",
            step + 1,
            out.loss
        );
        let d: Vec<f32> = out.grad.iter().map(|&x| x as f32).collect();
        enc.zero_grad();
        pooler.backward(acts.dhidden_mut(), &d, b.seq_offsets, h).unwrap();
        enc.backward(&mut acts).unwrap();
        enc.adamw_step(&adamw, step as u64 + 1).unwrap();
    }
}
