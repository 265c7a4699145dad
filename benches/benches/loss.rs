//! The AnglE objectives, forward + gradient, in f32: each objective and angle-emb's format-A combination
//! (cosine 1 + in-batch negatives 1 + angle 0.02, taus 20, the workload of `../shared/reference/torch-cpu.md`) at
//! 32 pairs × 384, 256 pairs × 1024 and 4096 pairs × 768.
//!
//! `cargo bench -p angle-benches --bench loss`
//!
//! Every timing includes the validation of the input and the allocation of the returned gradient.

use std::hint::black_box;
use std::time::Duration;

use angle_loss::{
    AngleLoss, AngleLossConfig, AnglePooling, ContrastiveLayout, DataFormat, angle_loss, contrastive_loss,
    cosine_loss, in_batch_negative_loss,
};
use criterion::{Criterion, criterion_group, criterion_main};
use ndarray::Array2;

/// Deterministic embeddings in [-1, 1) (an LCG: the numbers only need to be varied).
fn embeddings(rows: usize, dim: usize, seed: u64) -> Array2<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    Array2::from_shape_fn((rows, dim), |_| {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    })
}

/// STS-B-like graded labels in [0, 5] with ties; truncated, about 4 in 5 are in-batch positives.
fn labels(pairs: usize) -> Vec<f32> {
    (0..pairs).map(|k| ((k * 7) % 11) as f32 * 0.5).collect()
}

fn bench_size(c: &mut Criterion, pairs: usize, dim: usize) {
    let mut group = c.benchmark_group(format!("loss/{pairs}x{dim}"));
    if pairs >= 1024 {
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(15));
    }
    let y = embeddings(2 * pairs, dim, pairs as u64);
    let y3 = embeddings(3 * pairs, dim, pairs as u64 + 1);
    let l = labels(pairs);
    let format_a = AngleLoss::new(AngleLossConfig {
        cosine_w: 1.0,
        ..AngleLossConfig::default()
    });

    group.bench_function("cosine", |b| {
        b.iter(|| cosine_loss(black_box(y.view()), &l, 20.0).unwrap())
    });
    group.bench_function("angle", |b| {
        b.iter(|| angle_loss(black_box(y.view()), &l, 20.0, AnglePooling::Sum).unwrap())
    });
    group.bench_function("in_batch_negative", |b| {
        b.iter(|| in_batch_negative_loss(black_box(y.view()), &l, None, 20.0).unwrap())
    });
    group.bench_function("contrastive_qp", |b| {
        b.iter(|| contrastive_loss(black_box(y.view()), ContrastiveLayout::QueryPositive, 20.0).unwrap())
    });
    group.bench_function("contrastive_qpn", |b| {
        b.iter(|| {
            contrastive_loss(
                black_box(y3.view()),
                ContrastiveLayout::QueryPositiveNegative,
                20.0,
            )
            .unwrap()
        })
    });
    group.bench_function("format_a", |b| {
        b.iter(|| {
            format_a
                .compute(DataFormat::A, black_box(y.view()), &l, None)
                .unwrap()
        })
    });
    // Same-run yardstick for a noisy machine: the one GEMM of the similarity matrix X Xᵀ ([2·pairs, dim] times its
    // transpose, ndarray's single-threaded matrixmultiply). PyTorch's in-batch objective costs three of these (forward,
    // and the two products of the backward); ours costs about 1.75 (docs in angle-loss's sym.rs).
    group.bench_function("yardstick_gemm_xxt", |b| {
        b.iter(|| black_box(y.view()).dot(&y.t()))
    });
    group.finish();
}

fn objectives(c: &mut Criterion) {
    bench_size(c, 32, 384);
    bench_size(c, 256, 1024);
    bench_size(c, 4096, 768);
}

criterion_group!(benches, objectives);
criterion_main!(benches);
