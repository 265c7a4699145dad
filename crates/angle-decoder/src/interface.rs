//! [`angle_model::EmbeddingModel`] for the decoder.

use std::path::Path;

use angle_encoder::{AdamW, Pooling};
use angle_model::{Batch, EmbeddingModel, SaveKind};

use crate::error::DecoderError;
use crate::model::Decoder;

impl EmbeddingModel for Decoder {
    type Error = DecoderError;

    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }
    fn pooling(&self) -> Pooling {
        self.pooling
    }
    fn forward_pooled(
        &mut self,
        batch: &Batch<'_>,
        dropout_seed: Option<u64>,
        pooled: &mut [f32],
    ) -> Result<(), DecoderError> {
        self.forward(batch.input_ids, batch.seq_offsets, dropout_seed)?;
        self.pool(pooled)
    }
    fn backward_pooled(&mut self, dpooled: &[f32]) -> Result<(), DecoderError> {
        Decoder::backward_pooled(self, dpooled)
    }
    fn params(&self) -> &[f32] {
        &self.buffers.params
    }
    fn params_mut(&mut self) -> &mut [f32] {
        &mut self.buffers.params
    }
    fn grads(&self) -> &[f32] {
        &self.buffers.grads
    }
    fn grads_mut(&mut self) -> &mut [f32] {
        self.buffers.alloc_training();
        &mut self.buffers.grads
    }
    fn moments_mut(&mut self) -> (&mut [f32], &mut [f32]) {
        self.buffers.alloc_training();
        (&mut self.buffers.adam_m, &mut self.buffers.adam_v)
    }
    fn zero_grad(&mut self) {
        Decoder::zero_grad(self)
    }
    fn adamw_step(&mut self, hp: &AdamW, t: u64) -> Result<(), DecoderError> {
        Decoder::adamw_step(self, hp, t)
    }
    fn grad_norm(&self) -> f64 {
        Decoder::grad_norm(self)
    }
    fn save(&self, dir: &Path, kind: SaveKind) -> Result<(), DecoderError> {
        match kind {
            SaveKind::Full => self.save_merged(dir),
            SaveKind::Adapter => {
                let base = self.checkpoint.dir.to_string_lossy().into_owned();
                self.save_adapter(dir, Some(&base))
            }
        }
    }
}
