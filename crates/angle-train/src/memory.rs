//! The memory a training run takes, estimated at start-up from the model's shape and the largest batch
//! ([`crate::backbone::Backbone::memory_plan`]), printed, and checked against what the machine has
//! available: a run that cannot fit is refused with both numbers (`--no-memory-check` to insist).
//! `cargo xtask memory-check` compares the estimate with the peak resident set of real runs.

use crate::error::{Result, TrainError};

/// Resident bytes of a training run, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryPlan {
    /// Weights held: trainable ones in f32, frozen ones in their dtype, packed bf16/int8 copies.
    pub weights: usize,
    /// Gradients and the two AdamW moments of the trainable tensors.
    pub trainable_state: usize,
    /// What the largest micro-batch (one chunk with GradCache) saves for backward.
    pub activations: usize,
    /// Backward's work buffers, the evaluation batch's activations, and the process itself (code,
    /// tokenizer, the tokenized data: [`PROCESS_BYTES`]).
    pub working: usize,
}

/// What the process holds besides the model and its buffers: code, allocator, tokenizer, tokenized data.
/// Measured with `cargo xtask memory-check` (a tiny model's run).
pub const PROCESS_BYTES: usize = 80_000_000;

impl MemoryPlan {
    pub fn total(&self) -> usize {
        self.weights + self.trainable_state + self.activations + self.working
    }

    /// One line: the total and its parts.
    pub fn describe(&self) -> String {
        format!(
            "memory estimate {}: weights {}, gradients and AdamW moments {}, activations {}, work buffers and process {}",
            gb(self.total() as u64),
            gb(self.weights as u64),
            gb(self.trainable_state as u64),
            gb(self.activations as u64),
            gb(self.working as u64)
        )
    }
}

/// Bytes as `1.23 GB`.
pub fn gb(b: u64) -> String {
    format!("{:.2} GB", b as f64 / 1e9)
}

/// Memory this process can still take: `MemAvailable` of `/proc/meminfo`, bounded by the cgroup's limit
/// (`memory.max` less `memory.current`) where there is one. `None` where neither can be read.
pub fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
    };
    let cgroup = match (
        read("/sys/fs/cgroup/memory.max"),
        read("/sys/fs/cgroup/memory.current"),
    ) {
        (Some(max), Some(cur)) => Some(max.saturating_sub(cur)),
        _ => None,
    };
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Checks `plan` against `available` (the memory left after the model was loaded, whose weights the plan
/// counts too: `already` bytes of them are resident). Returns the line to print; refuses a run that
/// cannot fit unless `insist`.
pub fn check(plan: &MemoryPlan, already: u64, available: Option<u64>, insist: bool) -> Result<String> {
    let need = (plan.total() as u64).saturating_sub(already);
    let line = match available {
        Some(a) => format!(
            "{} ({} more than now, {} available)",
            plan.describe(),
            gb(need),
            gb(a)
        ),
        None => format!("{} (available memory unknown)", plan.describe()),
    };
    match available {
        Some(a) if need > a && !insist => Err(TrainError::Config(format!(
            "this run needs about {} more memory than it holds now, and this machine has {} available ({}); \
             fewer pairs per batch, --max-length, --grad-cache N, --gradient-checkpointing or LoRA lower it, \
             --no-memory-check runs it anyway",
            gb(need),
            gb(a),
            plan.describe()
        ))),
        _ => Ok(line),
    }
}

/// A `kB` line of `/proc/self/status`, in bytes.
fn status_bytes(key: &str) -> Option<u64> {
    let t = std::fs::read_to_string("/proc/self/status").ok()?;
    let v = t.lines().find_map(|l| l.strip_prefix(key))?;
    v.trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}

/// This process's resident set now (`VmRSS`), in bytes; 0 where it cannot be read.
pub fn resident_bytes() -> u64 {
    status_bytes("VmRSS:").unwrap_or(0)
}

/// This process's peak resident set so far (`VmHWM`).
pub fn peak_resident_bytes() -> Option<u64> {
    status_bytes("VmHWM:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_that_cannot_fit_is_refused_with_both_numbers() {
        let plan = MemoryPlan {
            weights: 2_000_000_000,
            trainable_state: 1_000_000_000,
            activations: 6_000_000_000,
            working: 1_000_000_000,
        };
        let e = check(&plan, 2_000_000_000, Some(4_000_000_000), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("8.00 GB") && e.contains("4.00 GB") && e.contains("--no-memory-check"),
            "{e}"
        );
        assert!(check(&plan, 2_000_000_000, Some(4_000_000_000), true).is_ok());
        assert!(check(&plan, 2_000_000_000, Some(9_000_000_000), false).is_ok());
        assert!(check(&plan, 0, None, false).unwrap().contains("unknown"));
    }

    #[test]
    fn available_memory_reads_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(available_bytes().is_some_and(|b| b > 0));
            assert!(resident_bytes() > 0);
        }
    }
}
