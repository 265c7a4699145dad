//! Data for AnglE training: readers for CSV, TSV and JSONL files in angle-emb's layouts (A: `text1,text2,label`;
//! B: `query,positive`; C: `query,positive,negative`), prompts, tokenisation with a model's `tokenizer.json`, and
//! packed batches in the objective's row layout, shuffled per epoch with a seed.
//!
//! ```no_run
//! use angle_data::{BatchConfig, Dataset, Prompts, ReadOptions, TextTokenizer};
//! # fn main() -> Result<(), angle_data::DataError> {
//! let tok = TextTokenizer::from_file("../shared/models/all-MiniLM-L6-v2/tokenizer.json", 64)?;
//! let data = Dataset::load("../shared/data/stsb/stsb-en-train.csv", &ReadOptions::default(), &Prompts::default(), &tok)?;
//! let config = BatchConfig::train(32, 42);
//! let plan = data.plan_epoch(&config, 0)?;
//! let mut batch = angle_data::PackedBatch::default();
//! for i in 0..plan.len() {
//!     data.fill_batch(&plan, i, &mut batch)?;
//!     // batch.input_ids, batch.seq_offsets, batch.labels, batch.text_ids -> encoder and loss
//! }
//! # Ok(()) }
//! ```

mod batch;
mod dataset;
mod error;
mod format;
mod mix;
#[cfg(feature = "parquet")]
mod parquet;
mod prompt;
mod read;
mod rng;
mod tokenize;
mod wordpiece;

pub use batch::{BatchConfig, DuplicatePolicy, EpochPlan, MEGA_BATCH, PackedBatch, PaddedBatch};
pub use dataset::{Dataset, ENCODE_CHUNK};
pub use error::{DataError, SkipCounts, SkipReason, SkippedRow};
pub use format::{ColumnMap, Format, Role};
pub use mix::{MixedPlan, Sampler, dataset_seed, mixed_batches_per_epoch, plan_mixed_epoch};
pub use prompt::{Prompt, Prompts};
pub use read::{
    FileKind, Header, RawDataset, RawExample, ReadOptions, data_files, read_file, read_files, read_from,
};
pub use tokenize::{Encoded, TextTokenizer};
