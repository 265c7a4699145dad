//! Batches in the objective's row layout, packed (no padding), shuffled per epoch.
//!
//! Row layout: format A is zigzag (rows `2k`, `2k + 1` are the texts of pair `k`, `labels[k]` its label), B is
//! query/positive interleaved, C query/positive/negative, U two rows per text (its two dropout views). A batch is
//! packed as `docs/architecture.md` says: the token ids of all rows back to back with `seq_offsets` (length
//! rows + 1); [`PackedBatch::to_padded`] gives the padded `[B, T]` form with an attention mask for code that wants
//! it.
//!
//! The data order is a pure function of `(seed, epoch)`: [`Dataset::plan_epoch`] recomputes it, so resuming
//! mid-epoch needs only the epoch and the index of the next batch.

use crate::rng::{STREAM_BATCH_ORDER, STREAM_SHUFFLE, SplitMix64, derive};
use crate::{DataError, Dataset, Format};

/// What to do with an example one of whose texts already occurs (same token ids) earlier in its batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DuplicatePolicy {
    /// Keep it; rows carry text identities (`PackedBatch::text_ids`) so the loss can mask duplicate pairs.
    #[default]
    Mask,
    /// Drop the later example, as angle-emb's `filter_duplicate` does. Only texts of *earlier* examples count: a pair
    /// whose two texts are identical is kept (angle-emb would drop it), since it is a valid, if easy, positive pair.
    Drop,
}

/// Batch size in examples (pairs, or query tuples), not rows.
#[derive(Clone, Debug)]
pub struct BatchConfig {
    pub batch_size: usize,
    /// Shuffle per epoch (training); `false` keeps file order (evaluation).
    pub shuffle: bool,
    pub seed: u64,
    /// Group examples of similar length into batches: shuffle, cut into mega-batches of [`MEGA_BATCH`] batches,
    /// sort each by length, cut into batches, shuffle the batches. Packed batches then hold sequences of similar
    /// length (less padding where padding is used, more even attention work); the cost is a slightly less random
    /// batch composition (a batch's members come from the same length band of a 50-batch window), which changes
    /// which in-batch negatives and ranked pairs the loss sees.
    pub length_grouped: bool,
    pub duplicates: DuplicatePolicy,
    /// Leave out a last batch smaller than `batch_size` (angle-emb, through the HF Trainer, keeps it).
    pub drop_last: bool,
}

/// Batches per mega-batch for length grouping.
pub const MEGA_BATCH: usize = 50;

impl BatchConfig {
    /// Training: shuffled, duplicates masked, last partial batch kept.
    pub fn train(batch_size: usize, seed: u64) -> Self {
        BatchConfig {
            batch_size,
            shuffle: true,
            seed,
            length_grouped: false,
            duplicates: DuplicatePolicy::Mask,
            drop_last: false,
        }
    }

    /// Evaluation: file order, nothing dropped.
    pub fn eval(batch_size: usize) -> Self {
        BatchConfig {
            shuffle: false,
            ..BatchConfig::train(batch_size, 0)
        }
    }
}

/// The order of one epoch: which examples make up each batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochPlan {
    epoch: u64,
    seed: u64,
    duplicates: DuplicatePolicy,
    order: Vec<u32>,
    /// Batch `i` is `order[bounds[i]..bounds[i + 1]]`.
    bounds: Vec<usize>,
}

impl EpochPlan {
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Number of batches.
    pub fn len(&self) -> usize {
        self.bounds.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Example numbers of batch `i` (before duplicate dropping); empty when out of range.
    pub fn examples(&self, i: usize) -> &[u32] {
        match (self.bounds.get(i), self.bounds.get(i + 1)) {
            (Some(&a), Some(&b)) => &self.order[a..b],
            _ => &[],
        }
    }
}

/// A packed batch: what the encoder and the loss take.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedBatch {
    /// Token ids of all rows back to back (`N` = total tokens).
    pub input_ids: Vec<u32>,
    pub token_type_ids: Vec<u32>,
    /// Row `r`'s tokens are `seq_offsets[r]..seq_offsets[r + 1]`; length rows + 1, starts at 0.
    pub seq_offsets: Vec<usize>,
    /// One per example, format A only (empty for B/C).
    pub labels: Vec<f32>,
    /// Per row: equal exactly when two rows have the same token ids (for masking duplicates in the loss).
    pub text_ids: Vec<u64>,
    /// Per row: the dataset's text number ([`Dataset::text`]); empty for batches not drawn from a dataset.
    pub texts: Vec<u32>,
    /// Dataset example number of each example in the batch.
    pub examples: Vec<u32>,
    /// Examples dropped as duplicates ([`DuplicatePolicy::Drop`]).
    pub dropped: usize,
    /// Rows per example: 2 (A, B, U) or 3 (C).
    pub rows_per_example: usize,
}

impl Default for PackedBatch {
    fn default() -> Self {
        PackedBatch {
            input_ids: Vec::new(),
            token_type_ids: Vec::new(),
            seq_offsets: vec![0],
            labels: Vec::new(),
            text_ids: Vec::new(),
            texts: Vec::new(),
            examples: Vec::new(),
            dropped: 0,
            rows_per_example: 1,
        }
    }
}

impl PackedBatch {
    /// Empties the batch, keeping its allocations.
    pub fn clear(&mut self) {
        self.input_ids.clear();
        self.token_type_ids.clear();
        self.seq_offsets.clear();
        self.seq_offsets.push(0);
        self.labels.clear();
        self.text_ids.clear();
        self.texts.clear();
        self.examples.clear();
        self.dropped = 0;
    }

    /// Number of rows (sequences).
    pub fn rows(&self) -> usize {
        self.seq_offsets.len().saturating_sub(1)
    }

    /// Number of tokens (`N`).
    pub fn tokens(&self) -> usize {
        self.input_ids.len()
    }

    /// Length of row `r`.
    pub fn row_len(&self, r: usize) -> usize {
        self.seq_offsets[r + 1] - self.seq_offsets[r]
    }

    /// Longest row.
    pub fn max_row_len(&self) -> usize {
        (0..self.rows()).map(|r| self.row_len(r)).max().unwrap_or(0)
    }

    /// Σ len² over rows (what attention's work and memory scale with).
    pub fn sum_sq_len(&self) -> usize {
        (0..self.rows()).map(|r| self.row_len(r).pow(2)).sum()
    }

    /// Appends one row.
    pub fn push_row(&mut self, ids: &[u32], type_ids: &[u32], text_id: u64) {
        if self.seq_offsets.is_empty() {
            self.seq_offsets.push(0);
        }
        self.input_ids.extend_from_slice(ids);
        self.token_type_ids.extend_from_slice(type_ids);
        self.seq_offsets.push(self.input_ids.len());
        self.text_ids.push(text_id);
    }

    /// Padded `[rows, T]` form, `T` the longest row, right padding with `pad_id` (type id 0, mask 0).
    pub fn to_padded(&self, pad_id: u32) -> PaddedBatch {
        let (rows, t) = (self.rows(), self.max_row_len());
        let mut p = PaddedBatch {
            rows,
            seq_len: t,
            input_ids: vec![pad_id; rows * t],
            token_type_ids: vec![0; rows * t],
            attention_mask: vec![0; rows * t],
        };
        for r in 0..rows {
            let (a, b) = (self.seq_offsets[r], self.seq_offsets[r + 1]);
            let dst = r * t..r * t + (b - a);
            p.input_ids[dst.clone()].copy_from_slice(&self.input_ids[a..b]);
            p.token_type_ids[dst.clone()].copy_from_slice(&self.token_type_ids[a..b]);
            p.attention_mask[dst].fill(1);
        }
        p
    }
}

/// A batch padded to its longest row; all arrays row-major `[rows, seq_len]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaddedBatch {
    pub rows: usize,
    pub seq_len: usize,
    pub input_ids: Vec<u32>,
    pub token_type_ids: Vec<u32>,
    pub attention_mask: Vec<u32>,
}

impl Dataset {
    /// Batches per epoch under `config` (the same every epoch).
    pub fn batches_per_epoch(&self, config: &BatchConfig) -> usize {
        if config.batch_size == 0 {
            return 0;
        }
        if config.drop_last {
            self.len() / config.batch_size
        } else {
            self.len().div_ceil(config.batch_size)
        }
    }

    /// The order of epoch `epoch`: a pure function of the dataset, `config` and `epoch`.
    pub fn plan_epoch(&self, config: &BatchConfig, epoch: u64) -> Result<EpochPlan, DataError> {
        let bs = config.batch_size;
        if bs == 0 {
            return Err(DataError::Config("batch size must be at least 1".into()));
        }
        let n = self.len();
        let mut order: Vec<u32> = (0..n as u32).collect();
        if config.shuffle {
            SplitMix64::new(derive(&[config.seed, STREAM_SHUFFLE, epoch])).shuffle(&mut order);
        }
        let full = n / bs;
        let kept = if config.drop_last { full * bs } else { n };
        let mut bounds: Vec<usize> = (0..kept).step_by(bs).collect();
        bounds.push(kept);

        if config.length_grouped && kept > 0 {
            // Length of an example in this epoch: its texts' tokens (the alternatives drawn for this epoch).
            let len_of = |e: u32| -> usize {
                (0..self.format().texts_per_example())
                    .map(|s| self.token_len(self.text_of(e as usize, s, config.seed, epoch)))
                    .sum()
            };
            for mega in order[..kept].chunks_mut(MEGA_BATCH * bs) {
                // Stable sort: ties keep the shuffled order.
                mega.sort_by_key(|&e| std::cmp::Reverse(len_of(e)));
            }
            let mut batches: Vec<&[u32]> = order[..kept].chunks(bs).collect();
            if config.shuffle {
                SplitMix64::new(derive(&[config.seed, STREAM_BATCH_ORDER, epoch])).shuffle(&mut batches);
            }
            let mut reordered = Vec::with_capacity(kept);
            bounds.clear();
            bounds.push(0);
            for b in batches {
                reordered.extend_from_slice(b);
                bounds.push(reordered.len());
            }
            order = reordered;
        } else {
            order.truncate(kept);
        }
        Ok(EpochPlan {
            epoch,
            seed: config.seed,
            duplicates: config.duplicates,
            order,
            bounds,
        })
    }

    /// Fills `out` with batch `index` of `plan`, reusing its buffers (no allocation once they have grown).
    pub fn fill_batch(&self, plan: &EpochPlan, index: usize, out: &mut PackedBatch) -> Result<(), DataError> {
        if index >= plan.len() {
            return Err(DataError::Config(format!(
                "batch {index} out of range: epoch {} has {} batches",
                plan.epoch,
                plan.len()
            )));
        }
        let format = self.format();
        out.clear();
        out.rows_per_example = format.rows_per_example();
        // Up to 3 rows per example; a fixed array avoids allocating per example.
        let mut texts = [0usize; 3];
        let s = format.rows_per_example();
        for &e in plan.examples(index) {
            for (slot, t) in texts.iter_mut().enumerate().take(format.texts_per_example()) {
                *t = self.text_of(e as usize, slot, plan.seed, plan.epoch);
            }
            if format == Format::U {
                // The text's second view: the same tokens in the next row (its own dropout mask there).
                texts[1] = texts[0];
            }
            if plan.duplicates == DuplicatePolicy::Drop {
                // Linear scan over the rows so far: O(rows²) identity compares, negligible beside the encoder.
                // (Format U's second view is the example's own text, never a duplicate of it.)
                let dup = texts[..format.texts_per_example()]
                    .iter()
                    .any(|&t| out.text_ids.contains(&self.identity(t)));
                if dup {
                    out.dropped += 1;
                    continue;
                }
            }
            for &t in &texts[..s] {
                let (ids, types) = self.tokens(t);
                out.push_row(ids, types, self.identity(t));
                out.texts.push(t as u32);
            }
            if format == Format::A {
                out.labels.push(self.labels()[e as usize]);
            }
            out.examples.push(e);
        }
        Ok(())
    }

    /// Batch `index` of `plan` in a new [`PackedBatch`].
    pub fn batch(&self, plan: &EpochPlan, index: usize) -> Result<PackedBatch, DataError> {
        let mut out = PackedBatch::default();
        self.fill_batch(plan, index, &mut out)?;
        Ok(out)
    }
}
