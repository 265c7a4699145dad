//! The distillation terms (`angle_loss::distill`): analytic gradients against central finite differences in f64
//! over random shapes, temperatures and divisors; parity with PyTorch / angle-emb 0.6.1 / sentence-transformers in
//! float64 on every case of `tests/fixtures/distill.json` (written by `scripts/fixtures/distill_reference.py`; another
//! file from `ANGLE_DISTILL_FIXTURE`), in f64 and f32; the `*_into` accumulation; and each bad input's error.

use angle_loss::distill::{kl_into, margin_mse_into, mse_into};
use angle_loss::{LossError, Real};
use ndarray::{Array2, ArrayView2, ArrayViewMut2, array};
use proptest::prelude::*;
use serde_json::Value;

/// A term with its settings bound: `(student, teacher, weight, grad) -> loss`.
type Term<'a, F> = Box<
    dyn Fn(ArrayView2<'_, F>, ArrayView2<'_, F>, F, &mut ArrayViewMut2<'_, F>) -> Result<F, LossError> + 'a,
>;

fn loss_grad<F: Real>(term: &Term<'_, F>, s: &Array2<F>, t: &Array2<F>) -> (F, Array2<F>) {
    let mut g = Array2::zeros(s.dim());
    let loss = term(s.view(), t.view(), F::one(), &mut g.view_mut()).unwrap();
    (loss, g)
}

// -----------------------------------------------------------------------------------------------------------
// finite differences

const H: f64 = 1e-6;
const TOL: f64 = 2e-7;

/// Max |analytic − numeric| over the student's elements, relative to max(1, max |analytic|).
fn fd_error(term: &Term<'_, f64>, s: &Array2<f64>, t: &Array2<f64>) -> f64 {
    let (_, grad) = loss_grad(term, s, t);
    let scale = grad.iter().fold(1.0f64, |m, g| m.max(g.abs()));
    let mut sp = s.clone();
    let mut worst = 0.0f64;
    for ((r, c), &orig) in s.indexed_iter() {
        sp[[r, c]] = orig + H;
        let up = loss_grad(term, &sp, t).0;
        sp[[r, c]] = orig - H;
        let down = loss_grad(term, &sp, t).0;
        sp[[r, c]] = orig;
        worst = worst.max(((up - down) / (2.0 * H) - grad[[r, c]]).abs());
    }
    worst / scale
}

fn matrix(rows: usize, dim: usize, scale: f64) -> impl Strategy<Value = Array2<f64>> {
    proptest::collection::vec(-scale..scale, rows * dim)
        .prop_map(move |v| Array2::from_shape_vec((rows, dim), v).unwrap())
}

fn temperature() -> impl Strategy<Value = f64> {
    prop_oneof![Just(1.0), Just(0.5), Just(2.0), 0.1f64..5.0]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn kl_gradient(
        (s, t, batch) in (1usize..=6, 1usize..=9, 1usize..=4)
            .prop_flat_map(|(m, d, b)| (matrix(m, d, 3.0), matrix(m, d, 3.0), Just(b))),
        temp in temperature(),
    ) {
        let term: Term<'_, f64> = Box::new(move |s, t, w, g| kl_into(s, t, temp, batch, w, g));
        let e = fd_error(&term, &s, &t);
        prop_assert!(e < TOL, "fd error {e:.3e}");
    }

    #[test]
    fn mse_gradient(
        (s, t) in (1usize..=6, 1usize..=9).prop_flat_map(|(m, d)| (matrix(m, d, 3.0), matrix(m, d, 3.0))),
    ) {
        let term: Term<'_, f64> = Box::new(mse_into);
        let e = fd_error(&term, &s, &t);
        prop_assert!(e < TOL, "fd error {e:.3e}");
    }

    #[test]
    fn margin_mse_gradient(
        (s, t, group) in (1usize..=4, 3usize..=6, 1usize..=6, 1usize..=8)
            .prop_flat_map(|(b, g, d, dt)| (matrix(b * g, d, 2.0), matrix(b * g, dt, 2.0), Just(g))),
    ) {
        let term: Term<'_, f64> = Box::new(move |s, t, w, g| margin_mse_into(s, t, group, w, g));
        let e = fd_error(&term, &s, &t);
        prop_assert!(e < TOL, "fd error {e:.3e}");
    }
}

// -----------------------------------------------------------------------------------------------------------
// parity with PyTorch

fn fixture_path() -> std::path::PathBuf {
    match std::env::var_os("ANGLE_DISTILL_FIXTURE") {
        Some(p) => p.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/distill.json"),
    }
}

fn load() -> Value {
    let path = fixture_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("distillation fixture {} is required: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read_matrix(v: &Value) -> Array2<f64> {
    let rows: Vec<Vec<f64>> = serde_json::from_value(v.clone()).expect("matrix of numbers");
    let (n, d) = (rows.len(), rows.first().map_or(0, Vec::len));
    Array2::from_shape_vec((n, d), rows.into_iter().flatten().collect()).expect("rectangular")
}

fn term_of<'a, F: Real>(case: &'a Value) -> Term<'a, F> {
    let name = &case["name"];
    let params = &case["params"];
    let uint = move |key: &str| -> usize {
        let v = params[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{name}: params.{key}"));
        usize::try_from(v).expect("fits usize")
    };
    match case["term"].as_str() {
        Some("kl") => {
            let temp = F::of(
                params["temperature"]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{name}: params.temperature")),
            );
            let batch = uint("batch");
            Box::new(move |s, t, w, g| kl_into(s, t, temp, batch, w, g))
        }
        Some("mse") => Box::new(mse_into),
        Some("margin_mse") => {
            let group = uint("group");
            Box::new(move |s, t, w, g| margin_mse_into(s, t, group, w, g))
        }
        other => panic!("{name}: unknown term {other:?}"),
    }
}

/// Worst (loss error, gradient error) over the fixture's cases; each error is |ours − ref| / max(1, |ref|) (for the
/// gradient, the max over elements against max(1, max |ref|)): relative for large values, absolute for small.
fn worst_errors<F: Real>() -> (f64, f64, usize) {
    let fixture = load();
    let cases = fixture["cases"].as_array().expect("cases");
    assert!(!cases.is_empty(), "fixture has no cases");
    let (mut worst_loss, mut worst_grad) = (0.0f64, 0.0f64);
    for case in cases {
        let s = read_matrix(&case["student"]).mapv(F::of);
        let t = read_matrix(&case["teacher"]).mapv(F::of);
        let want_loss = case["loss"].as_f64().expect("loss");
        let want_grad = read_matrix(&case["grad"]);
        let term = term_of::<F>(case);
        let mut g = Array2::zeros(s.dim());
        let loss = term(s.view(), t.view(), F::one(), &mut g.view_mut())
            .unwrap_or_else(|e| panic!("{}: {e}", case["name"]));
        assert_eq!(g.dim(), want_grad.dim(), "{}: grad shape", case["name"]);
        let le = (loss.f64() - want_loss).abs() / want_loss.abs().max(1.0);
        let scale = want_grad.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let ge = g
            .iter()
            .zip(want_grad.iter())
            .fold(0.0f64, |m, (a, b)| m.max((a.f64() - b).abs()))
            / scale;
        worst_loss = worst_loss.max(le);
        worst_grad = worst_grad.max(ge);
    }
    (worst_loss, worst_grad, cases.len())
}

fn check_fixture<F: Real>(tol: f64) {
    let (le, ge, n) = worst_errors::<F>();
    eprintln!(
        "{n} cases of {} in {}: worst loss err {le:.3e}, worst grad err {ge:.3e}",
        fixture_path().display(),
        std::any::type_name::<F>()
    );
    assert!(
        le <= tol && ge <= tol,
        "loss err {le:.3e}, grad err {ge:.3e} > {tol:.0e}"
    );
}

#[test]
fn every_fixture_case_matches_in_f64() {
    check_fixture::<f64>(1e-10);
}

#[test]
fn every_fixture_case_matches_in_f32() {
    // The inputs rounded to f32 (relative 6e-8; the sums stay f64), the outputs rounded to f32: measured 1e-7.
    check_fixture::<f32>(1e-6);
}

#[test]
fn fixture_covers_every_term_and_setting() {
    let fixture = load();
    let cases = fixture["cases"].as_array().expect("cases");
    let has = |f: &dyn Fn(&Value) -> bool| cases.iter().any(f);
    for term in ["kl", "mse", "margin_mse"] {
        assert!(has(&|c| c["term"] == term), "no {term} case");
    }
    for temp in [1.0, 0.5, 2.0] {
        assert!(has(
            &|c| c["term"] == "kl" && c["params"]["temperature"].as_f64() == Some(temp)
        ));
    }
    // angle-emb's `all`: a batchmean divisor other than the row count
    assert!(has(&|c| {
        c["term"] == "kl"
            && c["params"]["batch"].as_u64() != Some(c["student"].as_array().unwrap().len() as u64)
    }));
    // several negatives, and a teacher wider than the student
    assert!(has(
        &|c| c["term"] == "margin_mse" && c["params"]["group"].as_u64() > Some(3)
    ));
    assert!(has(&|c| {
        c["term"] == "margin_mse"
            && c["teacher"][0].as_array().unwrap().len() != c["student"][0].as_array().unwrap().len()
    }));
}

// -----------------------------------------------------------------------------------------------------------
// accumulation and special values

fn sample() -> (Array2<f64>, Array2<f64>) {
    let s = array![[0.3, -1.2, 0.5], [2.0, 0.1, -0.4], [0.0, 0.7, 1.1]];
    let t = array![[0.1, -0.9, 0.8], [1.5, 0.3, -0.2], [-0.6, 0.2, 0.9]];
    (s, t)
}

#[test]
fn into_adds_weight_times_gradient() {
    let (s, t) = sample();
    let terms: Vec<(&str, Term<'_, f64>)> = vec![
        ("kl", Box::new(|s, t, w, g| kl_into(s, t, 0.7, 2, w, g))),
        ("mse", Box::new(mse_into)),
        (
            "margin_mse",
            Box::new(|s, t, w, g| margin_mse_into(s, t, 3, w, g)),
        ),
    ];
    for (name, term) in &terms {
        let (loss, grad) = loss_grad(term, &s, &t);
        let mut acc = Array2::from_elem(s.dim(), 0.25);
        let again = term(s.view(), t.view(), -1.5, &mut acc.view_mut()).unwrap();
        assert_eq!(again, loss, "{name}: the loss is unweighted");
        let want = grad.mapv(|g| 0.25 - 1.5 * g);
        let diff = acc
            .iter()
            .zip(&want)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff < 1e-15, "{name}: {diff:e}");
    }
}

#[test]
fn equal_student_and_teacher_give_zero() {
    let (s, _) = sample();
    let mut g = Array2::zeros(s.dim());
    assert!(
        kl_into(s.view(), s.view(), 1.0, 3, 1.0, &mut g.view_mut())
            .unwrap()
            .abs()
            < 1e-16
    );
    assert_eq!(mse_into(s.view(), s.view(), 1.0, &mut g.view_mut()).unwrap(), 0.0);
    assert_eq!(
        margin_mse_into(s.view(), s.view(), 3, 1.0, &mut g.view_mut()).unwrap(),
        0.0
    );
    assert!(g.iter().all(|v| v.abs() < 1e-16), "{g:?}");
}

#[test]
fn kl_is_stable_for_huge_logits() {
    // Without the max subtracted, exp(1e4 / 0.5) overflows.
    let s = array![[1.0e4f32, -1.0e4, 0.0], [3.0e3, 3.0e3, -5.0e3]];
    let t = array![[0.9e4f32, -1.0e4, 10.0], [3.0e3, 2.9e3, 1.0]];
    let mut g = Array2::zeros(s.dim());
    let loss = kl_into(s.view(), t.view(), 0.5, 2, 1.0, &mut g.view_mut()).unwrap();
    assert!(loss.is_finite() && loss >= 0.0, "{loss}");
    assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
}

#[test]
fn kl_all_tokens_is_the_pooled_sum_over_the_batch_divisor() {
    // The `all` case: 6 real token rows of 2 sequences, divisor 2 = the sum of the per-row losses (divisor 1) / 2.
    let s = Array2::from_shape_fn((6, 4), |(r, c)| ((r * 4 + c) as f64 * 0.37).sin());
    let t = Array2::from_shape_fn((6, 4), |(r, c)| ((r * 4 + c) as f64 * 0.23).cos());
    let mut g = Array2::zeros(s.dim());
    let all = kl_into(s.view(), t.view(), 2.0, 2, 1.0, &mut g.view_mut()).unwrap();
    let mut sum = 0.0;
    for r in 0..6 {
        let mut gr = Array2::zeros((1, 4));
        let (sr, tr) = (s.slice(ndarray::s![r..=r, ..]), t.slice(ndarray::s![r..=r, ..]));
        sum += kl_into(sr, tr, 2.0, 1, 1.0, &mut gr.view_mut()).unwrap();
    }
    assert!((all - sum / 2.0).abs() < 1e-15, "{all} vs {}", sum / 2.0);
}

#[test]
fn strided_views_match_standard_layout() {
    let (s, t) = sample();
    // The transposes' transposes: the same matrices in column-major order, and a column-major gradient buffer.
    let (st, tt) = (s.t().to_owned(), t.t().to_owned());
    let mut g1 = Array2::zeros(s.dim());
    let mut g2 = Array2::zeros(s.dim()).reversed_axes();
    let a = kl_into(s.view(), t.view(), 0.5, 3, 1.0, &mut g1.view_mut()).unwrap();
    let b = kl_into(st.t(), tt.t(), 0.5, 3, 1.0, &mut g2.view_mut()).unwrap();
    assert_eq!(a, b);
    assert_eq!(g1, g2);
}

// -----------------------------------------------------------------------------------------------------------
// bad input

fn each_term_with<'a>(temp: f64, batch: usize, group: usize) -> Vec<(&'static str, Term<'a, f64>)> {
    vec![
        ("kl", Box::new(move |s, t, w, g| kl_into(s, t, temp, batch, w, g))),
        ("mse", Box::new(mse_into)),
        (
            "margin_mse",
            Box::new(move |s, t, w, g| margin_mse_into(s, t, group, w, g)),
        ),
    ]
}

#[test]
fn mismatched_shapes_are_errors() {
    let (s, t) = sample();
    let short = t.slice(ndarray::s![..2, ..]).to_owned();
    let narrow = t.slice(ndarray::s![.., ..2]).to_owned();
    for (name, term) in each_term_with(1.0, 3, 3) {
        let mut g = Array2::zeros(s.dim());
        let r = term(s.view(), short.view(), 1.0, &mut g.view_mut());
        let want = if name == "margin_mse" {
            LossError::RowCount {
                tensor: "teacher",
                got: 2,
                of: "student",
                expected: 3,
            }
        } else {
            LossError::ShapeMismatch {
                tensor: "teacher",
                got: (2, 3),
                of: "student",
                expected: (3, 3),
            }
        };
        assert_eq!(r, Err(want), "{name}");
        let r = term(s.view(), narrow.view(), 1.0, &mut g.view_mut());
        if name == "margin_mse" {
            assert!(r.is_ok(), "a narrower teacher is fine for margins: {r:?}");
        } else {
            assert!(
                matches!(
                    r,
                    Err(LossError::ShapeMismatch {
                        tensor: "teacher",
                        ..
                    })
                ),
                "{name}: {r:?}"
            );
        }
        let mut g = Array2::zeros((3, 4));
        let r = term(s.view(), t.view(), 1.0, &mut g.view_mut());
        assert_eq!(
            r,
            Err(LossError::ShapeMismatch {
                tensor: "grad",
                got: (3, 4),
                of: "student",
                expected: (3, 3)
            }),
            "{name}"
        );
        assert!(
            g.iter().all(|&v| v == 0.0),
            "{name}: an error leaves the buffer alone"
        );
    }
}

#[test]
fn empty_input_is_an_error() {
    let (s, _) = sample();
    let empty = Array2::<f64>::zeros((0, 3));
    let flat = Array2::<f64>::zeros((3, 0));
    for (name, term) in each_term_with(1.0, 3, 3) {
        for e in [&empty, &flat] {
            let mut g = Array2::zeros(e.dim());
            let r = term(e.view(), e.view(), 1.0, &mut g.view_mut());
            assert!(
                matches!(
                    r,
                    Err(LossError::Empty {
                        tensor: "student",
                        ..
                    })
                ),
                "{name}: {r:?}"
            );
            let mut g = Array2::zeros(s.dim());
            let r = term(s.view(), e.view(), 1.0, &mut g.view_mut());
            assert!(r.is_err(), "{name}: {r:?}");
        }
    }
}

#[test]
fn non_finite_values_are_errors() {
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        for (name, term) in each_term_with(1.0, 3, 3) {
            let (mut s, mut t) = sample();
            let mut g = Array2::zeros(s.dim());
            s[[1, 2]] = bad;
            let r = term(s.view(), t.view(), 1.0, &mut g.view_mut());
            assert!(
                matches!(
                    r,
                    Err(LossError::NonFinite {
                        tensor: "student",
                        row: 1,
                        col: 2,
                        ..
                    })
                ),
                "{name}: {r:?}"
            );
            s[[1, 2]] = 0.5;
            t[[2, 0]] = bad;
            let r = term(s.view(), t.view(), 1.0, &mut g.view_mut());
            assert!(
                matches!(
                    r,
                    Err(LossError::NonFinite {
                        tensor: "teacher",
                        row: 2,
                        col: 0,
                        ..
                    })
                ),
                "{name}: {r:?}"
            );
            t[[2, 0]] = 0.5;
            let r = term(s.view(), t.view(), bad, &mut g.view_mut());
            assert!(
                matches!(r, Err(LossError::BadParameter { name: "weight", .. })),
                "{name}: {r:?}"
            );
            assert!(
                g.iter().all(|&v| v == 0.0),
                "{name}: an error leaves the buffer alone"
            );
        }
    }
}

#[test]
fn kl_needs_a_positive_temperature_and_divisor() {
    let (s, t) = sample();
    let mut g = Array2::zeros(s.dim());
    for temp in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let r = kl_into(s.view(), t.view(), temp, 3, 1.0, &mut g.view_mut());
        assert!(
            matches!(
                r,
                Err(LossError::BadParameter {
                    name: "temperature",
                    ..
                })
            ),
            "{temp}: {r:?}"
        );
    }
    let r = kl_into(s.view(), t.view(), 1.0, 0, 1.0, &mut g.view_mut());
    assert!(
        matches!(r, Err(LossError::BadParameter { name: "batch", .. })),
        "{r:?}"
    );
    assert!(g.iter().all(|&v| v == 0.0));
}

#[test]
fn margin_mse_needs_whole_groups_with_a_negative() {
    let s = Array2::<f64>::ones((6, 2));
    let mut g = Array2::zeros(s.dim());
    for group in [0, 1, 2] {
        let r = margin_mse_into(s.view(), s.view(), group, 1.0, &mut g.view_mut());
        assert!(
            matches!(r, Err(LossError::BadParameter { name: "group", .. })),
            "{group}: {r:?}"
        );
    }
    let r = margin_mse_into(s.view(), s.view(), 4, 1.0, &mut g.view_mut());
    assert_eq!(
        r,
        Err(LossError::RowsNotMultiple {
            rows: 6,
            group: 4,
            layout: "query, positive, negatives"
        })
    );
    // the error messages name the layout
    assert!(r.unwrap_err().to_string().contains("query, positive, negatives"));
}
