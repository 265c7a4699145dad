//! ESE and Matryoshka in the training step (docs/ese.md): every layer's pooled output goes into the objective
//! (`angle_loss::ese_loss`, or the Matryoshka sum over leading-dimension truncations), and one encoder backward
//! takes all their gradients (`Encoder::backward_layers`). CPU only; the trainer calls [`LayeredObjective::step`]
//! in place of its single-layer objective.

use crate::backbone::{Backbone, Packed};
use angle_loss::{
    AngleLoss, BaseObjective, DataFormat, EseConfig, LossError, LossParts, Matryoshka, MatryoshkaObjective,
    ese_loss,
};
use ndarray::{ArrayView2, ArrayViewMut2};
use serde::{Deserialize, Serialize};

use crate::{Result, TrainConfig, TrainError};

/// `--matryoshka-dims` / `--matryoshka-weights` as the configuration records them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MatryoshkaConfig {
    pub dims: Vec<usize>,
    /// Empty: 1 for every width.
    pub weights: Vec<f64>,
}

/// Checks the ESE and Matryoshka settings against the model's width and depth.
pub fn validate(config: &TrainConfig, hidden: usize, depth: usize) -> Result<()> {
    let bad = |m: String| Err(TrainError::Config(m));
    if let Some(e) = &config.ese {
        if e.compression_size == 0 || e.compression_size > hidden {
            return bad(format!(
                "ese_compression_size {} must be between 1 and the model's hidden size {hidden}",
                e.compression_size
            ));
        }
        if config.loss.angle_w > 0.0 && e.compression_size % 2 == 1 {
            return bad(format!(
                "ese_compression_size {} must be even for the angle objective (real and imaginary halves)",
                e.compression_size
            ));
        }
        if !(e.kl_temperature.is_finite() && e.kl_temperature > 0.0) {
            return bad(format!(
                "ese_kl_temperature {} must be finite and positive",
                e.kl_temperature
            ));
        }
        if depth == 0 {
            return bad("--ese needs a model with at least one layer".into());
        }
    }
    if let Some(m) = &config.matryoshka {
        if let Some(&d) = m.dims.iter().find(|&&d| d > hidden) {
            return bad(format!(
                "matryoshka dim {d} is wider than the model's hidden size {hidden}"
            ));
        }
        Matryoshka::new(m.dims.clone(), m.weights.clone()).map_err(|e| TrainError::Config(e.to_string()))?;
    }
    Ok(())
}

/// The per-step state: a pooled buffer per layer the objective reads (the backbone keeps the poolers).
#[derive(Debug)]
pub struct LayeredObjective {
    ese: Option<EseConfig>,
    matryoshka: Option<Matryoshka>,
    /// The layers pooled: 1..=n with ESE, n alone otherwise.
    layers: Vec<usize>,
    pooled: Vec<Vec<f32>>,
    grads: Vec<Vec<f32>>,
    /// The gradient of the logged parts' extra evaluation, thrown away (kept to avoid a per-step allocation).
    scratch: Vec<f32>,
}

impl LayeredObjective {
    /// `None` when neither ESE nor Matryoshka is on (the trainer's plain step runs).
    pub fn new(config: &TrainConfig, model: &dyn Backbone) -> Result<Option<Self>> {
        let (hidden, depth) = (model.hidden_size(), model.num_layers());
        validate(config, hidden, depth)?;
        if config.ese.is_none() && config.matryoshka.is_none() {
            return Ok(None);
        }
        let matryoshka = match &config.matryoshka {
            Some(m) => Some(
                Matryoshka::new(m.dims.clone(), m.weights.clone())
                    .map_err(|e| TrainError::Config(e.to_string()))?,
            ),
            None => None,
        };
        let layers: Vec<usize> = if config.ese.is_some() {
            (1..=depth).collect()
        } else {
            vec![depth]
        };
        Ok(Some(LayeredObjective {
            ese: config.ese.clone(),
            matryoshka,
            pooled: vec![Vec::new(); layers.len()],
            grads: vec![Vec::new(); layers.len()],
            scratch: Vec::new(),
            layers,
        }))
    }

    /// Forward (pooling every layer the objective reads), the objective, and one backward with `scale ·`
    /// every layer's gradient. Returns the loss (unscaled) and the parts of the base objective on the whole
    /// model's embedding (the last layer, all dimensions), so that metrics.jsonl logs the same parts as a plain run.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        model: &mut dyn Backbone,
        batch: &Packed<'_>,
        dropout: Option<u64>,
        loss_fn: &AngleLoss,
        format: DataFormat,
        labels: &[f32],
        text_ids: Option<&[u64]>,
        scale: f32,
        step: u64,
        mut grad_cache: Option<&mut crate::grad_cache::GradCache>,
    ) -> Result<(f32, LossParts<f32>)> {
        let h = model.hidden_size();
        let rows = batch.num_seqs();
        if self.ese.is_some() {
            model
                .forward_train_layers(batch, dropout, &self.layers, &mut self.pooled)
                .ok_or_else(|| {
                    TrainError::Config(format!(
                        "--ese needs every layer's output: {} has none to offer (the BERT family on the CPU has)",
                        model.describe()
                    ))
                })??;
        } else if let Some(gc) = grad_cache.as_deref_mut() {
            gc.forward(model, batch, dropout, &mut self.pooled[0])?;
        } else {
            model.forward_train(batch, dropout, &mut self.pooled[0])?;
        }
        let loss_err = |e: LossError| TrainError::Loss {
            step,
            msg: e.to_string(),
        };
        let base = |y: ArrayView2<'_, f32>, g: &mut ArrayViewMut2<'_, f32>| {
            loss_fn
                .compute_into(format, y, labels, text_ids, g)
                .map(|(l, _)| l as f64)
        };
        let matryoshka = self.matryoshka.take();
        let loss = match &matryoshka {
            Some(m) => {
                let obj = MatryoshkaObjective {
                    matryoshka: m,
                    base: &base,
                };
                self.objective(&obj, rows, h)
            }
            None => self.objective(&base, rows, h),
        };
        self.matryoshka = matryoshka;
        let loss = loss.map_err(loss_err)?;
        if !loss.is_finite() {
            return Err(TrainError::Numeric {
                step,
                msg: format!("loss is {loss}"),
            });
        }
        if scale != 1.0 {
            self.grads.iter_mut().flatten().for_each(|x| *x *= scale);
        }
        if self.ese.is_some() {
            model.backward_layers(&self.layers, &self.grads)?;
        } else if let Some(gc) = grad_cache {
            gc.backward(model, batch, dropout, &self.grads[0])?;
        } else {
            model.backward(batch, &self.grads[0])?;
        }
        let parts = self
            .full_model_parts(loss_fn, format, labels, text_ids, rows, h)
            .map_err(loss_err)?;
        Ok((loss as f32, parts))
    }

    /// The base objective's parts on the last layer's full embedding: one more evaluation of the objective
    /// (small beside the encoder), its gradient discarded.
    fn full_model_parts(
        &mut self,
        loss_fn: &AngleLoss,
        format: DataFormat,
        labels: &[f32],
        text_ids: Option<&[u64]>,
        rows: usize,
        h: usize,
    ) -> std::result::Result<LossParts<f32>, LossError> {
        let last = self.pooled.last().expect("one pooled buffer per layer read");
        let y = ArrayView2::from_shape((rows, h), &last[..]).expect("pooled buffer sized rows x h");
        self.scratch.clear();
        self.scratch.resize(rows * h, 0.0);
        let mut g =
            ArrayViewMut2::from_shape((rows, h), &mut self.scratch[..]).expect("scratch sized rows x h");
        loss_fn
            .compute_into(format, y, labels, text_ids, &mut g)
            .map(|(_, parts)| parts)
    }

    /// The loss on the pooled buffers, its gradients into `self.grads`.
    fn objective(
        &mut self,
        base: &impl BaseObjective<f32>,
        rows: usize,
        h: usize,
    ) -> std::result::Result<f64, LossError> {
        let views: Vec<ArrayView2<'_, f32>> = self
            .pooled
            .iter()
            .map(|p| ArrayView2::from_shape((rows, h), p).expect("pooled buffer sized rows x h"))
            .collect();
        match &self.ese {
            Some(cfg) => {
                let out = ese_loss(base, cfg, &views)?;
                for (g, o) in self.grads.iter_mut().zip(&out.grads) {
                    g.clear();
                    g.extend(o.iter());
                }
                Ok(out.loss as f64)
            }
            None => {
                let g = &mut self.grads[0];
                g.clear();
                g.resize(rows * h, 0.0);
                let mut gv =
                    ArrayViewMut2::from_shape((rows, h), &mut g[..]).expect("grad buffer sized rows x h");
                base.loss_into(views[0].view(), &mut gv)
            }
        }
    }
}

/// The training flags of ESE and Matryoshka (flattened into `angle train`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EseArgs {
    /// Espresso (ESE): train every layer's pooled embedding and its leading dimensions too (docs/ese.md).
    #[arg(long)]
    pub ese: bool,
    /// ESE: the leading dimensions of the truncated terms [default: 128].
    #[arg(long, requires = "ese")]
    pub ese_compression_size: Option<usize>,
    /// ESE: temperature of the distillation's softmaxes [default: 1.0].
    #[arg(long, requires = "ese")]
    pub ese_kl_temperature: Option<f64>,
    /// Matryoshka: also train these leading-dimension truncations, e.g. 384,256,128,64.
    #[arg(long, value_delimiter = ',')]
    pub matryoshka_dims: Option<Vec<usize>>,
    /// Matryoshka: one weight per width of --matryoshka-dims [default: 1 each].
    #[arg(long, value_delimiter = ',', requires = "matryoshka_dims")]
    pub matryoshka_weights: Option<Vec<f64>>,
}

impl EseArgs {
    /// Writes the flags into the configuration; `set` gets the keys given.
    pub fn apply(&self, c: &mut TrainConfig, set: &mut Vec<String>) {
        if self.ese {
            let mut e = EseConfig::default();
            if let Some(k) = self.ese_compression_size {
                e.compression_size = k;
            }
            if let Some(t) = self.ese_kl_temperature {
                e.kl_temperature = t;
            }
            c.ese = Some(e);
            set.push("ese".into());
        }
        if let Some(dims) = &self.matryoshka_dims {
            c.matryoshka = Some(MatryoshkaConfig {
                dims: dims.clone(),
                weights: self.matryoshka_weights.clone().unwrap_or_default(),
            });
            set.push("matryoshka".into());
        }
    }
}
