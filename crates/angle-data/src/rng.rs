//! A small deterministic RNG (SplitMix64) and the seed derivations of the batcher.
//!
//! Our own rather than a crate's so the data order can never change under a dependency upgrade: a resumed run must
//! see exactly the order the killed run saw. Every draw is a pure function of (seed, stream, epoch, ...), so nothing
//! but `(epoch, batch index)` needs saving.

/// Stream tags keep the shuffles and the list-field draws independent.
pub(crate) const STREAM_SHUFFLE: u64 = 1;
pub(crate) const STREAM_BATCH_ORDER: u64 = 2;
pub(crate) const STREAM_ALTERNATIVE: u64 = 3;
pub(crate) const STREAM_MIX: u64 = 4;

#[derive(Clone, Debug)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        finalize(self.0)
    }

    /// Uniform in `0..n` (`n > 0`) by multiply-shift; the bias, at most n / 2^64, is irrelevant at dataset sizes.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Fisher-Yates.
    pub(crate) fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

fn finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hashes a sequence of words into one seed.
pub(crate) fn derive(words: &[u64]) -> u64 {
    words.iter().fold(0x6A09_E667_F3BC_C908, |h, &w| {
        finalize(h ^ finalize(w.wrapping_add(0x9E37_79B9_7F4A_7C15)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut r = SplitMix64::new(7);
        let mut seen = [0usize; 5];
        for _ in 0..1000 {
            seen[r.below(5)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 150), "{seen:?}");
    }

    #[test]
    fn shuffle_is_a_permutation_and_deterministic() {
        let mut a: Vec<u32> = (0..100).collect();
        let mut b = a.clone();
        SplitMix64::new(derive(&[42, 1])).shuffle(&mut a);
        SplitMix64::new(derive(&[42, 1])).shuffle(&mut b);
        assert_eq!(a, b);
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(derive(&[42, 1]), derive(&[42, 2]));
        assert_ne!(derive(&[1, 42]), derive(&[42, 1]));
    }
}
