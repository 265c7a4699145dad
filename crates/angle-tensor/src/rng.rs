//! Counter-based random numbers for dropout.
//!
//! The keep decision of element `i` is a pure function of `(seed, i)`, so backward regenerates
//! the mask instead of storing it, results do not depend on the thread count, and the CUDA
//! kernels draw the very same mask. **The exact function (the CUDA side must match it
//! bit-for-bit):**
//!
//! ```text
//! GAMMA = 0x9E3779B97F4A7C15
//! bits(seed, i) = mix64(seed + (i + 1) * GAMMA)          // wrapping u64 arithmetic
//! mix64(z):  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
//!            z = (z ^ (z >> 27)) * 0x94D049BB133111EB
//!            return z ^ (z >> 31)
//! u24(seed, i)   = bits(seed, i) >> 40                   // top 24 bits, 0 ..= 2^24 - 1
//! threshold(p)   = ceil(p * 2^24) computed in f64, clamped to 0 ..= 2^24
//! keep(seed, i)  = u24(seed, i) >= threshold(p)          // i.e. u24 / 2^24 >= p
//! ```
//!
//! This is the `i`-th output of SplitMix64 started from state `seed` (Steele, Lea, Flood 2014),
//! which passes BigCrush and needs no state beyond the counter. Kept elements are scaled by
//! `1 / (1 - p)` (inverted dropout), computed in the op's float type.

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output finaliser.
#[inline(always)]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 64 random bits for element `i` of the stream `seed`.
#[inline(always)]
pub fn bits(seed: u64, i: u64) -> u64 {
    mix64(seed.wrapping_add(i.wrapping_add(1).wrapping_mul(GAMMA)))
}

/// A 24-bit uniform integer for element `i`.
#[inline(always)]
pub fn u24(seed: u64, i: u64) -> u32 {
    (bits(seed, i) >> 40) as u32
}

/// A uniform number in `[0, 1)` for element `i` (24 bits, exact in f32).
#[inline(always)]
pub fn uniform(seed: u64, i: u64) -> f64 {
    f64::from(u24(seed, i)) * (1.0 / 16_777_216.0)
}

/// The integer threshold for drop probability `p`: element `i` is kept when
/// `u24(seed, i) >= keep_threshold(p)`.
pub fn keep_threshold(p: f64) -> u32 {
    let t = (p * 16_777_216.0).ceil();
    if t.is_nan() || t <= 0.0 {
        0
    } else if t >= 16_777_216.0 {
        16_777_216
    } else {
        t as u32
    }
}

/// Whether element `i` survives dropout with threshold `threshold` (from [`keep_threshold`]).
#[inline(always)]
pub fn keep(seed: u64, i: u64, threshold: u32) -> bool {
    u24(seed, i) >= threshold
}

/// Derives an independent stream seed from a base seed and a tag (layer, site), so one
/// user seed can drive every dropout site of a model.
#[inline]
pub fn derive_seed(seed: u64, tag: u64) -> u64 {
    mix64(seed ^ mix64(tag.wrapping_add(GAMMA)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // SplitMix64 seeded with 0: the first outputs are published test vectors.
        assert_eq!(bits(0, 0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(bits(0, 1), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn threshold_edges() {
        assert_eq!(keep_threshold(0.0), 0);
        assert_eq!(keep_threshold(1.0), 1 << 24);
        assert_eq!(keep_threshold(0.5), 1 << 23);
        assert!(keep(7, 3, 0));
        assert!(!keep(7, 3, 1 << 24));
    }
}
