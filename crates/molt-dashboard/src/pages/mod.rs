//! The pages, as HTML strings: one module per view, and what they share (the frame, escaping,
//! numbers, the chart). Every page is complete without JavaScript; `dashboard.js` only swaps
//! the `live` section for the one the server sends over SSE.

pub(crate) mod app;
pub(crate) mod apps;
pub(crate) mod compare;
pub(crate) mod images;

use std::fmt::Write as _;

use crate::samples::Sample;

/// Escapes text for HTML content and attribute values.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Where a page's live section comes from: the `/events` query that streams it.
pub(crate) struct Live<'a> {
    /// `view=…` (and `app=…`) for `/events`.
    pub(crate) query: &'a str,
    /// The section's current HTML.
    pub(crate) html: String,
}

/// A whole page: the frame (title, navigation, logout with its CSRF token), then `body`, then
/// the live section.
pub(crate) fn page(title: &str, who: &str, csrf: &str, body: &str, live: Live<'_>) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title} · molt</title>\n<link rel=\"stylesheet\" href=\"/static/dashboard.css\">\n\
         <script src=\"/static/dashboard.js\" defer></script>\n</head>\n<body>\n\
         <header><nav><a href=\"/\" class=\"brand\">molt</a> <a href=\"/\">Apps</a> \
         <a href=\"/images\">Images</a></nav>\n\
         <form method=\"post\" action=\"/logout\" class=\"logout\">{hidden}\
         <span>{who}</span> <button type=\"submit\">Log out</button></form></header>\n\
         <main>\n<h1>{title}</h1>\n{body}\n\
         <section id=\"live\" data-events=\"/events?{query}\">\n{live}\n</section>\n</main>\n\
         </body>\n</html>\n",
        title = esc(title),
        who = esc(who),
        hidden = csrf_field(csrf),
        query = esc(live.query),
        live = live.html,
    )
}

/// The login page (`error`: why the last try failed).
pub(crate) fn login(csrf: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>\n", esc(e)))
        .unwrap_or_default();
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>Log in · molt</title>\n<link rel=\"stylesheet\" href=\"/static/dashboard.css\">\n\
         </head>\n<body>\n<main class=\"login\">\n<h1>molt</h1>\n{error}\
         <form method=\"post\" action=\"/login\">{hidden}\
         <label for=\"token\">API token</label>\n\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" required>\n\
         <button type=\"submit\">Log in</button>\n</form>\n\
         <p class=\"hint\">The admin token is in <code>&lt;data dir&gt;/admin.token</code>.</p>\n\
         </main>\n</body>\n</html>\n",
        hidden = csrf_field(csrf),
    )
}

/// A page saying what went wrong, with the way back.
pub(crate) fn problem(message: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>Refused · molt</title>\n<link rel=\"stylesheet\" href=\"/static/dashboard.css\">\n\
         </head>\n<body>\n<main>\n<h1>Refused</h1>\n<p class=\"error\" role=\"alert\">{}</p>\n\
         <p><a href=\"/\">Back to the apps</a></p>\n</main>\n</body>\n</html>\n",
        esc(message)
    )
}

/// The hidden field every form carries.
pub(crate) fn csrf_field(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(csrf)
    )
}

/// A one-button form posting to `action` with extra hidden `fields`; nothing without a CSRF
/// token (a viewer whose token cannot act gets no buttons).
pub(crate) fn action_button(
    action: &str,
    label: &str,
    csrf: &str,
    fields: &[(&str, &str)],
) -> String {
    if csrf.is_empty() {
        return String::new();
    }
    let mut hidden = csrf_field(csrf);
    for (name, value) in fields {
        let _ = write!(
            hidden,
            "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
            esc(name),
            esc(value)
        );
    }
    format!(
        "<form method=\"post\" action=\"{}\" class=\"inline\">{hidden}<button type=\"submit\">{}</button></form>",
        esc(action),
        esc(label)
    )
}

/// A short digest: the first 12 hex digits.
pub(crate) fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.get(..12).unwrap_or(hex)
}

/// A duration in ms as people read it (`12 s`, `4 min`, `3 h`).
pub(crate) fn span(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}

/// The last sample's figures as table cells: requests/s, error rate, p99.
pub(crate) fn figure_cells(samples: &[Sample]) -> String {
    match samples.last() {
        Some(s) => format!(
            "<td class=\"num\">{:.1}</td><td class=\"num\">{:.1} %</td><td class=\"num\">{}</td>",
            s.per_second,
            s.error_rate * 100.0,
            s.p99_ms
                .map(|p| format!("≤ {p} ms"))
                .unwrap_or_else(|| "–".into())
        ),
        None => "<td class=\"num\">–</td><td class=\"num\">–</td><td class=\"num\">–</td>".into(),
    }
}

/// An inline SVG line of requests per second over the samples (the last hour), with errors
/// as a second line.
pub(crate) fn chart(samples: &[Sample]) -> String {
    const W: f64 = 180.0;
    const H: f64 = 36.0;
    if samples.len() < 2 {
        return "<svg class=\"chart\" width=\"180\" height=\"36\" role=\"img\" \
                aria-label=\"not enough samples yet\"></svg>"
            .into();
    }
    let max = samples
        .iter()
        .map(|s| s.per_second)
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let step = W / (crate::samples::KEEP - 1) as f64;
    let start = W - step * (samples.len() - 1) as f64;
    let line = |value: &dyn Fn(&Sample) -> f64| {
        samples
            .iter()
            .enumerate()
            .map(|(i, s)| {
                format!(
                    "{:.1},{:.1}",
                    start + step * i as f64,
                    H - 2.0 - (value(s) / max) * (H - 4.0)
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let last = samples.last().map(|s| s.per_second).unwrap_or_default();
    format!(
        "<svg class=\"chart\" width=\"180\" height=\"36\" viewBox=\"0 0 180 36\" role=\"img\" \
         aria-label=\"requests per second over the last hour, now {last:.1}\">\
         <polyline class=\"rps\" fill=\"none\" points=\"{}\"/>\
         <polyline class=\"errors\" fill=\"none\" points=\"{}\"/></svg>",
        line(&|s| s.per_second),
        line(&|s| s.per_second * s.error_rate),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn spans_read_naturally() {
        assert_eq!(span(5_000), "5 s");
        assert_eq!(span(600_000), "10 min");
        assert_eq!(span(3 * 3_600_000), "3 h");
    }

    #[test]
    fn a_chart_needs_two_samples() {
        assert!(!chart(&[Sample::default()]).contains("polyline"));
        let s = Sample {
            per_second: 3.0,
            ..Default::default()
        };
        assert!(chart(&[s, s]).contains("polyline"));
    }
}
