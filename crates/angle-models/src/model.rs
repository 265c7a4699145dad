//! A model: a family's blocks, its flat buffers (trainable parameters with gradients and AdamW
//! moments; frozen ones), the per-use activation states, and pooling.
//!
//! Every encoder family has the same shape: embeddings, an optional projection to the hidden size
//! (ELECTRA, ALBERT), layers (ALBERT runs shared weights: `uses[l]` is the block layer `l` runs), an
//! optional final norm (ModernBERT). The family files only say how their config and module names map
//! onto it.

use std::ops::Range;
use std::path::{Path, PathBuf};

use angle_encoder::{AdamW, Batch, ParamBuffers, Pooler, Pooling, decays};
use angle_tensor::Precision;
use angle_tensor::cpu::{PackedBf16, PackedI8};
use angle_tensor::rng::derive_seed;

use crate::error::{ModelError, Result};
use crate::families;
use crate::nn::{
    Embeddings, EmbeddingsState, Grads, Init, LayerNorm, LayerSeeds, LayerState, Linear, LinearState,
    LoraSpec, ModernBertDropout, NormState, Packed, PackedWeights, Store, VarBuilder, Weights,
    kaiming_uniform,
};
use crate::weights::Checkpoint;

/// The blocks of an encoder, as a family builds them.
#[derive(Debug, Clone)]
pub struct EncoderBlocks {
    /// `config.json`'s `model_type`.
    pub model_type: String,
    pub embeddings: Embeddings,
    /// `embedding_size → hidden_size` (ELECTRA's `embeddings_project`, ALBERT's
    /// `encoder.embedding_hidden_mapping_in`).
    pub projection: Option<Linear>,
    pub layers: Vec<crate::nn::Layer>,
    /// Layer `l` runs `layers[uses[l]]`.
    pub uses: Vec<usize>,
    pub final_norm: Option<LayerNorm>,
    pub hidden_size: usize,
    /// The prefix of the weight names in checkpoints saved from a head model (`bert.`, `electra.`, ...).
    pub checkpoint_prefixes: Vec<String>,
    pub in_layer_dropout: ModernBertDropout,
}

impl EncoderBlocks {
    /// Reads a family's `config.json` and builds its blocks without weights (what option checks need).
    pub fn from_config(config: &Path) -> Result<EncoderBlocks> {
        families::build(config, &mut VarBuilder::new(false), None)
    }

    /// The largest dropout probability of the base model (embeddings, layers).
    pub fn max_dropout(&self) -> f64 {
        let layers = self.layers.iter().map(|l| match l {
            crate::nn::Layer::Bert(x) => x.hidden_dropout.max(x.attention.probs_dropout),
            crate::nn::Layer::ModernBert(_) => self.in_layer_dropout.attention.max(self.in_layer_dropout.mlp),
        });
        layers.fold(self.embeddings.dropout, f64::max)
    }
}

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct ModelOptions {
    /// LoRA adapters on the targeted linear modules; the base is frozen.
    pub lora: Option<LoraSpec>,
    /// Nothing will train: no gradients or moments are allocated.
    pub frozen: bool,
}

/// Activations of one forward, kept for backward.
#[derive(Debug, Clone, Default)]
struct Run {
    emb: EmbeddingsState,
    /// The embeddings (width `embedding_size`) and, with a projection, the projected ones.
    emb_out: Vec<f32>,
    proj: LinearState,
    /// The input of layer `l` is `xs[l]`; the last layer's output is `xs[L]`.
    xs: Vec<Vec<f32>>,
    layers: Vec<LayerState>,
    final_norm: NormState,
    hidden: Vec<f32>,
    ids: Vec<u32>,
    offsets: Vec<usize>,
    seed: Option<u64>,
    ready: bool,
}

/// A family's blocks with their buffers.
pub struct Model {
    pub blocks: EncoderBlocks,
    pub vars: VarBuilder,
    /// Trainable parameters (all, or LoRA's A and B), their gradients and moments.
    pub buffers: ParamBuffers,
    /// Frozen parameters (a LoRA run's base).
    pub frozen: Vec<f32>,
    /// Packed copies of the linear weights that do not train ([`Model::set_precision`]).
    packed: PackedWeights,
    no_decay: Vec<Range<usize>>,
    pub lora: Option<LoraSpec>,
    pub dir: PathBuf,
    run: Run,
    dgrad: [Vec<f32>; 2],
    demb: Vec<f32>,
    /// Gradient checkpointing: a forward keeps each layer's input only; backward runs each layer's
    /// forward again (the same dropout masks) just before its backward.
    pub checkpointing: bool,
    /// The recomputed layer's output (not needed, but the forward writes one).
    recompute_out: Vec<f32>,
}

/// Layer `l`'s dropout seeds for the step seed `dropout` (train mode).
fn layer_seeds(dropout: Option<u64>, l: usize) -> Option<LayerSeeds> {
    dropout.map(|s| LayerSeeds {
        probs: derive_seed(s, 1 + 3 * l as u64),
        attn_out: derive_seed(s, 2 + 3 * l as u64),
        ffn_out: derive_seed(s, 3 + 3 * l as u64),
        lora: derive_seed(s, (1 << 21) + l as u64),
    })
}

impl Model {
    /// Loads the model in `dir` (`config.json` and `model.safetensors` or its shards).
    pub fn from_dir(dir: impl AsRef<Path>, opts: &ModelOptions) -> Result<Model> {
        let dir = dir.as_ref().to_path_buf();
        let mut vb = VarBuilder::new(opts.lora.is_some());
        let blocks = families::build(&dir.join("config.json"), &mut vb, opts.lora.as_ref())?;
        let ckpt = Checkpoint::open(&dir)?;
        let mut trainable = vec![0.0f32; vb.trainable_len];
        let mut frozen = vec![0.0f32; vb.frozen_len];
        for e in &vb.entries {
            let dst = match e.var.store {
                Store::Trainable => &mut trainable[e.var.range.clone()],
                Store::Frozen => &mut frozen[e.var.range.clone()],
            };
            match e.init {
                Init::Checkpoint => {
                    let t = find(&ckpt, &e.name, &blocks.checkpoint_prefixes, &e.shape)?;
                    t.widen_range_into(0, dst);
                }
                Init::KaimingUniform { fan_in, seed } => kaiming_uniform(dst, fan_in, seed),
                Init::Zero => dst.fill(0.0),
            }
        }
        let no_decay = vb
            .entries
            .iter()
            .filter(|e| e.var.trainable() && !decays(&e.name))
            .map(|e| e.var.range.clone())
            .collect();
        let mut buffers = ParamBuffers::new(trainable);
        if !opts.frozen {
            buffers.alloc_training();
        }
        Ok(Model {
            blocks,
            vars: vb,
            buffers,
            frozen,
            packed: PackedWeights::default(),
            no_decay,
            lora: opts.lora.clone(),
            dir,
            run: Run::default(),
            dgrad: Default::default(),
            demb: Vec::new(),
            checkpointing: false,
            recompute_out: Vec::new(),
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.blocks.hidden_size
    }

    /// The longest sequence the model takes (its positions, or its rotary tables).
    pub fn max_sequence_length(&self) -> usize {
        let e = &self.blocks.embeddings;
        if let Some((_, first)) = &e.position {
            return e.max_positions.saturating_sub(*first);
        }
        let rope = self.blocks.layers.iter().find_map(|l| match l {
            crate::nn::Layer::Bert(x) => x.attention.rope.as_ref(),
            crate::nn::Layer::ModernBert(x) => x.attention.rope.as_ref(),
        });
        rope.map_or(usize::MAX, |r| r.max_len)
    }

    pub fn num_layers(&self) -> usize {
        self.blocks.uses.len()
    }

    fn weights(&self) -> Weights<'_> {
        Weights {
            trainable: &self.buffers.params,
            frozen: &self.frozen,
            packed: &self.packed,
        }
    }

    /// The last hidden state `[N, H]` of the packed batch; `dropout` is the step's seed (train mode).
    pub fn forward(&mut self, batch: &Batch<'_>, dropout: Option<u64>) -> Result<&[f32]> {
        if dropout.is_some() {
            for l in &self.blocks.layers {
                l.check_dropout(self.blocks.in_layer_dropout)?;
            }
        }
        let offs = batch.seq_offsets;
        if offs.first() != Some(&0) || offs.last() != Some(&batch.input_ids.len()) {
            return Err(ModelError::Batch(format!(
                "sequence offsets {:?} do not cover the {} token ids",
                (offs.first(), offs.last()),
                batch.input_ids.len()
            )));
        }
        let w = Weights {
            trainable: &self.buffers.params,
            frozen: &self.frozen,
            packed: &self.packed,
        };
        let b = &self.blocks;
        let run = &mut self.run;
        run.ready = false;
        run.seed = dropout;
        let seed = |tag: u64| dropout.map(|s| derive_seed(s, tag));
        let (n, e, h) = (batch.input_ids.len(), b.embeddings.dim, b.hidden_size);
        let nl = b.uses.len();
        run.xs.resize_with(nl + 1, Vec::new);
        // with checkpointing one state serves every layer: backward recomputes each in turn
        let states = if self.checkpointing { nl.min(1) } else { nl };
        run.layers.resize_with(states, LayerState::default);
        run.emb_out.resize(n * e, 0.0);
        let type_ids = batch.token_type_ids;
        b.embeddings.forward(
            &w,
            &mut run.emb,
            &mut run.emb_out,
            batch.input_ids,
            type_ids,
            offs,
            seed(0),
        )?;
        run.xs[0].resize(n * h, 0.0);
        match &b.projection {
            Some(p) => p.forward(&w, &mut run.proj, &mut run.xs[0], &run.emb_out, n, seed(1 << 20))?,
            None => run.xs[0].copy_from_slice(&run.emb_out),
        }
        for l in 0..nl {
            let (done, rest) = run.xs.split_at_mut(l + 1);
            rest[0].resize(n * h, 0.0);
            let st = &mut run.layers[l.min(states - 1)];
            b.layers[b.uses[l]].forward(&w, st, &mut rest[0], &done[l], offs, layer_seeds(dropout, l))?;
        }
        run.hidden.resize(n * h, 0.0);
        match &b.final_norm {
            Some(norm) => norm.forward(&w, &mut run.final_norm, &mut run.hidden, &run.xs[nl], n)?,
            None => run.hidden.copy_from_slice(&run.xs[nl]),
        }
        run.ids.clear();
        run.ids.extend_from_slice(batch.input_ids);
        run.offsets.clear();
        run.offsets.extend_from_slice(offs);
        run.ready = true;
        Ok(&self.run.hidden)
    }

    /// Bytes of every activation and work buffer the model holds (grown to the largest batch so far):
    /// what one batch costs beyond the weights and the trainable state.
    pub fn activation_bytes(&self) -> usize {
        let r = &self.run;
        let floats = r.emb.floats()
            + r.emb_out.len()
            + r.proj.floats()
            + r.xs.iter().map(Vec::len).sum::<usize>()
            + r.layers.iter().map(LayerState::floats).sum::<usize>()
            + r.final_norm.floats()
            + r.hidden.len()
            + self.dgrad.iter().map(Vec::len).sum::<usize>()
            + self.demb.len()
            + self.recompute_out.len();
        4 * floats
    }

    /// The last hidden state of the last forward.
    pub fn hidden(&self) -> &[f32] {
        &self.run.hidden
    }

    /// The output of layer `l` of the last forward (0: the embeddings, after any projection).
    pub fn layer_output(&self, l: usize) -> Option<&[f32]> {
        self.run.xs.get(l).map(|v| &v[..])
    }

    /// Adds the gradients of the last forward from `dhidden [N, H]`.
    pub fn backward(&mut self, dhidden: &[f32]) -> Result<()> {
        if !self.run.ready {
            return Err(ModelError::State("backward before a forward".into()));
        }
        if !self.buffers.is_training() {
            return Err(ModelError::State("backward on a model loaded frozen".into()));
        }
        let w = Weights {
            trainable: &self.buffers.params,
            frozen: &self.frozen,
            packed: &self.packed,
        };
        let mut g = Grads {
            g: &mut self.buffers.grads,
        };
        let b = &self.blocks;
        let run = &mut self.run;
        let offs = &run.offsets[..];
        let (n, nl) = (run.ids.len(), b.uses.len());
        let h = b.hidden_size;
        let [cur, prev] = &mut self.dgrad;
        cur.clear();
        cur.resize(n * h, 0.0);
        match &b.final_norm {
            Some(norm) => norm.backward(&w, &mut g, &mut run.final_norm, cur, dhidden, &run.xs[nl], n)?,
            None => cur.copy_from_slice(dhidden),
        }
        for l in (0..nl).rev() {
            let layer = &b.layers[b.uses[l]];
            let st = if self.checkpointing {
                let out = &mut self.recompute_out;
                out.resize(n * h, 0.0);
                layer.forward(
                    &w,
                    &mut run.layers[0],
                    out,
                    &run.xs[l],
                    offs,
                    layer_seeds(run.seed, l),
                )?;
                &mut run.layers[0]
            } else {
                &mut run.layers[l]
            };
            prev.clear();
            prev.resize(n * h, 0.0);
            layer.backward(&w, &mut g, st, prev, cur, &run.xs[l], offs)?;
            std::mem::swap(cur, prev);
        }
        let demb: &[f32] = match &b.projection {
            Some(p) => {
                self.demb.clear();
                self.demb.resize(n * b.embeddings.dim, 0.0);
                p.backward(
                    &w,
                    &mut g,
                    &mut run.proj,
                    Some(&mut self.demb),
                    cur,
                    &run.emb_out,
                    n,
                )?;
                &self.demb
            }
            None => cur,
        };
        b.embeddings.backward(&w, &mut g, &mut run.emb, demb, &run.ids)
    }

    /// Clears the gradients (allocating them and the moments on first use).
    pub fn zero_grad(&mut self) {
        self.buffers.alloc_training();
        self.buffers.zero_grad();
    }

    /// One AdamW step `t` (from 1) over the trainable parameters (no decay on biases and norm weights).
    pub fn adamw_step(&mut self, hp: &AdamW, t: u64) -> Result<()> {
        self.buffers.adamw_step(hp, &self.no_decay, t)?;
        Ok(())
    }

    /// Every tensor with its current values: `(name, shape, values)` in module order; `lora` picks the
    /// adapters (true) or the base (false).
    pub fn tensors(&self, lora: bool) -> Vec<(String, Vec<usize>, &[f32])> {
        let w = self.weights();
        self.vars
            .entries
            .iter()
            .filter(|e| (e.init != Init::Checkpoint) == lora)
            .map(|e| (e.name.clone(), e.shape.clone(), w.get(&e.var)))
            .collect()
    }

    /// The base weights with every adapter folded in (`W + scale · B·A`), by name.
    pub fn merged_tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let w = self.weights();
        let mut out: Vec<(String, Vec<usize>, Vec<f32>)> = self
            .tensors(false)
            .into_iter()
            .map(|(n, s, v)| (n, s, v.to_vec()))
            .collect();
        let index: std::collections::HashMap<String, usize> = out
            .iter()
            .enumerate()
            .map(|(i, (n, _, _))| (n.clone(), i))
            .collect();
        for lin in self.linears() {
            for ad in &lin.adapters {
                let Some(&i) = index.get(&format!("{}.weight", ad.module)) else {
                    continue;
                };
                let (a, bm) = (w.get(&ad.a), w.get(&ad.b));
                let wt = &mut out[i].2;
                let (rows, cols) = (ad.cols.len(), lin.in_dim);
                for o in 0..rows {
                    for c in 0..cols {
                        let s: f32 = (0..ad.r).map(|k| bm[o * ad.r + k] * a[k * cols + c]).sum();
                        wt[o * cols + c] += (ad.scale as f32) * s;
                    }
                }
            }
        }
        out
    }

    /// peft's prefix of adapter tensor names in `adapter_model.safetensors`.
    pub const PEFT_PREFIX: &'static str = "base_model.model.";

    /// Reads the A and B of every adapter from a peft `adapter_model.safetensors`; a missing or
    /// misshapen tensor is an error naming it.
    pub fn load_adapter(&mut self, file: &Path) -> Result<()> {
        let tensors = crate::weights::read_f32_tensors(file)?;
        for e in self.vars.entries.iter().filter(|e| e.init != Init::Checkpoint) {
            let name = format!("{}{}", Self::PEFT_PREFIX, e.name);
            let (shape, values) = tensors.get(&name).ok_or_else(|| ModelError::MissingTensor {
                path: file.to_path_buf(),
                name: name.clone(),
            })?;
            if shape != &e.shape {
                return Err(ModelError::ShapeMismatch {
                    path: file.to_path_buf(),
                    name,
                    found: shape.clone(),
                    expected: e.shape.clone(),
                });
            }
            self.buffers.params[e.var.range.clone()].copy_from_slice(values);
        }
        Ok(())
    }

    /// The largest dropout probability a training forward applies (embeddings, layers, LoRA).
    pub fn max_dropout(&self) -> f64 {
        let lora = self.lora.as_ref().map_or(0.0, |l| l.dropout);
        self.blocks.max_dropout().max(lora)
    }

    /// The linear layers' products: [`Precision::F32`] (the default), or, for weights that do not train (a
    /// model that only encodes, or a LoRA run's frozen base), [`Precision::Int8`] (each weight quantized once
    /// per output channel, the inputs per row per call; backward's input gradient through the dequantized
    /// weight: `--precision int8`, `--load-kbit 8`) or [`Precision::Bf16`] (each weight packed once for the bf16
    /// kernels, transposed too for backward's `dy · W`; f32 sums). Norms, attention, activations, LoRA's A and
    /// B stay f32; the f32 weights stay too (merges and saves read them).
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        self.packed = PackedWeights::default();
        if precision == Precision::F32 {
            return Ok(());
        }
        if precision == Precision::Tf32 {
            return Err(ModelError::State(
                "tf32 is a GPU precision: the CPU runs f32, bf16 or int8".into(),
            ));
        }
        let training = self.buffers.is_training();
        let mut packed = PackedWeights::default();
        for lin in self.linears() {
            if training && lin.weight.trainable() {
                return Err(ModelError::State(format!(
                    "{}: {precision} copies serve weights that do not train (encoding, or LoRA's base: --load-kbit 8, \
                     --precision bf16); full fine-tuning trains the linear weights themselves, in f32",
                    lin.modules.join(", ")
                )));
            }
            let w = self.weights().get(&lin.weight);
            let (o, i) = (lin.out_dim, lin.in_dim);
            let pack = match precision {
                Precision::Int8 => Packed::Int8(PackedI8::quantize(w, o, i)?),
                _ => Packed::Bf16 {
                    fwd: PackedBf16::pack(w, o, i)?,
                    bwd: training
                        .then(|| PackedBf16::pack_transposed(w, o, i))
                        .transpose()?,
                },
            };
            packed.insert(&lin.weight, pack);
        }
        self.packed = packed;
        Ok(())
    }

    /// Bytes of the packed copies ([`Model::set_precision`]).
    pub fn packed_bytes(&self) -> usize {
        self.packed.bytes()
    }

    /// Every linear block (for adapters).
    pub fn linears(&self) -> Vec<&Linear> {
        families::linears(&self.blocks).collect()
    }

    /// A pooler of this model's default kind (from `modules.json` / `1_Pooling`, else `cls`).
    pub fn default_pooling(&self) -> Pooling {
        Pooling::from_model_dir(&self.dir).unwrap_or(Pooling::Cls)
    }

    /// Pools the last hidden state into `out [B, H]`.
    pub fn pool(&self, pooler: &mut Pooler, out: &mut [f32]) -> Result<()> {
        pooler.forward(out, &self.run.hidden, &self.run.offsets, self.blocks.hidden_size)?;
        Ok(())
    }
}

/// The checkpoint tensor `name`, under any of the head models' prefixes.
fn find<'a>(
    ckpt: &'a Checkpoint,
    name: &str,
    prefixes: &[String],
    shape: &[usize],
) -> Result<&'a crate::weights::Frozen> {
    for p in std::iter::once("").chain(prefixes.iter().map(String::as_str)) {
        let full = format!("{p}{name}");
        if ckpt.tensors.contains_key(&full) {
            return ckpt.get(&full, shape);
        }
    }
    ckpt.get(name, shape)
}
