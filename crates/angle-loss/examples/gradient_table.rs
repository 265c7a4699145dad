//! Prints how large the gradient of the cosine score and of the angle score is, against the angle between the two
//! embeddings of a pair: the table of `docs/angle-objective.md`.
//!
//! `cargo run -p angle-loss --example gradient_table`
//!
//! Everything goes through the crate's public objectives: a batch of two pairs, the probe pair (label 0) and a fixed
//! pair (label 1). With `τ = 1` the loss is `L = log(1 + exp(v₀ − v₁))`, so `∂L/∂v₀ = 1 − exp(−L)`, and the score's
//! own gradient is the probe row's gradient divided by that factor.

use angle_loss::{AnglePooling, LossGrad, angle_loss, cosine_loss};
use ndarray::Array2;

/// ‖∂score/∂x‖ for the probe pair (x, y) from the objective's gradient.
fn score_gradient(out: &LossGrad<f64>) -> f64 {
    let factor = 1.0 - (-out.loss).exp();
    out.grad.row(0).iter().map(|v| v * v).sum::<f64>().sqrt() / factor
}

fn batch(x: &[f64], y: &[f64]) -> Array2<f64> {
    let d = x.len();
    let mut b = Array2::zeros((4, d));
    b.row_mut(0).assign(&ndarray::aview1(x));
    b.row_mut(1).assign(&ndarray::aview1(y));
    // The fixed pair (label 1): two orthogonal unit vectors.
    b[[2, 0]] = 1.0;
    b[[3, d - 1]] = 1.0;
    b
}

fn main() {
    let labels = [0.0, 1.0];
    println!("| angle θ between x and y | cos θ | ‖∂cos/∂x‖ | ‖∂|s|/∂x‖, d = 2 | ‖∂|s|/∂x‖, d = 384 |");
    println!("| --- | --- | --- | --- | --- |");
    for deg in [
        0.0f64, 0.5, 2.0, 10.0, 45.0, 90.0, 135.0, 170.0, 178.0, 179.5, 180.0,
    ] {
        let t = deg.to_radians();
        // d = 2: one complex number per embedding, x = e^{iθ}, y = 1.
        let (x2, y2) = ([t.cos(), t.sin()], [1.0, 0.0]);
        let b2 = batch(&x2, &y2);
        let cos = cosine_loss(b2.view(), &labels, 1.0).unwrap();
        let ang2 = angle_loss(b2.view(), &labels, 1.0, AnglePooling::Sum).unwrap();
        // d = 384: x = cos θ · u + sin θ · w with u ⟂ w unit vectors (a fixed direction pattern), y = u.
        let d = 384;
        let u: Vec<f64> = (0..d).map(|k| ((k * 37 % 101) as f64 - 50.0) / 29.0).collect();
        let un = u.iter().map(|v| v * v).sum::<f64>().sqrt();
        let u: Vec<f64> = u.iter().map(|v| v / un).collect();
        let w0: Vec<f64> = (0..d).map(|k| ((k * 53 % 97) as f64 - 48.0) / 28.0).collect();
        let proj: f64 = w0.iter().zip(&u).map(|(a, b)| a * b).sum();
        let w: Vec<f64> = w0.iter().zip(&u).map(|(a, b)| a - proj * b).collect();
        let wn = w.iter().map(|v| v * v).sum::<f64>().sqrt();
        let x: Vec<f64> = u
            .iter()
            .zip(&w)
            .map(|(a, b)| t.cos() * a + t.sin() * b / wn)
            .collect();
        let bd = batch(&x, &u);
        let angd = angle_loss(bd.view(), &labels, 1.0, AnglePooling::Sum).unwrap();
        println!(
            "| {deg}° | {:.4} | {:.2e} | {:.3} | {:.3} |",
            t.cos(),
            score_gradient(&cos),
            score_gradient(&ang2),
            score_gradient(&angd)
        );
    }
}
