//! The building blocks, one per Hugging Face module, each a `forward` / `backward` pair over the
//! `angle-tensor` ops. A block holds [`Var`]s (where its weights are in the flat buffers) and its
//! settings; what a forward saves for backward lives in a separate state struct, one per use, so a
//! block whose weights are shared (ALBERT) runs several times in one step. Backward adds into the
//! gradient buffer; a frozen weight's gradient goes nowhere.

pub mod attention;
pub mod embeddings;
pub mod layer;
pub mod linear;
pub mod lora;
pub mod mlp;
pub mod norm;
pub mod vars;

pub use attention::{Attention, AttentionState, Rope};
pub use embeddings::{Embeddings, EmbeddingsConfig, EmbeddingsState};
pub use layer::{BertLayer, Layer, LayerSeeds, LayerState, ModernBertDropout, ModernBertLayer};
pub use linear::{Adapter, Linear, LinearState};
pub use lora::{LoraSpec, kaiming_uniform};
pub use mlp::{Mlp, MlpState};
pub use norm::{LayerNorm, NormState};
pub use vars::{Grads, Init, Packed, PackedWeights, Store, Var, VarBuilder, VarEntry, Weights, path};
