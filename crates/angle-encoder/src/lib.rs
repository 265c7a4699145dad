//! A BERT-family sentence encoder with a hand-written backward pass (llm.c style).
//!
//! Data flows one way: [`Batch`] (packed token ids) → [`Encoder::forward`] (activations in an
//! [`Activations`] arena) → [`Pooler`] → your loss → [`Pooler::backward`] → [`Encoder::backward`] (gradients
//! added into one flat buffer laid out by [`ParamLayout`]) → the optimizer ([`Encoder::adamw_step`]).
//!
//! ```no_run
//! use angle_encoder::{Batch, Capacity, Encoder, Mode, Pooler};
//! let enc = Encoder::from_dir("../shared/models/all-MiniLM-L6-v2")?;
//! let mut acts = enc.activations(Capacity { max_tokens: 64 * 64, max_seq_len: 64 }, Mode::Eval);
//! let ids = [101u32, 7592, 2088, 102, 101, 2088, 102];
//! let batch = Batch { input_ids: &ids, token_type_ids: None, seq_offsets: &[0, 4, 7] };
//! let hidden = enc.forward(&batch, &mut acts, None)?;
//! let mut pooled = vec![0.0; 2 * enc.config.hidden_size];
//! Pooler::new(enc.default_pooling).forward(&mut pooled, hidden, batch.seq_offsets, enc.config.hidden_size)?;
//! # Ok::<(), angle_encoder::EncoderError>(())
//! ```

pub mod arena;
pub mod checkpoint;
pub mod config;
pub mod error;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod inference;
pub mod model;
pub mod params;
pub mod pooling;
pub mod profile;

pub use arena::{Activations, Capacity, Mode};
pub use config::{Activation, BertConfig, Keys};
pub use error::{EncoderError, Result};
pub use inference::{Precision, bf16_is_fast, bf16_kernel_name, fastest_precision};
pub use model::{AdamW, Batch, Encoder, LayerGrad};
pub use params::{ParamBuffers, ParamEntry, ParamLayout, decays, no_decay_ranges};
pub use pooling::{Pooler, Pooling};
