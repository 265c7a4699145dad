//! Tensor ops for AnglE training, llm.c style: every op is a pair of free functions
//! (`*_forward` / `*_backward`) over contiguous row-major slices with explicit dimensions.
//!
//! - Forward saves what backward needs (layer-norm mean/rstd, attention probabilities).
//! - **Backward adds** (`+=`) into gradient buffers; the caller clears them once per step.
//! - Ops are generic over [`Float`] (f32 trains, f64 makes finite-difference checks tight).
//! - Linear layers use PyTorch's weight layout `[out, in]`.
//! - Sequences are packed (no padding): `seq_offsets` (length B + 1) delimit the N token rows;
//!   attention runs per sequence over its own length, which *is* the padding mask.
//! - Dropout draws its mask from a counter-based RNG ([`rng`]), so backward regenerates it.
//!
//! # Threads
//! Ops parallelise with rayon on the *current* pool: run them inside
//! `rayon::ThreadPoolBuilder::new().num_threads(n).build()?.install(|| ...)` to choose the
//! thread count (otherwise rayon's global pool, one thread per core, is used). Results do not
//! depend on the thread count: every reduction has a fixed order.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod error;
mod precision;
pub mod rng;

pub use cpu::Float;
pub use error::TensorError;
pub use precision::Precision;
