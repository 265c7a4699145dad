//! Embedding gather (forward) and scatter-add (backward); kernels in `embedding.cu`.

use super::context::{Gpu, GpuError, KernelSource, blocks, check_len, dim, kargs};
use super::memory::{DSlice, DType};

pub(crate) const SRC: KernelSource = KernelSource {
    file: "embedding.cu",
    src: include_str!("embedding.cu"),
};

/// `out[t] = word[ids[t]] + pos[positions[t]] + typ[type_ids[t]]`, as
/// [`crate::cpu::embedding_forward`]. Ids must be in range: the caller validates them on the
/// host (where they come from) before upload; the kernel does not re-check.
pub fn embedding_forward<T: DType>(
    gpu: &Gpu,
    out: DSlice<T>,
    ids: DSlice<i32>,
    positions: DSlice<i32>,
    type_ids: DSlice<i32>,
    word: DSlice<f32>,
    pos: DSlice<f32>,
    typ: DSlice<f32>,
    n: usize,
    hidden: usize,
) -> Result<(), GpuError> {
    const OP: &str = "embedding_forward";
    check_len(OP, "out", out.len(), n * hidden)?;
    for (name, v) in [("ids", ids), ("positions", positions), ("type_ids", type_ids)] {
        check_len(OP, name, v.len(), n)?;
    }
    let name = super::kname::<T>("embedding_forward_f32", "embedding_forward_bf16");
    gpu.launch(
        &SRC,
        name,
        (blocks(n, 1), 1, 1),
        256,
        0,
        &mut kargs![
            out,
            ids,
            positions,
            type_ids,
            word,
            pos,
            typ,
            dim(OP, "n", n)?,
            dim(OP, "hidden", hidden)?
        ],
    )
}

/// Adds `dout` rows into the rows of the three tables they came from (atomics), as
/// [`crate::cpu::embedding_backward`].
pub fn embedding_backward<T: DType>(
    gpu: &Gpu,
    dword: DSlice<f32>,
    dpos: DSlice<f32>,
    dtyp: DSlice<f32>,
    dout: DSlice<T>,
    ids: DSlice<i32>,
    positions: DSlice<i32>,
    type_ids: DSlice<i32>,
    n: usize,
    hidden: usize,
) -> Result<(), GpuError> {
    const OP: &str = "embedding_backward";
    check_len(OP, "dout", dout.len(), n * hidden)?;
    for (name, v) in [("ids", ids), ("positions", positions), ("type_ids", type_ids)] {
        check_len(OP, name, v.len(), n)?;
    }
    let ntypes = dtyp.len() / hidden.max(1);
    let reduce_types = ntypes <= 4;
    let name = super::kname::<T>("embedding_backward_f32", "embedding_backward_bf16");
    gpu.launch(
        &SRC,
        name,
        (blocks(n, 1), 1, 1),
        256,
        0,
        &mut kargs![
            dword,
            dpos,
            if reduce_types { DSlice::null() } else { dtyp },
            dout,
            ids,
            positions,
            type_ids,
            dim(OP, "n", n)?,
            dim(OP, "hidden", hidden)?
        ],
    )?;
    if reduce_types {
        const ROWS: usize = 256;
        gpu.launch(
            &SRC,
            super::kname::<T>("embedding_type_grad_f32", "embedding_type_grad_bf16"),
            (
                hidden.div_ceil(32).max(1) as u32,
                n.div_ceil(ROWS).max(1) as u32,
                1,
            ),
            256,
            0,
            &mut kargs![
                dtyp,
                dout,
                type_ids,
                dim(OP, "n", n)?,
                dim(OP, "hidden", hidden)?,
                ntypes as i32,
                ROWS as i32
            ],
        )?;
    }
    Ok(())
}
