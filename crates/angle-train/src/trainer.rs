//! The training loop: data → encoder forward → pooling → AnglE objective → pooling backward → encoder backward →
//! gradient norm (and clipping) → AdamW with the linear schedule → evaluation, logging, checkpoints.
//!
//! Everything a step depends on is a pure function of (config, step, position in the epoch): the epoch's data order
//! comes from `(seed, epoch)` (angle-data), dropout masks from `(seed, step, micro-batch)`, AdamW's bias correction
//! from the step. A checkpoint therefore needs only the weights, the moments and the position, and a resumed run
//! repeats the interrupted one bit for bit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use angle_data::{
    BatchConfig, Dataset, DuplicatePolicy, EpochPlan, Format, PackedBatch, Prompts, ReadOptions,
};
use angle_encoder::{AdamW, Batch, Capacity, Encoder, Mode, Pooler, Pooling};
use angle_loss::{AngleLoss, DataFormat, LossParts};
use angle_tensor::rng::derive_seed;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ndarray::{ArrayView2, ArrayViewMut2};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, TrainerState};
use crate::config::TrainConfig;
use crate::cputime::process_cpu_seconds;
use crate::device::{Device, GpuModel};
use crate::embed::{Embedder, load_model};
use crate::error::{Result, TrainError, io_err};
use crate::evaluate::{StsScores, evaluate, load_sts};
use crate::metrics::{EvalRecord, MetricsWriter, Record, TrainRecord, read_records};
use crate::plot::write_svg;
use crate::schedule::LinearSchedule;

pub const CHECKPOINT_LAST: &str = "checkpoint-last";
pub const BEST: &str = "best";
pub const METRICS: &str = "metrics.jsonl";
pub const PLOT: &str = "training.svg";
pub const SUMMARY: &str = "summary.json";

/// How the caller steers a run from outside the configuration.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Set (by Ctrl-C) to stop after the current step: `checkpoint-last` is saved first.
    pub stop: Arc<AtomicBool>,
    /// Draw a progress bar on a terminal.
    pub progress: bool,
    /// Stop after this step *without* saving, as a killed process would (for resume tests).
    pub halt_after: Option<u64>,
    /// Where the encoder trains (see [`crate::device`]); evaluation stays on the host.
    pub device: Device,
    /// On the CPU: bf16 products in the training step (AMX; `angle train --precision bf16`),
    /// f32 weight gradients, master weights and AdamW. Validation stays f32.
    pub cpu_bf16: bool,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub steps: u64,
    pub total_steps: u64,
    pub epochs: f64,
    /// Training time (evaluation and checkpoint writing excluded), over all resumed parts of the run.
    pub train_seconds: f64,
    /// Wall time of this process's part of the run, everything included.
    pub wall_seconds: f64,
    pub eval_seconds: f64,
    /// CPU seconds (all threads) of the training steps, and the worker threads that shared them: on a machine
    /// where others run too, `train_cpu_seconds / threads` estimates the training time the run would have taken
    /// with its cores to itself (assuming the threads scale perfectly).
    pub train_cpu_seconds: f64,
    pub threads: usize,
    pub examples: u64,
    pub pairs_per_s: f64,
    pub tokens_per_s: f64,
    pub best_spearman: Option<f64>,
    pub best_step: Option<u64>,
    pub last_eval: Option<StsScores>,
    pub skipped_train_rows: usize,
    pub skipped_valid_rows: usize,
    pub truncated_texts: usize,
    pub interrupted: bool,
    pub resumed_from_step: Option<u64>,
    pub output: PathBuf,
}

/// Names of the loss parts in `metrics.jsonl`, in the order of [`part_values`].
const PART_NAMES: [&str; 5] = ["cosine", "ibn", "angle", "contrastive", "contrastive_negative"];

/// The objectives' unweighted values (`None`: the objective did not run).
fn part_values(p: &LossParts<f32>) -> [Option<f32>; 5] {
    [
        p.cosine,
        p.in_batch_negative,
        p.angle,
        p.contrastive,
        p.contrastive_negative,
    ]
}

/// Adds `v` into an accumulator that stays `None` until some value arrives.
fn accumulate(acc: &mut Option<f64>, v: Option<f64>) {
    if let Some(v) = v {
        *acc.get_or_insert(0.0) += v;
    }
}

/// Running means between two log records.
#[derive(Default)]
struct Window {
    steps: u64,
    loss: f64,
    parts: [Option<f64>; 5],
    grad_norm: f64,
    examples: u64,
    tokens: u64,
    seconds: f64,
}

fn read_options(c: &TrainConfig) -> Result<ReadOptions> {
    let columns = match &c.columns {
        Some(s) => s
            .parse()
            .map_err(|e: angle_data::DataError| TrainError::Config(e.to_string()))?,
        None => Default::default(),
    };
    let format = match &c.format {
        Some(s) => Some(
            s.parse::<Format>()
                .map_err(|e| TrainError::Config(e.to_string()))?,
        ),
        None => None,
    };
    Ok(ReadOptions {
        columns,
        format,
        skip_invalid: c.skip_invalid,
        ..ReadOptions::default()
    })
}

fn prompts(c: &TrainConfig) -> Result<Prompts> {
    Prompts::from_templates(
        c.text_prompt.as_deref(),
        c.query_prompt.as_deref(),
        c.doc_prompt.as_deref(),
    )
    .map_err(|e| TrainError::Config(e.to_string()))
}

fn data_format(f: Format) -> DataFormat {
    match f {
        Format::A => DataFormat::A,
        Format::B => DataFormat::B,
        Format::C => DataFormat::C,
    }
}

fn enc_err(e: angle_encoder::EncoderError) -> TrainError {
    TrainError::Encoder(e.to_string())
}

/// Optimizer steps per epoch: every `grad_accum` micro-batches make a step; a remainder makes a shorter last step.
pub fn steps_per_epoch(batches: usize, grad_accum: usize) -> u64 {
    batches.div_ceil(grad_accum.max(1)) as u64
}

/// Train as `config` says; with `resume`, continue the run saved in that `checkpoint-last` directory (weights,
/// moments and position from there; `config` should be the saved one, as `angle train --resume` merges it, and a
/// different training file or step count is refused).
pub fn train(config: TrainConfig, resume: Option<&Path>, opts: &TrainOptions) -> Result<RunSummary> {
    let wall = Instant::now();
    config.validate()?;
    let pooling = Pooling::parse(&config.pooling)
        .ok_or_else(|| TrainError::Config(format!("unknown pooling {:?}", config.pooling)))?;

    // Weights (and tokenizer files) come from the checkpoint when resuming, else from the model directory.
    let files_from = match resume {
        Some(dir) => crate::atomic::resolve(dir)?,
        None => config.model.clone(),
    };
    let (mut enc, tok) = load_model(&files_from, config.max_length)?;
    if opts.cpu_bf16 && matches!(opts.device, Device::Cpu) {
        enc.set_train_precision(angle_encoder::Precision::Bf16)
            .map_err(|e| TrainError::Encoder(e.to_string()))?;
        eprintln!(
            "cpu: training with bf16 products ({}); weight gradients, weights and AdamW in f32",
            if angle_encoder::bf16_is_fast() {
                "AMX tiles"
            } else {
                "no AMX here: f32 speed"
            }
        );
    }
    let resumed = match resume {
        Some(dir) => Some(checkpoint::load_training_checkpoint(dir, enc.layout.total)?),
        None => None,
    };
    let max_len = tok.max_len();

    let data = Dataset::load(&config.train, &read_options(&config)?, &prompts(&config)?, &tok)
        .map_err(|e| TrainError::Data(e.to_string()))?;
    if data.is_empty() {
        return Err(TrainError::Data(format!(
            "{}: no examples to train on",
            config.train.display()
        )));
    }
    let valid = match &config.valid {
        Some(p) => Some(load_sts(p, &tok, &prompts(&config)?, config.skip_invalid)?),
        None => None,
    };

    let batch_cfg = BatchConfig {
        length_grouped: config.group_by_length,
        duplicates: if config.drop_duplicates {
            DuplicatePolicy::Drop
        } else {
            DuplicatePolicy::Mask
        },
        ..BatchConfig::train(config.batch_size, config.seed)
    };
    let batches = data.batches_per_epoch(&batch_cfg);
    let per_epoch = steps_per_epoch(batches, config.grad_accum);
    let total_steps = config.max_steps.unwrap_or(per_epoch * config.epochs as u64);

    let mut state = TrainerState {
        step: 0,
        total_steps,
        epoch: 0,
        batch_in_epoch: 0,
        seed: config.seed,
        best_spearman: None,
        best_step: None,
        train_seconds: 0.0,
        train_cpu_seconds: 0.0,
        examples_seen: 0,
        tokens_seen: 0,
        train_examples: data.len(),
    };
    enc.zero_grad();
    let resumed_from_step = match resumed {
        Some(r) => {
            if r.state.train_examples != data.len() || r.state.total_steps != total_steps {
                return Err(TrainError::Checkpoint {
                    path: r.dir.clone(),
                    msg: format!(
                        "saved run had {} examples and {} steps; this one has {} and {}",
                        r.state.train_examples,
                        r.state.total_steps,
                        data.len(),
                        total_steps
                    ),
                });
            }
            enc.buffers.adam_m = r.adam_m;
            enc.buffers.adam_v = r.adam_v;
            state = r.state;
            Some(state.step)
        }
        None => None,
    };

    let rows_max = config.batch_size * data.format().rows_per_example();
    // Before anything is written: a missing driver or an unsupported model fails here.
    let mut gpu: Option<GpuModel> = crate::device::for_device(opts.device, &enc, pooling, rows_max, max_len)?;
    // The step at which the host encoder last matched the device's.
    let mut host_at = state.step;

    let out = config.output.clone();
    std::fs::create_dir_all(&out).map_err(io_err(&out))?;
    let metrics_path = out.join(METRICS);
    let mut metrics = match resumed_from_step {
        Some(step) => MetricsWriter::resume(&metrics_path, step)?,
        None => MetricsWriter::create(&metrics_path)?,
    };

    let h = enc.config.hidden_size;
    // On the GPU the host arena is never used: keep it one sequence small.
    let cap = Capacity {
        max_tokens: if gpu.is_some() { 1 } else { rows_max } * max_len,
        max_seq_len: max_len,
    };
    let mut acts = enc.activations(cap, Mode::Train);
    let mut pooler = Pooler::new(pooling);
    let loss_fn = AngleLoss::new(config.loss.clone());
    let format = data_format(data.format());
    // On the GPU the objective runs there too when its kernel covers this loss (said once).
    if let Some(g) = gpu.as_mut() {
        eprintln!("{}", g.use_device_objective(&config.loss, format));
    }
    let schedule = LinearSchedule::new(config.lr, config.warmup_steps, total_steps);
    let mut batch = PackedBatch::default();
    let mut pooled: Vec<f32> = Vec::with_capacity(rows_max * h);
    let mut dpooled: Vec<f32> = Vec::with_capacity(rows_max * h);

    let bar = progress_bar(opts.progress, total_steps, state.step);
    let mut plan: EpochPlan = data
        .plan_epoch(&batch_cfg, state.epoch)
        .map_err(|e| TrainError::Data(e.to_string()))?;
    let mut window = Window::default();
    let best = BestCheckpoint {
        dir: out.join(BEST),
        files_from: &files_from,
        config: &config,
        pooling,
    };
    let mut validation = valid.map(|data| Validation {
        embedder: Embedder::new(&enc, pooling, config.eval_batch_size, max_len),
        data,
        scratch: Vec::new(),
        seconds: 0.0,
        last: None,
        bf16: matches!(opts.device, Device::Cpu) && crate::auto_precision::validation_bf16(),
    });
    // The untrained model's score starts the curve (and is the best so far), unless the run is resumed.
    if let (Some(v), None) = (validation.as_mut(), resumed_from_step) {
        v.run(&enc, &mut state, 0.0, &mut metrics, &bar, opts.progress, &best)?;
    }
    let mut interrupted = false;
    let log_steps = config.log_steps.max(1);

    while state.step < total_steps {
        if state.batch_in_epoch >= plan.len() {
            state.epoch += 1;
            state.batch_in_epoch = 0;
            plan = data
                .plan_epoch(&batch_cfg, state.epoch)
                .map_err(|e| TrainError::Data(e.to_string()))?;
        }
        let step_started = Instant::now();
        let cpu_started = process_cpu_seconds();
        let micro = config.grad_accum.min(plan.len() - state.batch_in_epoch);
        match gpu.as_mut() {
            Some(g) => g.zero_grad()?,
            None => enc.buffers.zero_grad(),
        }
        let mut step_loss = 0.0f64;
        let mut step_parts = [None; 5];
        let mut step_examples = 0u64;
        let mut step_tokens = 0u64;
        for k in 0..micro {
            data.fill_batch(&plan, state.batch_in_epoch + k, &mut batch)
                .map_err(|e| TrainError::Data(e.to_string()))?;
            let rows = batch.rows();
            if rows == 0 {
                // Every example of the batch was dropped as a duplicate: nothing to learn from.
                continue;
            }
            let dropout = config
                .dropout
                .then(|| derive_seed(derive_seed(config.seed, state.step), k as u64));
            if let Some(g) = gpu.as_mut().filter(|g| g.device_objective()) {
                // Forward, objective and backward of `loss / micro` all on the device.
                let (loss, parts) = g.forward_objective_backward(
                    &batch.input_ids,
                    &batch.token_type_ids,
                    &batch.seq_offsets,
                    &batch.labels,
                    dropout,
                    1.0 / micro as f32,
                )?;
                if !loss.is_finite() {
                    return Err(TrainError::Numeric {
                        step: state.step,
                        msg: format!("loss is {loss}"),
                    });
                }
                step_loss += loss as f64 / micro as f64;
                for (acc, v) in step_parts.iter_mut().zip(part_values(&parts)) {
                    accumulate(acc, v.map(|v| v as f64 / micro as f64));
                }
                step_examples += batch.examples.len() as u64;
                step_tokens += batch.tokens() as u64;
                continue;
            }
            match gpu.as_mut() {
                Some(g) => g.forward_pooled(
                    &batch.input_ids,
                    &batch.token_type_ids,
                    &batch.seq_offsets,
                    dropout,
                    &mut pooled,
                )?,
                None => {
                    let b = Batch {
                        input_ids: &batch.input_ids,
                        token_type_ids: Some(&batch.token_type_ids),
                        seq_offsets: &batch.seq_offsets,
                    };
                    let hidden = enc.forward(&b, &mut acts, dropout).map_err(enc_err)?;
                    pooled.resize(rows * h, 0.0);
                    pooler
                        .forward(&mut pooled, hidden, &batch.seq_offsets, h)
                        .map_err(enc_err)?;
                }
            }
            dpooled.clear();
            dpooled.resize(rows * h, 0.0);
            let y = ArrayView2::from_shape((rows, h), &pooled).map_err(|e| TrainError::Numeric {
                step: state.step,
                msg: e.to_string(),
            })?;
            let mut g =
                ArrayViewMut2::from_shape((rows, h), &mut dpooled).map_err(|e| TrainError::Numeric {
                    step: state.step,
                    msg: e.to_string(),
                })?;
            // Every format masks duplicates with them (A: in-batch negatives, B and C: contrastive softmaxes).
            let ids = (!config.drop_duplicates).then_some(&batch.text_ids[..]);
            let (loss, parts) = loss_fn
                .compute_into(format, y, &batch.labels, ids, &mut g)
                .map_err(|e| TrainError::Loss {
                    step: state.step,
                    msg: e.to_string(),
                })?;
            if !loss.is_finite() {
                return Err(TrainError::Numeric {
                    step: state.step,
                    msg: format!("loss is {loss}"),
                });
            }
            // The step's loss is the mean over its micro-batches, as a larger batch's would be.
            let inv = 1.0 / micro as f32;
            if micro > 1 {
                dpooled.iter_mut().for_each(|x| *x *= inv);
            }
            match gpu.as_mut() {
                Some(g) => g.backward(&dpooled)?,
                None => {
                    pooler
                        .backward(acts.dhidden_mut(), &dpooled, &batch.seq_offsets, h)
                        .map_err(enc_err)?;
                    enc.backward(&mut acts).map_err(enc_err)?;
                }
            }
            step_loss += loss as f64 / micro as f64;
            for (acc, v) in step_parts.iter_mut().zip(part_values(&parts)) {
                accumulate(acc, v.map(|v| v as f64 / micro as f64));
            }
            step_examples += batch.examples.len() as u64;
            step_tokens += batch.tokens() as u64;
        }
        state.batch_in_epoch += micro;

        let max_norm = (config.max_grad_norm > 0.0).then_some(config.max_grad_norm);
        let grad_norm = if let Some(g) = gpu.as_mut() {
            // Clipping happens inside the device's AdamW step, from the same norm.
            g.grad_norm()?
        } else if config.max_grad_norm > 0.0 {
            angle_tensor::cpu::clip_grad_norm(&mut enc.buffers.grads, config.max_grad_norm as f64)
        } else {
            angle_tensor::cpu::grad_norm(&enc.buffers.grads)
        };
        if !grad_norm.is_finite() {
            return Err(TrainError::Numeric {
                step: state.step,
                msg: format!("gradient norm is {grad_norm}"),
            });
        }
        let lr = schedule.lr_at(state.step);
        let hp = AdamW {
            lr: lr as f64,
            beta1: config.beta1 as f64,
            beta2: config.beta2 as f64,
            eps: config.eps as f64,
            weight_decay: config.weight_decay as f64,
        };
        match gpu.as_mut() {
            Some(g) => g.adamw_step(&hp, state.step + 1, max_norm)?,
            None => enc.adamw_step(&hp, state.step + 1).map_err(enc_err)?,
        }
        state.step += 1;
        let secs = step_started.elapsed().as_secs_f64();
        state.train_seconds += secs;
        if let (Some(a), Some(b)) = (cpu_started, process_cpu_seconds()) {
            state.train_cpu_seconds += b - a;
        }
        state.examples_seen += step_examples;
        state.tokens_seen += step_tokens;

        window.steps += 1;
        window.loss += step_loss;
        for (acc, v) in window.parts.iter_mut().zip(step_parts) {
            accumulate(acc, v);
        }
        window.grad_norm += grad_norm;
        window.examples += step_examples;
        window.tokens += step_tokens;
        window.seconds += secs;
        let epoch_f = state.epoch as f64 + state.batch_in_epoch as f64 / plan.len().max(1) as f64;
        let pairs_s = window.examples as f64 / window.seconds.max(1e-9);
        bar.set_position(state.step);
        if !bar.is_hidden() {
            bar.set_message(format!("loss {step_loss:.4} lr {lr:.2e} {pairs_s:.1} pairs/s"));
        }

        let epoch_end = state.batch_in_epoch >= plan.len();
        let last = state.step == total_steps;
        let stop = opts.stop.load(Ordering::SeqCst);
        if state.step % log_steps == 0 || last || stop {
            let n = window.steps as f64;
            let rec = TrainRecord {
                step: state.step,
                epoch: epoch_f,
                loss: window.loss / n,
                parts: PART_NAMES
                    .iter()
                    .zip(window.parts)
                    .filter_map(|(name, v)| v.map(|v| (name.to_string(), v / n)))
                    .collect(),
                lr: lr as f64,
                grad_norm: window.grad_norm / n,
                pairs_per_s: pairs_s,
                tokens_per_s: window.tokens as f64 / window.seconds.max(1e-9),
                elapsed_s: state.train_seconds,
            };
            if bar.is_hidden() && opts.progress {
                eprintln!(
                    "step {}/{} epoch {:.2} loss {:.4} lr {:.2e} grad_norm {:.3} {:.1} pairs/s",
                    rec.step, total_steps, rec.epoch, rec.loss, rec.lr, rec.grad_norm, rec.pairs_per_s
                );
            }
            metrics.write(&Record::Train(rec))?;
            window = Window::default();
        }

        let eval_due = if config.eval_steps > 0 {
            state.step % config.eval_steps == 0
        } else {
            epoch_end
        };
        let save_due = if config.save_steps > 0 {
            state.step % config.save_steps == 0
        } else {
            epoch_end
        };
        let host_needed = (validation.is_some() && (eval_due || last))
            || (opts.halt_after != Some(state.step) && (save_due || last || stop));
        if let Some(g) = gpu.as_ref().filter(|_| host_needed && host_at != state.step) {
            g.download_into(&mut enc)?;
            host_at = state.step;
        }
        if let Some(v) = validation.as_mut().filter(|_| eval_due || last) {
            v.run(
                &enc,
                &mut state,
                epoch_f,
                &mut metrics,
                &bar,
                opts.progress,
                &best,
            )?;
        }

        if opts.halt_after == Some(state.step) {
            interrupted = true;
            break;
        }
        if save_due || last || stop {
            checkpoint::save_training_checkpoint(
                &out.join(CHECKPOINT_LAST),
                &enc,
                &files_from,
                &config,
                pooling,
                &state,
            )?;
        }
        if stop && !last {
            say(
                &bar,
                opts.progress,
                format!(
                    "interrupted: saved {} at step {}",
                    out.join(CHECKPOINT_LAST).display(),
                    state.step
                ),
            );
            interrupted = true;
            break;
        }
    }
    bar.finish_and_clear();
    drop(metrics);
    write_svg(&out.join(PLOT), &read_records(&metrics_path)?)?;

    let summary = RunSummary {
        steps: state.step,
        total_steps,
        epochs: state.epoch as f64 + state.batch_in_epoch as f64 / plan.len().max(1) as f64,
        train_seconds: state.train_seconds,
        wall_seconds: wall.elapsed().as_secs_f64(),
        eval_seconds: validation.as_ref().map_or(0.0, |v| v.seconds),
        train_cpu_seconds: state.train_cpu_seconds,
        threads: rayon::current_num_threads(),
        examples: state.examples_seen,
        pairs_per_s: state.examples_seen as f64 / state.train_seconds.max(1e-9),
        tokens_per_s: state.tokens_seen as f64 / state.train_seconds.max(1e-9),
        best_spearman: state.best_spearman,
        best_step: state.best_step,
        last_eval: validation.as_ref().and_then(|v| v.last),
        skipped_train_rows: data.skip_counts().total,
        skipped_valid_rows: validation.as_ref().map_or(0, |v| v.data.skip_counts().total),
        truncated_texts: data.truncated_texts(),
        interrupted,
        resumed_from_step,
        output: out.clone(),
    };
    let p = out.join(SUMMARY);
    let text = serde_json::to_string_pretty(&summary).map_err(|source| TrainError::Json {
        path: p.clone(),
        source,
    })?;
    std::fs::write(&p, text + "\n").map_err(io_err(&p))?;
    Ok(summary)
}

/// Where and how the best model is written.
struct BestCheckpoint<'a> {
    dir: PathBuf,
    files_from: &'a Path,
    config: &'a TrainConfig,
    pooling: Pooling,
}

/// The validation set and what scoring it needs, reused across evaluations.
struct Validation {
    data: Dataset,
    embedder: Embedder,
    scratch: Vec<f32>,
    seconds: f64,
    last: Option<StsScores>,
    /// bf16 where `--precision auto` would pick it on this CPU (crate::auto_precision).
    bf16: bool,
}

impl Validation {
    /// Scores the model, logs the score, and writes `best/` when it beats every earlier score.
    fn run(
        &mut self,
        enc: &Encoder,
        state: &mut TrainerState,
        epoch: f64,
        metrics: &mut MetricsWriter,
        bar: &ProgressBar,
        progress: bool,
        best: &BestCheckpoint<'_>,
    ) -> Result<()> {
        let scores = if self.bf16 {
            // a copy in eval precision bf16, so the step loop never repacks for validation
            let mut e = enc.clone();
            e.set_inference_precision(angle_encoder::Precision::Bf16)
                .map_err(|e| TrainError::Encoder(e.to_string()))?;
            evaluate(&e, &mut self.embedder, &self.data, &mut self.scratch)?
        } else {
            evaluate(enc, &mut self.embedder, &self.data, &mut self.scratch)?
        };
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
            checkpoint::save_model_dir(
                &best.dir,
                enc,
                best.files_from,
                best.config,
                best.pooling,
                state.step,
            )?;
        }
        Ok(())
    }
}

/// A line above the bar; on stderr as plain text when the bar is hidden (not a terminal) but progress is wanted.
fn say(bar: &ProgressBar, progress: bool, line: String) {
    if !bar.is_hidden() {
        bar.println(line);
    } else if progress {
        eprintln!("{line}");
    }
}

fn progress_bar(enabled: bool, total: u64, done: u64) -> ProgressBar {
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
