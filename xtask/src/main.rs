//! `cargo xtask <task>`: the project's jobs that are too heavy for unit tests.
//!
//! - `train`     the default AnglE recipe end to end (`train.rs`)
//! - `ablation`  every objective variant × seeds, evaluated on STS sets (`ablation.rs`)
//! - `staged`    an unsupervised (SimCSE) stage with and without the angle term, then the supervised recipe
//!   (`staged.rs`)
//! - `bench`     encoder throughput and memory beside PyTorch's numbers (`bench.rs`)
//! - `bench-decoder` the decoder family's train step and encode beside PyTorch + peft (`bench_decoder.rs`)
//! - `bench-mine` hard-negative mining's search at 100k × 1M, and `angle mine` beside sentence-transformers
//!   (`bench_mine.rs`)
//! - `memory-check` the start-up memory estimate against the peak resident set of real runs (`memory_check.rs`)
//! - `gpu-check` prepares and describes the one GPU run (`gpu_check.rs`)
//! - `kernels`   the CPU's bf16 kernels: present ones checked, `--require NAME` fails on a missing one (`kernels.rs`)

mod ablation;
mod args;
mod bench;
mod bench_decoder;
mod bench_mine;
mod gpu_check;
mod kernels;
mod memory_check;
mod staged;
mod train;

/// Every task of the dispatch below.
const TASKS: &[&str] = &[
    "train",
    "ablation",
    "staged",
    "bench",
    "bench-decoder",
    "bench-mine",
    "gpu-check",
    "kernels",
    "memory-check",
];

fn main() -> anyhow::Result<()> {
    let mut argv = std::env::args().skip(1);
    let task = argv.next().unwrap_or_default();
    let rest: Vec<String> = argv.collect();
    if TASKS.contains(&task.as_str()) && !args::PASSTHROUGH_TASKS.contains(&task.as_str()) {
        args::no_passthrough(&task, &rest)?;
    }
    match task.as_str() {
        "train" => train::run(&rest),
        "ablation" => ablation::run(&rest),
        "staged" => staged::run(&rest),
        "bench" => bench::run(&rest),
        "bench-decoder" => bench_decoder::run(&rest),
        "bench-mine" => bench_mine::run(&rest),
        "gpu-check" => gpu_check::run(&rest),
        "kernels" => kernels::run(&rest),
        "memory-check" => memory_check::run(&rest),
        other => {
            anyhow::bail!("unknown task {other:?}; tasks: {}", TASKS.join(", "))
        }
    }
}
