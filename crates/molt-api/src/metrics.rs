//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4).

use std::fmt::Write;

use molt_control::{EnvMetrics, MetricsSnapshot};
use molt_router::{ClientScheme, Router};

/// Appends the router's own counters: requests by client scheme and failed TLS handshakes.
pub fn render_router(out: &mut String, router: &Router) {
    let name = "molt_router_client_requests_total";
    family(
        out,
        name,
        "counter",
        "Requests received from clients, by scheme (http or https).",
    );
    for scheme in [ClientScheme::Http, ClientScheme::Https] {
        let _ = writeln!(
            out,
            "{name}{{scheme=\"{}\"}} {}",
            scheme.as_str(),
            router.requests_over(scheme)
        );
    }
    let name = "molt_router_tls_handshake_failures_total";
    family(
        out,
        name,
        "counter",
        "TLS handshakes that failed or timed out (unknown SNI names included).",
    );
    let _ = writeln!(out, "{name} {}", router.tls_handshake_failures());
}

/// Renders the snapshot as Prometheus text.
pub fn render(m: &MetricsSnapshot) -> String {
    let mut out = String::new();
    type Value = fn(&EnvMetrics) -> u64;
    let per_env: [(&str, &str, &str, Value); 4] = [
        (
            "molt_router_requests_total",
            "counter",
            "Requests the router assigned to an environment.",
            |e| e.accepted,
        ),
        (
            "molt_router_responses_total",
            "counter",
            "Responses relayed from an environment's instances.",
            |e| e.answered,
        ),
        (
            "molt_router_errors_total",
            "counter",
            "Error responses the router made itself (502/503/504).",
            |e| e.failed,
        ),
        (
            "molt_router_in_flight",
            "gauge",
            "Requests whose response is not finished yet.",
            |e| e.in_flight,
        ),
    ];
    for (name, kind, help, value) in per_env {
        family(&mut out, name, kind, help);
        for e in &m.envs {
            let labels = format!(
                "app=\"{}\",env=\"{}\",routed=\"{}\"",
                escape(&e.app),
                escape(&e.env),
                e.routed
            );
            let _ = writeln!(out, "{name}{{{labels}}} {}", value(e));
        }
    }
    let name = "molt_router_unrouted_total";
    family(
        &mut out,
        name,
        "counter",
        "Requests for a host no route answers.",
    );
    let _ = writeln!(out, "{name} {}", m.unrouted);
    let name = "molt_instances";
    family(&mut out, name, "gauge", "Live instances by state.");
    for ((app, env, state), n) in &m.instances {
        let labels = format!(
            "app=\"{}\",env=\"{}\",state=\"{}\"",
            escape(app),
            escape(env),
            escape(state)
        );
        let _ = writeln!(out, "{name}{{{labels}}} {n}");
    }
    let name = "molt_deployments";
    family(
        &mut out,
        name,
        "gauge",
        "Deployments by their current state.",
    );
    for ((app, state), n) in &m.deployments {
        let _ = writeln!(
            out,
            "{name}{{app=\"{}\",state=\"{}\"}} {n}",
            escape(app),
            escape(state)
        );
    }
    let name = "molt_build_info";
    family(&mut out, name, "gauge", "The molt version serving.");
    let _ = writeln!(out, "{name}{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families_and_labels() {
        let mut m = MetricsSnapshot::default();
        m.envs.push(EnvMetrics {
            app: "shop".into(),
            env: "shop-v1-ab12".into(),
            routed: true,
            accepted: 7,
            in_flight: 1,
            answered: 6,
            failed: 0,
        });
        m.unrouted = 3;
        m.instances
            .insert(("shop".into(), "shop-v1-ab12".into(), "healthy".into()), 2);
        let text = render(&m);
        assert!(
            text.contains("# TYPE molt_router_requests_total counter"),
            "{text}"
        );
        assert!(text.contains(
            "molt_router_requests_total{app=\"shop\",env=\"shop-v1-ab12\",routed=\"true\"} 7"
        ));
        assert!(text.contains("molt_router_unrouted_total 3"));
        assert!(
            text.contains("molt_instances{app=\"shop\",env=\"shop-v1-ab12\",state=\"healthy\"} 2")
        );
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
