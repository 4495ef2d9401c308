//! Plain-text output helpers: aligned tables, ages, short digests.

use molt_wire::TrafficSummary;
use serde::Serialize;
use serde_json::Value;

/// Prints a value as pretty JSON.
pub fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// A JSON string's text ("" for anything else).
pub fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// How the API names a value that it sends as a string (a state, a format, an outcome).
pub fn wire_name(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(name)) => name,
        _ => String::new(),
    }
}

/// Prints `answer` (a JSON array as sent) as pretty JSON, or `records` (the same array, read)
/// as a table with one row each.
pub fn print_list<T>(
    answer: &Value,
    records: &[T],
    json: bool,
    header: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) {
    if json {
        print_json(answer);
    } else {
        table(header, records.iter().map(row).collect());
    }
}

/// Prints rows under a header, columns padded to the widest cell.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

/// "12s ago", "5m ago", "3h ago", "2d ago".
pub fn age(at_ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let s = now.saturating_sub(at_ms) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// `sha256:0123456789ab…` shortened to its first 12 hex digits; other text unchanged.
pub fn short_digest(d: &str) -> String {
    match d.strip_prefix("sha256:") {
        Some(hex) if hex.len() > 12 => hex[..12].to_string(),
        _ => d.to_string(),
    }
}

/// Prints live and shadow traffic side by side (a shadow report, or a shadow deployment's
/// recorded comparison): one row per `(kind, summary)` that has a summary.
pub fn print_traffic(rows: &[(&str, Option<&TrafficSummary>)]) {
    let ms = |v: Option<f64>| match v {
        Some(ms) => format!("≤{ms} ms"),
        None => "-".to_owned(),
    };
    // The router counts every class (1xx to 5xx); a class it did not send shows as "-".
    let class = |t: &TrafficSummary, class: &str| match t.classes.get(class) {
        Some(n) => n.to_string(),
        None => "-".to_owned(),
    };
    let rows = rows
        .iter()
        .filter_map(|(kind, t)| t.map(|t| (kind, t)))
        .map(|(kind, t)| {
            vec![
                kind.to_string(),
                t.env.clone(),
                t.requests.to_string(),
                class(t, "2xx"),
                class(t, "4xx"),
                class(t, "5xx"),
                t.failed.to_string(),
                format!("{:.1} ms", t.mean_ms),
                ms(t.p50_ms),
                ms(t.p99_ms),
            ]
        })
        .collect();
    table(
        &[
            "TRAFFIC", "ENV", "REQUESTS", "2XX", "4XX", "5XX", "FAILED", "MEAN", "P50", "P99",
        ],
        rows,
    );
}
