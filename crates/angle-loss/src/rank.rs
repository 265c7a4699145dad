//! The CoSENT ranking shared by the cosine and angle objectives:
//! `L = log(1 + Σ_{l_i < l_j} exp(v_i − v_j))` over pair scores `v` and pair labels `l`.
//!
//! The reference builds the `n × n` matrix of differences and masks the unordered entries with `−1e12`; here the
//! pairs are sorted by label once and the sum is taken with running prefix/suffix sums, `O(n log n)` and without any
//! sentinel. Every exponent is shifted by `M = max(0, max_{l_i<l_j} v_i − v_j)` (the log-sum-exp maximum, the `0` being
//! the `1 +` term), so no term exceeds 1 and nothing overflows for any scale.

/// Returns `L` and writes `dL/dv` into `dv`. Labels that compare equal (ties) form no ordered pair; with no ordered
/// pair at all the loss is exactly `log 1 = 0` and the gradient exactly zero.
pub(crate) fn rank_loss(v: &[f64], labels: &[f64], dv: &mut [f64]) -> f64 {
    let n = v.len();
    debug_assert_eq!(labels.len(), n);
    debug_assert_eq!(dv.len(), n);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| labels[a].total_cmp(&labels[b]));
    // Runs of equal labels: a pair is ordered only across runs.
    let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
    let mut start = 0;
    for k in 1..=n {
        if k == n || labels[order[k]] != labels[order[start]] {
            groups.push(start..k);
            start = k;
        }
    }

    // Pass 1: the largest exponent, max over j of (max of v below j's label) − v_j.
    let mut below_max = f64::NEG_INFINITY;
    let mut m = f64::NEG_INFINITY;
    for g in &groups {
        if below_max > f64::NEG_INFINITY {
            for &j in &order[g.clone()] {
                m = m.max(below_max - v[j]);
            }
        }
        for &i in &order[g.clone()] {
            below_max = below_max.max(v[i]);
        }
    }
    let big_m = m.max(0.0);

    // Pass 2, ascending: lower[j] = Σ_{l_i < l_j} exp(v_i − v_j − M), from a running sum of exp(v_i − P) with P the
    // running maximum (rescaled when P grows).
    let mut lower = vec![0.0f64; n];
    let (mut p, mut a) = (f64::NEG_INFINITY, 0.0f64);
    let mut total = 0.0f64;
    for g in &groups {
        if a > 0.0 {
            for &j in &order[g.clone()] {
                let t = a * (p - v[j] - big_m).exp();
                lower[j] = t;
                total += t;
            }
        }
        for &i in &order[g.clone()] {
            if v[i] > p {
                a = a * (p - v[i]).exp() + 1.0;
                p = v[i];
            } else {
                a += (v[i] - p).exp();
            }
        }
    }

    // Pass 3, descending: upper[k] = Σ_{l_j > l_k} exp(v_k − v_j − M), with Q the running minimum.
    let denom = (-big_m).exp() + total;
    let (mut q, mut b) = (f64::INFINITY, 0.0f64);
    for g in groups.iter().rev() {
        for &k in &order[g.clone()] {
            let upper = if b > 0.0 {
                b * (v[k] - q - big_m).exp()
            } else {
                0.0
            };
            dv[k] = (upper - lower[k]) / denom;
        }
        for &j in &order[g.clone()] {
            if v[j] < q {
                b = b * (v[j] - q).exp() + 1.0;
                q = v[j];
            } else {
                b += (q - v[j]).exp();
            }
        }
    }
    big_m + denom.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(v: &[f64], l: &[f64]) -> (f64, Vec<f64>) {
        let n = v.len();
        let mut s = 1.0;
        let mut g = vec![0.0; n];
        for i in 0..n {
            for j in 0..n {
                if l[i] < l[j] {
                    s += (v[i] - v[j]).exp();
                }
            }
        }
        for i in 0..n {
            for j in 0..n {
                if l[i] < l[j] {
                    let e = (v[i] - v[j]).exp() / s;
                    g[i] += e;
                    g[j] -= e;
                }
            }
        }
        (s.ln(), g)
    }

    #[test]
    fn matches_the_quadratic_sum() {
        let v = [0.3, -1.2, 2.5, 0.3, 4.0, -0.7, 1.1];
        let l = [1.0, 0.0, 2.0, 1.0, 2.0, 0.5, 1.0];
        let mut g = [0.0; 7];
        let loss = rank_loss(&v, &l, &mut g);
        let (want, want_g) = naive(&v, &l);
        assert!((loss - want).abs() < 1e-12, "{loss} vs {want}");
        for k in 0..7 {
            assert!((g[k] - want_g[k]).abs() < 1e-12);
        }
    }

    #[test]
    fn huge_scores_do_not_overflow() {
        let v = [4000.0, -4000.0, 10.0];
        let l = [0.0, 1.0, 2.0];
        let mut g = [0.0; 3];
        let loss = rank_loss(&v, &l, &mut g);
        // Dominated by the pair (0, 1): v_0 − v_1 = 8000.
        assert!((loss - 8000.0).abs() < 1e-9, "{loss}");
        assert!(g.iter().all(|x| x.is_finite()));
        assert!((g[0] - 1.0).abs() < 1e-9 && (g[1] + 1.0).abs() < 1e-9);
    }

    #[test]
    fn ties_only_is_exactly_zero() {
        let mut g = [1.0; 3];
        assert_eq!(rank_loss(&[1.0, 2.0, 3.0], &[2.0, 2.0, 2.0], &mut g), 0.0);
        assert_eq!(g, [0.0; 3]);
    }
}
