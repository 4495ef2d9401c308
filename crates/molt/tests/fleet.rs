//! A fleet of routers as separate processes (`molt router`, the real binary) following a real
//! `molt serve` over its API on 127.0.0.1: every swap is in force on all three routers when
//! the API answers, and a client spread over them sees no failed request across 20 swaps; a
//! router killed under load restarts from the table it saved; a router that stops
//! acknowledging (SIGSTOP) is fenced and comes back once it catches up; `molt serve`
//! SIGKILLed in the middle of a deployment fails no request through the routers, and the
//! deployment resumes when it comes back.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use molt_cli::Client;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use support::*;

/// A `molt router` child process.
struct RouterProcess {
    child: Child,
    name: String,
    addr: SocketAddr,
    log: PathBuf,
}

impl RouterProcess {
    /// Starts `molt router` named `name` following the control plane at `api`, keeping its
    /// table in `state`; returns once it serves.
    fn start(name: &str, api: SocketAddr, data: &Path, state: &Path) -> RouterProcess {
        Self::start_on(name, api, data, state, "127.0.0.1:0".parse().expect("addr"))
    }

    fn start_on(
        name: &str,
        api: SocketAddr,
        data: &Path,
        state: &Path,
        listen: SocketAddr,
    ) -> RouterProcess {
        std::fs::create_dir_all(state).expect("state dir");
        let log = state.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("router log");
        let child = Command::new(env!("CARGO_BIN_EXE_molt"))
            .args(["router", "--control", &format!("http://{api}")])
            .arg("--token-file")
            .arg(data.join("router.token"))
            .args(["--name", name, "--threads", "1"])
            .args(["--listen", &listen.to_string()])
            .arg("--state-dir")
            .arg(state.join(name))
            .env("MOLT_LOG", "info")
            .env_remove("MOLT_ROUTER_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("molt router starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(addr) = text
                .lines()
                .find_map(|l| l.split("serving http://").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|a| a.parse().ok())
            {
                break addr;
            }
            assert!(
                Instant::now() < deadline,
                "molt router {name} did not start:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        RouterProcess {
            child,
            name: name.to_owned(),
            addr,
            log,
        }
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("signal router");
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGCONT);
        self.kill();
    }
}

/// The routers `molt cluster status` lists, by name: (connected, fenced, lag).
async fn routers(client: &Client) -> Vec<(String, bool, bool, u64)> {
    let v = client.get("/v1/cluster").await.expect("cluster status");
    v["routers"]["routers"]
        .as_array()
        .expect("routers")
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or("").to_owned(),
                r["connected"].as_bool().unwrap_or(false),
                r["fenced"].as_bool().unwrap_or(false),
                r["lag"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect()
}

/// Waits until every router in `names` is connected, not fenced and up to date.
async fn fleet_in_step(client: &Client, names: &[&str]) {
    eventually(Duration::from_secs(20), "every router in step", || async {
        let listed = routers(client).await;
        names.iter().all(|name| {
            listed
                .iter()
                .any(|(n, connected, fenced, lag)| n == name && *connected && !*fenced && *lag == 0)
        })
    })
    .await;
}

/// Keep-alive clients, one per router, counting answers (bounded in count and time).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(host: &'static str, routers: &[SocketAddr]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = routers
            .iter()
            .map(|&router| {
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                tokio::spawn(async move {
                    let mut conn = KeepAlive::connect(router).await;
                    let deadline = Instant::now() + Duration::from_secs(120);
                    let mut n = 0u64;
                    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline && n < 100_000 {
                        n += 1;
                        match conn.get(host, "/").await {
                            Ok((200, _)) => {
                                ok.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok((status, body)) => failures
                                .lock()
                                .unwrap()
                                .push(format!("{router}: {status} {body}")),
                            Err(e) => failures.lock().unwrap().push(format!("{router}: {e}")),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    /// Stops the clients; (answered 200, failures).
    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.expect("client");
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::SeqCst), failures)
    }
}

/// GET `/` for `host` through `router` on a fresh connection: the body.
async fn get_via(router: SocketAddr, host: &str) -> String {
    let mut conn = KeepAlive::connect(router).await;
    let (status, body) = conn.get(host, "/").await.expect("request through a router");
    assert_eq!(status, 200, "{body}");
    body
}

fn api_of(serve: &Serve) -> SocketAddr {
    serve
        .client
        .base()
        .trim_start_matches("http://")
        .parse()
        .expect("API address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_routers_follow_every_swap_and_fail_no_request() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let serve = Serve::start(&data, None, true);
    let api = api_of(&serve);
    let app = make_app(tmp.path(), "fleet", &[], FAST);
    let d1 = deploy_dir(&serve.client, &app).await;
    assert_eq!(d1["state"], "drained", "{d1}");

    let state = tmp.path().join("routers");
    let mut routers_up: Vec<RouterProcess> = ["r1", "r2", "r3"]
        .iter()
        .map(|name| RouterProcess::start(name, api, &data, &state))
        .collect();
    fleet_in_step(&serve.client, &["r1", "r2", "r3"]).await;
    for router in &routers_up {
        assert!(get_via(router.addr, "fleet.localhost")
            .await
            .contains("fleet v1 "));
    }

    // v2, deployed while a client per router runs: both environments are then warm.
    let addrs: Vec<SocketAddr> = routers_up.iter().map(|r| r.addr).collect();
    let load = Load::start("fleet.localhost", &addrs);
    let d2 = serve
        .client
        .post(
            "/v1/apps/fleet/config",
            &json!({ "set": { "GREETING": "v2" } }),
        )
        .await
        .expect("config set");
    let d2 = wait_deployment(&serve.client, d2["id"].as_u64().expect("id")).await;
    assert_eq!(d2["state"], "drained", "{d2}");
    let envs = [
        d1["env"].as_str().expect("env").to_owned(),
        d2["env"].as_str().expect("env").to_owned(),
    ];
    // The journal records that the swap was in force on the whole fleet.
    let record = serve
        .client
        .get(&format!("/v1/deployments/{}", d2["id"]))
        .await
        .expect("deployment");
    let journal = record["journal"].to_string();
    assert!(
        journal.contains("the swap was in force on 3 routers of the fleet"),
        "{journal}"
    );
    // 20 swaps: when the API answers, the change is in force on every router.
    for swap in 0..20 {
        let (env, release) = if swap % 2 == 0 {
            (&envs[0], "v1")
        } else {
            (&envs[1], "v2")
        };
        serve
            .client
            .post("/v1/apps/fleet/swap", &json!({ "env": env }))
            .await
            .expect("swap");
        for router in &routers_up {
            let body = get_via(router.addr, "fleet.localhost").await;
            assert!(
                body.contains(&format!("fleet {release} ")),
                "swap {swap} via {}: {body}",
                router.name
            );
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let history = serve
        .client
        .get("/v1/apps/fleet/events")
        .await
        .expect("history")
        .to_string();
    assert!(
        history.contains("in force on 3 routers of the fleet"),
        "{history}"
    );
    let (ok, failures) = load.finish().await;
    eprintln!("{ok} requests answered 200 across 20 swaps over 3 routers");
    assert!(ok > 0);
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    fleet_in_step(&serve.client, &["r1", "r2", "r3"]).await;

    // r2 is killed while the others serve; restarted alone, it serves its saved table.
    let live = [routers_up[0].addr, routers_up[2].addr];
    let load = Load::start("fleet.localhost", &live);
    let r2_addr = routers_up[1].addr;
    routers_up[1].kill();
    let restarted = RouterProcess::start_on("r2", api, &data, &state, r2_addr);
    assert!(get_via(restarted.addr, "fleet.localhost")
        .await
        .contains("fleet v2 "));
    routers_up[1] = restarted;
    fleet_in_step(&serve.client, &["r1", "r2", "r3"]).await;
    let (ok, failures) = load.finish().await;
    assert!(ok > 0);
    assert!(failures.is_empty(), "{failures:?}");

    // r3 stops acknowledging: the next swap fences it instead of waiting on it.
    routers_up[2].signal(Signal::SIGSTOP);
    let started = Instant::now();
    serve
        .client
        .post("/v1/apps/fleet/swap", &json!({ "env": &envs[0] }))
        .await
        .expect("swap with a stuck router");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "a stuck router held the swap for {:?}",
        started.elapsed()
    );
    let listed = routers(&serve.client).await;
    assert!(
        listed.iter().any(|(n, _, fenced, _)| n == "r3" && *fenced),
        "{listed:?}"
    );
    for router in &routers_up[..2] {
        assert!(get_via(router.addr, "fleet.localhost")
            .await
            .contains("fleet v1 "));
    }
    // It catches up once it runs again, and is back in the fleet.
    routers_up[2].signal(Signal::SIGCONT);
    fleet_in_step(&serve.client, &["r1", "r2", "r3"]).await;
    assert!(get_via(routers_up[2].addr, "fleet.localhost")
        .await
        .contains("fleet v1 "));
    assert!(
        routers_up[2].log().contains("caught up"),
        "{}",
        routers_up[2].log()
    );
    drop(routers_up);
    drop(serve);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_routers_outlive_the_control_plane_and_the_deployment_resumes() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let mut serve = Serve::start(&data, None, false);
    let api = api_of(&serve);
    let app = make_app(tmp.path(), "outlive", &[], FAST);
    let d1 = deploy_dir(&serve.client, &app).await;
    assert_eq!(d1["state"], "drained", "{d1}");
    let state = tmp.path().join("routers");
    let routers_up: Vec<RouterProcess> = ["a", "b"]
        .iter()
        .map(|name| RouterProcess::start(name, api, &data, &state))
        .collect();
    fleet_in_step(&serve.client, &["a", "b"]).await;
    let addrs: Vec<SocketAddr> = routers_up.iter().map(|r| r.addr).collect();
    let load = Load::start("outlive.localhost", &addrs);

    // v2's deployment is held just before the swap; then molt serve is SIGKILLed.
    assert_eq!(serve.signal(Signal::SIGTERM).code(), Some(0));
    let mut held = Serve::start_at(&data, Some("healthy"), false, Some(api));
    let d2 = held
        .client
        .post(
            "/v1/apps/outlive/config",
            &json!({ "set": { "GREETING": "v2" } }),
        )
        .await
        .expect("config set");
    let id = d2["id"].as_u64().expect("id");
    let line = format!("deployment {id} held at healthy (test hook)");
    eventually(Duration::from_secs(30), &line, || async {
        let events: Value = held
            .client
            .get("/v1/apps/outlive/events")
            .await
            .expect("events");
        events.as_array().is_some_and(|events| {
            events
                .iter()
                .any(|e| e["kind"] == "paused" && e["message"] == line.as_str())
        })
    })
    .await;
    held.signal(Signal::SIGKILL);
    // The routers keep serving v1 while nothing controls them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for router in &routers_up {
        assert!(get_via(router.addr, "outlive.localhost")
            .await
            .contains("outlive v1 "));
    }

    // Back on the same address: the deployment resumes, swaps, and the routers follow.
    let serve = Serve::start_at(&data, None, false, Some(api));
    let d2 = wait_deployment(&serve.client, id).await;
    assert_eq!(d2["state"], "drained", "{d2}");
    fleet_in_step(&serve.client, &["a", "b"]).await;
    for router in &routers_up {
        assert!(get_via(router.addr, "outlive.localhost")
            .await
            .contains("outlive v2 "));
    }
    let (ok, failures) = load.finish().await;
    eprintln!("{ok} requests answered 200 through the routers while molt serve was away");
    assert!(ok > 0);
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let owner = owner_of(&data);
    drop(routers_up);
    let mut serve = serve;
    assert_eq!(serve.signal(Signal::SIGTERM).code(), Some(0));
    for (_, pid) in processes_of(&owner) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}
