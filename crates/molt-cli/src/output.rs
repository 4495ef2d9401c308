//! Plain-text output helpers: aligned tables, ages, short digests.

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

/// Prints a JSON array as pretty JSON, or as a table with one row per element.
pub fn print_list(v: &Value, json: bool, header: &[&str], row: impl Fn(&Value) -> Vec<String>) {
    if json {
        print_json(v);
    } else {
        table(
            header,
            v.as_array().into_iter().flatten().map(row).collect(),
        );
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
/// recorded comparison): one row per `(kind, summary)` whose summary is an object.
pub fn print_traffic(rows: &[(&str, &Value)]) {
    let ms = |v: &Value| match v.as_f64() {
        Some(ms) => format!("≤{ms} ms"),
        None => "-".to_owned(),
    };
    let rows = rows
        .iter()
        .filter(|(_, t)| t.is_object())
        .map(|(kind, t)| {
            vec![
                kind.to_string(),
                text(&t["env"]),
                t["requests"].to_string(),
                t["classes"]["2xx"].to_string(),
                t["classes"]["4xx"].to_string(),
                t["classes"]["5xx"].to_string(),
                t["failed"].to_string(),
                format!("{:.1} ms", t["mean_ms"].as_f64().unwrap_or(0.0)),
                ms(&t["p50_ms"]),
                ms(&t["p99_ms"]),
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
