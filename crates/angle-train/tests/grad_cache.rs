//! GradCache (`--grad-cache N`): chunked forward, the objective on every pooled embedding, chunked re-run and
//! backward. Without dropout the gradients equal the one-pass step's (1e-5 relative) for formats A, B and C, on
//! the BERT encoder and on a block family; with dropout, a chunk as large as the batch is the one-pass step bit
//! for bit; a training run with it runs; a chunk of 0 is refused by name.

mod common;

use angle_encoder::{Encoder, Pooling};
use angle_loss::{AngleLoss, AngleLossConfig, DataFormat};
use angle_train::backbone::{Backbone, BertCpu, Packed, Sizes};
use angle_train::grad_cache::GradCache;
use angle_train::{TrainConfig, TrainOptions, train};
use common::{shared, stsb_head, tiny_config, tiny_model};
use ndarray::{ArrayView2, ArrayViewMut2};

/// Twelve sequences of 3..=9 in-vocabulary tokens, packed.
fn batch() -> (Vec<u32>, Vec<usize>) {
    let (mut ids, mut offs) = (vec![], vec![0]);
    for s in 0..12u32 {
        let len = 3 + (s * 5) % 7;
        ids.extend((0..len).map(|t| 100 + (s * 131 + t * 17) % 1300));
        offs.push(ids.len());
    }
    (ids, offs)
}

/// `d loss / d pooled` of `format`'s objective at `pooled`, and the loss.
fn objective(format: DataFormat, pooled: &[f32], h: usize) -> (f32, Vec<f32>) {
    let rows = pooled.len() / h;
    let loss = AngleLoss::new(AngleLossConfig {
        cosine_w: 1.0,
        ibn_w: 1.0,
        angle_w: 0.02,
        ..Default::default()
    });
    let labels: Vec<f32> = (0..rows / 2).map(|i| (i % 3) as f32).collect();
    let mut g = vec![0.0f32; pooled.len()];
    let y = ArrayView2::from_shape((rows, h), pooled).unwrap();
    let mut gv = ArrayViewMut2::from_shape((rows, h), &mut g[..]).unwrap();
    let (l, _) = loss.compute_into(format, y, &labels, None, &mut gv).unwrap();
    (l, g)
}

/// The gradients of one step: one pass (`chunk` None) or GradCache.
fn grads<M: Backbone>(
    model: &mut M,
    grads_of: &dyn Fn(&M) -> Vec<f32>,
    format: DataFormat,
    dropout: Option<u64>,
    chunk: Option<usize>,
) -> (f32, Vec<f32>) {
    let (ids, offs) = batch();
    let packed = Packed {
        input_ids: &ids,
        token_type_ids: &[],
        seq_offsets: &offs,
    };
    let h = model.hidden_size();
    let mut pooled = vec![];
    model.zero_grad().unwrap();
    let loss = match chunk {
        None => {
            model.forward_train(&packed, dropout, &mut pooled).unwrap();
            let (l, g) = objective(format, &pooled, h);
            model.backward(&packed, &g).unwrap();
            l
        }
        Some(n) => {
            let mut gc = GradCache::new(n).unwrap();
            gc.forward(model, &packed, dropout, &mut pooled).unwrap();
            let (l, g) = objective(format, &pooled, h);
            gc.backward(model, &packed, dropout, &g).unwrap();
            l
        }
    };
    (loss, grads_of(model))
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let num = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0, f64::max);
    num / b.iter().map(|x| x.abs() as f64).fold(1e-12, f64::max)
}

fn bert(dir: &std::path::Path) -> BertCpu {
    let mut m = BertCpu::new(Encoder::from_dir(dir).unwrap(), Pooling::Mean);
    m.reserve(Sizes {
        train_seqs: 12,
        embed_seqs: 0,
        max_len: 16,
    })
    .unwrap();
    m
}

fn bert_grads(m: &BertCpu) -> Vec<f32> {
    m.enc.buffers.grads.clone()
}

#[test]
fn without_dropout_grad_cache_is_the_one_pass_step() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_model(tmp.path(), 3);
    for format in [DataFormat::A, DataFormat::B, DataFormat::C] {
        let mut m = bert(&dir);
        let (l1, g1) = grads(&mut m, &bert_grads, format, None, None);
        for chunk in [1, 5, 12] {
            let (l2, g2) = grads(&mut m, &bert_grads, format, None, Some(chunk));
            assert!(
                (l1 - l2).abs() <= 1e-5 * l1.abs(),
                "{format:?} chunk {chunk}: loss {l1} vs {l2}"
            );
            let e = rel(&g2, &g1);
            assert!(e <= 1e-5, "{format:?} chunk {chunk}: gradient rel err {e:.3e}");
        }
    }
}

#[test]
fn with_dropout_one_chunk_is_the_one_pass_step_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_model(tmp.path(), 4);
    let mut m = bert(&dir);
    let (l1, g1) = grads(&mut m, &bert_grads, DataFormat::A, Some(99), None);
    let (l2, g2) = grads(&mut m, &bert_grads, DataFormat::A, Some(99), Some(12));
    assert_eq!((l1, &g1), (l2, &g2));
    // several chunks: other masks, but a finite gradient of the objective the first pass saw
    let (l3, g3) = grads(&mut m, &bert_grads, DataFormat::A, Some(99), Some(4));
    assert!(l3.is_finite() && g3.iter().all(|x| x.is_finite()) && g3 != g1);
}

#[test]
fn a_block_family_with_grad_cache_is_its_one_pass_step() {
    let model = shared("fixtures/families/electra-cls/model");
    let load = || {
        let (m, _) =
            angle_train::blocks::load_blocks(&model, Some(Pooling::Mean), None, None, false).unwrap();
        m
    };
    let grads_of = |m: &angle_train::blocks::BlocksCpu| m.model.buffers.grads.clone();
    let mut m = load();
    let (_, g1) = grads(&mut m, &grads_of, DataFormat::A, None, None);
    let (_, g2) = grads(&mut m, &grads_of, DataFormat::A, None, Some(5));
    let e = rel(&g2, &g1);
    assert!(e <= 1e-5, "gradient rel err {e:.3e}");
}

#[test]
fn a_run_with_grad_cache_trains_and_a_zero_chunk_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 5);
    let data = stsb_head(tmp.path(), "train", 16, "train.csv");
    let cfg = |out: &str, gc: Option<usize>| TrainConfig {
        grad_cache: gc,
        dropout: false,
        batch_size: 8,
        max_steps: Some(2),
        ..tiny_config(&model, &data, None, &tmp.path().join(out))
    };
    let plain = train(cfg("plain", None), None, &TrainOptions::default()).unwrap();
    let cached = train(cfg("cached", Some(3)), None, &TrainOptions::default()).unwrap();
    assert_eq!((plain.steps, cached.steps), (2, 2));
    let last_loss = |out: &str| -> f64 {
        let text = std::fs::read_to_string(tmp.path().join(out).join("metrics.jsonl")).unwrap();
        let v: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        v.iter()
            .rev()
            .find_map(|r| r.get("loss").and_then(|x| x.as_f64()))
            .unwrap()
    };
    let (a, b) = (last_loss("plain"), last_loss("cached"));
    assert!((a - b).abs() <= 1e-4 * a.abs(), "step losses {a} vs {b}");
    let err = train(cfg("zero", Some(0)), None, &TrainOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("--grad-cache 0"), "{err}");
}
