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
use std::time::{Duration, Instant};

use molt_cli::Client;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
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
        Self::spawn(
            name,
            &format!("http://{api}"),
            None,
            data,
            state,
            listen,
            None,
        )
    }

    /// Starts `molt router` inside network namespace `netns` (a machine of its own), following
    /// `control` over TLS, trusting `ca`.
    fn start_in_netns(
        name: &str,
        netns: &str,
        control: &str,
        ca: &Path,
        data: &Path,
        state: &Path,
        listen: SocketAddr,
    ) -> RouterProcess {
        Self::spawn(name, control, Some(ca), data, state, listen, Some(netns))
    }

    fn spawn(
        name: &str,
        control: &str,
        ca: Option<&Path>,
        data: &Path,
        state: &Path,
        listen: SocketAddr,
        netns: Option<&str>,
    ) -> RouterProcess {
        std::fs::create_dir_all(state).expect("state dir");
        let log = state.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("router log");
        let mut command = match netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command
                    .args(["netns", "exec", netns])
                    .arg(env!("CARGO_BIN_EXE_molt"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_molt")),
        };
        if let Some(ca) = ca {
            command.arg("router").arg("--control-ca").arg(ca);
        } else {
            command.arg("router");
        }
        let child = command
            .args(["--control", control])
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
    let load = ClientLoad::start("fleet.localhost", &addrs);
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
    let load = ClientLoad::start("fleet.localhost", &live);
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
    // The control plane counts it in step at its acknowledgement; the router reads the fence
    // that waited behind the table just after, and says it caught up.
    let r3 = &routers_up[2];
    eventually(Duration::from_secs(10), "r3 says it caught up", || async {
        r3.log().contains("caught up")
    })
    .await;
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
    let load = ClientLoad::start("outlive.localhost", &addrs);

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
    held_at(&held.client, "outlive", id, "healthy").await;
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

/// Network namespaces standing in for machines: each on molt's bridge with an address of its
/// own; removed (with their veths) when dropped.
struct Machines {
    names: Vec<String>,
}

impl Machines {
    /// One namespace per address, its veth's other end on `bridge`.
    fn on_bridge(bridge: &str, prefix: &str, addrs: &[(std::net::Ipv4Addr, u8)]) -> Machines {
        let mut names = Vec::new();
        for (i, (ip, len)) in addrs.iter().enumerate() {
            let ns = format!("{prefix}{i}");
            let (host_end, ns_end) = (format!("{prefix}h{i}"), format!("{prefix}n{i}"));
            let ip_cmd = |args: &[&str]| {
                let out = Command::new("ip").args(args).output().expect("run ip");
                assert!(out.status.success(), "ip {args:?}: {}", text(&out));
            };
            ip_cmd(&["netns", "add", &ns]);
            names.push(ns.clone());
            ip_cmd(&[
                "link", "add", &host_end, "type", "veth", "peer", "name", &ns_end,
            ]);
            ip_cmd(&["link", "set", &ns_end, "netns", &ns]);
            ip_cmd(&["link", "set", &host_end, "master", bridge]);
            ip_cmd(&["link", "set", &host_end, "up"]);
            let cidr = format!("{ip}/{len}");
            ip_cmd(&["-n", &ns, "addr", "add", &cidr, "dev", &ns_end]);
            ip_cmd(&["-n", &ns, "link", "set", &ns_end, "up"]);
            ip_cmd(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        Machines { names }
    }
}

/// An iptables rule letting a bridge forward between its own ports, removed when dropped.
struct ForwardRule(String);

impl ForwardRule {
    fn allow(bridge: &str) -> ForwardRule {
        if Command::new("iptables").arg("--version").output().is_ok() {
            let _ = Command::new("iptables")
                .args(["-I", "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"])
                .status();
        }
        ForwardRule(bridge.to_owned())
    }
}

impl Drop for ForwardRule {
    fn drop(&mut self) {
        let _ = Command::new("iptables")
            .args([
                "-D", "FORWARD", "-i", &self.0, "-o", &self.0, "-j", "ACCEPT",
            ])
            .status();
    }
}

impl Drop for Machines {
    fn drop(&mut self) {
        for ns in &self.names {
            // Deleting the namespace deletes its veth and with it the peer on the bridge.
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routers_on_other_machines_follow_over_tls() {
    use molt_server::{BridgeNetwork, Isolation, ServeConfig};
    if !(molt_testkit::needs_root()
        && molt_testkit::needs_command("runc")
        && molt_testkit::needs_command("ip")
        && molt_testkit::needs_file("/bin/busybox", "busybox-static"))
    {
        return;
    }
    // molt's bridge, its instances in namespaces of their own (runc, --network bridge), and
    // three more namespaces for the routers: four "machines" on one network.
    let tag = std::process::id() % 10_000;
    let network = BridgeNetwork::new(
        &format!("mtf{tag}"),
        "10.231.24.0/24".parse().expect("subnet"),
    )
    .expect("bridge");
    struct RemoveBridge(BridgeNetwork);
    impl Drop for RemoveBridge {
        fn drop(&mut self) {
            let _ = self.0.remove();
        }
    }
    let _bridge = RemoveBridge(network.clone());
    let gateway = std::net::Ipv4Addr::new(10, 231, 24, 1);
    let h = Harness::start_with(|cfg: &mut ServeConfig| {
        cfg.isolation = Isolation::Runc;
        cfg.network = Some(network.clone());
        // The API over TLS on the bridge: how routers on other machines reach it.
        cfg.api_tls = Some(molt_server::ApiTlsConfig {
            listen: SocketAddr::from((gateway, 0)),
            names: Vec::new(),
        });
    })
    .await;
    let api_tls = h
        .running
        .as_ref()
        .and_then(|r| r.api_tls_addr)
        .expect("the API's TLS address");
    let data = h.data_dir();
    let dir = h.tmp.path().join("app-bb");
    std::fs::create_dir_all(dir.join("bin")).expect("mkdir");
    std::fs::create_dir_all(dir.join("www")).expect("mkdir");
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("busybox");
    std::fs::write(dir.join("www/index.html"), "one\n").expect("index");
    let manifest = |name: &str| {
        format!(
            "name = \"{name}\"\ncommand = [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"$HOST:$PORT\", \"-h\", \"/www\"]\n\
             instances = 2\n[health]\npath = \"/index.html\"\ninterval = \"200ms\"\nhealthy_threshold = 1\n\
             start_deadline = \"20s\"\n[deploy]\ndrain_timeout = \"5s\"\nwatch = \"1s\"\n"
        )
    };
    std::fs::write(dir.join("molt.toml"), manifest("edge")).expect("manifest");
    let d1 = h.deploy(&dir).await;
    assert_eq!(d1["state"], "drained", "{d1}");
    std::fs::write(dir.join("www/index.html"), "two\n").expect("index");
    let d2 = h.deploy(&dir).await;
    assert_eq!(d2["state"], "drained", "{d2}");

    let prefix = format!("mtr{tag}");
    let addrs: Vec<(std::net::Ipv4Addr, u8)> = (0..3)
        .map(|i| (std::net::Ipv4Addr::new(10, 231, 24, 250 + i), 24))
        .collect();
    let machines = Machines::on_bridge(network.bridge(), &prefix, &addrs);
    // Traffic between two ports of a bridge goes through iptables' FORWARD chain when the
    // kernel's br_netfilter is on, and Docker (installed here for the swarm tests) sets its
    // policy to DROP: let the bridge forward between its own ports for this test.
    let _forward = ForwardRule::allow(network.bridge());
    let control = format!("https://{api_tls}");
    let ca = molt_server::api_cert_path(&data);
    let state = h.tmp.path().join("routers");
    let routers: Vec<RouterProcess> = addrs
        .iter()
        .enumerate()
        .map(|(i, (ip, _))| {
            RouterProcess::start_in_netns(
                &format!("m{i}"),
                &machines.names[i],
                &control,
                &ca,
                &data,
                &state,
                SocketAddr::from((*ip, 8080)),
            )
        })
        .collect();
    fleet_in_step(&h.client, &["m0", "m1", "m2"]).await;

    // A client on the host (another machine) spread over the three routers, while the route
    // moves ten times: every swap in force on all three when the API answers, nothing fails.
    let router_addrs: Vec<SocketAddr> = routers.iter().map(|r| r.addr).collect();
    let load = ClientLoad::start("edge.localhost", &router_addrs);
    let envs = [
        d1["env"].as_str().expect("env").to_owned(),
        d2["env"].as_str().expect("env").to_owned(),
    ];
    for swap in 0..10 {
        let (env, body) = if swap % 2 == 0 {
            (&envs[0], "one\n")
        } else {
            (&envs[1], "two\n")
        };
        h.client
            .post("/v1/apps/edge/swap", &json!({ "env": env }))
            .await
            .expect("swap");
        for router in &routers {
            assert_eq!(
                get_via(router.addr, "edge.localhost").await,
                body,
                "swap {swap} via {}",
                router.name
            );
        }
    }
    let (ok, failures) = load.finish().await;
    eprintln!("{ok} requests through three routers in their own namespaces across 10 swaps");
    assert!(ok > 0);
    assert!(failures.is_empty(), "{failures:?}");
    drop(routers);
    drop(machines);
    h.stop().await;
}

/// A canary whose traffic reaches it only through a fleet router is judged on what that
/// router reports (its live status classes and latency, every second): `molt serve`'s own
/// router sees none of it, and the canary is aborted all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_is_judged_on_the_traffic_of_the_fleets_routers() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let serve = Serve::start(&data, None, true);
    let api = api_of(&serve);
    let d1 = deploy_dir(&serve.client, &make_app(tmp.path(), "judged", &[], FAST)).await;
    assert_eq!(d1["state"], "drained", "{d1}");
    let router = RouterProcess::start("r1", api, &data, &tmp.path().join("routers"));
    fleet_in_step(&serve.client, &["r1"]).await;

    // Clients of many users (sticky buckets) through the fleet router only.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4u64)
        .map(|c| {
            let (stop, sent, addr) = (stop.clone(), sent.clone(), router.addr);
            tokio::spawn(async move {
                let mut conn = KeepAlive::connect(addr).await;
                let deadline = Instant::now() + Duration::from_secs(90);
                let mut bucket = c * 2_503;
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    bucket = (bucket + 7_919) % 10_000;
                    let cookie = format!("molt-bucket={bucket}");
                    if conn
                        .get_with("judged.localhost", "/", &[("cookie", &cookie)])
                        .await
                        .is_err()
                    {
                        conn = KeepAlive::connect(addr).await;
                    }
                    sent.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();

    let canary = FAST.replace(
        "[deploy]\n",
        "[deploy]\nstrategy = \"canary\"\nsteps = [{ weight = 50, pause = \"30s\" }]\n",
    )
        + "[deploy.analysis]\ninterval = \"1500ms\"\nsuccess_rate = 0.95\nmin_requests = 5\n\
         failure_limit = 2\nprogress_deadline = \"60s\"\n";
    let bad = make_app(tmp.path(), "judged", &[("FAIL_SHARE", "50")], &canary);
    let d2 = start_deploy(&serve.client, &bad).await.expect("deploy");
    let id = d2["id"].as_u64().expect("id");
    eventually(Duration::from_secs(60), "the canary aborted", || async {
        let d = serve
            .client
            .get(&format!("/v1/deployments/{id}"))
            .await
            .expect("deployment");
        let state = d["deployment"]["state"].as_str().unwrap_or("").to_owned();
        assert!(
            matches!(
                state.as_str(),
                "canarying"
                    | "aborted"
                    | "pending"
                    | "env_created"
                    | "instances_started"
                    | "healthy"
            ),
            "{d}"
        );
        state == "aborted"
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.expect("client");
    }
    assert!(sent.load(Ordering::SeqCst) > 0);
    let d = serve
        .client
        .get(&format!("/v1/deployments/{id}"))
        .await
        .expect("deployment");
    let record = &d["deployment"];
    assert_eq!(record["canary"]["aborted"], "failure_limit", "{d}");
    // The verdicts counted the fleet router's canary requests and errors.
    let failed: Vec<&serde_json::Value> = record["canary"]["verdicts"]
        .as_array()
        .expect("verdicts")
        .iter()
        .filter(|v| v["verdict"] == "failed")
        .collect();
    assert_eq!(failed.len(), 2, "{d}");
    for verdict in failed {
        assert!(
            verdict["canary"]["requests"].as_u64().unwrap_or(0) >= 5,
            "{verdict}"
        );
        assert!(
            verdict["canary"]["errors"].as_u64().unwrap_or(0) > 0,
            "{verdict}"
        );
    }
    // Every one of those requests went through the fleet router (the clients know no other):
    // `molt status` shows the traffic of every router, its own and the fleet's.
    let status = serve
        .client
        .get("/v1/status?app=judged")
        .await
        .expect("status");
    let stable = status["apps"][0]["envs"]
        .as_array()
        .expect("envs")
        .iter()
        .find(|e| e["routed"] == true)
        .expect("the stable environment")["traffic"]
        .clone();
    assert!(
        stable["classes"]["2xx"].as_u64().unwrap_or(0) > 0,
        "{stable}"
    );
    drop(router);
}
