use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

/// The element type of every op: implemented for `f32` (training) and `f64` (gradient checks).
pub trait Float:
    num_traits::Float
    + Send
    + Sync
    + Debug
    + Default
    + Sum
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + 'static
{
    /// Converts from f64 (rounding for f32).
    fn of(x: f64) -> Self;
    /// Widens to f64.
    fn as_f64(self) -> f64;
    /// The error function, accurate to the type's precision (see [`super::erf_f32`],
    /// [`super::erf_f64`]). Named to avoid the unstable inherent `f32::erf`.
    fn erf_(self) -> Self;
    /// `(erf(x), e^{-x²})` (GELU's forward and derivative need both).
    fn erf_gauss(self) -> (Self, Self);
    /// e^x: vectorisable polynomial for f32 (2 ulp), std for f64.
    fn exp_(self) -> Self;
    /// tanh: vectorisable for f32 (1e-7 absolute), std for f64.
    fn tanh_(self) -> Self;
    /// The GEMM backend for this type: `C = alpha * A * B + beta * C` with `A` `m x k`,
    /// `B` `k x n`, `C` `m x n`, each given by a pointer and (row, column) strides in elements.
    /// When `beta == 0`, `C` is not read.
    ///
    /// # Safety
    /// Every addressed element must lie inside its allocation; `C` must not alias `A` or `B`
    /// and distinct `(i, j)` must address distinct elements of `C`. Use the checked
    /// [`super::gemm`] instead.
    #[allow(clippy::missing_safety_doc)]
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
}

impl Float for f32 {
    #[inline(always)]
    fn of(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn as_f64(self) -> f64 {
        f64::from(self)
    }
    #[inline(always)]
    fn erf_(self) -> Self {
        super::math::erf_f32(self)
    }
    #[inline(always)]
    fn erf_gauss(self) -> (Self, Self) {
        super::math::erf_gauss_f32(self)
    }
    #[inline(always)]
    fn exp_(self) -> Self {
        super::math::exp_f32(self)
    }
    #[inline(always)]
    fn tanh_(self) -> Self {
        super::math::tanh_f32(self)
    }
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: f32,
        a: *const f32,
        rsa: isize,
        csa: isize,
        b: *const f32,
        rsb: isize,
        csb: isize,
        beta: f32,
        c: *mut f32,
        rsc: isize,
        csc: isize,
    ) {
        // SAFETY: forwarded contract.
        unsafe { super::gemm::backend::sgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
    }
}

impl Float for f64 {
    #[inline(always)]
    fn of(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn as_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn erf_(self) -> Self {
        super::gelu::erf_f64(self)
    }
    #[inline(always)]
    fn erf_gauss(self) -> (Self, Self) {
        (super::gelu::erf_f64(self), (-self * self).exp())
    }
    #[inline(always)]
    fn exp_(self) -> Self {
        self.exp()
    }
    #[inline(always)]
    fn tanh_(self) -> Self {
        self.tanh()
    }
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: f64,
        a: *const f64,
        rsa: isize,
        csa: isize,
        b: *const f64,
        rsb: isize,
        csb: isize,
        beta: f64,
        c: *mut f64,
        rsc: isize,
        csc: isize,
    ) {
        // SAFETY: forwarded contract.
        unsafe { super::gemm::backend::dgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
    }
}
