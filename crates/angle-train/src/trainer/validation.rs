//! Scoring the validation sets between steps (STS pairs: Spearman; a BEIR folder: NDCG@10 and the other retrieval
//! metrics), and writing `best/` when the deciding score improves: NDCG@10 when a retrieval set is given, else
//! Spearman.

use std::path::{Path, PathBuf};

use angle_data::{Dataset, TextTokenizer};
use indicatif::ProgressBar;

use super::log::say;
use crate::backbone::Backbone;
use crate::checkpoint::{self, TrainerState};
use crate::config::TrainConfig;
use crate::embed::Embedder;
use crate::error::Result;
use crate::evaluate::{StsScores, evaluate};
use crate::metrics::{EvalRecord, MetricsWriter, Record, RetrievalRecord};
use crate::retrieval::{BeirSet, RetrievalPrompts, RetrievalScores, evaluate_retrieval};

/// Where and how the best model is written.
pub(super) struct BestCheckpoint<'a> {
    pub dir: PathBuf,
    pub files_from: &'a Path,
    pub config: &'a TrainConfig,
}

/// The validation set and what scoring it needs, reused across evaluations.
pub(super) struct Validation {
    /// STS pairs (`--valid`).
    pub data: Option<Dataset>,
    /// A BEIR folder's dev split, its prompts and the tokenizer its texts are embedded with (`--valid-retrieval`).
    pub retrieval: Option<(BeirSet, RetrievalPrompts, TextTokenizer)>,
    pub embedder: Embedder,
    pub scratch: Vec<f32>,
    pub seconds: f64,
    pub last: Option<StsScores>,
    pub last_retrieval: Option<RetrievalScores>,
}

impl Validation {
    pub(super) fn new(
        data: Option<Dataset>,
        retrieval: Option<(BeirSet, RetrievalPrompts, TextTokenizer)>,
        embedder: Embedder,
    ) -> Self {
        Validation {
            data,
            retrieval,
            embedder,
            scratch: Vec::new(),
            seconds: 0.0,
            last: None,
            last_retrieval: None,
        }
    }

    /// Scores the model, logs the score, and writes `best/` when it beats every earlier score.
    pub(super) fn run(
        &mut self,
        model: &mut dyn Backbone,
        state: &mut TrainerState,
        epoch: f64,
        metrics: &mut MetricsWriter,
        bar: &ProgressBar,
        progress: bool,
        best: &BestCheckpoint<'_>,
    ) -> Result<()> {
        let mut improved = false;
        if let Some(data) = &self.data {
            let scores = evaluate(model, &mut self.embedder, data, &mut self.scratch)?;
            self.seconds += scores.seconds;
            self.last = Some(scores);
            metrics.write(&Record::Eval(EvalRecord {
                step: state.step,
                epoch,
                spearman: scores.spearman,
                pearson: scores.pearson,
                pairs: scores.pairs,
                seconds: scores.seconds,
            }))?;
            let line = format!(
                "step {}: validation Spearman {:.2} Pearson {:.2} ({} pairs, {:.1} s)",
                state.step, scores.spearman, scores.pearson, scores.pairs, scores.seconds
            );
            say(bar, progress, line);
            if state.best_spearman.is_none_or(|b| scores.spearman > b) {
                state.best_spearman = Some(scores.spearman);
                improved = self.retrieval.is_none();
            }
        }
        if let Some((set, prompts, tok)) = &self.retrieval {
            let s = evaluate_retrieval(model, &mut self.embedder, tok, set, prompts)?;
            self.seconds += s.seconds;
            self.last_retrieval = Some(s);
            let ndcg = 100.0 * s.ndcg_at_10;
            metrics.write(&Record::Retrieval(RetrievalRecord {
                step: state.step,
                epoch,
                ndcg_at_10: ndcg,
                mrr_at_10: 100.0 * s.mrr_at_10,
                map_at_100: 100.0 * s.map_at_100,
                recall_at_10: 100.0 * s.recall_at_10,
                recall_at_100: 100.0 * s.recall_at_100,
                queries: s.queries,
                documents: s.documents,
                seconds: s.seconds,
            }))?;
            let line = format!(
                "step {}: retrieval NDCG@10 {:.2} MRR@10 {:.2} Recall@10 {:.2} ({} queries, {} documents, {:.1} s)",
                state.step,
                ndcg,
                100.0 * s.mrr_at_10,
                100.0 * s.recall_at_10,
                s.queries,
                s.documents,
                s.seconds
            );
            say(bar, progress, line);
            if state.best_ndcg.is_none_or(|b| ndcg > b) {
                state.best_ndcg = Some(ndcg);
                improved = true;
            }
        }
        if improved {
            state.best_step = Some(state.step);
            checkpoint::save_model_dir(&best.dir, model, best.files_from, best.config, state.step)?;
        }
        Ok(())
    }
}
