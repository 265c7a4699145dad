//! Data parallelism only where it pays: a rayon call from outside the pool hands the work to the pool's threads and
//! waits for them (tens of microseconds, more on a busy machine), which is more than a small batch's whole objective.

use rayon::prelude::*;

/// Elements of work (multiply-adds, roughly) below which a loop stays on the calling thread.
pub(crate) const MIN_PARALLEL_WORK: usize = 1 << 17;

/// `f(index, chunk)` for each `chunk`-sized piece of `data`, in parallel when `work` is large enough.
pub(crate) fn chunks_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    work: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    let chunk = chunk.max(1);
    if work >= MIN_PARALLEL_WORK && rayon::current_num_threads() > 1 {
        data.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    } else {
        data.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// `(0..n).map(f).collect()`, in parallel when `work` is large enough.
pub(crate) fn map_collect<R: Send>(n: usize, work: usize, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    if work >= MIN_PARALLEL_WORK && rayon::current_num_threads() > 1 {
        (0..n).into_par_iter().map(f).collect()
    } else {
        (0..n).map(f).collect()
    }
}
