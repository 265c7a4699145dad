//! Branch-free f32 elementary functions that the compiler can vectorise (std's `expf`, `tanhf`
//! are library calls, one element at a time). Coefficients are our own least-squares fits
//! (relative error, Chebyshev nodes, 40-digit arithmetic); the errors quoted are measured in
//! the tests below against the f64 functions.

/// `a * b + c` without `mul_add`: that is a library call unless the target has FMA.
#[inline(always)]
fn madd(a: f32, b: f32, c: f32) -> f32 {
    a * b + c
}

const LOG2E: f32 = std::f32::consts::LOG2_E;
// ln 2 split so that n * LN2_HI is exact for |n| < 2^15 (Cody and Waite's reduction).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
// 1.5 * 2^23: adding it rounds to the nearest integer and leaves the integer in the low bits.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// e^x for f32, within 2 ulp on [-87, 88] (clamped outside: 0 and overflow are not needed).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND_MAGIC;
    let n = t - ROUND_MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    // e^r on |r| <= ln2/2, degree 6 (fit error 1.9e-9).
    let p = 1.372_942e-3f32;
    let p = madd(p, r, 8.374_771e-3);
    let p = madd(p, r, 4.166_836e-2);
    let p = madd(p, r, 1.666_642_1e-1);
    let p = madd(p, r, 4.999_999e-1);
    let p = madd(p, r, 1.0);
    let p = madd(p, r, 1.0);
    let bits = (t.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    p * f32::from_bits(((bits + 127) << 23) as u32)
}

/// `(erf(x), e^{-x²})` for f32; erf within a few ulp, e^{-x²} is returned because GELU's
/// derivative needs the same Gaussian (one exp serves both). For |x| > 9 the Gaussian is
/// e^{-81} instead of a smaller number, an absolute error under 1e-35.
#[inline(always)]
pub fn erf_gauss_f32(x: f32) -> (f32, f32) {
    // Beyond 4, erf rounds to 1 in f32 and the erfc term below is under 2e-15 (R is an
    // extrapolated but bounded polynomial there), so clamping far out changes nothing.
    let a = x.abs().min(9.0);
    let a2 = a * a;
    let g = exp_f32(-a2);
    // |x| < 1: erf x = x P(x²), degree 6 (fit error 1.4e-9).
    let p = 7.898_21e-5_f32;
    let p = madd(p, a2, -8.024_354e-4);
    let p = madd(p, a2, 5.190_053_6e-3);
    let p = madd(p, a2, -2.685_480_8e-2);
    let p = madd(p, a2, 1.128_361_2e-1);
    let p = madd(p, a2, -3.761_263e-1);
    let p = madd(p, a2, std::f32::consts::FRAC_2_SQRT_PI);
    let small = a * p;
    // 1 <= |x| <= 4: erfc x = e^{-x²} R(s), s = (1/(1+x) - 0.35) / 0.15, degree 6 (fit error 7.5e-8
    // relative to erfc, so under 1.2e-8 absolute in erf).
    let s = (1.0 / (1.0 + a) - 0.35) * (1.0 / 0.15);
    let q = -1.570_173_7e-6f32;
    let q = madd(q, s, 4.132_152e-5);
    let q = madd(q, s, -1.130_706e-4);
    let q = madd(q, s, -1.386_898_5e-3);
    let q = madd(q, s, 1.085_329_8e-2);
    let q = madd(q, s, 1.466_376_6e-1);
    let q = madd(q, s, 2.715_528_7e-1);
    let large = 1.0 - g * q;
    let e = if a < 1.0 { small } else { large };
    (e.copysign(x), g)
}

/// erf for f32.
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    erf_gauss_f32(x).0
}

/// tanh for f32 through e^{2|u|}: absolute error about 1e-7 (relative error grows for
/// |u| < 1e-3, which GELU, `0.5 x (1 + tanh u)`, does not feel).
#[inline(always)]
pub fn tanh_f32(u: f32) -> f32 {
    let e = exp_f32(2.0 * u.abs());
    (1.0 - 2.0 / (e + 1.0)).copysign(u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::gelu::erf_f64;

    fn ulps(got: f32, want: f64) -> f64 {
        let w = want as f32;
        let ulp = (f32::from_bits(w.abs().to_bits() + 1) - w.abs()) as f64;
        (f64::from(got) - want).abs() / ulp
    }

    #[test]
    fn exp_accuracy() {
        let mut worst: f64 = 0.0;
        for i in -87_000..88_000 {
            let x = i as f32 * 1e-3 + 1.7e-4;
            worst = worst.max(ulps(exp_f32(x), f64::from(x).exp()));
        }
        assert!(worst <= 2.0, "exp worst {worst} ulp");
        assert_eq!(exp_f32(-200.0), exp_f32(-87.0));
    }

    #[test]
    fn erf_accuracy() {
        let mut worst_rel: f64 = 0.0;
        for i in -60_000..60_000 {
            let x = i as f32 * 1e-4 + 3.1e-6;
            let want = erf_f64(f64::from(x));
            worst_rel = worst_rel.max((f64::from(erf_f32(x)) - want).abs() / want.abs());
            let g = erf_gauss_f32(x).1;
            let gw = (-f64::from(x) * f64::from(x)).exp();
            // x² is rounded in f32: relative error up to x² 2^-24 in the exponent.
            let tol = (2.5e-7 + f64::from(x * x) * 6e-8) * gw + 1e-37;
            assert!((f64::from(g) - gw).abs() <= tol, "gauss({x})");
        }
        assert!(worst_rel < 2.5e-7, "erf worst relative error {worst_rel}");
        assert_eq!(erf_f32(10.0), 1.0);
        assert_eq!(erf_f32(-10.0), -1.0);
        assert_eq!(erf_f32(0.0), 0.0);
    }

    #[test]
    fn tanh_accuracy() {
        for i in -20_000..20_000 {
            let u = i as f32 * 1e-3;
            assert!(
                (f64::from(tanh_f32(u)) - f64::from(u).tanh()).abs() < 2e-7,
                "tanh({u})"
            );
        }
    }
}
