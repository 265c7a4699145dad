//! The eigen-decomposition of a small symmetric matrix in `f64` (Householder tridiagonalisation, then the
//! implicit QL iteration with Wilkinson-style shifts), and the left singular vectors of a square matrix from it.
//! Exact to rounding and deterministic: the ESE distillation target needs an SVD that gives the same answer on
//! every call (docs/ese.md).

/// Eigenvalues (descending) and eigenvectors (row `j` of the returned `n × n` buffer is the eigenvector of value
/// `j`) of the symmetric `n × n` row-major matrix `m`. Returns `None` if the iteration does not converge (it
/// always does on finite input in practice).
pub(crate) fn symmetric_eigen(m: &[f64], n: usize) -> Option<(Vec<f64>, Vec<f64>)> {
    debug_assert_eq!(m.len(), n * n);
    if n == 0 {
        return Some((Vec::new(), Vec::new()));
    }
    let mut a = m.to_vec();
    let mut d = vec![0.0f64; n];
    let mut e = vec![0.0f64; n];
    tridiagonalize(&mut a, &mut d, &mut e, n);
    // `a` is now Q (columns); work on its transpose so that each rotation touches two contiguous rows.
    let mut zt = vec![0.0f64; n * n];
    for r in 0..n {
        for c in 0..n {
            zt[c * n + r] = a[r * n + c];
        }
    }
    ql_implicit(&mut d, &mut e, &mut zt, n)?;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| d[j].total_cmp(&d[i]));
    let vals = order.iter().map(|&i| d[i]).collect();
    let mut vecs = vec![0.0f64; n * n];
    for (j, &i) in order.iter().enumerate() {
        vecs[j * n..(j + 1) * n].copy_from_slice(&zt[i * n..(i + 1) * n]);
    }
    Some((vals, vecs))
}

/// Householder reduction of the symmetric `a` to tridiagonal form: `d` the diagonal, `e[i]` the element below
/// the diagonal in row `i` (`e[0] = 0`); `a` is overwritten by the orthogonal `Q` with `Qᵀ A Q` tridiagonal.
fn tridiagonalize(a: &mut [f64], d: &mut [f64], e: &mut [f64], n: usize) {
    for i in (1..n).rev() {
        let l = i - 1;
        let mut h = 0.0;
        if l > 0 {
            let scale: f64 = (0..=l).map(|k| a[i * n + k].abs()).sum();
            if scale == 0.0 {
                e[i] = a[i * n + l];
            } else {
                for k in 0..=l {
                    a[i * n + k] /= scale;
                    h += a[i * n + k] * a[i * n + k];
                }
                let mut f = a[i * n + l];
                let mut g = if f >= 0.0 { -h.sqrt() } else { h.sqrt() };
                e[i] = scale * g;
                h -= f * g;
                a[i * n + l] = f - g;
                f = 0.0;
                for j in 0..=l {
                    a[j * n + i] = a[i * n + j] / h;
                    g = 0.0;
                    for k in 0..=j {
                        g += a[j * n + k] * a[i * n + k];
                    }
                    for k in j + 1..=l {
                        g += a[k * n + j] * a[i * n + k];
                    }
                    e[j] = g / h;
                    f += e[j] * a[i * n + j];
                }
                let hh = f / (h + h);
                for j in 0..=l {
                    let f = a[i * n + j];
                    let g = e[j] - hh * f;
                    e[j] = g;
                    for k in 0..=j {
                        a[j * n + k] -= f * e[k] + g * a[i * n + k];
                    }
                }
            }
        } else {
            e[i] = a[i * n + l];
        }
        d[i] = h;
    }
    d[0] = 0.0;
    e[0] = 0.0;
    for i in 0..n {
        if d[i] != 0.0 {
            for j in 0..i {
                let g: f64 = (0..i).map(|k| a[i * n + k] * a[k * n + j]).sum();
                for k in 0..i {
                    a[k * n + j] -= g * a[k * n + i];
                }
            }
        }
        d[i] = a[i * n + i];
        a[i * n + i] = 1.0;
        for j in 0..i {
            a[j * n + i] = 0.0;
            a[i * n + j] = 0.0;
        }
    }
}

/// Implicit QL on the tridiagonal (`d`, `e` as [`tridiagonalize`] leaves them), accumulating the rotations into
/// the rows of `zt` (row `r` ends as the eigenvector of `d[r]`).
fn ql_implicit(d: &mut [f64], e: &mut [f64], zt: &mut [f64], n: usize) -> Option<()> {
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    for l in 0..n {
        let mut iter = 0;
        loop {
            let mut m = l;
            while m + 1 < n {
                let dd = d[m].abs() + d[m + 1].abs();
                if e[m].abs() <= f64::EPSILON * dd {
                    break;
                }
                m += 1;
            }
            if m == l {
                break;
            }
            iter += 1;
            if iter > 60 {
                return None;
            }
            let mut g = (d[l + 1] - d[l]) / (2.0 * e[l]);
            let mut r = g.hypot(1.0);
            g = d[m] - d[l] + e[l] / (g + r.copysign(g));
            let (mut s, mut c, mut p) = (1.0f64, 1.0f64, 0.0f64);
            let mut early = false;
            let mut i = m;
            while i > l {
                i -= 1;
                let f = s * e[i];
                let b = c * e[i];
                r = f.hypot(g);
                e[i + 1] = r;
                if r == 0.0 {
                    d[i + 1] -= p;
                    e[m] = 0.0;
                    early = true;
                    break;
                }
                s = f / r;
                c = g / r;
                g = d[i + 1] - p;
                r = (d[i] - g) * s + 2.0 * c * b;
                p = s * r;
                d[i + 1] = g + p;
                g = c * r - b;
                let (lo, hi) = zt.split_at_mut((i + 1) * n);
                let zi = &mut lo[i * n..];
                let zi1 = &mut hi[..n];
                for (a, b) in zi.iter_mut().zip(zi1.iter_mut()) {
                    let f = *b;
                    *b = s * *a + c * f;
                    *a = c * *a - s * f;
                }
            }
            if early {
                continue;
            }
            d[l] -= p;
            e[l] = g;
            e[m] = 0.0;
        }
    }
    Some(())
}

/// The leading `k` left singular vectors and singular values of the square `n × n` row-major `a`, from the
/// eigen-decomposition of `a aᵀ`: `u` is `n × k` row-major (column `j` the `j`-th vector, signed so that its
/// largest-magnitude entry is positive), `s` descending.
pub(crate) fn left_singular(a: &[f64], n: usize, k: usize) -> Option<(Vec<f64>, Vec<f64>)> {
    let mut aat = vec![0.0f64; n * n];
    for i in 0..n {
        let ri = &a[i * n..(i + 1) * n];
        for j in i..n {
            let rj = &a[j * n..(j + 1) * n];
            let v: f64 = ri.iter().zip(rj).map(|(x, y)| x * y).sum();
            aat[i * n + j] = v;
            aat[j * n + i] = v;
        }
    }
    let (vals, vecs) = symmetric_eigen(&aat, n)?;
    let mut u = vec![0.0f64; n * k];
    let mut s = Vec::with_capacity(k);
    for j in 0..k {
        let v = &vecs[j * n..(j + 1) * n];
        // the first entry of largest magnitude decides the sign
        let mut best = 0;
        for (i, x) in v.iter().enumerate() {
            if x.abs() > v[best].abs() {
                best = i;
            }
        }
        let sign = if v[best] < 0.0 { -1.0 } else { 1.0 };
        for i in 0..n {
            u[i * k + j] = sign * v[i];
        }
        s.push(vals[j].max(0.0).sqrt());
    }
    Some((u, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64 / (1u64 << 53) as f64) - 0.5
    }

    #[test]
    fn eigen_reconstructs_and_is_orthonormal() {
        for n in [1usize, 2, 3, 7, 40] {
            let mut seed = n as u64;
            let mut m = vec![0.0; n * n];
            for i in 0..n {
                for j in 0..=i {
                    let v = lcg(&mut seed);
                    m[i * n + j] = v;
                    m[j * n + i] = v;
                }
            }
            let (vals, vecs) = symmetric_eigen(&m, n).unwrap();
            for w in vals.windows(2) {
                assert!(w[0] >= w[1]);
            }
            for i in 0..n {
                for j in 0..n {
                    let rec: f64 = (0..n).map(|r| vals[r] * vecs[r * n + i] * vecs[r * n + j]).sum();
                    assert!(
                        (rec - m[i * n + j]).abs() < 1e-12,
                        "n {n} ({i},{j}): {rec} vs {}",
                        m[i * n + j]
                    );
                    let dot: f64 = (0..n).map(|c| vecs[i * n + c] * vecs[j * n + c]).sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((dot - want).abs() < 1e-12);
                }
            }
        }
    }

    #[test]
    fn singular_vectors_are_signed_and_satisfy_a_v_equals_u_s() {
        let n = 12;
        let mut seed = 99;
        let a: Vec<f64> = (0..n * n).map(|_| lcg(&mut seed)).collect();
        let (u, s) = left_singular(&a, n, 5).unwrap();
        for j in 0..5 {
            // v_j = aᵀ u_j / s_j is a unit vector, and a v_j = s_j u_j
            let v: Vec<f64> = (0..n)
                .map(|c| (0..n).map(|r| a[r * n + c] * u[r * 5 + j]).sum::<f64>() / s[j])
                .collect();
            let nv: f64 = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            assert!((nv - 1.0).abs() < 1e-10);
            let col: Vec<f64> = (0..n).map(|r| u[r * 5 + j]).collect();
            let big = col
                .iter()
                .fold(0.0f64, |m, x| if x.abs() > m.abs() { *x } else { m });
            assert!(big > 0.0);
        }
    }
}
