//! The precision policy: the one place `main.rs`, the trainer and the embedder ask which arithmetic
//! a run computes in. There is one type, [`Precision`] (angle-tensor's, shared by every model and
//! device); this module decides what `--precision auto` means (from what the CPU is and which
//! implementation runs the model), what each device and mode offers, and refuses the rest by
//! option name.
//!
//! | runs on | auto | also offered |
//! | --- | --- | --- |
//! | GPU (BERT family) | tf32 | f32, bf16 |
//! | CPU, BERT family (angle-encoder) | bf16 where a bf16 kernel beats f32 (AMX; AVX512-BF16 on AMD), else f32 | f32, bf16; int8 to encode |
//! | CPU, decoder family | f32 (bf16's effect on a real model's scores is not measured yet) | bf16; int8 to encode and as LoRA's frozen base (`--load-kbit 8`) |
//! | CPU, angle-models' blocks (ModernBERT, ELECTRA, ALBERT, LoRA or checkpointing on the BERT family) | f32 | bf16 to encode and for LoRA's frozen base; int8 to encode and as LoRA's frozen base (`--load-kbit 8`) |

use std::fmt;
use std::path::Path;
use std::str::FromStr;

pub use angle_tensor::Precision;

use crate::config::TrainConfig;
use crate::device::Device;
use crate::error::{Result, TrainError};

/// A `--precision` value: `auto` (the policy's choice, printed) or exactly one precision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Requested {
    #[default]
    Auto,
    Exactly(Precision),
}

impl FromStr for Requested {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Requested::Auto),
            _ => s
                .parse()
                .map(Requested::Exactly)
                .map_err(|e| format!("{e}, or auto")),
        }
    }
}

impl fmt::Display for Requested {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requested::Auto => f.write_str("auto"),
            Requested::Exactly(p) => p.fmt(f),
        }
    }
}

/// Which CPU implementation runs a model folder: what decides the precisions it offers. The loader
/// ([`crate::embed::load_backbone`]) routes by the same answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuPath {
    /// angle-encoder: BERT, RoBERTa, XLM-R without LoRA or checkpointing.
    Encoder,
    /// angle-decoder: LLaMA, Mistral, Qwen2, Qwen3 (with or without LoRA).
    Decoder,
    /// angle-models' blocks: ModernBERT, ELECTRA, ALBERT, and the BERT family with LoRA or
    /// gradient checkpointing (f32; bf16 or int8 copies of weights that do not train).
    Blocks,
}

impl CpuPath {
    /// The path of `dir` (a model folder or a peft adapter on one; `base`: `--base-model`), with
    /// `blocks_options`: LoRA or gradient checkpointing asked for.
    pub fn of(dir: &Path, blocks_options: bool, base: Option<&Path>) -> Result<Self> {
        Ok(if crate::blocks::uses_blocks(dir, blocks_options, base)? {
            CpuPath::Blocks
        } else if crate::decoder::is_decoder_folder(dir)? {
            CpuPath::Decoder
        } else {
            CpuPath::Encoder
        })
    }

    fn name(self) -> &'static str {
        match self {
            CpuPath::Encoder => "the BERT family",
            CpuPath::Decoder => "the decoder family",
            CpuPath::Blocks => {
                "angle-models' blocks (ModernBERT, ELECTRA, ALBERT, LoRA or checkpointing on BERT)"
            }
        }
    }
}

/// `--device` with the GPU's precision when one is asked for: a precision the device lacks (tf32 on
/// the CPU, int8 on the GPU) is refused here, before anything is read. `auto` keeps the device's
/// default (tf32 on cuda).
pub fn device(device: Device, requested: Requested) -> Result<Device> {
    match (device, requested) {
        (d, Requested::Auto) => Ok(d),
        (Device::Cpu, Requested::Exactly(Precision::Tf32)) => Err(TrainError::Config(
            "--precision tf32 needs --device cuda (the CPU computes in f32, bf16 or int8)".into(),
        )),
        (Device::Cpu, Requested::Exactly(_)) => Ok(Device::Cpu),
        (Device::Cuda(_), Requested::Exactly(Precision::Int8)) => Err(TrainError::Config(
            "--precision int8 runs on the CPU (--device cpu); the GPU computes in f32, tf32 or bf16".into(),
        )),
        (Device::Cuda(_), Requested::Exactly(p)) => Ok(Device::Cuda(p)),
    }
}

/// The CPU products of `encode`, `eval` and `similarity` on `path` (printed when `auto` chose, or
/// when a kernel makes the choice slow). `load_kbit` (`--load-kbit 8`) is `--precision int8`.
pub fn for_encoding(requested: Requested, load_kbit: Option<u8>, path: CpuPath) -> Result<Precision> {
    let requested = match (load_kbit, requested) {
        (None, r) => r,
        (Some(8), Requested::Auto | Requested::Exactly(Precision::Int8)) => {
            Requested::Exactly(Precision::Int8)
        }
        (Some(8), Requested::Exactly(p)) => {
            return Err(TrainError::Config(format!(
                "--load-kbit 8 is --precision int8; --precision {p} says otherwise"
            )));
        }
        (Some(4), _) => {
            return Err(TrainError::Config(
                "--load-kbit 4: 4-bit weights are not offered yet; --load-kbit 8 is".into(),
            ));
        }
        (Some(k), _) => {
            return Err(TrainError::Config(format!(
                "--load-kbit {k}: 8 is the one offered"
            )));
        }
    };
    let p = match (requested, path) {
        (Requested::Auto, CpuPath::Encoder) => {
            let (choice, line) = angle_encoder::fastest_precision();
            eprintln!("{line}");
            return Ok(choice);
        }
        (Requested::Auto, _) => return Ok(Precision::F32),
        (Requested::Exactly(p), _) => p,
    };
    offered(p, path, false)?;
    match p {
        Precision::Bf16 => note_slow_bf16(),
        Precision::Int8 => eprintln!(
            "precision: int8 ({} kernel)",
            angle_tensor::cpu::int8_kernel().name()
        ),
        _ => {}
    }
    Ok(p)
}

/// The CPU products of a training step on `config`'s model. `--load-kbit 8` gives [`Precision::Int8`]
/// (the frozen base's products; LoRA, norms, attention and AdamW stay f32). `auto`: a resumed run keeps
/// the products it trained with (`config.cpu_precision`), a new one takes bf16 where a bf16 kernel beats
/// f32 on this CPU for the BERT family (the default recipe scores the same with them: 85.90 / 87.12 on
/// AMX and on AVX512-BF16), else f32; printed. The trainer asks again with the choice (`Exactly`), so that a
/// library caller's f32 on an 8-bit base is int8 too.
pub fn for_training(requested: Requested, config: &TrainConfig, resumed: bool) -> Result<Precision> {
    if config.load_kbit.is_some() {
        return match requested {
            Requested::Exactly(Precision::Bf16) => Err(TrainError::Config(
                "--load-kbit 8 with --precision bf16: the frozen base is either int8 or bf16 (leave one out)"
                    .into(),
            )),
            _ => Ok(Precision::Int8),
        };
    }
    // asked only where it decides (a resumed run's model folder need not exist any more)
    let path = || {
        let dir = crate::hub::model_dir(&config.model)?;
        CpuPath::of(&dir, config.lora.is_some() || config.gradient_checkpointing, None)
    };
    match requested {
        Requested::Exactly(Precision::F32) => Ok(Precision::F32),
        Requested::Exactly(p) => {
            // (the trainer says which bf16 kernel runs, and whether it beats f32 here)
            let path = path()?;
            offered(p, path, true)?;
            if path == CpuPath::Blocks && p == Precision::Bf16 && config.lora.is_none() {
                return Err(TrainError::Config(format!(
                    "--precision bf16: {} train in f32 when every weight trains; with --lora-r the frozen base runs \
                     in bf16",
                    path.name()
                )));
            }
            Ok(p)
        }
        Requested::Auto if resumed => Ok(config.cpu_precision.unwrap_or_default()),
        Requested::Auto if path()? == CpuPath::Encoder => {
            let (choice, line) = angle_encoder::fastest_precision();
            eprintln!("{line} for the training step's products (--precision f32 to train in f32)");
            Ok(choice)
        }
        Requested::Auto => Ok(Precision::F32),
    }
}

/// The CPU products of validation (`--valid-precision`; `training`: the run's own, from [`for_training`]). The
/// BERT family's encoder keeps separate copies for eval-mode forwards, so it validates in f32 (the default),
/// bf16 or int8 whatever it trains with (`int8` shows what a run's checkpoints will score when encoded in int8).
/// The decoder family and the blocks run one set of products in both modes: they validate in the training
/// products, and refuse any other.
pub fn for_validation(config: &TrainConfig, training: Precision) -> Result<Precision> {
    let path = || {
        let dir = crate::hub::model_dir(&config.model)?;
        CpuPath::of(&dir, config.lora.is_some() || config.gradient_checkpointing, None)
    };
    match config.valid_precision {
        Some(Precision::Tf32) => Err(TrainError::Config(
            "--valid-precision tf32: a GPU precision; the CPU validates in f32, bf16 or int8".into(),
        )),
        p if path()? == CpuPath::Encoder => Ok(p.unwrap_or(Precision::F32)),
        None => Ok(training),
        Some(p) if p == training => Ok(p),
        Some(p) => Err(TrainError::Config(format!(
            "--valid-precision {p}: {} run one set of products in training and validation ({training} in this run); \
             leave the option out",
            path()?.name()
        ))),
    }
}

/// Refuses `p` where `path` does not offer it (`training`: a training step rather than encoding).
fn offered(p: Precision, path: CpuPath, training: bool) -> Result<()> {
    let refuse = |why: &str| Err(TrainError::Config(format!("--precision {p}: {why}")));
    match (p, path) {
        (Precision::F32, _) => Ok(()),
        (Precision::Tf32, _) => {
            refuse("a GPU precision (--device cuda); the CPU computes in f32, bf16 or int8")
        }
        (Precision::Int8, _) if training => refuse(
            "int8 products encode (encode, eval, similarity); a LoRA run holds its frozen base in int8 with --load-kbit 8",
        ),
        (Precision::Bf16 | Precision::Int8, _) => Ok(()),
    }
}

/// Says so when bf16 products run no faster than f32 here (asked for explicitly: kept).
fn note_slow_bf16() {
    if !angle_encoder::bf16_is_fast() {
        eprintln!(
            "note: no bf16 kernel faster than f32 on this CPU ({}): bf16 products run at f32 speed or slower (same rounding)",
            angle_tensor::cpu::bf16_kernel().name()
        );
    }
}

/// Refuses an `ANGLE_BF16_KERNEL` that names no kernel or one this CPU lacks (the library only
/// warns and keeps its own choice: a run would not be what was asked for).
pub fn check_bf16_kernel_env() -> Result<()> {
    angle_tensor::cpu::requested_bf16_kernel()
        .map(|_| ())
        .map_err(|why| {
            let (present, _) = angle_tensor::cpu::bf16_kernels_present();
            let names: Vec<_> = present.iter().map(|k| k.name()).collect();
            TrainError::Config(format!("{why} (this CPU has: {}; or unset it)", names.join(", ")))
        })
}

/// serde for an optional [`Precision`] as its name (`"f32"`, `"bf16"`, …; absent or `null`: none),
/// the form `angle_config.json` has always recorded.
pub mod by_name {
    use super::Precision;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &Option<Precision>, s: S) -> Result<S::Ok, S::Error> {
        match p {
            Some(p) => s.serialize_str(p.name()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Precision>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_auto_and_exact() {
        assert_eq!("auto".parse::<Requested>(), Ok(Requested::Auto));
        assert_eq!("f32".parse::<Requested>(), Ok(Requested::Exactly(Precision::F32)));
        assert!("f16".parse::<Requested>().unwrap_err().contains("or auto"));
    }

    #[test]
    fn devices_refuse_what_they_lack() {
        let cuda = Device::Cuda(Precision::Tf32);
        assert!(device(Device::Cpu, Requested::Exactly(Precision::Tf32)).is_err());
        assert_eq!(
            device(Device::Cpu, Requested::Exactly(Precision::Bf16)).unwrap(),
            Device::Cpu
        );
        let e = device(cuda, Requested::Exactly(Precision::Int8)).unwrap_err();
        assert!(e.to_string().contains("int8"), "{e}");
        assert_eq!(
            device(cuda, Requested::Exactly(Precision::Bf16)).unwrap(),
            Device::Cuda(Precision::Bf16)
        );
        assert_eq!(device(cuda, Requested::Auto).unwrap(), cuda);
    }

    /// `auto` on the BERT family is bf16 exactly on AMX and on AMD's AVX512-BF16 (the table restated
    /// from the CPU's identity, not from the function the policy calls); the decoder family and the
    /// blocks stay f32; exact requests are kept (bf16 even where it is slow) or refused by path.
    #[test]
    fn cpu_choices() {
        use angle_tensor::cpu::{Bf16Kernel, bf16_kernel, bf16_self_check, cpu_model};
        let bf16_here = match bf16_kernel() {
            Bf16Kernel::Amx => true,
            Bf16Kernel::Avx512Bf16 => {
                cpu_model().vendor == "AuthenticAMD" && bf16_self_check(Bf16Kernel::Avx512Bf16).is_ok()
            }
            Bf16Kernel::Avx2 | Bf16Kernel::Portable => false,
        };
        let want = if bf16_here {
            Precision::Bf16
        } else {
            Precision::F32
        };
        let auto = |path| for_encoding(Requested::Auto, None, path).unwrap();
        assert_eq!(auto(CpuPath::Encoder), want, "kernel {}", bf16_kernel().name());
        assert_eq!(auto(CpuPath::Decoder), Precision::F32);
        assert_eq!(auto(CpuPath::Blocks), Precision::F32);
        let exactly = |p, path| for_encoding(Requested::Exactly(p), None, path);
        for path in [CpuPath::Encoder, CpuPath::Decoder] {
            for p in [Precision::F32, Precision::Bf16, Precision::Int8] {
                assert_eq!(exactly(p, path).unwrap(), p);
            }
            assert!(exactly(Precision::Tf32, path).is_err());
        }
        for p in [Precision::Bf16, Precision::Int8] {
            assert_eq!(exactly(p, CpuPath::Blocks).unwrap(), p);
        }
        assert!(exactly(Precision::Tf32, CpuPath::Blocks).is_err());
        assert_eq!(
            for_encoding(Requested::Auto, Some(8), CpuPath::Encoder).unwrap(),
            Precision::Int8
        );
        assert!(for_encoding(Requested::Exactly(Precision::Bf16), Some(8), CpuPath::Decoder).is_err());
        assert!(for_encoding(Requested::Auto, Some(4), CpuPath::Decoder).is_err());
        assert!(offered(Precision::Int8, CpuPath::Encoder, true).is_err());
    }

    #[test]
    fn names_in_json() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct T {
            #[serde(default, with = "by_name")]
            p: Option<Precision>,
        }
        let t = T {
            p: Some(Precision::Bf16),
        };
        let s = serde_json::to_string(&t).unwrap();
        assert_eq!(s, r#"{"p":"bf16"}"#);
        assert_eq!(serde_json::from_str::<T>(&s).unwrap(), t);
        assert_eq!(serde_json::from_str::<T>("{}").unwrap(), T { p: None });
        assert!(serde_json::from_str::<T>(r#"{"p":"f16"}"#).is_err());
    }
}
