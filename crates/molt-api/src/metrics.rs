//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4).

use std::fmt::Write;

use molt_control::{EnvMetrics, MetricsSnapshot, RouterCounters, TrafficStats, LATENCY_BUCKETS};

/// Appends the router's own counters: requests by client scheme, failed TLS handshakes and
/// requests waiting on held backends.
pub fn render_router(out: &mut String, router: &RouterCounters) {
    let name = "molt_router_client_requests_total";
    family(
        out,
        name,
        "counter",
        "Requests received from clients, by scheme (http or https).",
    );
    for (scheme, requests) in [
        ("http", router.http_requests),
        ("https", router.https_requests),
    ] {
        let _ = writeln!(out, "{name}{{scheme=\"{scheme}\"}} {requests}");
    }
    let name = "molt_router_tls_handshake_failures_total";
    family(
        out,
        name,
        "counter",
        "TLS handshakes that failed or timed out (unknown SNI names included).",
    );
    let _ = writeln!(out, "{name} {}", router.tls_handshake_failures);
    let name = "molt_router_held_requests";
    family(
        out,
        name,
        "gauge",
        "Requests waiting for a held backend (every instance being replaced) to get one.",
    );
    let _ = writeln!(out, "{name} {}", router.held_requests);
}

/// Renders the snapshot as Prometheus text.
pub fn render(m: &MetricsSnapshot) -> String {
    let mut out = String::new();
    type Value = fn(&EnvMetrics) -> u64;
    let per_env: [(&str, &str, &str, Value); 10] = [
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
        (
            "molt_router_upstream_ejections_total",
            "counter",
            "Times an instance was taken out of rotation after connection failures.",
            |e| e.traffic.ejections,
        ),
        (
            "molt_router_upstreams_ejected",
            "gauge",
            "Instances out of rotation right now.",
            |e| e.traffic.ejected,
        ),
        (
            "molt_router_retries_total",
            "counter",
            "Requests sent to another instance after a connection failure.",
            |e| e.traffic.retries,
        ),
        (
            "molt_router_retry_budget_exhausted_total",
            "counter",
            "Retries refused because the retry budget was spent.",
            |e| e.traffic.retry_budget_exhausted,
        ),
        (
            "molt_router_shadow_failed_total",
            "counter",
            "Mirrored requests that got no answer (connection failure or timeout).",
            |e| e.traffic.shadow.failed,
        ),
        (
            "molt_router_shadow_dropped_total",
            "counter",
            "Mirrors skipped because too many were in flight.",
            |e| e.traffic.shadow_dropped,
        ),
    ];
    for (name, kind, help, value) in per_env {
        family(&mut out, name, kind, help);
        for e in &m.envs {
            let _ = writeln!(out, "{name}{{{}}} {}", env_labels(e), value(e));
        }
    }
    traffic_families(&mut out, &m.envs);
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

/// Status classes and latency histograms, live and shadow (`traffic` label) side by side; the
/// shadow series appear once an environment has had mirrored requests.
fn traffic_families(out: &mut String, envs: &[EnvMetrics]) {
    let kinds = |e: &EnvMetrics| {
        let live = Some(("live", e.traffic.live));
        let shadow = (e.traffic.shadow.requests() > 0).then_some(("shadow", e.traffic.shadow));
        live.into_iter().chain(shadow)
    };
    let name = "molt_router_responses_by_class_total";
    family(
        out,
        name,
        "counter",
        "Responses by status class (relayed or made by the router), live and shadow.",
    );
    for e in envs {
        for (kind, stats) in kinds(e) {
            for (i, n) in stats.classes.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}{{{},traffic=\"{kind}\",class=\"{}xx\"}} {n}",
                    env_labels(e),
                    i + 1
                );
            }
        }
    }
    let name = "molt_router_request_duration_seconds";
    family(
        out,
        name,
        "histogram",
        "Time from routing a request to its response head, live and shadow.",
    );
    for e in envs {
        for (kind, stats) in kinds(e) {
            histogram(
                out,
                name,
                &format!("{},traffic=\"{kind}\"", env_labels(e)),
                &stats,
            );
        }
    }
}

fn histogram(out: &mut String, name: &str, labels: &str, stats: &TrafficStats) {
    let cumulative = &stats.latency.cumulative;
    for (bound, n) in LATENCY_BUCKETS.iter().zip(cumulative) {
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {n}");
    }
    let count = stats.requests();
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", stats.latency.sum_seconds);
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

fn env_labels(e: &EnvMetrics) -> String {
    format!(
        "app=\"{}\",env=\"{}\",routed=\"{}\"",
        escape(&e.app),
        escape(&e.env),
        e.routed
    )
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
    use molt_control::{EnvTraffic, LatencyHistogram};

    #[test]
    fn renders_the_router_s_own_counters() {
        let mut text = String::new();
        render_router(&mut text, &RouterCounters::default());
        assert!(
            text.contains("# TYPE molt_router_held_requests gauge"),
            "{text}"
        );
        assert!(text.contains("\nmolt_router_held_requests 0\n"), "{text}");
        assert!(text.contains("molt_router_client_requests_total{scheme=\"https\"} 0"));
    }

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
            traffic: EnvTraffic {
                live: TrafficStats {
                    classes: [0, 5, 0, 0, 1],
                    latency: LatencyHistogram {
                        cumulative: [0, 1, 2, 2, 2, 4, 4, 4, 4, 4, 4, 5, 6],
                        sum_seconds: 12.5,
                    },
                    failed: 0,
                },
                ejections: 2,
                ..EnvTraffic::default()
            },
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
        let env = "app=\"shop\",env=\"shop-v1-ab12\",routed=\"true\"";
        for line in [
            format!("molt_router_upstream_ejections_total{{{env}}} 2"),
            format!("molt_router_responses_by_class_total{{{env},traffic=\"live\",class=\"5xx\"}} 1"),
            format!("molt_router_request_duration_seconds_bucket{{{env},traffic=\"live\",le=\"0.0025\"}} 1"),
            format!("molt_router_request_duration_seconds_bucket{{{env},traffic=\"live\",le=\"10\"}} 5"),
            format!("molt_router_request_duration_seconds_bucket{{{env},traffic=\"live\",le=\"+Inf\"}} 6"),
            format!("molt_router_request_duration_seconds_sum{{{env},traffic=\"live\"}} 12.5"),
            format!("molt_router_request_duration_seconds_count{{{env},traffic=\"live\"}} 6"),
        ] {
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }
        assert!(text.contains("# TYPE molt_router_request_duration_seconds histogram"));
        // No shadow traffic yet: no shadow series.
        assert!(!text.contains("traffic=\"shadow\""), "{text}");
        assert!(
            text.contains("molt_instances{app=\"shop\",env=\"shop-v1-ab12\",state=\"healthy\"} 2")
        );
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
