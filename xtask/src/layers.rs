//! The workspace's layering, in one place, and its check over `cargo metadata`.
//!
//! [`LAYERS`] lists every crate of the workspace with the molt crates it depends on (normal
//! dependencies: what `cargo tree -e normal` shows). The table is the layering that
//! ARCHITECTURE.md draws: a dependency between molt crates that is not in it is forbidden, and
//! an entry of the table that the manifests no longer have is stale (so the table, and the
//! diagram drawn from it, stay true). [`PURE`] lists the crates that do no I/O and the only
//! outside crates their whole dependency tree may hold.
//!
//! The test at the bottom runs the check on this workspace, so `./scripts/test` (and any
//! `cargo test --workspace`) fails when a crate gains a forbidden dependency; `cargo xtask
//! layers` prints the same report.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Every workspace crate and the workspace crates it may depend on, from the bottom up.
pub const LAYERS: &[(&str, &[&str])] = &[
    // The bottom: decisions and data, no I/O.
    ("molt-core", &[]),
    ("molt-wire", &["molt-core"]),
    // Only ever a dev-dependency.
    ("molt-testkit", &[]),
    // Adapters, each over one kind of I/O.
    ("molt-pack", &[]),
    ("molt-store", &["molt-core", "molt-wire"]),
    ("molt-image", &["molt-core", "molt-wire", "molt-pack"]),
    ("molt-registry", &["molt-core", "molt-wire", "molt-image"]),
    ("molt-provider", &["molt-core", "molt-wire"]),
    ("molt-init", &[]),
    ("molt-runtime", &["molt-core", "molt-provider", "molt-init"]),
    ("molt-swarm", &["molt-core", "molt-provider"]),
    ("molt-router", &[]),
    ("molt-fleet", &["molt-router", "molt-wire"]),
    // The controller over the adapters.
    (
        "molt-control",
        &[
            "molt-core",
            "molt-wire",
            "molt-store",
            "molt-image",
            "molt-registry",
            "molt-router",
            "molt-fleet",
            "molt-provider",
        ],
    ),
    // The API over the controller, plus the routers' endpoints molt-fleet defines, which it
    // serves under `/v1/fleet`, and molt-core's parsers (the Authorization header); never the
    // store or the router.
    (
        "molt-api",
        &["molt-core", "molt-control", "molt-wire", "molt-fleet"],
    ),
    // `git push` deploys, beside the API: the controller's operations, a commit packed the
    // way the CLI packs a folder; never the store or the router.
    ("molt-git", &["molt-core", "molt-pack", "molt-control"]),
    // The dashboard, beside the API: the controller's operations and views, rendered as HTML.
    (
        "molt-dashboard",
        &["molt-core", "molt-wire", "molt-control"],
    ),
    // The client: it reads the API's records and packs folders; it never opens a store.
    ("molt-cli", &["molt-core", "molt-wire", "molt-pack"]),
    // Assembly: `molt serve` and the binary.
    (
        "molt-server",
        &[
            "molt-core",
            "molt-store",
            "molt-image",
            "molt-router",
            "molt-provider",
            "molt-runtime",
            "molt-swarm",
            "molt-registry",
            "molt-fleet",
            "molt-control",
            "molt-api",
            "molt-git",
            "molt-dashboard",
        ],
    ),
    (
        "molt",
        &["molt-core", "molt-cli", "molt-server", "molt-init"],
    ),
    // Dev tooling: benchmarks drive the parts directly.
    (
        "xtask",
        &[
            "molt-core",
            "molt-image",
            "molt-router",
            "molt-provider",
            "molt-runtime",
            "molt-init",
            "molt-cli",
        ],
    ),
];

/// Crates that do no I/O, and the outside crates (proc macros aside: they run in the compiler)
/// their whole normal dependency tree may hold. A crate added here is one that reads no file,
/// socket, clock or process state, and starts nothing.
pub const PURE: &[(&str, &[&str])] = &[("molt-core", &PURE_DEPS), ("molt-wire", &PURE_DEPS)];

/// The outside crates of [`PURE`] crates: serde and its formats (TOML, JSON, with what they
/// parse and format numbers and maps with), thiserror, base64 (the Authorization header).
const PURE_DEPS: [&str; 18] = [
    "base64",
    "equivalent",
    "hashbrown",
    "indexmap",
    "itoa",
    "memchr",
    "ryu",
    "serde",
    "serde_core",
    "serde_json",
    "serde_spanned",
    "thiserror",
    "toml",
    "toml_datetime",
    "toml_edit",
    "toml_write",
    "winnow",
    "zmij",
];

/// What `cargo metadata` says about the workspace.
pub struct Graph {
    /// Workspace crates and the workspace crates each depends on (normal dependencies).
    pub internal: BTreeMap<String, BTreeSet<String>>,
    /// Every package (by id: one crate may be there in two versions) with its normal
    /// dependencies.
    packages: BTreeMap<String, BTreeSet<String>>,
    /// Package names by id.
    names: BTreeMap<String, String>,
    /// Packages (ids) that are proc macros.
    proc_macros: BTreeSet<String>,
}

impl Graph {
    /// Reads the graph of the workspace whose root manifest is `manifest`.
    pub fn of_workspace(manifest: &Path) -> Result<Graph> {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--manifest-path"])
            .arg(manifest)
            .output()
            .context("running cargo metadata")?;
        if !out.status.success() {
            bail!(
                "cargo metadata failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let metadata: Value =
            serde_json::from_slice(&out.stdout).context("reading cargo metadata")?;
        Graph::from_metadata(&metadata)
    }

    /// The graph in `cargo metadata --format-version 1` output.
    pub fn from_metadata(metadata: &Value) -> Result<Graph> {
        let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let mut names = BTreeMap::new();
        let mut proc_macros = BTreeSet::new();
        for p in list(&metadata["packages"]) {
            names.insert(text(&p["id"]), text(&p["name"]));
            let is_proc_macro = list(&p["targets"])
                .iter()
                .any(|t| list(&t["kind"]).iter().any(|k| k == "proc-macro"));
            if is_proc_macro {
                proc_macros.insert(text(&p["id"]));
            }
        }
        let members: BTreeSet<String> = list(&metadata["workspace_members"])
            .iter()
            .map(text)
            .collect();
        let mut packages: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for node in list(&metadata["resolve"]["nodes"]) {
            let normal = list(&node["deps"])
                .into_iter()
                .filter(|d| list(&d["dep_kinds"]).iter().any(|k| k["kind"].is_null()))
                .map(|d| text(&d["pkg"]));
            packages
                .entry(text(&node["id"]))
                .or_default()
                .extend(normal);
        }
        if packages.is_empty() {
            bail!("cargo metadata listed no dependency graph");
        }
        let name = |id: &String| names.get(id).cloned().unwrap_or_else(|| id.clone());
        let internal = members
            .iter()
            .map(|m| {
                let deps = packages.get(m).into_iter().flatten();
                let deps = deps.filter(|d| members.contains(*d)).map(name).collect();
                (name(m), deps)
            })
            .collect();
        Ok(Graph {
            internal,
            packages,
            names,
            proc_macros,
        })
    }

    /// The direct normal dependencies (ids) of the workspace crate named `name`, proc macros
    /// left out (they run in the compiler, not in molt).
    fn direct(&self, name: &str) -> Vec<&String> {
        let id = self
            .names
            .iter()
            .find(|(id, n)| *n == name && self.packages.contains_key(*id))
            .map(|(id, _)| id);
        id.and_then(|id| self.packages.get(id))
            .into_iter()
            .flatten()
            .filter(|d| !self.proc_macros.contains(*d))
            .collect()
    }

    /// The names of package `id` and of every package it reaches through normal dependencies,
    /// proc macros left out.
    fn reached_from(&self, id: &String) -> BTreeSet<&str> {
        let mut seen = BTreeSet::from([id]);
        let mut next = vec![id];
        while let Some(id) = next.pop() {
            for dep in self.packages.get(id).into_iter().flatten() {
                if !self.proc_macros.contains(dep) && seen.insert(dep) {
                    next.push(dep);
                }
            }
        }
        seen.into_iter()
            .filter_map(|id| self.names.get(id).map(String::as_str))
            .collect()
    }

    /// The name of package `id`.
    fn name<'a>(&'a self, id: &'a str) -> &'a str {
        self.names.get(id).map_or(id, String::as_str)
    }
}

/// Every way the workspace departs from [`LAYERS`] and [`PURE`], one line each.
pub fn check(graph: &Graph) -> Vec<String> {
    let table: BTreeMap<&str, BTreeSet<&str>> = LAYERS
        .iter()
        .map(|(name, deps)| (*name, deps.iter().copied().collect()))
        .collect();
    let mut problems = Vec::new();
    for (name, deps) in &graph.internal {
        let Some(allowed) = table.get(name.as_str()) else {
            problems.push(format!(
                "{name} is not in the layering: give it a row in xtask/src/layers.rs (LAYERS) and \
                 a place in ARCHITECTURE.md's diagram"
            ));
            continue;
        };
        for dep in deps {
            if !allowed.contains(dep.as_str()) {
                problems.push(format!(
                    "{name} depends on {dep}, which the layering forbids: go through the crate \
                     below, or change LAYERS in xtask/src/layers.rs and ARCHITECTURE.md's diagram \
                     together"
                ));
            }
        }
        for dep in allowed {
            if !deps.contains(*dep) {
                problems.push(format!(
                    "LAYERS says {name} depends on {dep}, but it no longer does: remove the edge \
                     from xtask/src/layers.rs and from ARCHITECTURE.md's diagram"
                ));
            }
        }
    }
    for name in table.keys() {
        if !graph.internal.contains_key(*name) {
            problems.push(format!(
                "LAYERS lists {name}, which is not in the workspace: remove its row"
            ));
        }
    }
    for (name, allowed) in PURE {
        for dep in graph.direct(name) {
            let dep_name = graph.name(dep);
            if graph.internal.contains_key(dep_name) {
                // Another workspace crate: LAYERS decides, and a pure one is checked itself.
                continue;
            }
            let outside: Vec<&str> = graph
                .reached_from(dep)
                .into_iter()
                .filter(|d| !allowed.contains(d))
                .collect();
            if !outside.is_empty() {
                problems.push(format!(
                    "{name} must do no I/O but now depends on {dep_name}, which brings {}: if \
                     none of them reads a file, socket, clock or process state, add them to \
                     PURE_DEPS in xtask/src/layers.rs",
                    outside.join(", ")
                ));
            }
        }
    }
    problems
}

/// `cargo xtask layers`: checks this workspace and prints what departs from the layering.
pub fn run() -> Result<()> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let graph = Graph::of_workspace(&manifest)?;
    let problems = check(&graph);
    for (name, deps) in &graph.internal {
        let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
        println!("{name:<14} -> {}", deps.join(", "));
    }
    if problems.is_empty() {
        println!("the crates keep their layers");
        return Ok(());
    }
    for p in &problems {
        eprintln!("{p}");
    }
    bail!("{} departure(s) from the layering", problems.len())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_workspace_keeps_its_layers() {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let graph = Graph::of_workspace(&manifest).expect("cargo metadata of the workspace");
        let problems = check(&graph);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    /// A metadata document with these packages (`name`, `deps`, proc macro?), all of them
    /// workspace members when their name starts with `molt` or is `xtask`.
    fn metadata(packages: &[(&str, &[&str], bool)]) -> Value {
        let id = |name: &str| format!("{name} 0.1.0");
        let members: Vec<String> = packages
            .iter()
            .filter(|(name, ..)| name.starts_with("molt") || *name == "xtask")
            .map(|(name, ..)| id(name))
            .collect();
        json!({
            "packages": packages.iter().map(|(name, _, macro_)| json!({
                "id": id(name), "name": name,
                "targets": [{ "kind": [if *macro_ { "proc-macro" } else { "lib" }] }],
            })).collect::<Vec<_>>(),
            "workspace_members": members,
            "resolve": { "nodes": packages.iter().map(|(name, deps, _)| json!({
                "id": id(name),
                "deps": deps.iter().map(|d| json!({
                    "pkg": id(d), "dep_kinds": [{ "kind": null }],
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>() },
        })
    }

    /// The workspace as the table draws it, plus `extra` packages.
    fn workspace_with(extra: &[(&str, &[&str], bool)]) -> Graph {
        let mut packages: Vec<(&str, &[&str], bool)> = LAYERS
            .iter()
            .map(|(name, deps)| (*name, *deps, false))
            .collect();
        for (name, deps, macro_) in extra {
            match packages.iter_mut().find(|(n, ..)| n == name) {
                Some(p) => *p = (name, deps, *macro_),
                None => packages.push((name, deps, *macro_)),
            }
        }
        Graph::from_metadata(&metadata(&packages)).unwrap()
    }

    #[test]
    fn the_table_alone_passes() {
        assert_eq!(check(&workspace_with(&[])), Vec::<String>::new());
    }

    #[test]
    fn an_upper_crate_reaching_past_the_controller_fails() {
        let problems = check(&workspace_with(&[(
            "molt-api",
            &[
                "molt-core",
                "molt-control",
                "molt-wire",
                "molt-fleet",
                "molt-store",
            ],
            false,
        )]));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("molt-api depends on molt-store"));
    }

    #[test]
    fn a_dropped_edge_and_an_unplaced_crate_are_reported() {
        let problems = check(&workspace_with(&[
            ("molt-cli", &["molt-core", "molt-wire"], false),
            ("molt-new", &[], false),
        ]));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("LAYERS says molt-cli depends on molt-pack"));
        assert!(problems[1].starts_with("molt-new is not in the layering"));
    }

    #[test]
    fn the_core_gaining_io_fails_even_through_another_crate() {
        let problems = check(&workspace_with(&[
            ("molt-core", &["serde", "chrono"], false),
            ("serde", &["serde_derive"], false),
            ("serde_derive", &["syn"], true),
            ("syn", &[], false),
            ("chrono", &["libc"], false),
            ("libc", &[], false),
        ]));
        // Said once, of the crate that reaches it directly (molt-wire reaches it through
        // molt-core).
        assert_eq!(problems.len(), 1, "{problems:?}");
        let expected =
            "molt-core must do no I/O but now depends on chrono, which brings chrono, libc:";
        assert!(problems[0].starts_with(expected), "{problems:?}");
    }
}
