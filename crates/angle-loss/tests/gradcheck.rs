//! The analytic gradients against central finite differences in f64, over random shapes, labels with ties, scales
//! and poolings, for every objective and every format of `AngleLoss`.

use angle_loss::{
    AngleLoss, AngleLossConfig, AnglePooling, ContrastiveLayout, DataFormat, LossGrad, angle_loss,
    contrastive_loss, contrastive_loss_with_ids, cosine_loss, in_batch_negative_loss,
};
use ndarray::Array2;
use proptest::prelude::*;

const H: f64 = 1e-6;

/// Max |analytic − numeric| over all elements, relative to max(1, max |analytic|).
fn fd_error(y: &Array2<f64>, f: impl Fn(&Array2<f64>) -> LossGrad<f64>) -> f64 {
    let base = f(y);
    let scale = base.grad.iter().fold(1.0f64, |m, g| m.max(g.abs()));
    let mut worst = 0.0f64;
    let mut yp = y.clone();
    for idx in 0..y.len() {
        let (r, c) = (idx / y.ncols(), idx % y.ncols());
        let orig = y[[r, c]];
        yp[[r, c]] = orig + H;
        let up = f(&yp).loss;
        yp[[r, c]] = orig - H;
        let down = f(&yp).loss;
        yp[[r, c]] = orig;
        let numeric = (up - down) / (2.0 * H);
        worst = worst.max((numeric - base.grad[[r, c]]).abs());
    }
    worst / scale
}

const TOL: f64 = 2e-6;

fn matrix(rows: usize, dim: usize) -> impl Strategy<Value = Array2<f64>> {
    // Values away from 0 in magnitude so no norm or pooled angle sits on a kink.
    proptest::collection::vec(-2.0f64..2.0, rows * dim)
        .prop_map(move |v| Array2::from_shape_vec((rows, dim), v).unwrap())
}

/// Labels drawn from a small set, so ties are frequent.
fn labels(n: usize) -> impl Strategy<Value = Vec<f64>> {
    proptest::collection::vec(
        prop_oneof![Just(0.0), Just(1.0), Just(2.0), Just(3.5), Just(0.4)],
        n,
    )
}

fn tau() -> impl Strategy<Value = f64> {
    prop_oneof![Just(1.0), Just(5.0), Just(20.0)]
}

fn pooling() -> impl Strategy<Value = AnglePooling> {
    prop_oneof![Just(AnglePooling::Sum), Just(AnglePooling::Mean)]
}

/// Text identities from a small set (duplicates are frequent); rows holding the same text get the same embedding, as
/// an encoder would give them (the finite differences still move each row on its own).
fn with_duplicates(mut y: Array2<f64>, ids: &[u64]) -> Array2<f64> {
    for i in 0..y.nrows() {
        if let Some(first) = (0..i).find(|&j| ids[j] == ids[i]) {
            let r = y.row(first).to_owned();
            y.row_mut(i).assign(&r);
        }
    }
    y
}

fn pairs_case() -> impl Strategy<Value = (Array2<f64>, Vec<f64>)> {
    (1usize..=5, 1usize..=4).prop_flat_map(|(n, h)| (matrix(2 * n, 2 * h), labels(n)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn cosine_gradient((y, l) in pairs_case(), tau in tau()) {
        let e = fd_error(&y, |y| cosine_loss(y.view(), &l, tau).unwrap());
        prop_assert!(e < TOL, "fd error {e:.3e}");
    }

    #[test]
    fn angle_gradient((y, l) in pairs_case(), tau in tau(), pooling in pooling()) {
        let e = fd_error(&y, |y| angle_loss(y.view(), &l, tau, pooling).unwrap());
        prop_assert!(e < TOL, "fd error {e:.3e}");
    }

    #[test]
    fn in_batch_negative_gradient(
        (y, l) in pairs_case(),
        tau in tau(),
        ids in proptest::collection::vec(0u64..4, 10),
        use_ids in any::<bool>(),
    ) {
        let ids = &ids[..y.nrows()];
        let ids = use_ids.then_some(ids);
        let e = fd_error(&y, |y| in_batch_negative_loss(y.view(), &l, ids, tau).unwrap());
        prop_assert!(e < TOL, "fd error {e:.3e}");
    }

    #[test]
    fn contrastive_gradient(
        (y, layout) in (1usize..=4, 1usize..=8, any::<bool>()).prop_flat_map(|(b, d, neg)| {
            let layout = if neg { ContrastiveLayout::QueryPositiveNegative } else { ContrastiveLayout::QueryPositive };
            let rows = b * if neg { 3 } else { 2 };
            (matrix(rows, d), Just(layout))
        }),
        tau in tau(),
    ) {
        let e = fd_error(&y, |y| contrastive_loss(y.view(), layout, tau).unwrap());
        prop_assert!(e < TOL, "fd error {e:.3e}");
    }

    #[test]
    fn contrastive_gradient_with_duplicate_texts(
        (y, layout) in (1usize..=4, 1usize..=8, any::<bool>()).prop_flat_map(|(b, d, neg)| {
            let layout = if neg { ContrastiveLayout::QueryPositiveNegative } else { ContrastiveLayout::QueryPositive };
            let rows = b * if neg { 3 } else { 2 };
            (matrix(rows, d), Just(layout))
        }),
        ids in proptest::collection::vec(0u64..4, 12),
        tau in tau(),
    ) {
        let ids = &ids[..y.nrows()];
        let y = with_duplicates(y, ids);
        let e = fd_error(&y, |y| contrastive_loss_with_ids(y.view(), layout, Some(ids), tau).unwrap());
        prop_assert!(e < TOL, "fd error {e:.3e}");
    }

    #[test]
    fn angle_loss_format_a_gradient(
        (y, l) in pairs_case(),
        cosine_w in prop_oneof![Just(0.0), Just(1.0)],
        ibn_w in prop_oneof![Just(0.0), Just(1.0)],
        angle_w in prop_oneof![Just(0.0), Just(0.02), Just(1.0)],
        taus in (tau(), tau(), tau()),
        angle_pooling in pooling(),
    ) {
        let config = AngleLossConfig {
            cosine_w, ibn_w, angle_w, cosine_tau: taus.0, ibn_tau: taus.1, angle_tau: taus.2, angle_pooling,
            ..AngleLossConfig::default()
        };
        let loss = AngleLoss::new(config);
        let e = fd_error(&y, |y| {
            let o = loss.compute(DataFormat::A, y.view(), &l, None).unwrap();
            LossGrad { loss: o.loss, grad: o.grad }
        });
        prop_assert!(e < TOL, "fd error {e:.3e}");
    }

    #[test]
    fn angle_loss_formats_b_and_c_gradient(
        (y, format) in (1usize..=3, 1usize..=4, any::<bool>()).prop_flat_map(|(b, h, c)| {
            let (rows, format) = if c { (3 * b, DataFormat::C) } else { (2 * b, DataFormat::B) };
            (matrix(rows, 2 * h), Just(format))
        }),
        cosine_w in prop_oneof![Just(0.0), Just(1.0)],
        ibn_w in prop_oneof![Just(0.0), Just(1.0)],
        cln_w in prop_oneof![Just(0.0), Just(1.0)],
        angle_w in prop_oneof![Just(0.0), Just(0.02), Just(1.0)],
        taus in (tau(), tau(), tau()),
        angle_pooling in pooling(),
        ids in proptest::collection::vec(0u64..4, 9),
        use_ids in any::<bool>(),
    ) {
        let config = AngleLossConfig {
            cosine_w, ibn_w, cln_w, angle_w, cosine_tau: taus.0, ibn_tau: taus.1, angle_tau: taus.2, angle_pooling,
        };
        let loss = AngleLoss::new(config);
        let ids = &ids[..y.nrows()];
        let y = if use_ids { with_duplicates(y, ids) } else { y };
        let ids = use_ids.then_some(ids);
        let e = fd_error(&y, |y| {
            let o = loss.compute(format, y.view(), &[], ids).unwrap();
            LossGrad { loss: o.loss, grad: o.grad }
        });
        prop_assert!(e < TOL, "fd error {e:.3e}");
    }
}
