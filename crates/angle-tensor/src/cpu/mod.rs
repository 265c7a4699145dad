//! CPU ops: one module per op family, all re-exported here.

mod adamw;
mod attention;
mod bf16;
mod bf16_simd;
mod cpuid;
mod dropout;
mod embedding;
mod float;
mod gelu;
mod gemm;
mod gqa;
mod int8;
mod int8_simd;
mod layernorm;
mod linear;
mod lora;
mod math;
mod residual;
mod rmsnorm;
mod rope;
#[macro_use]
mod simd;
mod swiglu;

#[cfg(test)]
pub(crate) mod testutil;

pub use adamw::{adamw_update, adamw_update_masked, clip_grad_norm, grad_norm, scale};
pub use attention::{AttentionDropout, attention_backward, attention_forward, attention_probs_len};
pub use bf16::{
    Bf16Kernel, PackedBf16, bf16_kernel, bf16_kernels_present, bf16_self_check, bf16_to_f32, f32_to_bf16,
    linear_accumulate_bf16, linear_backward_bf16, linear_backward_bf16_with, linear_forward_bf16,
    linear_forward_bf16_gelu, linear_forward_bf16_gelu_with, linear_forward_bf16_with, requested_bf16_kernel,
};
pub use cpuid::{CpuModel, cpu_flags, cpu_model};
pub use dropout::{dropout_backward, dropout_forward, dropout_forward_inplace};
pub use embedding::{embedding_backward, embedding_forward};
pub use float::Float;
pub use gelu::{GeluKind, erf_f64, gelu_backward, gelu_forward};
pub use gemm::backend::{GemmBackend, set_gemm_backend};
pub use gemm::{MatMut, MatRef, gemm};
pub use gqa::{GqaShape, gqa_attention_backward, gqa_attention_forward};
pub use int8::{
    Int8Kernel, MAX_IN_DIM, PackedI8, int8_kernel, int8_kernels_present, int8_self_check, linear_forward_i8,
    linear_forward_i8_gelu, linear_forward_i8_gelu_with, linear_forward_i8_with, quantize_row_i8,
    quantize_row_u8, requested_int8_kernel, weight_levels,
};
pub use layernorm::{layernorm_backward, layernorm_forward};
pub use linear::{linear_backward, linear_forward};
pub use lora::{LoraShape, lora_backward, lora_forward};
pub use math::{erf_f32, exp_f32, tanh_f32};
pub use residual::{residual_backward, residual_forward};
pub use rmsnorm::{rmsnorm_backward, rmsnorm_forward};
pub use rope::{rope_backward, rope_forward, rope_inv_freq, rope_tables, rope_tables_from};
pub use swiglu::{swiglu_backward, swiglu_forward};
