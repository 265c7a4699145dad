//! Cached in-batch negatives (GradCache; sentence-transformers' `CachedMultipleNegativesRankingLoss`): the
//! batch is embedded in chunks of `chunk` texts, the objective and its gradient are computed on all the
//! pooled embeddings at once, then each chunk runs forward again, with its activations, and backward from
//! its slice of that gradient. In-batch negatives span the whole batch at the activation memory of one chunk,
//! for one more forward per chunk.
//!
//! Every chunk draws its dropout masks from its own seed, the same in both passes, so the second forward
//! reproduces the first: the gradient is exactly the gradient of the objective the first pass evaluated.
//! Chunk 0 uses the step's seed and starts at row 0, so a chunk as large as the batch is the one-pass step
//! bit for bit; with several chunks the masks of the later chunks differ from the one-pass step's (the
//! counter of a mask is the position in the packed chunk), and without dropout the gradients equal the
//! one-pass step's up to the order of the sums.

use angle_tensor::rng::derive_seed;

use crate::backbone::{Backbone, Packed};
use crate::error::{Result, TrainError};

/// The chunked forward and backward of one micro-batch.
#[derive(Debug, Clone)]
pub struct GradCache {
    /// Texts (packed sequences) per forward.
    pub chunk: usize,
    offsets: Vec<usize>,
    pooled: Vec<f32>,
}

impl GradCache {
    pub fn new(chunk: usize) -> Result<GradCache> {
        if chunk == 0 {
            return Err(TrainError::Config(
                "--grad-cache 0: a chunk holds at least one text".into(),
            ));
        }
        Ok(GradCache {
            chunk,
            offsets: Vec::new(),
            pooled: Vec::new(),
        })
    }

    /// The chunks' first and one-past-last sequences.
    fn chunks(&self, seqs: usize) -> impl Iterator<Item = (usize, usize, usize)> + use<> {
        let n = self.chunk;
        (0..seqs.div_ceil(n)).map(move |c| (c, c * n, ((c + 1) * n).min(seqs)))
    }

    /// Sequences `s0..s1` of `batch` as a batch of their own (offsets from 0).
    fn sub<'a>(offsets: &'a mut Vec<usize>, batch: &Packed<'a>, s0: usize, s1: usize) -> Packed<'a> {
        let (r0, r1) = (batch.seq_offsets[s0], batch.seq_offsets[s1]);
        offsets.clear();
        offsets.extend(batch.seq_offsets[s0..=s1].iter().map(|o| o - r0));
        Packed {
            input_ids: &batch.input_ids[r0..r1],
            token_type_ids: if batch.token_type_ids.is_empty() {
                &[]
            } else {
                &batch.token_type_ids[r0..r1]
            },
            seq_offsets: offsets,
        }
    }

    fn seed(dropout: Option<u64>, c: usize) -> Option<u64> {
        dropout.map(|s| if c == 0 { s } else { derive_seed(s, c as u64) })
    }

    /// First pass: the pooled embeddings `[B, H]` of the whole batch, chunk by chunk.
    pub fn forward(
        &mut self,
        model: &mut dyn Backbone,
        batch: &Packed<'_>,
        dropout: Option<u64>,
        pooled: &mut Vec<f32>,
    ) -> Result<()> {
        let h = model.hidden_size();
        pooled.clear();
        pooled.reserve(batch.num_seqs() * h);
        for (c, s0, s1) in self.chunks(batch.num_seqs()) {
            let mut offsets = std::mem::take(&mut self.offsets);
            let sub = Self::sub(&mut offsets, batch, s0, s1);
            model.forward_train(&sub, Self::seed(dropout, c), &mut self.pooled)?;
            pooled.extend_from_slice(&self.pooled);
            self.offsets = offsets;
        }
        Ok(())
    }

    /// Second pass: each chunk's forward again (the same masks), then its backward from its rows of
    /// `dpooled [B, H]`.
    pub fn backward(
        &mut self,
        model: &mut dyn Backbone,
        batch: &Packed<'_>,
        dropout: Option<u64>,
        dpooled: &[f32],
    ) -> Result<()> {
        let h = model.hidden_size();
        for (c, s0, s1) in self.chunks(batch.num_seqs()) {
            let mut offsets = std::mem::take(&mut self.offsets);
            let sub = Self::sub(&mut offsets, batch, s0, s1);
            model.forward_train(&sub, Self::seed(dropout, c), &mut self.pooled)?;
            model.backward(&sub, &dpooled[s0 * h..s1 * h])?;
            self.offsets = offsets;
        }
        Ok(())
    }
}
