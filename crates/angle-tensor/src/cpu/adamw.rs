//! AdamW on flat buffers, as `torch.optim.AdamW` (decoupled weight decay, bias-corrected
//! moments, `amsgrad=False`), and global gradient-norm clipping.

use std::ops::Range;

use rayon::prelude::*;

use super::Float;
use super::simd::multiversion;
use crate::error::{TensorError, arg_err, check_len};

const CHUNK: usize = 1 << 14;

/// One AdamW step `t` (1-based) over all parameters:
/// `p -= lr·wd·p; m = β1 m + (1-β1) g; v = β2 v + (1-β2) g²;
///  p -= (lr / (1-β1^t)) · m / (√v / √(1-β2^t) + eps)` (PyTorch's order of operations).
pub fn adamw_update<T: Float>(
    params: &mut [T],
    grads: &[T],
    m: &mut [T],
    v: &mut [T],
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    t: u64,
) -> Result<(), TensorError> {
    adamw_update_masked(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, &[], t)
}

/// [`adamw_update`] with no weight decay on the index ranges `no_decay` (sorted, disjoint): the two
/// parameter groups of the Hugging Face Trainer, whose second group (biases, norm weights) has
/// `weight_decay = 0`. With `weight_decay = 0` the result is bit-identical to [`adamw_update`].
pub fn adamw_update_masked<T: Float>(
    params: &mut [T],
    grads: &[T],
    m: &mut [T],
    v: &mut [T],
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    no_decay: &[Range<usize>],
    t: u64,
) -> Result<(), TensorError> {
    const OP: &str = "adamw_update";
    let n = params.len();
    check_len(OP, "grads", grads.len(), n)?;
    check_len(OP, "m", m.len(), n)?;
    check_len(OP, "v", v.len(), n)?;
    check_ranges(OP, no_decay, n)?;
    if t == 0 {
        return Err(arg_err(OP, "t", "steps count from 1"));
    }
    if !(0.0..1.0).contains(&beta1) || !(0.0..1.0).contains(&beta2) {
        return Err(arg_err(
            OP,
            "beta",
            format!("betas ({beta1}, {beta2}) must lie in [0, 1)"),
        ));
    }
    let ti = i32::try_from(t).unwrap_or(i32::MAX);
    let bc1 = 1.0 - beta1.powi(ti);
    let bc2 = 1.0 - beta2.powi(ti);
    let decay = T::of(1.0 - lr * weight_decay);
    let step = T::of(lr / bc1);
    let sqrt_bc2 = T::of(bc2.sqrt());
    let (b1, b2) = (T::of(beta1), T::of(beta2));
    // torch.lerp switches formula at weight 0.5.
    let lerp_low = 1.0 - beta1 < 0.5;
    let k = AdamConsts {
        decay,
        step,
        sqrt_bc2,
        b1,
        b2,
        c1: T::of(1.0 - beta1),
        c2: T::of(1.0 - beta2),
        eps: T::of(eps),
        lerp_low,
    };
    params
        .par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .enumerate()
        .for_each(|(c, ((p, g), (m, v)))| {
            // the chunk in runs of one decay each (ranges are found by search: nothing allocated)
            let base = c * CHUNK;
            let mut r = no_decay.partition_point(|r| r.end <= base);
            let mut at = 0;
            while at < p.len() {
                let (end, decay) = match no_decay.get(r) {
                    Some(nd) if nd.start <= base + at => {
                        r += 1;
                        (nd.end - base, T::one())
                    }
                    Some(nd) => (nd.start - base, k.decay),
                    None => (p.len(), k.decay),
                };
                let end = end.min(p.len());
                let s = at..end;
                adamw_chunk(
                    &mut p[s.clone()],
                    &g[s.clone()],
                    &mut m[s.clone()],
                    &mut v[s],
                    decay,
                    &k,
                );
                at = end;
            }
        });
    Ok(())
}

fn check_ranges(op: &'static str, ranges: &[Range<usize>], n: usize) -> Result<(), TensorError> {
    let mut prev = 0;
    for r in ranges {
        if r.start < prev || r.end < r.start || r.end > n {
            return Err(arg_err(
                op,
                "no_decay",
                format!("ranges must be sorted, disjoint and within the {n} parameters; got {r:?}"),
            ));
        }
        prev = r.end;
    }
    Ok(())
}

/// The step's scalars, in `T`.
struct AdamConsts<T> {
    decay: T,
    step: T,
    sqrt_bc2: T,
    b1: T,
    b2: T,
    c1: T,
    c2: T,
    eps: T,
    /// torch.lerp switches formula at weight 0.5.
    lerp_low: bool,
}

multiversion! {
    /// One chunk of the update, compiled for AVX-512/AVX2/baseline (the sqrt and division
    /// vectorise; the results are bit-identical across versions).
    fn adamw_chunk<T: Float>(p: &mut [T], g: &[T], m: &mut [T], v: &mut [T], decay: T, k: &AdamConsts<T>) {
        // PyTorch's rounding: m.lerp_(g, 1-β1), v.mul_(β2).addcmul_(g, g, 1-β2),
        // p.addcdiv_(m, √v/√bc2 + eps, -step). Two loops so that neither carries a branch.
        let it = p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut());
        if k.lerp_low {
            for (((p, &g), m), v) in it {
                *p *= decay;
                *m = *m + k.c1 * (g - *m);
                *v = *v * k.b2 + k.c2 * (g * g);
                *p += -k.step * (*m / (v.sqrt() / k.sqrt_bc2 + k.eps));
            }
        } else {
            for (((p, &g), m), v) in it {
                *p *= decay;
                *m = g - (g - *m) * k.b1;
                *v = *v * k.b2 + k.c2 * (g * g);
                *p += -k.step * (*m / (v.sqrt() / k.sqrt_bc2 + k.eps));
            }
        }
    }
}

/// Global L2 norm of `grads`, accumulated in f64 in a fixed order (thread-count independent).
pub fn grad_norm<T: Float>(grads: &[T]) -> f64 {
    let partial: Vec<f64> = grads
        .par_chunks(CHUNK)
        .map(|c| {
            let mut s = 0.0;
            sum_squares(c, &mut s);
            s
        })
        .collect();
    partial.iter().sum::<f64>().sqrt()
}

/// Lanes of the sum of squares: independent accumulators, so the loop vectorises and is not
/// bound by the latency of one chain of additions.
const LANES: usize = 8;

multiversion! {
    /// `Σ x²` in f64 over `LANES` interleaved partial sums, combined in a fixed order (the same
    /// result on every CPU and thread count).
    fn sum_squares<T: Float>(x: &[T], out: &mut f64) {
        let mut acc = [0.0f64; LANES];
        let chunks = x.chunks_exact(LANES);
        let tail = chunks.remainder();
        for c in chunks {
            for (a, &g) in acc.iter_mut().zip(c) {
                let g = g.as_f64();
                *a += g * g;
            }
        }
        for (a, &g) in acc.iter_mut().zip(tail) {
            let g = g.as_f64();
            *a += g * g;
        }
        *out = acc.iter().sum();
    }
}

/// `grads *= factor`.
pub fn scale<T: Float>(grads: &mut [T], factor: T) {
    grads
        .par_chunks_mut(CHUNK)
        .for_each(|c| c.iter_mut().for_each(|g| *g *= factor));
}

/// Clips like `torch.nn.utils.clip_grad_norm_`: when the global norm exceeds `max_norm`,
/// scales by `max_norm / (norm + 1e-6)`. Returns the norm before clipping.
pub fn clip_grad_norm<T: Float>(grads: &mut [T], max_norm: f64) -> f64 {
    let norm = grad_norm(grads);
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        scale(grads, T::of(coef));
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_hand_computed_steps() {
        let (lr, b1, b2, eps, wd) = (0.1, 0.9, 0.999, 1e-8, 0.01);
        let mut p = vec![1.0f64, -2.0];
        let (mut m, mut v) = (vec![0.0; 2], vec![0.0; 2]);
        let g = [0.5, -0.25];
        adamw_update(&mut p, &g, &mut m, &mut v, lr, b1, b2, eps, wd, 1).unwrap();
        // Step 1: m̂ = g, v̂ = g², so the update is lr·g/(|g| + eps) = lr·sign(g) (minus eps).
        for i in 0..2 {
            let p0 = [1.0, -2.0][i];
            let want = p0 * (1.0 - lr * wd) - lr * g[i] / (g[i].abs() + eps);
            assert!((p[i] - want).abs() < 1e-15, "{} vs {want}", p[i]);
        }
        // Step 2 with the same gradient, written out.
        let p1 = p.clone();
        adamw_update(&mut p, &g, &mut m, &mut v, lr, b1, b2, eps, wd, 2).unwrap();
        for i in 0..2 {
            let m2 = b1 * (1.0 - b1) * g[i] + (1.0 - b1) * g[i];
            let v2 = b2 * (1.0 - b2) * g[i] * g[i] + (1.0 - b2) * g[i] * g[i];
            let (mh, vh) = (m2 / (1.0 - b1 * b1), v2 / (1.0 - b2 * b2));
            let want = p1[i] * (1.0 - lr * wd) - lr * mh / (vh.sqrt() + eps);
            assert!((p[i] - want).abs() < 1e-14, "{} vs {want}", p[i]);
            assert!((m[i] - m2).abs() < 1e-16 && (v[i] - v2).abs() < 1e-16);
        }
        assert!(adamw_update(&mut p, &g, &mut m, &mut v, lr, b1, b2, eps, wd, 0).is_err());
    }

    /// Ranges skip the decay element by element, across chunk boundaries; weight decay 0 gives the
    /// same bits with or without them.
    #[test]
    fn masked_ranges_skip_the_decay() {
        let n = 2 * CHUNK + 37;
        let no_decay = [
            3..10,
            CHUNK - 4..CHUNK + 6,
            CHUNK + 6..CHUNK + 6,
            2 * CHUNK + 30..n,
        ];
        let (lr, b1, b2, eps) = (0.05, 0.9, 0.999, 1e-8);
        let init: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let g: Vec<f32> = (0..n)
            .map(|i| ((i * 104729) % 777) as f32 / 388.0 - 1.0)
            .collect();
        let run = |wd: f64, ranges: &[Range<usize>]| {
            let (mut p, mut m, mut v) = (init.clone(), vec![0.0; n], vec![0.0; n]);
            for t in 1..=2 {
                adamw_update_masked(&mut p, &g, &mut m, &mut v, lr, b1, b2, eps, wd, ranges, t).unwrap();
            }
            p
        };
        let (all, none, masked) = (run(0.1, &[]), run(0.0, &[]), run(0.1, &no_decay));
        for i in 0..n {
            let skip = no_decay.iter().any(|r| r.contains(&i));
            let want = if skip { none[i] } else { all[i] };
            assert_eq!(
                masked[i].to_bits(),
                want.to_bits(),
                "element {i} (no decay: {skip})"
            );
        }
        assert_ne!(all, none);
        let zero = run(0.0, &no_decay);
        assert!(zero.iter().zip(&none).all(|(a, b)| a.to_bits() == b.to_bits()));
        let (mut p, mut m, mut v) = (init.clone(), vec![0.0; n], vec![0.0; n]);
        let reversed = Range { start: 5, end: 3 };
        for bad in [reversed, 0..n + 1] {
            let bad = std::slice::from_ref(&bad);
            assert!(adamw_update_masked(&mut p, &g, &mut m, &mut v, lr, b1, b2, eps, 0.1, bad, 1).is_err());
        }
        let unsorted = [10..20, 0..5];
        assert!(adamw_update_masked(&mut p, &g, &mut m, &mut v, lr, b1, b2, eps, 0.1, &unsorted, 1).is_err());
    }

    #[test]
    fn norm_and_clip() {
        let mut g = vec![3.0f32, 4.0];
        assert!((grad_norm(&g) - 5.0).abs() < 1e-12);
        assert!((clip_grad_norm(&mut g, 10.0) - 5.0).abs() < 1e-12);
        assert_eq!(g, [3.0, 4.0]);
        clip_grad_norm(&mut g, 1.0);
        assert!((grad_norm(&g) - 1.0).abs() < 1e-5);
    }
}
