//! The training loop: data → forward → pooled embeddings → AnglE objective → backward → gradient norm (and
//! clipping) → AdamW with the linear schedule → logging, evaluation, checkpoints. [`step`] runs one optimizer
//! step, [`validation`] scores the validation set, [`log`] keeps the running means; this file sets the run up
//! and walks it to the end. The model is a [`Backbone`]: any family, any device.
//!
//! Everything a step depends on is a pure function of (config, step, position in the epoch): the epoch's data order
//! comes from `(seed, epoch)` (angle-data), dropout masks from `(seed, step, micro-batch)`, AdamW's bias correction
//! from the step. A checkpoint therefore needs only the weights, the moments and the position, and a resumed run
//! repeats the interrupted one bit for bit.

mod log;
mod step;
mod validation;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use angle_data::{BatchConfig, Dataset, DuplicatePolicy, Format, MixedPlan, Prompts, ReadOptions, Sampler};
use angle_encoder::Pooling;
use angle_loss::{AngleLoss, DataFormat};
use serde::{Deserialize, Serialize};

use crate::backbone::Sizes;
use crate::checkpoint::{self, TrainerState};
use crate::config::TrainConfig;
use crate::device::Device;
use crate::embed::{Embedder, LoadOptions, load_backbone};
use crate::error::{Result, TrainError, io_err};
use crate::evaluate::{StsScores, load_sts_files};
use crate::metrics::{MetricsWriter, Record, read_records};
use crate::plot::write_svg;
use crate::precision::{Precision, Requested};
use crate::schedule::LinearSchedule;
use log::{Window, progress_bar, say};
use step::{StepResult, Stepper};
use validation::{BestCheckpoint, Validation};

pub const CHECKPOINT_LAST: &str = "checkpoint-last";
pub const BEST: &str = "best";
pub const METRICS: &str = "metrics.jsonl";
pub const PLOT: &str = "training.svg";
pub const SUMMARY: &str = "summary.json";
/// `--merge-lora`: the final adapter folded into the base weights.
pub const MERGED: &str = "merged";

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
    /// On the CPU: the training step's products ([`crate::precision::for_training`]): f32, bf16 (forward and
    /// input gradients; f32 weight gradients, master weights and AdamW) or int8 (`--load-kbit 8`: a LoRA run's
    /// frozen base). Validation stays f32.
    pub cpu_precision: Precision,
    /// A new run may replace an earlier run's files in the output folder (else it is refused).
    pub overwrite: bool,
    /// Run even where the memory estimate exceeds the memory available (`--no-memory-check`).
    pub no_memory_check: bool,
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
    /// `--valid-retrieval`: the best NDCG@10 (× 100), which decides `best/` then.
    pub best_ndcg_at_10: Option<f64>,
    pub last_eval: Option<StsScores>,
    pub last_retrieval: Option<crate::retrieval::RetrievalScores>,
    pub skipped_train_rows: usize,
    pub skipped_valid_rows: usize,
    pub truncated_texts: usize,
    pub interrupted: bool,
    pub resumed_from_step: Option<u64>,
    pub output: PathBuf,
    /// The memory estimate printed at start-up (`None` where the backbone has none).
    #[serde(default)]
    pub memory_estimate_bytes: Option<u64>,
    /// The process's peak resident set (`VmHWM`), at the end of the run.
    #[serde(default)]
    pub peak_rss_bytes: Option<u64>,
}

fn read_options(c: &TrainConfig, format: Option<Format>) -> Result<ReadOptions> {
    let columns = match &c.columns {
        Some(s) => s
            .parse()
            .map_err(|e: angle_data::DataError| TrainError::Config(e.to_string()))?,
        None => Default::default(),
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
        Format::U => DataFormat::U,
    }
}

/// One training dataset and the objective its batches are scored with.
pub(super) struct TrainSet {
    /// As `--train NAME=PATH` names it (`train` for the single unnamed dataset).
    pub name: String,
    pub data: Dataset,
    pub format: DataFormat,
    pub loss_fn: AngleLoss,
}

/// Reads every dataset of `--train` with its format and objective (`crate::datasets`).
fn load_sets(
    config: &TrainConfig,
    files: &[(crate::datasets::Source, Vec<PathBuf>)],
    tok: &angle_data::TextTokenizer,
) -> Result<Vec<TrainSet>> {
    let sources: Vec<_> = files.iter().map(|(s, _)| s.clone()).collect();
    let formats = crate::datasets::formats(config.format.as_deref(), &sources)?;
    let losses = crate::datasets::objectives(config, &sources)?;
    let prompts = prompts(config)?;
    let mut sets = Vec::with_capacity(files.len());
    for (((source, paths), format), loss) in files.iter().zip(formats).zip(losses) {
        let data = Dataset::load_all(paths, &read_options(config, format)?, &prompts, tok)
            .map_err(|e| TrainError::Data(e.to_string()))?;
        if data.is_empty() {
            return Err(TrainError::Data(format!(
                "{}: no examples to train on",
                crate::hub::describe(paths)
            )));
        }
        sets.push(TrainSet {
            name: source.label().to_string(),
            format: data_format(data.format()),
            loss_fn: AngleLoss::new(loss),
            data,
        });
    }
    Ok(sets)
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
    // Every option combination that cannot run fails here, before data files, weights or the output folder.
    crate::preflight::check_train(&config, resume, opts.device, opts.overwrite)?;
    let pooling = Pooling::parse(&config.pooling)
        .ok_or_else(|| TrainError::Config(format!("unknown pooling {:?}", config.pooling)))?;
    if config.train.is_empty() {
        return Err(TrainError::Config(
            "no training data: give --train FILE, FOLDER or hf://datasets/ORG/NAME".into(),
        ));
    }
    // Files first: a missing file or an uncached hub dataset fails before the model loads.
    let mut train_files = Vec::new();
    for source in crate::datasets::sources(&config.train)? {
        let files = crate::hub::data_files(&source.paths, &config.train_split)?;
        train_files.push((source, files));
    }
    let sampler: Sampler = config
        .sampler
        .parse()
        .map_err(|e| TrainError::Config(format!("--sampler: {e}")))?;
    let valid_files = crate::hub::data_files(&config.valid, &config.valid_split)?;
    crate::preflight::check_data_files(train_files.iter().flat_map(|(_, f)| f).chain(&valid_files))?;
    let retrieval_set = match &config.valid_retrieval {
        Some(spec) => {
            let dir = crate::hub::beir_dir(spec, "dev")?;
            crate::retrieval::check_beir_dir(&dir, "dev")?;
            Some(crate::retrieval::load_beir(&dir, "dev", config.skip_invalid)?)
        }
        None => None,
    };

    // Weights (and tokenizer files) come from the checkpoint when resuming, else from the model directory.
    let files_from = match resume {
        Some(dir) => crate::atomic::resolve(dir)?,
        None => config.model.clone(),
    };
    // The policy has the last word (an 8-bit base is int8 whatever the caller said); checkpoints record it.
    let mut config = config;
    let cpu_train = match opts.device {
        Device::Cpu => {
            let asked = Requested::Exactly(opts.cpu_precision);
            let p = crate::precision::for_training(asked, &config, resume.is_some())?;
            config.cpu_precision = Some(p);
            p
        }
        Device::Cuda(_) => Precision::F32,
    };
    let cpu_bf16 = cpu_train == Precision::Bf16;
    let cpu_valid = match opts.device {
        Device::Cpu => crate::precision::for_validation(&config, cpu_train)?,
        Device::Cuda(_) if config.valid_precision.is_some_and(|p| p != Precision::F32) => {
            return Err(TrainError::Config(
                "--valid-precision: a GPU run validates on the host copy in f32".into(),
            ));
        }
        Device::Cuda(_) => Precision::F32,
    };
    if cpu_valid != Precision::F32 {
        eprintln!("validation: {cpu_valid} products");
    }
    let load = LoadOptions {
        device: opts.device,
        pooling: Some(pooling),
        cpu_inference: cpu_valid,
        cpu_train,
        decoder: crate::decoder::settings_for(&config),
        append_eos: config.append_eos,
        layers: None,
    };
    let (mut model, tok) = load_backbone(&files_from, config.max_length, load)?;
    if cpu_bf16 {
        eprintln!(
            "cpu: training with bf16 products ({}); weight gradients, weights and AdamW in f32",
            if angle_encoder::bf16_is_fast() {
                format!("{} kernel", angle_encoder::bf16_kernel_name())
            } else {
                format!(
                    "{} kernel, not faster than f32 on this CPU",
                    angle_encoder::bf16_kernel_name()
                )
            }
        );
    }
    let max_len = tok.max_len();

    let sets = load_sets(&config, &train_files, &tok)?;
    let examples: usize = sets.iter().map(|s| s.data.len()).sum();
    let valid = match valid_files.is_empty() {
        false => Some(load_sts_files(
            &valid_files,
            &tok,
            &prompts(&config)?,
            config.skip_invalid,
        )?),
        true => None,
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
    let datasets: Vec<&Dataset> = sets.iter().map(|s| &s.data).collect();
    let per_epoch = steps_per_epoch(
        angle_data::mixed_batches_per_epoch(&datasets, &batch_cfg, sampler),
        config.grad_accum,
    );
    let total_steps = config.max_steps.unwrap_or(per_epoch * config.epochs as u64);

    model.zero_grad()?;
    let (mut state, resumed_from_step) = match resume {
        Some(dir) => {
            let r = checkpoint::load_training_checkpoint(dir, model.trainable_len())?;
            if r.state.train_examples != examples || r.state.total_steps != total_steps {
                return Err(TrainError::Checkpoint {
                    path: r.dir.clone(),
                    msg: format!(
                        "saved run had {} examples and {} steps; this one has {} and {}",
                        r.state.train_examples, r.state.total_steps, examples, total_steps
                    ),
                });
            }
            model.set_moments(r.adam_m, r.adam_v)?;
            let step = r.state.step;
            (r.state, Some(step))
        }
        None => (new_state(&config, total_steps, examples), None),
    };

    let rows_max = config.batch_size
        * sets
            .iter()
            .map(|s| s.data.format().rows_per_example())
            .max()
            .unwrap_or(2);
    // Before anything is written: a missing driver or an unsupported model fails here.
    let embedder = Embedder::new(config.eval_batch_size, max_len);
    let sizes = Sizes {
        // GradCache: one chunk's activations at a time
        train_seqs: config.grad_cache.map_or(rows_max, |n| n.min(rows_max)),
        embed_seqs: if valid.is_some() || retrieval_set.is_some() {
            embedder.batch_texts()
        } else {
            0
        },
        max_len,
    };
    model.reserve(sizes)?;
    // The memory the run will take, against what this machine has left (before anything is written).
    let memory = model.memory_plan(sizes);
    match &memory {
        Some(plan) => {
            let held = crate::memory::resident_bytes();
            let line =
                crate::memory::check(plan, held, crate::memory::available_bytes(), opts.no_memory_check)?;
            eprintln!("{line}");
        }
        None => eprintln!("memory estimate: none for {} yet (not checked)", model.describe()),
    }

    // The teacher before anything is written: a width or tokenizer it does not share is refused here.
    let teacher = if let Some(t) = &config.teacher {
        let probes: Vec<crate::distill::Probe<'_>> = sets
            .iter()
            .map(|s| crate::distill::Probe {
                name: &s.name,
                data: &s.data,
            })
            .collect();
        Some(crate::distill::Teacher::load(
            t,
            max_len,
            model.hidden_size(),
            &probes,
            opts.device,
            cpu_train,
            config.append_eos,
            rows_max,
        )?)
    } else {
        None
    };
    if teacher.as_ref().is_some_and(|t| t.all_tokens()) && model.token_states(true).is_none() {
        return Err(TrainError::Config(format!(
            "--teacher-pooling all: the student {} gives no per-token hidden states (BERT family on the CPU only)",
            model.describe()
        )));
    }
    let out = config.output.clone();
    if resume.is_none() && !opts.overwrite {
        refuse_earlier_run(&out)?;
    }
    std::fs::create_dir_all(&out).map_err(io_err(&out))?;
    let metrics_path = out.join(METRICS);
    let mut metrics = match resumed_from_step {
        Some(step) => MetricsWriter::resume(&metrics_path, step)?,
        None => MetricsWriter::create(&metrics_path)?,
    };

    let schedule = LinearSchedule::new(config.lr, config.warmup_steps, total_steps);
    let mut stepper = Stepper::new(&config, &sets, schedule, rows_max, model.hidden_size());
    // ESE / Matryoshka: every layer's pooled output in the objective, one backward (ese.rs).
    stepper.layered = crate::ese::LayeredObjective::new(&config, &*model)?;
    stepper.teacher = teacher;
    stepper.grad_cache = config
        .grad_cache
        .map(crate::grad_cache::GradCache::new)
        .transpose()?;
    // The device's fused objective covers one dataset's objective and nothing added to it.
    stepper.fused = stepper.layered.is_none()
        && stepper.teacher.is_none()
        && stepper.grad_cache.is_none()
        && sets.len() == 1
        && model
            .use_fused_objective(sets[0].loss_fn.config(), sets[0].format)
            .is_some();
    if sets.len() > 1 {
        let sizes: Vec<String> = sets
            .iter()
            .map(|s| format!("{} {} ({:?})", s.name, s.data.len(), s.data.format()))
            .collect();
        eprintln!(
            "datasets: {}; {} sampler, {} batches an epoch",
            sizes.join(", "),
            sampler.name(),
            angle_data::mixed_batches_per_epoch(&datasets, &batch_cfg, sampler)
        );
    }
    let plan_epoch = |epoch: u64| -> Result<MixedPlan> {
        angle_data::plan_mixed_epoch(&datasets, &batch_cfg, sampler, epoch)
            .map_err(|e| TrainError::Data(e.to_string()))
    };

    let bar = progress_bar(opts.progress, total_steps, state.step);
    let mut plan = plan_epoch(state.epoch)?;
    let mut window = Window::default();
    let best = BestCheckpoint {
        dir: out.join(BEST),
        files_from: &files_from,
        config: &config,
    };
    let mut validation = (valid.is_some() || retrieval_set.is_some()).then(|| {
        // The training prompts: the query / document ones, else the text prompt (checked by preflight).
        let side = |p: &Option<String>| {
            p.as_ref()
                .or(config.text_prompt.as_ref())
                .and_then(|p| angle_data::Prompt::new(p.clone()).ok())
        };
        let prompts = crate::retrieval::RetrievalPrompts {
            query: side(&config.query_prompt),
            doc: side(&config.doc_prompt),
        };
        Validation::new(valid, retrieval_set.map(|s| (s, prompts, tok.clone())), embedder)
    });
    // The untrained model's score starts the curve (and is the best so far), unless the run is resumed.
    if let (Some(v), None) = (validation.as_mut(), resumed_from_step) {
        v.run(
            &mut *model,
            &mut state,
            0.0,
            &mut metrics,
            &bar,
            opts.progress,
            &best,
        )?;
    }
    let mut interrupted = false;
    let log_steps = config.log_steps.max(1);

    while state.step < total_steps {
        if state.batch_in_epoch >= plan.len() {
            state.epoch += 1;
            state.batch_in_epoch = 0;
            plan = plan_epoch(state.epoch)?;
        }
        let micro = config.grad_accum.min(plan.len() - state.batch_in_epoch);
        // Saturation metrics only at logged steps (crate::saturation), on the last micro-batch.
        let logged = (state.step + 1) % log_steps == 0 || state.step + 1 == total_steps;
        let mut r = stepper.step(
            &mut *model,
            &plan,
            state.batch_in_epoch,
            micro,
            state.step,
            logged,
        )?;
        state.batch_in_epoch += micro;
        state.step += 1;
        record_step(&mut state, &r);
        window.add(&r);

        let epoch_f = state.epoch as f64 + state.batch_in_epoch as f64 / plan.len().max(1) as f64;
        bar.set_position(state.step);
        if !bar.is_hidden() {
            bar.set_message(format!(
                "loss {:.4} lr {:.2e} {:.1} pairs/s",
                r.loss,
                r.lr,
                window.pairs_per_s()
            ));
        }

        let epoch_end = state.batch_in_epoch >= plan.len();
        let last = state.step == total_steps;
        let stop = opts.stop.load(Ordering::SeqCst);
        if state.step % log_steps == 0 || last || stop {
            let rec = window.take_record(state.step, epoch_f, r.lr, state.train_seconds, &sets);
            if bar.is_hidden() && opts.progress {
                let per: String = rec.datasets.iter().map(|(n, l)| format!(" {n} {l:.4}")).collect();
                eprintln!(
                    "step {}/{} epoch {:.2} loss {:.4}{per} lr {:.2e} grad_norm {:.3} {:.1} pairs/s",
                    rec.step, total_steps, rec.epoch, rec.loss, rec.lr, rec.grad_norm, rec.pairs_per_s
                );
            }
            metrics.write(&Record::Train(rec))?;
            if let Some(sat) = r.saturation.take() {
                let rec = crate::saturation::SaturationRecord {
                    step: state.step,
                    epoch: epoch_f,
                    ..sat
                };
                metrics.write(&Record::Saturation(rec))?;
            }
        }

        let due = |every: u64| {
            if every > 0 {
                state.step % every == 0
            } else {
                epoch_end
            }
        };
        let (eval_due, save_due) = (due(config.eval_steps), due(config.save_steps));
        if let Some(v) = validation.as_mut().filter(|_| eval_due || last) {
            v.run(
                &mut *model,
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
                &mut *model,
                &files_from,
                &config,
                &state,
            )?;
        }
        if stop && !last {
            let line = format!(
                "interrupted: saved {} at step {}",
                out.join(CHECKPOINT_LAST).display(),
                state.step
            );
            say(&bar, opts.progress, line);
            interrupted = true;
            break;
        }
    }
    bar.finish_and_clear();
    drop(metrics);
    if config.merge_lora && !interrupted {
        let dir = out.join(MERGED);
        model.write_merged(&dir, &out.join(CHECKPOINT_LAST))?;
        say(
            &bar,
            opts.progress,
            format!("wrote {}: the adapter merged into the base", dir.display()),
        );
    }
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
        last_retrieval: validation.as_ref().and_then(|v| v.last_retrieval),
        best_ndcg_at_10: state.best_ndcg,
        skipped_train_rows: sets.iter().map(|s| s.data.skip_counts().total).sum(),
        skipped_valid_rows: validation
            .as_ref()
            .and_then(|v| v.data.as_ref())
            .map_or(0, |d| d.skip_counts().total),
        truncated_texts: sets.iter().map(|s| s.data.truncated_texts()).sum(),
        interrupted,
        resumed_from_step,
        output: out.clone(),
        memory_estimate_bytes: memory.map(|p| p.total() as u64),
        peak_rss_bytes: crate::memory::peak_resident_bytes(),
    };
    let p = out.join(SUMMARY);
    let text = serde_json::to_string_pretty(&summary).map_err(|source| TrainError::Json {
        path: p.clone(),
        source,
    })?;
    std::fs::write(&p, text + "\n").map_err(io_err(&p))?;
    Ok(summary)
}

/// A new run never replaces an earlier one's files without being asked (`--overwrite`) or resuming it.
pub(crate) fn refuse_earlier_run(out: &Path) -> Result<()> {
    let found: Vec<&str> = [CHECKPOINT_LAST, BEST, METRICS, SUMMARY]
        .into_iter()
        .filter(|f| out.join(f).exists())
        .collect();
    if found.is_empty() {
        return Ok(());
    }
    Err(TrainError::Config(format!(
        "{} holds an earlier run ({}): continue it with --resume {}, or replace it with --overwrite",
        out.display(),
        found.join(", "),
        out.join(CHECKPOINT_LAST).display()
    )))
}

/// The state of a run that has not taken a step yet.
fn new_state(config: &TrainConfig, total_steps: u64, train_examples: usize) -> TrainerState {
    TrainerState {
        step: 0,
        total_steps,
        epoch: 0,
        batch_in_epoch: 0,
        seed: config.seed,
        best_spearman: None,
        best_ndcg: None,
        best_step: None,
        train_seconds: 0.0,
        train_cpu_seconds: 0.0,
        examples_seen: 0,
        tokens_seen: 0,
        train_examples,
    }
}

/// Adds a finished step's time and counts to the run's totals.
fn record_step(state: &mut TrainerState, r: &StepResult) {
    state.train_seconds += r.seconds;
    state.train_cpu_seconds += r.cpu_seconds.unwrap_or(0.0);
    state.examples_seen += r.examples;
    state.tokens_seen += r.tokens;
}
