//! The one interface between the trainer (and the embedder, and checkpoints) and the models.
//!
//! A [`Backbone`] takes packed token ids and gives pooled `[B, H]` embeddings; backward starts from
//! the gradient of those embeddings; the trainable parameters, their gradients and AdamW moments are
//! flat buffers behind it; it writes its own weight files into a checkpoint folder. Model families
//! (the BERT encoder, the decoder LLMs) and devices (CPU, CUDA) sit below it, so the training loop,
//! [`crate::embed::Embedder`] and [`crate::checkpoint`] exist once. Text-embeddings-inference's
//! backend trait is the model: small, batch in, embeddings out.

use std::path::Path;

use angle_encoder::{
    Activations, AdamW, Batch, Capacity, Encoder, LayerGrad, Mode, ParamBuffers, Pooler, Pooling,
};
use angle_loss::{AngleLossConfig, DataFormat, LossParts};

use crate::error::{Result, TrainError};
use crate::precision::Precision;

/// A batch of packed sequences: token `t` of sequence `b` is row `seq_offsets[b] + t`.
#[derive(Debug, Clone, Copy)]
pub struct Packed<'a> {
    pub input_ids: &'a [u32],
    /// Segment ids (BERT); families without segments ignore them. Empty means all zeros.
    pub token_type_ids: &'a [u32],
    /// B + 1 offsets, from 0 to N.
    pub seq_offsets: &'a [usize],
}

impl Packed<'_> {
    pub fn num_seqs(&self) -> usize {
        self.seq_offsets.len().saturating_sub(1)
    }

    fn as_encoder_batch(&self) -> Batch<'_> {
        Batch {
            input_ids: self.input_ids,
            token_type_ids: (!self.token_type_ids.is_empty()).then_some(self.token_type_ids),
            seq_offsets: self.seq_offsets,
        }
    }
}

/// How large a backbone's arenas must be: sized once, reused by every step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Sequences per training micro-batch (0: the backbone will not train).
    pub train_seqs: usize,
    /// Sequences per inference batch (0: it will not embed).
    pub embed_seqs: usize,
    /// The longest sequence, in tokens.
    pub max_len: usize,
}

/// What the trainer, the embedder and checkpoints need from a model, whatever its family and device.
///
/// Call order in a step: [`Backbone::zero_grad`], then per micro-batch [`Backbone::forward_train`] and
/// [`Backbone::backward`] (gradients add up), then [`Backbone::clip_grad_norm`] and
/// [`Backbone::adamw_step`]. [`Backbone::embed`] may run between steps (validation); it does not
/// disturb the training state.
pub trait Backbone {
    /// One line for logs: family, device, precision.
    fn describe(&self) -> String;
    /// Width of the pooled embeddings.
    fn hidden_size(&self) -> usize;
    fn pooling(&self) -> Pooling;
    /// Sizes the arenas (once, before the first step or embedding).
    fn reserve(&mut self, sizes: Sizes) -> Result<()>;

    /// Eval-mode forward: pooled `[B, H]` into `pooled` (resized).
    fn embed(&mut self, batch: &Packed<'_>, pooled: &mut Vec<f32>) -> Result<()>;
    /// Train-mode forward (dropout from `dropout` when given), pooled `[B, H]` into `pooled`, saving
    /// what [`Backbone::backward`] needs.
    fn forward_train(
        &mut self,
        batch: &Packed<'_>,
        dropout: Option<u64>,
        pooled: &mut Vec<f32>,
    ) -> Result<()>;
    /// Backward of the last [`Backbone::forward_train`] from `d loss / d pooled`, added into the
    /// gradients.
    fn backward(&mut self, batch: &Packed<'_>, dpooled: &[f32]) -> Result<()>;

    /// The last hidden state `[N, H]` (every token of the packed batch) of the last forward: train mode
    /// ([`Backbone::forward_train`]) or eval mode ([`Backbone::embed`]). For objectives over every token
    /// (`--teacher-pooling all`); `None` where the backbone has no such path.
    fn token_states(&self, _train: bool) -> Option<&[f32]> {
        None
    }
    /// [`Backbone::backward`] with the gradient of the last hidden state, `dtokens` `[N, H]`, added to the
    /// pooling's.
    fn backward_tokens(&mut self, _batch: &Packed<'_>, _dpooled: &[f32], _dtokens: &[f32]) -> Result<()> {
        Err(TrainError::Config(format!(
            "{}: no gradient into every token's hidden state (--teacher-pooling all needs one)",
            self.describe()
        )))
    }
    /// Transformer layers (the depth a layered objective such as ESE reads).
    fn num_layers(&self) -> usize;
    /// Train-mode forward that pools the output of each of `layers` (0 = the embeddings, `num_layers()` =
    /// the last) into `pooled[i]`: for objectives over several layers (ESE). `None` where the backbone has
    /// no such path.
    fn forward_train_layers(
        &mut self,
        _batch: &Packed<'_>,
        _dropout: Option<u64>,
        _layers: &[usize],
        _pooled: &mut [Vec<f32>],
    ) -> Option<Result<()>> {
        None
    }
    /// One backward from the gradients of every layer's pooled output of the last
    /// [`Backbone::forward_train_layers`].
    fn backward_layers(&mut self, _layers: &[usize], _dpooled: &[Vec<f32>]) -> Result<()> {
        Err(TrainError::Config("this backbone has no layered backward".into()))
    }

    /// Offers to compute the objective itself (the GPU's fused kernel): `Some(message to log once)`
    /// when it will, for every later [`Backbone::fused_step`]; `None` (the default) when the host
    /// computes it.
    fn use_fused_objective(&mut self, _cfg: &AngleLossConfig, _format: DataFormat) -> Option<String> {
        None
    }
    /// Forward, objective (labels one per pair) and backward of `scale · loss` in one call; only
    /// after [`Backbone::use_fused_objective`] said yes.
    fn fused_step(
        &mut self,
        _batch: &Packed<'_>,
        _labels: &[f32],
        _dropout: Option<u64>,
        _scale: f32,
    ) -> Result<(f32, LossParts<f32>)> {
        Err(TrainError::Config("this backbone has no fused objective".into()))
    }

    /// Clears the gradients (allocating them and the moments on first use).
    fn zero_grad(&mut self) -> Result<()>;
    /// The global gradient norm; with `max_norm`, the gradients are scaled to at most that norm
    /// (now or, on a device, inside the next [`Backbone::adamw_step`]: the same update either way).
    fn clip_grad_norm(&mut self, max_norm: Option<f32>) -> Result<f64>;
    /// AdamW step `t` (from 1) over the trainable parameters.
    fn adamw_step(&mut self, hp: &AdamW, t: u64) -> Result<()>;

    /// Number of trainable scalars (the length of each moment buffer).
    fn trainable_len(&self) -> usize;
    /// The AdamW moments (host copies, up to date).
    fn moments(&mut self) -> Result<(&[f32], &[f32])>;
    /// Restores the moments of a resumed run.
    fn set_moments(&mut self, m: Vec<f32>, v: Vec<f32>) -> Result<()>;
    /// The run's resident memory at `sizes` (after [`Backbone::reserve`]): weights, trainable state,
    /// activations and work buffers, on the host. `None` where the backbone has no estimate (it runs
    /// unchecked, and says so).
    fn memory_plan(&self, _sizes: Sizes) -> Option<crate::memory::MemoryPlan> {
        None
    }
    /// Writes the model's own files into the checkpoint folder `dir` (`config.json` and weights, or an
    /// adapter); `files_from` is the folder the model was loaded from (for files to carry along).
    fn write_weights(&mut self, dir: &Path, files_from: &Path) -> Result<()>;
    /// A LoRA model's adapter folded into its base: a full checkpoint in the new folder `dir`, with the
    /// encode settings of the adapter checkpoint `settings_from`.
    fn write_merged(&mut self, _dir: &Path, _settings_from: &Path) -> Result<()> {
        Err(TrainError::Config(
            "only a LoRA model has an adapter to merge".into(),
        ))
    }
}

/// The global gradient norm of a CPU backbone's flat gradients, clipped to `max_norm` when given.
pub(crate) fn clip_or_norm(b: &mut ParamBuffers, max_norm: Option<f32>) -> f64 {
    match max_norm {
        Some(m) => angle_tensor::cpu::clip_grad_norm(&mut b.grads, m as f64),
        None => angle_tensor::cpu::grad_norm(&b.grads),
    }
}

pub(crate) fn moments_of(b: &ParamBuffers) -> (&[f32], &[f32]) {
    (&b.adam_m, &b.adam_v)
}

pub(crate) fn set_moments_of(b: &mut ParamBuffers, m: Vec<f32>, v: Vec<f32>) {
    b.adam_m = m;
    b.adam_v = v;
}

fn enc_err(e: angle_encoder::EncoderError) -> TrainError {
    TrainError::Encoder(e.to_string())
}

/// The BERT-family encoder on the CPU.
pub struct BertCpu {
    pub enc: Encoder,
    pooler: Pooler,
    /// One pooler per layer a layered objective reads (their backward needs their forward's state).
    layer_poolers: Vec<Pooler>,
    train: Option<Activations>,
    eval: Option<Activations>,
    /// Saves are split into shards above this size (transformers' `max_shard_size`, 5 GB by default).
    pub max_shard_bytes: u64,
}

impl BertCpu {
    pub fn new(enc: Encoder, pooling: Pooling) -> Self {
        BertCpu {
            enc,
            pooler: Pooler::new(pooling),
            layer_poolers: Vec::new(),
            train: None,
            eval: None,
            max_shard_bytes: angle_models::weights::DEFAULT_MAX_SHARD_BYTES,
        }
    }

    fn pool(
        &mut self,
        batch: &Packed<'_>,
        train: bool,
        dropout: Option<u64>,
        pooled: &mut Vec<f32>,
    ) -> Result<()> {
        let h = self.enc.config.hidden_size;
        let acts = if train { &mut self.train } else { &mut self.eval };
        let acts = acts
            .as_mut()
            .ok_or_else(|| TrainError::Config("backbone used before reserve()".into()))?;
        let hidden = self
            .enc
            .forward(&batch.as_encoder_batch(), acts, dropout)
            .map_err(enc_err)?;
        pooled.resize(batch.num_seqs() * h, 0.0);
        self.pooler
            .forward(pooled, hidden, batch.seq_offsets, h)
            .map_err(enc_err)
    }
}

impl BertCpu {
    fn pool_layers(
        &mut self,
        batch: &Packed<'_>,
        dropout: Option<u64>,
        layers: &[usize],
        pooled: &mut [Vec<f32>],
    ) -> Result<()> {
        let h = self.enc.config.hidden_size;
        let acts = self
            .train
            .as_mut()
            .ok_or_else(|| TrainError::Config("backbone used before reserve()".into()))?;
        self.enc
            .forward(&batch.as_encoder_batch(), acts, dropout)
            .map_err(enc_err)?;
        let kind = self.pooler.kind;
        self.layer_poolers.resize_with(layers.len(), || Pooler::new(kind));
        for ((&l, pooler), out) in layers.iter().zip(&mut self.layer_poolers).zip(pooled.iter_mut()) {
            let hidden = acts
                .layer_output(l)
                .ok_or_else(|| TrainError::Encoder(format!("no output of layer {l} in the arena")))?;
            out.resize(batch.num_seqs() * h, 0.0);
            pooler
                .forward(out, hidden, batch.seq_offsets, h)
                .map_err(enc_err)?;
        }
        Ok(())
    }
}

impl Backbone for BertCpu {
    fn describe(&self) -> String {
        let bf16 = self.enc.train_precision() == Precision::Bf16
            || self.enc.inference_precision() == Precision::Bf16;
        format!(
            "{} ({} layers, hidden {}) on the cpu, {}",
            self.enc.config.model_type,
            self.enc.config.num_hidden_layers,
            self.enc.config.hidden_size,
            if bf16 { "bf16 products" } else { "f32" }
        )
    }

    fn hidden_size(&self) -> usize {
        self.enc.config.hidden_size
    }

    fn pooling(&self) -> Pooling {
        self.pooler.kind
    }

    fn reserve(&mut self, s: Sizes) -> Result<()> {
        let cap = |seqs: usize| Capacity {
            max_tokens: seqs * s.max_len,
            max_seq_len: s.max_len,
        };
        self.train = (s.train_seqs > 0).then(|| self.enc.activations(cap(s.train_seqs), Mode::Train));
        self.eval = (s.embed_seqs > 0).then(|| self.enc.activations(cap(s.embed_seqs), Mode::Eval));
        Ok(())
    }

    fn embed(&mut self, batch: &Packed<'_>, pooled: &mut Vec<f32>) -> Result<()> {
        self.pool(batch, false, None, pooled)
    }

    fn memory_plan(&self, _sizes: Sizes) -> Option<crate::memory::MemoryPlan> {
        let c = &self.enc.config;
        let params = self.enc.buffers.params.len();
        // bf16 copies of the linear weights: one for the forward, one more for backward's `dy · W`
        let linear = c.num_hidden_layers
            * (4 * c.hidden_size * c.hidden_size + 2 * c.hidden_size * c.intermediate_size);
        let copies = usize::from(self.enc.train_precision() == Precision::Bf16) * 2
            + usize::from(self.enc.inference_precision() == Precision::Bf16);
        let arena = |a: &Option<Activations>| a.as_ref().map_or(0, Activations::bytes_reserved);
        Some(crate::memory::MemoryPlan {
            weights: 4 * params + 2 * linear * copies.min(2),
            trainable_state: 12 * params,
            // the train arena holds backward's scratch too
            activations: arena(&self.train),
            working: arena(&self.eval) + crate::memory::PROCESS_BYTES,
        })
    }

    fn forward_train(
        &mut self,
        batch: &Packed<'_>,
        dropout: Option<u64>,
        pooled: &mut Vec<f32>,
    ) -> Result<()> {
        self.pool(batch, true, dropout, pooled)
    }

    fn backward(&mut self, batch: &Packed<'_>, dpooled: &[f32]) -> Result<()> {
        let h = self.enc.config.hidden_size;
        let acts = self
            .train
            .as_mut()
            .ok_or_else(|| TrainError::Config("backward before a training forward".into()))?;
        self.pooler
            .backward(acts.dhidden_mut(), dpooled, batch.seq_offsets, h)
            .map_err(enc_err)?;
        self.enc.backward(acts).map_err(enc_err)
    }

    fn token_states(&self, train: bool) -> Option<&[f32]> {
        let acts = if train { &self.train } else { &self.eval };
        acts.as_ref().map(|a| a.hidden())
    }

    fn backward_tokens(&mut self, batch: &Packed<'_>, dpooled: &[f32], dtokens: &[f32]) -> Result<()> {
        let h = self.enc.config.hidden_size;
        let acts = self
            .train
            .as_mut()
            .ok_or_else(|| TrainError::Config("backward before a training forward".into()))?;
        let dhidden = acts.dhidden_mut();
        if dtokens.len() != dhidden.len() {
            return Err(TrainError::Config(format!(
                "token gradient of {} values for {} hidden values",
                dtokens.len(),
                dhidden.len()
            )));
        }
        dhidden.iter_mut().zip(dtokens).for_each(|(g, &d)| *g += d);
        self.pooler
            .backward(acts.dhidden_mut(), dpooled, batch.seq_offsets, h)
            .map_err(enc_err)?;
        self.enc.backward(acts).map_err(enc_err)
    }

    fn num_layers(&self) -> usize {
        self.enc.config.num_hidden_layers
    }

    fn forward_train_layers(
        &mut self,
        batch: &Packed<'_>,
        dropout: Option<u64>,
        layers: &[usize],
        pooled: &mut [Vec<f32>],
    ) -> Option<Result<()>> {
        Some(self.pool_layers(batch, dropout, layers, pooled))
    }

    fn backward_layers(&mut self, layers: &[usize], dpooled: &[Vec<f32>]) -> Result<()> {
        let acts = self
            .train
            .as_mut()
            .ok_or_else(|| TrainError::Config("backward before a training forward".into()))?;
        let grads: Vec<LayerGrad<'_>> = layers
            .iter()
            .zip(&self.layer_poolers)
            .zip(dpooled)
            .map(|((&layer, pooler), d)| LayerGrad {
                layer,
                pooler,
                dpooled: d,
            })
            .collect();
        self.enc.backward_layers(acts, &grads).map_err(enc_err)
    }

    fn zero_grad(&mut self) -> Result<()> {
        self.enc.zero_grad();
        Ok(())
    }

    fn clip_grad_norm(&mut self, max_norm: Option<f32>) -> Result<f64> {
        Ok(clip_or_norm(&mut self.enc.buffers, max_norm))
    }

    fn adamw_step(&mut self, hp: &AdamW, t: u64) -> Result<()> {
        self.enc.adamw_step(hp, t).map_err(enc_err)
    }

    fn trainable_len(&self) -> usize {
        self.enc.layout.total
    }

    fn moments(&mut self) -> Result<(&[f32], &[f32])> {
        Ok(moments_of(&self.enc.buffers))
    }

    fn set_moments(&mut self, m: Vec<f32>, v: Vec<f32>) -> Result<()> {
        set_moments_of(&mut self.enc.buffers, m, v);
        Ok(())
    }

    fn write_weights(&mut self, dir: &Path, files_from: &Path) -> Result<()> {
        crate::checkpoint::write_bert_weights(dir, &self.enc, files_from, self.max_shard_bytes)
    }
}
