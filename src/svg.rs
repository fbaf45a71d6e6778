//! The CLI's one chart module: small hand-written SVG line charts for the `--svg` outputs of
//! `bench` and `replay` (built with the `cli` feature).
//!
//! Hand-written rather than a plotting crate: `plotters` would bring a font stack and its own
//! backends for what is a few hundred lines of SVG text, and the charts need nothing beyond
//! lines, markers, axes and a legend.

use std::fmt::Write;

/// One line of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Points (x, y).
    pub points: Vec<(f64, f64)>,
}

/// Series with at most this many points get a marker at each point; denser ones (an
/// allocator timeline of thousands of samples) are drawn as a line only.
const MAX_MARKED_POINTS: usize = 64;

/// A line chart.
#[derive(Clone, Debug)]
pub struct LineChart {
    /// Title at the top.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Logarithmic (base 2) x axis.
    pub log_x: bool,
    /// The lines.
    pub series: Vec<Series>,
    /// A horizontal reference line (label, y), e.g. the bandwidth ceiling, dashed and labelled.
    pub reference: Option<(String, f64)>,
}

/// A round tick step (1, 2 or 5 times a power of ten) that divides `0..=max` into at most
/// about `n` intervals.
fn nice_step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(1e-12);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|&step| step >= raw)
        .unwrap_or(10.0 * mag)
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl LineChart {
    /// Renders the chart as a standalone SVG document.
    pub fn render(&self) -> String {
        let (w, h, ml, mr, mt, mb) = (760.0, 440.0, 80.0, 180.0, 40.0, 60.0);
        let pw = w - ml - mr;
        let ph = h - mt - mb;
        let fx = |x: f64| {
            if self.log_x {
                x.max(f64::MIN_POSITIVE).log2()
            } else {
                x
            }
        };
        let pts: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|&(x, y)| (fx(x), y)))
            .collect();
        let (mut x0, mut x1) = pts
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
                (a.min(p.0), b.max(p.0))
            });
        let y_max = pts
            .iter()
            .map(|p| p.1)
            .chain(self.reference.iter().map(|r| r.1))
            .fold(0.0f64, f64::max)
            .max(1e-12);
        // The y axis ends on a round tick above the highest point; ticks at round values.
        let y_step = nice_step(y_max * 1.04, 5.0);
        let y1 = (y_max * 1.04 / y_step).ceil() * y_step;
        if !x0.is_finite() || x0 == x1 {
            x0 = if x0.is_finite() { x0 - 1.0 } else { 0.0 };
            x1 = x0 + 2.0;
        }
        let sx = |x: f64| ml + (fx(x) - x0) / (x1 - x0) * pw;
        let sy = |y: f64| mt + ph - y / y1 * ph;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
            ml + pw / 2.0,
            esc(&self.title)
        );
        let _ = writeln!(
            s,
            r##"<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##
        );
        let y_ticks = (y1 / y_step).round() as usize;
        for i in 0..=y_ticks {
            let y = y_step * i as f64;
            let _ = writeln!(
                s,
                r##"<line x1="{ml}" x2="{0}" y1="{1:.1}" y2="{1:.1}" stroke="#eee"/><text x="{2}" y="{3:.1}" text-anchor="end">{4}</text>"##,
                ml + pw,
                sy(y),
                ml - 6.0,
                sy(y) + 4.0,
                fmt_num(y)
            );
        }
        // A log axis is ticked at the measured x values (chunk sizes), a linear one at round
        // values across its range.
        let mut ticks: Vec<f64> = if self.log_x {
            self.series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.0))
                .collect()
        } else {
            let step = nice_step(x1 - x0, 8.0);
            let first = (x0 / step).ceil() as i64;
            let last = (x1 / step).floor() as i64;
            (first..=last).map(|i| i as f64 * step).collect()
        };
        ticks.sort_by(|a, b| a.total_cmp(b));
        ticks.dedup();
        if ticks.len() > 12 {
            let step = ticks.len().div_ceil(12);
            ticks = ticks.into_iter().step_by(step).collect();
        }
        for x in ticks {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
                sx(x),
                mt + ph + 16.0,
                fmt_num(x)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            ml + pw / 2.0,
            h - 16.0,
            esc(&self.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text x="18" y="{0}" text-anchor="middle" transform="rotate(-90 18 {0})">{1}</text>"#,
            mt + ph / 2.0,
            esc(&self.y_label)
        );
        if let Some((label, y)) = &self.reference {
            let _ = writeln!(
                s,
                r##"<line x1="{ml}" x2="{0}" y1="{1:.1}" y2="{1:.1}" stroke="#444" stroke-width="1.5" stroke-dasharray="6 4"/><text x="{2}" y="{3:.1}" text-anchor="end" fill="#444">{4}</text>"##,
                ml + pw,
                sy(*y),
                ml + pw - 4.0,
                sy(*y) - 5.0,
                esc(label)
            );
        }
        for (i, series) in self.series.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            let path: Vec<String> = series
                .points
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            );
            let marked = if series.points.len() <= MAX_MARKED_POINTS {
                &series.points[..]
            } else {
                &[]
            };
            for &(x, y) in marked {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"/>"#,
                    sx(x),
                    sy(y)
                );
            }
            let ly = mt + 14.0 + i as f64 * 18.0;
            let _ = writeln!(
                s,
                r#"<line x1="{0}" x2="{1}" y1="{2}" y2="{2}" stroke="{c}" stroke-width="2"/><text x="{3}" y="{4}">{5}</text>"#,
                ml + pw + 12.0,
                ml + pw + 32.0,
                ly,
                ml + pw + 38.0,
                ly + 4.0,
                esc(&series.label)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if v.abs() >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v.abs() >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v.abs() >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_one_polyline_per_series_and_escapes_text() {
        let c = LineChart {
            title: "a < b".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            log_x: true,
            series: vec![
                Series {
                    label: "one".into(),
                    points: vec![(1.0, 1.0), (4.0, 3.0)],
                },
                Series {
                    label: "two".into(),
                    points: vec![(1.0, 2.0), (4.0, 1.0)],
                },
            ],
            reference: None,
        };
        let svg = c.render();
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a &lt; b"));
        assert_eq!(svg.matches("<circle").count(), 4);
    }

    #[test]
    fn dense_series_are_drawn_without_markers() {
        let c = LineChart {
            title: "timeline".into(),
            x_label: "op".into(),
            y_label: "MiB".into(),
            log_x: false,
            series: vec![Series {
                label: "allocated".into(),
                points: (0..=MAX_MARKED_POINTS).map(|i| (i as f64, 1.0)).collect(),
            }],
            reference: None,
        };
        let svg = c.render();
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 0);
    }

    #[test]
    fn y_ticks_are_round_and_the_reference_is_drawn_and_in_range() {
        assert_eq!(nice_step(12.3, 5.0), 5.0);
        assert_eq!(nice_step(4.2, 5.0), 1.0);
        assert_eq!(nice_step(0.9, 5.0), 0.2);
        let c = LineChart {
            title: "t".into(),
            x_label: "x".into(),
            y_label: "GB/s".into(),
            log_x: true,
            series: vec![Series {
                label: "one".into(),
                points: vec![(1.0, 9.7), (16.0, 11.2)],
            }],
            reference: Some(("ceiling 12.3 GB/s".into(), 12.3)),
        };
        let svg = c.render();
        assert!(svg.contains("stroke-dasharray"), "no reference line");
        assert!(svg.contains("ceiling 12.3 GB/s"));
        // Ticks 0, 5, 10, 15: the axis ends above the ceiling on a round value.
        for t in [">0<", ">5<", ">10<", ">15<"] {
            assert!(svg.contains(t), "no tick {t}: {svg}");
        }
        assert!(!svg.contains(">2.46<"), "a tick at an unround value");
    }

    #[test]
    fn a_linear_x_axis_is_ticked_at_round_values_and_long_series_have_no_markers() {
        let c = LineChart {
            title: "t".into(),
            x_label: "operation".into(),
            y_label: "MiB".into(),
            log_x: false,
            series: vec![Series {
                label: "allocated".into(),
                points: (0..3000).map(|i| (i as f64, (i % 97) as f64)).collect(),
            }],
            reference: None,
        };
        let svg = c.render();
        for t in [">0<", ">500<", ">1.0k<", ">2.5k<"] {
            assert!(svg.contains(t), "no x tick {t}");
        }
        assert!(!svg.contains("<circle"), "3000 markers drawn");
        // y: 0 to 100 by 20.
        assert!(svg.contains(">20<") && svg.contains(">100<"));
    }
}
