//! The encoder at all-MiniLM-L6-v2's shapes (6 layers, hidden 384, 12 heads, intermediate 1536): an eval
//! forward of 64 texts and one training step (train-mode forward with dropout, mean pooling, backward, AdamW)
//! on 64 texts (32 pairs), with STS-B-like lengths (8 to 24 tokens, 14 on average, packed).
//! Loads `../shared/models/all-MiniLM-L6-v2` (or `ANGLE_MODEL_DIR`); random weights of the same shapes when
//! the model is absent, since the speed does not depend on the values.
//!
//! `cargo bench -p angle-benches --bench encoder`
//! (`cargo xtask bench` measures the full STS-B workloads beside PyTorch.)

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use angle_encoder::{AdamW, BertConfig, Capacity, Encoder, Mode, ParamLayout, Pooler, Pooling, model::Batch};
use criterion::{Criterion, criterion_group, criterion_main};

fn encoder() -> Encoder {
    let dir = std::env::var_os("ANGLE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/models/all-MiniLM-L6-v2")
        });
    Encoder::from_dir(&dir).unwrap_or_else(|_| {
        let cfg = BertConfig::bert(384, 6, 12, 1536, 30522, 512);
        let n = ParamLayout::new(&cfg).total;
        let params = (0..n)
            .map(|i| ((i * 2_654_435_761) % 1000) as f32 * 2e-5 - 1e-2)
            .collect();
        Encoder::from_params(cfg, params).expect("layout-sized buffer")
    })
}

/// 64 texts of 8..=24 tokens: ids, offsets.
fn texts() -> (Vec<u32>, Vec<usize>) {
    let (mut ids, mut offs) = (Vec::new(), vec![0]);
    for t in 0..64usize {
        let len = 8 + (t * 7) % 17;
        ids.push(101);
        ids.extend((1..len - 1).map(|k| 1000 + ((t * 31 + k * 17) % 20000) as u32));
        ids.push(102);
        offs.push(ids.len());
    }
    (ids, offs)
}

fn bench(c: &mut Criterion) {
    let mut enc = encoder();
    let h = enc.config.hidden_size;
    let (ids, offs) = texts();
    let batch = Batch {
        input_ids: &ids,
        token_type_ids: None,
        seq_offsets: &offs,
    };
    let cap = Capacity {
        max_tokens: 64 * 64,
        max_seq_len: 64,
    };
    let mut group = c.benchmark_group(format!("encoder/minilm/64 texts, {} tokens", ids.len()));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));

    let mut eval = enc.activations(cap, Mode::Eval);
    let mut pooler = Pooler::new(Pooling::Mean);
    let mut pooled = vec![0.0f32; 64 * h];
    group.bench_function("forward (eval) + mean pooling", |b| {
        b.iter(|| {
            let hidden = enc.forward(&batch, &mut eval, None).unwrap();
            pooler.forward(&mut pooled, hidden, &offs, h).unwrap();
            black_box(&pooled);
        })
    });

    let mut train = enc.activations(cap, Mode::Train);
    let dpooled: Vec<f32> = (0..64 * h).map(|i| ((i % 13) as f32 - 6.0) * 1e-3).collect();
    let adamw = AdamW {
        lr: 1e-7,
        ..Default::default()
    };
    let mut step = 0u64;
    group.bench_function("train step (forward, pooling, backward, AdamW)", |b| {
        b.iter(|| {
            step += 1;
            let hidden = enc.forward(&batch, &mut train, Some(step)).unwrap();
            pooler.forward(&mut pooled, hidden, &offs, h).unwrap();
            enc.zero_grad();
            pooler.backward(train.dhidden_mut(), &dpooled, &offs, h).unwrap();
            enc.backward(&mut train).unwrap();
            enc.adamw_step(&adamw, step).unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
