//! The ESE pieces against central finite differences in f64: the distillation term `D` (target held constant),
//! the whole objective with its PCA targets held constant (what the analytic gradient is of), Matryoshka, and
//! the bad-input errors.

use angle_loss::{
    AngleLoss, AngleLossConfig, DataFormat, EseConfig, LossError, Matryoshka, MatryoshkaObjective,
    distill_loss_into, ese_loss, ese_loss_with_targets, pca_target,
};
use ndarray::{Array2, ArrayView2, ArrayViewMut2};

const H: f64 = 1e-6;

fn random(rows: usize, cols: usize, seed: u64) -> Array2<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    Array2::from_shape_fn((rows, cols), |_| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    })
}

/// Max |analytic − numeric| relative to max(1, max |analytic|).
fn fd_check(x: &Array2<f64>, grad: &Array2<f64>, f: impl Fn(&Array2<f64>) -> f64) -> f64 {
    let scale = grad.iter().fold(1.0f64, |m, g| m.max(g.abs()));
    let mut xp = x.clone();
    let mut worst = 0.0f64;
    for r in 0..x.nrows() {
        for c in 0..x.ncols() {
            let o = x[[r, c]];
            xp[[r, c]] = o + H;
            let up = f(&xp);
            xp[[r, c]] = o - H;
            let down = f(&xp);
            xp[[r, c]] = o;
            worst = worst.max(((up - down) / (2.0 * H) - grad[[r, c]]).abs());
        }
    }
    worst / scale
}

#[test]
fn distillation_term_matches_finite_differences() {
    for (rows, cols, t) in [(4, 6, 1.0), (6, 5, 0.5), (3, 8, 2.0)] {
        let x = random(rows, cols, 1);
        let y = random(rows, cols, 2);
        let mut g = Array2::zeros((rows, cols));
        distill_loss_into(x.view(), y.view(), t, 1.0, &mut g.view_mut()).unwrap();
        let err = fd_check(&x, &g, |xp| {
            let mut scratch = Array2::zeros((rows, cols));
            distill_loss_into(xp.view(), y.view(), t, 1.0, &mut scratch.view_mut()).unwrap()
        });
        assert!(err < 1e-7, "D ({rows}x{cols}, T {t}): fd error {err:.3e}");
    }
    // D(x, x) = 0
    let x = random(4, 6, 3);
    let mut g = Array2::zeros((4, 6));
    let d = distill_loss_into(x.view(), x.view(), 1.0, 1.0, &mut g.view_mut()).unwrap();
    assert!(d.abs() < 1e-14 && g.iter().all(|v| v.abs() < 1e-14));
}

fn format_a(
    labels: Vec<f64>,
) -> impl Fn(ArrayView2<'_, f64>, &mut ArrayViewMut2<'_, f64>) -> Result<f64, LossError> {
    let base = AngleLoss::new(AngleLossConfig {
        cosine_w: 1.0,
        ibn_w: 1.0,
        angle_w: 1.0,
        ..Default::default()
    });
    move |y, g| {
        base.compute_into(DataFormat::A, y, &labels, None, g)
            .map(|(l, _)| l)
    }
}

#[test]
fn whole_objective_matches_finite_differences_with_targets_held() {
    let (rows, dim, layers, k) = (6, 8, 4, 4);
    let labels = vec![0.0, 2.5, 5.0];
    let base = format_a(labels);
    let cfg = EseConfig {
        compression_size: k,
        kl_temperature: 0.7,
    };
    let pooled: Vec<Array2<f64>> = (0..layers).map(|l| random(rows, dim, 10 + l as u64)).collect();
    let views: Vec<_> = pooled.iter().map(|p| p.view()).collect();
    let out = ese_loss(&base, &cfg, &views).unwrap();
    let targets: Vec<Array2<f64>> = pooled.iter().map(|p| pca_target(&p.view(), k).unwrap()).collect();
    let tv: Vec<_> = targets.iter().map(|t| t.view()).collect();
    let held = ese_loss_with_targets(&base, &cfg, &views, &tv).unwrap();
    assert_eq!(out.loss, held.loss);
    // the parts add up to the loss with the documented weights
    let n = layers as f64;
    let mut sum = out.parts.teacher + out.parts.teacher_slim + out.parts.teacher_distill;
    for l in 1..layers {
        sum += (out.parts.student[l - 1] + out.parts.student_distill[l - 1])
            / ((n - 1.0) * (1.0 + (l as f64).ln()));
    }
    assert!((sum - out.loss).abs() < 1e-12 * out.loss.abs());
    for l in 0..layers {
        let err = fd_check(&pooled[l], &out.grads[l], |xp| {
            let mut v = views.clone();
            v[l] = xp.view();
            ese_loss_with_targets(&base, &cfg, &v, &tv).unwrap().loss
        });
        assert!(err < 1e-6, "layer {}: fd error {err:.3e}", l + 1);
        // students see only the first k columns; the teacher's full term sees them all
        if l + 1 < layers {
            assert!(
                out.grads[l]
                    .columns()
                    .into_iter()
                    .skip(k)
                    .all(|c| c.iter().all(|&v| v == 0.0))
            );
        }
    }
}

#[test]
fn pca_target_is_deterministic_and_signed() {
    let x = random(10, 12, 5);
    let a = pca_target(&x.view(), 5).unwrap();
    let b = pca_target(&x.view(), 5).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.dim(), (10, 5));
    assert!(a.iter().all(|v| v.is_finite()));
}

#[test]
fn matryoshka_matches_finite_differences_and_composes_with_ese() {
    let base = format_a(vec![1.0, 4.0, 0.5]);
    let m = Matryoshka::new(vec![8, 6, 4, 2], vec![1.0, 0.5, 0.25, 2.0]).unwrap();
    let y = random(6, 8, 7);
    let mut g = Array2::zeros((6, 8));
    let (loss, used) = m.loss_into(&base, y.view(), &mut g.view_mut()).unwrap();
    assert_eq!(used.len(), 4);
    let want: f64 = used.iter().zip(m.weights()).map(|((_, l), w)| w * l).sum();
    assert!((loss - want).abs() < 1e-12);
    let err = fd_check(&y, &g, |yp| {
        let mut s = Array2::zeros((6, 8));
        m.loss_into(&base, yp.view(), &mut s.view_mut()).unwrap().0
    });
    assert!(err < 1e-6, "matryoshka fd error {err:.3e}");
    // inside ESE: the truncated terms (k = 4) use the widths 4 and 2
    let obj = MatryoshkaObjective {
        matryoshka: &m,
        base: &base,
    };
    let pooled = [random(6, 8, 8), random(6, 8, 9)];
    let views: Vec<_> = pooled.iter().map(|p| p.view()).collect();
    let out = ese_loss(
        &obj,
        &EseConfig {
            compression_size: 4,
            kl_temperature: 1.0,
        },
        &views,
    )
    .unwrap();
    assert!(out.loss.is_finite());
}

#[test]
fn bad_settings_are_errors() {
    let base = format_a(vec![1.0, 0.0]);
    let p = random(4, 6, 1);
    let views = [p.view()];
    let err = ese_loss(
        &base,
        &EseConfig {
            compression_size: 7,
            kl_temperature: 1.0,
        },
        &views,
    )
    .unwrap_err();
    assert!(err.to_string().contains("ese_compression_size"), "{err}");
    let err = ese_loss(
        &base,
        &EseConfig {
            compression_size: 4,
            kl_temperature: 0.0,
        },
        &views,
    )
    .unwrap_err();
    assert!(err.to_string().contains("ese_kl_temperature"), "{err}");
    assert!(ese_loss(&base, &EseConfig::default(), &[]).is_err());
    assert!(Matryoshka::new(vec![4, 2], vec![1.0]).is_err());
    assert!(Matryoshka::new(vec![], vec![]).is_err());
    assert!(Matryoshka::new(vec![0], vec![]).is_err());
    let m = Matryoshka::new(vec![16], vec![]).unwrap();
    let mut g = Array2::zeros((4, 6));
    assert!(m.loss_into(&base, p.view(), &mut g.view_mut()).is_err());
}
