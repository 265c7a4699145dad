//! Hard-negative mining, with the options of sentence-transformers' `mine_hard_negatives`: for each (query,
//! positive) pair, the corpus texts ranked `range_min..range_max` by cosine similarity to the query, minus the
//! query's own positives (every positive of the same query text, and the query itself), minus those within a
//! margin of the query's hardest positive, sampled `top` or `random`; filters first, then `range_min`, as there.
//! As there too, the filters see the `range_max + max_positives + 1` most similar candidates, left-out ones
//! included, so a filter can let in candidates ranked a little past `range_max`. Exact search in blocks
//! ([`crate::search`]).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use angle_data::{Format, RawDataset};

use crate::error::{Result, TrainError, io_err};
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
    /// Skip the `range_min` most similar candidates that pass the filters (often unlabelled positives).
    pub range_min: usize,
    /// Consider candidates up to this rank (exclusive), after the positives are left out.
    pub range_max: usize,
    /// A negative must score at most `positive − margin` (the query's lowest-scoring positive).
    pub margin: Option<f32>,
    /// A negative must score at most `positive − |positive| · relative_margin`.
    pub relative_margin: Option<f32>,
    /// A negative must score at most this.
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
        if self.num_negatives > self.range_max - self.range_min {
            return bad(format!(
                "--num-negatives {}: only {} candidates between --range-min {} and --range-max {}",
                self.num_negatives,
                self.range_max - self.range_min,
                self.range_min,
                self.range_max
            ));
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

impl MineTable {
    /// The rows mined for, each once, in first-seen order: `mine`'s query embeddings follow this order.
    pub fn query_rows(&self) -> Vec<u32> {
        let mut seen = vec![false; self.texts.len()];
        self.pairs
            .iter()
            .filter_map(|&(q, _)| (!std::mem::replace(&mut seen[q as usize], true)).then_some(q))
            .collect()
    }

    /// The candidate rows (positives and corpus texts), in row order: `mine`'s document embeddings follow it.
    pub fn candidate_rows(&self) -> Vec<u32> {
        (0..self.texts.len() as u32)
            .filter(|&r| self.is_candidate[r as usize])
            .collect()
    }
}

/// For each input pair, the mined negatives (rows of `table.texts`, best first for `top`). `query_emb` holds one
/// normalised `dim`-wide row per [`MineTable::query_rows`], `doc_emb` one per [`MineTable::candidate_rows`]
/// (two sets, so that queries and documents can be embedded with different prompts). A pair may get fewer than
/// `num_negatives` (never none silently: the caller counts them).
pub fn mine(
    table: &MineTable,
    query_emb: &[f32],
    doc_emb: &[f32],
    dim: usize,
    o: &MineOptions,
) -> Result<Vec<Vec<u32>>> {
    o.validate()?;
    let candidates = table.candidate_rows();
    if candidates.is_empty() {
        return Err(TrainError::Data("mining: the corpus is empty".into()));
    }
    let queries = table.query_rows();
    if query_emb.len() != queries.len() * dim || doc_emb.len() != candidates.len() * dim {
        return Err(TrainError::Data(format!(
            "mining: {} query and {} document embeddings of width {dim} for {} queries and {} documents",
            query_emb.len() / dim.max(1),
            doc_emb.len() / dim.max(1),
            queries.len(),
            candidates.len()
        )));
    }
    let qindex: HashMap<u32, usize> = queries.iter().enumerate().map(|(i, &q)| (q, i)).collect();
    let mut cand_of_row = vec![u32::MAX; table.texts.len()];
    for (j, &r) in candidates.iter().enumerate() {
        cand_of_row[r as usize] = j as u32;
    }
    // Left out per query: the query itself (when it is also a candidate) and every positive it has anywhere.
    let mut excluded: Vec<Vec<u32>> = queries.iter().map(|&q| vec![cand_of_row[q as usize]]).collect();
    for &(q, p) in &table.pairs {
        excluded[qindex[&q]].push(cand_of_row[p as usize]);
    }
    for ex in &mut excluded {
        ex.retain(|&c| c != u32::MAX);
        ex.sort_unstable();
        ex.dedup();
    }
    // As sentence-transformers: the window is the `range_max + max_positives + 1` most similar candidates with
    // the left-out ones still in it (`max_positives`: the most pairs any query has), so at least `range_max`
    // remain, and more where fewer are left out; the filters act on all of them. The search leaves them out
    // (a cheaper heap), so it keeps that many and each query's window is cut below.
    let mut pairs_per_query = vec![0usize; queries.len()];
    for &(q, _) in &table.pairs {
        pairs_per_query[qindex[&q]] += 1;
    }
    let window = o.range_max + pairs_per_query.iter().max().copied().unwrap_or(0) + 1;
    let hits = top_k(
        query_emb,
        doc_emb,
        dim,
        window,
        SearchBlocks::default(),
        |q, d| excluded[q].binary_search(&d).is_err(),
    )?;
    let dot = |qi: usize, c: u32| -> f32 {
        let (a, b) = (qi * dim, c as usize * dim);
        query_emb[a..a + dim]
            .iter()
            .zip(&doc_emb[b..b + dim])
            .map(|(x, y)| x * y)
            .sum()
    };
    // As sentence-transformers: the margins compare with the query's hardest (lowest-scoring) positive, every
    // filter keeps scores at the limit, at most `range_max` of those that pass are ranked, and `range_min` skips
    // among them.
    let mut hardest = vec![f32::INFINITY; queries.len()];
    for &(q, p) in &table.pairs {
        let qi = qindex[&q];
        hardest[qi] = hardest[qi].min(dot(qi, cand_of_row[p as usize]));
    }
    let per_query: Vec<Vec<u32>> = hits
        .iter()
        .enumerate()
        .map(|(qi, hits)| {
            // Left-out candidates that rank inside the window take a place of it (ties by corpus order, as the
            // search ranks them).
            let mut left_out: Vec<(f32, u32)> = excluded[qi].iter().map(|&c| (dot(qi, c), c)).collect();
            left_out.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let inside = left_out
                .iter()
                .enumerate()
                .filter(|&(i, &(s, c))| {
                    i + hits
                        .iter()
                        .take_while(|h| h.score > s || (h.score == s && h.doc < c))
                        .count()
                        < window
                })
                .count();
            let pos = hardest[qi];
            let keep = |s: f32| {
                o.margin.is_none_or(|m| s + m <= pos)
                    && o.relative_margin.is_none_or(|r| s <= pos - pos.abs() * r)
                    && o.max_score.is_none_or(|m| s <= m)
            };
            let mut pool: Vec<u32> = hits[..hits.len().min(window - inside)]
                .iter()
                .filter(|h| keep(h.score))
                .take(o.range_max)
                .skip(o.range_min)
                .map(|h| candidates[h.doc as usize])
                .collect();
            if o.sampling == Sampling::Random && pool.len() > o.num_negatives {
                // Partial Fisher-Yates with a counter RNG keyed by (seed, query): the same choice on every run and
                // thread count. The chosen ones keep their rank order.
                let mut idx: Vec<usize> = (0..pool.len()).collect();
                for i in 0..o.num_negatives {
                    let r = angle_tensor::rng::bits(o.seed, (qi * o.num_negatives + i) as u64);
                    let j = i + (r % (idx.len() - i) as u64) as usize;
                    idx.swap(i, j);
                }
                let mut chosen: Vec<usize> = idx[..o.num_negatives].to_vec();
                chosen.sort_unstable();
                pool = chosen.into_iter().map(|i| pool[i]).collect();
            }
            pool.truncate(o.num_negatives);
            pool
        })
        .collect();
    Ok(table
        .pairs
        .iter()
        .map(|(q, _)| per_query[qindex[q]].clone())
        .collect())
}

/// The (query, positive) pairs of a dataset in format B or C: one pair per positive alternative (list-valued
/// JSONL fields), the first query alternative. Format C's negatives are not read (mining makes new ones).
pub fn pairs_of(raw: &RawDataset) -> Result<Vec<(String, String)>> {
    if raw.format == Format::A {
        return Err(TrainError::Data(format!(
            "{}: format A (text1, text2, label) names no query and positive; mining reads format B or C \
             (--columns renames, e.g. text1:query,text2:positive)",
            raw.path.display()
        )));
    }
    let mut pairs = Vec::with_capacity(raw.len());
    for ex in &raw.examples {
        let q = &ex.texts[0][0];
        pairs.extend(ex.texts[1].iter().map(|p| (q.clone(), p.clone())));
    }
    Ok(pairs)
}

/// Extra corpus texts: a `.jsonl` file's `text` fields (a `title` joined before it, as in BEIR's corpus.jsonl),
/// or a text file's lines (empty lines are not texts).
pub fn read_corpus(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let jsonl = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("jsonl"));
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if !jsonl {
            out.push(line.to_string());
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| TrainError::Data(format!("{}:{}: invalid JSON: {e}", path.display(), i + 1)))?;
        let body = v
            .get("text")
            .and_then(|t| t.as_str())
            .filter(|t| !t.trim().is_empty());
        let Some(body) = body else {
            return Err(TrainError::Data(format!(
                "{}:{}: no non-empty `text` string",
                path.display(),
                i + 1
            )));
        };
        match v
            .get("title")
            .and_then(|t| t.as_str())
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            Some(title) => out.push(format!("{title} {}", body.trim())),
            None => out.push(body.trim().to_string()),
        }
    }
    Ok(out)
}

/// What `write_triples` wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MineReport {
    /// Input pairs.
    pub pairs: usize,
    /// Format-C rows written (pairs with at least one negative).
    pub rows: usize,
    /// Pairs left out: no candidate passed the range and margins.
    pub without_negative: usize,
    /// Pairs given fewer than `num_negatives`.
    pub short: usize,
    pub negatives: usize,
}

/// Writes format-C JSONL, one row per pair that got a negative: `negative` is a string when one negative was
/// asked for, else a list (alternatives, one drawn per epoch by the trainer). Written to a temporary name and
/// renamed: a reader never sees half a file.
pub fn write_triples(
    path: &Path,
    table: &MineTable,
    negatives: &[Vec<u32>],
    num_negatives: usize,
) -> Result<MineReport> {
    let mut r = MineReport {
        pairs: table.pairs.len(),
        ..MineReport::default()
    };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io_err(&tmp))?);
    let text = |row: u32| table.texts[row as usize].as_str();
    for (&(q, p), neg) in table.pairs.iter().zip(negatives) {
        if neg.is_empty() {
            r.without_negative += 1;
            continue;
        }
        r.short += usize::from(neg.len() < num_negatives);
        r.rows += 1;
        r.negatives += neg.len();
        let negative = if num_negatives == 1 {
            serde_json::Value::from(text(neg[0]))
        } else {
            neg.iter().map(|&n| serde_json::Value::from(text(n))).collect()
        };
        let line = serde_json::json!({"query": text(q), "positive": text(p), "negative": negative});
        writeln!(w, "{line}").map_err(io_err(&tmp))?;
    }
    w.into_inner()
        .map_err(|e| io_err(&tmp)(e.into_error()))?
        .sync_all()
        .map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(r)
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

    /// Mines with one embedding per table row, gathered into the query and document sets.
    fn run(t: &MineTable, emb: &[f32], o: &MineOptions) -> Result<Vec<Vec<u32>>> {
        let gather = |rows: Vec<u32>| -> Vec<f32> {
            rows.iter()
                .flat_map(|&r| emb[r as usize * 2..r as usize * 2 + 2].to_vec())
                .collect()
        };
        mine(t, &gather(t.query_rows()), &gather(t.candidate_rows()), 2, o)
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
        let neg = run(&t, &emb, &o).unwrap();
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
            num_negatives: 2,
            ..MineOptions::default()
        };
        assert_eq!(run(&t, &emb, &o).unwrap()[0], vec![4, 5]);
        // Margin against q's hardest positive p2 (cos 0.1 ≈ 0.995): cos 0.2 ≈ 0.980 passes at 0.01; at 0.05 only
        // cos 0.4 ≈ 0.921 and below do.
        let o = MineOptions {
            margin: Some(0.01),
            num_negatives: 1,
            ..MineOptions::default()
        };
        assert_eq!(run(&t, &emb, &o).unwrap()[0], vec![3]);
        let o = MineOptions {
            margin: Some(0.05),
            num_negatives: 1,
            ..MineOptions::default()
        };
        assert_eq!(run(&t, &emb, &o).unwrap()[0], vec![5]);
    }

    #[test]
    fn filters_see_the_window_with_left_out_candidates_in_it() {
        // As sentence-transformers: window = range_max + max_positives (2, q's) + 1 = 5 ranks, left-out ones
        // included. For r, its positive pr takes one, so a, b, c, d are in it; the margin drops a, and b and c
        // (ranks 3 and 4, past range_max) are mined.
        let s = |x: &str| x.to_string();
        let t = MineTable::new(
            &[(s("q"), s("p1")), (s("q"), s("p2")), (s("r"), s("pr"))],
            &[s("a"), s("b"), s("c"), s("d")],
        );
        assert_eq!(t.texts, ["q", "p1", "p2", "r", "pr", "a", "b", "c", "d"]);
        let emb = circle(&[0.0, 0.05, 0.1, 3.0, 3.02, 3.05, 2.9, 2.8, 2.7]);
        let o = MineOptions {
            range_max: 2,
            margin: Some(0.002),
            num_negatives: 2,
            ..MineOptions::default()
        };
        assert_eq!(run(&t, &emb, &o).unwrap()[2], vec![6, 7]);
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
        let a = run(&t, &emb, &o).unwrap();
        assert_eq!(a, run(&t, &emb, &o).unwrap());
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
        assert!(
            mine(&empty, &[], &[], 2, &MineOptions::default())
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
    }
}
