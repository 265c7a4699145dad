//! angle-tensor CPU ops at all-MiniLM-L6-v2's training shapes: 64 packed sequences of 8–56 tokens
//! (N = 2,080 tokens, about a 32-pair STS-B step), hidden 384, 12 heads, intermediate 1536.
//! Throughput is GFLOP/s for the products, elements/s for the rest. Threads: rayon's global
//! pool (`RAYON_NUM_THREADS` sets it).
//!
//! `decoder_linear` times the forward products (f32, bf16 and int8 on every kernel present) on a
//! decoder's shapes (Qwen3-0.6B: hidden 1024, intermediate 3072), 1,024 rows.
//!
//! `cargo bench -p angle-benches --bench kernels`
//! (`-- '_forward/(Auto|bf16|int8)'`: the forward products only, f32 against bf16 and int8).

use std::hint::black_box;
use std::time::Duration;

use angle_tensor::cpu::{
    AttentionDropout, GeluKind, GemmBackend, adamw_update, attention_backward, attention_forward,
    attention_probs_len, dropout_forward, embedding_backward, embedding_forward, gelu_backward, gelu_forward,
    layernorm_backward, layernorm_forward, linear_backward, linear_forward, set_gemm_backend,
};
use angle_tensor::cpu::{
    PackedBf16, PackedI8, bf16_kernels_present, int8_kernels_present, linear_backward_bf16_with,
    linear_forward_bf16_with, linear_forward_i8_with,
};
use criterion::{
    BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main, measurement::WallTime,
};

const H: usize = 384;
const HEADS: usize = 12;
const INTER: usize = 1536;

fn data(n: usize, seed: u64) -> Vec<f32> {
    (0..n)
        .map(|i| (angle_tensor::rng::uniform(seed, i as u64) * 2.0 - 1.0) as f32)
        .collect()
}

fn lens() -> Vec<usize> {
    (0..64).map(|b| 8 + (b * 13) % 49).collect()
}

fn offsets() -> Vec<usize> {
    std::iter::once(0)
        .chain(lens().into_iter().scan(0, |a, l| {
            *a += l;
            Some(*a)
        }))
        .collect()
}

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    g
}

/// Every GEMM backend on the linear layers' shapes (forward `inp · Wᵀ`; backward `dout · W` and
/// `doutᵀ · inp`), so one run compares them under the same machine load.
fn linear(c: &mut Criterion) {
    let n = *offsets().last().unwrap();
    let mut g = group(c, "linear");
    for (name, i, o) in [
        ("qkv", H, 3 * H),
        ("attn_out", H, H),
        ("ffn_up", H, INTER),
        ("ffn_down", INTER, H),
    ] {
        let (x, w, b, dy) = (data(n * i, 1), data(o * i, 2), data(o, 3), data(n * o, 4));
        let mut out = vec![0.0f32; n * o];
        let (mut dx, mut dw, mut db) = (vec![0.0f32; n * i], vec![0.0f32; o * i], vec![0.0f32; o]);
        for backend in [GemmBackend::Auto, GemmBackend::Faer, GemmBackend::MatrixMultiply] {
            set_gemm_backend(backend);
            g.throughput(Throughput::Elements((2 * n * i * o) as u64));
            g.bench_function(format!("{name}_forward/{backend:?}"), |bch| {
                bch.iter(|| linear_forward(&mut out, black_box(&x), &w, Some(&b), n, i, o).unwrap())
            });
            g.throughput(Throughput::Elements((4 * n * i * o) as u64));
            g.bench_function(format!("{name}_backward/{backend:?}"), |bch| {
                bch.iter(|| {
                    linear_backward(
                        Some(&mut dx),
                        &mut dw,
                        Some(&mut db),
                        black_box(&dy),
                        &x,
                        &w,
                        n,
                        i,
                        o,
                    )
                    .unwrap()
                })
            });
        }
        set_gemm_backend(GemmBackend::Auto);
        // bf16 products on every kernel this CPU has, beside the f32 ones above (`Auto`)
        let packed = PackedBf16::pack(&w, o, i).unwrap();
        let packed_t = PackedBf16::pack_transposed(&w, o, i).unwrap();
        let (present, absent) = bf16_kernels_present();
        for k in absent {
            eprintln!(
                "bf16 kernel {} not benchmarked: this CPU lacks {}",
                k.name(),
                k.needs()
            );
        }
        for k in present {
            g.throughput(Throughput::Elements((2 * n * i * o) as u64));
            g.bench_function(format!("{name}_forward/bf16-{}", k.name()), |bch| {
                bch.iter(|| {
                    linear_forward_bf16_with(k, &mut out, black_box(&x), &packed, Some(&b), n).unwrap()
                })
            });
            g.throughput(Throughput::Elements((4 * n * i * o) as u64));
            g.bench_function(format!("{name}_backward/bf16-{}", k.name()), |bch| {
                bch.iter(|| {
                    linear_backward_bf16_with(
                        k,
                        &mut dx,
                        &mut dw,
                        Some(&mut db),
                        black_box(&dy),
                        &x,
                        &packed_t,
                        n,
                        i,
                        o,
                    )
                    .unwrap()
                })
            });
        }
        int8_forward(&mut g, name, &x, &w, &b, &mut out, n, i, o);
    }
}

/// int8 forward products (weight quantized once per channel, input rows quantized per call, which the
/// time includes) on every kernel this CPU has; GOP/s counts 2 integer operations per product, as the
/// f32 and bf16 rows count FLOPs.
#[allow(clippy::too_many_arguments)]
fn int8_forward(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    out: &mut [f32],
    n: usize,
    i: usize,
    o: usize,
) {
    let packed = PackedI8::quantize(w, o, i).unwrap();
    let (present, absent) = int8_kernels_present();
    for k in absent {
        eprintln!(
            "int8 kernel {} not benchmarked: this CPU lacks {}",
            k.name(),
            k.needs()
        );
    }
    g.throughput(Throughput::Elements((2 * n * i * o) as u64));
    for k in present {
        g.bench_function(format!("{name}_forward/int8-{}", k.name()), |bch| {
            bch.iter(|| linear_forward_i8_with(k, out, black_box(x), &packed, Some(b), n).unwrap())
        });
    }
}

/// Forward products on a decoder's shapes (Qwen3-0.6B, 1,024 rows): f32 (faer), bf16 and int8 on
/// every kernel present, in one run.
fn decoder_linear(c: &mut Criterion) {
    const ROWS: usize = 1024;
    let mut g = group(c, "decoder_linear");
    for (name, i, o) in [("q", 1024, 2048), ("up", 1024, 3072), ("down", 3072, 1024)] {
        let (x, w, b) = (data(ROWS * i, 1), data(o * i, 2), data(o, 3));
        let mut out = vec![0.0f32; ROWS * o];
        set_gemm_backend(GemmBackend::Auto);
        g.throughput(Throughput::Elements((2 * ROWS * i * o) as u64));
        g.bench_function(format!("{name}_forward/Auto"), |bch| {
            bch.iter(|| linear_forward(&mut out, black_box(&x), &w, Some(&b), ROWS, i, o).unwrap())
        });
        let packed = PackedBf16::pack(&w, o, i).unwrap();
        for k in bf16_kernels_present().0 {
            g.bench_function(format!("{name}_forward/bf16-{}", k.name()), |bch| {
                bch.iter(|| {
                    linear_forward_bf16_with(k, &mut out, black_box(&x), &packed, Some(&b), ROWS).unwrap()
                })
            });
        }
        int8_forward(&mut g, name, &x, &w, &b, &mut out, ROWS, i, o);
    }
}

fn elementwise(c: &mut Criterion) {
    let n = *offsets().last().unwrap();
    let mut g = group(c, "elementwise");
    let (x, w, b, dy) = (data(n * H, 1), data(H, 2), data(H, 3), data(n * H, 4));
    let (mut out, mut mean, mut rstd) = (vec![0.0f32; n * H], vec![0.0f32; n], vec![0.0f32; n]);
    g.throughput(Throughput::Elements((n * H) as u64));
    g.bench_function("layernorm_forward", |bch| {
        bch.iter(|| {
            layernorm_forward(&mut out, &mut mean, &mut rstd, black_box(&x), &w, &b, n, H, 1e-12).unwrap()
        })
    });
    let (mut dx, mut dw, mut db) = (vec![0.0f32; n * H], vec![0.0f32; H], vec![0.0f32; H]);
    g.bench_function("layernorm_backward", |bch| {
        bch.iter(|| {
            layernorm_backward(
                &mut dx,
                &mut dw,
                &mut db,
                black_box(&dy),
                &x,
                &w,
                &mean,
                &rstd,
                n,
                H,
            )
            .unwrap()
        })
    });
    g.bench_function("dropout_forward", |bch| {
        bch.iter(|| dropout_forward(&mut out, black_box(&x), n * H, 0.1, 7).unwrap())
    });
    let ids: Vec<u32> = (0..n).map(|t| ((t * 7919) % 30522) as u32).collect();
    let pos: Vec<u32> = (0..n).map(|t| (t % 64) as u32).collect();
    let typ = vec![0u32; n];
    let (word, posw, typw) = (data(30522 * H, 5), data(512 * H, 6), data(2 * H, 7));
    g.bench_function("embedding_forward", |bch| {
        bch.iter(|| {
            embedding_forward(&mut out, black_box(&ids), &pos, &typ, &word, &posw, &typw, n, H).unwrap()
        })
    });
    let (mut dword, mut dpos, mut dtyp) = (
        vec![0.0f32; 30522 * H],
        vec![0.0f32; 512 * H],
        vec![0.0f32; 2 * H],
    );
    g.bench_function("embedding_backward", |bch| {
        bch.iter(|| {
            embedding_backward(
                &mut dword,
                &mut dpos,
                &mut dtyp,
                black_box(&dy),
                &ids,
                &pos,
                &typ,
                n,
                H,
            )
            .unwrap()
        })
    });
    let (xi, dyi) = (data(n * INTER, 8), data(n * INTER, 9));
    let (mut oi, mut dxi) = (vec![0.0f32; n * INTER], vec![0.0f32; n * INTER]);
    g.throughput(Throughput::Elements((n * INTER) as u64));
    for kind in [GeluKind::Erf, GeluKind::Tanh] {
        g.bench_function(format!("gelu_{kind:?}_forward"), |bch| {
            bch.iter(|| gelu_forward(&mut oi, black_box(&xi), n * INTER, kind).unwrap())
        });
        g.bench_function(format!("gelu_{kind:?}_backward"), |bch| {
            bch.iter(|| gelu_backward(&mut dxi, black_box(&xi), &dyi, n * INTER, kind).unwrap())
        });
    }
    // all-MiniLM-L6-v2 has 22.7 M parameters.
    let np = 22_713_216;
    let (mut p, gr, mut m, mut v) = (data(np, 10), data(np, 11), vec![0.0f32; np], vec![0.0f32; np]);
    g.throughput(Throughput::Elements(np as u64));
    let mut t = 0;
    g.bench_function("adamw_update", |bch| {
        bch.iter(|| {
            t += 1;
            adamw_update(
                &mut p,
                black_box(&gr),
                &mut m,
                &mut v,
                5e-5,
                0.9,
                0.999,
                1e-8,
                0.01,
                t,
            )
            .unwrap()
        })
    });
    // the trainer logs the global gradient norm every step
    g.bench_function("grad_norm", |bch| {
        bch.iter(|| angle_tensor::cpu::grad_norm(black_box(&gr)))
    });
}

fn attention(c: &mut Criterion) {
    let offs = offsets();
    let n = *offs.last().unwrap();
    let plen = attention_probs_len(&offs, HEADS);
    let flops: usize = lens().iter().map(|&l| 4 * l * l * H).sum();
    let qkv = data(n * 3 * H, 1);
    let dy = data(n * H, 2);
    let (mut out, mut probs, mut scratch) = (vec![0.0f32; n * H], vec![0.0f32; plen], vec![0.0f32; plen]);
    let mut dqkv = vec![0.0f32; n * 3 * H];
    let mut g = group(c, "attention");
    g.throughput(Throughput::Elements(flops as u64));
    for dropout in [None, Some(AttentionDropout { p: 0.1, seed: 3 })] {
        let tag = if dropout.is_some() { "_dropout" } else { "" };
        g.bench_function(format!("forward{tag}"), |bch| {
            bch.iter(|| {
                attention_forward(
                    &mut out,
                    &mut probs,
                    &mut scratch,
                    black_box(&qkv),
                    &offs,
                    HEADS,
                    H,
                    dropout,
                )
                .unwrap()
            })
        });
        g.throughput(Throughput::Elements(2 * flops as u64));
        g.bench_function(format!("backward{tag}"), |bch| {
            bch.iter(|| {
                attention_backward(
                    &mut dqkv,
                    &mut scratch,
                    black_box(&dy),
                    &qkv,
                    &probs,
                    &offs,
                    HEADS,
                    H,
                    dropout,
                )
                .unwrap()
            })
        });
        g.throughput(Throughput::Elements(flops as u64));
    }
}

criterion_group!(benches, linear, decoder_linear, attention, elementwise);
criterion_main!(benches);
