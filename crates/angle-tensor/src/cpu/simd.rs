//! Runtime dispatch for the elementwise loops. The build targets baseline x86-64 (SSE2) so the
//! binary runs anywhere; a function declared with [`multiversion!`] is compiled three times
//! (baseline, AVX2, AVX-512F) and the widest the CPU supports runs. No FMA contraction is
//! involved (Rust never fuses `a * b + c`), so every version gives bit-identical results.

/// Declares `fn name<T: Float>(args)` whose body is compiled for baseline, AVX2 and AVX-512F.
/// (A closure passed to a `#[target_feature]` wrapper is not reliably inlined into it, so the
/// body is a function marked `#[inline(always)]` called from each wrapper.)
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident<$T:ident: Float>($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name<$T: Float>($($arg: $ty),*) {
            #[inline(always)]
            fn imp<$T: Float>($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512<$T: Float>($($arg: $ty),*) {
                    imp($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2<$T: Float>($($arg: $ty),*) {
                    imp($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F (checked just above).
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2 (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}

pub(crate) use multiversion;
