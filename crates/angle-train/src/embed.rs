//! Sentence embeddings for inference: a model directory, its tokenizer and pooling, and an eval-mode arena that
//! is reused for every batch. `angle encode`, `angle similarity`, `angle eval` and the trainer's validation all go
//! through [`Embedder`].

use std::path::{Path, PathBuf};

use angle_data::{Dataset, TextTokenizer};
use angle_encoder::{Activations, Batch, Capacity, Encoder, Mode, Pooler, Pooling};
use serde_json::Value;

use crate::device::{Device, GpuModel};
use crate::error::{Result, TrainError};

/// An eval-mode arena, a pooler and the buffers of one batch.
pub struct Embedder {
    acts: Activations,
    pooler: Pooler,
    batch_texts: usize,
    max_len: usize,
    ids: Vec<u32>,
    type_ids: Vec<u32>,
    offsets: Vec<usize>,
    pooled: Vec<f32>,
    /// `--device cuda`: the forward and pooling run there (from the parameters at [`Self::on_device`]).
    gpu: Option<GpuModel>,
}

impl Embedder {
    /// `batch_texts` sequences of at most `max_len` tokens per forward pass.
    pub fn new(enc: &Encoder, pooling: Pooling, batch_texts: usize, max_len: usize) -> Self {
        let batch_texts = batch_texts.max(1);
        let cap = Capacity {
            max_tokens: batch_texts * max_len,
            max_seq_len: max_len,
        };
        Embedder {
            acts: enc.activations(cap, Mode::Eval),
            pooler: Pooler::new(pooling),
            batch_texts,
            max_len,
            ids: Vec::new(),
            type_ids: Vec::new(),
            offsets: Vec::new(),
            pooled: Vec::new(),
            gpu: None,
        }
    }

    /// Runs every later [`Self::embed`] on `device`, with `enc`'s current parameters uploaded
    /// once (later changes to `enc` are not seen there).
    pub fn on_device(mut self, device: Device, enc: &Encoder) -> Result<Self> {
        self.gpu = crate::device::for_device(device, enc, self.pooler.kind, self.batch_texts, self.max_len)?;
        Ok(self)
    }

    pub fn pooling(&self) -> Pooling {
        self.pooler.kind
    }

    /// Embeds `count` token sequences (`seq(i)` gives ids and type ids) into `out` (`count × hidden`, row `i` for
    /// sequence `i`). Sequences are processed longest first so each batch holds similar lengths.
    pub fn embed<'s, F>(&mut self, enc: &Encoder, count: usize, seq: F, out: &mut Vec<f32>) -> Result<()>
    where
        F: Fn(usize) -> (&'s [u32], &'s [u32]),
    {
        let h = enc.config.hidden_size;
        out.clear();
        out.resize(count * h, 0.0);
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
                    return Err(TrainError::Data(format!("text {i} has no tokens")));
                }
                self.ids.extend_from_slice(&ids[..n]);
                self.type_ids.extend_from_slice(&types[..n.min(types.len())]);
                self.offsets.push(self.ids.len());
            }
            if let Some(g) = self.gpu.as_mut() {
                g.forward_pooled(&self.ids, &self.type_ids, &self.offsets, None, &mut self.pooled)?;
            } else {
                let batch = Batch {
                    input_ids: &self.ids,
                    token_type_ids: Some(&self.type_ids),
                    seq_offsets: &self.offsets,
                };
                let hidden = enc
                    .forward(&batch, &mut self.acts, None)
                    .map_err(|e| TrainError::Encoder(e.to_string()))?;
                self.pooled.resize(chunk.len() * h, 0.0);
                self.pooler
                    .forward(&mut self.pooled, hidden, &self.offsets, h)
                    .map_err(|e| TrainError::Encoder(e.to_string()))?;
            }
            for (k, &i) in chunk.iter().enumerate() {
                out[i * h..(i + 1) * h].copy_from_slice(&self.pooled[k * h..(k + 1) * h]);
            }
        }
        Ok(())
    }

    /// Embeds every distinct text of a tokenised dataset (`dataset.num_texts() × hidden`).
    pub fn embed_dataset(&mut self, enc: &Encoder, data: &Dataset, out: &mut Vec<f32>) -> Result<()> {
        self.embed(enc, data.num_texts(), |t| data.tokens(t), out)
    }

    /// Tokenises and embeds strings.
    pub fn embed_texts(
        &mut self,
        enc: &Encoder,
        tok: &TextTokenizer,
        texts: &[String],
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let encoded = tok
            .encode_batch(texts)
            .map_err(|e| TrainError::Data(e.to_string()))?;
        self.embed(
            enc,
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
        Ok(ModelDefaults {
            pooling,
            max_length,
            text_prompt,
        })
    }
}

/// Loads a model directory's encoder and tokenizer (`tokenizer.json` beside `config.json`).
pub fn load_model(dir: &Path, max_len: usize) -> Result<(Encoder, TextTokenizer)> {
    let enc = Encoder::from_dir(dir).map_err(|e| TrainError::Encoder(e.to_string()))?;
    let max_len = max_len.min(enc.config.max_sequence_length());
    let tok = TextTokenizer::from_file(dir.join("tokenizer.json"), max_len)
        .map_err(|e| TrainError::Data(e.to_string()))?;
    Ok((enc, tok))
}
