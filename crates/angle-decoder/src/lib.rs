//! Decoder-only LLM backbones (LLaMA, Mistral, Qwen2, Qwen3) for AnglE sentence embeddings, with LoRA and
//! a hand-written backward (llm.c style), exact to transformers + peft.
//!
//! Data flows one way: packed token ids → [`Decoder::forward`] → [`Decoder::pool`] → your loss →
//! [`Decoder::backward_pooled`] (gradients added into one flat buffer of the trainable tensors) →
//! [`Decoder::adamw_step`].

pub mod config;
pub mod error;
pub mod lora;
pub mod memory;
pub mod model;
pub mod save;

/// The checkpoint I/O every family shares lives in `angle-models`.
pub mod weights {
    pub use angle_models::weights::*;
}

pub use config::{DecoderConfig, ModelType};
pub use error::{DecoderError, Result};
pub use lora::LoraConfig;
pub use memory::MemoryEstimate;
pub use model::{Decoder, DecoderOptions};
pub use weights::{Checkpoint, Frozen, WeightDtype};
