//! Scoring the validation set between steps, and writing `best/` when the score improves.

use std::path::{Path, PathBuf};

use angle_data::Dataset;
use indicatif::ProgressBar;

use super::log::say;
use crate::backbone::Backbone;
use crate::checkpoint::{self, TrainerState};
use crate::config::TrainConfig;
use crate::embed::Embedder;
use crate::error::Result;
use crate::evaluate::{StsScores, evaluate};
use crate::metrics::{EvalRecord, MetricsWriter, Record};

/// Where and how the best model is written.
pub(super) struct BestCheckpoint<'a> {
    pub dir: PathBuf,
    pub files_from: &'a Path,
    pub config: &'a TrainConfig,
}

/// The validation set and what scoring it needs, reused across evaluations.
pub(super) struct Validation {
    pub data: Dataset,
    pub embedder: Embedder,
    pub scratch: Vec<f32>,
    pub seconds: f64,
    pub last: Option<StsScores>,
}

impl Validation {
    pub(super) fn new(data: Dataset, embedder: Embedder) -> Self {
        Validation {
            data,
            embedder,
            scratch: Vec::new(),
            seconds: 0.0,
            last: None,
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
        let scores = evaluate(model, &mut self.embedder, &self.data, &mut self.scratch)?;
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
            state.best_step = Some(state.step);
            checkpoint::save_model_dir(&best.dir, model, best.files_from, best.config, state.step)?;
        }
        Ok(())
    }
}
