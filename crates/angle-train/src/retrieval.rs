//! Retrieval evaluation on the BEIR layout: `corpus.jsonl` (`_id`, `title`, `text`), `queries.jsonl` (`_id`,
//! `text`) and `qrels/<split>.tsv` (`query-id`, `corpus-id`, `score`). The metrics are those of
//! sentence-transformers' `InformationRetrievalEvaluator`: binary relevance (a qrels score above 0), only queries
//! with at least one relevant document, each metric the mean over queries (fractions, not percentages).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Instant;

use angle_data::{Prompt, TextTokenizer};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::backbone::Backbone;
use crate::embed::Embedder;
use crate::error::{Result, TrainError};
use crate::search::{Hit, SearchBlocks, normalize_rows, top_k};

/// A BEIR-layout set read for one split: the queries that split judges, the whole corpus, and each query's
/// relevant documents (corpus rows).
#[derive(Debug, Clone)]
pub struct BeirSet {
    /// In ascending order (not the file's): ties in score are ranked by id.
    pub corpus_ids: Vec<String>,
    /// `title + " " + text` (the text alone when there is no title), as sentence-transformers' BEIR examples join them.
    pub corpus_texts: Vec<String>,
    pub query_ids: Vec<String>,
    pub query_texts: Vec<String>,
    /// Per query (same order as `query_ids`): the relevant corpus rows, sorted.
    pub relevant: Vec<Vec<u32>>,
    /// qrels lines left out with `--skip-invalid` (a query or document that does not exist).
    pub skipped: usize,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn line_err(path: &Path, line: usize, msg: impl std::fmt::Display) -> TrainError {
    TrainError::Data(format!("{}:{line}: {msg}", path.display()))
}

/// Reads a BEIR `*.jsonl` file: `(ids, texts)` in file order; `title` joined before `text` when present.
fn read_jsonl(path: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let (mut ids, mut texts) = (Vec::new(), Vec::new());
    let mut seen = HashSet::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io_err(path))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(&line).map_err(|e| line_err(path, i + 1, format!("invalid JSON: {e}")))?;
        let id = match v.get("_id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(line_err(path, i + 1, "no `_id` (string or number)")),
        };
        let text = v
            .get("text")
            .and_then(Value::as_str)
            .ok_or_else(|| line_err(path, i + 1, "no `text` string"))?;
        let title = v.get("title").and_then(Value::as_str).unwrap_or("").trim();
        if !seen.insert(id.clone()) {
            return Err(line_err(path, i + 1, format!("`_id` {id:?} appears twice")));
        }
        ids.push(id);
        texts.push(if title.is_empty() {
            text.trim().to_string()
        } else {
            format!("{title} {}", text.trim())
        });
    }
    Ok((ids, texts))
}

/// Reads `dir` (a BEIR folder) for `split` (`qrels/<split>.tsv`). A qrels line that names a missing query or
/// document is an error naming file and line, or, with `skip_invalid`, left out and counted.
pub fn load_beir(dir: &Path, split: &str, skip_invalid: bool) -> Result<BeirSet> {
    let (ids, texts) = read_jsonl(&dir.join("corpus.jsonl"))?;
    // Rows in ascending `_id` order: the search ranks equal scores by row, so a tie goes to the smaller id, as in
    // sentence-transformers' evaluator (string order, which UTF-8 bytes and Python's code points agree on).
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by(|&a, &b| ids[a].cmp(&ids[b]));
    let corpus_ids: Vec<String> = order.iter().map(|&i| ids[i].clone()).collect();
    let corpus_texts: Vec<String> = order.iter().map(|&i| texts[i].clone()).collect();
    let (all_qids, all_qtexts) = read_jsonl(&dir.join("queries.jsonl"))?;
    if corpus_ids.is_empty() {
        return Err(TrainError::Data(format!(
            "{}: empty corpus",
            dir.join("corpus.jsonl").display()
        )));
    }
    let doc_row: HashMap<&str, u32> = corpus_ids
        .iter()
        .enumerate()
        .map(|(i, d)| (d.as_str(), i as u32))
        .collect();
    let query_row: HashMap<&str, usize> = all_qids
        .iter()
        .enumerate()
        .map(|(i, q)| (q.as_str(), i))
        .collect();
    let qrels = dir.join("qrels").join(format!("{split}.tsv"));
    let file = std::fs::File::open(&qrels).map_err(io_err(&qrels))?;
    let mut relevant: Vec<HashSet<u32>> = vec![HashSet::new(); all_qids.len()];
    let mut skipped = 0;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io_err(&qrels))?;
        let cols: Vec<&str> = line.split('\t').map(str::trim).collect();
        if line.trim().is_empty() || (i == 0 && cols.first() == Some(&"query-id")) {
            continue;
        }
        if cols.len() < 3 {
            return Err(line_err(
                &qrels,
                i + 1,
                "expected query-id, corpus-id and score, tab-separated",
            ));
        }
        let score: f64 = cols[2]
            .parse()
            .map_err(|_| line_err(&qrels, i + 1, format!("score {:?} is not a number", cols[2])))?;
        let missing = match (query_row.get(cols[0]), doc_row.get(cols[1])) {
            (Some(&q), Some(&d)) => {
                if score > 0.0 {
                    relevant[q].insert(d);
                }
                continue;
            }
            (None, _) => format!("query {:?} is not in queries.jsonl", cols[0]),
            (_, None) => format!("document {:?} is not in corpus.jsonl", cols[1]),
        };
        if !skip_invalid {
            return Err(line_err(
                &qrels,
                i + 1,
                format!("{missing} (--skip-invalid leaves such lines out)"),
            ));
        }
        skipped += 1;
    }
    let mut set = BeirSet {
        corpus_ids,
        corpus_texts,
        query_ids: Vec::new(),
        query_texts: Vec::new(),
        relevant: Vec::new(),
        skipped,
    };
    for (q, rel) in relevant.into_iter().enumerate() {
        if !rel.is_empty() {
            let mut rel: Vec<u32> = rel.into_iter().collect();
            rel.sort_unstable();
            set.query_ids.push(all_qids[q].clone());
            set.query_texts.push(all_qtexts[q].clone());
            set.relevant.push(rel);
        }
    }
    if set.query_ids.is_empty() {
        return Err(TrainError::Data(format!(
            "{}: no query has a relevant document",
            qrels.display()
        )));
    }
    Ok(set)
}

/// sentence-transformers' `InformationRetrievalEvaluator` metrics at the cut-offs its users quote most.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RetrievalScores {
    pub ndcg_at_10: f64,
    pub mrr_at_10: f64,
    pub map_at_100: f64,
    pub recall_at_1: f64,
    pub recall_at_10: f64,
    pub recall_at_100: f64,
    pub precision_at_1: f64,
    pub precision_at_10: f64,
    pub accuracy_at_1: f64,
    pub accuracy_at_10: f64,
    pub queries: usize,
    pub documents: usize,
    pub seconds: f64,
}

/// The deepest cut-off among [`RetrievalScores`]: how many hits each query needs.
pub const MAX_K: usize = 100;

fn dcg(rels: impl Iterator<Item = bool>) -> f64 {
    rels.enumerate()
        .map(|(i, r)| if r { 1.0 / ((i + 2) as f64).log2() } else { 0.0 })
        .sum()
}

/// Scores ranked hits (best first, per query) against each query's relevant documents (sorted rows).
pub fn score_rankings(ranked: &[Vec<Hit>], relevant: &[Vec<u32>]) -> RetrievalScores {
    let mut s = RetrievalScores {
        queries: ranked.len(),
        ..RetrievalScores::default()
    };
    for (hits, rel) in ranked.iter().zip(relevant) {
        let is_rel: Vec<bool> = hits.iter().map(|h| rel.binary_search(&h.doc).is_ok()).collect();
        let top = |k: usize| &is_rel[..k.min(is_rel.len())];
        let correct = |k: usize| top(k).iter().filter(|&&r| r).count() as f64;
        let first = is_rel.iter().position(|&r| r);
        let n_rel = rel.len() as f64;
        s.accuracy_at_1 += f64::from(u8::from(first.is_some_and(|p| p < 1)));
        s.accuracy_at_10 += f64::from(u8::from(first.is_some_and(|p| p < 10)));
        s.precision_at_1 += correct(1);
        s.precision_at_10 += correct(10) / 10.0;
        s.recall_at_1 += correct(1) / n_rel;
        s.recall_at_10 += correct(10) / n_rel;
        s.recall_at_100 += correct(100) / n_rel;
        s.mrr_at_10 += first.filter(|&p| p < 10).map_or(0.0, |p| 1.0 / (p + 1) as f64);
        s.ndcg_at_10 += dcg(top(10).iter().copied()) / dcg((0..rel.len().min(10)).map(|_| true));
        let (mut hits_so_far, mut sum_prec) = (0.0, 0.0);
        for (rank, &r) in top(100).iter().enumerate() {
            if r {
                hits_so_far += 1.0;
                sum_prec += hits_so_far / (rank + 1) as f64;
            }
        }
        s.map_at_100 += sum_prec / n_rel.min(100.0);
    }
    let n = ranked.len().max(1) as f64;
    for m in [
        &mut s.ndcg_at_10,
        &mut s.mrr_at_10,
        &mut s.map_at_100,
        &mut s.recall_at_1,
        &mut s.recall_at_10,
        &mut s.recall_at_100,
        &mut s.precision_at_1,
        &mut s.precision_at_10,
        &mut s.accuracy_at_1,
        &mut s.accuracy_at_10,
    ] {
        *m /= n;
    }
    s
}

/// How queries and documents are embedded: angle-emb-style prompts (`{text}` placeholder) per side.
#[derive(Debug, Clone, Default)]
pub struct RetrievalPrompts {
    pub query: Option<Prompt>,
    pub doc: Option<Prompt>,
}

/// Texts per call of the embedder when a progress bar runs: each call sorts its texts by length, so a chunk this
/// large batches as well as the whole set would.
const PROGRESS_CHUNK: usize = 8192;

/// Embeds `texts` with an optional prompt into normalised rows of `emb.out_dim(model)`, with a progress bar named
/// `what` on a terminal (none otherwise). Each text's embedding is independent of its batch, so chunking does
/// not change them.
pub fn embed_normalized(
    model: &mut dyn Backbone,
    emb: &mut Embedder,
    tok: &TextTokenizer,
    texts: &[String],
    prompt: Option<&Prompt>,
    what: &str,
) -> Result<Vec<f32>> {
    let dim = emb.out_dim(model);
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressBar::new(texts.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{what} embedded"));
    let mut out = Vec::with_capacity(texts.len() * dim);
    let mut part = Vec::new();
    for chunk in texts.chunks(PROGRESS_CHUNK) {
        let prompted: Vec<String>;
        let chunk = match prompt {
            Some(p) => {
                prompted = chunk.iter().map(|t| p.apply(t)).collect();
                &prompted[..]
            }
            None => chunk,
        };
        emb.embed_texts(model, tok, chunk, &mut part)?;
        out.extend_from_slice(&part);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    normalize_rows(&mut out, dim);
    Ok(out)
}

/// A BEIR set's normalised embeddings: one row per `set.query_ids` and per `set.corpus_ids`.
#[derive(Debug, Clone)]
pub struct SetEmbeddings {
    pub queries: Vec<f32>,
    pub corpus: Vec<f32>,
    pub dim: usize,
}

/// Embeds a BEIR set's queries and corpus.
pub fn embed_set(
    model: &mut dyn Backbone,
    emb: &mut Embedder,
    tok: &TextTokenizer,
    set: &BeirSet,
    prompts: &RetrievalPrompts,
) -> Result<SetEmbeddings> {
    Ok(SetEmbeddings {
        corpus: embed_normalized(
            model,
            emb,
            tok,
            &set.corpus_texts,
            prompts.doc.as_ref(),
            "documents",
        )?,
        queries: embed_normalized(
            model,
            emb,
            tok,
            &set.query_texts,
            prompts.query.as_ref(),
            "queries",
        )?,
        dim: emb.out_dim(model),
    })
}

/// Scores the exact cosine ranking of the whole corpus for every query.
pub fn score_set(set: &BeirSet, e: &SetEmbeddings) -> Result<RetrievalScores> {
    let ranked = top_k(
        &e.queries,
        &e.corpus,
        e.dim,
        MAX_K,
        SearchBlocks::default(),
        |_, _| true,
    )?;
    let mut scores = score_rankings(&ranked, &set.relevant);
    scores.documents = set.corpus_ids.len();
    Ok(scores)
}

/// Embeds a BEIR set's queries and corpus and scores the exact cosine ranking of the whole corpus.
pub fn evaluate_retrieval(
    model: &mut dyn Backbone,
    emb: &mut Embedder,
    tok: &TextTokenizer,
    set: &BeirSet,
    prompts: &RetrievalPrompts,
) -> Result<RetrievalScores> {
    let started = Instant::now();
    let e = embed_set(model, emb, tok, set, prompts)?;
    let mut scores = score_set(set, &e)?;
    scores.seconds = started.elapsed().as_secs_f64();
    Ok(scores)
}

/// The headline metrics × 100, as MTEB tables print them: NDCG@10, MRR@10, MAP@100, Recall@1/10/100,
/// Accuracy@1/10.
pub fn headline(s: &RetrievalScores) -> [f64; 8] {
    [
        s.ndcg_at_10,
        s.mrr_at_10,
        s.map_at_100,
        s.recall_at_1,
        s.recall_at_10,
        s.recall_at_100,
        s.accuracy_at_1,
        s.accuracy_at_10,
    ]
    .map(|v| 100.0 * v)
}

/// One line for the log.
pub fn summary(name: &Path, s: &RetrievalScores) -> String {
    let [ndcg, mrr, map, r1, r10, r100, a1, a10] = headline(s);
    format!(
        "{}: {} queries, {} documents: NDCG@10 {ndcg:.2}, MRR@10 {mrr:.2}, MAP@100 {map:.2}, Recall@1/10/100 \
         {r1:.2} / {r10:.2} / {r100:.2}, Accuracy@1/10 {a1:.2} / {a10:.2} ({:.1} s)",
        name.display(),
        s.queries,
        s.documents,
        s.seconds
    )
}

/// A markdown table's header and one row.
pub fn markdown(name: &Path, s: &RetrievalScores) -> String {
    let cells: Vec<String> = headline(s).iter().map(|v| format!("{v:.2}")).collect();
    format!(
        "| set | queries | documents | NDCG@10 | MRR@10 | MAP@100 | R@1 | R@10 | R@100 | Acc@1 | Acc@10 |\n\
         |{}\n| {} | {} | {} | {} |",
        " --- |".repeat(11),
        name.display(),
        s.queries,
        s.documents,
        cells.join(" | ")
    )
}

/// The folder a `--retrieval` argument names, checked for the three BEIR parts before any model loads.
pub fn check_beir_dir(dir: &Path, split: &str) -> Result<PathBuf> {
    for part in [
        dir.join("corpus.jsonl"),
        dir.join("queries.jsonl"),
        dir.join("qrels").join(format!("{split}.tsv")),
    ] {
        if !part.is_file() {
            return Err(TrainError::Data(format!(
                "{}: not found (a BEIR folder holds corpus.jsonl, queries.jsonl and qrels/<split>.tsv)",
                part.display()
            )));
        }
    }
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(docs: &[u32]) -> Vec<Hit> {
        docs.iter()
            .enumerate()
            .map(|(i, &doc)| Hit {
                doc,
                score: 1.0 - i as f32 * 0.01,
            })
            .collect()
    }

    #[test]
    fn metrics_by_hand() {
        // Query 0: relevant {3, 7}; ranked 5, 3, 9, 7 → hits at ranks 2 and 4.
        // Query 1: relevant {1}; ranked 1 first.
        // Query 2: relevant {4}; never retrieved.
        let ranked = vec![hits(&[5, 3, 9, 7]), hits(&[1, 2]), hits(&[0, 2])];
        let relevant = vec![vec![3, 7], vec![1], vec![4]];
        let s = score_rankings(&ranked, &relevant);
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        close(s.accuracy_at_1, 1.0 / 3.0);
        close(s.accuracy_at_10, 2.0 / 3.0);
        close(s.mrr_at_10, (0.5 + 1.0 + 0.0) / 3.0);
        close(s.recall_at_1, (0.0 + 1.0 + 0.0) / 3.0);
        close(s.recall_at_10, (1.0 + 1.0 + 0.0) / 3.0);
        close(s.precision_at_1, 1.0 / 3.0);
        close(s.precision_at_10, (0.2 + 0.1 + 0.0) / 3.0);
        // DCG of query 0: 1/log2(3) + 1/log2(5); ideal: 1 + 1/log2(3).
        let ndcg0 = (1.0 / 3f64.log2() + 1.0 / 5f64.log2()) / (1.0 + 1.0 / 3f64.log2());
        close(s.ndcg_at_10, (ndcg0 + 1.0 + 0.0) / 3.0);
        // AP of query 0: (1/2 + 2/4) / min(100, 2).
        close(s.map_at_100, (0.5 + 1.0 + 0.0) / 3.0);
    }

    #[test]
    fn ties_follow_corpus_order() {
        // Documents 0 and 1 are identical; only document 1 is relevant. The tie goes to document 0 (corpus
        // order), so the relevant one is second.
        let docs = vec![1.0f32, 0.0, 1.0, 0.0, 0.0, 1.0];
        let q = vec![1.0f32, 0.0];
        let ranked = top_k(&q, &docs, 2, MAX_K, SearchBlocks::default(), |_, _| true).unwrap();
        let s = score_rankings(&ranked, &[vec![1]]);
        assert_eq!(s.mrr_at_10, 0.5);
        assert_eq!(s.accuracy_at_1, 0.0);
    }

    fn write(dir: &Path, name: &str, text: &str) {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn beir_folder_reads_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            d,
            "corpus.jsonl",
            "{\"_id\": \"d1\", \"title\": \"T\", \"text\": \"one\"}\n{\"_id\": 2, \"text\": \"two\"}\n",
        );
        write(
            d,
            "queries.jsonl",
            "{\"_id\": \"q1\", \"text\": \"find one\"}\n{\"_id\": \"q2\", \"text\": \"none\"}\n",
        );
        write(
            d,
            "qrels/test.tsv",
            "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\t2\t0\n",
        );
        let set = load_beir(d, "test", false).unwrap();
        // Rows in id order ("2" < "d1"), so that ties rank by id as sentence-transformers ranks them.
        assert_eq!(set.corpus_ids, vec!["2", "d1"]);
        assert_eq!(set.corpus_texts, vec!["two", "T one"]);
        // q2's only judgement has score 0: not relevant, so q2 is not evaluated.
        assert_eq!(set.query_ids, vec!["q1"]);
        assert_eq!(set.relevant, vec![vec![1]]);

        write(d, "qrels/dev.tsv", "q1\td1\t1\nq1\tmissing\t1\n");
        let err = load_beir(d, "dev", false).unwrap_err().to_string();
        assert!(err.contains("dev.tsv:2") && err.contains("\"missing\""), "{err}");
        let set = load_beir(d, "dev", true).unwrap();
        assert_eq!(set.skipped, 1);

        write(d, "corpus.jsonl", "");
        let err = load_beir(d, "test", false).unwrap_err().to_string();
        assert!(err.contains("empty corpus"), "{err}");
        assert!(
            check_beir_dir(d, "train")
                .unwrap_err()
                .to_string()
                .contains("train.tsv")
        );
    }
}
