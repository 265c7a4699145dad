//! Test helpers: a tiny deterministic RNG and finite differences.

use crate::rng;

pub(crate) struct TestRng {
    seed: u64,
    i: u64,
}

impl TestRng {
    pub(crate) fn new(seed: u64) -> Self {
        Self { seed, i: 0 }
    }
    /// Uniform in [-1, 1).
    pub(crate) fn next(&mut self) -> f64 {
        self.i += 1;
        rng::uniform(self.seed, self.i) * 2.0 - 1.0
    }
    pub(crate) fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.next()).collect()
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.i += 1;
        (rng::bits(self.seed, self.i) % n as u64) as usize
    }
}

/// Max abs difference relative to the max magnitude of `want` (and 1).
#[track_caller]
pub(crate) fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "length");
    let scale = want.iter().fold(1.0f64, |s, x| s.max(x.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * scale,
            "element {i}: got {g}, want {w} (tol {tol} x scale {scale})"
        );
    }
}

/// Central-difference gradient of `f` at `x`.
pub(crate) fn numeric_grad(x: &[f64], mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    let h = 1e-6;
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let x0 = xp[i];
            xp[i] = x0 + h;
            let fp = f(&xp);
            xp[i] = x0 - h;
            let fm = f(&xp);
            xp[i] = x0;
            (fp - fm) / (2.0 * h)
        })
        .collect()
}

pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `after - before`: what a backward that adds contributed.
pub(crate) fn added(after: &[f64], before: &[f64]) -> Vec<f64> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}
