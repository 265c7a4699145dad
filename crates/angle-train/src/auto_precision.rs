//! `--precision auto`, the default of `encode`, `eval` and `similarity`: on the CPU the fastest
//! precision whose accuracy is established, decided from what the CPU is (bf16 on AMX and on AMD's
//! AVX512-BF16 cores, else f32: [`angle_encoder::auto_precision_for`]), printed once with the
//! reason; on a GPU the device's default.

use std::fmt;
use std::str::FromStr;

use crate::device::{Device, Precision};
use crate::error::{Result, TrainError};

/// A `--precision` value of the inference commands: `auto`, a fixed precision, or int8 products
/// (the CPU's BERT family; never chosen by `auto`: it changes results).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CliPrecision {
    #[default]
    Auto,
    Fixed(Precision),
    Int8,
}

impl FromStr for CliPrecision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(CliPrecision::Auto),
            "int8" => Ok(CliPrecision::Int8),
            _ => s
                .parse()
                .map(CliPrecision::Fixed)
                .map_err(|e| format!("{e}, or auto, or int8")),
        }
    }
}

impl fmt::Display for CliPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliPrecision::Auto => f.write_str("auto"),
            CliPrecision::Fixed(p) => p.fmt(f),
            CliPrecision::Int8 => f.write_str("int8"),
        }
    }
}

/// The device to run on and, on the CPU, the encoder's inference precision; prints the CPU's
/// choice (`precision: bf16 (amx)`) when `auto` made it. A precision the device lacks is an error.
pub fn resolve(
    device: Device,
    p: Option<CliPrecision>,
) -> Result<(Device, Option<angle_encoder::Precision>)> {
    let p = p.unwrap_or_default();
    match (device, p) {
        (Device::Cpu, CliPrecision::Auto) => {
            let (choice, line) = angle_encoder::fastest_precision();
            eprintln!("{line}");
            Ok((Device::Cpu, Some(choice)))
        }
        (Device::Cpu, CliPrecision::Fixed(Precision::Bf16)) => {
            if !angle_encoder::bf16_is_fast() {
                eprintln!(
                    "note: no bf16 kernel faster than f32 on this CPU ({}): bf16 products run at f32 speed or slower (same rounding)",
                    angle_tensor::cpu::bf16_kernel().name()
                );
            }
            Ok((Device::Cpu, Some(angle_encoder::Precision::Bf16)))
        }
        (Device::Cpu, CliPrecision::Fixed(Precision::F32)) => {
            Ok((Device::Cpu, Some(angle_encoder::Precision::F32)))
        }
        (Device::Cpu, CliPrecision::Int8) => {
            eprintln!(
                "precision: int8 ({} kernel)",
                angle_tensor::cpu::int8_kernel().name()
            );
            Ok((Device::Cpu, Some(angle_encoder::Precision::Int8)))
        }
        (Device::Cuda(_), CliPrecision::Int8) => Err(TrainError::Config(
            "--precision int8 runs on the CPU (--device cpu); the GPU encodes in f32, tf32 or bf16".into(),
        )),
        (d, CliPrecision::Auto) => Ok((d.with_precision(None)?, None)),
        (d, CliPrecision::Fixed(p)) => Ok((d.with_precision(Some(p))?, None)),
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

/// Whether the trainer's validation on the CPU runs in bf16 (`auto`'s choice here; printed).
pub fn validation_bf16() -> bool {
    let (choice, line) = angle_encoder::fastest_precision();
    eprintln!("validation {line}");
    choice == angle_encoder::Precision::Bf16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_auto_and_fixed() {
        assert_eq!("auto".parse::<CliPrecision>(), Ok(CliPrecision::Auto));
        assert_eq!(
            "f32".parse::<CliPrecision>(),
            Ok(CliPrecision::Fixed(Precision::F32))
        );
        assert!("f16".parse::<CliPrecision>().unwrap_err().contains("or auto"));
    }

    /// `auto` on this CPU is bf16 exactly on AMX and on AMD's AVX512-BF16 (the table restated from
    /// the CPU's identity, not from the function `resolve` calls); fixed precisions are kept as
    /// asked, bf16 even where it is slow; tf32 is no CPU precision.
    #[test]
    fn cpu_choices() {
        use angle_tensor::cpu::{Bf16Kernel, bf16_kernel, bf16_self_check, cpu_model};
        let (d, p) = resolve(Device::Cpu, None).unwrap();
        assert_eq!(d, Device::Cpu);
        let bf16_here = match bf16_kernel() {
            Bf16Kernel::Amx => true,
            Bf16Kernel::Avx512Bf16 => {
                cpu_model().vendor == "AuthenticAMD" && bf16_self_check(Bf16Kernel::Avx512Bf16).is_ok()
            }
            Bf16Kernel::Avx2 | Bf16Kernel::Portable => false,
        };
        let want = if bf16_here {
            angle_encoder::Precision::Bf16
        } else {
            angle_encoder::Precision::F32
        };
        assert_eq!(p, Some(want), "kernel {}", bf16_kernel().name());
        assert_eq!(
            resolve(Device::Cpu, Some(CliPrecision::Auto)).unwrap(),
            (Device::Cpu, Some(want))
        );
        let (_, p) = resolve(Device::Cpu, Some(CliPrecision::Fixed(Precision::F32))).unwrap();
        assert_eq!(p, Some(angle_encoder::Precision::F32));
        let (_, p) = resolve(Device::Cpu, Some(CliPrecision::Fixed(Precision::Bf16))).unwrap();
        assert_eq!(p, Some(angle_encoder::Precision::Bf16));
        assert!(resolve(Device::Cpu, Some(CliPrecision::Fixed(Precision::Tf32))).is_err());
    }
}
