//! `bench canary`: what a bad release costs, through a release `molt serve` (plain processes)
//! and this executable's `backend`, under keep-alive GET load:
//!
//! Every request carries another user's sticky bucket (the `molt-bucket` cookie): the load
//! comes from one address, which the router would otherwise see as one user.
//!
//! - **a bad canary**: a stable release, then canaries of a release answering 30 % of its
//!   requests with 500 (`FAIL_SHARE`) at 5 % weight, judged every second (`success_rate =
//!   0.99`, `failure_limit = 2`): the time from the end of the first failed interval to the
//!   journaled abort (weight 0), and from the abort to the last answer a client got from the
//!   canary (the route change in force); the
//!   share of client requests that failed from the canary deploy to the abort, next to the
//!   bound weight × error rate (1.5 %);
//! - **SIGKILL under load**: instances of a 3-instance environment killed with SIGKILL one after
//!   another: the client requests that failed (nginx's `proxy_next_upstream error timeout`
//!   retries what a dead upstream never answered; molt's router retries a bodiless read whose
//!   connection broke before the response head).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use molt_cli::Client;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::bench_core::{backend_manifest, build_molt, import_image, write_backend_app};
use crate::load::Connection;
use crate::serve::Serve;
use crate::Output;

/// Keep-alive clients of the load.
const CLIENTS: usize = 16;
/// Bad canaries deployed, one after another, on the same stable release.
const CANARIES: usize = 3;
/// The canary's weight and the share of its answers that are 500s (percent).
const WEIGHT: u32 = 5;
const FAIL_SHARE: u32 = 30;
/// Instances killed, one after another, and the time between two kills.
const KILLS: usize = 6;
const KILL_EVERY: Duration = Duration::from_millis(1500);
/// Longest wait for any one deployment.
const LIMIT: Duration = Duration::from_secs(60);

/// One request as a client saw it.
#[derive(Clone, Copy)]
struct Seen {
    /// When the answer (or the error) came, ms since the epoch.
    at_ms: u64,
    /// Status (0: no answer).
    status: u16,
    /// The answer named the release under test (the canary).
    from_canary: bool,
}

/// One bad canary, measured.
struct CanaryRun {
    /// First failed interval's end → the journaled abort (ms).
    to_abort_ms: f64,
    /// First failed interval's end → the last answer from the canary a client got (ms).
    to_last_answer_ms: f64,
    /// Client requests from the canary deploy to the abort, and the failed ones.
    requests: u64,
    failed: u64,
    /// Intervals judged before the abort.
    intervals: usize,
}

/// The SIGKILL cell.
struct KillRun {
    kills: usize,
    requests: u64,
    failed: u64,
}

/// Measures, prints the figures.
pub async fn run(output: Output) -> Result<()> {
    let binary = build_molt()?;
    let (canaries, killed) = tokio::select! {
        figures = measure(&binary) => figures?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    };
    match output {
        Output::Table => print_table(&canaries, &killed),
        Output::Json => println!("{:#}", to_json(&canaries, &killed)),
    }
    Ok(())
}

async fn measure(binary: &Path) -> Result<(Vec<CanaryRun>, KillRun)> {
    progress("starting molt serve (plain processes)");
    let serve = Serve::start(binary).await?;
    let dir = write_backend_app(serve.scratch_dir(), "canary-app", &backend_manifest("shop"))?;
    let digest = import_image(&serve.client, &dir).await?;
    let mut canaries = Vec::new();
    deploy(
        &serve.client,
        "shop",
        &digest,
        &manifest("shop", 2, 0, true),
    )
    .await?;
    let load = Load::start(serve.router, "shop.localhost");
    for round in 1..=CANARIES {
        progress(&format!(
            "bad canary {round}/{CANARIES}: {FAIL_SHARE} % 500s at {WEIGHT} %"
        ));
        canaries.push(bad_canary(&serve.client, &digest, &load).await?);
    }
    load.stop().await;

    progress(&format!(
        "SIGKILL {KILLS} instances of 3, one every {KILL_EVERY:?}, under load"
    ));
    deploy(
        &serve.client,
        "kill",
        &digest,
        &manifest("kill", 3, 0, false),
    )
    .await?;
    let load = Load::start(serve.router, "kill.localhost");
    let from = now_ms();
    for _ in 0..KILLS {
        tokio::time::sleep(KILL_EVERY).await;
        let pid = healthy_pid(&serve.client, "kill").await?;
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).context("SIGKILL an instance")?;
    }
    tokio::time::sleep(KILL_EVERY).await;
    let seen = load.stop().await;
    let during: Vec<&Seen> = seen.iter().filter(|s| s.at_ms >= from).collect();
    let killed = KillRun {
        kills: KILLS,
        requests: during.len() as u64,
        failed: during.iter().filter(|s| s.status != 200).count() as u64,
    };
    serve.stop().await?;
    Ok((canaries, killed))
}

/// Deploys a bad canary under the running load and waits for its abort.
async fn bad_canary(client: &Client, digest: &str, load: &Load) -> Result<CanaryRun> {
    let started_ms = now_ms();
    let id = start_deploy(
        client,
        "shop",
        digest,
        &manifest("shop", 2, FAIL_SHARE, true),
    )
    .await?;
    let d = wait_for(client, id, &["aborted"]).await?;
    let record = &d["deployment"];
    let verdicts = record["canary"]["verdicts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let first_failed = verdicts
        .iter()
        .find(|v| v["verdict"].as_str() == Some("failed"))
        .and_then(|v| v["at_ms"].as_u64())
        .ok_or_else(|| anyhow!("the aborted canary has no failed interval: {d}"))?;
    let aborted = d["journal"]
        .as_array()
        .and_then(|j| j.iter().find(|e| e["state"] == "aborted"))
        .and_then(|e| e["at_ms"].as_u64())
        .ok_or_else(|| anyhow!("no abort in the journal: {d}"))?;
    // Answers already on their way when the route changed reach the clients just after.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = load.snapshot();
    let last_canary = seen
        .iter()
        .filter(|s| s.from_canary)
        .map(|s| s.at_ms)
        .max()
        .unwrap_or(first_failed);
    let during: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.at_ms >= started_ms && s.at_ms <= aborted)
        .collect();
    Ok(CanaryRun {
        to_abort_ms: aborted.saturating_sub(first_failed) as f64,
        to_last_answer_ms: last_canary.saturating_sub(first_failed) as f64,
        requests: during.len() as u64,
        failed: during.iter().filter(|s| s.status != 200).count() as u64,
        intervals: verdicts.len(),
    })
}

/// The backend's manifest: `instances`, `fail_share` % of 500s, and the canary strategy.
fn manifest(app: &str, instances: usize, fail_share: u32, canary: bool) -> String {
    let strategy = if canary {
        format!(
            "strategy = \"canary\"\nsteps = [{{ weight = {WEIGHT}, pause = \"1m\" }}]\n\
             [deploy.analysis]\ninterval = \"1s\"\nsuccess_rate = 0.99\nmin_requests = 20\n\
             failure_limit = 2\nprogress_deadline = \"5m\"\n"
        )
    } else {
        String::new()
    };
    format!(
        "name = \"{app}\"\ncommand = [\"./backend\", \"backend\"]\ninstances = {instances}\n\
         [env]\nFAIL_SHARE = \"{fail_share}\"\n\
         [health]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"2s\"\n\
         healthy_threshold = 1\nstart_deadline = \"30s\"\n\
         [deploy]\ndrain_timeout = \"5s\"\nwatch = \"1s\"\nrollback_window = \"15m\"\n{strategy}"
    )
}

/// Keep-alive clients sending GETs until stopped, every answer recorded.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(router: std::net::SocketAddr, host: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let clients = (0..CLIENTS)
            .map(|client| {
                let (stop, seen) = (stop.clone(), seen.clone());
                tokio::spawn(async move {
                    // Bounded: the benchmark stops the load long before.
                    let deadline = Instant::now() + 20 * LIMIT;
                    let mut conn = None;
                    // Every request is another user: a bucket of the router's 10 000, spread
                    // evenly (all the load comes from one address, which would be one user).
                    let mut bucket = client as u32 * 7919;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        if conn.is_none() {
                            conn = Connection::open(router).await.ok();
                        }
                        let answer = match conn.as_mut() {
                            Some(c) => {
                                bucket = (bucket + 104_729) % 10_000;
                                c.get_as_user(host, "/", bucket).await.ok()
                            }
                            None => None,
                        };
                        let (status, from_canary) = match &answer {
                            Some((status, body)) => {
                                (*status, String::from_utf8_lossy(body).contains(" v1\n"))
                            }
                            None => {
                                conn = None;
                                (0, false)
                            }
                        };
                        let at_ms = now_ms();
                        let entry = Seen {
                            at_ms,
                            status,
                            // v1 is the stable release; every later one is a canary.
                            from_canary: status != 0 && !from_canary,
                        };
                        seen.lock().expect("the load's record").push(entry);
                    }
                })
            })
            .collect();
        Load {
            stop,
            seen,
            clients,
        }
    }

    fn snapshot(&self) -> Vec<Seen> {
        self.seen.lock().expect("the load's record").clone()
    }

    async fn stop(mut self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        for client in std::mem::take(&mut self.clients) {
            let _ = client.await;
        }
        self.snapshot()
    }
}

async fn start_deploy(client: &Client, app: &str, digest: &str, manifest: &str) -> Result<u64> {
    let started = client
        .post(
            &format!("/v1/apps/{app}/deployments"),
            &json!({ "image": digest, "manifest": manifest }),
        )
        .await
        .with_context(|| format!("deploying {app}"))?;
    started["id"]
        .as_u64()
        .ok_or_else(|| anyhow!("no deployment id: {started}"))
}

/// Deploys and waits until the deployment has succeeded.
async fn deploy(client: &Client, app: &str, digest: &str, manifest: &str) -> Result<()> {
    let id = start_deploy(client, app, digest, manifest).await?;
    wait_for(client, id, &["succeeded"]).await.map(|_| ())
}

/// Polls deployment `id` until it is in one of `states`; fails on any other end.
async fn wait_for(client: &Client, id: u64, states: &[&str]) -> Result<Value> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let d = client.get(&format!("/v1/deployments/{id}")).await?;
        let state = d["deployment"]["state"].as_str().unwrap_or("");
        if states.contains(&state) {
            return Ok(d);
        }
        match state {
            "succeeded" | "failed" | "rolled_back" | "superseded" | "aborted" => {
                bail!("deployment {id} ended {state}, not {states:?}: {d}")
            }
            _ if Instant::now() > deadline => bail!("deployment {id} took too long: {d}"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The pid of a healthy instance of the app's live environment.
async fn healthy_pid(client: &Client, app: &str) -> Result<u32> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let status = client.get(&format!("/v1/status?app={app}")).await?;
        let pid = status["apps"][0]["envs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["routed"] == json!(true))
            .flat_map(|e| e["instances"].as_array().cloned().unwrap_or_default())
            .filter(|i| i["state"] == "healthy")
            .find_map(|i| i["pid"].as_u64());
        if let Some(pid) = pid {
            return Ok(pid as u32);
        }
        if Instant::now() > deadline {
            bail!("{app} has no healthy instance to kill: {status}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn percent(part: u64, whole: u64) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}

fn print_table(canaries: &[CanaryRun], killed: &KillRun) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!("molt bench canary: {CLIENTS} keep-alive GET clients, {cpus} CPUs shared with molt and the app");
    println!();
    println!(
        "bad canary ({FAIL_SHARE} % 500s at {WEIGHT} %, 1 s intervals, failure_limit 2)\n\
         {:<8}{:>22}{:>27}{:>12}{:>14}{:>11}",
        "run",
        "failed interval→abort",
        "abort→last canary answer",
        "requests",
        "failed",
        "intervals"
    );
    for (i, c) in canaries.iter().enumerate() {
        println!(
            "{:<8}{:>19.0} ms{:>24.0} ms{:>12}{:>8} {:>4.2} %{:>11}",
            i + 1,
            c.to_abort_ms,
            c.to_last_answer_ms - c.to_abort_ms,
            c.requests,
            c.failed,
            percent(c.failed, c.requests),
            c.intervals
        );
    }
    println!(
        "bound: weight × error rate = {:.2} % of requests",
        f64::from(WEIGHT * FAIL_SHARE) / 100.0
    );
    println!();
    println!(
        "SIGKILL {} instances of 3 under load: {} of {} requests failed ({:.4} %)",
        killed.kills,
        killed.failed,
        killed.requests,
        percent(killed.failed, killed.requests),
    );
}

fn to_json(canaries: &[CanaryRun], killed: &KillRun) -> Value {
    json!({
        "bad_canary": {
            "weight_percent": WEIGHT,
            "fail_share_percent": FAIL_SHARE,
            "bound_percent": f64::from(WEIGHT * FAIL_SHARE) / 100.0,
            "runs": canaries.iter().map(|c| json!({
                "failed_interval_to_abort_ms": c.to_abort_ms,
                "failed_interval_to_last_canary_answer_ms": c.to_last_answer_ms,
                "requests": c.requests,
                "failed": c.failed,
                "failed_percent": percent(c.failed, c.requests),
                "intervals": c.intervals,
            })).collect::<Vec<_>>(),
        },
        "sigkill": {
            "kills": killed.kills,
            "requests": killed.requests,
            "failed": killed.failed,
        },
    })
}

/// Progress goes to stderr so that `--json` leaves stdout to the document.
fn progress(message: &str) {
    eprintln!("bench canary: {message}");
}
