//! `--precision auto`, the default of `encode`, `eval` and `similarity`: on the CPU the fastest
//! precision whose accuracy is established (bf16 only where its kernel beats our f32 products
//! here, [`angle_encoder::fastest_precision`]), printed once; on a GPU the device's default.

use std::fmt;
use std::str::FromStr;

use crate::device::{Device, Precision};
use crate::error::Result;

/// A `--precision` value of the inference commands: `auto` or a fixed precision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CliPrecision {
    #[default]
    Auto,
    Fixed(Precision),
}

impl FromStr for CliPrecision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(CliPrecision::Auto),
            _ => s
                .parse()
                .map(CliPrecision::Fixed)
                .map_err(|e| format!("{e}, or auto")),
        }
    }
}

impl fmt::Display for CliPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliPrecision::Auto => f.write_str("auto"),
            CliPrecision::Fixed(p) => p.fmt(f),
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
        (d, CliPrecision::Auto) => Ok((d.with_precision(None)?, None)),
        (d, CliPrecision::Fixed(p)) => Ok((d.with_precision(Some(p))?, None)),
    }
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

    #[test]
    fn cpu_choices() {
        let (d, p) = resolve(Device::Cpu, None).unwrap();
        assert_eq!(d, Device::Cpu);
        let want = angle_encoder::fastest_precision().0;
        assert_eq!(p, Some(want));
        let (_, p) = resolve(Device::Cpu, Some(CliPrecision::Fixed(Precision::F32))).unwrap();
        assert_eq!(p, Some(angle_encoder::Precision::F32));
        assert!(resolve(Device::Cpu, Some(CliPrecision::Fixed(Precision::Tf32))).is_err());
    }
}
