//! SVG chart of a sweep: p99 latency against offered load, one line per target.
//!
//! Hand-written SVG rather than a plotting crate: the chart is two line plots, and writing the
//! elements directly keeps the build free of font and image dependencies. Text uses the
//! viewer's generic `sans-serif` font. The left panel is TTFT p99 (the queueing signal); the
//! right is TPOT p99 (solid) and ITL p99 (dashed), the decode-speed signal.

use std::fmt::Write as _;

use crate::sweep::{SweepKind, SweepReport};

const W: f64 = 960.0;
/// Height without legend rows; each legend row of three entries adds 16 px.
const H_BASE: f64 = 410.0;
const PANEL_W: f64 = 440.0;
const MARGIN_L: f64 = 60.0;
const MARGIN_T: f64 = 50.0;
const PLOT_H: f64 = 300.0;
const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// One line: points `(level, value_ms)`.
struct Series {
    label: String,
    color: &'static str,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

/// Renders `sweep` as a standalone SVG document.
pub fn render(sweep: &SweepReport) -> String {
    let names: Vec<String> = sweep
        .points
        .first()
        .map(|p| p.report.targets.iter().map(|t| t.name.clone()).collect())
        .unwrap_or_default();
    let series = |pick: fn(&crate::report::TargetReport) -> f64,
                  suffix: &str,
                  dashed: bool|
     -> Vec<Series> {
        names
            .iter()
            .enumerate()
            .map(|(i, name)| Series {
                label: format!("{name}{suffix}"),
                color: COLORS[i % COLORS.len()],
                dashed,
                points: sweep
                    .points
                    .iter()
                    .filter_map(|p| {
                        p.report
                            .targets
                            .get(i)
                            .filter(|t| t.completed > 0)
                            .map(|t| (p.level, pick(t)))
                    })
                    .collect(),
            })
            .collect()
    };
    let ttft = series(|t| t.ttft_ms.p99, "", false);
    let mut decode = series(|t| t.tpot_ms.p99, " tpot", false);
    decode.extend(series(|t| t.itl_ms.p99, " itl", true));
    let xlabel = match sweep.sweep.kind {
        SweepKind::Rate => "offered load (requests/s)",
        SweepKind::Concurrency => "concurrency",
    };
    let legend_rows = decode.len().max(ttft.len()).div_ceil(3) as f64;
    let h = H_BASE + legend_rows * 16.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{h}" fill="white"/>"#);
    panel(
        &mut s,
        0.0,
        "TTFT p99 (ms)",
        xlabel,
        &ttft,
        &sweep.sweep.levels,
    );
    panel(
        &mut s,
        W / 2.0,
        "TPOT p99 (solid), ITL p99 (dashed) (ms)",
        xlabel,
        &decode,
        &sweep.sweep.levels,
    );
    s.push_str("</svg>\n");
    s
}

fn panel(s: &mut String, x0: f64, title: &str, xlabel: &str, series: &[Series], levels: &[f64]) {
    let left = x0 + MARGIN_L;
    let width = PANEL_W - MARGIN_L - 20.0;
    let top = MARGIN_T;
    let bottom = top + PLOT_H;
    let xmax = levels.iter().copied().fold(0.0, f64::max).max(1e-9);
    let ymax_data = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let (ystep, ymax) = nice_axis(ymax_data);
    let (xstep, xmax) = nice_axis(xmax);
    let px = |x: f64| left + x / xmax * width;
    let py = |y: f64| bottom - y / ymax * PLOT_H;
    let _ = writeln!(
        s,
        r#"<text x="{}" y="28" font-size="14" font-weight="bold">{}</text>"#,
        left,
        esc(title)
    );
    let mut y = 0.0;
    while y <= ymax + ystep * 1e-6 {
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#ddd"/><text x="{2:.1}" y="{3:.1}" text-anchor="end">{4}</text>"##,
            py(y),
            left + width,
            left - 6.0,
            py(y) + 4.0,
            tick(y)
        );
        y += ystep;
    }
    let mut x = 0.0;
    while x <= xmax + xstep * 1e-6 {
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{bottom}" x2="{0:.1}" y2="{1}" stroke="#333"/><text x="{0:.1}" y="{2}" text-anchor="middle">{3}</text>"##,
            px(x),
            bottom + 5.0,
            bottom + 18.0,
            tick(x)
        );
        x += xstep;
    }
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#333"/><line x1="{left}" y1="{bottom}" x2="{0}" y2="{bottom}" stroke="#333"/>"##,
        left + width
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        left + width / 2.0,
        bottom + 36.0,
        esc(xlabel)
    );
    for (i, line) in series.iter().enumerate() {
        let pts: Vec<String> = line
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let dash = if line.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#,
            line.color,
            pts.join(" ")
        );
        for &(x, y) in &line.points {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                px(x),
                py(y),
                line.color
            );
        }
        let ly = bottom + 52.0 + (i / 3) as f64 * 16.0;
        let lx = left + (i % 3) as f64 * 130.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{0}" x2="{1}" y2="{0}" stroke="{2}" stroke-width="2"{dash}/><text x="{3}" y="{4}">{5}</text>"#,
            ly - 4.0,
            lx + 20.0,
            line.color,
            lx + 24.0,
            ly,
            esc(&line.label)
        );
    }
}

/// A tick step of 1, 2 or 5 × 10^k giving about five ticks, and the axis maximum.
fn nice_axis(max: f64) -> (f64, f64) {
    let max = if max > 0.0 { max } else { 1.0 };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    (step, (max / step).ceil() * step)
}

fn tick(v: f64) -> String {
    if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}").trim_end_matches('0').to_string()
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Collector, Report};
    use crate::stats::Slo;
    use crate::sweep::{SweepPoint, SweepSpec};
    use std::time::Duration;

    fn report(ttft_ms: u64) -> Report {
        let mut c = Collector::new(2, Slo::default());
        for t in 0..2 {
            c.record(
                t,
                crate::client::Measurement {
                    ttft: Some(Duration::from_millis(ttft_ms * (t as u64 + 1))),
                    e2e: Duration::from_millis(ttft_ms * 3),
                    itl_us: vec![1000, 2000],
                    chunks: 3,
                    output_tokens: 3,
                    ..Default::default()
                },
            );
        }
        let names = [
            ("a".to_string(), "u".to_string()),
            ("b<&>".to_string(), "u".to_string()),
        ];
        c.finish(
            &names,
            Duration::from_secs(1),
            serde_json::Value::Null,
            false,
        )
    }

    #[test]
    fn renders_lines_per_target_and_escapes() {
        let sweep = SweepReport {
            sweep: SweepSpec::parse("rate=1,2,4").unwrap(),
            points: [1.0, 2.0, 4.0]
                .iter()
                .map(|&l| SweepPoint {
                    level: l,
                    report: report(10 * l as u64),
                })
                .collect(),
        };
        let svg = render(&sweep);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 6);
        assert_eq!(svg.matches("<circle").count(), 18);
        assert!(svg.contains("b&lt;&amp;&gt; itl"));
        assert!(!svg.contains("b<&>"));
    }

    #[test]
    fn axes_are_nice() {
        assert_eq!(nice_axis(87.0), (20.0, 100.0));
        assert_eq!(nice_axis(8.0), (2.0, 8.0));
        assert_eq!(nice_axis(0.0), (0.2, 1.0));
    }
}
