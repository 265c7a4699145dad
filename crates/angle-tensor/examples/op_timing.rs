//! Quick single-process timing of the elementwise ops and attention (medians of interleaved
//! rounds, so machine load hits every variant alike): `cargo run --release -p angle-tensor
//! --example op_timing`.

use std::time::Instant;

use angle_tensor::cpu::{
    AttentionDropout, GeluKind, attention_backward, attention_forward, attention_probs_len, gelu_backward,
    gelu_forward,
};

fn data(n: usize, seed: u64) -> Vec<f32> {
    (0..n)
        .map(|i| (angle_tensor::rng::uniform(seed, i as u64) * 6.0 - 3.0) as f32)
        .collect()
}

fn main() {
    let lens: Vec<usize> = (0..64).map(|b| 8 + (b * 13) % 49).collect();
    let offs: Vec<usize> = std::iter::once(0)
        .chain(lens.iter().scan(0, |a, &l| {
            *a += l;
            Some(*a)
        }))
        .collect();
    let n = *offs.last().unwrap();
    let (h, heads, inter) = (384, 12, 1536);
    let (x, dy) = (data(n * inter, 1), data(n * inter, 2));
    let (mut o, mut dx) = (vec![0.0f32; n * inter], vec![0.0f32; n * inter]);
    let qkv = data(n * 3 * h, 3);
    let dout = data(n * h, 4);
    let plen = attention_probs_len(&offs, heads);
    let (mut out, mut probs, mut scratch, mut dqkv) = (
        vec![0.0f32; n * h],
        vec![0.0f32; plen],
        vec![0.0f32; plen],
        vec![0.0f32; n * 3 * h],
    );
    let dr = Some(AttentionDropout { p: 0.1, seed: 5 });
    let mut names: Vec<&str> = Vec::new();
    let mut times: Vec<Vec<f64>> = Vec::new();
    for round in 0..15 {
        let mut k = 0;
        let mut time = |name: &'static str, f: &mut dyn FnMut()| {
            let t = Instant::now();
            f();
            let e = t.elapsed().as_secs_f64() * 1e3;
            if round == 0 {
                names.push(name);
                times.push(Vec::new());
            }
            times[k].push(e);
            k += 1;
        };
        time("gelu erf forward", &mut || {
            gelu_forward(&mut o, &x, n * inter, GeluKind::Erf).unwrap()
        });
        time("gelu erf backward", &mut || {
            gelu_backward(&mut dx, &x, &dy, n * inter, GeluKind::Erf).unwrap()
        });
        time("gelu tanh forward", &mut || {
            gelu_forward(&mut o, &x, n * inter, GeluKind::Tanh).unwrap()
        });
        time("gelu tanh backward", &mut || {
            gelu_backward(&mut dx, &x, &dy, n * inter, GeluKind::Tanh).unwrap()
        });
        time("attention forward", &mut || {
            attention_forward(&mut out, &mut probs, &mut scratch, &qkv, &offs, heads, h, None).unwrap()
        });
        time("attention backward", &mut || {
            attention_backward(
                &mut dqkv,
                &mut scratch,
                &dout,
                &qkv,
                &probs,
                &offs,
                heads,
                h,
                None,
            )
            .unwrap()
        });
        time("attention forward dropout", &mut || {
            attention_forward(&mut out, &mut probs, &mut scratch, &qkv, &offs, heads, h, dr).unwrap()
        });
        time("attention backward dropout", &mut || {
            attention_backward(&mut dqkv, &mut scratch, &dout, &qkv, &probs, &offs, heads, h, dr).unwrap()
        });
    }
    println!("N = {n} tokens, {} threads", rayon::current_num_threads());
    for (name, mut t) in names.into_iter().zip(times) {
        t.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("| {name} | {:.2} ms | {:.2} ms |", t[t.len() / 2], t[0]);
    }
}
