//! Hard-negative mining, with the options of sentence-transformers' `mine_hard_negatives`: for each (query,
//! positive) pair, the corpus texts ranked `range_min..range_max` by cosine similarity to the query, minus the
//! query's own positives (every positive of the same query text, and the query itself), minus those within a
//! margin of the positive's score, sampled `top` or `random`. Exact search in blocks ([`crate::search`]).

use std::collections::HashMap;

use crate::error::{Result, TrainError};
use crate::search::{SearchBlocks, top_k};

/// How negatives are picked among the candidates that pass the filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampling {
    /// The most similar candidates.
    Top,
    /// A seeded random choice among all candidates in range.
    Random,
}

#[derive(Debug, Clone)]
pub struct MineOptions {
    /// Skip the `range_min` most similar candidates (often unlabelled positives).
    pub range_min: usize,
    /// Consider candidates up to this rank (exclusive), after the positives are left out.
    pub range_max: usize,
    /// A negative must score below `positive − margin`.
    pub margin: Option<f32>,
    /// A negative must score below `positive · (1 − relative_margin)`.
    pub relative_margin: Option<f32>,
    /// A negative must score at most this (absolute).
    pub max_score: Option<f32>,
    pub num_negatives: usize,
    pub sampling: Sampling,
    pub seed: u64,
}

impl Default for MineOptions {
    /// sentence-transformers' defaults.
    fn default() -> Self {
        MineOptions {
            range_min: 0,
            range_max: 10,
            margin: None,
            relative_margin: None,
            max_score: None,
            num_negatives: 3,
            sampling: Sampling::Top,
            seed: 42,
        }
    }
}

impl MineOptions {
    /// The refusals a user should see before any model loads, each naming its option.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.range_min >= self.range_max {
            return bad(format!(
                "--range-min {} must be below --range-max {}",
                self.range_min, self.range_max
            ));
        }
        if self.num_negatives == 0 {
            return bad("--num-negatives 0: nothing to mine".into());
        }
        if let Some(r) = self.relative_margin.filter(|r| !(0.0..1.0).contains(r)) {
            return bad(format!("--relative-margin {r}: must be in [0, 1)"));
        }
        if self.margin.is_some() && self.relative_margin.is_some() {
            return bad("--margin and --relative-margin: give one of them".into());
        }
        Ok(())
    }
}

/// Texts to mine for, deduplicated into one table: `texts[i]` once each; pairs name rows of it.
#[derive(Debug, Clone, Default)]
pub struct MineTable {
    pub texts: Vec<String>,
    /// (query row, positive row) per input pair, in input order.
    pub pairs: Vec<(u32, u32)>,
    /// How many of `texts` are candidates: positives and `--corpus` texts (queries that are neither are not).
    pub is_candidate: Vec<bool>,
}

impl MineTable {
    fn row(&mut self, index: &mut HashMap<String, u32>, text: &str, candidate: bool) -> u32 {
        let r = *index.entry(text.to_string()).or_insert_with(|| {
            self.texts.push(text.to_string());
            self.is_candidate.push(false);
            (self.texts.len() - 1) as u32
        });
        self.is_candidate[r as usize] |= candidate;
        r
    }

    /// Builds the table from (query, positive) pairs and an optional extra corpus.
    pub fn new(pairs: &[(String, String)], corpus: &[String]) -> Self {
        let mut t = MineTable::default();
        let mut index = HashMap::new();
        for (q, p) in pairs {
            let qr = t.row(&mut index, q, false);
            let pr = t.row(&mut index, p, true);
            t.pairs.push((qr, pr));
        }
        for c in corpus {
            t.row(&mut index, c, true);
        }
        t
    }
}

/// For each input pair, the mined negatives (rows of `table.texts`, best first for `top`). `emb` holds one
/// normalised `dim`-wide row per text of the table. A pair may get fewer than `num_negatives` (never none
/// silently: the caller counts them).
pub fn mine(table: &MineTable, emb: &[f32], dim: usize, o: &MineOptions) -> Result<Vec<Vec<u32>>> {
    o.validate()?;
    let candidates: Vec<u32> = (0..table.texts.len() as u32)
        .filter(|&r| table.is_candidate[r as usize])
        .collect();
    if candidates.is_empty() {
        return Err(TrainError::Data("mining: the corpus is empty".into()));
    }
    // Distinct queries, each with every positive it has anywhere in the data.
    let mut qindex: HashMap<u32, usize> = HashMap::new();
    let mut queries: Vec<u32> = Vec::new();
    let mut excluded: Vec<Vec<u32>> = Vec::new();
    for &(q, p) in &table.pairs {
        let i = *qindex.entry(q).or_insert_with(|| {
            queries.push(q);
            excluded.push(vec![q]);
            queries.len() - 1
        });
        excluded[i].push(p);
    }
    let mut cand_of_row = vec![u32::MAX; table.texts.len()];
    for (j, &r) in candidates.iter().enumerate() {
        cand_of_row[r as usize] = j as u32;
    }
    for ex in &mut excluded {
        for r in ex.iter_mut() {
            *r = cand_of_row[*r as usize];
        }
        ex.sort_unstable();
        ex.dedup();
    }
    let gather = |rows: &mut dyn Iterator<Item = u32>| -> Vec<f32> {
        rows.flat_map(|r| emb[r as usize * dim..(r as usize + 1) * dim].iter().copied()).collect()
    };
    let qemb = gather(&mut queries.iter().copied());
    let cemb = gather(&mut candidates.iter().copied());
    let hits = top_k(&qemb, &cemb, dim, o.range_max, SearchBlocks::default(), |q, d| {
        excluded[q].binary_search(&d).is_err()
    })?;
    let dot = |a: u32, b: u32| -> f32 {
        let (a, b) = (a as usize * dim, b as usize * dim);
        emb[a..a + dim].iter().zip(&emb[b..b + dim]).map(|(x, y)| x * y).sum()
    };
    let mut out = Vec::with_capacity(table.pairs.len());
    for (pair, &(q, p)) in table.pairs.iter().enumerate() {
        let pos = dot(q, p);
        let limit = match (o.margin, o.relative_margin) {
            (Some(m), _) => pos - m,
            (_, Some(r)) => pos * (1.0 - r),
            _ => f32::INFINITY,
        }
        .min(o.max_score.map_or(f32::INFINITY, |m| m.next_up()));
        let mut pool: Vec<u32> = hits[qindex[&q]]
            .iter()
            .skip(o.range_min)
            .filter(|h| h.score < limit)
            .map(|h| candidates[h.doc as usize])
            .collect();
        if o.sampling == Sampling::Random && pool.len() > o.num_negatives {
            // Partial Fisher-Yates with a counter RNG keyed by (seed, pair): the same choice on every run and
            // thread count. The chosen ones keep their rank order.
            let mut idx: Vec<usize> = (0..pool.len()).collect();
            for i in 0..o.num_negatives {
                let r = angle_tensor::rng::bits(o.seed, (pair * o.num_negatives + i) as u64);
                let j = i + (r % (idx.len() - i) as u64) as usize;
                idx.swap(i, j);
            }
            let mut chosen: Vec<usize> = idx[..o.num_negatives].to_vec();
            chosen.sort_unstable();
            pool = chosen.into_iter().map(|i| pool[i]).collect();
        }
        pool.truncate(o.num_negatives);
        out.push(pool);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::normalize_rows;

    /// Texts on a circle: the angle of each row sets every similarity.
    fn circle(angles: &[f32]) -> Vec<f32> {
        let mut e: Vec<f32> = angles.iter().flat_map(|a| [a.cos(), a.sin()]).collect();
        normalize_rows(&mut e, 2);
        e
    }

    fn table() -> MineTable {
        let s = |x: &str| x.to_string();
        MineTable::new(
            &[(s("q"), s("p1")), (s("q"), s("p2"))],
            &[s("a"), s("b"), s("c"), s("d"), s("p1")],
        )
    }

    #[test]
    fn positives_of_the_same_query_are_never_negatives() {
        let t = table();
        // rows: q, p1, p2, a, b, c, d
        assert_eq!(t.texts, ["q", "p1", "p2", "a", "b", "c", "d"]);
        let emb = circle(&[0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5]);
        let o = MineOptions {
            num_negatives: 2,
            ..MineOptions::default()
        };
        let neg = mine(&t, &emb, 2, &o).unwrap();
        // p2 and p1 are closer than a, b but both are positives of q, for either pair.
        assert_eq!(neg, vec![vec![3, 4], vec![3, 4]]);
    }

    #[test]
    fn range_and_margins_filter() {
        let t = table();
        let emb = circle(&[0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5]);
        let o = MineOptions {
            range_min: 1,
            range_max: 3,
            num_negatives: 5,
            ..MineOptions::default()
        };
        assert_eq!(mine(&t, &emb, 2, &o).unwrap()[0], vec![4, 5]);
        // Margin against pair 0's positive p1 (cos 0.05 ≈ 0.99875): cos 0.2 ≈ 0.980 passes at 0.01, fails at 0.05.
        let o = MineOptions {
            margin: Some(0.01),
            num_negatives: 1,
            ..MineOptions::default()
        };
        assert_eq!(mine(&t, &emb, 2, &o).unwrap()[0], vec![3]);
        let o = MineOptions {
            margin: Some(0.05),
            num_negatives: 1,
            ..MineOptions::default()
        };
        assert_eq!(mine(&t, &emb, 2, &o).unwrap()[0], vec![5]);
    }

    #[test]
    fn random_sampling_is_seeded_and_in_range() {
        let t = table();
        let emb = circle(&[0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5]);
        let o = MineOptions {
            num_negatives: 2,
            sampling: Sampling::Random,
            ..MineOptions::default()
        };
        let a = mine(&t, &emb, 2, &o).unwrap();
        assert_eq!(a, mine(&t, &emb, 2, &o).unwrap());
        for n in &a {
            assert_eq!(n.len(), 2);
            assert!(n.iter().all(|&r| (3..7).contains(&r)) && n[0] < n[1]);
        }
    }

    #[test]
    fn bad_options_are_named() {
        let o = MineOptions {
            range_min: 5,
            range_max: 5,
            ..MineOptions::default()
        };
        assert!(o.validate().unwrap_err().to_string().contains("--range-min 5"));
        let empty = MineTable::new(&[], &[]);
        assert!(mine(&empty, &[], 2, &MineOptions::default()).unwrap_err().to_string().contains("empty"));
    }
}
