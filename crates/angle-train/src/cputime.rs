//! CPU time of the process, to tell a slow run from a crowded machine: on a shared machine the wall-clock rate
//! depends on the neighbours, the CPU time spent per pair much less.

/// User + system CPU seconds of this whole process (all threads) so far, from `/proc/self/stat`; `None` where
/// that file is missing (not Linux) or unreadable.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat(&stat)
}

fn parse_stat(stat: &str) -> Option<f64> {
    // Field 2, the command name, is parenthesised and may hold spaces: count fields after its closing ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')' comes field 3 (state) at index 0, so utime (field 14) is index 11 and stime (15) index 12.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // In clock ticks of USER_HZ, which the Linux ABI fixes at 100 per second.
    Some(ticks as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utime_and_stime_after_an_awkward_command_name() {
        let stat = "4242 (angle (x) y) R 1 4242 4242 0 -1 4194304 100 0 0 0 250 75 0 0 20 0 3 0 1000 0 0";
        assert_eq!(parse_stat(stat), Some(3.25));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn grows_while_working() {
        let Some(before) = process_cpu_seconds() else {
            return;
        };
        let mut x = 0u64;
        for i in 0..30_000_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(process_cpu_seconds().unwrap() >= before);
    }
}
