//! Sentence embeddings for inference: texts are tokenised, sorted by length and packed into batches, and
//! a [`Backbone`] embeds each batch. `angle encode`, `angle similarity`, `angle eval` and the trainer's
//! validation all go through [`Embedder`].

use std::path::{Path, PathBuf};

use angle_data::{Dataset, TextTokenizer};
use angle_encoder::{Encoder, Pooling};
use serde_json::Value;

use crate::backbone::{Backbone, BertCpu, Packed, Sizes};
use crate::decoder::{DecoderSettings, load_decoder};
use crate::device::{Device, GpuBert};
use crate::error::{Result, TrainError};
use crate::precision::{CpuPath, Precision};

/// The buffers of one packed batch, reused for every batch.
pub struct Embedder {
    /// Keep the leading `dim` dimensions of each embedding (`--dim`, Matryoshka / ESE models); `None`: all.
    dim: Option<usize>,
    batch_texts: usize,
    max_len: usize,
    ids: Vec<u32>,
    type_ids: Vec<u32>,
    offsets: Vec<usize>,
    pooled: Vec<f32>,
}

impl Embedder {
    /// `batch_texts` sequences of at most `max_len` tokens per forward pass: the sizes the backbone
    /// must have reserved for embedding ([`Embedder::sizes`]).
    pub fn new(batch_texts: usize, max_len: usize) -> Self {
        Embedder {
            dim: None,
            batch_texts: batch_texts.max(1),
            max_len,
            ids: Vec::new(),
            type_ids: Vec::new(),
            offsets: Vec::new(),
            pooled: Vec::new(),
        }
    }

    /// What a backbone reserves to embed through this embedder (and nothing else).
    pub fn sizes(&self) -> Sizes {
        Sizes {
            train_seqs: 0,
            embed_seqs: self.batch_texts,
            max_len: self.max_len,
        }
    }

    /// Keeps the first `dim` dimensions of every embedding (`--dim K`); an error later if wider than the model.
    pub fn with_dim(mut self, dim: Option<usize>) -> Self {
        self.dim = dim;
        self
    }

    /// The width of the embeddings this embedder writes for `model`.
    pub fn out_dim(&self, model: &dyn Backbone) -> usize {
        self.dim.unwrap_or(usize::MAX).min(model.hidden_size())
    }

    pub fn batch_texts(&self) -> usize {
        self.batch_texts
    }

    /// Embeds `count` token sequences (`seq(i)` gives ids and type ids) into `out` (`count × hidden`, row `i` for
    /// sequence `i`). Sequences are processed longest first so each batch holds similar lengths.
    pub fn embed<'s, F>(
        &mut self,
        model: &mut dyn Backbone,
        count: usize,
        seq: F,
        out: &mut Vec<f32>,
    ) -> Result<()>
    where
        F: Fn(usize) -> (&'s [u32], &'s [u32]),
    {
        let h = model.hidden_size();
        if let Some(d) = self.dim.filter(|&d| d == 0 || d > h) {
            return Err(TrainError::Config(format!(
                "--dim {d}: the model's embeddings have {h} dimensions (1..={h})"
            )));
        }
        let k = self.out_dim(model);
        out.clear();
        out.resize(count * k, 0.0);
        let mut order: Vec<usize> = (0..count).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(seq(i).0.len()));
        for chunk in order.chunks(self.batch_texts) {
            self.ids.clear();
            self.type_ids.clear();
            self.offsets.clear();
            self.offsets.push(0);
            for &i in chunk {
                let (ids, types) = seq(i);
                let n = ids.len().min(self.max_len);
                if n == 0 {
                    return Err(TrainError::Data(format!(
                        "text {} has no tokens (an empty text, and a tokenizer that adds no special tokens; \
                         --append-eos gives every text one)",
                        i + 1
                    )));
                }
                self.ids.extend_from_slice(&ids[..n]);
                self.type_ids.extend_from_slice(&types[..n.min(types.len())]);
                self.offsets.push(self.ids.len());
            }
            let batch = Packed {
                input_ids: &self.ids,
                token_type_ids: &self.type_ids,
                seq_offsets: &self.offsets,
            };
            model.embed(&batch, &mut self.pooled)?;
            for (r, &i) in chunk.iter().enumerate() {
                out[i * k..(i + 1) * k].copy_from_slice(&self.pooled[r * h..r * h + k]);
            }
        }
        Ok(())
    }

    /// Embeds every distinct text of a tokenised dataset (`dataset.num_texts() × hidden`).
    pub fn embed_dataset(
        &mut self,
        model: &mut dyn Backbone,
        data: &Dataset,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        self.embed(model, data.num_texts(), |t| data.tokens(t), out)
    }

    /// Tokenises and embeds strings.
    pub fn embed_texts(
        &mut self,
        model: &mut dyn Backbone,
        tok: &TextTokenizer,
        texts: &[String],
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let encoded = tok
            .encode_batch(texts)
            .map_err(|e| TrainError::Data(e.to_string()))?;
        self.embed(
            model,
            encoded.len(),
            |i| (&encoded[i].ids[..], &encoded[i].type_ids[..]),
            out,
        )
    }
}

/// What a checkpoint directory says about how it embeds: `angle_config.json` (ours) first, then the
/// sentence-transformers files.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelDefaults {
    pub pooling: Pooling,
    /// The maximum sequence length (`sentence_bert_config.json`'s `max_seq_length`), if the directory says.
    pub max_length: Option<usize>,
    /// The format-A text prompt the model was trained with, if any.
    pub text_prompt: Option<String>,
    /// Decoder family: trained with bidirectional attention / with EOS appended (angle_config.json).
    pub bidirectional: bool,
    /// Decoder family: trained with bidirectional attention from this layer on (BiLLM).
    pub bidirectional_from: Option<usize>,
    pub append_eos: bool,
    /// Encode-time defaults for `--layers` / `--dim` (angle_config.json's `layers` and `dim`, which
    /// `angle export` writes).
    pub layers: Option<usize>,
    pub dim: Option<usize>,
}

impl ModelDefaults {
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let read_json = |p: PathBuf| -> Result<Option<Value>> {
            if p.is_file() {
                crate::checkpoint::read_json(&p).map(Some)
            } else {
                Ok(None)
            }
        };
        let angle = read_json(dir.join(crate::checkpoint::ANGLE_CONFIG))?;
        let st = read_json(dir.join("sentence_bert_config.json"))?;
        let from_angle = |key: &str| angle.as_ref().and_then(|v| v.get(key)).cloned();
        let pooling = match from_angle("pooling").and_then(|v| v.as_str().map(str::to_owned)) {
            Some(name) => Pooling::parse(&name).ok_or_else(|| TrainError::Checkpoint {
                path: dir.join(crate::checkpoint::ANGLE_CONFIG),
                msg: format!("unknown pooling {name:?}"),
            })?,
            None => Pooling::from_model_dir(dir).map_err(|e| TrainError::Encoder(e.to_string()))?,
        };
        let max_length = from_angle("max_length")
            .and_then(|v| v.as_u64())
            .or_else(|| {
                st.as_ref()
                    .and_then(|v| v.get("max_seq_length"))
                    .and_then(Value::as_u64)
            })
            .map(|v| v as usize);
        let text_prompt = from_angle("text_prompt").and_then(|v| v.as_str().map(str::to_owned));
        let trained = |key: &str| {
            from_angle("train")
                .and_then(|t| t.get(key).and_then(Value::as_bool))
                .unwrap_or(false)
        };
        Ok(ModelDefaults {
            pooling,
            max_length,
            text_prompt,
            bidirectional: trained("bidirectional"),
            bidirectional_from: from_angle("train")
                .and_then(|t| t.get("bidirectional_from").and_then(Value::as_u64))
                .map(|k| k as usize),
            append_eos: trained("append_eos"),
            layers: from_angle("layers").and_then(|v| v.as_u64()).map(|v| v as usize),
            dim: from_angle("dim").and_then(|v| v.as_u64()).map(|v| v as usize),
        })
    }
}

/// How to load a model for training or embedding.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub device: Device,
    /// `None`: the model folder's own pooling ([`ModelDefaults`]).
    pub pooling: Option<Pooling>,
    /// CPU: the products of eval-mode forwards ([`crate::precision::for_encoding`]).
    pub cpu_inference: Precision,
    /// CPU: the products of the training step ([`crate::precision::for_training`]): bf16 runs the forward and
    /// backward's input gradients in bf16; int8 is a LoRA run's frozen base (`--load-kbit 8`).
    pub cpu_train: Precision,
    /// Decoder family: LoRA, attention, the base of an adapter folder.
    pub decoder: DecoderSettings,
    /// Append the tokenizer's EOS token to every text after truncation.
    pub append_eos: bool,
    /// Keep the first N layers (`--layers N`, ESE models; BERT family).
    pub layers: Option<usize>,
}

/// Loads a model folder as a [`Backbone`] for `opts.device`, with its tokenizer (at most `max_len`
/// tokens, and no more than the model's positions allow). The family comes from `config.json`.
pub fn load_backbone(
    dir: &Path,
    max_len: usize,
    opts: LoadOptions,
) -> Result<(Box<dyn Backbone>, TextTokenizer)> {
    let dir = &crate::hub::model_dir(dir)?;
    // LoRA and gradient checkpointing of a BERT-family encoder run on angle-models' blocks
    let blocks = opts.decoder.lora.is_some() || opts.decoder.gradient_checkpointing;
    let (model, tok) = match CpuPath::of(dir, blocks, opts.decoder.base_model.as_deref())? {
        CpuPath::Blocks => load_blocks_backbone(dir, max_len, &opts)?,
        CpuPath::Decoder => load_decoder_backbone(dir, max_len, &opts)?,
        CpuPath::Encoder => {
            if opts.decoder.bidirectional || opts.decoder.bidirectional_from.is_some() {
                return Err(TrainError::Config(format!(
                    "{}: --bidirectional and --bidirectional-from are for the decoder family (llama, mistral, qwen2, qwen3)",
                    dir.display()
                )));
            }
            load_bert_backbone(dir, max_len, &opts)?
        }
    };
    let tok = match opts.append_eos {
        true => {
            let data = |e: angle_data::DataError| TrainError::Data(e.to_string());
            let eos = tok.eos_id_from(&tok_folder(&tok)).map_err(data)?;
            tok.with_eos_appended(eos).map_err(data)?
        }
        false => tok,
    };
    Ok((model, tok))
}

/// The folder of a tokenizer's `tokenizer.json` (where `tokenizer_config.json` sits too).
fn tok_folder(tok: &TextTokenizer) -> PathBuf {
    tok.path().parent().map(Path::to_path_buf).unwrap_or_default()
}

fn load_bert_backbone(
    dir: &Path,
    max_len: usize,
    opts: &LoadOptions,
) -> Result<(Box<dyn Backbone>, TextTokenizer)> {
    let pooling = match opts.pooling {
        Some(p) => p,
        None => ModelDefaults::from_dir(dir)?.pooling,
    };
    let (mut enc, tok) = load_model(dir, max_len)?;
    if let Some(n) = opts.layers {
        let depth = enc.config.num_hidden_layers;
        if n == 0 || n > depth {
            return Err(TrainError::Config(format!(
                "--layers {n}: {} has {depth} layers (1..={depth})",
                dir.display()
            )));
        }
        enc = enc.truncated(n).map_err(|e| TrainError::Encoder(e.to_string()))?;
    }
    let shard = opts
        .decoder
        .max_shard_bytes
        .unwrap_or(angle_models::weights::DEFAULT_MAX_SHARD_BYTES);
    let model: Box<dyn Backbone> = match opts.device {
        Device::Cpu => {
            let err = |e: angle_encoder::EncoderError| TrainError::Encoder(e.to_string());
            enc.set_inference_precision(opts.cpu_inference).map_err(err)?;
            enc.set_train_precision(opts.cpu_train).map_err(err)?;
            let mut cpu = BertCpu::new(enc, pooling);
            cpu.max_shard_bytes = shard;
            Box::new(cpu)
        }
        Device::Cuda(p) => Box::new(GpuBert::new(enc, pooling, p).with_max_shard_bytes(shard)),
    };
    Ok((model, tok))
}

/// ELECTRA, ALBERT, ModernBERT, a LoRA run of the BERT family, or an encoder's peft adapter: the blocks of
/// `angle-models`, on the CPU in f32.
fn load_blocks_backbone(
    dir: &Path,
    max_len: usize,
    opts: &LoadOptions,
) -> Result<(Box<dyn Backbone>, TextTokenizer)> {
    let refuse = |what: &str| {
        Err(TrainError::Config(format!(
            "{}: {what} is offered for BERT without LoRA and for the decoder family so far; this model runs \
             through angle-models' blocks (f32, bf16 or int8 on the CPU)",
            dir.display()
        )))
    };
    if opts.device != Device::Cpu {
        return refuse("--device cuda");
    }
    if opts.layers.is_some() {
        return refuse("--layers");
    }
    if let Some(p) = [opts.cpu_inference, opts.cpu_train]
        .into_iter()
        .find(|&p| p == Precision::Tf32)
    {
        return refuse(&format!("{p} products (--precision {p})"));
    }
    if opts.decoder.bidirectional || opts.decoder.bidirectional_from.is_some() {
        return Err(TrainError::Config(format!(
            "{}: --bidirectional and --bidirectional-from are for the decoder family (an encoder is always bidirectional)",
            dir.display()
        )));
    }
    let lora = opts.decoder.lora.as_ref().map(crate::blocks::lora_spec);
    let (model, tok_dir) = crate::blocks::load_blocks(
        dir,
        opts.pooling,
        lora,
        opts.decoder.base_model.as_deref(),
        opts.decoder.inference_only,
    )?;
    let mut model = model;
    // int8 or bf16 copies of the linear weights that do not train: encoding, or a LoRA run's base
    model
        .model
        .set_precision(products(opts))
        .map_err(|e| TrainError::Encoder(e.to_string()))?;
    model.model.checkpointing = opts.decoder.gradient_checkpointing;
    if let Some(b) = opts.decoder.max_shard_bytes {
        model.max_shard_bytes = b;
    }
    let max_len = max_len.min(model.model.max_sequence_length());
    let tok = TextTokenizer::from_file(tok_dir.join("tokenizer.json"), max_len)
        .map_err(|e| TrainError::Data(e.to_string()))?;
    Ok((Box::new(model), tok))
}

fn load_decoder_backbone(
    dir: &Path,
    max_len: usize,
    opts: &LoadOptions,
) -> Result<(Box<dyn Backbone>, TextTokenizer)> {
    if opts.device != Device::Cpu {
        return Err(TrainError::Config(format!(
            "{}: the decoder family runs on the CPU so far (--device cpu)",
            dir.display()
        )));
    }
    if opts.layers.is_some() {
        return Err(TrainError::Config(
            "--layers is offered for the BERT family so far (ESE training)".into(),
        ));
    }
    // A pooling the folder's angle_config.json records (a checkpoint of ours) wins over the decoder's default.
    let pooling = match opts.pooling {
        Some(p) => Some(p),
        None if dir.join(crate::checkpoint::ANGLE_CONFIG).is_file() => {
            Some(ModelDefaults::from_dir(dir)?.pooling)
        }
        None => None,
    };
    let (mut model, tok_dir) = load_decoder(dir, pooling, &opts.decoder)?;
    model
        .dec
        .set_precision(products(opts))
        .map_err(|e| TrainError::Encoder(e.to_string()))?;
    let max_len = max_len.min(model.dec.config.max_position_embeddings.max(1));
    let tok = TextTokenizer::from_file(tok_dir.join("tokenizer.json"), max_len)
        .map_err(|e| TrainError::Data(e.to_string()))?;
    Ok((Box::new(model), tok))
}

/// The one set of products a decoder or a blocks model runs in both modes: int8 copies of a frozen base
/// (encoding, or `--load-kbit 8`), else bf16 copies when either mode asks for them, else f32.
fn products(opts: &LoadOptions) -> Precision {
    let modes = [opts.cpu_inference, opts.cpu_train];
    [Precision::Int8, Precision::Bf16]
        .into_iter()
        .find(|p| modes.contains(p))
        .unwrap_or(Precision::F32)
}

/// Loads a model directory's encoder and tokenizer (`tokenizer.json` beside `config.json`).
pub fn load_model(dir: &Path, max_len: usize) -> Result<(Encoder, TextTokenizer)> {
    let enc = Encoder::from_dir(dir).map_err(|e| TrainError::Encoder(e.to_string()))?;
    let max_len = max_len.min(enc.config.max_sequence_length());
    let tok = TextTokenizer::from_file(dir.join("tokenizer.json"), max_len)
        .map_err(|e| TrainError::Data(e.to_string()))?;
    Ok((enc, tok))
}
