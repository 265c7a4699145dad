//! [`Precision`]: the arithmetic of the linear layers' products, one type for every device and
//! model. What each device offers, and what `auto` picks, is decided above the models
//! (`angle-train`'s `precision` module); a model asked for one it cannot run says so.

use std::fmt;
use std::str::FromStr;

/// The arithmetic of the linear layers' products. Everything else (norms, softmax, activations,
/// residuals, pooling, the loss, master weights, gradients and AdamW) stays f32 whatever this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    /// f32 products (exact to the fixtures; the CPU's default).
    #[default]
    F32,
    /// f32 operands, products on TF32 tensor cores with f32 sums (the GPU's default; no CPU has it).
    Tf32,
    /// Operands rounded to bf16, f32 sums: the CPU's bf16 kernels (AMX, AVX512-BF16), the GPU's
    /// mixed precision (bf16 activations too there).
    Bf16,
    /// Frozen weights quantized per output channel (symmetric), inputs per row (u8 over the row's range), i32 sums:
    /// the CPU's int8 kernels, for encoding and for a LoRA run's frozen base.
    Int8,
}

impl Precision {
    /// The name `FromStr` reads and `Display` writes.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }
}

impl FromStr for Precision {
    type Err = String;
    /// `f32` (`fp32`, `float32`), `tf32`, `bf16` (`bfloat16`) or `int8`, in any case.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "tf32" => Ok(Precision::Tf32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "int8" => Ok(Precision::Int8),
            _ => Err(format!("unknown precision {s:?} (f32, tf32, bf16 or int8)")),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in [Precision::F32, Precision::Tf32, Precision::Bf16, Precision::Int8] {
            assert_eq!(p.to_string().parse::<Precision>(), Ok(p));
        }
        assert_eq!("BF16".parse::<Precision>(), Ok(Precision::Bf16));
        assert_eq!("fp32".parse::<Precision>(), Ok(Precision::F32));
        let e = "fp16".parse::<Precision>().unwrap_err();
        assert!(e.contains("fp16") && e.contains("int8"), "{e}");
    }
}
