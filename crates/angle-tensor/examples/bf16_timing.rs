//! Quick single-process GFLOP/s of the linear layers' products, f32 beside every bf16 kernel this
//! CPU has, on MiniLM's shapes (N = 2,080 tokens) and a decoder's (Qwen3-0.6B: 1024 → 2048 / 3072,
//! 3072 → 1024): medians of interleaved rounds, so machine load hits every variant alike.
//! `cargo run --release -p angle-tensor --example bf16_timing [-- ROUNDS [ROWS]]` (ROWS replaces MiniLM's N, e.g.
//! 906 for the tokens of a 32-pair STS-B step). A last table splits the automatic kernel's backward into its
//! parts: the input gradient's product, packing the activations, and the rest (the weight gradient).

use std::time::Instant;

use angle_tensor::cpu::{
    PackedBf16, bf16_kernel, bf16_kernels_present, linear_accumulate_bf16, linear_backward,
    linear_backward_bf16, linear_backward_bf16_with, linear_forward, linear_forward_bf16_with,
};

fn data(n: usize, seed: u64) -> Vec<f32> {
    (0..n)
        .map(|i| (angle_tensor::rng::uniform(seed, i as u64) * 2.0 - 1.0) as f32)
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(7);
    let minilm_rows: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2080);
    let (kernels, absent) = bf16_kernels_present();
    for k in absent {
        println!("bf16 kernel {} absent: this CPU lacks {}", k.name(), k.needs());
    }
    println!(
        "threads {}; GFLOP/s, median of {rounds} interleaved rounds",
        rayon::current_num_threads()
    );
    let shapes = [
        ("qkv", minilm_rows, 384, 1152),
        ("attn_out", minilm_rows, 384, 384),
        ("ffn_up", minilm_rows, 384, 1536),
        ("ffn_down", minilm_rows, 1536, 384),
        ("dec_q", 4096, 1024, 2048),
        ("dec_up", 4096, 1024, 3072),
        ("dec_down", 4096, 3072, 1024),
    ];
    print!("{:<10} {:>6}", "shape", "dir");
    print!(" {:>9}", "f32");
    for k in &kernels {
        print!(" {:>12}", k.name());
    }
    println!();
    let (mut parts, mut repacks) = (Vec::new(), Vec::new());
    for (name, n, i, o) in shapes {
        let (x, w, b, dy) = (data(n * i, 1), data(o * i, 2), data(o, 3), data(n * o, 4));
        let packed = PackedBf16::pack(&w, o, i).unwrap();
        let packed_t = PackedBf16::pack_transposed(&w, o, i).unwrap();
        let mut out = vec![0.0f32; n * o];
        let (mut dx, mut dw, mut db) = (vec![0.0f32; n * i], vec![0.0f32; o * i], vec![0.0f32; o]);
        let flop = 2.0 * (n * i * o) as f64;
        let time = |f: &mut dyn FnMut()| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        };
        let variants = 1 + kernels.len();
        let (mut fwd, mut bwd) = (vec![Vec::new(); variants], vec![Vec::new(); variants]);
        for _ in 0..rounds {
            fwd[0].push(time(&mut || {
                linear_forward(&mut out, &x, &w, Some(&b), n, i, o).unwrap()
            }));
            bwd[0].push(time(&mut || {
                linear_backward(Some(&mut dx), &mut dw, Some(&mut db), &dy, &x, &w, n, i, o).unwrap()
            }));
            for (v, &k) in kernels.iter().enumerate() {
                fwd[v + 1].push(time(&mut || {
                    linear_forward_bf16_with(k, &mut out, &x, &packed, Some(&b), n).unwrap()
                }));
                bwd[v + 1].push(time(&mut || {
                    linear_backward_bf16_with(k, &mut dx, &mut dw, Some(&mut db), &dy, &x, &packed_t, n, i, o)
                        .unwrap()
                }));
            }
        }
        // repacking the weight (bf16 training does both after every AdamW step)
        let (mut fwd_pack, mut bwd_pack) = (Vec::new(), Vec::new());
        let (mut pf, mut pb) = (PackedBf16::default(), PackedBf16::default());
        for _ in 0..rounds {
            fwd_pack.push(time(&mut || pf.pack_into(&w, o, i).unwrap()));
            bwd_pack.push(time(&mut || pb.pack_transposed_into(&w, o, i).unwrap()));
        }
        repacks.push(format!(
            "{name:<10} {:>8.3} {:>8.3}",
            median(fwd_pack) * 1e3,
            median(bwd_pack) * 1e3
        ));
        // the automatic kernel's backward, part by part
        let (mut dx_t, mut pack_t, mut all_t) = (Vec::new(), Vec::new(), Vec::new());
        let mut inp_packed = PackedBf16::default();
        for _ in 0..rounds {
            dx_t.push(time(&mut || {
                linear_accumulate_bf16(&mut dx, &dy, &packed_t, n).unwrap()
            }));
            pack_t.push(time(&mut || inp_packed.pack_transposed_into(&x, n, i).unwrap()));
            all_t.push(time(&mut || {
                linear_backward_bf16(&mut dx, &mut dw, Some(&mut db), &dy, &x, &packed_t, n, i, o).unwrap()
            }));
        }
        let (dx_ms, pack_ms, all_ms) = (median(dx_t) * 1e3, median(pack_t) * 1e3, median(all_t) * 1e3);
        parts.push(format!(
            "{name:<10} {all_ms:>8.2} {dx_ms:>8.2} {pack_ms:>8.2} {:>8.2}",
            all_ms - dx_ms - pack_ms
        ));
        for (dir, times, f) in [("fwd", fwd, flop), ("bwd", bwd, 2.0 * flop)] {
            print!("{name:<10} {dir:>6}");
            for (v, t) in times.into_iter().enumerate() {
                let w = if v == 0 { 9 } else { 12 };
                print!(" {:>w$.0}", f / median(t) / 1e9);
            }
            println!();
        }
    }
    println!(
        "\n{} kernel backward, ms (median): whole, dx = dy·W, packing x, the rest (dW = dyᵀ·x)",
        bf16_kernel().name()
    );
    for line in parts {
        println!("{line}");
    }
    println!("\nrepacking the weight, ms (median): pack, pack_transposed");
    for line in repacks {
        println!("{line}");
    }
}
