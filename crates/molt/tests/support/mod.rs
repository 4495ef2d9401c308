//! The test harness: a real `molt serve` (in-process on port 0, or the real binary as a child
//! process), a temp data dir, real child processes for instances, real HTTP clients.
#![allow(dead_code)]

pub mod registry;
pub mod webdriver;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use molt_cli::Client;
use molt_server::{OnExit, Running, ServeConfig};
use serde_json::{json, Value};
use tempfile::TempDir;

/// An in-process molt serve with its temp data directory.
pub struct Harness {
    pub running: Option<Running>,
    pub client: Client,
    pub router: SocketAddr,
    pub tmp: TempDir,
    data: PathBuf,
    /// Whether dropping removes what runs (not after `stop_keeping_instances`).
    remove_on_drop: bool,
}

/// A clock that stands still at the current time until the test moves it: windows (rollback,
/// watch, GC grace) pass when the test says so instead of after a sleep.
pub fn manual_clock() -> std::sync::Arc<molt_core::ManualClock> {
    std::sync::Arc::new(molt_core::ManualClock::new(molt_store::now_ms()))
}

impl Harness {
    /// Starts molt serve on 127.0.0.1:0 for both listeners.
    pub async fn start() -> Harness {
        Harness::start_with(|_| {}).await
    }

    /// Starts molt serve with settings adjusted by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut ServeConfig)) -> Harness {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data = tmp.path().join("data");
        Harness::start_in(tmp, data, adjust).await
    }

    /// Starts molt serve on the data directory `data` (kept by the caller: a restart of an
    /// earlier harness's server), with settings adjusted by `adjust`.
    pub async fn start_at(data: PathBuf, adjust: impl FnOnce(&mut ServeConfig)) -> Harness {
        let tmp = tempfile::tempdir().expect("temp dir");
        Harness::start_in(tmp, data, adjust).await
    }

    async fn start_in(
        tmp: TempDir,
        data: PathBuf,
        adjust: impl FnOnce(&mut ServeConfig),
    ) -> Harness {
        let mut cfg = ServeConfig::new(data.clone());
        cfg.api_addr = "127.0.0.1:0".parse().unwrap();
        cfg.router_addr = "127.0.0.1:0".parse().unwrap();
        cfg.stop_grace = Duration::from_secs(2);
        cfg.isolation = test_isolation().parse().expect("isolation");
        // As `molt serve` does: the molt binary is every runc instance's init.
        cfg.init_executable = Some(PathBuf::from(env!("CARGO_BIN_EXE_molt")));
        adjust(&mut cfg);
        let running = molt_server::start(cfg).await.expect("molt serve starts");
        let client = Client::new(&format!("http://{}", running.api_addr), &running.token);
        Harness {
            router: running.router_addr,
            client,
            running: Some(running),
            tmp,
            data,
            remove_on_drop: true,
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.data.clone()
    }

    /// Stops the server and leaves its instances running (a restart adopts them).
    pub async fn stop_keeping_instances(mut self) {
        self.remove_on_drop = false;
        if let Some(r) = self.running.take() {
            r.shutdown(OnExit::KeepInstances)
                .await
                .expect("clean shutdown");
        }
    }

    /// Stops the server and every instance it started.
    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown(OnExit::StopInstances)
                .await
                .expect("clean shutdown");
        }
    }

    /// Copies the example app into a temp folder as `name`, with extra `[env]` lines and
    /// manifest overrides (TOML lines replacing the defaults of the example).
    pub fn app(&self, name: &str, env: &[(&str, &str)], overrides: &str) -> PathBuf {
        make_app(self.tmp.path(), name, env, overrides)
    }

    /// Deploys an app folder and waits for its cutover (or failure); returns the deployment.
    pub async fn deploy(&self, dir: &Path) -> Value {
        deploy_dir(&self.client, dir).await
    }

    /// One GET through the router with a fresh connection.
    pub async fn get(&self, host: &str, path: &str) -> (u16, String) {
        let mut conn = KeepAlive::connect(self.router).await;
        conn.get(host, path)
            .await
            .expect("request through the router")
    }
}

impl Drop for Harness {
    /// Runs after a panic too: every runc container of this data directory (they all carry
    /// its owner marker) and their network namespaces are removed, so a failed test leaves
    /// nothing running. After a clean [`Harness::stop`] there is nothing left to remove.
    fn drop(&mut self) {
        if self.remove_on_drop {
            remove_containers(&self.data_dir());
        }
    }
}

/// Force-deletes the runc containers of data directory `data` and the network namespaces
/// named after its owner (`/run/netns/<owner>-…`).
pub fn remove_containers(data: &Path) {
    let state = data.join("runc");
    if !state.exists() {
        return;
    }
    let list = Command::new("runc")
        .arg("--root")
        .arg(&state)
        .args(["list", "--quiet"])
        .output();
    for id in list
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
        .lines()
    {
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&state)
            .args(["delete", "--force", id])
            .status();
    }
    let Ok(owner) = std::fs::read_to_string(data.join("owner.id")) else {
        return;
    };
    let prefix = format!("{}-", &owner.trim()[..16.min(owner.trim().len())]);
    for entry in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// The isolation the shared tests run molt serve with: `$MOLT_TEST_ISOLATION`, else `none`
/// (`MOLT_TEST_ISOLATION=runc` runs the whole suite with containers).
pub fn test_isolation() -> &'static str {
    match std::env::var("MOLT_TEST_ISOLATION").as_deref() {
        Ok("runc") => "runc",
        Ok("auto") => "auto",
        _ => "none",
    }
}

/// What `molt status` says about isolation under [`test_isolation`].
pub fn isolation_label() -> &'static str {
    match test_isolation() {
        "none" => "none",
        _ => "container (runc)",
    }
}

/// Writes an app folder based on examples/hello.
pub fn make_app(root: &Path, name: &str, env: &[(&str, &str)], overrides: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello");
    let dir = root.join(format!("app-{name}-{}", rand_id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("app.py"), dir.join("app.py")).unwrap();
    let mut env_lines = String::from("PYTHONUNBUFFERED = \"1\"\nPYTHONDONTWRITEBYTECODE = \"1\"\n");
    for (k, v) in env {
        env_lines.push_str(&format!("{k} = \"{v}\"\n"));
    }
    let manifest = format!(
        r#"name = "{name}"
command = ["python3", "app.py"]
{overrides}

[env]
{env_lines}
"#
    );
    std::fs::write(dir.join("molt.toml"), manifest).unwrap();
    dir
}

/// Default manifest lines for fast tests.
pub const FAST: &str = r#"instances = 2
[health]
path = "/healthz"
interval = "200ms"
timeout = "2s"
healthy_threshold = 1
unhealthy_threshold = 2
start_deadline = "15s"
[deploy]
drain_timeout = "5s"
watch = "2s"
rollback_window = "15m"
"#;

fn rand_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Imports a folder and deploys it, waiting for the cutover.
pub async fn deploy_dir(client: &Client, dir: &Path) -> Value {
    let d = start_deploy(client, dir).await.expect("deploy accepted");
    wait_deployment(client, d["id"].as_u64().unwrap()).await
}

/// Imports a folder and starts a deployment; returns the deployment record.
pub async fn start_deploy(client: &Client, dir: &Path) -> anyhow::Result<Value> {
    start_deploy_with(client, dir, json!({})).await
}

/// Like [`start_deploy`], with more fields of the deploy request (e.g. `{"shadow": 10}`).
pub async fn start_deploy_with(client: &Client, dir: &Path, extra: Value) -> anyhow::Result<Value> {
    let mut tar = Vec::new();
    molt_image::ImageStore::write_canonical_tar(dir, &mut tar)?;
    let img = client.post_bytes("/v1/images", tar).await?;
    let manifest = std::fs::read_to_string(dir.join("molt.toml"))?;
    let app = manifest
        .lines()
        .find_map(|l| l.strip_prefix("name = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap_or("hello")
        .to_string();
    let mut body = json!({ "image": img["digest"], "manifest": manifest });
    for (k, v) in extra.as_object().into_iter().flatten() {
        body[k] = v.clone();
    }
    client
        .post(&format!("/v1/apps/{app}/deployments"), &body)
        .await
}

/// Waits (≤ 60 s) until a deployment reaches its cutover (or, for a shadow deployment, its
/// shadow phase) or ends; returns the record.
pub async fn wait_deployment(client: &Client, id: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = client
            .get(&format!("/v1/deployments/{id}"))
            .await
            .expect("deployment");
        let state = v["deployment"]["state"].as_str().unwrap_or("").to_string();
        if matches!(
            state.as_str(),
            "drained"
                | "succeeded"
                | "failed"
                | "rolled_back"
                | "superseded"
                | "shadowing"
                | "abandoned"
                | "aborted"
        ) {
            return v["deployment"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "deployment {id} stuck in {state}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `f` every 20 ms until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One keep-alive HTTP/1.1 client connection to the router.
pub struct KeepAlive {
    sender: http1::SendRequest<Empty<Bytes>>,
}

impl KeepAlive {
    /// Opens the connection.
    pub async fn connect(addr: SocketAddr) -> KeepAlive {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to router");
        stream.set_nodelay(true).ok();
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        KeepAlive { sender }
    }

    /// GET `path` with `Host: host`; returns (status, body).
    pub async fn get(&mut self, host: &str, path: &str) -> anyhow::Result<(u16, String)> {
        self.get_with(host, path, &[]).await
    }

    /// GET `path` with `Host: host` and more header fields; returns (status, body).
    pub async fn get_with(
        &mut self,
        host: &str,
        path: &str,
        fields: &[(&str, &str)],
    ) -> anyhow::Result<(u16, String)> {
        self.sender.ready().await?;
        let mut req = hyper::Request::get(path).header("host", host);
        for (name, value) in fields {
            req = req.header(*name, *value);
        }
        let req = req.body(Empty::new())?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// Instance processes carrying `owner`'s marker: (instance id, pid).
pub fn processes_of(owner: &str) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) {
            if stat
                .rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z'))
            {
                continue;
            }
        }
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        let marker = format!("MOLT_OWNER={owner}");
        if vars.contains(&marker.as_bytes()) {
            let id = vars
                .iter()
                .find_map(|v| v.strip_prefix(b"MOLT_INSTANCE="))
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            out.push((id, pid));
        }
    }
    out
}

/// The owner marker of a data directory (what its instances carry in MOLT_OWNER).
pub fn owner_of(data_dir: &Path) -> String {
    let id = std::fs::read_to_string(data_dir.join("owner.id")).expect("owner.id");
    id.trim()[..16].to_string()
}

/// A `molt serve` child process.
pub struct Serve {
    pub child: Child,
    pub client: Client,
    pub router: std::net::SocketAddr,
    /// Its output (`<data dir>/serve.log`), shown when it ends by a signal it was not sent.
    pub log: PathBuf,
}

impl Serve {
    pub fn start(data: &Path, pause: Option<&str>, stop_instances_on_exit: bool) -> Serve {
        Serve::start_at(data, pause, stop_instances_on_exit, None)
    }

    /// [`Serve::start`] with the API on `api` (a fresh port when `None`): a restarted
    /// control plane on its old address, which `molt router`s follow.
    pub fn start_at(
        data: &Path,
        pause: Option<&str>,
        stop_instances_on_exit: bool,
        api: Option<std::net::SocketAddr>,
    ) -> Serve {
        Serve::start_with_args(data, pause, stop_instances_on_exit, api, &[])
    }

    /// [`Serve::start_at`] with more arguments for `molt serve` (e.g. `--provider swarm`).
    pub fn start_with_args(
        data: &Path,
        pause: Option<&str>,
        stop_instances_on_exit: bool,
        api: Option<std::net::SocketAddr>,
        extra: &[String],
    ) -> Serve {
        std::fs::create_dir_all(data).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("serve.log"))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_molt"));
        let api = api.map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string());
        cmd.args(["serve", "--api-listen", &api, "--router", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data)
            .args(["--isolation", test_isolation()])
            .env("MOLT_LOG", "info")
            .env_remove("MOLT_TEST_PAUSE_AT")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if stop_instances_on_exit {
            cmd.arg("--stop-instances-on-exit");
        }
        cmd.args(extra);
        if let Some(step) = pause {
            cmd.env("MOLT_TEST_PAUSE_AT", step);
        }
        let mut child = cmd.spawn().expect("molt binary starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        let endpoints = loop {
            if let Ok(text) = std::fs::read_to_string(data.join("serve.json")) {
                if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    if v["pid"].as_u64() == Some(child.id() as u64) {
                        break v;
                    }
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("molt serve exited early with {status}: {}", serve_log(data));
            }
            assert!(
                Instant::now() < deadline,
                "molt serve did not start: {}",
                serve_log(data)
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
        Serve {
            child,
            client: Client::new(
                &format!("http://{}", endpoints["api"].as_str().unwrap()),
                token.trim(),
            ),
            router: endpoints["router"].as_str().unwrap().parse().unwrap(),
            log: data.join("serve.log"),
        }
    }

    pub fn signal(&mut self, sig: Signal) -> std::process::ExitStatus {
        kill(Pid::from_raw(self.child.id() as i32), sig).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                use std::os::unix::process::ExitStatusExt;
                if sig != Signal::SIGKILL && status.code().is_none() {
                    let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(60).collect();
                    eprintln!(
                        "molt serve ended by signal {:?} (core dumped: {}) after {sig}; the end \
                         of its log:\n{}",
                        status.signal(),
                        status.core_dumped(),
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
                return status;
            }
            assert!(Instant::now() < deadline, "molt serve ignored {sig}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub async fn get(&self, host: &str) -> (u16, String) {
        let mut c = KeepAlive::connect(self.router).await;
        c.get(host, "/").await.unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn serve_log(data: &Path) -> String {
    std::fs::read_to_string(data.join("serve.log")).unwrap_or_default()
}

/// The `molt` binary as a client of the server whose data directory is `data`, with `args`;
/// `MOLT_API` and `MOLT_TOKEN` from the test's environment are not passed on.
pub fn molt_command(data: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_molt"));
    cmd.arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("MOLT_API")
        .env_remove("MOLT_TOKEN");
    cmd
}

/// Exit code, stdout and stderr of a finished command, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Keep-alive clients, one per address in `targets` (a router each, or one router several
/// times), each sending GET `/` for `host` until stopped (bounded: 100 000 requests and two
/// minutes each), counting answers.
pub struct ClientLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicU64>,
    failures: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ClientLoad {
    pub fn start(host: &'static str, targets: &[SocketAddr]) -> ClientLoad {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ok = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let failures = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks = targets
            .iter()
            .map(|&target| {
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                tokio::spawn(async move {
                    let mut conn = KeepAlive::connect(target).await;
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
                                .push(format!("{target}: {status} {body}")),
                            Err(e) => failures.lock().unwrap().push(format!("{target}: {e}")),
                        }
                    }
                })
            })
            .collect();
        ClientLoad {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    /// Stops the clients; (answered 200, failures).
    pub async fn finish(self) -> (u64, Vec<String>) {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.expect("client");
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::SeqCst), failures)
    }
}

/// Waits (30 s at most) until deployment `id` of `app` is held at `step` by the
/// `MOLT_TEST_PAUSE_AT` hook: its history says so once the step before has finished.
pub async fn held_at(client: &Client, app: &str, id: u64, step: &str) {
    let line = format!("deployment {id} held at {step} (test hook)");
    eventually(Duration::from_secs(30), &line, || async {
        let events = client
            .get(&format!("/v1/apps/{app}/events"))
            .await
            .expect("events");
        events.as_array().is_some_and(|events| {
            events
                .iter()
                .any(|e| e["kind"] == "paused" && e["message"] == line.as_str())
        })
    })
    .await;
}
