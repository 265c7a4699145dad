//! The decoder: embedding → layers (RMSNorm, GQA with RoPE, SwiGLU MLP, residuals) → final RMSNorm →
//! pooling, with a hand-written backward (forward read in reverse; `docs/decoder.md`).
//!
//! Trainable tensors (every parameter for full fine-tuning, or only LoRA's A and B) live in one flat f32
//! buffer ([`ParamBuffers`]); gradients and AdamW moments mirror it. Frozen weights stay in the
//! checkpoint's memory map in its dtype and are widened to f32 per product into one scratch buffer; frozen
//! norms and biases (a few KB) are widened once at load.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use angle_encoder::{AdamW, ParamBuffers, ParamEntry, Pooler, Pooling};
use angle_tensor::Precision;
use angle_tensor::cpu::{
    GqaShape, LoraShape, MatMut, MatRef, PackedBf16, PackedI8, attention_probs_len, dropout_backward,
    dropout_forward, gemm, gqa_attention_backward, gqa_attention_forward, linear_accumulate_bf16,
    linear_backward, linear_backward_bf16, linear_forward, linear_forward_bf16, linear_forward_i8,
    lora_backward, lora_forward, rmsnorm_backward, rmsnorm_forward, rope_backward, rope_forward,
    rope_inv_freq, rope_tables_from, swiglu_backward, swiglu_forward,
};
use angle_tensor::rng::derive_seed;

use crate::config::DecoderConfig;
use crate::error::{DecoderError, Result};
use crate::lora::{LoraConfig, MODULES, kaiming_uniform, module_parent, peft_name};
use crate::weights::{Checkpoint, Frozen};

/// Where a tensor's values live.
#[derive(Debug, Clone)]
pub enum Param {
    /// Frozen, in the checkpoint's map and dtype (linear weights, embedding table).
    Frozen(Frozen),
    /// Frozen and small (norm weights, biases), widened to f32 at load.
    Small(Vec<f32>),
    /// Trainable: a range of the flat parameter buffer.
    Train(Range<usize>),
}

#[derive(Debug, Clone)]
struct LoraSlot {
    a: Range<usize>,
    b: Range<usize>,
    r: usize,
    scale: f64,
}

/// One linear layer `[out, in]` with optional bias and LoRA branch.
#[derive(Debug, Clone)]
struct Linear {
    weight: Param,
    bias: Option<Param>,
    in_dim: usize,
    out_dim: usize,
    lora: Option<LoraSlot>,
}

#[derive(Debug, Clone)]
struct Layer {
    input_norm: Param,
    post_norm: Param,
    q_norm: Option<Param>,
    k_norm: Option<Param>,
    /// q, k, v, o, gate, up, down ([`MODULES`] order)
    lin: Vec<Linear>,
}

/// A linear weight packed for the bf16 kernels (`Precision::Bf16`) or quantized for the int8 ones
/// (`Precision::Int8`, a model that only encodes): `fwd` for `x · Wᵀ`, `bwd` (bf16, when a backward
/// will run) for the input gradient `dy · W`.
#[derive(Debug, Clone, Default)]
struct Bf16Weight {
    fwd: PackedBf16,
    int8: Option<PackedI8>,
    bwd: Option<PackedBf16>,
}

/// What a layer's backward needs, saved by forward (reused across steps: `Vec`s only grow).
#[derive(Debug, Clone, Default)]
struct LayerActs {
    x_in: Vec<f32>,
    rstd1: Vec<f32>,
    h1: Vec<f32>,
    q_raw: Vec<f32>,
    k_raw: Vec<f32>,
    rstd_q: Vec<f32>,
    rstd_k: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    probs: Vec<f32>,
    att: Vec<f32>,
    x_mid: Vec<f32>,
    rstd2: Vec<f32>,
    h2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
    xa: [Vec<f32>; 7],
}

#[derive(Debug, Clone, Default)]
struct Acts {
    layers: Vec<LayerActs>,
    /// With checkpointing: every layer's input, from which backward recomputes the layer.
    inputs: Vec<Vec<f32>>,
    x_out: Vec<f32>,
    rstd_f: Vec<f32>,
    hidden: Vec<f32>,
    ids: Vec<u32>,
    offsets: Vec<usize>,
    dropout_seed: Option<u64>,
    ready: bool,
}

/// Backward's work buffers, shared by all layers.
#[derive(Debug, Clone, Default)]
struct Scratch {
    w: Vec<f32>,
    tmp: Vec<f32>,
    tmp2: Vec<f32>,
    dxa: Vec<f32>,
    dhidden: Vec<f32>,
    dx: Vec<f32>,
    dh: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    dq_raw: Vec<f32>,
    dk_raw: Vec<f32>,
    datt: Vec<f32>,
    dgate: Vec<f32>,
    dup: Vec<f32>,
    dact: Vec<f32>,
    dprobs: Vec<f32>,
    /// A recomputed layer's output (checkpointing), not read.
    recomputed: Vec<f32>,
}

/// How to build a [`Decoder`].
#[derive(Debug, Clone)]
pub struct DecoderOptions {
    /// `None`: full fine-tuning (every parameter trainable). `Some`: LoRA on a frozen base.
    pub lora: Option<LoraConfig>,
    /// A peft adapter folder to start from (its `adapter_config.json` gives the LoRA settings).
    pub adapter: Option<PathBuf>,
    /// Causal attention (as the checkpoints were trained); `false` for bidirectional.
    pub causal: bool,
    /// BiLLM (angle-emb's `BiLLM_START_INDEX`): layers from this index on attend bidirectionally, the ones
    /// before causally. `None`: every layer as `causal` says.
    pub bidirectional_from: Option<usize>,
    /// `None`: the checkpoint's sentence-transformers pooling if it has one, else `last`.
    pub pooling: Option<Pooling>,
    /// Without LoRA: nothing trainable, every weight stays in the checkpoint's dtype and memory map (for
    /// encoding: a bf16 model then takes its file's size, not twice it in f32). No effect with LoRA, whose
    /// frozen base is kept that way anyway.
    pub frozen: bool,
}

impl Default for DecoderOptions {
    fn default() -> Self {
        DecoderOptions {
            lora: None,
            adapter: None,
            causal: true,
            bidirectional_from: None,
            pooling: None,
            frozen: false,
        }
    }
}

/// A LLaMA / Mistral / Qwen2 / Qwen3 backbone with its trainable state.
#[derive(Debug, Clone)]
pub struct Decoder {
    pub config: DecoderConfig,
    pub checkpoint: Checkpoint,
    /// `Some` for LoRA training (only A, B trainable).
    pub lora: Option<LoraConfig>,
    pub causal: bool,
    /// Layers from this index on attend bidirectionally ([`DecoderOptions::bidirectional_from`]).
    pub bidirectional_from: Option<usize>,
    /// Full and merged saves are split into shards above this size (transformers' `max_shard_size`).
    pub max_shard_bytes: u64,
    pub pooling: Pooling,
    /// The trainable tensors, in buffer order: Hugging Face names (full fine-tuning) or peft names (LoRA).
    pub entries: Vec<ParamEntry>,
    index: HashMap<String, usize>,
    /// The trainable ranges AdamW does not decay (norm weights, biases: [`angle_encoder::decays`]).
    no_decay: Vec<Range<usize>>,
    pub buffers: ParamBuffers,
    embed: Param,
    layers: Vec<Layer>,
    final_norm: Param,
    pooler: Pooler,
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
    rope_len: usize,
    acts: Acts,
    scratch: Scratch,
    /// Loaded `frozen` with nothing trainable: no backward, so forward keeps two layers' activations, not all.
    frozen: bool,
    /// Gradient checkpointing: forward keeps each layer's input only; backward recomputes every layer.
    pub checkpointing: bool,
    /// The linear layers' products: f32 on the widened weights, or bf16 with f32 sums.
    precision: Precision,
    /// With bf16 products, every layer's seven packed weights ([`MODULES`] order); empty in f32.
    bf16: Vec<Vec<Bf16Weight>>,
}

struct Builder<'a> {
    ck: &'a Checkpoint,
    entries: Vec<ParamEntry>,
    params: Vec<f32>,
    full: bool,
}

impl Builder<'_> {
    fn push(&mut self, name: &str, shape: &[usize], init: Option<&Frozen>) -> Range<usize> {
        let start = self.params.len();
        let len: usize = shape.iter().product();
        self.params.resize(start + len, 0.0);
        if let Some(f) = init {
            f.widen_range_into(0, &mut self.params[start..]);
        }
        self.entries.push(ParamEntry {
            name: name.to_string(),
            shape: shape.to_vec(),
            offset: start,
        });
        start..start + len
    }

    /// A checkpoint tensor: trainable (full fine-tuning), or frozen (`small`: widened now).
    fn tensor(&mut self, name: &str, shape: &[usize], small: bool) -> Result<Param> {
        let f = self.ck.get(name, shape)?;
        Ok(if self.full {
            let f = f.clone();
            Param::Train(self.push(name, shape, Some(&f)))
        } else if small {
            Param::Small(f.to_f32())
        } else {
            Param::Frozen(f.clone())
        })
    }
}

fn sized(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    v.resize(n, 0.0);
    &mut v[..n]
}

fn zeroed(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    v.clear();
    v.resize(n, 0.0);
    &mut v[..]
}

fn two_mut(buf: &mut [f32], a: Range<usize>, b: Range<usize>) -> (&mut [f32], &mut [f32]) {
    if a.start < b.start {
        let (x, y) = buf.split_at_mut(b.start);
        (&mut x[a], &mut y[..b.end - b.start])
    } else {
        let (x, y) = buf.split_at_mut(a.start);
        (&mut y[..a.end - a.start], &mut x[b])
    }
}

/// The f32 values of a parameter (a frozen weight widened into `wbuf`).
fn values<'a>(p: &'a Param, params: &'a [f32], wbuf: &'a mut Vec<f32>) -> &'a [f32] {
    match p {
        Param::Frozen(f) => f.widen_into(wbuf),
        Param::Small(v) => v,
        Param::Train(r) => &params[r.clone()],
    }
}

/// Values of a small parameter (norm weight, bias): never a frozen map window.
fn small<'a>(p: &'a Param, params: &'a [f32]) -> &'a [f32] {
    match p {
        Param::Small(v) => v,
        Param::Train(r) => &params[r.clone()],
        Param::Frozen(_) => unreachable!("norms and biases are widened at load"),
    }
}

fn grad_of<'a>(p: &Param, grads: &'a mut [f32]) -> Option<&'a mut [f32]> {
    match p {
        Param::Train(r) => Some(&mut grads[r.clone()]),
        _ => None,
    }
}

type Drop = Option<(f32, u64)>;

fn lin_forward(
    lin: &Linear,
    bf16: Option<&Bf16Weight>,
    params: &[f32],
    wbuf: &mut Vec<f32>,
    tmp: &mut Vec<f32>,
    out: &mut [f32],
    xa: &mut Vec<f32>,
    inp: &[f32],
    rows: usize,
    drop: Drop,
) -> Result<()> {
    let b = lin.bias.as_ref().map(|b| small(b, params));
    match bf16 {
        Some(Bf16Weight { int8: Some(q), .. }) => linear_forward_i8(out, inp, q, b, rows)?,
        Some(p) => linear_forward_bf16(out, inp, &p.fwd, b, rows)?,
        None => {
            let w = values(&lin.weight, params, wbuf);
            linear_forward(out, inp, w, b, rows, lin.in_dim, lin.out_dim)?;
        }
    }
    if let Some(l) = &lin.lora {
        let n = rows * lin.in_dim;
        let x: &[f32] = match drop {
            Some((p, seed)) => {
                let t = sized(tmp, n);
                dropout_forward(t, inp, n, p, seed)?;
                t
            }
            None => inp,
        };
        let s = LoraShape {
            rows,
            in_dim: lin.in_dim,
            out_dim: lin.out_dim,
            r: l.r,
            scale: l.scale,
        };
        lora_forward(
            out,
            sized(xa, rows * l.r),
            x,
            &params[l.a.clone()],
            &params[l.b.clone()],
            s,
        )?;
    }
    Ok(())
}

fn lin_backward(
    lin: &Linear,
    bf16: Option<&Bf16Weight>,
    params: &[f32],
    grads: &mut [f32],
    s: &mut Scratch,
    dinp: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    xa: &[f32],
    rows: usize,
    drop: Drop,
) -> Result<()> {
    let (i, o) = (lin.in_dim, lin.out_dim);
    if let Param::Train(wr) = &lin.weight {
        let (dw, db) = match &lin.bias {
            Some(Param::Train(br)) => {
                let (a, b) = two_mut(grads, wr.clone(), br.clone());
                (a, Some(b))
            }
            _ => (&mut grads[wr.clone()], None),
        };
        match bf16.and_then(|p| p.bwd.as_ref()) {
            Some(wt) => linear_backward_bf16(dinp, dw, db, dout, inp, wt, rows, i, o)?,
            None => linear_backward(Some(dinp), dw, db, dout, inp, &params[wr.clone()], rows, i, o)?,
        }
    } else if let Some(wt) = bf16.and_then(|p| p.bwd.as_ref()) {
        linear_accumulate_bf16(dinp, dout, wt, rows)?;
    } else {
        // An 8-bit frozen base: the f32 product with the weight its forward used (`q · scale`).
        let w = match bf16.and_then(|p| p.int8.as_ref()) {
            Some(q) => q.dequantize_into(&mut s.w),
            None => values(&lin.weight, params, &mut s.w),
        };
        gemm(
            1.0,
            MatRef::new(dout, rows, o),
            MatRef::new(w, o, i),
            1.0,
            MatMut::new(dinp, rows, i),
        )?;
    }
    if let Some(l) = &lin.lora {
        let shape = LoraShape {
            rows,
            in_dim: i,
            out_dim: o,
            r: l.r,
            scale: l.scale,
        };
        let (da, db) = two_mut(grads, l.a.clone(), l.b.clone());
        let (a, b) = (&params[l.a.clone()], &params[l.b.clone()]);
        let dxa = sized(&mut s.dxa, rows * l.r);
        match drop {
            Some((p, seed)) => {
                let n = rows * i;
                let x = sized(&mut s.tmp, n);
                dropout_forward(x, inp, n, p, seed)?;
                let dx = zeroed(&mut s.tmp2, n);
                lora_backward(Some(&mut *dx), da, db, dxa, dout, x, xa, a, b, shape)?;
                dropout_backward(dinp, dx, n, p, seed)?;
            }
            None => lora_backward(Some(dinp), da, db, dxa, dout, inp, xa, a, b, shape)?,
        }
    }
    Ok(())
}

fn add_into(acc: &mut [f32], x: &[f32]) {
    acc.iter_mut().zip(x).for_each(|(a, &b)| *a += b);
}

impl Decoder {
    /// Loads `dir` (`config.json`, weights) as `opts` asks.
    pub fn load(dir: impl AsRef<Path>, opts: DecoderOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let config = DecoderConfig::from_dir(dir)?;
        let checkpoint = Checkpoint::open(dir)?;
        let mut lora = opts.lora.clone();
        let adapter_cfg = match &opts.adapter {
            Some(a) => {
                let c = LoraConfig::from_adapter_config(&a.join("adapter_config.json"))?;
                lora = Some(LoraConfig {
                    dropout: lora.as_ref().map_or(c.dropout, |l| l.dropout),
                    ..c
                });
                true
            }
            None => false,
        };
        let pooling = match opts.pooling {
            Some(p) => p,
            None if dir.join("modules.json").is_file() || dir.join("1_Pooling/config.json").is_file() => {
                Pooling::from_model_dir(dir)?
            }
            None => Pooling::Last,
        };
        if let Some(k) = opts.bidirectional_from
            && k > config.num_hidden_layers
        {
            return Err(DecoderError::Config {
                path: dir.join("config.json"),
                key: "num_hidden_layers".into(),
                msg: format!(
                    "bidirectional attention from layer {k}: the model has {} layers (0..={})",
                    config.num_hidden_layers, config.num_hidden_layers
                ),
            });
        }
        let mut d = Self::build(config, checkpoint, lora, opts.causal, pooling, opts.frozen)?;
        d.bidirectional_from = opts.bidirectional_from;
        if adapter_cfg && let Some(a) = &opts.adapter {
            d.read_adapter(a)?;
        }
        Ok(d)
    }

    fn build(
        config: DecoderConfig,
        checkpoint: Checkpoint,
        lora: Option<LoraConfig>,
        causal: bool,
        pooling: Pooling,
        frozen: bool,
    ) -> Result<Self> {
        let c = &config;
        let (h, inter) = (c.hidden_size, c.intermediate_size);
        let mask = match &lora {
            Some(l) => Some(l.target_mask()?),
            None => None,
        };
        let frozen = frozen && lora.is_none();
        let mut b = Builder {
            ck: &checkpoint,
            entries: Vec::new(),
            params: Vec::new(),
            full: lora.is_none() && !frozen,
        };
        let embed = b.tensor("model.embed_tokens.weight", &[c.vocab_size, h], false)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            let input_norm = b.tensor(&p("input_layernorm.weight"), &[h], true)?;
            let dims = [
                (h, c.q_dim()),
                (h, c.kv_dim()),
                (h, c.kv_dim()),
                (c.q_dim(), h),
                (h, inter),
                (h, inter),
                (inter, h),
            ];
            let mut lin = Vec::with_capacity(7);
            let mut q_norm = None;
            let mut k_norm = None;
            let mut post_norm = None;
            for (m, &(i, o)) in dims.iter().enumerate() {
                if m == 3 && c.qk_norm {
                    q_norm = Some(b.tensor(&p("self_attn.q_norm.weight"), &[c.head_dim], true)?);
                    k_norm = Some(b.tensor(&p("self_attn.k_norm.weight"), &[c.head_dim], true)?);
                }
                if m == 4 {
                    post_norm = Some(b.tensor(&p("post_attention_layernorm.weight"), &[h], true)?);
                }
                let base = p(&format!("{}.{}", module_parent(m), MODULES[m]));
                let weight = b.tensor(&format!("{base}.weight"), &[o, i], false)?;
                let has_bias = match m {
                    0..=2 => c.qkv_bias,
                    3 => c.o_bias,
                    _ => c.mlp_bias,
                };
                let bias = if has_bias {
                    Some(b.tensor(&format!("{base}.bias"), &[o], true)?)
                } else {
                    None
                };
                lin.push(Linear {
                    weight,
                    bias,
                    in_dim: i,
                    out_dim: o,
                    lora: None,
                });
            }
            layers.push(Layer {
                input_norm,
                post_norm: post_norm.expect("set at module 4"),
                q_norm,
                k_norm,
                lin,
            });
        }
        let final_norm = b.tensor("model.norm.weight", &[h], true)?;
        // LoRA tensors after the base (full fine-tuning has none)
        if let (Some(l), Some(mask)) = (&lora, mask) {
            for (li, layer) in layers.iter_mut().enumerate() {
                for (m, lin) in layer.lin.iter_mut().enumerate() {
                    if !mask[m] {
                        continue;
                    }
                    let a = b.push(&peft_name(li, m, false), &[l.r, lin.in_dim], None);
                    let seed = derive_seed(l.seed, (li * 7 + m) as u64);
                    kaiming_uniform(&mut b.params[a.clone()], lin.in_dim, seed);
                    let bb = b.push(&peft_name(li, m, true), &[lin.out_dim, l.r], None);
                    lin.lora = Some(LoraSlot {
                        a,
                        b: bb,
                        r: l.r,
                        scale: l.scale(),
                    });
                }
            }
        }
        let Builder { entries, params, .. } = b;
        let index = entries
            .iter()
            .enumerate()
            .map(|(k, e)| (e.name.clone(), k))
            .collect();
        Ok(Decoder {
            config,
            checkpoint,
            lora,
            causal,
            bidirectional_from: None,
            max_shard_bytes: crate::weights::DEFAULT_MAX_SHARD_BYTES,
            pooling,
            no_decay: angle_encoder::no_decay_ranges(&entries),
            entries,
            index,
            buffers: ParamBuffers::new(params),
            embed,
            layers,
            final_norm,
            pooler: Pooler::new(pooling),
            rope_cos: Vec::new(),
            rope_sin: Vec::new(),
            rope_len: 0,
            acts: Acts::default(),
            scratch: Scratch::default(),
            frozen,
            checkpointing: false,
            precision: Precision::F32,
            bf16: Vec::new(),
        })
    }

    /// The trainable ranges AdamW leaves undecayed.
    pub fn no_decay(&self) -> &[Range<usize>] {
        &self.no_decay
    }

    /// The trainable tensor `name` (an entry of [`Decoder::entries`]).
    pub fn entry(&self, name: &str) -> Option<&ParamEntry> {
        self.index.get(name).map(|&k| &self.entries[k])
    }

    /// The view of trainable tensor `name` in a buffer with the parameter layout.
    pub fn view<'a>(&self, buf: &'a [f32], name: &str) -> Option<&'a [f32]> {
        self.entry(name).and_then(|e| buf.get(e.range()))
    }

    /// Copies a peft adapter's A and B into the trainable buffer; any name or shape that does not fit
    /// this model's LoRA layout is an error naming the tensor.
    pub fn read_adapter(&mut self, adapter_dir: &Path) -> Result<()> {
        let path = adapter_dir.join("adapter_model.safetensors");
        if self.lora.is_none() {
            return Err(DecoderError::Adapter {
                path,
                msg: "the model was built without LoRA".into(),
            });
        }
        let tensors = crate::weights::read_f32_tensors(&path)?;
        let mut seen = 0;
        for (name, (shape, data)) in &tensors {
            let e = self.entry(name).ok_or_else(|| DecoderError::Adapter {
                path: path.clone(),
                msg: format!("tensor `{name}` is not a LoRA tensor of this model and targets"),
            })?;
            if &e.shape != shape {
                return Err(DecoderError::Adapter {
                    path: path.clone(),
                    msg: format!(
                        "tensor `{name}` has shape {shape:?}, this model needs {:?}",
                        e.shape
                    ),
                });
            }
            let r = e.range();
            self.buffers.params[r].copy_from_slice(data);
            seen += 1;
        }
        if seen != self.entries.len() {
            let missing = self
                .entries
                .iter()
                .find(|e| !tensors.contains_key(&e.name))
                .map(|e| e.name.clone())
                .unwrap_or_default();
            return Err(DecoderError::Adapter {
                path,
                msg: format!("missing tensor `{missing}`"),
            });
        }
        Ok(())
    }

    fn ensure_rope(&mut self, len: usize) {
        if len > self.rope_len {
            let n = len
                .next_power_of_two()
                .min(self.config.max_position_embeddings.max(len));
            // f32 inverse frequencies whatever the checkpoint's dtype: transformers' `from_pretrained`
            // keeps the rotary buffer in f32 for bf16 and f16 loads too.
            let inv = rope_inv_freq(self.config.rope_theta, self.config.head_dim);
            let (c, s) = rope_tables_from::<f32>(&inv, n);
            self.rope_cos = c;
            self.rope_sin = s;
            self.rope_len = n;
        }
    }

    fn check_batch(&self, ids: &[u32], seq_offsets: &[usize]) -> Result<usize> {
        let bad = |m: String| Err(DecoderError::Batch(m));
        if seq_offsets.len() < 2 || seq_offsets[0] != 0 {
            return bad("seq_offsets must start at 0 and hold B + 1 >= 2 entries".into());
        }
        if let Some(b) = (0..seq_offsets.len() - 1).find(|&b| seq_offsets[b + 1] <= seq_offsets[b]) {
            return bad(format!("sequence {b} is empty or seq_offsets decrease"));
        }
        if *seq_offsets.last().unwrap_or(&0) != ids.len() {
            return bad(format!(
                "seq_offsets end at {}, there are {} ids",
                seq_offsets.last().unwrap_or(&0),
                ids.len()
            ));
        }
        if let Some((t, id)) = ids
            .iter()
            .enumerate()
            .find(|(_, id)| **id as usize >= self.config.vocab_size)
        {
            return bad(format!(
                "token {t}: id {id} is outside the vocabulary of {}",
                self.config.vocab_size
            ));
        }
        let longest = seq_offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        if longest > self.config.max_position_embeddings {
            return bad(format!(
                "a sequence of {longest} tokens exceeds max_position_embeddings {}",
                self.config.max_position_embeddings
            ));
        }
        if let Some(w) = self.config.sliding_window
            && longest > w
        {
            return bad(format!(
                "a sequence of {longest} tokens exceeds the model's sliding_window {w}; sliding-window attention is not implemented"
            ));
        }
        Ok(longest)
    }

    /// Runs the backbone on packed sequences and returns the final-norm hidden states `[N, H]`.
    /// `dropout_seed`: `Some` in train mode (LoRA dropout, one mask per module and step), `None` in eval.
    /// With [`Decoder::checkpointing`] only each layer's input is kept (one layer slot serves them all);
    /// backward recomputes the rest, layer by layer, into that slot.
    pub fn forward(
        &mut self,
        ids: &[u32],
        seq_offsets: &[usize],
        dropout_seed: Option<u64>,
    ) -> Result<&[f32]> {
        let longest = self.check_batch(ids, seq_offsets)?;
        self.ensure_rope(longest);
        let Decoder {
            config: c,
            lora,
            causal,
            bidirectional_from,
            buffers,
            embed,
            layers,
            final_norm,
            rope_cos,
            rope_sin,
            acts,
            scratch,
            frozen,
            checkpointing,
            bf16: packs,
            ..
        } = self;
        let params = &buffers.params;
        let (n, h) = (ids.len(), c.hidden_size);
        let p_drop = lora.as_ref().map_or(0.0, |l| l.dropout);
        acts.ready = false;
        acts.ids.clear();
        acts.ids.extend_from_slice(ids);
        acts.offsets.clear();
        acts.offsets.extend_from_slice(seq_offsets);
        acts.dropout_seed = dropout_seed.filter(|_| p_drop > 0.0);
        let cx = LayerCtx::new(
            c,
            (*causal, *bidirectional_from),
            params,
            (rope_cos, rope_sin),
            seq_offsets,
            acts.dropout_seed,
            p_drop,
        );
        let nl = layers.len();
        // Frozen (no backward): two slots taken in turn. Checkpointing: one slot, every layer's input kept.
        let ckpt = *checkpointing && !*frozen && nl > 0;
        let slots = match (*frozen, ckpt) {
            (true, _) => nl.clamp(1, 2),
            (false, true) => 1,
            (false, false) => nl.max(1),
        };
        acts.layers.resize_with(slots, LayerActs::default);
        acts.inputs.resize_with(if ckpt { nl } else { 0 }, Vec::new);
        // embedding: the first layer's input (kept as such with checkpointing, the slot's own input empty)
        {
            let x0 = if ckpt {
                acts.layers[0].x_in = Vec::new();
                &mut acts.inputs[0]
            } else {
                &mut acts.layers[0].x_in
            };
            let x0 = sized(x0, n * h);
            for (row, &id) in x0.chunks_exact_mut(h).zip(ids) {
                let id = id as usize;
                match embed {
                    Param::Train(r) => row.copy_from_slice(&params[r.start + id * h..r.start + (id + 1) * h]),
                    Param::Frozen(f) => f.widen_range_into(id * h, row),
                    Param::Small(v) => row.copy_from_slice(&v[id * h..(id + 1) * h]),
                }
            }
        }
        for (l, lay) in layers.iter().enumerate() {
            let packs = packs.get(l).map(Vec::as_slice);
            if ckpt {
                // the one slot holds layer l's input while it runs; its output is layer l+1's kept input
                let (kept, rest) = acts.inputs.split_at_mut(l + 1);
                let a = &mut acts.layers[0];
                std::mem::swap(&mut a.x_in, &mut kept[l]);
                let next = rest.first_mut().unwrap_or(&mut acts.x_out);
                let r = layer_forward(&cx, lay, packs, l, a, scratch, next);
                std::mem::swap(&mut a.x_in, &mut kept[l]);
                r?;
            } else {
                let (a, next_slot) = layer_slots(&mut acts.layers, l, nl, *frozen);
                let next = match next_slot {
                    Some(slot) => &mut slot.x_in,
                    None => &mut acts.x_out,
                };
                layer_forward(&cx, lay, packs, l, a, scratch, next)?;
            }
        }
        if nl == 0 {
            acts.x_out = acts.layers[0].x_in.clone();
        }
        rmsnorm_forward(
            sized(&mut acts.hidden, n * h),
            sized(&mut acts.rstd_f, n),
            &acts.x_out,
            small(final_norm, params),
            n,
            h,
            cx.eps,
        )?;
        acts.ready = true;
        Ok(&acts.hidden)
    }

    /// Pools the last forward's hidden states into `out [B, H]`.
    pub fn pool(&mut self, out: &mut [f32]) -> Result<()> {
        if !self.acts.ready {
            return Err(DecoderError::State("pool before forward".into()));
        }
        self.pooler.forward(
            out,
            &self.acts.hidden,
            &self.acts.offsets,
            self.config.hidden_size,
        )?;
        Ok(())
    }

    /// Backward from the gradient of the pooled embeddings `[B, H]` of the last forward + [`Decoder::pool`].
    pub fn backward_pooled(&mut self, dpooled: &[f32]) -> Result<()> {
        let n = self.acts.ids.len();
        let h = self.config.hidden_size;
        let mut dh = std::mem::take(&mut self.scratch.dhidden);
        zeroed(&mut dh, n * h);
        self.pooler.backward(&mut dh, dpooled, &self.acts.offsets, h)?;
        let r = self.backward(&dh);
        self.scratch.dhidden = dh;
        r
    }

    /// Adds the gradients of every trainable tensor, from `dhidden [N, H]` (the gradient of the last
    /// forward's output). Allocates gradients and moments on first use.
    pub fn backward(&mut self, dhidden: &[f32]) -> Result<()> {
        if !self.acts.ready {
            return Err(DecoderError::State("backward without a forward".into()));
        }
        if self.frozen {
            return Err(DecoderError::State(
                "backward of a model loaded frozen (for encoding: nothing to train)".into(),
            ));
        }
        self.buffers.alloc_training();
        let Decoder {
            config: c,
            lora,
            causal,
            bidirectional_from,
            buffers,
            embed,
            layers,
            final_norm,
            rope_cos,
            rope_sin,
            acts,
            scratch: s,
            bf16: packs,
            ..
        } = self;
        let ParamBuffers { params, grads, .. } = buffers;
        let (params, grads) = (&params[..], &mut grads[..]);
        let Acts {
            layers: slots,
            inputs,
            x_out,
            rstd_f,
            ids,
            offsets,
            dropout_seed,
            ..
        } = acts;
        let (n, h) = (ids.len(), c.hidden_size);
        if dhidden.len() != n * h {
            return Err(DecoderError::Batch(format!(
                "dhidden has {} floats, expected {n} x {h}",
                dhidden.len()
            )));
        }
        let p_drop = lora.as_ref().map_or(0.0, |l| l.dropout);
        let cx = LayerCtx::new(
            c,
            (*causal, *bidirectional_from),
            params,
            (rope_cos, rope_sin),
            offsets,
            *dropout_seed,
            p_drop,
        );
        let mut dx = std::mem::take(&mut s.dx);
        zeroed(&mut dx, n * h);
        rmsnorm_backward(
            &mut dx,
            grad_of(final_norm, grads),
            dhidden,
            x_out,
            small(final_norm, params),
            rstd_f,
            n,
            h,
        )?;
        let recompute = !inputs.is_empty();
        let mut discard = std::mem::take(&mut s.recomputed);
        for (l, lay) in layers.iter().enumerate().rev() {
            let lp = packs.get(l).map(Vec::as_slice);
            let a = &mut slots[if recompute { 0 } else { l }];
            if recompute {
                // checkpointing: this layer's activations again, from its kept input and its own seeds
                std::mem::swap(&mut a.x_in, &mut inputs[l]);
                layer_forward(&cx, lay, lp, l, a, s, &mut discard)?;
            }
            layer_backward(&cx, lay, lp, l, a, grads, s, &mut dx)?;
            if recompute {
                std::mem::swap(&mut a.x_in, &mut inputs[l]);
            }
        }
        s.recomputed = discard;
        if let Param::Train(r) = embed {
            for (row, &id) in dx.chunks_exact(h).zip(ids.iter()) {
                if Some(id) == c.pad_token_id {
                    continue; // padding_idx: no gradient, as torch
                }
                let at = r.start + id as usize * h;
                add_into(&mut grads[at..at + h], row);
            }
        }
        s.dx = dx;
        Ok(())
    }

    /// The linear layers' products: [`Precision::F32`] (the default: f32 on the widened weights, exact
    /// to the fixtures) or [`Precision::Bf16`]: every linear weight rounded to bf16 and packed once for
    /// the bf16 kernels (AVX512-BF16 / AMX where the CPU has them), the inputs rounded per product, f32
    /// sums; a model that trains also gets a transposed copy for the input gradient, and trainable weights
    /// (full fine-tuning) are repacked after every AdamW step. Norms, attention, SwiGLU, LoRA's A and B,
    /// master weights and AdamW stay f32. Costs the bf16 bytes of the linear weights, twice when training.
    /// [`Precision::Int8`] (a frozen base only: encoding, or LoRA's base, `--load-kbit 8`): every linear
    /// weight quantized once per output channel (1 byte per weight, the checkpoint's pages released),
    /// forward products on the int8 kernels (inputs quantized per row), backward's input gradient an f32
    /// product with the dequantized weight (the one the forward used); LoRA's A and B stay f32.
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        if precision == Precision::Tf32 {
            return Err(DecoderError::State(
                "tf32 is a GPU precision: the CPU's products run in f32, bf16 or int8".into(),
            ));
        }
        let all_frozen = self
            .layers
            .iter()
            .flat_map(|l| &l.lin)
            .all(|lin| matches!(lin.weight, Param::Frozen(_) | Param::Small(_)));
        if precision == Precision::Int8 && !all_frozen {
            return Err(DecoderError::State(
                "int8 weights serve a frozen base (encoding, or LoRA's base: --load-kbit 8); full fine-tuning \
                 trains the linear weights themselves, in f32 or bf16"
                    .into(),
            ));
        }
        self.precision = precision;
        self.bf16.clear();
        self.repack(false)
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Bytes of the bf16 or int8 copies ([`Decoder::set_precision`]).
    pub fn bf16_bytes(&self) -> usize {
        let packs = self.bf16.iter().flatten();
        packs
            .map(|p| {
                p.fwd.bytes()
                    + p.bwd.as_ref().map_or(0, PackedBf16::bytes)
                    + p.int8.as_ref().map_or(0, PackedI8::memory_bytes)
            })
            .sum()
    }

    /// (Re)packs the bf16 copies: all of them, or with `trainable_only` those of trainable weights.
    fn repack(&mut self, trainable_only: bool) -> Result<()> {
        if self.precision == Precision::F32 {
            return Ok(());
        }
        let backward = !self.frozen;
        let mut wbuf = std::mem::take(&mut self.scratch.w);
        self.bf16.resize_with(self.layers.len(), Vec::new);
        for (lay, packs) in self.layers.iter().zip(&mut self.bf16) {
            packs.resize_with(lay.lin.len(), Bf16Weight::default);
            for (lin, pk) in lay.lin.iter().zip(packs.iter_mut()) {
                if trainable_only && !matches!(lin.weight, Param::Train(_)) {
                    continue;
                }
                let w = values(&lin.weight, &self.buffers.params, &mut wbuf);
                if self.precision == Precision::Int8 {
                    // inference only (set_precision): no bf16 copy, no backward copy
                    pk.int8 = Some(PackedI8::quantize(w, lin.out_dim, lin.in_dim)?);
                    if let Param::Frozen(f) = &lin.weight {
                        f.release_pages();
                    }
                    continue;
                }
                pk.int8 = None;
                pk.fwd.pack_into(w, lin.out_dim, lin.in_dim)?;
                pk.bwd = match (backward, pk.bwd.take()) {
                    (true, p) => {
                        let mut p = p.unwrap_or_default();
                        p.pack_transposed_into(w, lin.out_dim, lin.in_dim)?;
                        Some(p)
                    }
                    (false, _) => None,
                };
                if let Param::Frozen(f) = &lin.weight {
                    // products read the copies from now on
                    f.release_pages();
                }
            }
        }
        self.scratch.w = wbuf;
        Ok(())
    }

    /// Clears the gradients (allocating gradients and moments on first use).
    pub fn zero_grad(&mut self) {
        self.buffers.alloc_training();
        self.buffers.zero_grad();
    }

    /// One AdamW step `t` (1-based) over the trainable buffer; norm weights and biases are not decayed,
    /// as in the Hugging Face Trainer (LoRA's A and B are).
    pub fn adamw_step(&mut self, hp: &AdamW, t: u64) -> Result<()> {
        self.buffers.adamw_step(hp, &self.no_decay, t)?;
        // keep the bf16 copies of trainable weights in step with them
        self.repack(true)
    }

    /// Bytes of the activations the last forward saved for backward (every layer's slot, or with
    /// checkpointing one slot and every layer's input; the final norm's input, statistics and output): what [`crate::MemoryEstimate`] predicts per batch.
    pub fn activation_bytes(&self) -> usize {
        let layer = |a: &LayerActs| {
            let saved = [
                &a.x_in, &a.rstd1, &a.h1, &a.q_raw, &a.k_raw, &a.rstd_q, &a.rstd_k, &a.q, &a.k, &a.v,
                &a.probs, &a.att, &a.x_mid, &a.rstd2, &a.h2, &a.gate, &a.up, &a.act,
            ];
            saved.iter().map(|v| v.len()).sum::<usize>() + a.xa.iter().map(Vec::len).sum::<usize>()
        };
        let a = &self.acts;
        let kept = a.inputs.iter().map(Vec::len).sum::<usize>();
        let floats = a.layers.iter().map(layer).sum::<usize>()
            + kept
            + a.x_out.len()
            + a.rstd_f.len()
            + a.hidden.len();
        4 * floats
    }

    /// The global L2 norm of the gradients.
    pub fn grad_norm(&self) -> f64 {
        angle_tensor::cpu::grad_norm(&self.buffers.grads)
    }
}

/// What every layer's forward and backward share within one step.
struct LayerCtx<'a> {
    params: &'a [f32],
    rope_cos: &'a [f32],
    rope_sin: &'a [f32],
    offsets: &'a [usize],
    n: usize,
    h: usize,
    inter: usize,
    nh: usize,
    nkv: usize,
    d: usize,
    eps: f32,
    /// floats of one layer's attention probabilities
    plen: usize,
    shape: GqaShape,
    bidirectional_from: Option<usize>,
    seed: Option<u64>,
    p_drop: f64,
}

impl<'a> LayerCtx<'a> {
    fn new(
        c: &DecoderConfig,
        (causal, bidirectional_from): (bool, Option<usize>),
        params: &'a [f32],
        (rope_cos, rope_sin): (&'a [f32], &'a [f32]),
        offsets: &'a [usize],
        seed: Option<u64>,
        p_drop: f64,
    ) -> Self {
        let nh = c.num_attention_heads;
        LayerCtx {
            params,
            rope_cos,
            rope_sin,
            offsets,
            n: offsets.last().copied().unwrap_or(0),
            h: c.hidden_size,
            inter: c.intermediate_size,
            nh,
            nkv: c.num_key_value_heads,
            d: c.head_dim,
            eps: c.rms_norm_eps as f32,
            plen: attention_probs_len(offsets, nh),
            shape: GqaShape {
                n_heads: nh,
                n_kv_heads: c.num_key_value_heads,
                head_dim: c.head_dim,
                causal,
                window: None,
            },
            bidirectional_from,
            seed,
            p_drop,
        }
    }

    fn drop(&self, layer: usize, module: usize) -> Drop {
        acts_drop(self.seed, self.p_drop, layer, module)
    }

    fn attention(&self, layer: usize) -> GqaShape {
        layer_shape(self.shape, layer, self.bidirectional_from)
    }
}

/// Layer `l` from `a.x_in`: saves in `a` what its backward reads and writes the layer's output to `next`.
fn layer_forward(
    cx: &LayerCtx,
    lay: &Layer,
    packs: Option<&[Bf16Weight]>,
    l: usize,
    a: &mut LayerActs,
    s: &mut Scratch,
    next: &mut Vec<f32>,
) -> Result<()> {
    let LayerCtx {
        params,
        n,
        h,
        inter,
        nh,
        nkv,
        d,
        eps,
        ..
    } = *cx;
    let (qd, kvd) = (nh * d, nkv * d);
    let lin = |m: usize, out: &mut [f32], xa: &mut Vec<f32>, inp: &[f32], s: &mut Scratch| {
        let pack = packs.map(|p| &p[m]);
        lin_forward(
            &lay.lin[m],
            pack,
            params,
            &mut s.w,
            &mut s.tmp,
            out,
            xa,
            inp,
            n,
            cx.drop(l, m),
        )
    };
    rmsnorm_forward(
        sized(&mut a.h1, n * h),
        sized(&mut a.rstd1, n),
        &a.x_in,
        small(&lay.input_norm, params),
        n,
        h,
        eps,
    )?;
    let [xq, xk, xv, xo, xg, xu, xd] = &mut a.xa;
    lin(0, sized(&mut a.q, n * qd), xq, &a.h1, s)?;
    lin(1, sized(&mut a.k, n * kvd), xk, &a.h1, s)?;
    lin(2, sized(&mut a.v, n * kvd), xv, &a.h1, s)?;
    if let (Some(qn), Some(kn)) = (&lay.q_norm, &lay.k_norm) {
        std::mem::swap(&mut a.q, &mut a.q_raw);
        std::mem::swap(&mut a.k, &mut a.k_raw);
        rmsnorm_forward(
            sized(&mut a.q, n * qd),
            sized(&mut a.rstd_q, n * nh),
            &a.q_raw,
            small(qn, params),
            n * nh,
            d,
            eps,
        )?;
        rmsnorm_forward(
            sized(&mut a.k, n * kvd),
            sized(&mut a.rstd_k, n * nkv),
            &a.k_raw,
            small(kn, params),
            n * nkv,
            d,
            eps,
        )?;
    }
    rope_forward(&mut a.q, cx.rope_cos, cx.rope_sin, cx.offsets, nh, d)?;
    rope_forward(&mut a.k, cx.rope_cos, cx.rope_sin, cx.offsets, nkv, d)?;
    gqa_attention_forward(
        sized(&mut a.att, n * qd),
        sized(&mut a.probs, cx.plen),
        &a.q,
        &a.k,
        &a.v,
        cx.offsets,
        cx.attention(l),
    )?;
    let x_mid = sized(&mut a.x_mid, n * h);
    lin(3, x_mid, xo, &a.att, s)?;
    add_into(x_mid, &a.x_in);
    rmsnorm_forward(
        sized(&mut a.h2, n * h),
        sized(&mut a.rstd2, n),
        &a.x_mid,
        small(&lay.post_norm, params),
        n,
        h,
        eps,
    )?;
    lin(4, sized(&mut a.gate, n * inter), xg, &a.h2, s)?;
    lin(5, sized(&mut a.up, n * inter), xu, &a.h2, s)?;
    swiglu_forward(sized(&mut a.act, n * inter), &a.gate, &a.up, n * inter)?;
    let next = sized(next, n * h);
    lin(6, next, xd, &a.act, s)?;
    add_into(next, &a.x_mid);
    Ok(())
}

/// Layer `l`'s backward from what its forward saved in `a`: `dx` holds the gradient of the layer's output
/// on entry and of its input on return; parameter gradients are added into `grads`.
#[allow(clippy::too_many_arguments)] // the forward's arguments, plus where the gradients go
fn layer_backward(
    cx: &LayerCtx,
    lay: &Layer,
    packs: Option<&[Bf16Weight]>,
    l: usize,
    a: &LayerActs,
    grads: &mut [f32],
    s: &mut Scratch,
    dx: &mut [f32],
) -> Result<()> {
    let LayerCtx {
        params,
        n,
        h,
        inter,
        nh,
        nkv,
        d,
        ..
    } = *cx;
    let (qd, kvd) = (nh * d, nkv * d);
    let lin = |m: usize, dinp: &mut [f32], dout: &[f32], inp: &[f32], grads: &mut [f32], s: &mut Scratch| {
        let pack = packs.map(|p| &p[m]);
        lin_backward(
            &lay.lin[m],
            pack,
            params,
            grads,
            s,
            dinp,
            dout,
            inp,
            &a.xa[m],
            n,
            cx.drop(l, m),
        )
    };
    // MLP
    let mut dact = std::mem::take(&mut s.dact);
    zeroed(&mut dact, n * inter);
    lin(6, &mut dact, dx, &a.act, grads, s)?;
    let (mut dgate, mut dup) = (std::mem::take(&mut s.dgate), std::mem::take(&mut s.dup));
    zeroed(&mut dgate, n * inter);
    zeroed(&mut dup, n * inter);
    swiglu_backward(&mut dgate, &mut dup, &dact, &a.gate, &a.up, n * inter)?;
    let mut dh = std::mem::take(&mut s.dh);
    zeroed(&mut dh, n * h);
    lin(4, &mut dh, &dgate, &a.h2, grads, s)?;
    lin(5, &mut dh, &dup, &a.h2, grads, s)?;
    rmsnorm_backward(
        dx,
        grad_of(&lay.post_norm, grads),
        &dh,
        &a.x_mid,
        small(&lay.post_norm, params),
        &a.rstd2,
        n,
        h,
    )?;
    (s.dact, s.dgate, s.dup) = (dact, dgate, dup);
    // attention
    let mut datt = std::mem::take(&mut s.datt);
    zeroed(&mut datt, n * qd);
    lin(3, &mut datt, dx, &a.att, grads, s)?;
    let (mut dq, mut dk, mut dv) = (
        std::mem::take(&mut s.dq),
        std::mem::take(&mut s.dk),
        std::mem::take(&mut s.dv),
    );
    zeroed(&mut dq, n * qd);
    zeroed(&mut dk, n * kvd);
    zeroed(&mut dv, n * kvd);
    gqa_attention_backward(
        &mut dq,
        &mut dk,
        &mut dv,
        sized(&mut s.dprobs, cx.plen),
        &datt,
        &a.q,
        &a.k,
        &a.v,
        &a.probs,
        cx.offsets,
        cx.attention(l),
    )?;
    rope_backward(&mut dq, cx.rope_cos, cx.rope_sin, cx.offsets, nh, d)?;
    rope_backward(&mut dk, cx.rope_cos, cx.rope_sin, cx.offsets, nkv, d)?;
    if let (Some(qn), Some(kn)) = (&lay.q_norm, &lay.k_norm) {
        let (mut dqr, mut dkr) = (std::mem::take(&mut s.dq_raw), std::mem::take(&mut s.dk_raw));
        zeroed(&mut dqr, n * qd);
        zeroed(&mut dkr, n * kvd);
        rmsnorm_backward(
            &mut dqr,
            grad_of(qn, grads),
            &dq,
            &a.q_raw,
            small(qn, params),
            &a.rstd_q,
            n * nh,
            d,
        )?;
        rmsnorm_backward(
            &mut dkr,
            grad_of(kn, grads),
            &dk,
            &a.k_raw,
            small(kn, params),
            &a.rstd_k,
            n * nkv,
            d,
        )?;
        std::mem::swap(&mut dq, &mut dqr);
        std::mem::swap(&mut dk, &mut dkr);
        (s.dq_raw, s.dk_raw) = (dqr, dkr);
    }
    zeroed(&mut dh, n * h);
    lin(0, &mut dh, &dq, &a.h1, grads, s)?;
    lin(1, &mut dh, &dk, &a.h1, grads, s)?;
    lin(2, &mut dh, &dv, &a.h1, grads, s)?;
    rmsnorm_backward(
        dx,
        grad_of(&lay.input_norm, grads),
        &dh,
        &a.x_in,
        small(&lay.input_norm, params),
        &a.rstd1,
        n,
        h,
    )?;
    (s.datt, s.dq, s.dk, s.dv, s.dh) = (datt, dq, dk, dv, dh);
    Ok(())
}

/// Layer `l`'s activations and the next layer's slot, whose `x_in` layer `l` writes (`None` after the last
/// layer). One slot per layer when a backward will read them; two taken in turn when none will (`reuse`).
fn layer_slots(
    layers: &mut [LayerActs],
    l: usize,
    nl: usize,
    reuse: bool,
) -> (&mut LayerActs, Option<&mut LayerActs>) {
    let last = l + 1 == nl;
    let (a, next) = if reuse {
        let (s0, s1) = layers.split_at_mut(1);
        if l.is_multiple_of(2) {
            (&mut s0[0], s1.first_mut())
        } else {
            (&mut s1[0], Some(&mut s0[0]))
        }
    } else {
        let (cur, rest) = layers.split_at_mut(l + 1);
        (&mut cur[l], rest.first_mut())
    };
    (a, next.filter(|_| !last))
}

fn acts_drop(seed: Option<u64>, p: f64, layer: usize, module: usize) -> Drop {
    match seed {
        Some(s) if p > 0.0 => Some((p as f32, derive_seed(s, (layer * 7 + module) as u64))),
        _ => None,
    }
}

/// A layer's attention: causal as the model says, except from layer `from` on (BiLLM), bidirectional.
fn layer_shape(shape: GqaShape, l: usize, from: Option<usize>) -> GqaShape {
    GqaShape {
        causal: shape.causal && from.is_none_or(|k| l < k),
        ..shape
    }
}
