//! Duplicate texts in the contrastive formats B and C: with text identities, a known positive of a query (its
//! positive's text elsewhere in the batch, its own text, the positive of a query with the same text) is left out of
//! that query's softmax instead of counting as a negative; without duplicates nothing changes, bit for bit.

use angle_loss::{
    AngleLoss, AngleLossConfig, ContrastiveLayout, DataFormat, LossError, Real, contrastive_loss,
    contrastive_loss_with_ids, contrastive_loss_with_ids_into,
};
use ndarray::{Array1, Array2, ArrayView1};

fn batch<F: Real>(rows: usize, dim: usize, seed: u64) -> Array2<F> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    Array2::from_shape_fn((rows, dim), |_| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        F::of(((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0)
    })
}

/// Rows holding the same text get the same embedding, as an encoder gives them.
fn same_text_same_row(y: &mut Array2<f64>, ids: &[u64]) {
    for i in 0..y.nrows() {
        if let Some(first) = (0..i).find(|&j| ids[j] == ids[i]) {
            let r = y.row(first).to_owned();
            y.row_mut(i).assign(&r);
        }
    }
}

fn all_formats() -> [(DataFormat, ContrastiveLayout, usize); 2] {
    [
        (DataFormat::B, ContrastiveLayout::QueryPositive, 2),
        (DataFormat::C, ContrastiveLayout::QueryPositiveNegative, 3),
    ]
}

/// `None` and all-distinct identities give exactly today's numbers, on the single-threaded path and on the blocked,
/// multi-threaded one, in f32 and f64.
#[test]
fn distinct_ids_change_no_bit() {
    fn check<F: Real>(examples: usize, dim: usize) {
        let loss = AngleLoss::new(AngleLossConfig {
            cosine_w: 1.0,
            ..AngleLossConfig::default()
        });
        for (format, layout, group) in all_formats() {
            let y = batch::<F>(group * examples, dim, 5 + group as u64);
            let distinct: Vec<u64> = (0..y.nrows() as u64).map(|i| i * 7919 + 3).collect();
            let plain = loss.compute(format, y.view(), &[], None).unwrap();
            let with = loss.compute(format, y.view(), &[], Some(&distinct)).unwrap();
            assert_eq!(plain, with, "{format:?}");
            let tau = F::of(20.0);
            let a = contrastive_loss(y.view(), layout, tau).unwrap();
            let b = contrastive_loss_with_ids(y.view(), layout, Some(&distinct), tau).unwrap();
            let c = contrastive_loss_with_ids(y.view(), layout, None, tau).unwrap();
            assert_eq!(a, b, "{layout:?}");
            assert_eq!(a, c, "{layout:?}");
        }
    }
    check::<f64>(5, 8);
    check::<f32>(5, 8);
    // 700 queries x 1400 candidates x 64: above the threshold where the softmax splits over threads and blocks.
    check::<f32>(700, 64);
}

/// InfoNCE of one query against explicit candidate rows, the target being `cands[0]`.
fn info_nce(q: ArrayView1<'_, f64>, cands: &[Array1<f64>], tau: f64) -> f64 {
    let unit = |v: ArrayView1<'_, f64>| &v / v.dot(&v).sqrt();
    let q = unit(q);
    let s: Vec<f64> = cands.iter().map(|c| tau * q.dot(&unit(c.view()))).collect();
    let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    mx + s.iter().map(|v| (v - mx).exp()).sum::<f64>().ln() - s[0]
}

/// The masked loss equals, query by query, InfoNCE over the batch's candidates with that query's duplicates removed.
#[test]
fn masking_equals_removing_the_duplicates() {
    // (query, positive, negative) text identities:
    // example 1 shares example 0's positive; example 2's negative is example 0's positive; example 3 repeats
    // example 0's query with another positive; example 4's negative is example 2's query text.
    let texts: [[u64; 3]; 5] = [[100, 1, 2], [101, 1, 3], [102, 4, 1], [100, 5, 6], [103, 7, 102]];
    let ids: Vec<u64> = texts.iter().flatten().copied().collect();
    let mut y = batch::<f64>(15, 6, 31);
    same_text_same_row(&mut y, &ids);
    let (tau, b) = (20.0, texts.len());

    // Which candidates query k keeps: its own positive, and every candidate that is not a known positive of it.
    let known = |k: usize| -> Vec<u64> {
        let mut p = vec![texts[k][0]];
        p.extend(texts.iter().filter(|t| t[0] == texts[k][0]).map(|t| t[1]));
        p
    };
    let naive = |with_negatives: bool| -> f64 {
        let slots: &[usize] = if with_negatives { &[1, 2] } else { &[1] };
        let mut total = 0.0;
        for k in 0..b {
            let mut cands = vec![y.row(3 * k + 1).to_owned()];
            let mut removed = 0;
            for &slot in slots {
                for j in 0..b {
                    if slot == 1 && j == k {
                        continue;
                    }
                    if known(k).contains(&texts[j][slot]) {
                        removed += 1;
                    } else {
                        cands.push(y.row(3 * j + slot).to_owned());
                    }
                }
            }
            let nothing = k == 4 || (k == 2 && !with_negatives);
            assert!(removed > 0 || nothing, "query {k} has a duplicate to remove");
            total += info_nce(y.row(3 * k), &cands, tau);
        }
        total / b as f64
    };

    let got = contrastive_loss_with_ids(
        y.view(),
        ContrastiveLayout::QueryPositiveNegative,
        Some(&ids),
        tau,
    )
    .unwrap()
    .loss;
    let want = naive(true);
    assert!((got - want).abs() < 1e-12 * want, "{got} vs {want}");
    let unmasked = contrastive_loss(y.view(), ContrastiveLayout::QueryPositiveNegative, tau)
        .unwrap()
        .loss;
    assert!(
        unmasked > got + 1e-3,
        "the duplicates were hard negatives: {unmasked} vs {got}"
    );

    // Format C's query-positive term sees the positives only, with their identities.
    let o = AngleLoss::new(AngleLossConfig {
        angle_w: 0.0,
        ..AngleLossConfig::default()
    })
    .compute(DataFormat::C, y.view(), &[], Some(&ids))
    .unwrap();
    let qp = o.parts.contrastive.unwrap();
    let want_qp = naive(false);
    assert!((qp - want_qp).abs() < 1e-12 * want_qp, "{qp} vs {want_qp}");
    assert_eq!(o.parts.contrastive_negative, Some(got));
}

/// Two queries sharing one positive text: each is left with its own positive alone, so loss and gradient are 0,
/// where without identities each counts the other's copy of its positive as a negative.
#[test]
fn a_shared_positive_is_not_a_negative() {
    let mut y = batch::<f64>(4, 8, 41);
    let ids = [1u64, 9, 2, 9];
    same_text_same_row(&mut y, &ids);
    let o = AngleLoss::default()
        .compute(DataFormat::B, y.view(), &[], Some(&ids))
        .unwrap();
    assert_eq!(o.loss, 0.0);
    assert!(o.grad.iter().all(|&g| g == 0.0));
    let plain = AngleLoss::default().format_b(y.view()).unwrap();
    assert!(plain.loss > 0.1, "{}", plain.loss);
}

#[test]
fn text_ids_must_cover_every_row() {
    let y = batch::<f64>(6, 4, 8);
    let want = LossError::TextIdCount { got: 5, rows: 6 };
    let short = [1u64, 2, 3, 4, 5];
    for (format, layout, _) in all_formats() {
        let r = contrastive_loss_with_ids(y.view(), layout, Some(&short), 20.0);
        assert_eq!(r.unwrap_err(), want);
        let r = AngleLoss::default().compute(format, y.view(), &[], Some(&short));
        assert_eq!(r.unwrap_err(), want, "{format:?}");
    }
    let mut g = Array2::zeros((6, 4));
    let r = contrastive_loss_with_ids_into(
        y.view(),
        ContrastiveLayout::QueryPositive,
        Some(&short),
        20.0,
        1.0,
        &mut g.view_mut(),
    );
    assert_eq!(r.unwrap_err(), want);
}
