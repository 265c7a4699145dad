//! `cargo xtask <task>`: the project's jobs that are too heavy for unit tests.
fn main() -> anyhow::Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    anyhow::bail!("unknown task {task:?}; tasks: train, bench, gpu-check")
}
