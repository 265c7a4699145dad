//! Parity of the Espresso (ESE) objective with `../shared/fixtures/ese/minilm-ese-mean.safetensors` (override
//! with `ANGLE_ESE_FIXTURE`, model with `ANGLE_MODEL_DIR`): every layer's pooled output, every loss part, the loss,
//! every `grad.pooled.<l>` and every saved parameter gradient, from one forward and one backward that takes the
//! gradients of all layers' pooled outputs (`Encoder::backward_layers`). Pooling, maxlen, the compression size and
//! the temperature come from the fixture's metadata; so do the base objective's weights.

mod common;

use std::path::PathBuf;

use angle_encoder::{Capacity, Encoder, LayerGrad, Mode, Pooler, Pooling, model::Batch};
use angle_loss::{AngleLoss, AngleLossConfig, AnglePooling, DataFormat, EseConfig, ese_loss};
use common::{Fixture, model_dir, rel_l2, shared};
use ndarray::{ArrayView2, ArrayViewMut2};

fn ese_fixture() -> Fixture {
    let path = std::env::var_os("ANGLE_ESE_FIXTURE")
        .map(PathBuf::from)
        .unwrap_or_else(|| shared("fixtures/ese/minilm-ese-mean.safetensors"));
    Fixture::load_from(path)
}

/// `key X` in the objective description; a weight the description leaves out is 0 (the objective has no such term).
fn objective_weight(fx: &Fixture, key: &str) -> f64 {
    let text = fx.meta("objective");
    let words: Vec<&str> = text
        .split(|c: char| c == ',' || c == ':' || c == '(' || c == ')' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect();
    words
        .windows(2)
        .find(|w| w[0] == key)
        .map(|w| {
            w[1].parse()
                .unwrap_or_else(|_| panic!("objective `{text}`: `{key}` is not followed by a number"))
        })
        .unwrap_or(0.0)
}

fn rel(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        a.abs()
    } else {
        (a - b).abs() / b.abs()
    }
}

#[test]
fn minilm_ese_matches_pytorch_reference() {
    let fx = ese_fixture();
    let mut enc = Encoder::from_dir(model_dir()).unwrap();
    let h = enc.config.hidden_size;
    let depth = enc.config.num_hidden_layers;
    let pooling = Pooling::parse(fx.meta("pooling")).expect("fixture pooling");
    let maxlen: usize = fx.meta("maxlen").parse().unwrap();
    let k: usize = fx.meta("ese_compression_size").parse().unwrap();
    let temperature: f64 = fx.meta("ese_kl_temperature").parse().unwrap();
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
        max_seq_len: longest,
    };
    let mut acts = enc.activations(cap, Mode::Train);
    enc.forward(&batch, &mut acts, None).unwrap();

    // every layer's pooled output, against the fixture's
    let mut poolers: Vec<Pooler> = (0..=depth).map(|_| Pooler::new(pooling)).collect();
    let mut pooled: Vec<Vec<f64>> = Vec::new();
    for (l, pooler) in poolers.iter_mut().enumerate() {
        let mut p = vec![0.0f32; fx.b * h];
        pooler
            .forward(&mut p, acts.layer_output(l).unwrap(), &fx.seq_offsets, h)
            .unwrap();
        let p64: Vec<f64> = p.iter().map(|&x| x as f64).collect();
        let want = fx.floats(&format!("pooled.{l}"));
        let err = p64
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        println!("pooled.{l} max abs err {err:.3e}");
        assert!(err <= 1e-4, "pooled.{l} max abs err {err:.3e} > 1e-4");
        pooled.push(p64);
    }

    // the objective on our pooled outputs (layers 1..=n)
    let tau = objective_weight(&fx, "taus");
    assert!(tau > 0.0, "fixture objective names no `taus`");
    let base = AngleLoss::new(AngleLossConfig {
        cosine_w: objective_weight(&fx, "cosine_w"),
        ibn_w: objective_weight(&fx, "ibn_w"),
        angle_w: objective_weight(&fx, "angle_w"),
        cosine_tau: tau,
        ibn_tau: tau,
        angle_tau: tau,
        angle_pooling: AnglePooling::Sum,
        ..Default::default()
    });
    let labels: Vec<f64> = fx.floats("labels").to_vec();
    let objective = |y: ArrayView2<'_, f64>, g: &mut ArrayViewMut2<'_, f64>| {
        base.compute_into(DataFormat::A, y, &labels, None, g)
            .map(|(l, _)| l)
    };
    let views: Vec<ArrayView2<'_, f64>> = pooled[1..]
        .iter()
        .map(|p| ArrayView2::from_shape((fx.b, h), p).unwrap())
        .collect();
    let config = EseConfig {
        compression_size: k,
        kl_temperature: temperature,
    };
    let out = ese_loss(&objective, &config, &views).unwrap();

    let mut failures = vec![];
    let mut part = |name: String, ours: f64| {
        let want = fx.floats(&name)[0];
        let e = rel(ours, want);
        println!("{name}: {ours:.8} vs {want:.8}: rel err {e:.3e}");
        if e > 1e-4 {
            failures.push(format!("{name}: rel err {e:.3e} > 1e-4"));
        }
    };
    part("loss".into(), out.loss);
    part("part.teacher".into(), out.parts.teacher);
    part("part.teacher_slim".into(), out.parts.teacher_slim);
    part("part.teacher_distill".into(), out.parts.teacher_distill);
    for l in 1..depth {
        part(format!("part.student.{l}"), out.parts.student[l - 1]);
        part(
            format!("part.student_distill.{l}"),
            out.parts.student_distill[l - 1],
        );
    }
    for l in 1..=depth {
        let ours: Vec<f64> = out.grads[l - 1].iter().copied().collect();
        let e = rel_l2(&ours, fx.floats(&format!("grad.pooled.{l}")));
        println!("grad.pooled.{l}: rel err {e:.3e}");
        if e > 1e-3 {
            failures.push(format!("grad.pooled.{l}: rel err {e:.3e} > 1e-3"));
        }
    }
    assert!(
        !fx.tensors.contains_key("grad.pooled.0"),
        "the fixture has a gradient for the embedding output; this test does not expect one"
    );

    // one backward for every layer's pooled gradient
    enc.zero_grad();
    let d32: Vec<Vec<f32>> = out
        .grads
        .iter()
        .map(|g| g.iter().map(|&x| x as f32).collect())
        .collect();
    let layer_grads: Vec<LayerGrad<'_>> = (1..=depth)
        .map(|l| LayerGrad {
            layer: l,
            pooler: &poolers[l],
            dpooled: &d32[l - 1],
        })
        .collect();
    enc.backward_layers(&mut acts, &layer_grads).unwrap();
    let checked =
        common::check_param_grads(&fx, &enc, |name: &str| name.starts_with("pooled."), &mut failures);
    assert!(
        checked >= 5 + 2 * 16,
        "only {checked} gradient tensors in the fixture"
    );
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
}
