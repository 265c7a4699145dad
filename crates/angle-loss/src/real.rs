//! The scalar types the objectives run in.

use std::fmt::{Debug, Display};
use std::ops::{AddAssign, MulAssign, SubAssign};

use ndarray::LinalgScalar;
use num_traits::Float;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// `f32` (what training uses) or `f64` (what makes finite-difference checks tight).
///
/// Long sums are accumulated in `f64` whatever `Self` is; the similarity matrices are computed in `Self` so that the
/// `f32` path runs at `f32` GEMM speed.
pub trait Real:
    Float
    + LinalgScalar
    + AddAssign
    + SubAssign
    + MulAssign
    + Send
    + Sync
    + Debug
    + Display
    + Default
    + sealed::Sealed
    + 'static
{
    /// Rounds an `f64` to `Self`.
    fn of(x: f64) -> Self;
    /// Widens `self` to `f64` exactly.
    fn f64(self) -> f64;
}

impl Real for f32 {
    #[inline]
    fn of(x: f64) -> Self {
        x as f32
    }
    #[inline]
    fn f64(self) -> f64 {
        f64::from(self)
    }
}

impl Real for f64 {
    #[inline]
    fn of(x: f64) -> Self {
        x
    }
    #[inline]
    fn f64(self) -> f64 {
        self
    }
}
