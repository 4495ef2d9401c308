//! `molt.toml`: the app manifest, parsed into a [`Manifest`] that cannot hold bad values.
//!
//! Every error names the line and column it comes from; unknown keys are errors.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::build::{parse_build, BuildSpec, RawBuild};
use crate::canary::{parse_analysis, parse_canary, Analysis, CanarySpec, RawAnalysis, RawStep};
use crate::duration::{parse_duration, serde_text};
use crate::limits::{parse_cpu, parse_memory, Limits, MAX_NOFILE, MIN_NOFILE};
use crate::scale::{ScaleSpec, MAX_CONCURRENCY, MAX_INSTANCES};
use crate::{AppName, EnvVarName, Hostname, InputError};

/// A parsed and validated `molt.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The app this folder deploys.
    pub name: AppName,
    /// Everything about how the app runs; becomes part of each release.
    pub config: RunConfig,
    /// How the image is baked (`[build]`); without it the app folder is the image.
    pub build: Option<BuildSpec>,
}

/// How instances of a release run and are checked: the config half of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Hostnames the app's route answers to (besides `<app>.localhost`).
    pub hostnames: Vec<Hostname>,
    /// argv; `$PORT` and `${VAR}` expand from the instance environment.
    pub command: Vec<String>,
    /// Number of instances in each environment.
    pub instances: u32,
    /// A fixed port the app listens on; each instance then gets its own loopback address
    /// (`$HOST`). Without it molt picks a free port on 127.0.0.1 per instance.
    #[serde(default)]
    pub port: Option<u16>,
    /// The health check that gates the swap and keeps watching after it.
    pub health: HealthCheck,
    /// Environment variables given to every instance.
    pub env: BTreeMap<EnvVarName, String>,
    /// How deployments of this app proceed.
    pub deploy: DeployPolicy,
    /// Memory, CPU and task limits of each instance (`[limits]`).
    #[serde(default)]
    pub limits: Limits,
    /// Limits the router applies to this app's requests (`[router]`).
    #[serde(default, skip_serializing_if = "RouterLimits::is_unset")]
    pub router: RouterLimits,
    /// Autoscaling bounds and target (`[scale]`); without it an environment keeps the count
    /// it is given (`instances`, or `molt scale`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<ScaleSpec>,
    /// The app's secrets this release gives its instances as environment variables: each
    /// name with the version it was set at (the value is encrypted in the store, and never
    /// part of a release).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<EnvVarName, u64>,
}

/// Per-app router limits; unset ones fall back to `molt serve`'s, and none can exceed them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterLimits {
    /// Largest request body in bytes (`max_body = "10MiB"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// How long an instance may take to send response headers (`request_timeout = "30s"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
}

/// An HTTP health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// Path requested with GET; any 2xx or 3xx is healthy.
    pub path: String,
    /// Time between checks.
    #[serde(with = "serde_text")]
    pub interval: Duration,
    /// Time allowed for one check.
    #[serde(with = "serde_text")]
    pub timeout: Duration,
    /// Consecutive successes that make an instance healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures that make an instance unhealthy.
    pub unhealthy_threshold: u32,
    /// How long a new instance has to become healthy.
    #[serde(with = "serde_text")]
    pub start_deadline: Duration,
}

/// Timing of a blue/green deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployPolicy {
    /// Longest wait for in-flight requests on the old environment after the swap.
    #[serde(with = "serde_text")]
    pub drain_timeout: Duration,
    /// How long health keeps being watched after the swap, with automatic swap-back.
    #[serde(with = "serde_text")]
    pub watch: Duration,
    /// How long the previous environment stays warm for instant rollback.
    #[serde(with = "serde_text")]
    pub rollback_window: Duration,
    /// `strategy = "canary"`: the steps and analysis before the swap (`None`: blue/green).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanarySpec>,
    /// Blue/green: the watch also judges the new environment's traffic each interval (by
    /// `[deploy.analysis]`, else its defaults) and swaps back after `failure_limit` failed
    /// intervals. `None` for a canary, and for releases recorded before the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch_analysis: Option<Analysis>,
    /// `require_signature`: the Ed25519 public key (64 lowercase hex digits, the contents of
    /// a `.pub` file `molt images keygen` writes) that must have signed the image of every
    /// release of this app; checked by the server before a release is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_signature: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: Spanned<String>,
    #[serde(default)]
    hostnames: Vec<Spanned<String>>,
    command: Spanned<Vec<String>>,
    #[serde(default)]
    instances: Option<Spanned<u32>>,
    #[serde(default)]
    port: Option<Spanned<i64>>,
    #[serde(default)]
    health: Option<RawHealth>,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, String>,
    #[serde(default)]
    deploy: Option<RawDeploy>,
    #[serde(default)]
    limits: Option<RawLimits>,
    #[serde(default)]
    build: Option<Spanned<RawBuild>>,
    router: Option<RawRouter>,
    scale: Option<Spanned<RawScale>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawScale {
    min: Option<Spanned<i64>>,
    max: Option<Spanned<i64>>,
    concurrency: Option<Spanned<i64>>,
    window: Option<Spanned<String>>,
    panic_window: Option<Spanned<String>>,
    scale_down_delay: Option<Spanned<String>>,
    idle: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory: Option<Spanned<String>>,
    cpu: Option<Spanned<f64>>,
    pids: Option<Spanned<i64>>,
    nofile: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRouter {
    max_body: Option<Spanned<String>>,
    request_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    path: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    healthy_threshold: Option<Spanned<u32>>,
    unhealthy_threshold: Option<Spanned<u32>>,
    start_deadline: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDeploy {
    strategy: Option<Spanned<String>>,
    drain_timeout: Option<Spanned<String>>,
    watch: Option<Spanned<String>>,
    rollback_window: Option<Spanned<String>>,
    steps: Option<Spanned<Vec<Spanned<RawStep>>>>,
    analysis: Option<Spanned<RawAnalysis>>,
    require_signature: Option<Spanned<String>>,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: "/".to_string(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            healthy_threshold: 1,
            unhealthy_threshold: 3,
            start_deadline: Duration::from_secs(60),
        }
    }
}

impl Default for DeployPolicy {
    fn default() -> Self {
        DeployPolicy {
            drain_timeout: Duration::from_secs(30),
            watch: Duration::from_secs(300),
            rollback_window: Duration::from_secs(900),
            canary: None,
            watch_analysis: Some(Analysis::default()),
            require_signature: None,
        }
    }
}

/// An Ed25519 public key as `require_signature` names it: 64 hex digits (surrounding
/// whitespace ignored), kept in lowercase.
fn parse_public_key(text: &str) -> Result<String, String> {
    let key = text.trim();
    if key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(key.to_ascii_lowercase())
    } else {
        Err(format!(
            "require_signature is an Ed25519 public key: the 64 hex digits of the .pub file \
             `molt images keygen` writes (this value has {} characters)",
            key.chars().count()
        ))
    }
}

impl RouterLimits {
    /// True when nothing is set (then it is left out of stored configs).
    pub fn is_unset(&self) -> bool {
        self == &RouterLimits::default()
    }
}

impl Manifest {
    /// Parses `molt.toml` text; `file` names it in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Manifest, InputError> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| InputError::Manifest {
            file: file.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let at = |span: Range<usize>, message: String| InputError::Manifest {
            file: file.to_string(),
            message: format!("{}: {message}", line_col(text, span.start)),
        };
        let name: AppName = raw
            .name
            .get_ref()
            .parse()
            .map_err(|e: InputError| at(raw.name.span(), e.to_string()))?;
        let mut hostnames = Vec::new();
        for h in &raw.hostnames {
            let host: Hostname = h
                .get_ref()
                .parse()
                .map_err(|e: InputError| at(h.span(), e.to_string()))?;
            hostnames.push(host);
        }
        let command = raw.command.get_ref().clone();
        if command.is_empty() || command[0].trim().is_empty() {
            return Err(at(
                raw.command.span(),
                "command must name a program, e.g. command = [\"./server\", \"--port\", \"$PORT\"]"
                    .to_string(),
            ));
        }
        let mut instances = match &raw.instances {
            Some(n) if *n.get_ref() == 0 || *n.get_ref() > MAX_INSTANCES => {
                return Err(at(
                    n.span(),
                    format!("instances must be between 1 and {MAX_INSTANCES}"),
                ))
            }
            Some(n) => *n.get_ref(),
            None => 1,
        };
        let port = match &raw.port {
            Some(p) => match u16::try_from(*p.get_ref()) {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    return Err(at(
                        p.span(),
                        "port must be between 1 and 65535 (or left out: molt then picks one)"
                            .to_string(),
                    ))
                }
            },
            None => None,
        };
        let duration = |v: &Option<Spanned<String>>, default: Duration| match v {
            Some(s) => parse_duration(s.get_ref()).map_err(|e| at(s.span(), e.to_string())),
            None => Ok(default),
        };
        let threshold = |v: &Option<Spanned<u32>>, default: u32| match v {
            Some(n) if *n.get_ref() == 0 => Err(at(n.span(), "thresholds start at 1".to_string())),
            Some(n) => Ok(*n.get_ref()),
            None => Ok(default),
        };
        let rh = raw.health.unwrap_or_default();
        let dh = HealthCheck::default();
        let path = match &rh.path {
            Some(p) if !p.get_ref().starts_with('/') => {
                return Err(at(p.span(), "health path must start with '/'".to_string()))
            }
            Some(p) => p.get_ref().clone(),
            None => dh.path,
        };
        let health = HealthCheck {
            path,
            interval: duration(&rh.interval, dh.interval)?,
            timeout: duration(&rh.timeout, dh.timeout)?,
            healthy_threshold: threshold(&rh.healthy_threshold, dh.healthy_threshold)?,
            unhealthy_threshold: threshold(&rh.unhealthy_threshold, dh.unhealthy_threshold)?,
            start_deadline: duration(&rh.start_deadline, dh.start_deadline)?,
        };
        let rd = raw.deploy.unwrap_or_default();
        let canary = match (&rd.strategy, &rd.steps) {
            (Some(s), Some(steps)) if s.get_ref() == "canary" => Some(parse_canary(
                steps,
                rd.analysis.as_ref().map(|a| a.get_ref()),
                &at,
            )?),
            (Some(s), None) if s.get_ref() == "canary" => {
                return Err(at(
                    s.span(),
                    "a canary needs steps, e.g. steps = [{ weight = 10, pause = \"1m\" }]"
                        .to_string(),
                ))
            }
            (Some(s), _) if s.get_ref() != "blue-green" => {
                return Err(at(
                    s.span(),
                    format!(
                        "unknown strategy '{}': use \"blue-green\" or \"canary\"",
                        s.get_ref()
                    ),
                ))
            }
            (_, Some(steps)) => {
                return Err(at(
                    steps.span(),
                    "steps are for strategy = \"canary\"".to_string(),
                ))
            }
            _ => None,
        };
        // Blue/green's watch judges the new environment's traffic by default: with
        // `[deploy.analysis]`, by its criteria; without, by the analysis defaults.
        let watch_analysis = match (&canary, &rd.analysis) {
            (None, analysis) => Some(parse_analysis(analysis.as_ref().map(|a| a.get_ref()), &at)?),
            (Some(_), _) => None,
        };
        let dd = DeployPolicy::default();
        let deploy = DeployPolicy {
            drain_timeout: duration(&rd.drain_timeout, dd.drain_timeout)?,
            watch: duration(&rd.watch, dd.watch)?,
            rollback_window: duration(&rd.rollback_window, dd.rollback_window)?,
            canary,
            watch_analysis,
            require_signature: match &rd.require_signature {
                Some(key) => Some(parse_public_key(key.get_ref()).map_err(|e| at(key.span(), e))?),
                None => None,
            },
        };
        let rr = raw.router.unwrap_or_default();
        let router = RouterLimits {
            max_body_bytes: match &rr.max_body {
                Some(s) => {
                    Some(crate::parse_size(s.get_ref()).map_err(|e| at(s.span(), e.to_string()))?)
                }
                None => None,
            },
            request_timeout_ms: match &rr.request_timeout {
                Some(s) => match parse_duration(s.get_ref()) {
                    Ok(d) if d.is_zero() => {
                        return Err(at(
                            s.span(),
                            "request_timeout must be more than 0".to_string(),
                        ))
                    }
                    Ok(d) => Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    Err(e) => return Err(at(s.span(), e.to_string())),
                },
                None => None,
            },
        };
        let scale = match &raw.scale {
            Some(section) => {
                if let Some(n) = &raw.instances {
                    return Err(at(
                        n.span(),
                        "instances cannot be set together with [scale]: [scale]'s min and max \
                         replace it"
                            .to_string(),
                    ));
                }
                let spec = parse_scale(section.get_ref(), &at, &duration)?;
                spec.check().map_err(|e| at(section.span(), e))?;
                instances = spec.starting_count(None);
                Some(spec)
            }
            None => None,
        };
        let mut env = BTreeMap::new();
        for (k, v) in raw.env {
            let key: EnvVarName = k
                .get_ref()
                .parse()
                .map_err(|e: InputError| at(k.span(), e.to_string()))?;
            env.insert(key, v);
        }
        let build = match raw.build {
            Some(b) => {
                let span = b.span();
                Some(parse_build(b.into_inner(), span, &at)?)
            }
            None => None,
        };
        let rl = raw.limits.unwrap_or_default();
        let limits = Limits {
            memory: match &rl.memory {
                Some(m) => Some(parse_memory(m.get_ref()).map_err(|e| at(m.span(), e))?),
                None => None,
            },
            cpu_millis: match &rl.cpu {
                Some(c) => Some(parse_cpu(*c.get_ref()).map_err(|e| at(c.span(), e))?),
                None => None,
            },
            pids: match &rl.pids {
                Some(p) => match u32::try_from(*p.get_ref()) {
                    Ok(n) if n >= 1 => Some(n),
                    _ => {
                        return Err(at(
                            p.span(),
                            "pids must be a whole number from 1 to 4294967295".to_string(),
                        ))
                    }
                },
                None => None,
            },
            nofile: match &rl.nofile {
                Some(n) => match u64::try_from(*n.get_ref()) {
                    Ok(n) if (MIN_NOFILE..=MAX_NOFILE).contains(&n) => Some(n),
                    _ => {
                        return Err(at(
                            n.span(),
                            format!(
                                "nofile must be a whole number from {MIN_NOFILE} to {MAX_NOFILE}"
                            ),
                        ))
                    }
                },
                None => None,
            },
        };
        Ok(Manifest {
            name,
            config: RunConfig {
                hostnames,
                command,
                instances,
                port,
                health,
                env,
                deploy,
                limits,
                router,
                scale,
                secrets: BTreeMap::new(),
            },
            build,
        })
    }

    /// A starter manifest for `molt init`.
    pub fn template(name: &AppName) -> String {
        format!(
            r#"# molt.toml: how molt runs this app. Reference: docs/manifest.md
name = "{name}"
hostnames = []                        # the app always answers on {name}.localhost too
command = ["./server", "--port", "$PORT"]   # listen on $HOST:$PORT
instances = 1
# port = 8000                         # a fixed port; by default molt picks a free one

[health]
path = "/"
interval = "1s"
timeout = "2s"
healthy_threshold = 1
unhealthy_threshold = 3
start_deadline = "60s"

[env]

[deploy]
strategy = "blue-green"
drain_timeout = "30s"
watch = "5m"
rollback_window = "15m"
"#
        )
    }
}

impl RunConfig {
    /// Expands `$VAR` and `${VAR}` in the command from `vars`; unknown variables are an error.
    pub fn expand_command(
        &self,
        vars: &BTreeMap<String, String>,
    ) -> Result<Vec<String>, InputError> {
        self.command.iter().map(|arg| expand(arg, vars)).collect()
    }
}

/// Expands `$NAME`, `${NAME}` and `$$` (a literal `$`) in one argument.
pub fn expand(arg: &str, vars: &BTreeMap<String, String>) -> Result<String, InputError> {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, consumed) = if let Some(inner) = after.strip_prefix('{') {
            let end = inner.find('}').ok_or_else(|| {
                InputError::Invalid(format!("unclosed '${{' in command argument '{arg}'"))
            })?;
            (&inner[..end], end + 2)
        } else if let Some(stripped) = after.strip_prefix('$') {
            let _ = stripped;
            out.push('$');
            rest = &after[1..];
            continue;
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        if name.is_empty() {
            out.push('$');
            rest = after;
            continue;
        }
        let value = vars.get(name).ok_or_else(|| {
            InputError::Invalid(format!(
                "command argument '{arg}' uses ${name}, which is not set: add it under [env]"
            ))
        })?;
        out.push_str(value);
        rest = &after[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `[scale]`, each value checked on its own (the relations are [`ScaleSpec::check`]'s).
fn parse_scale(
    raw: &RawScale,
    at: &impl Fn(Range<usize>, String) -> InputError,
    duration: &impl Fn(&Option<Spanned<String>>, Duration) -> Result<Duration, InputError>,
) -> Result<ScaleSpec, InputError> {
    let d = ScaleSpec::default();
    let number = |v: &Option<Spanned<i64>>, lo: u32, hi: u32, what: &str, default: u32| match v {
        Some(n) => match u32::try_from(*n.get_ref()) {
            Ok(x) if (lo..=hi).contains(&x) => Ok(x),
            _ => Err(at(
                n.span(),
                format!("{what} must be a whole number from {lo} to {hi}"),
            )),
        },
        None => Ok(default),
    };
    let min = number(&raw.min, 0, MAX_INSTANCES, "min", d.min)?;
    // Without a max, the count may grow to ten times the minimum (at least 10).
    let max = number(
        &raw.max,
        1,
        MAX_INSTANCES,
        "max",
        min.saturating_mul(10).clamp(d.max, MAX_INSTANCES),
    )?;
    Ok(ScaleSpec {
        min,
        max,
        concurrency: number(
            &raw.concurrency,
            1,
            MAX_CONCURRENCY,
            "concurrency",
            d.concurrency,
        )?,
        window: duration(&raw.window, d.window)?,
        panic_window: duration(&raw.panic_window, d.panic_window)?,
        scale_down_delay: duration(&raw.scale_down_delay, d.scale_down_delay)?,
        idle: duration(&raw.idle, d.idle)?,
    })
}

/// 1-based "line L, column C" of a byte offset.
fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    format!("line {line}, column {col}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> Result<Manifest, InputError> {
        Manifest::parse(text, "molt.toml")
    }

    #[test]
    fn minimal_manifest_gets_defaults() {
        let m = parse("name = \"shop\"\ncommand = [\"./s\"]\n").unwrap();
        assert_eq!(m.name.as_str(), "shop");
        assert_eq!(m.config.instances, 1);
        assert_eq!(m.config.health, HealthCheck::default());
        assert_eq!(m.config.deploy, DeployPolicy::default());
    }

    #[test]
    fn require_signature_takes_a_public_key() {
        let base = "name = \"shop\"\ncommand = [\"./s\"]\n[deploy]\n";
        let key = "AB".repeat(32);
        let m = parse(&format!("{base}require_signature = \"{key}\"\n")).unwrap();
        assert_eq!(m.config.deploy.require_signature, Some("ab".repeat(32)));
        for bad in ["release.pub", "", &"a".repeat(63), &"g".repeat(64)] {
            let err = parse(&format!("{base}require_signature = \"{bad}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("line 4"), "{err}");
            assert!(err.contains("64 hex digits"), "{err}");
        }
    }

    #[test]
    fn full_manifest() {
        let text = r#"
name = "shop"
hostnames = ["Shop.Example.com"]
command = ["./bin/server", "--port", "$PORT"]
instances = 2
[health]
path = "/healthz"
interval = "250ms"
timeout = "2s"
healthy_threshold = 2
unhealthy_threshold = 3
start_deadline = "60s"
[env]
RUST_LOG = "info"
[deploy]
strategy = "blue-green"
drain_timeout = "30s"
watch = "5m"
rollback_window = "15m"
"#;
        let m = parse(text).unwrap();
        assert_eq!(m.config.hostnames[0].as_str(), "shop.example.com");
        assert_eq!(m.config.health.interval, Duration::from_millis(250));
        assert_eq!(m.config.deploy.watch, Duration::from_secs(300));
        assert_eq!(m.config.env.len(), 1);
        assert_eq!(m.config.port, None);
        let m = parse("name = \"a\"\ncommand = [\"x\"]\nport = 8000\n").unwrap();
        assert_eq!(m.config.port, Some(8000));
        assert!(m.config.limits.is_unlimited());
    }

    #[test]
    fn limits_table() {
        let text =
            "name = \"a\"\ncommand = [\"x\"]\n[limits]\nmemory = \"64M\"\ncpu = 0.5\npids = 32\nnofile = 4096\n";
        let limits = parse(text).unwrap().config.limits;
        assert_eq!(limits.memory, Some(64 << 20));
        assert_eq!(limits.cpu_millis, Some(500));
        assert_eq!(limits.pids, Some(32));
        assert_eq!(limits.nofile, Some(4096));
        assert_eq!(limits.open_files(), 4096);
        assert_eq!(
            Limits::default().open_files(),
            crate::limits::DEFAULT_NOFILE
        );
        // Releases stored before `[limits]` existed read back as unlimited.
        let mut json = serde_json::to_value(parse(text).unwrap().config).unwrap();
        json.as_object_mut().unwrap().remove("limits");
        let old: RunConfig = serde_json::from_value(json).unwrap();
        assert!(old.limits.is_unlimited());
    }

    #[test]
    fn scale_replaces_instances() {
        let text = "name = \"a\"\ncommand = [\"x\"]\n[scale]\nmin = 0\nmax = 6\nconcurrency = 4\n\
                    idle = \"90s\"\n";
        let config = parse(text).unwrap().config;
        let scale = config.scale.clone().unwrap();
        assert_eq!((scale.min, scale.max, scale.concurrency), (0, 6, 4));
        assert_eq!(scale.idle, Duration::from_secs(90));
        assert_eq!(scale.window, Duration::from_secs(60));
        // A deployment needs one instance to swap to, even when the minimum is 0.
        assert_eq!(config.instances, 1);
        let twos = parse("name = \"a\"\ncommand = [\"x\"]\n[scale]\nmin = 2\n").unwrap();
        assert_eq!(twos.config.instances, 2);
        assert_eq!(twos.config.scale.unwrap().max, 20);
        // Releases stored before `[scale]` existed read back without it.
        let json = serde_json::to_value(parse("name = \"a\"\ncommand = [\"x\"]\n").unwrap().config)
            .unwrap();
        assert!(json.get("scale").is_none());
        let back: RunConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back.scale, None);
    }

    #[test]
    fn errors_name_line_and_column() {
        let cases = [
            (
                "name = \"shop\"\ncommand = [\"x\"]\nbogus = 1\n",
                "line 3",
                "bogus",
            ),
            (
                "name = \"Shop\"\ncommand = [\"x\"]\n",
                "line 1, column 8",
                "app name",
            ),
            (
                "name = \"a\"\ncommand = []\n",
                "line 2",
                "command must name",
            ),
            (
                "name = \"a\"\ncommand = [\"x\"]\n[health]\ninterval = \"5x\"\n",
                "line 4",
                "5x",
            ),
            (
                "name = \"a\"\ncommand = [\"x\"]\nport = 70000\n",
                "line 3",
                "port must be",
            ),
            (
                "name = \"a\"\ncommand = [\"x\"]\nport = 0\n",
                "line 3",
                "port must be",
            ),
            (
                "name = \"a\"\ncommand = [\"x\"]\ninstances = 0\n",
                "line 3",
                "instances",
            ),
            (
                "name = \"a\"\ncommand = [\"x\"]\ninstances = 2\n[scale]\nmax = 4\n",
                "line 3",
                "cannot be set together with [scale]",
            ),
            (
                "name = \"a\"\ncommand = [\"x\"]\n[scale]\nmin = 5\nmax = 2\n",
                "line 3",
                "min (5) is more than max (2)",
            ),
            (
                "name = \"a\"\ncommand = [\"x\"]\n[scale]\nconcurrency = -1\n",
                "line 4, column 15",
                "concurrency must be a whole number from 1",
            ),
            (
                "name = \"a\"\ncommand = [\"x\"]\n[scale]\nmax = 1001\n",
                "line 4",
                "max must be a whole number from 1 to 1000",
            ),
            (
                "name = \"a\"\ncommand = [\"x\"]\n[scale]\nwindow = \"5s\"\n",
                "line 3",
                "panic_window must not be longer than window",
            ),
            (
                "name = \"a\"\ncommand = [\"x\"]\n[env]\n9X = \"1\"\n",
                "line 4",
                "variable",
            ),
            (
                "name = \"a\"\ncommand = [\"x\"]\n[health]\npath = \"x\"\n",
                "line 4",
                "path",
            ),
            (
                "name = \"a\"\ncommand = [\"x\"]\n[limits]\nmemory = \"12X\"\n",
                "line 4, column 10",
                "unknown unit",
            ),
            (
                "name = \"a\"\ncommand = [\"x\"]\n[limits]\ncpu = 0\n",
                "line 4",
                "positive",
            ),
            (
                "name = \"a\"\ncommand = [\"x\"]\n[limits]\npids = 0\n",
                "line 4",
                "pids",
            ),
            (
                "name = \"a\"\ncommand = [\"x\"]\n[limits]\nnofile = 8\n",
                "line 4",
                "nofile must be",
            ),
            (
                "name = \"a\"\ncommand = [\"x\"]\n[limits]\nnofile = 99999999\n",
                "line 4",
                "nofile must be",
            ),
            (
                "name = \"a\"\ncommand = [\"x\"]\n[limits]\nswap = \"1G\"\n",
                "line 4",
                "swap",
            ),
            ("name = \"a\"\ncommand = [\"x\"\n", "line", "TOML"),
            ("command = [\"x\"]\n", "missing field", "name"),
        ];
        for (text, want_at, want_what) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(want_at), "{err:?} lacks {want_at:?}");
            assert!(err.contains(want_what), "{err:?} lacks {want_what:?}");
            assert!(err.starts_with("molt.toml: "), "{err}");
        }
    }

    #[test]
    fn router_limits_parse_and_stay_out_of_configs_without_them() {
        let base = "name = \"a\"\ncommand = [\"x\"]\n";
        let m = parse(&format!(
            "{base}[router]\nmax_body = \"10MiB\"\nrequest_timeout = \"30s\"\n"
        ))
        .unwrap();
        assert_eq!(
            m.config.router,
            RouterLimits {
                max_body_bytes: Some(10 << 20),
                request_timeout_ms: Some(30_000),
            }
        );
        let stored = toml::to_string(&m.config).unwrap();
        assert_eq!(toml::from_str::<RunConfig>(&stored).unwrap(), m.config);
        // Without [router] the stored config is what it was before [router] existed.
        let plain = parse(base).unwrap().config;
        assert!(!toml::to_string(&plain).unwrap().contains("router"));
        for (text, what) in [
            ("[router]\nmax_body = \"10 furlongs\"\n", "not a size"),
            ("[router]\nrequest_timeout = \"0s\"\n", "more than 0"),
            ("[router]\nrequest_timeout = \"soon\"\n", "soon"),
            ("[router]\nmax_bodies = \"1MiB\"\n", "max_bodies"),
        ] {
            let err = parse(&format!("{base}{text}")).unwrap_err().to_string();
            assert!(err.contains("line 4"), "{err}");
            assert!(err.contains(what), "{err:?} lacks {what:?}");
        }
    }

    #[test]
    fn expands_variables() {
        let vars: BTreeMap<String, String> = [("PORT".to_string(), "8001".to_string())]
            .into_iter()
            .collect();
        assert_eq!(expand("--port=$PORT", &vars).unwrap(), "--port=8001");
        assert_eq!(expand("${PORT}x", &vars).unwrap(), "8001x");
        assert_eq!(expand("$$PORT", &vars).unwrap(), "$PORT");
        assert_eq!(expand("a$", &vars).unwrap(), "a$");
        assert!(expand("$NOPE", &vars).is_err());
        assert!(expand("${PORT", &vars).is_err());
    }

    #[test]
    fn template_parses() {
        let name: AppName = "demo".parse().unwrap();
        assert_eq!(parse(&Manifest::template(&name)).unwrap().name, name);
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,200}") {
            let _ = parse(&s);
        }

        #[test]
        fn expand_never_panics(s in "[a-z${}_A-Z]{0,30}") {
            let vars: BTreeMap<String, String> =
                [("A".to_string(), "1".to_string())].into_iter().collect();
            let _ = expand(&s, &vars);
        }
    }
}
