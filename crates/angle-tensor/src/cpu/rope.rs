//! Rotary position embedding in Hugging Face's rotate-half convention (LLaMA, Mistral, Qwen).
//!
//! For a head vector `x` of even length `d` (`h = d/2`) at position `p`:
//! `y[i] = x[i]·cos θ_i − x[i+h]·sin θ_i`, `y[i+h] = x[i+h]·cos θ_i + x[i]·sin θ_i`, `θ_i = p · base^(−2i/d)`.
//! The op is a rotation, so backward is the inverse rotation (`docs/decoder.md`). Positions count from 0
//! in each packed sequence; the tables hold `cos θ_i`, `sin θ_i` for `i < h` per position.

use rayon::prelude::*;

use super::Float;
use crate::error::{TensorError, arg_err, check_len};

/// The inverse frequencies `base^(−2i/d)`, `i < d/2`, in f32 as transformers computes them.
pub fn rope_inv_freq(theta: f64, head_dim: usize) -> Vec<f64> {
    (0..head_dim / 2)
        .map(|i| f64::from(1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32)))
        .collect()
}

/// `(cos, sin)` tables `[max_pos, inv_freq.len()]`: the angle `p · f` and its cosine and sine in f32,
/// as transformers' rotary module does whatever the model's dtype (`from_pretrained` keeps `inv_freq`
/// in f32 for bf16 and f16 loads too).
pub fn rope_tables_from<T: Float>(inv_freq: &[f64], max_pos: usize) -> (Vec<T>, Vec<T>) {
    let mut cos = Vec::with_capacity(max_pos * inv_freq.len());
    let mut sin = Vec::with_capacity(max_pos * inv_freq.len());
    for p in 0..max_pos {
        for &f in inv_freq {
            let a = p as f32 * f as f32;
            cos.push(T::of(f64::from(a.cos())));
            sin.push(T::of(f64::from(a.sin())));
        }
    }
    (cos, sin)
}

/// `(cos, sin)` tables `[max_pos, head_dim / 2]` for rope base `theta` (f32 inverse frequencies).
pub fn rope_tables<T: Float>(theta: f64, head_dim: usize, max_pos: usize) -> (Vec<T>, Vec<T>) {
    rope_tables_from(&rope_inv_freq(theta, head_dim), max_pos)
}

fn check<T>(
    op: &'static str,
    x: usize,
    cos: &[T],
    sin: &[T],
    seq_offsets: &[usize],
    n_heads: usize,
    head_dim: usize,
) -> Result<usize, TensorError> {
    if !head_dim.is_multiple_of(2) {
        return Err(arg_err(op, "head_dim", format!("{head_dim} is odd")));
    }
    if seq_offsets.first() != Some(&0) || seq_offsets.windows(2).any(|w| w[1] < w[0]) {
        return Err(arg_err(op, "seq_offsets", "must start at 0 and not decrease"));
    }
    let rows = *seq_offsets.last().unwrap_or(&0);
    check_len(op, "x", x, rows * n_heads * head_dim)?;
    let half = head_dim / 2;
    if cos.len() != sin.len() || (half > 0 && !cos.len().is_multiple_of(half)) {
        return Err(arg_err(
            op,
            "cos/sin",
            "tables must both be [max_pos, head_dim/2]",
        ));
    }
    let max_pos = cos.len().checked_div(half).unwrap_or(usize::MAX);
    if let Some(w) = seq_offsets.windows(2).find(|w| w[1] - w[0] > max_pos) {
        return Err(arg_err(
            op,
            "seq_offsets",
            format!(
                "a sequence of {} tokens exceeds the {max_pos} positions of the tables",
                w[1] - w[0]
            ),
        ));
    }
    Ok(rows)
}

/// Rotates `x[N, n_heads · head_dim]` in place; `inverse` rotates by `−θ` (the backward).
fn rotate<T: Float>(
    x: &mut [T],
    cos: &[T],
    sin: &[T],
    seq_offsets: &[usize],
    n_heads: usize,
    head_dim: usize,
    inverse: bool,
) {
    let half = head_dim / 2;
    let width = n_heads * head_dim;
    if width == 0 {
        return;
    }
    x.par_chunks_mut(width)
        .enumerate()
        .with_min_len(8)
        .for_each(|(r, row)| {
            // the row's index inside its own sequence, found by search rather than a per-call table
            let p = r - seq_offsets[seq_offsets.partition_point(|&o| o <= r) - 1];
            let c = &cos[p * half..(p + 1) * half];
            let s = &sin[p * half..(p + 1) * half];
            for head in row.chunks_exact_mut(head_dim) {
                let (a, b) = head.split_at_mut(half);
                for i in 0..half {
                    let (x1, x2) = (a[i], b[i]);
                    let si = if inverse { -s[i] } else { s[i] };
                    a[i] = x1 * c[i] - x2 * si;
                    b[i] = x2 * c[i] + x1 * si;
                }
            }
        });
}

/// Applies the rotary embedding in place to `x[N, n_heads · head_dim]` (queries or keys of packed
/// sequences); `cos`/`sin` from [`rope_tables`].
pub fn rope_forward<T: Float>(
    x: &mut [T],
    cos: &[T],
    sin: &[T],
    seq_offsets: &[usize],
    n_heads: usize,
    head_dim: usize,
) -> Result<(), TensorError> {
    check("rope_forward", x.len(), cos, sin, seq_offsets, n_heads, head_dim)?;
    rotate(x, cos, sin, seq_offsets, n_heads, head_dim, false);
    Ok(())
}

/// Turns the gradient of the rotated tensor into the gradient of its input, in place (the transpose
/// of a rotation is its inverse). Unlike most backward ops this one overwrites: the rotation is the
/// whole op, so `d` holds `dout` on entry and `dinp` on return.
pub fn rope_backward<T: Float>(
    d: &mut [T],
    cos: &[T],
    sin: &[T],
    seq_offsets: &[usize],
    n_heads: usize,
    head_dim: usize,
) -> Result<(), TensorError> {
    check("rope_backward", d.len(), cos, sin, seq_offsets, n_heads, head_dim)?;
    rotate(d, cos, sin, seq_offsets, n_heads, head_dim, true);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn finite_differences(lens in proptest::collection::vec(1usize..5, 1..4), nh in 1usize..3, half in 1usize..4, seed: u64) {
            let d = 2 * half;
            let offs: Vec<usize> = std::iter::once(0).chain(lens.iter().scan(0, |a, &l| { *a += l; Some(*a) })).collect();
            let rows = *offs.last().unwrap();
            let (cos, sin) = rope_tables::<f64>(10000.0, d, 8);
            let mut r = TestRng::new(seed);
            let (x, g) = (r.vec(rows * nh * d), r.vec(rows * nh * d));
            let f = |x: &[f64]| {
                let mut y = x.to_vec();
                rope_forward(&mut y, &cos, &sin, &offs, nh, d).unwrap();
                dot(&y, &g)
            };
            let mut dx = g.clone();
            rope_backward(&mut dx, &cos, &sin, &offs, nh, d).unwrap();
            assert_close(&dx, &numeric_grad(&x, f), 1e-7);
        }
    }

    #[test]
    fn position_zero_is_identity_and_positions_restart_per_sequence() {
        let (cos, sin) = rope_tables::<f64>(10000.0, 4, 4);
        let x = vec![1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0];
        let mut y = x.clone();
        rope_forward(&mut y, &cos, &sin, &[0, 2, 3], 1, 4).unwrap();
        assert_eq!(&y[0..4], &x[0..4]);
        assert_ne!(&y[4..8], &x[4..8]);
        assert_eq!(&y[8..12], &x[8..12]);
        let a = 1.0f32.cos() as f64;
        assert!((y[4] - (1.0 * a - 3.0 * (1.0f32.sin() as f64))).abs() < 1e-12);
        assert!(rope_forward(&mut y, &cos, &sin, &[0, 5, 3], 1, 4).is_err());
        assert!(rope_forward(&mut y, &cos, &sin, &[0, 2], 1, 4).is_err());
    }
}
