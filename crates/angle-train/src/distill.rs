//! Distillation from a frozen teacher (`--teacher`): a term added to each micro-batch's objective that pulls the
//! student's pooled embeddings towards the teacher's embeddings of the same texts.
//!
//! - `kl` (default): angle-emb's alignment term exactly — `KLDivLoss(batchmean)(log_softmax(s/T), softmax(t/T)) · T`
//!   over the embedding dimension (`angle_loss::distill::kl_into`); needs equal widths.
//! - `mse`: `MSELoss` between the embeddings; equal widths.
//! - `margin-mse`: sentence-transformers' `MarginMSELoss` on format-C rows (query, positive, negative): the
//!   student's margin `q·p − q·n` towards the teacher's; any teacher width.
//!
//! `--teacher-pooling all` aligns every token's last hidden state instead (angle-emb's `all`), its gradient going
//! into the student's hidden state through `Backbone::backward_tokens`.
//!
//! The teacher runs in eval mode (no dropout, no gradient) on the student's token ids, so its tokenizer must give
//! the same ids (checked on the first texts of every dataset before training). `--teacher-cache` embeds every
//! training text once before the first step (the teacher is frozen and deterministic, so the term is the same);
//! without it, each batch's texts are embedded as the batch comes.

use std::path::{Path, PathBuf};

use angle_data::{PackedBatch, TextTokenizer};
use angle_encoder::Pooling;
use angle_loss::distill::{kl_into, margin_mse_into, mse_into};
use ndarray::{ArrayView2, ArrayViewMut2};

use crate::backbone::{Backbone, Packed, Sizes};
use crate::config::{TeacherSettings, TrainConfig};
use crate::device::Device;
use crate::embed::{Embedder, LoadOptions, load_backbone};
use crate::error::{Result, TrainError};
use crate::precision::{CpuPath, Precision};

/// Texts compared between the student's and the teacher's tokenizer, per dataset.
const TOKENIZER_PROBE: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DistillKind {
    Kl,
    Mse,
    MarginMse,
}

impl DistillKind {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "kl" => Ok(DistillKind::Kl),
            "mse" => Ok(DistillKind::Mse),
            "margin-mse" | "margin_mse" => Ok(DistillKind::MarginMse),
            _ => Err(TrainError::Config(format!(
                "--distill {s:?}: kl, mse or margin-mse"
            ))),
        }
    }
}

fn refuse<T>(msg: String) -> Result<T> {
    Err(TrainError::Config(msg))
}

/// The teacher options alone, before anything loads.
pub fn check_settings(t: &TeacherSettings, c: &TrainConfig) -> Result<()> {
    DistillKind::parse(&t.kind)?;
    if t.pooling == "all" {
        if t.cache {
            return refuse(
                "--teacher-cache keeps one embedding per text; with --teacher-pooling all (every token's hidden \
                 state) the teacher runs on every batch: leave --teacher-cache out"
                    .into(),
            );
        }
        if DistillKind::parse(&t.kind)? == DistillKind::MarginMse {
            return refuse(
                "--distill margin-mse compares pooled margins: not with --teacher-pooling all".into(),
            );
        }
    } else if Pooling::parse(&t.pooling).is_none() {
        return refuse(format!(
            "--teacher-pooling {:?}: cls, mean, max, cls_avg, last, a token index, or all",
            t.pooling
        ));
    }
    if !(t.weight.is_finite() && t.weight >= 0.0) {
        return refuse(format!(
            "--distill-weight {}: must be finite and non-negative",
            t.weight
        ));
    }
    if !(t.temperature.is_finite() && t.temperature > 0.0) {
        return refuse(format!(
            "--distill-temperature {}: must be finite and positive",
            t.temperature
        ));
    }
    if c.ese.is_some() || c.matryoshka.is_some() {
        return refuse(
            "--teacher with --ese or --matryoshka-dims: the distillation term is on the last layer's full \
             embedding only; train one or the other"
                .into(),
        );
    }
    Ok(())
}

/// The distillation flags (flattened into `angle train`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DistillArgs {
    /// Distil from this frozen teacher (a model folder or hub id, any family; it must share the student's
    /// tokenizer): angle-emb's --teacher_name_or_path.
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// The teacher's pooling: cls, mean, max, cls_avg, last, a token index, or all (every token's hidden state
    /// against the student's; BERT family on the CPU) [default: cls, as angle-emb].
    #[arg(long, requires = "teacher")]
    pub teacher_pooling: Option<String>,
    /// The term: kl (angle-emb's alignment: KL over the embedding dimension, batchmean), mse, or margin-mse
    /// (format C: the query-positive minus query-negative margins) [default: kl].
    #[arg(long, requires = "teacher")]
    pub distill: Option<String>,
    /// The term's weight in the objective [default: 1].
    #[arg(long, requires = "teacher")]
    pub distill_weight: Option<f64>,
    /// The softmaxes' temperature of --distill kl [default: 1].
    #[arg(long, requires = "teacher")]
    pub distill_temperature: Option<f64>,
    /// Embed every training text with the teacher once, before the first step, instead of every batch (the
    /// teacher is frozen: the same term, less work for more than one epoch).
    #[arg(long, requires = "teacher")]
    pub teacher_cache: bool,
}

impl DistillArgs {
    /// Writes the flags into the configuration; `set` gets the keys given.
    pub fn apply(&self, c: &mut TrainConfig, set: &mut Vec<String>) {
        let Some(model) = &self.teacher else { return };
        let d = TeacherSettings::default();
        c.teacher = Some(TeacherSettings {
            model: model.clone(),
            pooling: self.teacher_pooling.clone().unwrap_or(d.pooling),
            kind: self.distill.clone().unwrap_or(d.kind),
            weight: self.distill_weight.unwrap_or(d.weight),
            temperature: self.distill_temperature.unwrap_or(d.temperature),
            cache: self.teacher_cache,
        });
        set.push("teacher".into());
    }
}

/// The frozen teacher and its term's settings.
pub struct Teacher {
    model: Box<dyn Backbone>,
    kind: DistillKind,
    weight: f32,
    temperature: f32,
    /// `--teacher-cache`: per dataset, the teacher's embedding of every text (`num_texts × width`).
    cache: Vec<Vec<f32>>,
    /// The current batch's teacher embeddings (`rows × width`).
    rows: Vec<f32>,
    width: usize,
    /// `--teacher-pooling all`: the term is over every real token's last hidden state, and its gradient
    /// (`tokens × width`) goes into the student's hidden state (`Backbone::backward_tokens`).
    all_tokens: bool,
    dtokens: Vec<f32>,
}

/// The texts of a dataset whose ids the teacher's tokenizer must reproduce.
pub struct Probe<'a> {
    pub name: &'a str,
    pub data: &'a angle_data::Dataset,
}

impl Teacher {
    /// Loads the teacher for a student of width `student_width`, checks its tokenizer against `sets` and, with
    /// `--teacher-cache`, embeds every text of every dataset.
    pub fn load(
        s: &TeacherSettings,
        max_len: usize,
        student_width: usize,
        sets: &[Probe<'_>],
        device: Device,
        student_products: Precision,
        append_eos: bool,
        rows_max: usize,
    ) -> Result<Self> {
        let kind = DistillKind::parse(&s.kind)?;
        let all_tokens = s.pooling == "all";
        // With `all` the teacher's pooled output goes unused (its token states are read).
        let pooling = match all_tokens {
            true => Pooling::Mean,
            false => Pooling::parse(&s.pooling)
                .ok_or_else(|| TrainError::Config(format!("--teacher-pooling {:?}", s.pooling)))?,
        };
        // The teacher encodes with the student's bf16 products where its implementation has them (not the blocks).
        let bf16 = student_products == Precision::Bf16
            && CpuPath::of(&crate::hub::model_dir(&s.model)?, false, None)? != CpuPath::Blocks;
        let opts = LoadOptions {
            device,
            pooling: Some(pooling),
            cpu_inference: if bf16 { Precision::Bf16 } else { Precision::F32 },
            cpu_train: Precision::F32,
            decoder: crate::decoder::DecoderSettings {
                inference_only: true,
                ..Default::default()
            },
            append_eos,
            layers: None,
        };
        let (mut model, tok) = load_backbone(&s.model, max_len, opts)?;
        let width = model.hidden_size();
        if kind != DistillKind::MarginMse && width != student_width {
            return refuse(format!(
                "--teacher {}: its embeddings have {width} dimensions, the student's {student_width}; --distill {} \
                 compares them entry by entry (margin-mse compares margins and takes any width)",
                s.model.display(),
                s.kind
            ));
        }
        for p in sets {
            if kind == DistillKind::MarginMse && p.data.format() != angle_data::Format::C {
                return refuse(format!(
                    "--distill margin-mse needs (query, positive, negative) rows: the dataset {} is format {:?}",
                    p.name,
                    p.data.format()
                ));
            }
            same_ids(&s.model, &tok, p)?;
        }
        let embedder = Embedder::new(rows_max.max(64), max_len);
        model.reserve(Sizes {
            train_seqs: 0,
            embed_seqs: embedder.batch_texts().max(rows_max),
            max_len,
        })?;
        let mut t = Teacher {
            model,
            kind,
            weight: s.weight as f32,
            temperature: s.temperature as f32,
            cache: Vec::new(),
            rows: Vec::new(),
            width,
            all_tokens,
            dtokens: Vec::new(),
        };
        if all_tokens && t.model.token_states(false).is_none() {
            return refuse(format!(
                "--teacher-pooling all: the teacher {} gives no per-token hidden states (BERT family on the CPU \
                 only)",
                t.model.describe()
            ));
        }
        eprintln!(
            "teacher: {} ({} pooling, {width} dimensions), --distill {} weight {}{}",
            t.model.describe(),
            s.pooling,
            s.kind,
            s.weight,
            if s.cache { ", every text embedded once" } else { "" }
        );
        if s.cache {
            let mut embedder = embedder;
            for p in sets {
                let started = std::time::Instant::now();
                let mut out = Vec::new();
                embedder.embed_dataset(&mut *t.model, p.data, &mut out)?;
                eprintln!(
                    "teacher: {} texts of {} embedded in {:.1} s",
                    p.data.num_texts(),
                    p.name,
                    started.elapsed().as_secs_f64()
                );
                t.cache.push(out);
            }
        }
        Ok(t)
    }

    /// Adds `weight · dL/dstudent` into `grad` (`rows × width`, as `student`) for the batch `b` of dataset `set`,
    /// and returns `weight · L`.
    pub fn add_term(
        &mut self,
        b: &PackedBatch,
        set: usize,
        student: &[f32],
        student_width: usize,
        grad: &mut [f32],
    ) -> Result<f32> {
        let rows = b.rows();
        let w = self.width;
        if let Some(cache) = self.cache.get(set) {
            self.rows.clear();
            for &t in &b.texts {
                let t = t as usize;
                self.rows.extend_from_slice(&cache[t * w..(t + 1) * w]);
            }
        } else {
            let packed = Packed {
                input_ids: &b.input_ids,
                token_type_ids: &b.token_type_ids,
                seq_offsets: &b.seq_offsets,
            };
            self.model.embed(&packed, &mut self.rows)?;
        }
        let shape = |e: ndarray::ShapeError| TrainError::Config(format!("distillation: {e}"));
        let s = ArrayView2::from_shape((rows, student_width), student).map_err(shape)?;
        let t = ArrayView2::from_shape((rows, w), &self.rows[..rows * w]).map_err(shape)?;
        let mut g = ArrayViewMut2::from_shape((rows, student_width), grad).map_err(shape)?;
        let weight = self.weight;
        let loss = match self.kind {
            DistillKind::Kl => kl_into(s, t, self.temperature, rows, weight, &mut g),
            DistillKind::Mse => mse_into(s, t, weight, &mut g),
            DistillKind::MarginMse => margin_mse_into(s, t, b.rows_per_example, weight, &mut g),
        }
        .map_err(|e| TrainError::Config(format!("distillation term: {e}")))?;
        Ok(self.weight * loss)
    }
}

impl Teacher {
    /// `--teacher-pooling all`: the term is over every token, [`Teacher::add_token_term`].
    pub fn all_tokens(&self) -> bool {
        self.all_tokens
    }

    /// `--teacher-pooling all`: the term between the student's last hidden state (its last train-mode forward,
    /// `student`) and the teacher's of the same packed batch `b`, over every real token (angle-emb's `all` also
    /// counts padding positions; unpadded batches agree), batchmean over the batch's sequences. Its gradient
    /// (weighted) is in [`Teacher::dtokens`] for `Backbone::backward_tokens`; returns `weight · L`.
    pub fn add_token_term(
        &mut self,
        student: &dyn Backbone,
        b: &PackedBatch,
        student_width: usize,
    ) -> Result<f32> {
        let packed = Packed {
            input_ids: &b.input_ids,
            token_type_ids: &b.token_type_ids,
            seq_offsets: &b.seq_offsets,
        };
        self.model.embed(&packed, &mut self.rows)?;
        let missing = || TrainError::Config("--teacher-pooling all: no token states after a forward".into());
        let t = self.model.token_states(false).ok_or_else(missing)?;
        let s = student.token_states(true).ok_or_else(missing)?;
        let n = b.input_ids.len();
        let shape = |e: ndarray::ShapeError| TrainError::Config(format!("distillation: {e}"));
        let s = ArrayView2::from_shape((n, student_width), s).map_err(shape)?;
        let t = ArrayView2::from_shape((n, self.width), t).map_err(shape)?;
        self.dtokens.clear();
        self.dtokens.resize(n * student_width, 0.0);
        let mut g = ArrayViewMut2::from_shape((n, student_width), &mut self.dtokens[..]).map_err(shape)?;
        let loss = match self.kind {
            DistillKind::Kl => kl_into(s, t, self.temperature, b.rows(), self.weight, &mut g),
            DistillKind::Mse => mse_into(s, t, self.weight, &mut g),
            DistillKind::MarginMse => return refuse("margin-mse with --teacher-pooling all".into()),
        }
        .map_err(|e| TrainError::Config(format!("distillation term: {e}")))?;
        Ok(self.weight * loss)
    }

    /// The last [`Teacher::add_token_term`]'s gradient of the student's hidden state, scaled by `scale`.
    pub fn dtokens(&mut self, scale: f32) -> &[f32] {
        if scale != 1.0 {
            self.dtokens.iter_mut().for_each(|g| *g *= scale);
        }
        &self.dtokens
    }
}

/// Refuses a teacher whose tokenizer gives other ids than the student's for any of the first texts of `p`.
fn same_ids(teacher: &Path, tok: &TextTokenizer, p: &Probe<'_>) -> Result<()> {
    for t in 0..p.data.num_texts().min(TOKENIZER_PROBE) {
        let ours = p.data.tokens(t).0;
        let theirs = tok
            .encode(p.data.text(t))
            .map_err(|e| TrainError::Data(e.to_string()))?;
        if theirs.ids != ours {
            return refuse(format!(
                "--teacher {}: its tokenizer gives other token ids than the student's for {:?} (dataset {}): the \
                 teacher reads the student's ids, so both must share a tokenizer",
                teacher.display(),
                p.data.text(t),
                p.name
            ));
        }
    }
    Ok(())
}
