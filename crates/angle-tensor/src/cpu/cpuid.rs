//! What the CPU is, as CPUID reports it: vendor, family and model, the brand string, and the
//! instruction-set flags the bf16 kernels depend on. `--precision auto` decides from these (not
//! from a timing, which moves with the machine's load), and `cargo xtask kernels` prints them.

/// The CPU's identity (all empty or zero off x86-64).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuModel {
    /// CPUID leaf 0's vendor: `GenuineIntel`, `AuthenticAMD`, …
    pub vendor: String,
    /// The display family (base family plus extended family): 0x19 is AMD Zen 3/Zen 4, 0x1a Zen 5,
    /// 6 every recent Intel core.
    pub family: u32,
    /// The display model (with the extended model bits).
    pub model: u32,
    /// The brand string (`AMD EPYC 9654 96-Core Processor`), trimmed.
    pub brand: String,
}

/// This CPU's identity, read once.
pub fn cpu_model() -> CpuModel {
    static M: std::sync::OnceLock<CpuModel> = std::sync::OnceLock::new();
    M.get_or_init(read_cpu_model).clone()
}

#[cfg(target_arch = "x86_64")]
fn read_cpu_model() -> CpuModel {
    use std::arch::x86_64::__cpuid;
    // `unsafe` for Rust < 1.87, where `__cpuid` is an unsafe fn.
    #[allow(unused_unsafe)]
    // SAFETY: CPUID leaves 0 and 1 exist on every x86-64 CPU.
    let (l0, l1) = unsafe { (__cpuid(0), __cpuid(1)) };
    let bytes = |regs: &[u32]| -> Vec<u8> { regs.iter().flat_map(|r| r.to_le_bytes()).collect() };
    let vendor = String::from_utf8_lossy(&bytes(&[l0.ebx, l0.edx, l0.ecx])).into_owned();
    let base_family = (l1.eax >> 8) & 0xf;
    let base_model = (l1.eax >> 4) & 0xf;
    let family = if base_family == 0xf {
        base_family + ((l1.eax >> 20) & 0xff)
    } else {
        base_family
    };
    let model = if base_family == 0x6 || base_family == 0xf {
        base_model | (((l1.eax >> 16) & 0xf) << 4)
    } else {
        base_model
    };
    #[allow(unused_unsafe)]
    // SAFETY: leaf 0x8000_0000 exists on every x86-64 CPU (it gives the highest extended leaf).
    let max_ext = unsafe { __cpuid(0x8000_0000) }.eax;
    let brand = if max_ext >= 0x8000_0004 {
        let regs: Vec<u32> = (0x8000_0002u32..=0x8000_0004)
            .flat_map(|leaf| {
                #[allow(unused_unsafe)]
                // SAFETY: the leaf is at most the highest extended leaf checked above.
                let r = unsafe { __cpuid(leaf) };
                [r.eax, r.ebx, r.ecx, r.edx]
            })
            .collect();
        let b = bytes(&regs);
        String::from_utf8_lossy(&b)
            .trim_matches(|c: char| c == '\0' || c.is_whitespace())
            .to_string()
    } else {
        String::new()
    };
    CpuModel {
        vendor,
        family,
        model,
        brand,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn read_cpu_model() -> CpuModel {
    CpuModel::default()
}

/// The instruction-set flags the bf16 kernels need, each with whether this CPU reports it
/// (`amx-tile` and `amx-bf16` from CPUID alone: the AMX kernel also needs the kernel's permission
/// for tile state, which [`crate::cpu::Bf16Kernel::available`] asks for).
pub fn cpu_flags() -> Vec<(&'static str, bool)> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        #[allow(unused_unsafe)]
        // SAFETY: CPUID leaf 7 exists on every x86-64 CPU this runs on.
        let leaf7 = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
        vec![
            ("avx2", has!("avx2")),
            ("fma", has!("fma")),
            ("avx512f", has!("avx512f")),
            ("avx512bw", has!("avx512bw")),
            ("avx512-bf16", has!("avx512bf16")),
            ("avx512-vnni", has!("avx512vnni")),
            ("avx-vnni", has!("avxvnni")),
            ("amx-tile", leaf7.edx & (1 << 24) != 0),
            ("amx-bf16", leaf7.edx & (1 << 22) != 0),
        ]
    }
    #[cfg(not(target_arch = "x86_64"))]
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn model_agrees_with_the_flags() {
        let m = cpu_model();
        assert_eq!(m.vendor.len(), 12, "{m:?}");
        assert!(m.family > 0, "{m:?}");
        let flags = cpu_flags();
        let has = |name| flags.iter().any(|&(n, on)| n == name && on);
        // every x86-64 CPU AVX2 reaches is family 6 (Intel) or 0x15 and later (AMD)
        if has("avx2") && m.vendor == "AuthenticAMD" {
            assert!(m.family >= 0x15, "{m:?}");
        }
        assert_eq!(
            has("avx2") && has("fma"),
            crate::cpu::Bf16Kernel::Avx2.available()
        );
    }
}
