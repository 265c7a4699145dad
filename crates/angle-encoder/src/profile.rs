//! Per-op wall-clock counters for the forward and backward passes, off unless [`enable`]d (then each op
//! costs two `Instant::now()` calls). Process-wide, so a benchmark can read them after any number of steps.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// The op families the encoder times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Op {
    Embedding,
    LayerNorm,
    LinearQkv,
    Attention,
    LinearAttnOut,
    LinearFfnIn,
    Gelu,
    LinearFfnOut,
    ResidualDropout,
    BwdEmbedding,
    BwdLayerNorm,
    BwdLinearQkv,
    BwdAttention,
    BwdLinearAttnOut,
    BwdLinearFfnIn,
    BwdGelu,
    BwdLinearFfnOut,
    BwdResidualDropout,
}

const NAMES: [&str; 18] = [
    "fwd embedding",
    "fwd layernorm",
    "fwd linear qkv",
    "fwd attention",
    "fwd linear attn-out",
    "fwd linear ffn-in",
    "fwd gelu",
    "fwd linear ffn-out",
    "fwd residual+dropout",
    "bwd embedding",
    "bwd layernorm",
    "bwd linear qkv",
    "bwd attention",
    "bwd linear attn-out",
    "bwd linear ffn-in",
    "bwd gelu",
    "bwd linear ffn-out",
    "bwd residual+dropout (+ zeroing)",
];

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; 18] = [const { AtomicU64::new(0) }; 18];

/// Turns the counters on or off.
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub fn reset() {
    NANOS.iter().for_each(|n| n.store(0, Ordering::Relaxed));
}

/// (op, seconds) for every op that ran, in pass order.
pub fn report() -> Vec<(&'static str, f64)> {
    NAMES
        .iter()
        .zip(&NANOS)
        .map(|(name, n)| (*name, n.load(Ordering::Relaxed) as f64 * 1e-9))
        .filter(|(_, s)| *s > 0.0)
        .collect()
}

#[inline]
pub(crate) fn start() -> Option<Instant> {
    ENABLED.load(Ordering::Relaxed).then(Instant::now)
}

#[inline]
pub(crate) fn stop(op: Op, t: Option<Instant>) {
    if let Some(t) = t {
        NANOS[op as usize].fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}
