//! Loads and tokenises the STS-B files and prints what batching them costs.
//!
//! `cargo run -p angle-data --release --example stsb_stats [-- MAX_LEN]`

use std::path::PathBuf;
use std::time::Instant;

use angle_data::{BatchConfig, DataError, Dataset, Prompts, ReadOptions, TextTokenizer};

fn main() -> Result<(), DataError> {
    let max_len: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(64);
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    let t = Instant::now();
    let tok = TextTokenizer::from_file(shared.join("models/all-MiniLM-L6-v2/tokenizer.json"), max_len)?;
    println!(
        "tokenizer.json loaded in {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    for split in ["train", "dev", "test"] {
        let t = Instant::now();
        let path = shared.join(format!("data/stsb/stsb-en-{split}.csv"));
        let data = Dataset::load(&path, &ReadOptions::stsb_csv(), &Prompts::default(), &tok)?;
        let load_ms = t.elapsed().as_secs_f64() * 1e3;
        println!(
            "{split}: {} pairs, {} distinct texts, {} tokens, {} truncated at {max_len}; read + tokenised in {load_ms:.0} ms",
            data.len(),
            data.num_texts(),
            data.num_tokens(),
            data.truncated_texts()
        );
        if split != "train" {
            continue;
        }
        for grouped in [false, true] {
            let config = BatchConfig {
                length_grouped: grouped,
                ..BatchConfig::train(32, 42)
            };
            let t = Instant::now();
            let plan = data.plan_epoch(&config, 0)?;
            let mut batch = angle_data::PackedBatch::default();
            let (mut real, mut padded, mut sq) = (0, 0, 0);
            for i in 0..plan.len() {
                data.fill_batch(&plan, i, &mut batch)?;
                real += batch.tokens();
                padded += batch.rows() * batch.max_row_len();
                sq += batch.sum_sq_len();
            }
            println!(
                "  epoch of {} batches (32 pairs, length_grouped {grouped}): {real} tokens packed, {padded} if padded \
                 ({:.2}x), sum len^2 {sq}; planned + filled in {:.1} ms",
                plan.len(),
                padded as f64 / real as f64,
                t.elapsed().as_secs_f64() * 1e3
            );
        }
    }
    Ok(())
}
