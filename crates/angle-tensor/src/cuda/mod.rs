//! CUDA backend: our own kernels (one `.cu` per op family, beside the Rust that launches it),
//! compiled at run time by NVRTC for the device's architecture and cached per process, and
//! matrix products through cuBLAS.
//!
//! Every launcher here mirrors the CPU op of the same name in [`crate::cpu`] (the reference the
//! kernels are checked against, see [`check`]): packed sequences with `seq_offsets`, PyTorch's
//! `[out, in]` weight layout, backward *adds* into gradients, and dropout draws the very mask of
//! [`crate::rng`].
//!
//! cudarc loads the CUDA libraries dynamically and panics when one is missing, so
//! [`Gpu::new`] probes for the driver, NVRTC and cuBLAS first and returns
//! [`GpuError::Unavailable`] instead: a build with the `cuda` feature runs on a machine
//! without CUDA and says why it cannot use a GPU.
//!
//! Pointers: device memory is allocated once in [`DeviceBuffer`]s; launchers take
//! [`DSlice`]s (a device address and a length, `Copy`), so a model can carve its arena into
//! named views without fighting the borrow checker. Views are only valid while their buffer
//! lives; the owner (the GPU model) keeps both together.

mod adamw;
mod attention;
mod blas;
pub mod check;
mod context;
mod dropout;
mod embedding;
mod gelu;
mod layernorm;
mod loss;
mod memory;
mod misc;
mod pooling;

pub use adamw::{adamw_update, grad_norm_sq, no_decay_bounds, scale_by_norm};
pub use attention::{AttentionSaved, attention_pbase, attention_pbase_into};
pub use attention::{AttentionShape, attention_backward, attention_forward, attention_scratch_len};
pub use blas::{Gemm, MatOp, gemm_strided_batched, linear_backward, linear_forward};
pub use context::{Gpu, GpuError, KernelSource, SOURCES, compile_all_for_arch, driver_probe};
pub use dropout::{dropout_backward, dropout_forward};
pub use embedding::{embedding_backward, embedding_forward};
pub use gelu::{bias_gelu_backward, bias_gelu_forward};
pub use layernorm::{residual_layernorm_backward, residual_layernorm_forward};
pub use loss::{AngleObjective, angle_objective};
pub use memory::{DSlice, DType, DeviceBuffer};
pub use misc::add_bias;
pub use misc::{bias_grad, cast_bf16_to_f32, cast_f32_to_bf16, fill};
pub use pooling::{Pooling, pooling_backward, pooling_forward};

/// The kernel name for element type `T` (each kernel exists as `_f32` and `_bf16`).
fn kname<T: DType>(f32_name: &'static str, bf16_name: &'static str) -> &'static str {
    if T::NAME == "bf16" { bf16_name } else { f32_name }
}

/// Blocks of 256 threads for a grid-stride loop over `n` elements (capped: the loops stride).
fn grid_1d(n: usize) -> u32 {
    n.div_ceil(256).clamp(1, 65_535) as u32
}

#[cfg(test)]
mod tests;
