//! The model building blocks every family is composed of, and the encoder families built from them.
//!
//! - [`nn`]: one struct per Hugging Face module (`Linear`, `LayerNorm`, `Embeddings`, `BertLayer`,
//!   `ModernBertLayer`'s attention and MLP), each with a `forward` / `backward` pair over the
//!   `angle-tensor` ops; weights found by module path ([`nn::VarBuilder`]) in flat buffers.
//! - [`families`]: a family is a short file composing blocks (BERT, RoBERTa, XLM-R, CamemBERT,
//!   ELECTRA, ALBERT, ModernBERT); [`families::build`] is the only `match` on `model_type`.
//! - [`model::Model`]: a family with its parameters, gradients and AdamW moments (one flat buffer per
//!   kind), LoRA adapters when asked, and pooling.
//! - [`weights`]: checkpoint I/O (single file or shard index, memory map, dtype widening, the atomic
//!   safetensors writer), shared with the decoder family.

pub mod error;
pub mod families;
pub mod model;
pub mod nn;
pub mod weights;

pub use error::{ModelError, Result};
pub use model::{Model, ModelOptions};
pub use nn::LoraSpec;
