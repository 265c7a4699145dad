//! `cargo xtask kernels [--require NAME,...]`: what this CPU is and which bf16 (and int8) kernels it runs.
//! Prints the CPU's model and the flags the kernels depend on, then every bf16 kernel: absent
//! (with the features it needs), or present and checked against f64 sums of the same bf16 values
//! (`bf16_self_check`: forward, accumulate, backward, fused GELU); then what `--precision auto`
//! takes here and why. The kernel tests skip a kernel the CPU lacks; this command is where a
//! missing one fails: `--require amx` (or `ANGLE_BF16_KERNEL=amx`, which asks for it) exits
//! non-zero on a CPU without AMX, naming the kernel. No timing: speed is the benches'
//! (`cargo run --release -p angle-tensor --example bf16_timing`).

use std::fmt::Write as _;

use angle_tensor::cpu::{
    Bf16Kernel, Int8Kernel, bf16_self_check, cpu_flags, cpu_model, int8_kernel, int8_self_check,
};
use anyhow::bail;

const USAGE: &str = "usage: cargo xtask kernels [--require KERNEL[,KERNEL...]]
  --require   fail unless each named kernel is present and passes its check
              (amx, avx512-bf16, avx2, portable; ANGLE_BF16_KERNEL, when set, is required too)";

pub fn run(args: &[String]) -> anyhow::Result<()> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
    let mut required = parse(args)?;
    if let Some(k) = env_kernel(std::env::var("ANGLE_BF16_KERNEL").ok().as_deref())? {
        required.push((k, "ANGLE_BF16_KERNEL"));
    }
    let (text, failures) = report(&required);
    print!("{text}");
    println!("{}", angle_encoder::fastest_precision().1);
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}

/// The kernels `--require` names (each with where it was asked: `--require`).
fn parse(args: &[String]) -> anyhow::Result<Vec<(Bf16Kernel, &'static str)>> {
    let (mut names, mut unknown) = (Vec::new(), Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--require" {
            match it.next() {
                Some(v) => names.push(v.clone()),
                None => bail!("--require needs a kernel name\n\n{USAGE}"),
            }
        } else if let Some(v) = a.strip_prefix("--require=") {
            names.push(v.to_string());
        } else {
            unknown.push(a.clone());
        }
    }
    crate::args::reject_unknown("kernels", &unknown, USAGE)?;
    let mut out = Vec::new();
    for name in names.iter().flat_map(|v| v.split(',')).map(str::trim) {
        out.push((kernel_named(name, "--require")?, "--require"));
    }
    Ok(out)
}

/// The kernel `ANGLE_BF16_KERNEL` asks for (`None` unset or empty); an unknown name is an error.
fn env_kernel(value: Option<&str>) -> anyhow::Result<Option<Bf16Kernel>> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        Some(name) => Ok(Some(kernel_named(name, "ANGLE_BF16_KERNEL")?)),
        None => Ok(None),
    }
}

fn kernel_named(name: &str, from: &str) -> anyhow::Result<Bf16Kernel> {
    match Bf16Kernel::from_name(name) {
        Some(k) => Ok(k),
        None => {
            let names: Vec<_> = Bf16Kernel::ALL.iter().map(|k| k.name()).collect();
            bail!(
                "{from}: unknown bf16 kernel {name:?} (one of {})",
                names.join(", ")
            )
        }
    }
}

/// The printed report, and one line per failure: a present kernel whose check failed, or a
/// required kernel this CPU lacks.
fn report(required: &[(Bf16Kernel, &str)]) -> (String, Vec<String>) {
    let m = cpu_model();
    let mut text = String::new();
    let mut failures = Vec::new();
    let _ = writeln!(
        text,
        "cpu: {} ({}, family {:#x}, model {:#x}); {} threads",
        if m.brand.is_empty() { "?" } else { &m.brand },
        m.vendor,
        m.family,
        m.model,
        rayon::current_num_threads()
    );
    let flags: Vec<String> = cpu_flags()
        .iter()
        .map(|&(name, on)| format!("{name} {}", if on { "yes" } else { "no" }))
        .collect();
    let _ = writeln!(text, "flags: {}", flags.join(", "));
    let _ = writeln!(text, "bf16 kernels (fastest first):");
    for k in Bf16Kernel::ALL {
        let asked: Vec<&str> = required
            .iter()
            .filter(|(r, _)| *r == k)
            .map(|(_, from)| *from)
            .collect();
        let mark = if asked.is_empty() {
            String::new()
        } else {
            format!(" [required by {}]", asked.join(", "))
        };
        let line = if !k.available() {
            if !asked.is_empty() {
                failures.push(format!(
                    "the {} kernel was required ({}) but this CPU lacks {}",
                    k.name(),
                    asked.join(", "),
                    k.needs()
                ));
            }
            format!("absent: needs {}", k.needs())
        } else {
            match bf16_self_check(k) {
                Ok(e) => format!(
                    "checked: within {e:.1e} relative of f64 sums (forward, accumulate, backward); fused GELU bit-identical"
                ),
                Err(why) => {
                    failures.push(format!("the {} kernel failed its check: {why}", k.name()));
                    format!("FAILED: {why}")
                }
            }
        };
        let _ = writeln!(text, "  {:<12} {line}{mark}", k.name());
    }
    // int8 products (`--precision int8`): informational, nothing here is required.
    let _ = writeln!(
        text,
        "int8 kernels (fastest first; `--precision int8` takes {}):",
        int8_kernel().name()
    );
    for k in Int8Kernel::ALL {
        let line = if !k.available() {
            format!("absent: needs {}", k.needs())
        } else {
            match int8_self_check(k) {
                Ok(()) => "checked: equal to i64 sums of the same int8 operands".to_string(),
                Err(why) => {
                    failures.push(format!("the int8 {} kernel failed its check: {why}", k.name()));
                    format!("FAILED: {why}")
                }
            }
        };
        let _ = writeln!(text, "  {:<12} {line}", k.name());
    }
    (text, failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_required_kernels() {
        let got = parse(&strings(&["--require", "amx,AVX2", "--require=portable"])).unwrap();
        assert_eq!(
            got.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            [Bf16Kernel::Amx, Bf16Kernel::Avx2, Bf16Kernel::Portable]
        );
        assert!(parse(&[]).unwrap().is_empty());
        let e = parse(&strings(&["--require", "avx3"])).unwrap_err().to_string();
        assert!(e.contains("\"avx3\"") && e.contains("avx512-bf16"), "{e}");
        let e = parse(&strings(&["--require"])).unwrap_err().to_string();
        assert!(e.contains("needs a kernel name"), "{e}");
        let e = parse(&strings(&["--verbose"])).unwrap_err().to_string();
        assert!(e.contains("--verbose"), "{e}");
        assert_eq!(env_kernel(Some(" ")).unwrap(), None);
        assert_eq!(env_kernel(Some("amx")).unwrap(), Some(Bf16Kernel::Amx));
        assert!(env_kernel(Some("tpu")).is_err());
    }

    /// Requiring a kernel fails exactly where the CPU lacks it, naming it; every kernel is listed,
    /// and every present one checked.
    #[test]
    fn a_required_kernel_this_cpu_lacks_fails() {
        for k in Bf16Kernel::ALL {
            let (text, failures) = report(&[(k, "--require")]);
            for other in Bf16Kernel::ALL {
                assert!(text.contains(&format!("  {:<12} ", other.name())), "{text}");
            }
            assert_eq!(
                text.matches("checked: within").count(),
                angle_tensor::cpu::bf16_kernels_present().0.len()
            );
            assert_eq!(
                text.matches("checked: equal to i64").count(),
                angle_tensor::cpu::int8_kernels_present().0.len()
            );
            if k.available() {
                assert!(failures.is_empty(), "{failures:?}");
            } else {
                assert_eq!(failures.len(), 1, "{failures:?}");
                assert!(
                    failures[0].contains(&format!("the {} kernel was required", k.name()))
                        && failures[0].contains(k.needs()),
                    "{failures:?}"
                );
            }
        }
        let (_, failures) = report(&[]);
        assert!(failures.is_empty(), "{failures:?}");
    }
}
