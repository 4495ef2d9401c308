//! The apps view: each app's live release, health, traffic figures and last hour.

use std::fmt::Write as _;

use molt_control::Status;
use molt_wire::{AppStatus, InstanceState};

use super::{chart, esc, figure_cells};
use crate::samples::Samples;

/// The live section of the apps view: one row per app.
pub(crate) fn live(status: &Status, samples: &Samples) -> String {
    if status.apps.is_empty() {
        return "<p>No apps yet: <code>molt deploy</code> one, or <code>git push</code> to \
                <code>/git/&lt;app&gt;.git</code>.</p>"
            .into();
    }
    let mut rows = String::new();
    for app in &status.apps {
        let name = &app.app.name;
        let samples = samples.of(name);
        let (release, env) = match (&app.serving, &app.app.routed_env) {
            (Some(r), Some(e)) => (format!("v{}", r.number), e.clone()),
            _ => ("–".into(), "nothing serves".into()),
        };
        let deployment = app
            .last_deployment
            .as_ref()
            .map(|d| format!("v{} {}", d.release, d.state.as_str().replace('_', " ")))
            .unwrap_or_else(|| "–".into());
        let _ = writeln!(
            rows,
            "<tr data-app=\"{n}\"><td><a href=\"/apps/{n}\">{n}</a></td>\
             <td class=\"release\">{release}</td><td><code>{env}</code></td><td>{health}</td>\
             {figures}<td>{chart}</td><td>{deployment}</td></tr>",
            n = esc(name),
            release = esc(&release),
            env = esc(&env),
            health = esc(&health(app)),
            figures = figure_cells(&samples),
            chart = chart(&samples),
            deployment = esc(&deployment),
        );
    }
    format!(
        "<table class=\"apps\">\n<thead><tr><th>App</th><th>Live release</th><th>Environment</th>\
         <th>Health</th><th class=\"num\">Req/s</th><th class=\"num\">Errors</th><th class=\"num\">p99</th><th>Last hour</th>\
         <th>Last deployment</th></tr></thead>\n<tbody>\n{rows}</tbody>\n</table>\n\
         <p class=\"hint\">Isolation: {}. Figures: the router's counters, sampled every {} s.</p>",
        esc(&status.isolation),
        crate::samples::SAMPLE_EVERY.as_secs()
    )
}

/// "2/2 healthy" for the live environment's instances.
pub(crate) fn health(app: &AppStatus) -> String {
    let Some(live) = app.envs.iter().find(|e| e.routed) else {
        return "–".into();
    };
    let healthy = live
        .instances
        .iter()
        .filter(|i| i.state == InstanceState::Healthy)
        .count();
    format!("{healthy}/{} healthy", live.instances.len())
}
