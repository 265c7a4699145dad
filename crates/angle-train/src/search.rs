//! Exact nearest-neighbour search over embeddings: cosine top-k of every query against a corpus, for retrieval
//! evaluation and hard-negative mining.
//!
//! The score matrix is never held whole: queries and corpus are taken in blocks, one block of scores
//! (`query_block × corpus_block`) is one matrix product of normalised rows, and each query keeps a running top-k.
//! Memory is `O(query_block · corpus_block + queries · k)`, whatever the corpus size.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rayon::prelude::*;

use crate::error::{Result, TrainError};

/// One hit: a corpus row and its cosine similarity to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub doc: u32,
    pub score: f32,
}

/// Best first: higher score, then the earlier corpus row (ties are ranked by corpus order, so results do not
/// depend on the block size or the thread count).
fn better(a: &Hit, b: &Hit) -> Ordering {
    a.score.total_cmp(&b.score).then_with(|| b.doc.cmp(&a.doc))
}

/// Heap entry ordered so that `BinaryHeap` (a max-heap) keeps the *worst* kept hit on top.
#[derive(Debug, Clone, Copy)]
struct Worst(Hit);

impl PartialEq for Worst {
    fn eq(&self, other: &Self) -> bool {
        better(&self.0, &other.0) == Ordering::Equal
    }
}
impl Eq for Worst {}
impl PartialOrd for Worst {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Worst {
    fn cmp(&self, other: &Self) -> Ordering {
        better(&other.0, &self.0)
    }
}

/// Block sizes of the search; the defaults hold 1024 × 8192 f32 scores (32 MB) at a time.
#[derive(Debug, Clone, Copy)]
pub struct SearchBlocks {
    pub queries: usize,
    pub corpus: usize,
}

impl Default for SearchBlocks {
    fn default() -> Self {
        SearchBlocks {
            queries: 1024,
            corpus: 8192,
        }
    }
}

/// Scales every `dim`-wide row to unit length in place (zero rows stay zero: their cosine is 0 to everything).
pub fn normalize_rows(x: &mut [f32], dim: usize) {
    x.par_chunks_mut(dim.max(1)).for_each(|row| {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if n > 0.0 {
            row.iter_mut().for_each(|v| *v /= n);
        }
    });
}

/// Offers one row of scores (corpus rows `c0..`) to a query's running top-`k`. Almost every score loses to the
/// worst kept hit once the heap is full, so runs of 16 are first compared with it in one branch-free pass (which
/// the compiler vectorises); only a run holding a contender goes through the filter (a binary search when mining)
/// and the heap. A score equal to the worst kept one loses too: its corpus row comes later.
fn scan(heap: &mut BinaryHeap<Worst>, row: &[f32], c0: usize, k: usize, keep: impl Fn(u32) -> bool) {
    const RUN: usize = 16;
    let mut floor = if heap.len() == k {
        heap.peek().map_or(f32::NEG_INFINITY, |w| w.0.score)
    } else {
        f32::NEG_INFINITY
    };
    for (i, run) in row.chunks(RUN).enumerate() {
        // A NaN score goes on to the exact comparison (which ranks it first, as `total_cmp` does).
        if heap.len() == k && !run.iter().fold(false, |any, &s| any | (s > floor) | s.is_nan()) {
            continue;
        }
        for (j, &score) in run.iter().enumerate() {
            if heap.len() == k && score <= floor {
                continue;
            }
            let hit = Hit {
                doc: (c0 + i * RUN + j) as u32,
                score,
            };
            if !keep(hit.doc) {
                continue;
            }
            if heap.len() < k {
                heap.push(Worst(hit));
            } else if better(&hit, &heap.peek().unwrap().0) == Ordering::Greater {
                heap.pop();
                heap.push(Worst(hit));
            } else {
                continue;
            }
            if heap.len() == k {
                floor = heap.peek().unwrap().0.score;
            }
        }
    }
}

/// The `k` corpus rows most similar (cosine) to each query row, best first. `queries` (`Q × dim`) and `corpus`
/// (`C × dim`) must be normalised rows ([`normalize_rows`]). `keep(q, doc)` filters candidates before they
/// compete (mining leaves a query's own positives out); pass `|_, _| true` for plain search.
pub fn top_k<F>(
    queries: &[f32],
    corpus: &[f32],
    dim: usize,
    k: usize,
    blocks: SearchBlocks,
    keep: F,
) -> Result<Vec<Vec<Hit>>>
where
    F: Fn(usize, u32) -> bool + Sync,
{
    if dim == 0 || !queries.len().is_multiple_of(dim) || !corpus.len().is_multiple_of(dim) {
        return Err(TrainError::Config(format!(
            "search: {} query and {} corpus values are not rows of {dim}",
            queries.len(),
            corpus.len()
        )));
    }
    let (nq, nc) = (queries.len() / dim, corpus.len() / dim);
    if nc > u32::MAX as usize {
        return Err(TrainError::Config(format!(
            "search: {nc} corpus rows (at most 2^32)"
        )));
    }
    if k == 0 || nc == 0 {
        return Ok(vec![Vec::new(); nq]);
    }
    let (bq, bc) = (blocks.queries.max(1), blocks.corpus.max(1));
    let mut heaps: Vec<BinaryHeap<Worst>> = (0..nq).map(|_| BinaryHeap::with_capacity(k + 1)).collect();
    let mut scores = vec![0f32; bq.min(nq) * bc.min(nc)];
    for q0 in (0..nq).step_by(bq) {
        let rows = bq.min(nq - q0);
        let qblock = &queries[q0 * dim..(q0 + rows) * dim];
        for c0 in (0..nc).step_by(bc) {
            let cols = bc.min(nc - c0);
            let s = &mut scores[..rows * cols];
            angle_tensor::cpu::linear_forward(
                s,
                qblock,
                &corpus[c0 * dim..(c0 + cols) * dim],
                None,
                rows,
                dim,
                cols,
            )
            .map_err(|e| TrainError::Config(format!("search: {e}")))?;
            heaps[q0..q0 + rows]
                .par_iter_mut()
                .zip(s.par_chunks(cols))
                .enumerate()
                .for_each(|(r, (heap, row))| scan(heap, row, c0, k, |doc| keep(q0 + r, doc)));
        }
    }
    Ok(heaps
        .into_par_iter()
        .map(|heap| {
            let mut hits: Vec<Hit> = heap.into_iter().map(|w| w.0).collect();
            hits.sort_by(|a, b| better(b, a));
            hits
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute(q: &[f32], c: &[f32], dim: usize, k: usize) -> Vec<Vec<Hit>> {
        q.chunks(dim)
            .map(|qr| {
                let mut hits: Vec<Hit> = c
                    .chunks(dim)
                    .enumerate()
                    .map(|(j, cr)| Hit {
                        doc: j as u32,
                        score: qr.iter().zip(cr).map(|(a, b)| a * b).sum(),
                    })
                    .collect();
                hits.sort_by(|a, b| better(b, a));
                hits.truncate(k);
                hits
            })
            .collect()
    }

    fn lcg(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    #[test]
    fn blocked_search_equals_brute_force_for_any_block_size() {
        let dim = 7;
        let mut q = lcg(23 * dim, 1);
        let mut c = lcg(101 * dim, 2);
        normalize_rows(&mut q, dim);
        normalize_rows(&mut c, dim);
        let want = brute(&q, &c, dim, 10);
        for (bq, bc) in [(1, 1), (5, 17), (23, 101), (64, 1000)] {
            let got = top_k(
                &q,
                &c,
                dim,
                10,
                SearchBlocks {
                    queries: bq,
                    corpus: bc,
                },
                |_, _| true,
            )
            .unwrap();
            for (g, w) in got.iter().zip(&want) {
                let gd: Vec<u32> = g.iter().map(|h| h.doc).collect();
                let wd: Vec<u32> = w.iter().map(|h| h.doc).collect();
                assert_eq!(gd, wd, "blocks {bq} x {bc}");
                for (a, b) in g.iter().zip(w) {
                    assert!((a.score - b.score).abs() < 1e-5);
                }
            }
        }
    }

    #[test]
    fn ties_rank_by_corpus_order_and_filter_applies() {
        // Four identical documents: every score ties, so the order is the corpus order.
        let c = vec![1.0f32, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0];
        let q = vec![1.0f32, 0.0];
        let got = top_k(
            &q,
            &c,
            2,
            3,
            SearchBlocks {
                queries: 1,
                corpus: 2,
            },
            |_, _| true,
        )
        .unwrap();
        assert_eq!(got[0].iter().map(|h| h.doc).collect::<Vec<_>>(), vec![0, 1, 3]);
        let got = top_k(&q, &c, 2, 3, SearchBlocks::default(), |_, d| d != 1).unwrap();
        assert_eq!(got[0].iter().map(|h| h.doc).collect::<Vec<_>>(), vec![0, 3, 4]);
        assert_eq!(got[0][2].score, 1.0);
    }

    #[test]
    fn fewer_documents_than_k_and_bad_shapes() {
        let got = top_k(&[1.0, 0.0], &[0.0, 1.0], 2, 5, SearchBlocks::default(), |_, _| {
            true
        })
        .unwrap();
        assert_eq!(got[0].len(), 1);
        assert!(
            top_k(
                &[1.0, 0.0, 1.0],
                &[0.0, 1.0],
                2,
                5,
                SearchBlocks::default(),
                |_, _| true
            )
            .is_err()
        );
    }
}
