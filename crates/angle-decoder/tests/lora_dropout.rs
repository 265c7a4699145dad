//! LoRA dropout as peft applies it: `lora_B(lora_A(dropout(x))) · scaling`, `nn.Dropout(p)` on the branch's
//! input only, in train mode, kept elements scaled by `1/(1-p)`, one mask per module and step. The
//! fixtures use dropout 0, so these checks stand in for a comparison with PyTorch: the mask's statistics,
//! the branch against an independent computation with the mask held fixed, and the decoder's gradients
//! against finite differences of its own forward with the same seed (the counter RNG regenerates the
//! mask in backward instead of storing it).

mod common;

use angle_decoder::lora::peft_name;
use angle_decoder::{Decoder, DecoderOptions, LoraConfig};
use angle_encoder::Pooling;
use angle_tensor::cpu::{
    LoraShape, dropout_backward, dropout_forward, linear_forward, lora_backward, lora_forward,
};

/// A small deterministic generator in [-1, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.next()).collect()
    }
}

#[test]
fn the_mask_keeps_one_minus_p_and_scales_the_kept() {
    let n = 200_000;
    for p in [0.1f32, 0.25, 0.5] {
        let ones = vec![1.0f32; n];
        let mut out = vec![0.0f32; n];
        dropout_forward(&mut out, &ones, n, p, 1234).unwrap();
        let kept = out.iter().filter(|&&v| v != 0.0).count();
        let rate = kept as f64 / n as f64;
        let sigma = (f64::from(p) * (1.0 - f64::from(p)) / n as f64).sqrt();
        assert!(
            (rate - (1.0 - f64::from(p))).abs() < 5.0 * sigma,
            "p {p}: keep rate {rate}"
        );
        let scale = 1.0 / (1.0 - p);
        assert!(
            out.iter().all(|&v| v == 0.0 || v == scale),
            "p {p}: kept elements are x / (1 - p)"
        );
        // another seed, another mask; the same seed, the same mask
        let mut other = vec![0.0f32; n];
        dropout_forward(&mut other, &ones, n, p, 1235).unwrap();
        assert_ne!(out, other);
        dropout_forward(&mut other, &ones, n, p, 1234).unwrap();
        assert_eq!(out, other);
    }
}

/// The decoder's branch (`dropout_forward` into a scratch, then `lora_forward` on top of the base
/// product; backward regenerates the mask) against `x·Wᵀ + s · (mask⊙x/(1-p))·Aᵀ·Bᵀ` written out, and
/// its gradients against central differences with the mask held fixed.
#[test]
fn branch_with_a_fixed_mask_matches_the_formula_and_finite_differences() {
    let (rows, i, o, r, p, seed) = (5, 6, 4, 3, 0.3f64, 99u64);
    let scale = 2.0 / r as f64;
    let mut g = Lcg(7);
    let (x, w, a, b, dy) = (
        g.vec(rows * i),
        g.vec(o * i),
        g.vec(r * i),
        g.vec(o * r),
        g.vec(rows * o),
    );
    let shape = LoraShape {
        rows,
        in_dim: i,
        out_dim: o,
        r,
        scale,
    };
    let forward = |x: &[f64], a: &[f64], b: &[f64]| {
        let mut y = vec![0.0; rows * o];
        linear_forward(&mut y, x, &w, None, rows, i, o).unwrap();
        let mut xd = vec![0.0; rows * i];
        dropout_forward(&mut xd, x, rows * i, p, seed).unwrap();
        let mut xa = vec![0.0; rows * r];
        lora_forward(&mut y, &mut xa, &xd, a, b, shape).unwrap();
        (y, xa)
    };
    // the mask, exported through the op itself
    let mut mask = vec![0.0; rows * i];
    dropout_forward(&mut mask, &vec![1.0; rows * i], rows * i, p, seed).unwrap();
    let dropped = mask.iter().filter(|&&m| m == 0.0).count();
    assert!(
        dropped > 0 && dropped < rows * i,
        "a mask with both kinds: {dropped}"
    );
    let (y, xa) = forward(&x, &a, &b);
    for t in 0..rows {
        for k in 0..o {
            let base: f64 = (0..i).map(|j| x[t * i + j] * w[k * i + j]).sum();
            let kept = |j: usize| {
                if mask[t * i + j] != 0.0 {
                    x[t * i + j] / (1.0 - p)
                } else {
                    0.0
                }
            };
            let branch: f64 = (0..r)
                .map(|q| b[k * r + q] * (0..i).map(|j| a[q * i + j] * kept(j)).sum::<f64>())
                .sum();
            let want = base + scale * branch;
            assert!(
                (y[t * o + k] - want).abs() < 1e-12,
                "y[{t},{k}] {} vs {want}",
                y[t * o + k]
            );
        }
    }
    // backward as the decoder runs it: the dropped input again, lora_backward, then dropout's backward
    let (mut da, mut db, mut dx) = (vec![0.0; r * i], vec![0.0; o * r], vec![0.0; rows * i]);
    let mut xd = vec![0.0; rows * i];
    dropout_forward(&mut xd, &x, rows * i, p, seed).unwrap();
    let mut dxd = vec![0.0; rows * i];
    let mut dxa = vec![0.0; rows * r];
    lora_backward(
        Some(&mut dxd),
        &mut da,
        &mut db,
        &mut dxa,
        &dy,
        &xd,
        &xa,
        &a,
        &b,
        shape,
    )
    .unwrap();
    dropout_backward(&mut dx, &dxd, rows * i, p, seed).unwrap();
    // the base product's input gradient is not dropped: add dy·W to compare with d/dx of the whole layer
    for t in 0..rows {
        for j in 0..i {
            dx[t * i + j] += (0..o).map(|k| dy[t * o + k] * w[k * i + j]).sum::<f64>();
        }
    }
    let loss = |x: &[f64], a: &[f64], b: &[f64]| -> f64 {
        let (y, _) = forward(x, a, b);
        y.iter().zip(&dy).map(|(y, d)| y * d).sum()
    };
    let numeric = |v: &[f64], f: &dyn Fn(&[f64]) -> f64| -> Vec<f64> {
        let h = 1e-6;
        (0..v.len())
            .map(|k| {
                let (mut up, mut down) = (v.to_vec(), v.to_vec());
                up[k] += h;
                down[k] -= h;
                (f(&up) - f(&down)) / (2.0 * h)
            })
            .collect()
    };
    let close = |got: &[f64], want: &[f64], what: &str| {
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() < 1e-7 * (1.0 + w.abs()), "{what}[{k}]: {g} vs {w}");
        }
    };
    close(&da, &numeric(&a, &|v| loss(&x, v, &b)), "dA");
    close(&db, &numeric(&b, &|v| loss(&x, &a, v)), "dB");
    close(&dx, &numeric(&x, &|v| loss(v, &a, &b)), "dx");
}

fn pooled_loss(dec: &mut Decoder, ids: &[u32], offs: &[usize], seed: Option<u64>, g: &[f32]) -> f64 {
    dec.forward(ids, offs, seed).unwrap();
    let mut out = vec![0.0f32; g.len()];
    dec.pool(&mut out).unwrap();
    out.iter()
        .zip(g)
        .map(|(&o, &g)| f64::from(o) * f64::from(g))
        .sum()
}

/// In the decoder: dropout leaves the base path alone, is on in train mode only, draws one mask per
/// seed, and backward sees the very mask forward drew.
#[test]
fn decoder_lora_dropout_is_peft_s() {
    let ids = [3u32, 17, 5, 42, 8, 9, 11];
    let offs = [0usize, 4, 7];
    for case in common::cases() {
        let lora = LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.25,
            targets: vec!["all-linear".into()],
            seed: 3,
        };
        let opts = DecoderOptions {
            lora: Some(lora),
            pooling: Some(Pooling::Mean),
            ..DecoderOptions::default()
        };
        let mut dec = Decoder::load(case.join("model"), opts).unwrap();
        let what = case.display().to_string();
        let eval = dec.forward(&ids, &offs, None).unwrap().to_vec();
        // B starts at zero, so the branch adds nothing: with dropout on only its input, train = eval exactly
        let train = dec.forward(&ids, &offs, Some(1)).unwrap().to_vec();
        assert_eq!(train, eval, "{what}: dropout reached the base path");
        let mut rng = Lcg(11);
        let nl = dec.config.num_hidden_layers;
        for l in 0..nl {
            for m in 0..7 {
                let rg = dec.entry(&peft_name(l, m, true)).unwrap().range();
                for v in &mut dec.buffers.params[rg] {
                    *v = 0.3 * rng.next() as f32;
                }
            }
        }
        let eval = dec.forward(&ids, &offs, None).unwrap().to_vec();
        let s1 = dec.forward(&ids, &offs, Some(1)).unwrap().to_vec();
        let s1_again = dec.forward(&ids, &offs, Some(1)).unwrap().to_vec();
        let s2 = dec.forward(&ids, &offs, Some(2)).unwrap().to_vec();
        assert_eq!(s1, s1_again, "{what}: a seed is one mask");
        assert_ne!(s1, s2, "{what}: another seed, another mask");
        assert_ne!(s1, eval, "{what}: train mode drops");
        // gradients of Σ pooled ⊙ g at seed 1 against central differences at seed 1
        let h = dec.config.hidden_size;
        let g: Vec<f32> = (0..2 * h).map(|_| rng.next() as f32).collect();
        dec.zero_grad();
        pooled_loss(&mut dec, &ids, &offs, Some(1), &g);
        dec.backward_pooled(&g).unwrap();
        let grads = dec.buffers.grads.clone();
        for name in [
            peft_name(0, 0, false),
            peft_name(0, 4, true),
            peft_name(nl - 1, 6, false),
        ] {
            let rg = dec.entry(&name).unwrap().range();
            let mut idx: Vec<usize> = rg.clone().collect();
            idx.sort_by(|&x, &y| grads[y].abs().total_cmp(&grads[x].abs()));
            assert!(grads[idx[0]].abs() > 1e-2, "{what} {name}: a gradient to check");
            for &k in &idx[..4] {
                let p0 = dec.buffers.params[k];
                let step = 1e-2f32;
                dec.buffers.params[k] = p0 + step;
                let up = pooled_loss(&mut dec, &ids, &offs, Some(1), &g);
                dec.buffers.params[k] = p0 - step;
                let down = pooled_loss(&mut dec, &ids, &offs, Some(1), &g);
                dec.buffers.params[k] = p0;
                let fd = (up - down) / (2.0 * f64::from(step));
                let an = f64::from(grads[k]);
                assert!(
                    (fd - an).abs() <= 2e-2 * an.abs() + 1e-4,
                    "{what} {name}[{}]: backward {an} vs finite difference {fd}",
                    k - rg.start
                );
            }
        }
        // the same gradients under another mask differ: backward follows the forward's seed
        dec.zero_grad();
        pooled_loss(&mut dec, &ids, &offs, Some(2), &g);
        dec.backward_pooled(&g).unwrap();
        assert_ne!(grads, dec.buffers.grads, "{what}");
    }
}
