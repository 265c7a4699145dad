//! The in-batch-negative softmax over the symmetric similarity matrix `S = τ X̂ X̂ᵀ`, in tiles.
//!
//! Row `i` (when its pair is positive) is a softmax over `S_i·` without its own column (and without columns holding
//! its own text), with target `i ^ 1`. Its gradient is `dX̂ = τ (G + Gᵀ) X̂` with `G_ij = w (p_ij − δ_{j, i^1})`.
//! `S` is symmetric, so only the tiles `(I, J)` with `I ≤ J` are ever computed:
//!
//! 1. pass 1 computes each upper tile by one GEMM and folds it into the running (max, sum of exponentials) of the
//!    rows of `I` and, transposed, of the rows of `J`: a streaming log-sum-exp, exact after the last tile;
//! 2. pass 2 turns each tile into `H = G + Gᵀ` restricted to the tile (both rows' softmaxes are known now) and adds
//!    `τ H X̂_J` into `dX̂_I` and `τ Hᵀ X̂_I` into `dX̂_J`.
//!
//! That is half a GEMM of `n × n × d` for pass 1, half for recomputing the tiles, and one for the products: two in all,
//! against three for the plain row-block form (forward, `G X̂`, `Gᵀ X̂`). Tiles computed in pass 1 are kept for pass 2
//! up to [`TILE_CACHE_ENTRIES`] entries, which saves part of the recomputation for small and medium batches while
//! never holding the whole `n × n` matrix of large ones.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, s};
use rayon::prelude::*;

use crate::Real;

const TILE: usize = 256;
/// Entries of pass-1 tiles kept for pass 2 (64 MiB in `f32`).
pub(crate) const TILE_CACHE_ENTRIES: usize = 1 << 24;
/// Below this many multiply-adds (`n² d / 2`) everything runs on the calling thread.
const PARALLEL_MIN_WORK: usize = 1 << 21;

pub(crate) struct InBatch<'a> {
    /// Per row: whether its pair is positive (then its partner `i ^ 1` is its target).
    pub positive: &'a [bool],
    /// Per row text identities: a row never sees a row holding the same text, except its partner.
    pub ids: Option<&'a [u64]>,
}

impl InBatch<'_> {
    #[inline]
    fn excluded(&self, i: usize, j: usize) -> bool {
        i == j || self.ids.is_some_and(|ids| ids[i] == ids[j] && j != (i ^ 1))
    }
}

/// Running (max, Σ exp(· − max)) of one row's logits.
#[derive(Clone, Copy)]
struct Lse {
    max: f64,
    sum: f64,
    /// The row's target logit, once the tile holding it has been seen (NaN before).
    target: f64,
}

impl Lse {
    const EMPTY: Self = Self {
        max: f64::NEG_INFINITY,
        sum: 0.0,
        target: f64::NAN,
    };

    #[inline]
    fn merge(&mut self, other: Self) {
        if !other.target.is_nan() {
            self.target = other.target;
        }
        if other.max == f64::NEG_INFINITY {
            return;
        }
        if other.max > self.max {
            self.sum = self.sum * (self.max - other.max).exp() + other.sum;
            self.max = other.max;
        } else {
            self.sum += other.sum * (other.max - self.max).exp();
        }
    }
}

/// Returns `Σ_{positive i} (logsumexp_i − S_{i, i^1})` and, when `weight ≠ 0`, adds `weight · d/dX̂` of it into
/// `dxhat`.
pub(crate) fn in_batch_softmax<F: Real>(
    xhat: &ArrayView2<'_, F>,
    rows: &InBatch<'_>,
    tau: f64,
    weight: f64,
    dxhat: &mut Array2<F>,
) -> f64 {
    in_batch_softmax_cached(xhat, rows, tau, weight, dxhat, TILE_CACHE_ENTRIES)
}

fn in_batch_softmax_cached<F: Real>(
    xhat: &ArrayView2<'_, F>,
    rows: &InBatch<'_>,
    tau: f64,
    weight: f64,
    dxhat: &mut Array2<F>,
    cache_entries: usize,
) -> f64 {
    let (n, d) = xhat.dim();
    let nb = n.div_ceil(TILE);
    let tiles: Vec<(usize, usize)> = (0..nb).flat_map(|i| (i..nb).map(move |j| (i, j))).collect();
    let threads = if n * n * d / 2 < PARALLEL_MIN_WORK {
        1
    } else {
        rayon::current_num_threads().clamp(1, tiles.len())
    };
    let per_chunk = tiles.len().div_ceil(threads);
    let cache_per_chunk = cache_entries / (TILE * TILE) / threads;
    let span = |b: usize| b * TILE..((b + 1) * TILE).min(n);
    let tau_f = F::of(tau);
    let tile_of = |bi: usize, bj: usize, out: &mut Array2<F>| {
        let (ri, rj) = (span(bi), span(bj));
        let mut view = out.slice_mut(s![..ri.len(), ..rj.len()]);
        general_mat_mul(
            tau_f,
            &xhat.slice(s![ri, ..]),
            &xhat.slice(s![rj, ..]).t(),
            F::zero(),
            &mut view,
        );
    };

    // Pass 1: streaming log-sum-exp of every row, each thread over its own run of tiles.
    let pass1 = |chunk: &[(usize, usize)]| -> (Vec<Lse>, Vec<Array2<F>>) {
        // stats[i].max/.sum: row i's running log-sum-exp; the target logit S_{i, i^1} is read off the diagonal tile
        // (a row and its partner share a tile), so the loss uses the very numbers the softmax used.
        let mut stats = vec![Lse::EMPTY; n];
        let mut kept = Vec::new();
        let mut scratch = Array2::<F>::zeros((TILE.min(n), TILE.min(n)));
        for (k, &(bi, bj)) in chunk.iter().enumerate() {
            let (ri, rj) = (span(bi), span(bj));
            let keep = k < cache_per_chunk;
            let mut own = if keep {
                Array2::zeros((ri.len(), rj.len()))
            } else {
                Array2::zeros((0, 0))
            };
            let tile = if keep { &mut own } else { &mut scratch };
            tile_of(bi, bj, tile);
            let tv = tile.slice(s![..ri.len(), ..rj.len()]);
            fold_rows(&tv, ri.start, rj.start, rows, &mut stats);
            if bi != bj {
                fold_columns(&tv, ri.start, rj.start, rows, &mut stats);
            } else {
                for i in ri.clone().filter(|&i| rows.positive[i]) {
                    stats[i].target = tv[[i - ri.start, (i ^ 1) - ri.start]].f64();
                }
            }
            if keep {
                kept.push(own);
            }
        }
        (stats, kept)
    };
    let chunks: Vec<&[(usize, usize)]> = tiles.chunks(per_chunk).collect();
    let firsts: Vec<(Vec<Lse>, Vec<Array2<F>>)> = if threads == 1 {
        chunks.iter().map(|c| pass1(c)).collect()
    } else {
        chunks.par_iter().map(|c| pass1(c)).collect()
    };
    let mut lse = vec![0.0f64; n];
    let mut total = 0.0f64;
    for i in (0..n).filter(|&i| rows.positive[i]) {
        let mut acc = Lse::EMPTY;
        for (stats, _) in &firsts {
            acc.merge(stats[i]);
        }
        lse[i] = acc.max + acc.sum.ln();
        total += lse[i] - acc.target;
    }
    if weight == 0.0 {
        return total;
    }

    // Pass 2: H = G + Gᵀ per tile, then the two products, into a per-thread dX̂.
    let lse_f: Vec<F> = lse.iter().map(|&v| F::of(v)).collect();
    let w = F::of(weight);
    let pass2 = |chunk: &[(usize, usize)], kept: Vec<Array2<F>>| -> Array2<F> {
        let mut acc = Array2::<F>::zeros((n, d));
        let mut scratch = Array2::<F>::zeros((TILE.min(n), TILE.min(n)));
        let mut kept = kept.into_iter();
        for (k, &(bi, bj)) in chunk.iter().enumerate() {
            let (ri, rj) = (span(bi), span(bj));
            let mut own = if k < cache_per_chunk { kept.next() } else { None };
            let tile = match own.as_mut() {
                Some(t) => t,
                None => {
                    tile_of(bi, bj, &mut scratch);
                    &mut scratch
                }
            };
            let mut h = tile.slice_mut(s![..ri.len(), ..rj.len()]);
            for (li, mut hrow) in h.rows_mut().into_iter().enumerate() {
                let i = ri.start + li;
                let (pi, li_lse) = (rows.positive[i], F::of(lse[i]));
                for (lj, v) in hrow.iter_mut().enumerate() {
                    let j = rj.start + lj;
                    if rows.excluded(i, j) {
                        *v = F::zero();
                        continue;
                    }
                    let sij = *v;
                    let mut g = F::zero();
                    if pi {
                        g += (sij - li_lse).exp();
                    }
                    // G_ji: the tile stands for both (i, j) and (j, i) of the symmetric S.
                    if rows.positive[j] {
                        g += (sij - lse_f[j]).exp();
                    }
                    // The targets: j = i ^ 1 exactly when i = j ^ 1, and then both rows of the pair share a label.
                    if pi && j == (i ^ 1) {
                        g -= F::one() + F::one();
                    }
                    *v = w * g;
                }
            }
            let hv = h.view();
            if bi == bj {
                // A diagonal tile holds H_II whole: one product.
                let xi = xhat.slice(s![ri.clone(), ..]);
                general_mat_mul(tau_f, &hv, &xi, F::one(), &mut acc.slice_mut(s![ri, ..]));
            } else {
                let xi = xhat.slice(s![ri.clone(), ..]);
                let xj = xhat.slice(s![rj.clone(), ..]);
                general_mat_mul(tau_f, &hv, &xj, F::one(), &mut acc.slice_mut(s![ri, ..]));
                general_mat_mul(tau_f, &hv.t(), &xi, F::one(), &mut acc.slice_mut(s![rj, ..]));
            }
        }
        acc
    };
    type Work<'c, F> = (&'c [(usize, usize)], Vec<Array2<F>>);
    let work: Vec<Work<'_, F>> = chunks
        .into_iter()
        .zip(firsts.into_iter().map(|(_, kept)| kept))
        .collect();
    let accs: Vec<Array2<F>> = if threads == 1 {
        work.into_iter().map(|(c, k)| pass2(c, k)).collect()
    } else {
        work.into_par_iter().map(|(c, k)| pass2(c, k)).collect()
    };
    for a in accs {
        *dxhat += &a;
    }
    total
}

/// Folds a tile's rows (rows `r0..`, columns `c0..`) into the rows' running log-sum-exp.
fn fold_rows<F: Real>(tile: &ArrayView2<'_, F>, r0: usize, c0: usize, rows: &InBatch<'_>, stats: &mut [Lse]) {
    for (li, trow) in tile.rows().into_iter().enumerate() {
        let i = r0 + li;
        if !rows.positive[i] {
            continue;
        }
        let mut max = F::neg_infinity();
        for (lj, &v) in trow.iter().enumerate() {
            if v > max && !rows.excluded(i, c0 + lj) {
                max = v;
            }
        }
        if max == F::neg_infinity() {
            continue;
        }
        let mut sum = 0.0f64;
        for (lj, &v) in trow.iter().enumerate() {
            if !rows.excluded(i, c0 + lj) {
                sum += (v - max).exp().f64();
            }
        }
        stats[i].merge(Lse {
            max: max.f64(),
            sum,
            target: f64::NAN,
        });
    }
}

/// Folds a tile's columns into the running log-sum-exp of the rows they stand for (`S` is symmetric).
fn fold_columns<F: Real>(
    tile: &ArrayView2<'_, F>,
    r0: usize,
    c0: usize,
    rows: &InBatch<'_>,
    stats: &mut [Lse],
) {
    let w = tile.ncols();
    let mut max = vec![F::neg_infinity(); w];
    for (li, trow) in tile.rows().into_iter().enumerate() {
        for (lj, &v) in trow.iter().enumerate() {
            if v > max[lj] && !rows.excluded(c0 + lj, r0 + li) {
                max[lj] = v;
            }
        }
    }
    let mut sum = vec![0.0f64; w];
    for (li, trow) in tile.rows().into_iter().enumerate() {
        for (lj, &v) in trow.iter().enumerate() {
            if max[lj] != F::neg_infinity() && !rows.excluded(c0 + lj, r0 + li) {
                sum[lj] += (v - max[lj]).exp().f64();
            }
        }
    }
    for lj in 0..w {
        let j = c0 + lj;
        if rows.positive[j] && max[lj] != F::neg_infinity() {
            stats[j].merge(Lse {
                max: max[lj].f64(),
                sum: sum[lj],
                target: f64::NAN,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recomputed tiles and kept tiles give the same numbers, over several tiles and with identities.
    #[test]
    fn recomputing_tiles_changes_nothing() {
        let n = 2 * TILE + 70;
        let d = 12;
        let mut s = 7u64;
        let x = Array2::from_shape_fn((n, d), |_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        });
        let norms: Vec<f64> = x.rows().into_iter().map(|r| r.dot(&r).sqrt()).collect();
        let xhat = Array2::from_shape_fn((n, d), |(i, k)| x[[i, k]] / norms[i]);
        let positive: Vec<bool> = (0..n).map(|i| (i / 2) % 3 != 1).collect();
        let ids: Vec<u64> = (0..n as u64).map(|i| i % 101).collect();
        for ids in [None, Some(&ids[..])] {
            let rows = InBatch {
                positive: &positive,
                ids,
            };
            let mut g_kept = Array2::zeros((n, d));
            let mut g_again = Array2::zeros((n, d));
            let a = in_batch_softmax_cached(&xhat.view(), &rows, 20.0, 0.5, &mut g_kept, usize::MAX);
            let b = in_batch_softmax_cached(&xhat.view(), &rows, 20.0, 0.5, &mut g_again, 0);
            assert_eq!(a, b);
            assert_eq!(g_kept, g_again);
        }
    }
}
