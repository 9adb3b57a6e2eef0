//! Line charts and sparklines as inline SVG, drawn on the server: one renderer serves the page
//! without JavaScript and its live updates (the page's script swaps in fresh server-rendered
//! fragments). Colours come from the stylesheet's classes. Each chart also carries its data as
//! JSON (`data-chart` on its box), from which the page's script draws the interactive version
//! (zoom, legend toggles, smoothing, values under the cursor) with the vendored uPlot; the SVG
//! stays the no-JavaScript view.

use std::fmt::Write;

/// The drawing area of a chart, in SVG user units (the SVG scales to its container).
const W: f64 = 640.0;
const H: f64 = 220.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 14.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 44.0;
/// More points than pixels only cost bytes.
const MAX_POINTS: usize = 640;
/// Hover targets per line.
const HOVER_POINTS: usize = 40;

/// A line chart of `(x, y)` points over `0..=x_max`, with a log-scaled y axis when `log_y`
/// (points with y <= 0 are then left out). `label` names the series for screen readers.
pub fn line_chart(points: &[(f64, f64)], x_max: f64, log_y: bool, label: &str) -> String {
    multi_line_chart(&[points.to_vec()], x_max, log_y, label)
}

/// Several series on shared axes; series `i` is drawn with the classes `line s<i>`.
pub fn multi_line_chart(
    series: &[Vec<(f64, f64)>],
    x_max: f64,
    log_y: bool,
    label: &str,
) -> String {
    let styled: Vec<(usize, Vec<(f64, f64)>)> = series.iter().cloned().enumerate().collect();
    styled_line_chart(&styled, x_max, YAxis::log_if(log_y), label, "step")
}

/// How a chart's y axis spans its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum YAxis {
    /// Linear, fitted to the values (losses, learning rates, PSNR: their changes matter).
    Fitted,
    /// Log-scaled (points with y <= 0 are left out).
    Log,
    /// Linear from zero, for amounts (CPU use, memory): fitted to the values, a change of one
    /// percent would fill the chart.
    FromZero,
}

impl YAxis {
    /// The page's log-scale toggle.
    pub fn log_if(log: bool) -> Self {
        if log {
            Self::Log
        } else {
            Self::Fitted
        }
    }
}

/// Several series on shared axes, each with its line style: `(style, points)` is drawn with
/// the classes `line s<style>`, so several lines can share one style (e.g. one arm over seeds).
/// Each line carries a few hover targets whose tooltip gives the x value (named `x_name`:
/// `step`, `second`) and the y value.
pub fn styled_line_chart(
    styled: &[(usize, Vec<(f64, f64)>)],
    x_max: f64,
    y_axis: YAxis,
    label: &str,
    x_name: &str,
) -> String {
    let log_y = y_axis == YAxis::Log;
    let styles: Vec<usize> = styled.iter().map(|(s, _)| *s).collect();
    let series: Vec<Vec<(f64, f64)>> = styled
        .iter()
        .map(|(_, pts)| {
            let kept: Vec<(f64, f64)> = pts
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite() && (!log_y || *y > 0.0))
                .collect();
            thin(&kept, MAX_POINTS)
        })
        .collect();
    let all: Vec<(f64, f64)> = series.iter().flatten().copied().collect();
    let (x_title, y_title) = axis_titles(label, x_name);
    let mut s = String::new();
    if !all.is_empty() {
        let data = serde_json::json!({
            "log": log_y,
            "zero": y_axis == YAxis::FromZero,
            "x": x_title,
            "y": y_title,
            "series": series.iter().zip(&styles).map(|(pts, style)| serde_json::json!({
                "style": style,
                "points": pts.iter().map(|(x, y)| [*x, *y]).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        let _ = write!(
            s,
            r#"<div class="chart-box" data-chart="{}">"#,
            escape(&data.to_string())
        );
    } else {
        s.push_str(r#"<div class="chart-box">"#);
    }
    let _ = write!(
        s,
        r#"<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{}" preserveAspectRatio="none"><title>{}</title>"#,
        escape(label),
        escape(label)
    );
    if all.is_empty() {
        let _ = write!(
            s,
            r#"<text class="empty" x="{}" y="{}" text-anchor="middle">No data yet</text></svg></div>"#,
            W / 2.0,
            H / 2.0
        );
        return s;
    }
    let x_hi = x_max.max(all.iter().map(|p| p.0).fold(1.0, f64::max));
    let tf = |y: f64| if log_y { y.log10() } else { y };
    let (mut lo, mut hi) = all
        .iter()
        .map(|p| tf(p.1))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if y_axis == YAxis::FromZero {
        lo = lo.min(0.0);
    }
    let y_ticks: Vec<f64> = if log_y {
        lo = lo.floor();
        hi = hi.ceil().max(lo + 1.0);
        (lo as i32..=hi as i32).map(f64::from).collect()
    } else {
        if hi - lo < 1e-12 {
            let pad = if hi == 0.0 { 1.0 } else { hi.abs() * 0.1 };
            lo -= pad;
            hi += pad;
        }
        let step = nice_step((hi - lo) / 5.0);
        lo = (lo / step).floor() * step;
        hi = (hi / step).ceil() * step;
        let n = ((hi - lo) / step).round() as i32;
        (0..=n).map(|i| lo + f64::from(i) * step).collect()
    };
    let px = |x: f64| LEFT + x / x_hi * (W - LEFT - RIGHT);
    let py = |v: f64| TOP + (hi - v) / (hi - lo) * (H - TOP - BOTTOM);
    let y_step = if y_ticks.len() > 1 {
        y_ticks[1] - y_ticks[0]
    } else {
        1.0
    };
    for t in &y_ticks {
        let y = py(*t);
        let text = if log_y {
            format!("1e{}", *t as i32)
        } else {
            tick_label(*t, y_step)
        };
        let _ = write!(
            s,
            r#"<line class="grid" x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}"/><text class="tick" x="{}" y="{:.1}" text-anchor="end">{text}</text>"#,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0
        );
    }
    let x_step = nice_step(x_hi / 4.0);
    let mut x = 0.0;
    while x <= x_hi + 1e-9 {
        let _ = write!(
            s,
            r#"<text class="tick" x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            px(x),
            H - BOTTOM + 16.0,
            tick_label(x, x_step)
        );
        x += x_step;
    }
    let _ = write!(
        s,
        r#"<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{}"/>"#,
        H - BOTTOM
    );
    let _ = write!(
        s,
        r#"<text class="axis-title" x="{:.1}" y="{}" text-anchor="middle">{}</text><text class="axis-title" transform="translate(12 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 6.0,
        escape(&x_title),
        (TOP + H - BOTTOM) / 2.0,
        escape(&y_title)
    );
    for (pts, i) in series.iter().zip(&styles) {
        let _ = write!(s, r#"<polyline class="line s{i}" fill="none" points=""#);
        for (x, y) in pts {
            let _ = write!(s, "{:.1},{:.1} ", px(*x), py(tf(*y)));
        }
        s.push_str(r#""/>"#);
    }
    // Hover targets: the browser shows each circle's title as a tooltip (no script needed).
    for pts in &series {
        for (x, y) in thin(pts, HOVER_POINTS) {
            let _ = write!(
                s,
                r#"<circle class="pt" cx="{:.1}" cy="{:.1}" r="5"><title>{x_name} {}: {}</title></circle>"#,
                px(x),
                py(tf(y)),
                x,
                crate::http::views::fmt::sig4(y)
            );
        }
    }
    s.push_str("</svg></div>");
    s
}

/// The axis titles a chart's label implies: labels read "<y> by <x>[, or: more]", e.g.
/// "validation PSNR (dB) by fine-tuning step, one line per arm"; without " by ", the y title
/// is the whole label and the x title is `x_name`.
fn axis_titles(label: &str, x_name: &str) -> (String, String) {
    match label.split_once(" by ") {
        Some((y, x)) => {
            let x = x.split([',', ':']).next().unwrap_or(x_name).trim();
            (x.to_string(), y.trim().to_string())
        }
        None => (x_name.to_string(), label.to_string()),
    }
}

/// A small trend line of `values` (oldest first), for the jobs list.
pub fn sparkline(values: &[f64]) -> String {
    const SW: f64 = 100.0;
    const SH: f64 = 24.0;
    let v: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if v.len() < 2 {
        return String::new();
    }
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(*x), b.max(*x))
        });
    let span = if hi - lo > 0.0 { hi - lo } else { 1.0 };
    let mut s = format!(
        r#"<svg class="spark" viewBox="0 0 {SW} {SH}" aria-hidden="true" preserveAspectRatio="none"><polyline fill="none" points=""#
    );
    for (i, y) in v.iter().enumerate() {
        let px = i as f64 / (v.len() - 1) as f64 * SW;
        let py = 2.0 + (hi - y) / span * (SH - 4.0);
        let _ = write!(s, "{px:.1},{py:.1} ");
    }
    s.push_str(r#""/></svg>"#);
    s
}

/// At most `n` points: every k-th, always keeping the last.
fn thin(pts: &[(f64, f64)], n: usize) -> Vec<(f64, f64)> {
    if pts.len() <= n {
        return pts.to_vec();
    }
    let k = pts.len().div_ceil(n);
    let mut out: Vec<(f64, f64)> = pts.iter().step_by(k).copied().collect();
    if let Some(last) = pts.last() {
        if out.last() != Some(last) {
            out.push(*last);
        }
    }
    out
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw.is_nan() || raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// A tick's label, with as many digits as the tick spacing `step` needs, so neighbouring ticks
/// never read the same (1e-4 and 1.5e-4 were both "1e-4" once).
fn tick_label(v: f64, step: f64) -> String {
    let a = v.abs();
    let step = step.abs().max(f64::MIN_POSITIVE);
    let step_exp = step.log10().floor() as i32;
    if a == 0.0 {
        "0".into()
    } else if a >= 1e4 {
        let decimals = (3 - step_exp).max(0) as usize;
        format!("{}k", trim(v / 1e3, decimals))
    } else if a < 1e-2 {
        let digits = (a.log10().floor() as i32 - step_exp).max(0) as usize;
        format!("{v:.digits$e}")
    } else {
        trim(v, (-step_exp).max(0) as usize)
    }
}

/// `v` with at most `decimals` decimals, trailing zeros dropped.
fn trim(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    if !s.contains('.') {
        return s;
    }
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbouring_ticks_never_read_the_same() {
        for (lo, hi) in [
            (1e-4, 2e-4),
            (1.0e-4, 1.2e-4),
            (0.0101, 0.0103),
            (0.5, 0.51),
            (1e4, 1.2e4),
        ] {
            let pts = [(0.0, lo), (10.0, hi)];
            let svg = line_chart(&pts, 10.0, false, "x");
            let labels: Vec<&str> = svg
                .split(r#"text-anchor="end">"#)
                .skip(1)
                .map(|t| &t[..t.find('<').unwrap_or(0)])
                .collect();
            assert!(labels.len() >= 2, "{labels:?}");
            for w in labels.windows(2) {
                assert_ne!(w[0], w[1], "{lo}..{hi}: {labels:?}");
            }
        }
        assert_eq!(tick_label(1.5e-4, 5e-5), "1.5e-4");
        assert_eq!(tick_label(0.25, 0.05), "0.25");
        assert_eq!(tick_label(12000.0, 1000.0), "12k");
    }

    #[test]
    fn points_have_hover_titles() {
        let svg = line_chart(&[(1.0, 0.5), (2.0, 0.25)], 2.0, false, "loss");
        assert!(svg.contains("<title>step 2: 0.2500</title>"), "{svg}");
    }

    #[test]
    fn empty_chart_says_so() {
        assert!(line_chart(&[], 100.0, false, "loss").contains("No data yet"));
    }

    #[test]
    fn chart_has_one_vertex_per_point_and_nice_ticks() {
        let pts: Vec<(f64, f64)> = (1..=10)
            .map(|i| (i as f64 * 10.0, 1.0 / i as f64))
            .collect();
        let svg = line_chart(&pts, 100.0, false, "loss");
        let poly = svg.split("points=\"").nth(1).unwrap_or_default();
        let poly = poly.split('"').next().unwrap_or_default();
        assert_eq!(poly.split_whitespace().count(), 10);
        assert!(svg.contains(">0.2<") && svg.contains(">1<"), "{svg}");
    }

    #[test]
    fn log_scale_uses_decades_and_drops_non_positive_values() {
        let pts = [(1.0, 1e-3), (2.0, 0.0), (3.0, 0.5)];
        let svg = line_chart(&pts, 3.0, true, "lr");
        assert!(svg.contains(">1e-3<") && svg.contains(">1e0<"), "{svg}");
        let poly = svg.split("points=\"").nth(1).unwrap_or_default();
        assert_eq!(
            poly.split('"')
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .count(),
            2
        );
    }

    #[test]
    fn long_series_are_thinned_keeping_the_last_point() {
        let pts: Vec<(f64, f64)> = (0..5000).map(|i| (i as f64, 1.0)).collect();
        let t = thin(&pts, 640);
        assert!(t.len() <= 641);
        assert_eq!(t.last(), pts.last());
    }

    #[test]
    fn several_series_share_the_axes() {
        let a = vec![(1.0, 20.0), (2.0, 25.0)];
        let b = vec![(1.0, 18.0), (2.0, 24.0), (3.0, 26.0)];
        let svg = multi_line_chart(&[a, b], 3.0, false, "val PSNR");
        assert!(svg.contains("line s0") && svg.contains("line s1"));
        assert_eq!(svg.matches("<polyline").count(), 2);
    }

    #[test]
    fn charts_carry_axis_titles_and_their_data_for_the_script() {
        let svg = styled_line_chart(
            &[(1, vec![(1.0, 0.5), (2.0, 0.25)])],
            2.0,
            YAxis::Log,
            "validation PSNR (dB) by fine-tuning step, one line per arm",
            "step",
        );
        assert!(svg.contains(">fine-tuning step</text>"), "{svg}");
        assert!(
            svg.contains("rotate(-90)\" text-anchor=\"middle\">validation PSNR (dB)</text>"),
            "{svg}"
        );
        let attr = svg
            .split("data-chart=\"")
            .nth(1)
            .and_then(|a| a.split('"').next())
            .expect("data-chart");
        let json = attr.replace("&quot;", "\"").replace("&amp;", "&");
        let data: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        assert_eq!(
            data,
            serde_json::json!({"log": true, "zero": false, "x": "fine-tuning step",
                "y": "validation PSNR (dB)",
                "series": [{"style": 1, "points": [[1.0, 0.5], [2.0, 0.25]]}]})
        );
        assert_eq!(axis_titles("training loss by step: a, b", "step").0, "step");
        assert_eq!(
            axis_titles("loss", "second"),
            ("second".into(), "loss".into())
        );
        // Nothing to draw: no data for the script either.
        assert!(!line_chart(&[], 1.0, false, "loss").contains("data-chart"));
    }

    /// An amount's chart starts at zero, so a change of one percent does not fill it; the
    /// script is told to do the same.
    #[test]
    fn amounts_are_drawn_from_zero() {
        let cpu = [(0, vec![(0.0, 97.3), (5.0, 95.7)])];
        let zero_tick = r#"text-anchor="end">0</text>"#;
        let from_zero = styled_line_chart(&cpu, 5.0, YAxis::FromZero, "CPU by second", "second");
        assert!(from_zero.contains(zero_tick), "{from_zero}");
        assert!(from_zero.contains("&quot;zero&quot;:true"), "{from_zero}");
        let fitted = styled_line_chart(&cpu, 5.0, YAxis::Fitted, "CPU by second", "second");
        assert!(!fitted.contains(zero_tick), "{fitted}");
        assert!(fitted.contains("&quot;zero&quot;:false"), "{fitted}");
    }

    #[test]
    fn label_is_escaped() {
        assert!(line_chart(&[], 1.0, false, "<x>").contains("&lt;x&gt;"));
    }

    #[test]
    fn sparkline_needs_two_points() {
        assert!(sparkline(&[1.0]).is_empty());
        assert!(sparkline(&[1.0, 0.5, 0.2]).contains("polyline"));
    }

    #[test]
    fn steps_are_one_two_five() {
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(17.0), 20.0);
        assert_eq!(nice_step(1.0), 1.0);
    }
}
