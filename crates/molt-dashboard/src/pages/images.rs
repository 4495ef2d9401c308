//! Images with their tags and the releases that use them, and what the next GC would take.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use molt_control::{GcReport, ImageRecord, ReleaseRecord};

use super::{esc, short, span};

/// The live section of the images view. `releases` are every app's, `gc` the dry run's plan.
pub(crate) fn live(
    images: &[ImageRecord],
    releases: &[ReleaseRecord],
    gc: Option<&GcReport>,
    now_ms: u64,
) -> String {
    let mut used: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for r in releases {
        used.entry(r.image.as_str())
            .or_default()
            .push(format!("{}@v{}", r.app, r.number));
    }
    let mut rows = String::new();
    for image in images {
        let users = used.get(image.digest.as_str()).cloned().unwrap_or_default();
        let _ = writeln!(
            rows,
            "<tr><td><code title=\"{d}\">{s}</code></td><td>{tags}</td><td class=\"num\">{size}</td>\
             <td>{age} ago</td><td>{users}</td></tr>",
            d = esc(image.digest.as_str()),
            s = esc(short(image.digest.as_str())),
            tags = esc(&image.tags.join(", ")),
            size = bytes(image.size),
            age = span(now_ms.saturating_sub(image.created_ms)),
            users = esc(&users.join(", ")),
        );
    }
    let mut out = format!(
        "<table class=\"images\"><thead><tr><th>Image</th><th>Tags</th><th>Size</th><th>Made</th>\
         <th>Used by</th></tr></thead>\n<tbody>\n{rows}</tbody></table>\n<h2>Garbage collection</h2>\n"
    );
    match gc {
        None => out.push_str("<p>The dry run could not be made.</p>\n"),
        Some(gc) => {
            let taken: Vec<String> = gc
                .envs
                .iter()
                .map(|e| format!("environment <code>{}</code>", esc(e)))
                .chain(
                    gc.images
                        .iter()
                        .map(|d| format!("image <code>{}</code>", esc(short(d.as_str())))),
                )
                .collect();
            if taken.is_empty() {
                out.push_str("<p>The next collection would take nothing.</p>\n");
            } else {
                let _ = writeln!(
                    out,
                    "<p>The next collection would take:</p>\n<ul class=\"gc\"><li>{}</li></ul>",
                    taken.join("</li><li>")
                );
            }
            let _ = writeln!(out, "<p>Kept, and why:</p>\n<ul class=\"kept\">");
            for (what, why) in &gc.kept {
                let _ = writeln!(out, "<li><code>{}</code>: {}</li>", esc(what), esc(why));
            }
            out.push_str("</ul>\n");
        }
    }
    out
}

/// A size as people read it.
fn bytes(n: u64) -> String {
    match n {
        0..=9_999 => format!("{n} B"),
        10_000..=9_999_999 => format!("{} kB", n / 1000),
        _ => format!("{} MB", n / 1_000_000),
    }
}
