//! The end-of-run SVG: training loss and validation Spearman against optimizer steps, side by side, and when the
//! run logged them, a third panel with the saturation shares of the cosine and angle objectives.
//! Hand-written SVG keeps the binary free of plotting dependencies; any browser shows it.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::{Result, io_err};
use crate::metrics::Record;

const PANEL_W: f64 = 440.0;
const PANEL_H: f64 = 300.0;
const MARGIN_L: f64 = 60.0;
const MARGIN_R: f64 = 20.0;
const MARGIN_T: f64 = 40.0;
const MARGIN_B: f64 = 45.0;

/// A further series of a panel: legend label, color, points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// The series to draw in one panel (the first one's color also marks its points).
struct Panel<'a> {
    title: &'a str,
    y_label: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
    /// Further series: legend label, color, points.
    more: Vec<Series<'a>>,
    /// Legend label of the first series (only drawn when there are further series).
    label: &'a str,
}

/// Render the plot for `records` as an SVG document.
pub fn render_svg(records: &[Record]) -> String {
    let mut loss = Vec::new();
    let mut spearman = Vec::new();
    let (mut sat_cos, mut sat_ang) = (Vec::new(), Vec::new());
    for r in records {
        match r {
            Record::Train(t) if t.loss.is_finite() => loss.push((t.step as f64, t.loss)),
            Record::Eval(e) if e.spearman.is_finite() => spearman.push((e.step as f64, e.spearman)),
            Record::Saturation(s) => {
                let share = |name: &str| s.objectives.get(name).and_then(|o| o.saturated);
                if let Some(v) = share("cosine") {
                    sat_cos.push((s.step as f64, 100.0 * v));
                }
                if let Some(v) = share("angle") {
                    sat_ang.push((s.step as f64, 100.0 * v));
                }
            }
            _ => {}
        }
    }
    let mut panels = vec![
        Panel {
            title: "training loss",
            y_label: "loss",
            color: "#1f77b4",
            points: loss,
            more: Vec::new(),
            label: "",
        },
        Panel {
            title: "validation Spearman × 100",
            y_label: "Spearman",
            color: "#d62728",
            points: spearman,
            more: Vec::new(),
            label: "",
        },
    ];
    if !sat_cos.is_empty() || !sat_ang.is_empty() {
        panels.push(Panel {
            title: "saturation: % pairs with gradient < 1% of max",
            y_label: "% of pairs",
            color: "#1f77b4",
            points: sat_cos,
            more: vec![("angle", "#ff7f0e", sat_ang)],
            label: "cosine",
        });
    }
    let width = panels.len() as f64 * PANEL_W;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{PANEL_H}" viewBox="0 0 {width} {PANEL_H}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (i, p) in panels.iter().enumerate() {
        draw_panel(&mut svg, i as f64 * PANEL_W, p);
    }
    svg.push_str("</svg>\n");
    svg
}

pub fn write_svg(path: &Path, records: &[Record]) -> Result<()> {
    std::fs::write(path, render_svg(records)).map_err(io_err(path))
}

fn draw_panel(svg: &mut String, x0: f64, p: &Panel) {
    let (left, top) = (x0 + MARGIN_L, MARGIN_T);
    let (w, h) = (PANEL_W - MARGIN_L - MARGIN_R, PANEL_H - MARGIN_T - MARGIN_B);
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="20" text-anchor="middle" font-size="13">{}</text>"#,
        left + w / 2.0,
        escape(p.title)
    );
    let _ = writeln!(
        svg,
        r##"<rect x="{left:.1}" y="{top:.1}" width="{w:.1}" height="{h:.1}" fill="none" stroke="#444"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">step</text>"#,
        left + w / 2.0,
        PANEL_H - 8.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate({:.1},{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        x0 + 14.0,
        top + h / 2.0,
        escape(p.y_label)
    );
    let all = || {
        p.points
            .iter()
            .chain(p.more.iter().flat_map(|m| m.2.iter()))
            .copied()
    };
    if all().next().is_none() {
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#888">no data</text>"##,
            left + w / 2.0,
            top + h / 2.0
        );
        return;
    }
    let (xmin, xmax) = padded_range(all().map(|q| q.0), false);
    let (ymin, ymax) = padded_range(all().map(|q| q.1), true);
    let sx = |x: f64| left + (x - xmin) / (xmax - xmin) * w;
    let sy = |y: f64| top + h - (y - ymin) / (ymax - ymin) * h;
    for t in ticks(xmin, xmax) {
        let x = sx(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#444"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            top + h,
            top + h + 4.0,
            top + h + 16.0,
            fmt_tick(t)
        );
    }
    for t in ticks(ymin, ymax) {
        let y = sy(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{left:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + w,
            left - 4.0,
            y + 4.0,
            fmt_tick(t)
        );
    }
    let series =
        std::iter::once((p.label, p.color, &p.points)).chain(p.more.iter().map(|m| (m.0, m.1, &m.2)));
    for (k, (label, color, points)) in series.enumerate() {
        if !p.more.is_empty() {
            let ly = top + 14.0 + 14.0 * k as f64;
            let _ = writeln!(
                svg,
                r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                left + 8.0,
                left + 24.0,
                left + 28.0,
                ly + 4.0,
                escape(label)
            );
        }
        if points.is_empty() {
            continue;
        }
        let mut pts = String::new();
        for &(x, y) in points {
            let _ = write!(pts, "{:.1},{:.1} ", sx(x), sy(y));
        }
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="1.5"/>"#,
            pts.trim_end(),
            color
        );
        // Evaluations are few: mark each one so a single point still shows.
        if points.len() <= 50 {
            for &(x, y) in points {
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{}"/>"#,
                    sx(x),
                    sy(y),
                    color
                );
            }
        }
    }
}

/// Range of the values, widened so a constant series still has a non-empty axis.
fn padded_range(values: impl Iterator<Item = f64>, pad: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if hi - lo < 1e-12 {
        let d = if lo.abs() > 1e-12 { lo.abs() * 0.05 } else { 1.0 };
        return (lo - d, hi + d);
    }
    if pad {
        let d = (hi - lo) * 0.05;
        (lo - d, hi + d)
    } else {
        (lo, hi)
    }
}

/// About five round tick values inside [lo, hi].
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let raw = (hi - lo) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last).take(20).map(|k| k as f64 * step).collect()
}

fn fmt_tick(v: f64) -> String {
    if v == v.round() && v.abs() < 1e6 {
        format!("{v:.0}")
    } else if v.abs() >= 0.01 {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.1e}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{EvalRecord, TrainRecord};

    #[test]
    fn svg_has_both_series_and_is_well_formed_enough() {
        let mut recs = Vec::new();
        for s in 1..=10u64 {
            recs.push(Record::Train(TrainRecord {
                step: s,
                epoch: 0.0,
                loss: 2.0 / s as f64,
                parts: Default::default(),
                lr: 0.0,
                grad_norm: 0.0,
                pairs_per_s: 0.0,
                tokens_per_s: 0.0,
                elapsed_s: 0.0,
                datasets: Default::default(),
                distill: None,
            }));
        }
        recs.push(Record::Eval(EvalRecord {
            step: 10,
            epoch: 1.0,
            spearman: 81.5,
            pearson: 80.0,
            pairs: 4,
            seconds: 0.0,
        }));
        let svg = render_svg(&recs);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn empty_history_still_renders() {
        let svg = render_svg(&[]);
        assert_eq!(svg.matches("no data").count(), 2);
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(0.13, 0.61);
        assert_eq!(t.len(), 5);
        assert!((t[0] - 0.2).abs() < 1e-12 && (t[4] - 0.6).abs() < 1e-12);
        assert_eq!(fmt_tick(t[1]), "0.3");
    }
}
