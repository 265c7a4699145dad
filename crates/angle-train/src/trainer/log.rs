//! What a run says while it trains: running means between log records, the progress bar, lines above it.

use angle_loss::LossParts;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::step::StepResult;
use crate::metrics::TrainRecord;

/// Names of the loss parts in `metrics.jsonl`, in the order of [`part_values`].
pub(super) const PART_NAMES: [&str; 5] = ["cosine", "ibn", "angle", "contrastive", "contrastive_negative"];

/// The objectives' unweighted values (`None`: the objective did not run).
pub(super) fn part_values(p: &LossParts<f32>) -> [Option<f32>; 5] {
    [
        p.cosine,
        p.in_batch_negative,
        p.angle,
        p.contrastive,
        p.contrastive_negative,
    ]
}

/// Adds `v` into an accumulator that stays `None` until some value arrives.
pub(super) fn accumulate(acc: &mut Option<f64>, v: Option<f64>) {
    if let Some(v) = v {
        *acc.get_or_insert(0.0) += v;
    }
}

/// Running means between two log records.
#[derive(Default)]
pub(super) struct Window {
    steps: u64,
    loss: f64,
    parts: [Option<f64>; 5],
    by_dataset: Vec<(f64, u64)>,
    distill: Option<f64>,
    grad_norm: f64,
    examples: u64,
    tokens: u64,
    seconds: f64,
}

impl Window {
    pub(super) fn add(&mut self, s: &StepResult) {
        self.steps += 1;
        self.loss += s.loss;
        for (acc, v) in self.parts.iter_mut().zip(s.parts) {
            accumulate(acc, v);
        }
        accumulate(&mut self.distill, s.distill);
        self.by_dataset.resize(s.by_dataset.len(), (0.0, 0));
        for (acc, &(sum, n)) in self.by_dataset.iter_mut().zip(&s.by_dataset) {
            acc.0 += sum;
            acc.1 += n;
        }
        self.grad_norm += s.grad_norm;
        self.examples += s.examples;
        self.tokens += s.tokens;
        self.seconds += s.seconds;
    }

    pub(super) fn pairs_per_s(&self) -> f64 {
        self.examples as f64 / self.seconds.max(1e-9)
    }

    /// The window's means as a record, and a fresh window.
    /// With several datasets the record also holds each one's mean micro-batch loss (`sets` names them).
    pub(super) fn take_record(
        &mut self,
        step: u64,
        epoch: f64,
        lr: f32,
        elapsed_s: f64,
        sets: &[super::TrainSet],
    ) -> TrainRecord {
        let n = self.steps as f64;
        let rec = TrainRecord {
            step,
            epoch,
            loss: self.loss / n,
            parts: PART_NAMES
                .iter()
                .zip(self.parts)
                .filter_map(|(name, v)| v.map(|v| (name.to_string(), v / n)))
                .collect(),
            lr: lr as f64,
            grad_norm: self.grad_norm / n,
            pairs_per_s: self.pairs_per_s(),
            tokens_per_s: self.tokens as f64 / self.seconds.max(1e-9),
            elapsed_s,
            datasets: if sets.len() > 1 {
                sets.iter()
                    .zip(&self.by_dataset)
                    .filter(|(_, (_, n))| *n > 0)
                    .map(|(set, (sum, n))| (set.name.clone(), sum / *n as f64))
                    .collect()
            } else {
                Default::default()
            },
            distill: self.distill.map(|v| v / n),
        };
        *self = Window::default();
        rec
    }
}

/// A line above the bar; on stderr as plain text when the bar is hidden (not a terminal) but progress is wanted.
pub(super) fn say(bar: &ProgressBar, progress: bool, line: String) {
    if !bar.is_hidden() {
        bar.println(line);
    } else if progress {
        eprintln!("{line}");
    }
}

pub(super) fn progress_bar(enabled: bool, total: u64, done: u64) -> ProgressBar {
    let bar = if enabled {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    if enabled {
        bar.set_draw_target(ProgressDrawTarget::stderr());
    }
    let style =
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg} [{elapsed_precise} < {eta_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_position(done);
    bar
}
