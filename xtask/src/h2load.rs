//! Load over HTTP/2 from `h2load` (Debian's nghttp2-client): h2 over TLS (ALPN), h2c with
//! prior knowledge and HTTP/1.1 over TLS (`--h1`), closed loop with one stream in flight per connection like the xtask load
//! generator, so its figures sit next to the HTTP/1.1 cells. Latency percentiles come from
//! h2load's per-request log.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::load::LoadResult;
use crate::peers::{apt_install, find_command};

/// How long a probe keeps trying a listener that is still starting.
const START_LIMIT: Duration = Duration::from_secs(10);

/// What h2load speaks: HTTP/2 with or without TLS, or HTTP/1.1 over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H2 {
    /// h2 over TLS, negotiated by ALPN (the certificate is self-signed; h2load does not
    /// verify it).
    Tls,
    /// HTTP/1.1 over TLS (`h2load --h1`, ALPN `http/1.1`), on the same listener as `Tls`.
    Http1Tls,
    /// h2c with prior knowledge.
    Cleartext,
}

/// One h2load run.
pub struct H2Spec<'a> {
    pub h2load: &'a Path,
    pub protocol: H2,
    /// Where to connect; the URI names `host` (the TLS SNI name and `:authority`).
    pub connect: SocketAddr,
    pub host: &'a str,
    pub path: &'a str,
    pub concurrency: usize,
    pub duration: Duration,
    /// Where h2load writes its per-request log.
    pub log: &'a Path,
}

impl H2 {
    pub fn label(self) -> &'static str {
        match self {
            H2::Tls => "h2/TLS",
            H2::Http1Tls => "h1/TLS",
            H2::Cleartext => "h2c",
        }
    }

    fn scheme(self) -> &'static str {
        match self {
            H2::Tls | H2::Http1Tls => "https",
            H2::Cleartext => "http",
        }
    }

    /// h2load's arguments that choose the protocol.
    fn args(self) -> &'static [&'static str] {
        match self {
            H2::Http1Tls => &["--h1"],
            H2::Tls | H2::Cleartext => &[],
        }
    }
}

/// The h2load executable, installed from Debian (nghttp2-client) when missing and we are
/// root; `Err` says why it is not there.
pub async fn ensure_installed() -> Result<PathBuf, String> {
    if let Some(path) = find_command("h2load") {
        return Ok(path);
    }
    if !nix::unistd::geteuid().is_root() {
        return Err("h2load not installed (apt-get install nghttp2-client as root)".into());
    }
    eprintln!("bench router: installing h2load (apt-get install -y nghttp2-client)");
    match apt_install("nghttp2-client").await {
        Ok(()) => find_command("h2load")
            .ok_or_else(|| "h2load not installable (nghttp2-client has no h2load)".into()),
        Err(e) => Err(format!("h2load not installable: {e:#}")),
    }
}

/// Runs `spec` and reads h2load's summary and log. Requests answered anything but 2xx, and
/// failed or timed-out ones, are errors.
pub async fn run(spec: &H2Spec<'_>) -> Result<LoadResult> {
    let seconds = spec.duration.as_secs().max(1);
    // h2load appends to its log: start each run from an empty one.
    match std::fs::remove_file(spec.log) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", spec.log.display())),
    }
    let output = tokio::process::Command::new(spec.h2load)
        .args(spec.protocol.args())
        .args(["-c", &spec.concurrency.to_string(), "-m", "1", "-t", "1"])
        .args(["-D", &seconds.to_string(), "--warm-up-time", "0"])
        .arg("--log-file")
        .arg(spec.log)
        .args(["--connect-to", &spec.connect.to_string()])
        .arg(uri(spec))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(spec.duration * 3 + Duration::from_secs(10), output)
        .await
        .context("h2load did not finish")?
        .context("running h2load")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "h2load failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let summary = parse_summary(&stdout)?;
    let log = std::fs::read_to_string(spec.log)
        .with_context(|| format!("reading {}", spec.log.display()))?;
    let mut latencies = latencies_us(&log);
    latencies.sort_unstable();
    let at = |p: f64| {
        if latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        Duration::from_micros(latencies[rank - 1])
    };
    Ok(LoadResult {
        ok: summary.succeeded,
        errors: summary.failed,
        elapsed: Duration::from_secs_f64(summary.succeeded as f64 / summary.per_second.max(1e-9)),
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
    })
}

/// Waits until one request over `protocol` to `connect` succeeds.
pub async fn wait_until_answers(
    h2load: &Path,
    protocol: H2,
    connect: SocketAddr,
    host: &str,
) -> Result<()> {
    let deadline = Instant::now() + START_LIMIT;
    loop {
        let probe = tokio::process::Command::new(h2load)
            .args(protocol.args())
            .args(["-n", "1", "-c", "1", "--connect-to", &connect.to_string()])
            .arg(format!("{}://{host}/", protocol.scheme()))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .context("running h2load")?;
        let stdout = String::from_utf8_lossy(&probe.stdout);
        if parse_summary(&stdout).is_ok_and(|s| s.succeeded == 1) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{connect} did not answer {} within {START_LIMIT:?}",
                protocol.label()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn uri(spec: &H2Spec<'_>) -> String {
    format!("{}://{}{}", spec.protocol.scheme(), spec.host, spec.path)
}

#[derive(Debug, PartialEq)]
struct Summary {
    per_second: f64,
    succeeded: u64,
    /// Failed, errored and timed out.
    failed: u64,
}

/// Reads `finished in 1.00s, 12345.67 req/s, ...` and `requests: N total, N started, N done,
/// S succeeded, F failed, E errored, T timeout`.
fn parse_summary(stdout: &str) -> Result<Summary> {
    let finished = stdout
        .lines()
        .find(|line| line.starts_with("finished in"))
        .ok_or_else(|| anyhow!("h2load printed no summary: {stdout:?}"))?;
    let per_second = finished
        .split(", ")
        .find_map(|part| part.strip_suffix(" req/s"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| anyhow!("no req/s in {finished:?}"))?;
    let requests = stdout
        .lines()
        .find(|line| line.starts_with("requests:"))
        .ok_or_else(|| anyhow!("h2load printed no request counts: {stdout:?}"))?;
    let count = |word: &str| -> u64 {
        requests
            .split(", ")
            .find_map(|part| part.trim_start_matches("requests: ").strip_suffix(word))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    Ok(Summary {
        per_second,
        succeeded: count(" succeeded"),
        failed: count(" failed") + count(" errored") + count(" timeout"),
    })
}

/// Durations (µs) of the 2xx requests in h2load's log: `start_us \t status \t duration_us`.
fn latencies_us(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let _start = fields.next()?;
            let status: u16 = fields.next()?.trim().parse().ok()?;
            let duration: u64 = fields.next()?.trim().parse().ok()?;
            (200..300).contains(&status).then_some(duration)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_h2loads_summary_and_log() {
        let stdout = "starting benchmark...\n\
            finished in 1.00s, 12345.67 req/s, 1.23MB/s\n\
            requests: 12400 total, 12400 started, 12350 done, 12340 succeeded, 7 failed, 3 errored, 1 timeout\n";
        assert_eq!(
            parse_summary(stdout).expect("parses"),
            Summary {
                per_second: 12345.67,
                succeeded: 12340,
                failed: 11
            }
        );
        assert!(parse_summary("nothing").is_err());
        let log =
            "1700000000000000\t200\t150\n1700000000000100\t502\t90\n1700000000000200\t200\t210\n";
        assert_eq!(latencies_us(log), [150, 210]);
    }
}
