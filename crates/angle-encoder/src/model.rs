//! The encoder: parameters plus the straight-line forward and backward passes (llm.c's `gpt2_forward` /
//! `gpt2_backward`). Backward is the forward read in reverse; every op comes from `angle_tensor::cpu` and
//! adds its gradients into the flat gradient buffer.

use std::path::{Path, PathBuf};

use angle_tensor::cpu::{
    AttentionDropout, GeluKind, PackedBf16, attention_backward, attention_forward, attention_probs_len,
    dropout_backward, embedding_backward, embedding_forward, gelu_backward, gelu_forward, layernorm_backward,
    layernorm_forward, linear_backward, linear_backward_bf16, linear_forward, residual_forward,
};
use angle_tensor::rng::derive_seed;

use crate::arena::{Activations, Mode};
use crate::checkpoint;
use crate::config::{Activation, BertConfig};
use crate::error::{EncoderError, Result};
use crate::inference::{Bf16Packs, Int8Layer, LayerPack, Precision, pack_layers, quantize_layers};
use crate::params::{ParamBuffers, ParamLayout};
use crate::pooling::{Pooler, Pooling};
use crate::profile::{self, Op};

/// A batch of packed sequences (no padding): token `t` of sequence `b` is row `seq_offsets[b] + t`.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    pub input_ids: &'a [u32],
    /// `None` means all zeros (single-segment input).
    pub token_type_ids: Option<&'a [u32]>,
    /// B + 1 offsets, starting at 0 and ending at N.
    pub seq_offsets: &'a [usize],
}

impl Batch<'_> {
    pub fn num_tokens(&self) -> usize {
        self.input_ids.len()
    }

    pub fn num_seqs(&self) -> usize {
        self.seq_offsets.len().saturating_sub(1)
    }
}

/// Dropout streams: one per site, derived from the step seed so that backward (and a GPU kernel) can
/// regenerate every mask. Tag 0 is the embeddings; layer l uses 1 + 3l (attention probabilities),
/// 2 + 3l (attention output), 3 + 3l (feed-forward output).
pub fn dropout_seed(step_seed: u64, tag: u64) -> u64 {
    derive_seed(step_seed, tag)
}

/// AdamW hyper-parameters, as `torch.optim.AdamW` (decoupled weight decay), with the Hugging Face
/// Trainer's parameter groups: biases and norm weights are not decayed ([`crate::params::decays`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// A BERT-family encoder: config, parameter layout and the flat parameter (and gradient, moment) buffers.
#[derive(Debug, Clone)]
pub struct Encoder {
    pub config: BertConfig,
    pub layout: ParamLayout,
    pub buffers: ParamBuffers,
    /// The name prefix of the checkpoint it was loaded from (`"bert."` or `""`), reused by `save`.
    pub name_prefix: String,
    /// The pooling the checkpoint's sentence-transformers config asks for (else `cls`).
    pub default_pooling: Pooling,
    /// Precision of eval-mode forwards ([`Encoder::set_inference_precision`]).
    inference_precision: Precision,
    /// Precision of train-mode forwards and backward's input gradients
    /// ([`Encoder::set_train_precision`]).
    train_precision: Precision,
    /// bf16 copies of the linear weights while either precision is bf16; shared by clones.
    bf16: Option<std::sync::Arc<Bf16Packs>>,
    /// int8 copies of the linear weights while the inference precision is int8; shared by clones.
    int8: Option<std::sync::Arc<Vec<Int8Layer>>>,
}

impl Encoder {
    /// Loads `config.json`, `model.safetensors` and the pooling default from a Hugging Face model directory.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config = BertConfig::from_file(dir.join("config.json"))?;
        let layout = ParamLayout::new(&config);
        let loaded = checkpoint::load_files(&checkpoint::weight_files(dir)?, &config, &layout)?;
        let mut enc = Self::from_loaded(config, layout, loaded);
        enc.default_pooling = Pooling::from_model_dir(dir)?;
        Ok(enc)
    }

    /// Loads the weights of `config` from a safetensors file.
    pub fn from_files(config: BertConfig, weights: impl AsRef<Path>) -> Result<Self> {
        let layout = ParamLayout::new(&config);
        let loaded = checkpoint::load(weights, &config, &layout)?;
        Ok(Self::from_loaded(config, layout, loaded))
    }

    fn from_loaded(config: BertConfig, layout: ParamLayout, loaded: checkpoint::Loaded) -> Self {
        Encoder {
            config,
            layout,
            buffers: ParamBuffers::new(loaded.params),
            name_prefix: loaded.prefix,
            default_pooling: Pooling::Cls,
            inference_precision: Precision::F32,
            train_precision: Precision::F32,
            bf16: None,
            int8: None,
        }
    }

    /// An encoder with the given parameters (e.g. random ones for tests).
    pub fn from_params(config: BertConfig, params: Vec<f32>) -> Result<Self> {
        let layout = ParamLayout::new(&config);
        if params.len() != layout.total {
            return Err(EncoderError::BufferSize {
                found: params.len(),
                expected: layout.total,
            });
        }
        Ok(Encoder {
            config,
            layout,
            buffers: ParamBuffers::new(params),
            name_prefix: String::new(),
            default_pooling: Pooling::Cls,
            inference_precision: Precision::F32,
            train_precision: Precision::F32,
            bf16: None,
            int8: None,
        })
    }

    /// The first `layers` layers of this model (ESE, `--layers N`): the same embeddings and layers with
    /// `num_hidden_layers = layers`, a valid smaller checkpoint of the same family. Precisions carry over.
    pub fn truncated(&self, layers: usize) -> Result<Encoder> {
        let depth = self.config.num_hidden_layers;
        if layers == 0 || layers > depth {
            return Err(EncoderError::Batch(format!(
                "cannot keep {layers} layers of a {depth}-layer model (1..={depth})"
            )));
        }
        let mut config = self.config.clone();
        config.num_hidden_layers = layers;
        let layout = ParamLayout::new(&config);
        let mut enc = Encoder::from_params(config, self.buffers.params[..layout.total].to_vec())?;
        enc.name_prefix = self.name_prefix.clone();
        enc.default_pooling = self.default_pooling;
        enc.set_train_precision(self.train_precision)?;
        enc.set_inference_precision(self.inference_precision)?;
        Ok(enc)
    }

    /// Writes the parameters to `path` (safetensors, f32, the names they were loaded with), atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        checkpoint::save(path, &self.layout, &self.buffers.params, &self.name_prefix)
    }

    /// Writes `config.json` and `model.safetensors` into `dir` (created if needed).
    pub fn save_dir(&self, dir: impl AsRef<Path>) -> Result<PathBuf> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(crate::error::io_err(dir))?;
        let cfg_path = dir.join("config.json");
        std::fs::write(&cfg_path, self.config.to_json_string()).map_err(crate::error::io_err(&cfg_path))?;
        let path = dir.join("model.safetensors");
        self.save(&path)?;
        Ok(path)
    }

    /// Clears the gradients (allocating gradients and moments on first use).
    pub fn zero_grad(&mut self) {
        self.buffers.alloc_training();
        self.buffers.zero_grad();
    }

    /// One AdamW step `t` (1-based) over the whole flat buffer, with learning rate `hp.lr` (no weight decay
    /// on the layout's `no_decay` ranges).
    pub fn adamw_step(&mut self, hp: &AdamW, t: u64) -> Result<()> {
        self.buffers.adamw_step(hp, &self.layout.no_decay, t)?;
        if self.bf16.is_some() || self.int8.is_some() {
            // keep the bf16 / int8 copies in step with the weights they copy
            self.repack_bf16()?;
        }
        Ok(())
    }

    /// (Re)builds the bf16 and int8 copies the two precisions need.
    fn repack_bf16(&mut self) -> Result<()> {
        self.int8 = match self.inference_precision {
            Precision::Int8 => Some(std::sync::Arc::new(quantize_layers(
                &self.config,
                &self.layout,
                &self.buffers.params,
            )?)),
            _ => None,
        };
        let train = self.train_precision == Precision::Bf16;
        if !train && self.inference_precision != Precision::Bf16 {
            self.bf16 = None;
            return Ok(());
        }
        // in place when no clone shares the copies (the step loop), else fresh ones
        let arc = self.bf16.get_or_insert_with(Default::default);
        let packs = std::sync::Arc::make_mut(arc);
        let (c, l, p) = (&self.config, &self.layout, &self.buffers.params);
        pack_layers(&mut packs.fwd, c, l, p, false)?;
        if train {
            pack_layers(&mut packs.bwd, c, l, p, true)?;
        } else {
            packs.bwd.clear();
        }
        Ok(())
    }

    /// The precision of eval-mode forwards: [`Precision::Bf16`] packs bf16 copies of the linear
    /// weights (half the f32 size) and runs the products on AMX tiles where the CPU has them
    /// ([`crate::bf16_is_fast`]; else the same math at f32 speed). Train-mode forwards follow
    /// [`Encoder::set_train_precision`] instead. [`Encoder::adamw_step`] refreshes the copies;
    /// after writing `buffers.params` directly, call this again.
    pub fn set_inference_precision(&mut self, precision: Precision) -> Result<()> {
        if precision == Precision::Tf32 {
            return Err(EncoderError::Batch(
                "tf32 is a GPU precision: the CPU encodes in f32, bf16 or int8".into(),
            ));
        }
        self.inference_precision = precision;
        self.repack_bf16()
    }

    /// See [`Encoder::set_inference_precision`].
    pub fn inference_precision(&self) -> Precision {
        self.inference_precision
    }

    /// The precision of training steps: [`Precision::Bf16`] runs the train-mode forward's linear
    /// layers and backward's input-gradient products (`dy · W`) in bf16 with f32 sums (AMX where
    /// the CPU has it); the weight gradients (`dyᵀ · x`, from f32 activations), the master
    /// weights and AdamW stay f32, as in PyTorch's bf16 autocast. Default f32 (exact).
    pub fn set_train_precision(&mut self, precision: Precision) -> Result<()> {
        if matches!(precision, Precision::Int8 | Precision::Tf32) {
            return Err(EncoderError::Batch(format!(
                "{precision} products do not train on the CPU: training runs in f32 or bf16"
            )));
        }
        self.train_precision = precision;
        self.repack_bf16()
    }

    /// See [`Encoder::set_train_precision`].
    pub fn train_precision(&self) -> Precision {
        self.train_precision
    }

    /// An arena for this model.
    pub fn activations(&self, cap: crate::arena::Capacity, mode: Mode) -> Activations {
        Activations::new(&self.config, cap, mode)
    }

    fn gelu_kind(&self) -> GeluKind {
        match self.config.hidden_act {
            Activation::GeluErf => GeluKind::Erf,
            Activation::GeluTanh => GeluKind::Tanh,
        }
    }

    /// Checks the batch against the config and the arena and copies it (ids, positions) into the arena.
    fn stage(&self, batch: &Batch<'_>, acts: &mut Activations) -> Result<()> {
        let cfg = &self.config;
        let bad = |m: String| Err(EncoderError::Batch(m));
        let offs = batch.seq_offsets;
        let n = batch.num_tokens();
        if offs.len() < 2 || offs[0] != 0 || offs[offs.len() - 1] != n {
            return bad(format!(
                "seq_offsets must hold B + 1 >= 2 entries from 0 to {n} tokens"
            ));
        }
        let max_len = cfg.max_sequence_length();
        let mut s2 = 0;
        for (b, w) in offs.windows(2).enumerate() {
            if w[1] <= w[0] {
                return bad(format!("sequence {b} is empty (or seq_offsets decrease)"));
            }
            let len = w[1] - w[0];
            if len > max_len {
                return bad(format!(
                    "sequence {b} has {len} tokens; the position table holds {max_len}"
                ));
            }
            if len > acts.cap.max_seq_len {
                return Err(EncoderError::Capacity(format!(
                    "sequence {b} has {len} tokens; the arena was sized for {}",
                    acts.cap.max_seq_len
                )));
            }
            s2 += len * len;
        }
        if n > acts.cap.max_tokens || s2 > acts.cap.max_tokens * acts.cap.max_seq_len {
            return Err(EncoderError::Capacity(format!(
                "batch of {n} tokens; the arena was sized for {}",
                acts.cap.max_tokens
            )));
        }
        if let Some((t, &id)) = batch
            .input_ids
            .iter()
            .enumerate()
            .find(|&(_, &id)| id as usize >= cfg.vocab_size)
        {
            return bad(format!(
                "input_ids[{t}] = {id} is outside the vocabulary of {}",
                cfg.vocab_size
            ));
        }
        if let Some(tt) = batch.token_type_ids {
            if tt.len() != n {
                return bad(format!("{} token_type_ids for {n} tokens", tt.len()));
            }
            if let Some((t, &id)) = tt
                .iter()
                .enumerate()
                .find(|&(_, &id)| id as usize >= cfg.type_vocab_size)
            {
                return bad(format!(
                    "token_type_ids[{t}] = {id}; type_vocab_size is {}",
                    cfg.type_vocab_size
                ));
            }
        }
        acts.ids.clear();
        acts.ids.extend_from_slice(batch.input_ids);
        acts.type_ids.clear();
        match batch.token_type_ids {
            Some(tt) => acts.type_ids.extend_from_slice(tt),
            None => acts.type_ids.resize(n, 0),
        }
        acts.positions.clear();
        for w in offs.windows(2) {
            acts.positions
                .extend((0..w[1] - w[0]).map(|p| (p + cfg.position_offset) as u32));
        }
        acts.seq_offsets.clear();
        acts.seq_offsets.extend_from_slice(offs);
        Ok(())
    }

    /// Runs the encoder; returns the last hidden state `[N, H]` (also [`Activations::hidden`]).
    ///
    /// `dropout_seed`: `Some(seed)` applies the config's dropout (train mode arenas only), `None` runs
    /// without dropout. A train-mode arena saves what [`Encoder::backward`] needs; an eval-mode arena keeps
    /// one layer's buffers and supports no backward.
    pub fn forward<'a>(
        &self,
        batch: &Batch<'_>,
        acts: &'a mut Activations,
        dropout_seed: Option<u64>,
    ) -> Result<&'a [f32]> {
        let train = acts.mode == Mode::Train;
        if dropout_seed.is_some() && !train {
            return Err(EncoderError::Batch("dropout needs a train-mode arena".into()));
        }
        // cleared first: a forward that fails half-way must not leave a backward-able arena behind
        acts.ready_for_backward = false;
        self.stage(batch, acts)?;
        acts.dropout_seed = dropout_seed;
        let cfg = &self.config;
        let p = &self.buffers.params;
        let (h, inter, nh) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads);
        let n = batch.num_tokens();
        let t_cap = acts.cap.max_tokens;
        let s2_cap = t_cap * acts.cap.max_seq_len;
        let probs_len = attention_probs_len(&acts.seq_offsets, nh);
        let eps = cfg.layer_norm_eps;
        let (p_hidden, p_attn) = match dropout_seed {
            Some(_) => (cfg.hidden_dropout_prob, cfg.attention_probs_dropout_prob),
            None => (0.0, 0.0),
        };
        let seed = |tag: u64| dropout_seed.map_or(0, |s| derive_seed(s, tag));
        let e = &self.layout.embeddings;
        let a = acts;
        let precision = if train {
            self.train_precision
        } else {
            self.inference_precision
        };
        // The layers' packed weights when the products run in bf16 or int8 (`None`: f32 products).
        let packs = |l: usize| match precision {
            Precision::Bf16 => self.bf16.as_deref().map(|packs| LayerPack::Bf16(&packs.fwd[l])),
            Precision::Int8 => self.int8.as_deref().map(|layers| LayerPack::Int8(&layers[l])),
            Precision::F32 | Precision::Tf32 => None,
        };

        timed(Op::Embedding, || {
            embedding_forward(
                &mut a.emb_sum[..n * h],
                &a.ids,
                &a.positions,
                &a.type_ids,
                &p[e.word.clone()],
                &p[e.position.clone()],
                &p[e.token_type.clone()],
                n,
                h,
            )
        })?;
        {
            let x0 = &mut a.layer_in[..n * h];
            timed(Op::LayerNorm, || {
                layernorm_forward(
                    x0,
                    &mut a.emb_mean[..n],
                    &mut a.emb_rstd[..n],
                    &a.emb_sum[..n * h],
                    &p[e.ln_weight.clone()],
                    &p[e.ln_bias.clone()],
                    n,
                    h,
                    eps,
                )
            })?;
            if p_hidden > 0.0 {
                // in place: backward only needs the mask, which it regenerates
                timed(Op::ResidualDropout, || {
                    angle_tensor::cpu::dropout_forward_inplace(x0, n * h, p_hidden, seed(0))
                })?;
            }
        }

        for (l, w) in self.layout.layers.iter().enumerate() {
            let ls = a.layer_slot(l);
            let (in_slot, out_slot) = (a.layer_in_slot(l), a.layer_in_slot(l + 1));
            let th = ls * t_cap * h;
            let ti = ls * t_cap * inter;
            let tq = ls * t_cap * 3 * h;
            let tn = ls * t_cap;
            let x_range = in_slot * t_cap * h..in_slot * t_cap * h + n * h;

            let qkv = &mut a.qkv[tq..tq + 3 * n * h];
            let wb = packs(l);
            timed(Op::LinearQkv, || match wb {
                Some(wb) => {
                    wb.qkv()
                        .forward(qkv, &a.layer_in[x_range.clone()], Some(&p[w.qkv_bias.clone()]), n)
                }
                None => linear_forward(
                    qkv,
                    &a.layer_in[x_range.clone()],
                    &p[w.qkv_weight.clone()],
                    Some(&p[w.qkv_bias.clone()]),
                    n,
                    h,
                    3 * h,
                ),
            })?;
            let probs = &mut a.probs[ls * s2_cap * nh..][..probs_len];
            let ctx = &mut a.ctx[th..th + n * h];
            let att_drop = (p_attn > 0.0).then(|| AttentionDropout {
                p: p_attn as f64,
                seed: seed(1 + 3 * l as u64),
            });
            let scratch: &mut [f32] = if att_drop.is_some() {
                &mut a.probs_scratch[..probs_len]
            } else {
                &mut []
            };
            timed(Op::Attention, || {
                attention_forward(ctx, probs, scratch, qkv, &a.seq_offsets, nh, h, att_drop)
            })?;

            let proj = &mut a.proj[..n * h];
            timed(Op::LinearAttnOut, || match wb {
                Some(wb) => wb
                    .attn_out()
                    .forward(proj, ctx, Some(&p[w.attn_out_bias.clone()]), n),
                None => linear_forward(
                    proj,
                    ctx,
                    &p[w.attn_out_weight.clone()],
                    Some(&p[w.attn_out_bias.clone()]),
                    n,
                    h,
                    h,
                ),
            })?;
            if p_hidden > 0.0 {
                timed(Op::ResidualDropout, || {
                    angle_tensor::cpu::dropout_forward_inplace(proj, n * h, p_hidden, seed(2 + 3 * l as u64))
                })?;
            }
            let res1 = &mut a.res1[th..th + n * h];
            timed(Op::ResidualDropout, || {
                residual_forward(res1, proj, &a.layer_in[x_range], n * h)
            })?;
            let ln1 = &mut a.ln1[th..th + n * h];
            timed(Op::LayerNorm, || {
                layernorm_forward(
                    ln1,
                    &mut a.mean1[tn..tn + n],
                    &mut a.rstd1[tn..tn + n],
                    res1,
                    &p[w.attn_ln_weight.clone()],
                    &p[w.attn_ln_bias.clone()],
                    n,
                    h,
                    eps,
                )
            })?;

            let fc1 = &mut a.fc1[ti..ti + n * inter];
            let act = &mut a.gelu[ti..ti + n * inter];
            match wb {
                // eval mode keeps no pre-activation for a backward: GELU in the product's epilogue
                Some(wb) if !train => timed(Op::LinearFfnIn, || {
                    let b = Some(&p[w.ffn_in_bias.clone()]);
                    wb.ffn_in().forward_gelu(act, ln1, b, n, self.gelu_kind())
                })?,
                _ => {
                    timed(Op::LinearFfnIn, || match wb {
                        Some(wb) => wb.ffn_in().forward(fc1, ln1, Some(&p[w.ffn_in_bias.clone()]), n),
                        None => linear_forward(
                            fc1,
                            ln1,
                            &p[w.ffn_in_weight.clone()],
                            Some(&p[w.ffn_in_bias.clone()]),
                            n,
                            h,
                            inter,
                        ),
                    })?;
                    timed(Op::Gelu, || gelu_forward(act, fc1, n * inter, self.gelu_kind()))?;
                }
            }
            timed(Op::LinearFfnOut, || match wb {
                Some(wb) => wb
                    .ffn_out()
                    .forward(proj, act, Some(&p[w.ffn_out_bias.clone()]), n),
                None => linear_forward(
                    proj,
                    act,
                    &p[w.ffn_out_weight.clone()],
                    Some(&p[w.ffn_out_bias.clone()]),
                    n,
                    inter,
                    h,
                ),
            })?;
            if p_hidden > 0.0 {
                timed(Op::ResidualDropout, || {
                    angle_tensor::cpu::dropout_forward_inplace(proj, n * h, p_hidden, seed(3 + 3 * l as u64))
                })?;
            }
            let res2 = &mut a.res2[th..th + n * h];
            timed(Op::ResidualDropout, || residual_forward(res2, proj, ln1, n * h))?;
            let out = &mut a.layer_in[out_slot * t_cap * h..][..n * h];
            timed(Op::LayerNorm, || {
                layernorm_forward(
                    out,
                    &mut a.mean2[tn..tn + n],
                    &mut a.rstd2[tn..tn + n],
                    res2,
                    &p[w.ffn_ln_weight.clone()],
                    &p[w.ffn_ln_bias.clone()],
                    n,
                    h,
                    eps,
                )
            })?;
        }
        if train {
            a.dhidden[..n * h].fill(0.0);
            a.ready_for_backward = true;
        }
        Ok(a.hidden())
    }

    /// Backward from the gradient in [`Activations::dhidden_mut`] (which pooling backward fills) to the
    /// gradients of every parameter, added into `self.buffers.grads` (allocated on first use). Layers run
    /// in reverse; the embeddings come last.
    pub fn backward(&mut self, acts: &mut Activations) -> Result<()> {
        self.backward_layers(acts, &[])
    }

    /// [`Encoder::backward`] with the gradients of the pooled outputs of any set of layers added on the way down
    /// (ESE, docs/ese.md): each [`LayerGrad`]'s `dpooled` goes through its pooler's backward into the gradient of
    /// that layer's output in the residual stream when the walk reaches it, so one backward serves every layer.
    /// Layer `0` is the embedding output, layer `num_hidden_layers` the last (its gradient adds to
    /// [`Activations::dhidden_mut`]). The poolers must be the ones that pooled [`Activations::layer_output`].
    pub fn backward_layers(&mut self, acts: &mut Activations, layer_grads: &[LayerGrad<'_>]) -> Result<()> {
        let depth = self.config.num_hidden_layers;
        if let Some(g) = layer_grads.iter().find(|g| g.layer > depth) {
            return Err(EncoderError::Batch(format!(
                "a pooled gradient for layer {}; the model has layers 0..={depth}",
                g.layer
            )));
        }
        if !acts.ready_for_backward {
            return Err(EncoderError::Batch(
                "backward needs a train-mode forward on the same arena first".into(),
            ));
        }
        self.buffers.alloc_training();
        let cfg = &self.config;
        let (h, inter, nh) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads);
        let gelu_kind = self.gelu_kind();
        let ParamBuffers {
            params: p, grads: g, ..
        } = &mut self.buffers;
        let a = acts;
        let n = a.num_tokens();
        let t_cap = a.cap.max_tokens;
        let s2_cap = t_cap * a.cap.max_seq_len;
        let probs_len = attention_probs_len(&a.seq_offsets, nh);
        let dropout_seed = a.dropout_seed;
        let (p_hidden, p_attn) = match dropout_seed {
            Some(_) => (cfg.hidden_dropout_prob, cfg.attention_probs_dropout_prob),
            None => (0.0, 0.0),
        };
        let seed = |tag: u64| dropout_seed.map_or(0, |s| derive_seed(s, tag));
        let nh_ = n * h;

        // dx: gradient flowing into the current layer's output
        a.dx[..nh_].copy_from_slice(&a.dhidden[..nh_]);
        inject_layer_grads(&mut a.dx[..nh_], layer_grads, depth, &a.seq_offsets, h)?;
        // bf16 training: backward's input gradients through the transposed bf16 weights
        let bwd16 = match self.train_precision {
            Precision::Bf16 => self.bf16.as_deref().map(|packs| &packs.bwd[..]),
            Precision::F32 | Precision::Tf32 | Precision::Int8 => None,
        };
        for (l, w) in self.layout.layers.iter().enumerate().rev() {
            if l + 1 < depth {
                // dx is the gradient of layer l + 1's output (slot l + 1)
                inject_layer_grads(&mut a.dx[..nh_], layer_grads, l + 1, &a.seq_offsets, h)?;
            }
            let wt = bwd16.map(|layers| &layers[l]);
            let th = l * t_cap * h;
            let ti = l * t_cap * inter;
            let tq = l * t_cap * 3 * h;
            let tn = l * t_cap;
            let x = &a.layer_in[l * t_cap * h..][..nh_];
            let (g_lo, g_hi) = (w.qkv_weight.start, w.ffn_ln_bias.end);
            let gl = &mut g[g_lo..g_hi];
            let r = |range: &std::ops::Range<usize>| range.start - g_lo..range.end - g_lo;

            // out = LN2(res2): dres2
            let dres = &mut a.dres[..nh_];
            dres.fill(0.0);
            let (dw, db) = split2(gl, r(&w.ffn_ln_weight), r(&w.ffn_ln_bias));
            timed(Op::BwdLayerNorm, || {
                layernorm_backward(
                    dres,
                    dw,
                    db,
                    &a.dx[..nh_],
                    &a.res2[th..th + nh_],
                    &p[w.ffn_ln_weight.clone()],
                    &a.mean2[tn..tn + n],
                    &a.rstd2[tn..tn + n],
                    n,
                    h,
                )
            })?;
            // res2 = dropout(fc2) + ln1
            let dln1 = &mut a.dln1[..nh_];
            dln1.copy_from_slice(dres);
            let dproj = &mut a.dproj[..nh_];
            timed(Op::BwdResidualDropout, || {
                dropout_grad(dproj, dres, p_hidden, seed(3 + 3 * l as u64))
            })?;
            // fc2 = gelu · W2ᵀ + b2
            let dgelu = &mut a.dgelu[..n * inter];
            dgelu.fill(0.0);
            let (dw, db) = split2(gl, r(&w.ffn_out_weight), r(&w.ffn_out_bias));
            timed(Op::BwdLinearFfnOut, || {
                linear_bwd(
                    wt.map(|t| &t.ffn_out),
                    dgelu,
                    dw,
                    db,
                    dproj,
                    &a.gelu[ti..ti + n * inter],
                    &p[w.ffn_out_weight.clone()],
                    n,
                    inter,
                    h,
                )
            })?;
            let dfc1 = &mut a.dfc1[..n * inter];
            dfc1.fill(0.0);
            timed(Op::BwdGelu, || {
                gelu_backward(dfc1, &a.fc1[ti..ti + n * inter], dgelu, n * inter, gelu_kind)
            })?;
            // fc1 = ln1 · W1ᵀ + b1
            let (dw, db) = split2(gl, r(&w.ffn_in_weight), r(&w.ffn_in_bias));
            timed(Op::BwdLinearFfnIn, || {
                linear_bwd(
                    wt.map(|t| &t.ffn_in),
                    dln1,
                    dw,
                    db,
                    dfc1,
                    &a.ln1[th..th + nh_],
                    &p[w.ffn_in_weight.clone()],
                    n,
                    h,
                    inter,
                )
            })?;
            // ln1 = LN1(res1): dres1
            let dres = &mut a.dres[..nh_];
            dres.fill(0.0);
            let (dw, db) = split2(gl, r(&w.attn_ln_weight), r(&w.attn_ln_bias));
            timed(Op::BwdLayerNorm, || {
                layernorm_backward(
                    dres,
                    dw,
                    db,
                    dln1,
                    &a.res1[th..th + nh_],
                    &p[w.attn_ln_weight.clone()],
                    &a.mean1[tn..tn + n],
                    &a.rstd1[tn..tn + n],
                    n,
                    h,
                )
            })?;
            // res1 = dropout(attn_out) + x: the residual branch seeds dx of the layer input
            let dx = &mut a.dx[..nh_];
            dx.copy_from_slice(dres);
            timed(Op::BwdResidualDropout, || {
                dropout_grad(dproj, dres, p_hidden, seed(2 + 3 * l as u64))
            })?;
            // attn_out = ctx · Woᵀ + bo
            let dctx = &mut a.dctx[..nh_];
            dctx.fill(0.0);
            let (dw, db) = split2(gl, r(&w.attn_out_weight), r(&w.attn_out_bias));
            timed(Op::BwdLinearAttnOut, || {
                linear_bwd(
                    wt.map(|t| &t.attn_out),
                    dctx,
                    dw,
                    db,
                    dproj,
                    &a.ctx[th..th + nh_],
                    &p[w.attn_out_weight.clone()],
                    n,
                    h,
                    h,
                )
            })?;
            // ctx = attention(qkv)
            let dqkv = &mut a.dqkv[..3 * nh_];
            dqkv.fill(0.0);
            let att_drop = (p_attn > 0.0).then(|| AttentionDropout {
                p: p_attn as f64,
                seed: seed(1 + 3 * l as u64),
            });
            timed(Op::BwdAttention, || {
                attention_backward(
                    dqkv,
                    &mut a.probs_scratch[..probs_len],
                    dctx,
                    &a.qkv[tq..tq + 3 * nh_],
                    &a.probs[l * s2_cap * nh..][..probs_len],
                    &a.seq_offsets,
                    nh,
                    h,
                    att_drop,
                )
            })?;
            // qkv = x · Wqkvᵀ + bqkv
            let (dw, db) = split2(gl, r(&w.qkv_weight), r(&w.qkv_bias));
            timed(Op::BwdLinearQkv, || {
                linear_bwd(
                    wt.map(|t| &t.qkv),
                    dx,
                    dw,
                    db,
                    dqkv,
                    x,
                    &p[w.qkv_weight.clone()],
                    n,
                    h,
                    3 * h,
                )
            })?;
        }

        if depth > 0 {
            inject_layer_grads(&mut a.dx[..nh_], layer_grads, 0, &a.seq_offsets, h)?;
        }
        // x0 = dropout(LN(emb_sum))
        let e = &self.layout.embeddings;
        let dproj = &mut a.dproj[..nh_];
        timed(Op::BwdResidualDropout, || {
            dropout_grad(dproj, &a.dx[..nh_], p_hidden, seed(0))
        })?;
        let dsum = &mut a.dres[..nh_];
        dsum.fill(0.0);
        let (dw, db) = split2(g, e.ln_weight.clone(), e.ln_bias.clone());
        timed(Op::BwdLayerNorm, || {
            layernorm_backward(
                dsum,
                dw,
                db,
                dproj,
                &a.emb_sum[..nh_],
                &p[e.ln_weight.clone()],
                &a.emb_mean[..n],
                &a.emb_rstd[..n],
                n,
                h,
            )
        })?;
        let (dword, rest) = g.split_at_mut(e.position.start);
        let (dpos, rest) = rest.split_at_mut(e.position.len());
        let dtyp = &mut rest[..e.token_type.len()];
        timed(Op::BwdEmbedding, || {
            embedding_backward(
                &mut dword[e.word.clone()],
                dpos,
                dtyp,
                dsum,
                &a.ids,
                &a.positions,
                &a.type_ids,
                n,
                h,
            )
        })?;
        Ok(())
    }
}

/// The gradient of one layer's pooled output, for [`Encoder::backward_layers`].
#[derive(Debug, Clone, Copy)]
pub struct LayerGrad<'a> {
    /// 0 = the embedding output, `num_hidden_layers` = the last layer.
    pub layer: usize,
    /// The pooler that pooled this layer's output (its backward needs the forward's state, e.g. max's arg-max).
    pub pooler: &'a Pooler,
    /// `d loss / d pooled` `[B, H]`.
    pub dpooled: &'a [f32],
}

/// Adds every `layer_grads` entry of `layer` through its pooler's backward into `dx`.
fn inject_layer_grads(
    dx: &mut [f32],
    layer_grads: &[LayerGrad<'_>],
    layer: usize,
    seq_offsets: &[usize],
    h: usize,
) -> Result<()> {
    for g in layer_grads.iter().filter(|g| g.layer == layer) {
        g.pooler.backward(dx, g.dpooled, seq_offsets, h)?;
    }
    Ok(())
}

/// A linear layer's backward (adds into every gradient). With `bf16` (the layer's transposed
/// bf16 weight) both products (`dout · W`, `doutᵀ · inp`) run in bf16 with f32 sums; the bias
/// gradient is an f32 sum.
#[allow(clippy::too_many_arguments)]
fn linear_bwd(
    bf16: Option<&PackedBf16>,
    dinp: &mut [f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    rows: usize,
    in_dim: usize,
    out_dim: usize,
) -> std::result::Result<(), angle_tensor::TensorError> {
    match bf16 {
        None => linear_backward(
            Some(dinp),
            dweight,
            Some(dbias),
            dout,
            inp,
            weight,
            rows,
            in_dim,
            out_dim,
        ),
        Some(wt) => linear_backward_bf16(dinp, dweight, Some(dbias), dout, inp, wt, rows, in_dim, out_dim),
    }
}

fn dropout_grad(dinp: &mut [f32], dout: &[f32], p: f32, seed: u64) -> Result<()> {
    if p > 0.0 {
        dinp.fill(0.0);
        dropout_backward(dinp, dout, dout.len(), p, seed)?;
    } else {
        dinp.copy_from_slice(dout);
    }
    Ok(())
}

/// Two disjoint sub-slices of one buffer (a layer's weight and bias gradients).
fn split2(buf: &mut [f32], a: std::ops::Range<usize>, b: std::ops::Range<usize>) -> (&mut [f32], &mut [f32]) {
    debug_assert!(a.end <= b.start);
    let (lo, hi) = buf.split_at_mut(b.start);
    (&mut lo[a], &mut hi[..b.end - b.start])
}

/// Runs `f`, adding its wall time to `op`'s counter when profiling is on.
#[inline]
fn timed<R>(op: Op, f: impl FnOnce() -> R) -> R {
    let t = profile::start();
    let r = f();
    profile::stop(op, t);
    r
}
