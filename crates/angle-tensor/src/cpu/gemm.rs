//! The one GEMM interface every op goes through: `C = alpha * A * B + beta * C` on strided
//! views. The backend (see `backend` below) is the only place that names a GEMM library, so it
//! can be swapped; the choice and its measurements are in the crate README.

use rayon::prelude::*;

use super::Float;
use crate::error::{TensorError, arg_err};

/// A read-only strided matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

/// A mutable strided matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Debug)]
pub struct MatMut<'a, T> {
    pub data: &'a mut [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// A row-major `rows x cols` matrix.
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }
    /// Any strided view.
    pub fn strided(data: &'a [T], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }
    /// The transpose (no copy).
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

impl<'a, T> MatMut<'a, T> {
    /// A row-major `rows x cols` matrix.
    pub fn new(data: &'a mut [T], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }
    /// Any strided view.
    pub fn strided(data: &'a mut [T], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }
}

/// One past the largest offset the view addresses (0 when empty).
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<usize> {
    if rows == 0 || cols == 0 {
        return Some(0);
    }
    (rows - 1)
        .checked_mul(rs)?
        .checked_add((cols - 1).checked_mul(cs)?)?
        .checked_add(1)
}

/// Whether distinct `(i, j)` address distinct elements (needed for a writable view: otherwise
/// threads working on different blocks would race).
fn injective(rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    if rows == 0 || cols == 0 {
        true
    } else if rows == 1 {
        cols == 1 || cs >= 1
    } else if cols == 1 {
        rs >= 1
    } else {
        (cs >= 1 && rs > cs * (cols - 1)) || (rs >= 1 && cs > rs * (rows - 1))
    }
}

const OP: &str = "gemm";

/// Checked strided GEMM, `C = alpha * A * B + beta * C` (`beta == 0` ignores C's contents, NaN
/// included). Runs on the current rayon pool when the product is big enough to pay: the rows (or
/// columns) of C are split between threads, which does not change any result bit.
pub fn gemm<T: Float>(
    alpha: T,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T,
    c: MatMut<'_, T>,
) -> Result<(), TensorError> {
    if a.cols != b.rows {
        return Err(arg_err(
            OP,
            "b",
            format!("A is {}x{} but B is {}x{}", a.rows, a.cols, b.rows, b.cols),
        ));
    }
    if c.rows != a.rows || c.cols != b.cols {
        return Err(arg_err(
            OP,
            "c",
            format!("C is {}x{}, expected {}x{}", c.rows, c.cols, a.rows, b.cols),
        ));
    }
    for (name, len, rows, cols, rs, cs) in [
        ("a", a.data.len(), a.rows, a.cols, a.rs, a.cs),
        ("b", b.data.len(), b.rows, b.cols, b.rs, b.cs),
        ("c", c.data.len(), c.rows, c.cols, c.rs, c.cs),
    ] {
        match extent(rows, cols, rs, cs) {
            Some(e) if e <= len => {}
            _ => {
                return Err(arg_err(
                    OP,
                    name,
                    format!("{rows}x{cols} view with strides ({rs}, {cs}) exceeds {len} elements"),
                ));
            }
        }
    }
    if !injective(c.rows, c.cols, c.rs, c.cs) {
        return Err(arg_err(
            OP,
            "c",
            format!("strides ({}, {}) make elements overlap", c.rs, c.cs),
        ));
    }
    // SAFETY: bounds and injectivity checked above; `c` is a unique borrow so it aliases neither input.
    unsafe {
        gemm_par(
            a.rows,
            a.cols,
            b.cols,
            alpha,
            a.data.as_ptr(),
            a.rs,
            a.cs,
            b.data.as_ptr(),
            b.rs,
            b.cs,
            beta,
            c.data.as_mut_ptr(),
            c.rs,
            c.cs,
        );
    }
    Ok(())
}

#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: used only to hand disjoint blocks of C to threads.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
#[derive(Clone, Copy)]
struct SendConst<T>(*const T);
// SAFETY: read-only input pointers.
unsafe impl<T> Send for SendConst<T> {}
unsafe impl<T> Sync for SendConst<T> {}

/// Below this many multiply-adds a product runs on the calling thread.
const PAR_MIN_MACS: usize = 1 << 18;

/// # Safety
/// As [`Float::gemm_raw`].
pub(crate) unsafe fn gemm_par<T: Float>(
    m: usize,
    k: usize,
    n: usize,
    alpha: T,
    a: *const T,
    rsa: usize,
    csa: usize,
    b: *const T,
    rsb: usize,
    csb: usize,
    beta: T,
    c: *mut T,
    rsc: usize,
    csc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    let macs = m.saturating_mul(n).saturating_mul(k.max(1));
    if threads <= 1 || macs < PAR_MIN_MACS {
        // SAFETY: forwarded contract.
        unsafe { call(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) };
        return;
    }
    // Split the longer side of C in `threads` blocks (multiples of 8, the kernels' tile size).
    let split_rows = m >= n;
    let len = if split_rows { m } else { n };
    let block = len.div_ceil(threads).div_ceil(8) * 8;
    let parts = len.div_ceil(block);
    let (ap, bp, cp) = (SendConst(a), SendConst(b), SendPtr(c));
    (0..parts).into_par_iter().for_each(move |p| {
        let (ap, bp, cp) = (ap, bp, cp);
        let start = p * block;
        let size = block.min(len - start);
        // SAFETY: blocks are disjoint rows (or columns) of C, inside the caller's bounds.
        unsafe {
            if split_rows {
                call(
                    size,
                    k,
                    n,
                    alpha,
                    ap.0.add(start * rsa),
                    rsa,
                    csa,
                    bp.0,
                    rsb,
                    csb,
                    beta,
                    cp.0.add(start * rsc),
                    rsc,
                    csc,
                )
            } else {
                call(
                    m,
                    k,
                    size,
                    alpha,
                    ap.0,
                    rsa,
                    csa,
                    bp.0.add(start * csb),
                    rsb,
                    csb,
                    beta,
                    cp.0.add(start * csc),
                    rsc,
                    csc,
                )
            }
        }
    });
}

/// # Safety
/// As [`Float::gemm_raw`].
#[inline]
unsafe fn call<T: Float>(
    m: usize,
    k: usize,
    n: usize,
    alpha: T,
    a: *const T,
    rsa: usize,
    csa: usize,
    b: *const T,
    rsb: usize,
    csb: usize,
    beta: T,
    c: *mut T,
    rsc: usize,
    csc: usize,
) {
    // SAFETY: forwarded contract; strides fit isize because they index existing slices.
    unsafe {
        T::gemm_raw(
            m,
            k,
            n,
            alpha,
            a,
            rsa as isize,
            csa as isize,
            b,
            rsb as isize,
            csb as isize,
            beta,
            c,
            rsc as isize,
            csc as isize,
        )
    }
}

/// The GEMM libraries: single-threaded calls, parallelism is ours (above).
///
/// faer is faster than matrixmultiply on the forward form (`A · Bᵀ`), on `A · B` and on the
/// per-head attention products; matrixmultiply is faster when A is column-major (the weight
/// gradient `doutᵀ · inp`). Measurements: crate README.
pub(crate) mod backend {
    use std::sync::atomic::{AtomicU8, Ordering};

    /// Which library runs products; changeable for benchmarks only.
    #[doc(hidden)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum GemmBackend {
        /// faer, except matrixmultiply for column-major A (measured best per form).
        Auto = 0,
        /// matrixmultiply for everything.
        MatrixMultiply = 1,
        /// faer for everything.
        Faer = 2,
    }

    /// The widest C faer gets in one call.
    const FAER_MAX_COLS: usize = 1024;

    static BACKEND: AtomicU8 = AtomicU8::new(GemmBackend::Auto as u8);

    /// Selects the GEMM library (benchmarks compare them in one process).
    #[doc(hidden)]
    pub fn set_gemm_backend(b: GemmBackend) {
        BACKEND.store(b as u8, Ordering::Relaxed);
    }

    #[inline]
    fn use_faer(rsa: isize, csa: isize) -> bool {
        match BACKEND.load(Ordering::Relaxed) {
            1 => false,
            2 => true,
            _ => !(rsa == 1 && csa != 1),
        }
    }

    macro_rules! backend_fn {
        ($name:ident, $t:ty, $mm:path) => {
            /// # Safety
            /// As `matrixmultiply::sgemm`: every addressed element in bounds, C injective and
            /// not aliasing A or B.
            #[inline]
            pub(crate) unsafe fn $name(
                m: usize,
                k: usize,
                n: usize,
                alpha: $t,
                a: *const $t,
                rsa: isize,
                csa: isize,
                b: *const $t,
                rsb: isize,
                csb: isize,
                beta: $t,
                c: *mut $t,
                rsc: isize,
                csc: isize,
            ) {
                if m == 0 || n == 0 {
                    return;
                }
                if k == 0 || !use_faer(rsa, csa) {
                    // SAFETY: forwarded contract.
                    unsafe { $mm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) };
                    return;
                }
                // SAFETY: forwarded contract (faer's views have the same requirements).
                unsafe {
                    let mut cm = faer::MatMut::from_raw_parts_mut(c, m, n, rsc, csc);
                    let accum = if beta == 0.0 {
                        faer::Accum::Replace
                    } else {
                        if beta != 1.0 {
                            for j in 0..n {
                                for i in 0..m {
                                    *c.offset(i as isize * rsc + j as isize * csc) *= beta;
                                }
                            }
                        }
                        faer::Accum::Add
                    };
                    let am = faer::MatRef::from_raw_parts(a, m, k, rsa, csa);
                    let bm = faer::MatRef::from_raw_parts(b, k, n, rsb, csb);
                    // faer slows down by a third on wide C (the feed-forward's 1536 columns):
                    // run column blocks of at most FAER_MAX_COLS (measured in the crate README).
                    let blocks = n.div_ceil(FAER_MAX_COLS);
                    let width = n.div_ceil(blocks).div_ceil(16) * 16;
                    for j in (0..n).step_by(width) {
                        let w = width.min(n - j);
                        faer::linalg::matmul::matmul(
                            cm.as_mut().subcols_mut(j, w),
                            accum,
                            am,
                            bm.subcols(j, w),
                            alpha,
                            faer::Par::Seq,
                        );
                    }
                }
            }
        };
    }

    backend_fn!(sgemm, f32, matrixmultiply::sgemm);
    backend_fn!(dgemm, f64, matrixmultiply::dgemm);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::{TestRng, assert_close};
    use proptest::prelude::*;

    fn naive(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Vec<f64> {
        let mut c = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                for p in 0..a.cols {
                    c[i * b.cols + j] += a.data[i * a.rs + p * a.cs] * b.data[p * b.rs + j * b.cs];
                }
            }
        }
        c
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn matches_naive(m in 1usize..40, k in 1usize..20, n in 1usize..40, ta: bool, tb: bool, seed: u64) {
            let mut r = TestRng::new(seed);
            let a = r.vec(m * k);
            let b = r.vec(k * n);
            let am = if ta { MatRef::new(&a, k, m).t() } else { MatRef::new(&a, m, k) };
            let bm = if tb { MatRef::new(&b, n, k).t() } else { MatRef::new(&b, k, n) };
            let c0 = r.vec(m * n);
            for beta in [0.0, 1.0, 0.5] {
                let mut c = c0.clone();
                gemm(2.0, am, bm, beta, MatMut::new(&mut c, m, n)).unwrap();
                let want: Vec<f64> = naive(am, bm).iter().zip(&c0).map(|(x, y)| 2.0 * x + beta * y).collect();
                assert_close(&c, &want, 1e-12);
                // f32 through the same path
                let (a32, b32): (Vec<f32>, Vec<f32>) = (a.iter().map(|&v| v as f32).collect(), b.iter().map(|&v| v as f32).collect());
                let am32 = MatRef::strided(&a32, am.rows, am.cols, am.rs, am.cs);
                let bm32 = MatRef::strided(&b32, bm.rows, bm.cols, bm.rs, bm.cs);
                let mut c32: Vec<f32> = c0.iter().map(|&v| v as f32).collect();
                gemm(2.0, am32, bm32, beta as f32, MatMut::new(&mut c32, m, n)).unwrap();
                let c32: Vec<f64> = c32.iter().map(|&v| f64::from(v)).collect();
                assert_close(&c32, &want, 1e-5);
            }
        }
    }

    #[test]
    fn every_backend_matches_naive() {
        use backend::{GemmBackend, set_gemm_backend};
        let (m, k, n) = (130, 70, 90);
        let mut r = TestRng::new(3);
        let a = r.vec(m * k);
        let b = r.vec(k * n);
        for be in [GemmBackend::MatrixMultiply, GemmBackend::Faer, GemmBackend::Auto] {
            set_gemm_backend(be);
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let am = if ta {
                    MatRef::new(&a, k, m).t()
                } else {
                    MatRef::new(&a, m, k)
                };
                let bm = if tb {
                    MatRef::new(&b, n, k).t()
                } else {
                    MatRef::new(&b, k, n)
                };
                let mut c = vec![f64::NAN; m * n];
                gemm(1.0, am, bm, 0.0, MatMut::new(&mut c, m, n)).unwrap();
                assert_close(&c, &naive(am, bm), 1e-12);
            }
        }
        set_gemm_backend(GemmBackend::Auto);
    }

    /// The README promises that thread splits (rows or columns of C) and faer's column blocks
    /// never change a bit: the forward form on a wide C, on 1, 2 and 3 threads.
    #[test]
    fn thread_count_does_not_change_bits() {
        let (m, k, n) = (1200, 96, 1100);
        let mut r = TestRng::new(9);
        let a: Vec<f32> = r.vec(m * k).iter().map(|&v| v as f32).collect();
        let w: Vec<f32> = r.vec(n * k).iter().map(|&v| v as f32).collect();
        let run = |threads: usize, rows: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut c = vec![0.0f32; rows * n];
            pool.install(|| {
                gemm(
                    1.0,
                    MatRef::new(&a[..rows * k], rows, k),
                    MatRef::new(&w, n, k).t(),
                    0.0,
                    MatMut::new(&mut c, rows, n),
                )
                .unwrap()
            });
            c
        };
        // m >= n splits rows, m < n splits columns
        for rows in [m, 40] {
            let one = run(1, rows);
            assert_eq!(run(2, rows), one, "{rows} rows, 2 threads");
            assert_eq!(run(3, rows), one, "{rows} rows, 3 threads");
        }
    }

    #[test]
    fn rejects_bad_shapes() {
        let a = vec![0.0f32; 6];
        let mut c = vec![0.0f32; 4];
        assert!(
            gemm(
                1.0,
                MatRef::new(&a, 2, 3),
                MatRef::new(&a, 2, 3),
                0.0,
                MatMut::new(&mut c, 2, 3)
            )
            .is_err()
        );
        assert!(
            gemm(
                1.0,
                MatRef::new(&a, 2, 4),
                MatRef::new(&a, 4, 2),
                0.0,
                MatMut::new(&mut c, 2, 2)
            )
            .is_err()
        );
        assert!(
            gemm(
                1.0,
                MatRef::new(&a, 2, 3),
                MatRef::new(&a, 3, 2),
                0.0,
                MatMut::strided(&mut c, 2, 2, 1, 1)
            )
            .is_err()
        );
    }
}
