//! Two sides of a comparison as inline SVG: a canary against the stable environment, interval
//! by interval (success rate and p99 of each, from the verdicts on the deployment record), and
//! a shadow deployment's mirrored side against the live one (one pair of bars per figure).

use std::fmt::Write as _;

use molt_core::canary::Sample;
use molt_core::CanaryProgress;
use molt_wire::{ShadowComparison, TrafficSummary};

use super::esc;

const W: f64 = 360.0;
const H: f64 = 72.0;

/// The canary's intervals so far as two charts (success rate, p99), canary and stable side
/// by side; nothing before the first interval.
pub(crate) fn canary(progress: &CanaryProgress) -> String {
    let judged: Vec<(Sample, Option<Sample>)> = progress
        .verdicts
        .iter()
        .map(|v| (v.judgement.canary, v.judgement.stable))
        .collect();
    if judged.is_empty() {
        return String::new();
    }
    let success = |s: &Sample| (s.requests > 0).then(|| success_percent(s.requests, s.errors));
    let canary_success: Vec<Option<f64>> = judged.iter().map(|(c, _)| success(c)).collect();
    let stable_success: Vec<Option<f64>> = judged
        .iter()
        .map(|(_, s)| s.as_ref().and_then(success))
        .collect();
    let canary_p99: Vec<Option<f64>> = judged.iter().map(|(c, _)| c.p99_ms).collect();
    let stable_p99: Vec<Option<f64>> = judged
        .iter()
        .map(|(_, s)| s.and_then(|s| s.p99_ms))
        .collect();
    let slowest = canary_p99
        .iter()
        .chain(&stable_p99)
        .flatten()
        .fold(1.0_f64, |a, b| a.max(*b));
    format!(
        "<div class=\"compare\">{}{}</div>\n",
        lines(
            "success rate per interval (%)",
            &canary_success,
            &stable_success,
            100.0
        ),
        lines("p99 per interval (ms)", &canary_p99, &stable_p99, slowest),
    )
}

/// A shadow deployment's comparison as bars: success rate and p99, live and shadow.
pub(crate) fn shadow(c: &ShadowComparison) -> String {
    let success = |t: &TrafficSummary| {
        let errors = t.failed + t.classes.get("5xx").copied().unwrap_or(0);
        (t.requests + t.failed > 0).then(|| success_percent(t.requests + t.failed, errors))
    };
    let live = c.live.as_ref();
    let slowest = [live.and_then(|l| l.p99_ms), c.shadow.p99_ms]
        .into_iter()
        .flatten()
        .fold(1.0_f64, f64::max);
    format!(
        "<div class=\"compare\">{}{}</div>\n",
        bars(
            "success rate (%)",
            live.and_then(success),
            success(&c.shadow),
            100.0
        ),
        bars(
            "p99 (ms)",
            live.and_then(|l| l.p99_ms),
            c.shadow.p99_ms,
            slowest
        ),
    )
}

fn success_percent(requests: u64, errors: u64) -> f64 {
    100.0 * (requests.saturating_sub(errors)) as f64 / requests.max(1) as f64
}

/// One chart: the new side (`class="new"`) and the old one (`class="old"`) as lines over the
/// intervals, scaled to `max`; an interval without a figure leaves a gap.
fn lines(title: &str, new: &[Option<f64>], old: &[Option<f64>], max: f64) -> String {
    let step = W / (new.len().max(2) - 1) as f64;
    let y = |v: f64| H - 2.0 - (v / max).clamp(0.0, 1.0) * (H - 4.0);
    let points = |values: &[Option<f64>]| {
        values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| format!("{:.1},{:.1}", step * i as f64, y(v))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let last = |values: &[Option<f64>]| {
        values
            .iter()
            .rev()
            .flatten()
            .next()
            .map_or("–".to_string(), |v| format!("{v:.1}"))
    };
    format!(
        "<figure><figcaption>{} — <span class=\"new\">new {}</span> · \
         <span class=\"old\">old {}</span></figcaption>\
         <svg class=\"compare\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" \
         aria-label=\"{}\"><polyline class=\"old\" fill=\"none\" points=\"{}\"/>\
         <polyline class=\"new\" fill=\"none\" points=\"{}\"/></svg></figure>",
        esc(title),
        last(new),
        last(old),
        esc(title),
        points(old),
        points(new),
    )
}

/// One chart of two bars, old and new, scaled to `max`.
fn bars(title: &str, old: Option<f64>, new: Option<f64>, max: f64) -> String {
    let mut svg = String::new();
    for (i, (class, value)) in [("old", old), ("new", new)].into_iter().enumerate() {
        let width = value.map_or(0.0, |v| (v / max).clamp(0.0, 1.0) * (W - 120.0));
        let y = 8.0 + 30.0 * i as f64;
        let _ = write!(
            svg,
            "<rect class=\"{class}\" x=\"60\" y=\"{y}\" width=\"{width:.1}\" height=\"22\"/>\
             <text x=\"0\" y=\"{:.0}\">{}</text><text x=\"{:.1}\" y=\"{:.0}\">{}</text>",
            y + 16.0,
            if class == "old" { "live" } else { "shadow" },
            66.0 + width,
            y + 16.0,
            value.map_or("–".to_string(), |v| format!("{v:.1}")),
        );
    }
    format!(
        "<figure><figcaption>{}</figcaption><svg class=\"compare\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\">{svg}</svg></figure>",
        esc(title),
        esc(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_where_an_interval_had_no_requests() {
        let chart = lines(
            "t",
            &[Some(100.0), None, Some(50.0)],
            &[None, None, None],
            100.0,
        );
        assert!(chart.contains("points=\"0.0,2.0 360.0,36.0\""), "{chart}");
        assert!(chart.contains("new 50.0</span>"), "{chart}");
        assert!(chart.contains("old –</span>"), "{chart}");
    }

    #[test]
    fn success_is_the_share_without_errors() {
        assert_eq!(success_percent(200, 50), 75.0);
        assert_eq!(success_percent(0, 0), 0.0);
    }
}
