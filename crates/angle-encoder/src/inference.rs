//! bf16 products: an eval-mode forward (inference precision) and, separately, a training step
//! (train precision: forward and the input-gradient products; weight gradients, optimizer state
//! and master weights stay f32) may run the four linear layers in bf16 (inputs and weights
//! rounded to bf16, sums in f32) on CPUs with AMX tiles, about 3x the f32 products on this
//! project's Xeon. Both default to f32.

use angle_tensor::cpu::{Bf16Kernel, PackedBf16, bf16_kernel};

use crate::config::BertConfig;
use crate::error::Result;
use crate::params::ParamLayout;

/// Precision of the linear layers' products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 everywhere (the default; training is always f32).
    #[default]
    F32,
    /// The linear layers' products in bf16 with f32 sums; layer norm, softmax, GELU and
    /// residuals stay f32. Embeddings move by about 1e-3 relative.
    Bf16,
}

impl Precision {
    /// `f32` or `bf16`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Some(Precision::F32),
            "bf16" | "bfloat16" => Some(Precision::Bf16),
            _ => None,
        }
    }
}

/// bf16 copies of one layer's linear weights, packed for the products.
#[derive(Debug, Clone, Default)]
pub(crate) struct Bf16Layer {
    pub qkv: PackedBf16,
    pub attn_out: PackedBf16,
    pub ffn_in: PackedBf16,
    pub ffn_out: PackedBf16,
}

/// bf16 copies of the weights: `fwd` for forwards (`x · Wᵀ`), `bwd` (transposed, for `dy · W`)
/// only when training runs in bf16.
#[derive(Debug, Clone, Default)]
pub(crate) struct Bf16Packs {
    pub fwd: Vec<Bf16Layer>,
    pub bwd: Vec<Bf16Layer>,
}

/// Packs every layer's linear weights from the flat parameter buffer into `layers` (`transposed`:
/// for the input gradients), reusing their buffers when the count matches (after each AdamW step
/// in bf16 training: no allocation in the step loop).
pub(crate) fn pack_layers(
    layers: &mut Vec<Bf16Layer>,
    config: &BertConfig,
    layout: &ParamLayout,
    params: &[f32],
    transposed: bool,
) -> Result<()> {
    let (h, inter) = (config.hidden_size, config.intermediate_size);
    layers.resize_with(layout.layers.len(), Bf16Layer::default);
    for (dst, w) in layers.iter_mut().zip(&layout.layers) {
        for (packed, range, out, inp) in [
            (&mut dst.qkv, &w.qkv_weight, 3 * h, h),
            (&mut dst.attn_out, &w.attn_out_weight, h, h),
            (&mut dst.ffn_in, &w.ffn_in_weight, inter, h),
            (&mut dst.ffn_out, &w.ffn_out_weight, h, inter),
        ] {
            let src = &params[range.clone()];
            if transposed {
                packed.pack_transposed_into(src, out, inp)?;
            } else {
                packed.pack_into(src, out, inp)?;
            }
        }
    }
    Ok(())
}

/// Whether bf16 products beat our f32 products on this CPU: AMX always; AVX512-BF16 once its
/// run-time self-check passed and it measured at least 1.1× our f32 product here
/// ([`avx512_bf16_speedup`]); else they run about as fast as f32, or slower.
pub fn bf16_is_fast() -> bool {
    let k = bf16_kernel();
    k.beats_f32()
        && (k != Bf16Kernel::Avx512Bf16 || (avx512_bf16_checked() && avx512_bf16_speedup() >= MIN_SPEEDUP))
}

/// What AVX512-BF16 must gain over f32 before `auto` takes it (the margin keeps a noisy timing from
/// flipping the choice between runs).
const MIN_SPEEDUP: f64 = 1.1;

/// The AVX512-BF16 forward product's speed over f32 on this CPU, timed once per process (~30 ms).
pub fn avx512_bf16_speedup() -> f64 {
    static S: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *S.get_or_init(|| angle_tensor::cpu::bf16_speedup(Bf16Kernel::Avx512Bf16))
}

/// The AVX512-BF16 kernel was written without such a CPU to run on: before `auto` picks it,
/// it must reproduce the portable kernel on a ragged product (once per process).
fn avx512_bf16_checked() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| angle_tensor::cpu::bf16_self_check(Bf16Kernel::Avx512Bf16).is_ok())
}

/// The bf16 kernel this CPU runs: `amx`, `avx512-bf16`, `avx2` or `portable`.
pub fn bf16_kernel_name() -> &'static str {
    bf16_kernel().name()
}

/// What `--precision auto` means here: the fastest precision whose accuracy is established,
/// bf16 only where its kernel beats f32 on this CPU; with the line to print
/// (`precision: bf16 (amx)`, `precision: f32 (no fast bf16 kernel here)`).
pub fn fastest_precision() -> (Precision, String) {
    let k = bf16_kernel();
    if bf16_is_fast() {
        (Precision::Bf16, format!("precision: bf16 ({})", k.name()))
    } else if k == Bf16Kernel::Avx512Bf16 && !avx512_bf16_checked() {
        (
            Precision::F32,
            "precision: f32 (the avx512-bf16 kernel failed its self-check on this CPU)".into(),
        )
    } else if k == Bf16Kernel::Avx512Bf16 {
        let s = avx512_bf16_speedup();
        (
            Precision::F32,
            format!("precision: f32 (the avx512-bf16 kernel measured {s:.2}× f32 on this CPU)"),
        )
    } else {
        (Precision::F32, "precision: f32 (no fast bf16 kernel here)".into())
    }
}
