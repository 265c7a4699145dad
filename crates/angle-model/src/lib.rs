//! The interface between the trainer / embedder and a model family, after text-embeddings-inference's
//! backend trait: packed token ids in, pooled embeddings out; backward from the gradient of the pooled
//! embeddings; trainable state as flat buffers; save. The CPU/GPU split stays below it.

use std::path::Path;

pub use angle_encoder::{AdamW, Pooling};

/// A batch of packed sequences (no padding): token `t` of sequence `b` is `input_ids[seq_offsets[b] + t]`.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    pub input_ids: &'a [u32],
    /// B + 1 offsets, starting at 0 and ending at N.
    pub seq_offsets: &'a [usize],
}

impl Batch<'_> {
    pub fn num_seqs(&self) -> usize {
        self.seq_offsets.len().saturating_sub(1)
    }
}

/// What a checkpoint save writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveKind {
    /// The whole model (trained weights, or a LoRA adapter folded in), loadable by transformers.
    Full,
    /// Only the trainable adapter (peft's format); an error for a model without one.
    Adapter,
}

/// One sentence-embedding model the trainer can drive.
pub trait EmbeddingModel {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Embedding width H.
    fn hidden_size(&self) -> usize;
    fn pooling(&self) -> Pooling;
    /// Forward over `batch`, pooled into `pooled [B, H]`. `dropout_seed`: `Some` in train mode.
    fn forward_pooled(
        &mut self,
        batch: &Batch<'_>,
        dropout_seed: Option<u64>,
        pooled: &mut [f32],
    ) -> Result<(), Self::Error>;
    /// Adds the gradients of the trainable tensors from `dpooled [B, H]` of the last forward.
    fn backward_pooled(&mut self, dpooled: &[f32]) -> Result<(), Self::Error>;
    /// The trainable parameters; gradients and both AdamW moments have the same layout.
    fn params(&self) -> &[f32];
    fn params_mut(&mut self) -> &mut [f32];
    fn grads(&self) -> &[f32];
    fn grads_mut(&mut self) -> &mut [f32];
    /// `(m, v)`
    fn moments_mut(&mut self) -> (&mut [f32], &mut [f32]);
    fn zero_grad(&mut self);
    fn adamw_step(&mut self, hp: &AdamW, t: u64) -> Result<(), Self::Error>;
    fn grad_norm(&self) -> f64;
    /// Writes the model into `dir`.
    fn save(&self, dir: &Path, kind: SaveKind) -> Result<(), Self::Error>;
}
