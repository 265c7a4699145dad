//! One optimizer step: for each micro-batch data → forward → objective → backward (gradients add up),
//! then the gradient norm (and clipping) and AdamW at the schedule's learning rate.

use std::time::Instant;

use angle_data::{MixedPlan, PackedBatch};
use angle_encoder::AdamW;
use angle_loss::LossParts;
use angle_tensor::rng::derive_seed;
use ndarray::{ArrayView2, ArrayViewMut2};

use super::TrainSet;
use super::log::{accumulate, part_values};
use crate::backbone::{Backbone, Packed};
use crate::config::TrainConfig;
use crate::cputime::process_cpu_seconds;
use crate::error::{Result, TrainError};
use crate::schedule::LinearSchedule;

/// What one optimizer step did.
#[derive(Debug, Clone)]
pub(super) struct StepResult {
    /// The objectives' gradient sizes and saturated shares on the last micro-batch, when asked for
    /// (`crate::saturation`; format A on the host objective).
    pub saturation: Option<crate::saturation::SaturationRecord>,
    /// The mean loss over the step's micro-batches, as one larger batch's would be.
    pub loss: f64,
    pub parts: [Option<f64>; 5],
    /// Per dataset: the sum of its micro-batches' losses in this step, and their number.
    pub by_dataset: Vec<(f64, u64)>,
    /// `--teacher`: the step's mean distillation term (weighted; part of `loss`).
    pub distill: Option<f64>,
    pub grad_norm: f64,
    pub lr: f32,
    pub examples: u64,
    pub tokens: u64,
    pub seconds: f64,
    pub cpu_seconds: Option<f64>,
}

/// The objective of one micro-batch: its value and unweighted parts.
struct MicroLoss {
    loss: f32,
    parts: LossParts<f32>,
    /// The distillation term (weighted), included in `loss`.
    distill: Option<f32>,
}

/// The buffers and settings every step reuses.
pub(super) struct Stepper<'a> {
    pub config: &'a TrainConfig,
    /// The training datasets; each micro-batch comes from one ([`MixedPlan::at`]).
    pub sets: &'a [TrainSet],
    pub schedule: LinearSchedule,
    /// The backbone computes the objective itself ([`Backbone::use_fused_objective`]).
    pub fused: bool,
    /// ESE / Matryoshka: the objective over several layers or truncations (`crate::ese`).
    pub layered: Option<crate::ese::LayeredObjective>,
    /// `--teacher`: the frozen teacher whose term joins the objective (`crate::distill`).
    pub teacher: Option<crate::distill::Teacher>,
    /// `--grad-cache N`: chunked forward and backward (`crate::grad_cache`).
    pub grad_cache: Option<crate::grad_cache::GradCache>,
    batch: PackedBatch,
    pooled: Vec<f32>,
    dpooled: Vec<f32>,
}

fn numeric(step: u64, msg: String) -> TrainError {
    TrainError::Numeric { step, msg }
}

impl<'a> Stepper<'a> {
    pub(super) fn new(
        config: &'a TrainConfig,
        sets: &'a [TrainSet],
        schedule: LinearSchedule,
        rows_max: usize,
        hidden: usize,
    ) -> Self {
        Stepper {
            config,
            sets,
            schedule,
            fused: false,
            layered: None,
            teacher: None,
            grad_cache: None,
            batch: PackedBatch::default(),
            pooled: Vec::with_capacity(rows_max * hidden),
            dpooled: Vec::with_capacity(rows_max * hidden),
        }
    }

    /// Runs step `step` (0-based) over `micro` micro-batches of `plan` from `first`.
    pub(super) fn step(
        &mut self,
        model: &mut dyn Backbone,
        plan: &MixedPlan,
        first: usize,
        micro: usize,
        step: u64,
        measure_saturation: bool,
    ) -> Result<StepResult> {
        let started = Instant::now();
        let cpu_started = process_cpu_seconds();
        model.zero_grad()?;
        let mut r = StepResult {
            saturation: None,
            loss: 0.0,
            parts: [None; 5],
            by_dataset: vec![(0.0, 0); self.sets.len()],
            distill: None,
            grad_norm: 0.0,
            lr: 0.0,
            examples: 0,
            tokens: 0,
            seconds: 0.0,
            cpu_seconds: None,
        };
        for k in 0..micro {
            let (d, b) = plan.at(first + k);
            self.sets[d]
                .data
                .fill_batch(&plan.plans[d], b, &mut self.batch)
                .map_err(|e| TrainError::Data(e.to_string()))?;
            if self.batch.rows() == 0 {
                // Every example of the batch was dropped as a duplicate: nothing to learn from.
                continue;
            }
            let dropout = self
                .config
                .dropout
                .then(|| derive_seed(derive_seed(self.config.seed, step), k as u64));
            let sat = measure_saturation && k + 1 == micro;
            let m = self.micro_batch(model, d, dropout, micro, step, sat.then_some(&mut r.saturation))?;
            if !m.loss.is_finite() {
                return Err(numeric(step, format!("loss is {}", m.loss)));
            }
            r.loss += m.loss as f64 / micro as f64;
            r.by_dataset[d].0 += m.loss as f64;
            r.by_dataset[d].1 += 1;
            accumulate(&mut r.distill, m.distill.map(|v| v as f64 / micro as f64));
            for (acc, v) in r.parts.iter_mut().zip(part_values(&m.parts)) {
                accumulate(acc, v.map(|v| v as f64 / micro as f64));
            }
            r.examples += self.batch.examples.len() as u64;
            r.tokens += self.batch.tokens() as u64;
        }
        r.grad_norm = self.optimizer_step(model, step)?;
        r.lr = self.schedule.lr_at(step);
        r.seconds = started.elapsed().as_secs_f64();
        r.cpu_seconds = match (cpu_started, process_cpu_seconds()) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        Ok(r)
    }

    /// Forward, objective and backward of one micro-batch (its loss scaled by `1 / micro` in the
    /// gradients: the step's loss is the mean over its micro-batches).
    fn micro_batch(
        &mut self,
        model: &mut dyn Backbone,
        set: usize,
        dropout: Option<u64>,
        micro: usize,
        step: u64,
        saturation: Option<&mut Option<crate::saturation::SaturationRecord>>,
    ) -> Result<MicroLoss> {
        let b = &self.batch;
        let packed = Packed {
            input_ids: &b.input_ids,
            token_type_ids: &b.token_type_ids,
            seq_offsets: &b.seq_offsets,
        };
        let inv = 1.0 / micro as f32;
        let (loss_fn, format) = (&self.sets[set].loss_fn, self.sets[set].format);
        if self.fused {
            let (loss, parts) = model.fused_step(&packed, &b.labels, dropout, inv)?;
            return Ok(MicroLoss {
                loss,
                parts,
                distill: None,
            });
        }
        let ids = (!self.config.drop_duplicates).then_some(&b.text_ids[..]);
        if let Some(lo) = self.layered.as_mut() {
            let (loss, parts) = lo.step(
                model,
                &packed,
                dropout,
                loss_fn,
                format,
                &b.labels,
                ids,
                inv,
                step,
                self.grad_cache.as_mut(),
            )?;
            return Ok(MicroLoss {
                loss,
                parts,
                distill: None,
            });
        }
        match self.grad_cache.as_mut() {
            Some(gc) => gc.forward(model, &packed, dropout, &mut self.pooled)?,
            None => model.forward_train(&packed, dropout, &mut self.pooled)?,
        }
        let (rows, h) = (b.rows(), model.hidden_size());
        self.dpooled.clear();
        self.dpooled.resize(rows * h, 0.0);
        let y = ArrayView2::from_shape((rows, h), &self.pooled).map_err(|e| numeric(step, e.to_string()))?;
        let mut g = ArrayViewMut2::from_shape((rows, h), &mut self.dpooled)
            .map_err(|e| numeric(step, e.to_string()))?;
        // Every format masks duplicates with them (A: in-batch negatives, B and C: contrastive softmaxes).
        let (mut loss, parts) = loss_fn
            .compute_into(format, y, &b.labels, ids, &mut g)
            .map_err(|e| TrainError::Loss {
                step,
                msg: e.to_string(),
            })?;
        let distill = match self.teacher.as_mut() {
            Some(t) if t.all_tokens() => Some(t.add_token_term(&*model, b, h)?),
            Some(t) => Some(t.add_term(b, set, &self.pooled, h, &mut self.dpooled)?),
            None => None,
        };
        loss += distill.unwrap_or(0.0);
        if let Some(out) = saturation.filter(|_| format == angle_loss::DataFormat::A) {
            let y =
                ArrayView2::from_shape((rows, h), &self.pooled).map_err(|e| numeric(step, e.to_string()))?;
            *out = Some(
                crate::saturation::measure(loss_fn.config(), y, &b.labels, ids).map_err(|e| {
                    TrainError::Loss {
                        step,
                        msg: e.to_string(),
                    }
                })?,
            );
        }
        if micro > 1 {
            self.dpooled.iter_mut().for_each(|x| *x *= inv);
        }
        match (
            self.teacher.as_mut().filter(|t| t.all_tokens()),
            self.grad_cache.as_mut(),
        ) {
            (Some(t), _) => model.backward_tokens(&packed, &self.dpooled, t.dtokens(inv))?,
            (None, Some(gc)) => gc.backward(model, &packed, dropout, &self.dpooled)?,
            (None, None) => model.backward(&packed, &self.dpooled)?,
        }
        Ok(MicroLoss { loss, parts, distill })
    }

    /// The gradient norm (clipped to `max_grad_norm` when set), then AdamW step `step + 1`.
    fn optimizer_step(&mut self, model: &mut dyn Backbone, step: u64) -> Result<f64> {
        let c = self.config;
        let max_norm = (c.max_grad_norm > 0.0).then_some(c.max_grad_norm);
        let grad_norm = model.clip_grad_norm(max_norm)?;
        if !grad_norm.is_finite() {
            return Err(numeric(step, format!("gradient norm is {grad_norm}")));
        }
        let hp = AdamW {
            lr: self.schedule.lr_at(step) as f64,
            beta1: c.beta1 as f64,
            beta2: c.beta2 as f64,
            eps: c.eps as f64,
            weight_decay: c.weight_decay as f64,
        };
        model.adamw_step(&hp, step + 1)?;
        Ok(grad_norm)
    }
}
