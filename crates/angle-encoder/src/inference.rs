//! bf16 products: an eval-mode forward (inference precision) and, separately, a training step
//! (train precision: forward and the input-gradient products; weight gradients, optimizer state
//! and master weights stay f32) may run the four linear layers in bf16 (inputs and weights
//! rounded to bf16, sums in f32) on CPUs with AMX tiles, about 3x the f32 products on this
//! project's Xeon. Both default to f32.

pub use angle_tensor::Precision;
use angle_tensor::TensorError;
use angle_tensor::cpu::{
    Bf16Kernel, GeluKind, PackedBf16, PackedI8, bf16_kernel, linear_forward_bf16, linear_forward_bf16_gelu,
    linear_forward_i8, linear_forward_i8_gelu,
};

use crate::config::BertConfig;
use crate::error::Result;
use crate::params::ParamLayout;

/// bf16 copies of one layer's linear weights, packed for the products.
#[derive(Debug, Clone, Default)]
pub(crate) struct Bf16Layer {
    pub qkv: PackedBf16,
    pub attn_out: PackedBf16,
    pub ffn_in: PackedBf16,
    pub ffn_out: PackedBf16,
}

/// int8 copies of one layer's linear weights (eval-mode forwards).
#[derive(Debug, Clone, Default)]
pub(crate) struct Int8Layer {
    pub qkv: PackedI8,
    pub attn_out: PackedI8,
    pub ffn_in: PackedI8,
    pub ffn_out: PackedI8,
}

/// Quantizes every layer's linear weights from the flat parameter buffer.
pub(crate) fn quantize_layers(
    config: &BertConfig,
    layout: &ParamLayout,
    params: &[f32],
) -> Result<Vec<Int8Layer>> {
    let (h, inter) = (config.hidden_size, config.intermediate_size);
    let q = |range: &std::ops::Range<usize>, out, inp| PackedI8::quantize(&params[range.clone()], out, inp);
    layout
        .layers
        .iter()
        .map(|w| {
            Ok(Int8Layer {
                qkv: q(&w.qkv_weight, 3 * h, h)?,
                attn_out: q(&w.attn_out_weight, h, h)?,
                ffn_in: q(&w.ffn_in_weight, inter, h)?,
                ffn_out: q(&w.ffn_out_weight, h, inter)?,
            })
        })
        .collect()
}

/// One layer's packed linear weights, in whichever form the forward's precision packed.
#[derive(Clone, Copy)]
pub(crate) enum LayerPack<'a> {
    Bf16(&'a Bf16Layer),
    Int8(&'a Int8Layer),
}

/// One packed linear weight.
#[derive(Clone, Copy)]
pub(crate) enum Lin<'a> {
    Bf16(&'a PackedBf16),
    Int8(&'a PackedI8),
}

impl<'a> LayerPack<'a> {
    pub fn qkv(self) -> Lin<'a> {
        match self {
            Self::Bf16(l) => Lin::Bf16(&l.qkv),
            Self::Int8(l) => Lin::Int8(&l.qkv),
        }
    }
    pub fn attn_out(self) -> Lin<'a> {
        match self {
            Self::Bf16(l) => Lin::Bf16(&l.attn_out),
            Self::Int8(l) => Lin::Int8(&l.attn_out),
        }
    }
    pub fn ffn_in(self) -> Lin<'a> {
        match self {
            Self::Bf16(l) => Lin::Bf16(&l.ffn_in),
            Self::Int8(l) => Lin::Int8(&l.ffn_in),
        }
    }
    pub fn ffn_out(self) -> Lin<'a> {
        match self {
            Self::Bf16(l) => Lin::Bf16(&l.ffn_out),
            Self::Int8(l) => Lin::Int8(&l.ffn_out),
        }
    }
}

impl Lin<'_> {
    /// `out = inp · Wᵀ + bias` in the weight's form.
    pub fn forward(
        self,
        out: &mut [f32],
        inp: &[f32],
        bias: Option<&[f32]>,
        rows: usize,
    ) -> std::result::Result<(), TensorError> {
        match self {
            Self::Bf16(w) => linear_forward_bf16(out, inp, w, bias, rows),
            Self::Int8(w) => linear_forward_i8(out, inp, w, bias, rows),
        }
    }

    /// `out = gelu(inp · Wᵀ + bias)` (eval mode: no pre-activation kept).
    pub fn forward_gelu(
        self,
        out: &mut [f32],
        inp: &[f32],
        bias: Option<&[f32]>,
        rows: usize,
        kind: GeluKind,
    ) -> std::result::Result<(), TensorError> {
        match self {
            Self::Bf16(w) => linear_forward_bf16_gelu(out, inp, w, bias, rows, kind),
            Self::Int8(w) => linear_forward_i8_gelu(out, inp, w, bias, rows, kind),
        }
    }
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

/// Whether `--precision auto` takes bf16 products on this CPU ([`fastest_precision`]).
pub fn bf16_is_fast() -> bool {
    fastest_precision().0 == Precision::Bf16
}

/// The bf16 kernel this CPU runs: `amx`, `avx512-bf16`, `avx2` or `portable`.
pub fn bf16_kernel_name() -> &'static str {
    bf16_kernel().name()
}

/// What `auto` knows of the CPU: what it is, never how fast it ran a moment ago (a start-up timing
/// moved with the machine's load and flipped the choice between runs of one command).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuFacts<'a> {
    /// CPUID's vendor string (`AuthenticAMD`, `GenuineIntel`).
    pub vendor: &'a str,
    /// CPUID's display family (AMD: 0x19 Zen 3/4, 0x1a Zen 5).
    pub family: u32,
    /// The kernel bf16 products run on here ([`bf16_kernel`]: the best this CPU has, or
    /// `ANGLE_BF16_KERNEL`'s).
    pub kernel: Bf16Kernel,
    /// Whether `ANGLE_BF16_KERNEL` chose that kernel.
    pub forced: bool,
}

/// `--precision auto` on the CPU, from what the CPU is; with the line to print, which says why.
/// bf16 products where their kernel is known to beat our f32 products on this kind of core:
///
/// | kernel      | CPU                  | precision | why                                                     |
/// |-------------|----------------------|-----------|---------------------------------------------------------|
/// | amx         | Intel with AMX       | bf16      | 2.9–4.2× our f32 products (README)                     |
/// | avx512-bf16 | AMD (Zen 4, Zen 5)   | bf16      | a `vdpbf16ps` does two f32 FMAs' multiply-adds at their rate (1.6× end to end on Zen 4), once `self_check` passes |
/// | avx512-bf16 | Intel, other vendors | f32       | 0.5–1.1× our f32 on Intel Xeons: no gain                |
/// | avx2        | any                  | f32       | widening bf16 loses to faer's f32                       |
/// | portable    | any                  | f32       | the f32 product plus the rounding                       |
///
/// `self_check` ([`angle_tensor::cpu::bf16_self_check`] of the AVX512-BF16 kernel, deterministic: no
/// timing) is called only on the row that would take that kernel.
pub fn auto_precision_for(
    cpu: &CpuFacts<'_>,
    self_check: impl FnOnce() -> std::result::Result<f64, String>,
) -> (Precision, String) {
    let forced = if cpu.forced {
        format!("ANGLE_BF16_KERNEL={}", cpu.kernel.name())
    } else {
        String::new()
    };
    let f32_because = |why: &str| (Precision::F32, format!("precision: f32 ({why})"));
    match cpu.kernel {
        Bf16Kernel::Amx => (Precision::Bf16, "precision: bf16 (AMX)".into()),
        Bf16Kernel::Avx512Bf16 if cpu.vendor == "AuthenticAMD" => {
            let core = match cpu.family {
                0x19 => "Zen 4".to_string(),
                0x1a => "Zen 5".to_string(),
                f => format!("family {f:#x}"),
            };
            match self_check() {
                Ok(_) => (
                    Precision::Bf16,
                    format!("precision: bf16 (avx512-bf16 on AMD {core}: 2 bf16 dot products per f32 FMA)"),
                ),
                Err(e) => f32_because(&format!(
                    "the avx512-bf16 kernel failed its self-check on this CPU: {e}"
                )),
            }
        }
        Bf16Kernel::Avx512Bf16 => {
            let who = match cpu.vendor {
                "GenuineIntel" => "Intel".to_string(),
                v => format!("a {v:?} CPU"),
            };
            f32_because(&format!(
                "avx512-bf16 on {who}: its bf16 dot products do not outrun our f32 FMAs there{}",
                if forced.is_empty() {
                    String::new()
                } else {
                    format!("; {forced}")
                }
            ))
        }
        Bf16Kernel::Avx2 if cpu.forced => f32_because(&format!("{forced}: bf16 products would be slower")),
        Bf16Kernel::Avx2 => f32_because("AVX2 only: bf16 products would be slower"),
        Bf16Kernel::Portable if cpu.forced => {
            f32_because(&format!("{forced}: bf16 products would be slower"))
        }
        Bf16Kernel::Portable => f32_because("no AVX2 or bf16 instructions: bf16 products would be slower"),
    }
}

/// What `--precision auto` means on this CPU ([`auto_precision_for`] of its vendor, family and
/// kernel): the same on every run of one binary on one machine, whatever else runs. Decided once per
/// process; with the line to print (`precision: bf16 (AMX)`).
pub fn fastest_precision() -> (Precision, String) {
    static P: std::sync::OnceLock<(Precision, String)> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        let model = angle_tensor::cpu::cpu_model();
        let kernel = bf16_kernel();
        let forced = matches!(angle_tensor::cpu::requested_bf16_kernel(), Ok(Some(k)) if k == kernel);
        let cpu = CpuFacts {
            vendor: &model.vendor,
            family: model.family,
            kernel,
            forced,
        };
        auto_precision_for(&cpu, || {
            angle_tensor::cpu::bf16_self_check(Bf16Kernel::Avx512Bf16)
        })
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(vendor: &str, family: u32, kernel: Bf16Kernel, forced: bool) -> CpuFacts<'_> {
        CpuFacts {
            vendor,
            family,
            kernel,
            forced,
        }
    }

    /// Every row of the table, with the reason printed and whether the self-check was asked.
    #[test]
    fn decision_table() {
        use Bf16Kernel::*;
        use Precision::*;
        let passes = || Ok(3e-7);
        let fails = || Err("relative error 1e-2".to_string());
        // the CPU, its self-check's result, the precision, the line printed, whether the check was asked
        type Row<'a> = (
            CpuFacts<'a>,
            std::result::Result<f64, String>,
            Precision,
            &'a str,
            bool,
        );
        let rows: [Row<'_>; 12] = [
            (
                facts("GenuineIntel", 6, Amx, false),
                passes(),
                Bf16,
                "precision: bf16 (AMX)",
                false,
            ),
            (
                facts("GenuineIntel", 6, Amx, true),
                passes(),
                Bf16,
                "precision: bf16 (AMX)",
                false,
            ),
            (
                facts("AuthenticAMD", 0x19, Avx512Bf16, false),
                passes(),
                Bf16,
                "precision: bf16 (avx512-bf16 on AMD Zen 4: 2 bf16 dot products per f32 FMA)",
                true,
            ),
            (
                facts("AuthenticAMD", 0x1a, Avx512Bf16, false),
                passes(),
                Bf16,
                "precision: bf16 (avx512-bf16 on AMD Zen 5: 2 bf16 dot products per f32 FMA)",
                true,
            ),
            (
                facts("AuthenticAMD", 0x1b, Avx512Bf16, false),
                passes(),
                Bf16,
                "precision: bf16 (avx512-bf16 on AMD family 0x1b: 2 bf16 dot products per f32 FMA)",
                true,
            ),
            (
                facts("AuthenticAMD", 0x19, Avx512Bf16, false),
                fails(),
                F32,
                "precision: f32 (the avx512-bf16 kernel failed its self-check on this CPU: relative error 1e-2)",
                true,
            ),
            (
                facts("GenuineIntel", 6, Avx512Bf16, false),
                passes(),
                F32,
                "precision: f32 (avx512-bf16 on Intel: its bf16 dot products do not outrun our f32 FMAs there)",
                false,
            ),
            (
                facts("GenuineIntel", 6, Avx512Bf16, true),
                passes(),
                F32,
                "precision: f32 (avx512-bf16 on Intel: its bf16 dot products do not outrun our f32 FMAs there; ANGLE_BF16_KERNEL=avx512-bf16)",
                false,
            ),
            (
                facts("HygonGenuine", 0x18, Avx512Bf16, false),
                passes(),
                F32,
                "precision: f32 (avx512-bf16 on a \"HygonGenuine\" CPU: its bf16 dot products do not outrun our f32 FMAs there)",
                false,
            ),
            (
                facts("AuthenticAMD", 0x19, Avx2, false),
                passes(),
                F32,
                "precision: f32 (AVX2 only: bf16 products would be slower)",
                false,
            ),
            (
                facts("AuthenticAMD", 0x19, Avx2, true),
                passes(),
                F32,
                "precision: f32 (ANGLE_BF16_KERNEL=avx2: bf16 products would be slower)",
                false,
            ),
            (
                facts("GenuineIntel", 6, Portable, false),
                passes(),
                F32,
                "precision: f32 (no AVX2 or bf16 instructions: bf16 products would be slower)",
                false,
            ),
        ];
        for (cpu, check, want, line, asks) in rows {
            let asked = std::cell::Cell::new(false);
            let got = auto_precision_for(&cpu, || {
                asked.set(true);
                check
            });
            assert_eq!(got, (want, line.to_string()), "{cpu:?}");
            assert_eq!(asked.get(), asks, "self-check asked: {cpu:?}");
        }
        let forced_portable = auto_precision_for(&facts("AuthenticAMD", 0x19, Portable, true), passes);
        assert_eq!(
            forced_portable,
            (
                F32,
                "precision: f32 (ANGLE_BF16_KERNEL=portable: bf16 products would be slower)".into()
            )
        );
    }

    /// This machine: the decision is its row of the table, the same on every call.
    #[test]
    fn this_cpu_follows_its_row() {
        let (p, line) = fastest_precision();
        let kernel = bf16_kernel();
        let amd = angle_tensor::cpu::cpu_model().vendor == "AuthenticAMD";
        let want_bf16 = kernel == Bf16Kernel::Amx
            || (kernel == Bf16Kernel::Avx512Bf16
                && amd
                && angle_tensor::cpu::bf16_self_check(kernel).is_ok());
        assert_eq!(p == Precision::Bf16, want_bf16, "{line}");
        assert!(
            line.starts_with(if want_bf16 {
                "precision: bf16 ("
            } else {
                "precision: f32 ("
            }),
            "{line}"
        );
        assert_eq!(fastest_precision(), (p, line));
        assert_eq!(bf16_is_fast(), want_bf16);
    }
}
