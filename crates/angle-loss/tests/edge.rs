//! Edge cases: bad input is an error, degenerate input stays finite, and the in-batch-negative targets differ from
//! the reference's exactly where they should.

use angle_loss::{
    AngleLoss, AngleLossConfig, AnglePooling, ContrastiveLayout, DataFormat, LossError, angle_loss,
    angle_loss_into, contrastive_loss, cosine_loss, cosine_loss_into, in_batch_negative_loss,
};
use ndarray::Array2;

fn batch(rows: usize, dim: usize, seed: u64) -> Array2<f64> {
    // A small deterministic generator: the tests need varied numbers, not a particular distribution.
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    Array2::from_shape_fn((rows, dim), |_| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    })
}

fn all_pair_objectives(y: &Array2<f64>, labels: &[f64]) -> Vec<(&'static str, Result<f64, LossError>)> {
    let a = AngleLoss::new(AngleLossConfig {
        cosine_w: 1.0,
        ..AngleLossConfig::default()
    });
    vec![
        ("cosine", cosine_loss(y.view(), labels, 20.0).map(|o| o.loss)),
        (
            "angle",
            angle_loss(y.view(), labels, 20.0, AnglePooling::Sum).map(|o| o.loss),
        ),
        (
            "ibn",
            in_batch_negative_loss(y.view(), labels, None, 20.0).map(|o| o.loss),
        ),
        ("format_a", a.format_a(y.view(), labels, None).map(|o| o.loss)),
    ]
}

#[test]
fn nan_and_infinite_embeddings_are_errors() {
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut y = batch(4, 6, 1);
        y[[2, 3]] = bad;
        for (name, r) in all_pair_objectives(&y, &[1.0, 0.0]) {
            assert!(
                matches!(
                    r,
                    Err(LossError::NonFinite {
                        tensor: "y_pred",
                        row: 2,
                        col: 3,
                        ..
                    })
                ),
                "{name}: {r:?}"
            );
        }
        let mut y = batch(6, 4, 2);
        y[[5, 0]] = bad;
        let r = contrastive_loss(y.view(), ContrastiveLayout::QueryPositiveNegative, 20.0);
        assert!(
            matches!(r, Err(LossError::NonFinite { row: 5, col: 0, .. })),
            "{r:?}"
        );
        assert!(AngleLoss::default().format_b(y.view()).is_err());
        assert!(AngleLoss::default().format_c(y.view()).is_err());
    }
}

#[test]
fn nan_label_is_an_error() {
    let y = batch(4, 6, 3);
    for (name, r) in all_pair_objectives(&y, &[1.0, f64::NAN]) {
        assert!(
            matches!(
                r,
                Err(LossError::NonFinite {
                    tensor: "labels",
                    row: 1,
                    ..
                })
            ),
            "{name}: {r:?}"
        );
    }
}

#[test]
fn label_count_must_match_pairs() {
    let y = batch(6, 4, 4);
    for (name, r) in all_pair_objectives(&y, &[1.0, 0.0]) {
        assert_eq!(
            r,
            Err(LossError::LabelCount {
                got: 2,
                rows: 6,
                expected: 3
            }),
            "{name}"
        );
    }
}

#[test]
fn odd_rows_for_pairs_are_an_error() {
    let y = batch(5, 4, 5);
    for (name, r) in all_pair_objectives(&y, &[1.0, 0.0]) {
        assert_eq!(r, Err(LossError::OddRows { rows: 5 }), "{name}");
    }
}

#[test]
fn odd_dim_is_an_error_for_the_angle_only() {
    let y = batch(4, 5, 6);
    let r = angle_loss(y.view(), &[1.0, 0.0], 20.0, AnglePooling::Sum);
    assert_eq!(r.unwrap_err(), LossError::OddDim { dim: 5 });
    let with_angle = AngleLoss::default();
    assert_eq!(
        with_angle.format_a(y.view(), &[1.0, 0.0], None).unwrap_err(),
        LossError::OddDim { dim: 5 }
    );
    let without = AngleLoss::new(AngleLossConfig {
        angle_w: 0.0,
        ..AngleLossConfig::default()
    });
    assert!(without.format_a(y.view(), &[1.0, 0.0], None).is_ok());
    assert!(cosine_loss(y.view(), &[1.0, 0.0], 20.0).is_ok());
    let y = batch(6, 5, 6);
    assert_eq!(
        AngleLoss::default().format_c(y.view()).unwrap_err(),
        LossError::OddDim { dim: 5 }
    );
}

#[test]
fn empty_batches_are_errors() {
    for (rows, dim) in [(0, 4), (4, 0)] {
        let y = Array2::<f64>::zeros((rows, dim));
        let labels = vec![1.0; rows / 2];
        for (name, r) in all_pair_objectives(&y, &labels) {
            assert!(
                matches!(r, Err(LossError::Empty { .. })),
                "{name} {rows}x{dim}: {r:?}"
            );
        }
        for layout in [
            ContrastiveLayout::QueryPositive,
            ContrastiveLayout::QueryPositiveNegative,
        ] {
            let r = contrastive_loss(y.view(), layout, 20.0);
            assert!(matches!(r, Err(LossError::Empty { .. })), "{r:?}");
        }
        assert!(matches!(
            AngleLoss::default().format_b(y.view()),
            Err(LossError::Empty { .. })
        ));
        assert!(matches!(
            AngleLoss::default().format_c(y.view()),
            Err(LossError::Empty { .. })
        ));
    }
}

#[test]
fn rows_must_divide_into_examples_for_formats_b_and_c() {
    let y = batch(5, 4, 7);
    let r = contrastive_loss(y.view(), ContrastiveLayout::QueryPositive, 20.0);
    assert!(
        matches!(
            r,
            Err(LossError::RowsNotMultiple {
                rows: 5,
                group: 2,
                ..
            })
        ),
        "{r:?}"
    );
    let r = AngleLoss::default().format_b(y.view());
    assert!(
        matches!(
            r,
            Err(LossError::RowsNotMultiple {
                rows: 5,
                group: 2,
                ..
            })
        ),
        "{r:?}"
    );
    let y = batch(8, 4, 7);
    let r = contrastive_loss(y.view(), ContrastiveLayout::QueryPositiveNegative, 20.0);
    assert!(
        matches!(
            r,
            Err(LossError::RowsNotMultiple {
                rows: 8,
                group: 3,
                ..
            })
        ),
        "{r:?}"
    );
    let r = AngleLoss::default().format_c(y.view());
    assert!(
        matches!(
            r,
            Err(LossError::RowsNotMultiple {
                rows: 8,
                group: 3,
                ..
            })
        ),
        "{r:?}"
    );
}

#[test]
fn text_ids_must_cover_every_row() {
    let y = batch(4, 4, 8);
    let r = in_batch_negative_loss(y.view(), &[1.0, 1.0], Some(&[1, 2, 3]), 20.0);
    assert_eq!(r.unwrap_err(), LossError::TextIdCount { got: 3, rows: 4 });
}

#[test]
fn gradient_buffer_must_have_the_batch_shape() {
    let y = batch(4, 4, 9);
    let mut g = Array2::<f64>::zeros((4, 3));
    let r = cosine_loss_into(y.view(), &[1.0, 0.0], 20.0, 1.0, &mut g.view_mut());
    assert_eq!(
        r.unwrap_err(),
        LossError::GradShape {
            got: (4, 3),
            expected: (4, 4)
        }
    );
}

#[test]
fn non_finite_scale_is_an_error() {
    let y = batch(4, 4, 10);
    let r = cosine_loss(y.view(), &[1.0, 0.0], f64::NAN);
    assert!(
        matches!(r, Err(LossError::BadParameter { name: "tau", .. })),
        "{r:?}"
    );
    let a = AngleLoss::new(AngleLossConfig {
        angle_tau: f64::INFINITY,
        ..AngleLossConfig::default()
    });
    let r = a.format_a(y.view(), &[1.0, 0.0], None);
    assert!(
        matches!(
            r,
            Err(LossError::BadParameter {
                name: "angle_tau",
                ..
            })
        ),
        "{r:?}"
    );
}

/// A zero embedding: rows are divided by max(‖x‖, 1e-12), so loss and gradient stay finite (in f32 too).
#[test]
fn zero_norm_embedding_is_finite() {
    fn check<F: angle_loss::Real>() {
        let mut y = batch(6, 8, 11).mapv(F::of);
        y.row_mut(2).fill(F::zero());
        y.row_mut(3).fill(F::zero()); // both texts of pair 1
        let labels = [F::of(1.0), F::of(2.0), F::of(0.0)];
        let finite = |o: &angle_loss::LossGrad<F>| o.loss.is_finite() && o.grad.iter().all(|v| v.is_finite());
        assert!(finite(&cosine_loss(y.view(), &labels, F::of(20.0)).unwrap()));
        for p in [AnglePooling::Sum, AnglePooling::Mean] {
            assert!(finite(&angle_loss(y.view(), &labels, F::of(20.0), p).unwrap()));
        }
        assert!(finite(
            &in_batch_negative_loss(y.view(), &labels, None, F::of(20.0)).unwrap()
        ));
        for layout in [
            ContrastiveLayout::QueryPositive,
            ContrastiveLayout::QueryPositiveNegative,
        ] {
            assert!(finite(&contrastive_loss(y.view(), layout, F::of(20.0)).unwrap()));
        }
        let a = AngleLoss::new(AngleLossConfig {
            cosine_w: 1.0,
            ..AngleLossConfig::default()
        });
        for o in [
            a.format_a(y.view(), &labels, None).unwrap(),
            a.format_b(y.view()).unwrap(),
            a.format_c(y.view()).unwrap(),
        ] {
            assert!(o.loss.is_finite() && o.grad.iter().all(|v| v.is_finite()));
        }
    }
    check::<f32>();
    check::<f64>();
}

#[test]
fn huge_scale_stays_finite() {
    let y = batch(8, 6, 12);
    let labels = [0.0, 1.0, 2.0, 3.0];
    for tau in [1e4, -1e4] {
        let o = cosine_loss(y.view(), &labels, tau).unwrap();
        assert!(o.loss.is_finite() && o.grad.iter().all(|v| v.is_finite()));
        let o = in_batch_negative_loss(y.view(), &labels, None, tau).unwrap();
        assert!(o.loss.is_finite() && o.grad.iter().all(|v| v.is_finite()));
        let o = angle_loss(y.view(), &labels, tau, AnglePooling::Sum).unwrap();
        assert!(o.loss.is_finite() && o.grad.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn all_equal_labels_give_zero_loss_and_gradient() {
    let y = batch(8, 6, 13);
    let labels = [2.0; 4];
    for o in [
        cosine_loss(y.view(), &labels, 20.0).unwrap(),
        angle_loss(y.view(), &labels, 20.0, AnglePooling::Mean).unwrap(),
    ] {
        assert_eq!(o.loss, 0.0);
        assert!(o.grad.iter().all(|&g| g == 0.0));
    }
}

#[test]
fn all_negative_pairs_give_zero_in_batch_loss() {
    let y = batch(8, 6, 14);
    let o = in_batch_negative_loss(y.view(), &[0.0, 0.3, -0.9, 0.0], None, 20.0).unwrap();
    assert_eq!(o.loss, 0.0);
    assert!(o.grad.iter().all(|&g| g == 0.0));
}

/// `*_into` adds into the buffer: two calls give twice the gradient.
#[test]
fn into_variants_add() {
    let y = batch(6, 8, 15);
    let labels = [1.0, 0.0, 3.0];
    let once = angle_loss(y.view(), &labels, 20.0, AnglePooling::Sum).unwrap();
    let mut g = Array2::zeros(y.dim());
    for _ in 0..2 {
        angle_loss_into(y.view(), &labels, 20.0, AnglePooling::Sum, 1.0, &mut g.view_mut()).unwrap();
    }
    let diff = (&g - &(2.0 * &once.grad))
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(diff < 1e-12, "{diff}");
}

#[test]
fn non_contiguous_views_are_accepted() {
    let y = batch(6, 8, 16);
    let t = y.t().to_owned(); // [8, 6], then viewed transposed: same values, column-major strides
    let labels = [1.0, 0.0, 3.0];
    let a = AngleLoss::new(AngleLossConfig {
        cosine_w: 1.0,
        ..AngleLossConfig::default()
    });
    let want = a.format_a(y.view(), &labels, None).unwrap();
    let got = a.format_a(t.t(), &labels, None).unwrap();
    assert_eq!(want, got);
}

// ---- in-batch negatives against a direct transcription of the reference's formula ----

/// `mean over rows i of −Σ_j target[i][j] · log softmax_{j ≠ i}(τ cos(i, j))`, with an explicit target matrix and an
/// optional extra column mask; every quantity computed the slow, obvious way.
fn ibn_naive(y: &Array2<f64>, target: &Array2<f64>, masked: &dyn Fn(usize, usize) -> bool, tau: f64) -> f64 {
    let n = y.nrows();
    let norm: Vec<f64> = (0..n).map(|i| y.row(i).dot(&y.row(i)).sqrt()).collect();
    let mut total = 0.0;
    for i in 0..n {
        let logits: Vec<Option<f64>> = (0..n)
            .map(|j| (j != i && !masked(i, j)).then(|| tau * y.row(i).dot(&y.row(j)) / (norm[i] * norm[j])))
            .collect();
        let z: f64 = logits.iter().flatten().map(|l| l.exp()).sum();
        for j in 0..n {
            if target[[i, j]] != 0.0 {
                let l = logits[j].expect("a target is never masked");
                total -= target[[i, j]] * (l - z.ln());
            }
        }
    }
    total / n as f64
}

/// The reference's `make_target_matrix`: targets where `j·y_j == partner(i)·y_i`, with -2/-1 for label 0.
fn reference_targets(labels_per_pair: &[f64]) -> Array2<f64> {
    let n = 2 * labels_per_pair.len();
    let y: Vec<i64> = (0..n).map(|i| labels_per_pair[i / 2] as i64).collect();
    Array2::from_shape_fn((n, n), |(i, j)| {
        let idx1 = j as i64 * y[j] + if y[j] == 0 { -2 } else { 0 };
        let partner = (i as i64 + 1) - (i as i64 % 2) * 2;
        let idx2 = partner * y[i] + if y[i] == 0 { -1 } else { 0 };
        f64::from(idx1 == idx2)
    })
}

fn partner_targets(labels_per_pair: &[f64]) -> Array2<f64> {
    let n = 2 * labels_per_pair.len();
    Array2::from_shape_fn((n, n), |(i, j)| {
        f64::from(j == (i ^ 1) && labels_per_pair[i / 2].trunc() != 0.0)
    })
}

#[test]
fn in_batch_negatives_match_the_reference_for_binary_labels() {
    let y = batch(12, 16, 17);
    let labels = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0];
    assert_eq!(reference_targets(&labels), partner_targets(&labels));
    let want = ibn_naive(&y, &reference_targets(&labels), &|_, _| false, 20.0);
    let got = in_batch_negative_loss(y.view(), &labels, None, 20.0)
        .unwrap()
        .loss;
    assert!((got - want).abs() < 1e-12 * want.abs(), "{got} vs {want}");
}

/// Graded labels: the reference's `label × index` targets pick up unrelated rows (row 0, partner 1, label 2, has
/// idx 1·2 = 2; row 2, label 1, has idx 2·1 = 2 as well), we keep only the partner.
#[test]
fn graded_labels_give_no_spurious_positives() {
    let labels = [2.0, 1.0, 0.0, 4.7];
    let reference = reference_targets(&labels);
    assert_eq!(reference[[0, 1]], 1.0);
    assert_eq!(
        reference[[0, 2]],
        1.0,
        "the reference's spurious positive this test is about"
    );
    let ours = partner_targets(&labels);
    assert_eq!(ours.sum(), 6.0, "one target per row of the three positive pairs");

    let y = batch(8, 16, 18);
    let got = in_batch_negative_loss(y.view(), &labels, None, 20.0)
        .unwrap()
        .loss;
    let want = ibn_naive(&y, &ours, &|_, _| false, 20.0);
    let theirs = ibn_naive(&y, &reference, &|_, _| false, 20.0);
    assert!((got - want).abs() < 1e-12 * want.abs(), "{got} vs {want}");
    assert!(
        (got - theirs).abs() > 1e-3,
        "the reference's targets give a different loss here"
    );
}

/// Rows holding the same text are never each other's negatives; the partner stays when it is the target.
#[test]
fn identical_texts_are_masked_not_negatives() {
    let mut y = batch(8, 16, 19);
    // Row 4 repeats the text of row 0 (same embedding); row 1 is row 0's partner and holds the same text too.
    let r0 = y.row(0).to_owned();
    y.row_mut(4).assign(&r0);
    y.row_mut(1).assign(&r0);
    let ids = [7u64, 7, 3, 4, 7, 5, 6, 8];
    let labels = [1.0, 1.0, 1.0, 1.0];
    let masked = |i: usize, j: usize| ids[i] == ids[j] && j != (i ^ 1);
    let want = ibn_naive(&y, &partner_targets(&labels), &masked, 20.0);
    let got = in_batch_negative_loss(y.view(), &labels, Some(&ids), 20.0)
        .unwrap()
        .loss;
    assert!((got - want).abs() < 1e-12 * want.abs(), "{got} vs {want}");
    let unmasked = in_batch_negative_loss(y.view(), &labels, None, 20.0)
        .unwrap()
        .loss;
    assert!(
        unmasked > got + 1e-3,
        "without identities the duplicate is a (hard) negative"
    );
    let distinct: Vec<u64> = (0..8).collect();
    let same = in_batch_negative_loss(y.view(), &labels, Some(&distinct), 20.0)
        .unwrap()
        .loss;
    assert_eq!(same, unmasked);
}

/// Big enough that the softmax engine splits over threads and blocks; still matches the obvious formula.
#[test]
fn blocked_parallel_path_matches_the_formula() {
    let n_pairs = 300;
    let y = batch(2 * n_pairs, 24, 20);
    let labels: Vec<f64> = (0..n_pairs).map(|k| (k % 3 != 0) as u8 as f64).collect();
    let want = ibn_naive(&y, &partner_targets(&labels), &|_, _| false, 20.0);
    let got = in_batch_negative_loss(y.view(), &labels, None, 20.0).unwrap();
    assert!(
        (got.loss - want).abs() < 1e-11 * want.abs(),
        "{} vs {want}",
        got.loss
    );
    // And the f32 path agrees with the f64 one.
    let y32 = y.mapv(|v| v as f32);
    let l32: Vec<f32> = labels.iter().map(|&v| v as f32).collect();
    let got32 = in_batch_negative_loss(y32.view(), &l32, None, 20.0f32).unwrap();
    assert!((f64::from(got32.loss) - want).abs() < 1e-5 * want.abs());
    let scale = got.grad.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let diff = got
        .grad
        .iter()
        .zip(got32.grad.iter())
        .fold(0.0f64, |m, (a, b)| m.max((a - f64::from(*b)).abs()));
    assert!(diff < 1e-4 * scale, "{diff} vs {scale}");
}

#[test]
fn config_defaults_and_serde() {
    let c = AngleLossConfig::default();
    assert_eq!(
        (
            c.cosine_w,
            c.ibn_w,
            c.cln_w,
            c.angle_w,
            c.cosine_tau,
            c.ibn_tau,
            c.angle_tau,
            c.angle_pooling
        ),
        (0.0, 1.0, 1.0, 0.02, 20.0, 20.0, 20.0, AnglePooling::Sum)
    );
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<AngleLossConfig>(&json).unwrap(), c);
    // Missing keys take the defaults; the reference's key name for the pooling is accepted too.
    let partial: AngleLossConfig =
        serde_json::from_str(r#"{"cosine_w": 1.0, "angle_pooling_strategy": "mean"}"#).unwrap();
    assert_eq!(partial.cosine_w, 1.0);
    assert_eq!(partial.angle_pooling, AnglePooling::Mean);
    assert_eq!(partial.ibn_w, 1.0);
    assert!(serde_json::from_str::<AngleLossConfig>(r#"{"cosine_weight": 1.0}"#).is_err());
    assert_eq!(serde_json::to_string(&DataFormat::C).unwrap(), r#""C""#);
}

#[test]
fn parts_are_reported() {
    let y = batch(9, 8, 21);
    let a = AngleLoss::new(AngleLossConfig {
        cosine_w: 1.0,
        ..AngleLossConfig::default()
    });
    let o = a.format_c(y.view()).unwrap();
    let p = o.parts;
    let (c, cn, an, co) = (
        p.contrastive.unwrap(),
        p.contrastive_negative.unwrap(),
        p.angle.unwrap(),
        p.cosine.unwrap(),
    );
    assert!(p.in_batch_negative.is_none());
    let want = (c + cn) / 2.0 + 0.02 * an + co;
    assert!((o.loss - want).abs() < 1e-12, "{} vs {want}", o.loss);
    let y = batch(4, 8, 22);
    let o = AngleLoss::default()
        .format_a(y.view(), &[1.0, 0.0], None)
        .unwrap();
    assert!(o.parts.cosine.is_none());
    let want = o.parts.in_batch_negative.unwrap() + 0.02 * o.parts.angle.unwrap();
    assert!((o.loss - want).abs() < 1e-12);
}
