//! One app: its environments with their role and instances, the traffic split, the deployment
//! in progress step by step, the release history with rollback buttons, and its history.

use std::fmt::Write as _;

use molt_control::{AppStatus, DeploymentRecord, EventRecord, JournalEntry, ReleaseRecord};
use molt_core::DeployState;
use molt_wire::{EnvState, EnvStatus, InstanceState};

use super::{action_button, chart, compare, esc, figure_cells, short, span};
use crate::samples::Sample;

/// What the app view shows, read from the controller in one go.
pub(crate) struct AppView {
    /// The app's status (environments, instances, what serves).
    pub(crate) status: AppStatus,
    /// Releases, newest first.
    pub(crate) releases: Vec<ReleaseRecord>,
    /// The newest deployment with its journal.
    pub(crate) deployment: Option<(DeploymentRecord, Vec<JournalEntry>)>,
    /// The app's history, newest first.
    pub(crate) events: Vec<EventRecord>,
    /// The app's last hour.
    pub(crate) samples: Vec<Sample>,
    /// Now, by the controller's clock.
    pub(crate) now_ms: u64,
}

/// The live section of the app view.
pub(crate) fn live(view: &AppView, csrf: &str) -> String {
    let app = &view.status.app.name;
    let mut out = String::new();
    let serving = match (&view.status.serving, &view.status.app.routed_env) {
        (Some(r), Some(env)) => format!(
            "<strong class=\"release\">v{}</strong> on <code class=\"routed\">{}</code>",
            r.number,
            esc(env)
        ),
        _ => "nothing serves".into(),
    };
    let hosts: Vec<String> = view
        .status
        .hostnames
        .iter()
        .map(|h| format!("<code>{}</code>", esc(h)))
        .collect();
    let _ = writeln!(
        out,
        "<p class=\"summary\">Live: {serving} · answers {} · {}</p>",
        hosts.join(", "),
        split(view)
    );
    let _ = writeln!(
        out,
        "<table class=\"figures\"><thead><tr><th class=\"num\">Req/s</th><th class=\"num\">Errors</th><th class=\"num\">p99</th>\
         <th>Last hour</th></tr></thead><tbody><tr>{}<td>{}</td></tr></tbody></table>",
        figure_cells(&view.samples),
        chart(&view.samples)
    );
    out.push_str(&environments(view, csrf));
    out.push_str(&deployment(view, csrf));
    out.push_str(&releases(view));
    let _ = writeln!(out, "<h2>History</h2>\n<ul class=\"history\">");
    for e in &view.events {
        let _ = writeln!(
            out,
            "<li><span class=\"ago\">{} ago</span> <span class=\"kind\">{}</span> {}</li>",
            span(view.now_ms.saturating_sub(e.at_ms)),
            esc(&e.kind),
            esc(&e.message)
        );
    }
    out.push_str("</ul>\n");
    let _ = app;
    out
}

/// How the route splits traffic right now.
fn split(view: &AppView) -> String {
    let app = &view.status.app;
    let mut parts = Vec::new();
    if let Some((d, _)) = &view.deployment {
        if let (DeployState::Canarying, Some(c), Some(env)) = (d.state, &d.canary, &d.env) {
            parts.push(format!(
                "canary <code>{}</code> at {} %, live at {} %",
                esc(env),
                c.weight,
                100u32.saturating_sub(c.weight)
            ));
        }
    }
    if let Some(shadow) = &app.shadow {
        parts.push(format!(
            "{} % of GET/HEAD/OPTIONS mirrored to <code>{}</code>",
            shadow.share_percent,
            esc(&shadow.env)
        ));
    }
    if app.maintenance.is_some() {
        parts.push("in maintenance".into());
    }
    if parts.is_empty() {
        "all traffic to the live environment".into()
    } else {
        parts.join("; ")
    }
}

/// The environments, their role, instances and traffic, with a swap button on each warm one.
fn environments(view: &AppView, csrf: &str) -> String {
    let app = &view.status.app.name;
    let mut rows = String::new();
    for env in &view.status.envs {
        let role = role(view, env);
        let instances: Vec<String> = env
            .instances
            .iter()
            .map(|i| {
                format!(
                    "<span class=\"instance {state}\" title=\"{id}\">{state}</span>",
                    state = instance_state(i.state),
                    id = esc(&i.id)
                )
            })
            .collect();
        let traffic = env
            .traffic
            .as_ref()
            .map(|t| {
                let errors = t.classes.get("5xx").copied().unwrap_or(0) + t.failed;
                format!(
                    "{} requests, {} errors, p50 {}, p99 {}",
                    t.requests,
                    errors,
                    ms(t.p50_ms),
                    ms(t.p99_ms)
                )
            })
            .unwrap_or_default();
        let is_warm = !env.routed
            && env.env.state == EnvState::Ready
            && env.env.warm_until_ms.is_some_and(|w| w > view.now_ms);
        let button = if is_warm {
            action_button(
                &format!("/apps/{app}/swap"),
                &format!("Roll back to v{}", env.env.release),
                csrf,
                &[("env", &env.env.id)],
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            rows,
            "<tr data-env=\"{id}\"><td><code>{id}</code></td><td>v{release}</td><td>{role}</td>\
             <td>{instances}</td><td>{traffic}</td><td>{button}</td></tr>",
            id = esc(&env.env.id),
            release = env.env.release,
            role = esc(&role),
            instances = instances.join(" "),
            traffic = esc(&traffic),
        );
    }
    format!(
        "<h2>Environments</h2>\n<table class=\"envs\"><thead><tr><th>Environment</th>\
         <th>Release</th><th>Role</th><th>Instances</th><th>Traffic (live requests)</th><th></th>\
         </tr></thead>\n<tbody>\n{rows}</tbody></table>\n"
    )
}

/// An environment's role: live, canary, shadow, warm (with time left), starting or kept.
fn role(view: &AppView, env: &EnvStatus) -> String {
    if env.routed {
        return "live".into();
    }
    if let Some((d, _)) = &view.deployment {
        if d.env.as_deref() == Some(env.env.id.as_str()) {
            if let (DeployState::Canarying, Some(c)) = (d.state, &d.canary) {
                return format!("canary at {} %", c.weight);
            }
        }
    }
    if let Some(s) = &view.status.app.shadow {
        if s.env == env.env.id {
            return format!("shadow ({} %)", s.share_percent);
        }
    }
    match (env.env.state, env.env.warm_until_ms) {
        (EnvState::Starting, _) => "starting".into(),
        (_, Some(until)) if until > view.now_ms => {
            format!("warm, {} left", span(until - view.now_ms))
        }
        _ => "kept".into(),
    }
}

/// The newest deployment, step by step, with the actions it takes.
fn deployment(view: &AppView, csrf: &str) -> String {
    let Some((d, journal)) = &view.deployment else {
        return String::new();
    };
    let app = &view.status.app.name;
    let mut out = format!(
        "<h2>Deployment {} of v{}: <span class=\"state\">{}</span></h2>\n",
        d.id,
        d.release,
        esc(&d.state.as_str().replace('_', " "))
    );
    if let Some(e) = &d.error {
        let _ = writeln!(out, "<p class=\"error\">{}</p>", esc(e));
    }
    match d.state {
        DeployState::Canarying => {
            out.push_str(&action_button(
                &format!("/apps/{app}/promote"),
                "Promote",
                csrf,
                &[],
            ));
            out.push_str(&action_button(
                &format!("/apps/{app}/abort"),
                "Abort",
                csrf,
                &[],
            ));
        }
        DeployState::Shadowing => {
            out.push_str(&action_button(
                &format!("/apps/{app}/promote"),
                "Promote",
                csrf,
                &[],
            ));
            out.push_str(&action_button(
                &format!("/apps/{app}/abandon"),
                "Abandon",
                csrf,
                &[],
            ));
        }
        _ => {}
    }
    if let Some(c) = &d.canary {
        out.push_str("<h3>Canary against the stable environment</h3>\n");
        out.push_str(&compare::canary(c));
    }
    if let Some(c) = &d.shadow {
        let _ = writeln!(
            out,
            "<p>Shadow comparison: live {} · shadow {}</p>",
            esc(&c.live.as_ref().map(summary).unwrap_or_else(|| "–".into())),
            esc(&summary(&c.shadow))
        );
        out.push_str(&compare::shadow(c));
    }
    out.push_str("<ol class=\"journal\">\n");
    let start = journal.first().map(|j| j.at_ms).unwrap_or(d.created_ms);
    for entry in journal {
        let _ = writeln!(
            out,
            "<li><span class=\"ago\">+{} ms</span> <strong>{}</strong> {}</li>",
            entry.at_ms.saturating_sub(start),
            esc(entry.state.as_str()),
            esc(&entry.detail)
        );
    }
    out.push_str("</ol>\n");
    out
}

/// The release history.
fn releases(view: &AppView) -> String {
    let mut rows = String::new();
    for r in &view.releases {
        let _ = writeln!(
            rows,
            "<tr><td>v{}</td><td><code>{}</code></td><td>{}</td><td>{} ago</td><td>{}</td></tr>",
            r.number,
            esc(short(r.image.as_str())),
            esc(&r.note),
            span(view.now_ms.saturating_sub(r.created_ms)),
            if r.pinned { "pinned" } else { "" }
        );
    }
    format!(
        "<h2>Releases</h2>\n<table class=\"releases\"><thead><tr><th>Release</th><th>Image</th>\
         <th>Origin</th><th>Made</th><th></th></tr></thead>\n<tbody>\n{rows}</tbody></table>\n"
    )
}

fn summary(t: &molt_wire::TrafficSummary) -> String {
    format!(
        "{} requests, {} failed, p99 {}",
        t.requests,
        t.failed + t.classes.get("5xx").copied().unwrap_or(0),
        ms(t.p99_ms)
    )
}

fn ms(value: Option<f64>) -> String {
    value
        .map(|v| format!("{v:.0} ms"))
        .unwrap_or_else(|| "–".into())
}

fn instance_state(state: InstanceState) -> &'static str {
    match state {
        InstanceState::Starting => "starting",
        InstanceState::Healthy => "healthy",
        InstanceState::Unhealthy => "unhealthy",
        InstanceState::Drifted => "drifted",
        InstanceState::Stopping => "stopping",
        InstanceState::Stopped => "stopped",
    }
}
