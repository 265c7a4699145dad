//! Sentence pooling (mean over each sequence's tokens, or its first token); kernels in
//! `pooling.cu`. Pooled embeddings are f32.

use super::context::{Gpu, GpuError, KernelSource, check_len, dim, kargs};
use super::memory::{DSlice, DType};

pub(crate) const SRC: KernelSource = KernelSource {
    file: "pooling.cu",
    src: include_str!("pooling.cu"),
};

/// How token states become one sentence embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the sequence's tokens (sentence-transformers' default).
    Mean,
    /// The first token ([CLS]).
    Cls,
}

fn mode(p: Pooling) -> i32 {
    match p {
        Pooling::Mean => 0,
        Pooling::Cls => 1,
    }
}

/// `out[b] = pool(x rows of sequence b)`; `x [N, H]`, `out [B, H]` f32.
pub fn pooling_forward<T: DType>(
    gpu: &Gpu,
    out: DSlice<f32>,
    x: DSlice<T>,
    offsets: DSlice<i32>,
    batch: usize,
    rows: usize,
    hidden: usize,
    pooling: Pooling,
) -> Result<(), GpuError> {
    const OP: &str = "pooling_forward";
    check_len(OP, "out", out.len(), batch * hidden)?;
    check_len(OP, "x", x.len(), rows * hidden)?;
    check_len(OP, "offsets", offsets.len(), batch + 1)?;
    gpu.launch(
        &SRC,
        super::kname::<T>("pooling_forward_f32", "pooling_forward_bf16"),
        (batch.max(1) as u32, 1, 1),
        256,
        0,
        &mut kargs![
            out,
            x,
            offsets,
            dim(OP, "batch", batch)?,
            dim(OP, "hidden", hidden)?,
            mode(pooling)
        ],
    )
}

/// `dx (+)= ...` from `dout [B, H]` (written with zeros where nothing flows, or added when
/// `accumulate`).
pub fn pooling_backward<T: DType>(
    gpu: &Gpu,
    dx: DSlice<T>,
    dout: DSlice<f32>,
    offsets: DSlice<i32>,
    batch: usize,
    rows: usize,
    hidden: usize,
    pooling: Pooling,
    accumulate: bool,
) -> Result<(), GpuError> {
    const OP: &str = "pooling_backward";
    check_len(OP, "dout", dout.len(), batch * hidden)?;
    check_len(OP, "dx", dx.len(), rows * hidden)?;
    check_len(OP, "offsets", offsets.len(), batch + 1)?;
    gpu.launch(
        &SRC,
        super::kname::<T>("pooling_backward_f32", "pooling_backward_bf16"),
        (batch.max(1) as u32, 1, 1),
        256,
        0,
        &mut kargs![
            dx,
            dout,
            offsets,
            dim(OP, "batch", batch)?,
            dim(OP, "hidden", hidden)?,
            mode(pooling),
            i32::from(accumulate)
        ],
    )
}
