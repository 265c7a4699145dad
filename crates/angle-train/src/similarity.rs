//! The similarity measures of angle-emb's `CorrelationEvaluator` (and sentence-transformers' STS evaluator), plus
//! the AnglE angle score: each maps two embeddings to a number that is larger for more similar texts.

use angle_loss::AnglePooling;
use serde::{Deserialize, Serialize};

/// One similarity measure over a pair of raw (unnormalised) embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Measure {
    /// `1 − cosine distance`: the default, what training validates with.
    Cosine,
    /// `xᵀy`.
    Dot,
    /// `−‖x − y‖₂`.
    Euclidean,
    /// `−‖x − y‖₁`.
    Manhattan,
    /// The angle objective's score `|s|` (the pooled normalised complex quotient, sum pooling; see
    /// `docs/angle-objective.md`). Needs an even embedding size.
    Angle,
}

impl Measure {
    /// Every measure, in report order.
    pub const ALL: [Measure; 5] = [
        Measure::Cosine,
        Measure::Dot,
        Measure::Euclidean,
        Measure::Manhattan,
        Measure::Angle,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Measure::Cosine => "cosine",
            Measure::Dot => "dot",
            Measure::Euclidean => "euclidean",
            Measure::Manhattan => "manhattan",
            Measure::Angle => "angle",
        }
    }

    /// The similarity of `x` and `y` (accumulated in f64).
    pub fn score(self, x: &[f32], y: &[f32]) -> f64 {
        match self {
            Measure::Cosine => crate::stats::cosine(x, y),
            Measure::Dot => x.iter().zip(y).map(|(&a, &b)| a as f64 * b as f64).sum(),
            Measure::Euclidean => -x
                .iter()
                .zip(y)
                .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                .sum::<f64>()
                .sqrt(),
            Measure::Manhattan => -x
                .iter()
                .zip(y)
                .map(|(&a, &b)| (a as f64 - b as f64).abs())
                .sum::<f64>(),
            Measure::Angle => angle_loss::angle_score(x, y, AnglePooling::Sum),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_on_a_hand_computed_pair() {
        let x = [1.0f32, 2.0, -1.0, 0.5];
        let y = [0.5f32, -1.0, 2.0, 1.0];
        // x·y = 0.5 − 2 − 2 + 0.5 = −3; ‖x‖² = 6.25, ‖y‖² = 6.25.
        assert!((Measure::Dot.score(&x, &y) + 3.0).abs() < 1e-12);
        assert!((Measure::Cosine.score(&x, &y) + 3.0 / 6.25).abs() < 1e-12);
        // x − y = [0.5, 3, −3, −0.5]
        assert!((Measure::Manhattan.score(&x, &y) + 7.0).abs() < 1e-12);
        assert!((Measure::Euclidean.score(&x, &y) + 18.5f64.sqrt()).abs() < 1e-12);
        // x = a + bi with a = [1, 2], b = [−1, 0.5]; y = c + di with c = [0.5, −1], d = [2, 1]:
        // Σ a(c − d) + b(c + d) = 1·(−1.5) + 2·(−2) + (−1)·2.5 + 0.5·0 = −8; |−8| / (2.5 · 2.5).
        assert!((Measure::Angle.score(&x, &y) - 8.0 / 6.25).abs() < 1e-12);
    }
}
