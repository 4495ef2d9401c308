//! `molt serve --isolation runc`: instances as runc containers, end to end.
//!
//! They need root, `runc`, `python3` and a static `/bin/busybox` (Debian's `busybox-static`);
//! without them each test is skipped on a laptop and fails in CI, which runs as root with all
//! of them installed (`.ci/run`, molt-testkit).

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use molt_server::{BridgeNetwork, Isolation, OnExit, ServeConfig};
use serde_json::Value;
use support::*;

const BUSYBOX: &str = "/bin/busybox";

/// A small HTTP app that reports, from inside its instance, what it can and cannot do.
const PROBE: &str = r#"
import ctypes, json, os, socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

def attempt(f):
    try:
        return "ok: " + str(f())
    except Exception as e:
        return "error: " + type(e).__name__ + ": " + str(e)

def write(path):
    with open(path, "w") as f:
        f.write("x")
    return path

def read(path):
    with open(path) as f:
        return repr(f.read())

def secret_file():
    st = os.stat("/run/secrets/TOKEN")
    with open("/run/secrets/TOKEN", "rb") as f:
        return {"text": f.read().decode(), "mode": oct(st.st_mode & 0o7777), "uid": st.st_uid}

def unshare_user():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x10000000) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return "unshared"

class Probe(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/eat":
            hog = bytearray(512 << 20)
            hog[::4096] = b"x" * len(hog[::4096])
        st = os.stat("/app/probe.py")
        report = {
            "uid": os.getuid(),
            "hostname": socket.gethostname(),
            "instance": os.environ.get("MOLT_INSTANCE"),
            "cwd": os.getcwd(),
            "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
            "init": attempt(lambda: read("/proc/1/cmdline")),
            "write_app": attempt(lambda: write("/app/new-file")),
            "write_root": attempt(lambda: write("/new-file")),
            "write_etc": attempt(lambda: write("/etc/new-file")),
            "write_tmp": attempt(lambda: write("/tmp/scratch")),
            "token": attempt(lambda: read(os.environ["TOKEN_FILE"])),
            "shadow": attempt(lambda: read("/etc/shadow")),
            "unshare": attempt(unshare_user),
            "secret": attempt(secret_file),
            "secrets_dir": os.environ.get("MOLT_SECRETS_DIR"),
            "secret_env": os.environ.get("DB_PASSWORD"),
            "write_secrets": attempt(lambda: write("/run/secrets/new-file")),
            "inode": [st.st_dev, st.st_ino],
        }
        body = json.dumps(report).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass

ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Probe).serve_forever()
"#;

/// True when this machine can run the tests (else skipped, or a failure in CI).
fn can_run() -> bool {
    molt_testkit::needs_root()
        && molt_testkit::needs_command("runc")
        && molt_testkit::needs_file(BUSYBOX, "busybox-static")
}

async fn isolated() -> Harness {
    Harness::start_with(|cfg: &mut ServeConfig| cfg.isolation = Isolation::Runc).await
}

/// Stops the server and its instances, keeping the data directory to look at.
async fn stop_keeping_data(h: &mut Harness) -> PathBuf {
    let running = h.running.take().expect("running");
    running.shutdown(OnExit::StopInstances).await.unwrap();
    h.data_dir()
}

/// An app folder running [`PROBE`] in `instances` instances with `extra` manifest lines.
fn probe_app(h: &Harness, name: &str, instances: u32, extra: &str) -> PathBuf {
    let dir = h.tmp.path().join(format!("app-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("probe.py"), PROBE).unwrap();
    let token_file = h.data_dir().join("admin.token");
    std::fs::write(
        dir.join("molt.toml"),
        format!(
            r#"name = "{name}"
command = ["python3", "probe.py"]
instances = {instances}
{extra}
[health]
path = "/"
interval = "200ms"
timeout = "2s"
healthy_threshold = 1
unhealthy_threshold = 2
start_deadline = "15s"
[deploy]
drain_timeout = "5s"
watch = "1s"
[env]
PYTHONDONTWRITEBYTECODE = "1"
TOKEN_FILE = "{}"
"#,
            token_file.display()
        ),
    )
    .unwrap();
    dir
}

/// The probe report of the instance that answers through the router.
async fn probe(h: &Harness, host: &str) -> Value {
    let (status, body) = h.get(host, "/").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Every regular file named `name` under `dir` (every file when `name` is empty).
fn find_files(dir: &Path, name: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            find_files(&path, name, out);
        } else if meta.is_file() && (name.is_empty() || entry.file_name() == name) {
            out.push(path);
        }
    }
}

/// runc containers, bundles, cgroups and mounts of a data directory's owner that are left.
fn leftovers(data: &Path) -> Vec<String> {
    let owner = owner_of(data);
    let mut left = Vec::new();
    let list = std::process::Command::new("runc")
        .arg("--root")
        .arg(data.join("runc"))
        .args(["list", "--quiet"])
        .output()
        .expect("runc list");
    left.extend(
        String::from_utf8_lossy(&list.stdout)
            .lines()
            .map(|l| format!("container {l}")),
    );
    for bundle in std::fs::read_dir(data.join("bundles"))
        .into_iter()
        .flatten()
    {
        left.push(format!("bundle {:?}", bundle.unwrap().path()));
    }
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten() {
        let parent = hierarchy.unwrap().path().join("molt");
        for leaf in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
            if leaf.file_name().to_string_lossy().starts_with(&owner) {
                left.push(format!("cgroup {:?}", leaf.path()));
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let data_text = data.to_string_lossy().into_owned();
    left.extend(
        mounts
            .lines()
            .filter(|l| l.contains(&data_text))
            .map(|l| format!("mount {l}")),
    );
    left.extend(
        processes_of(&owner)
            .into_iter()
            .map(|(id, pid)| format!("process {id} ({pid})")),
    );
    for dir in std::fs::read_dir(format!("/dev/shm/molt-secrets-{owner}"))
        .into_iter()
        .flatten()
        .flatten()
    {
        left.push(format!("secret files {:?}", dir.path()));
    }
    for netns in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        if netns.file_name().to_string_lossy().starts_with(&owner) {
            left.push(format!("network namespace {:?}", netns.path()));
        }
    }
    // A host-side veth carries its container id (`<owner>-<instance>`) as its alias.
    let links = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    left.extend(
        String::from_utf8_lossy(&links.stdout)
            .lines()
            .filter(|l| l.contains(&format!("alias {owner}-")))
            .map(|l| format!("veth {l}")),
    );
    left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_app_folder_runs_confined_on_the_host_system() {
    if !can_run() {
        return;
    }
    let mut h = isolated().await;
    // A secret delivered as a file: /run/secrets/TOKEN, the instance user's, 0400.
    let secret = format!("file-secret-{}", std::process::id());
    // And one as a variable, which molt's init reads from a tmpfs: not in config.json.
    let password = format!("env-secret-{}", std::process::id());
    for set in [
        serde_json::json!({ "name": "TOKEN", "value": secret, "delivery": "file" }),
        serde_json::json!({ "name": "DB_PASSWORD", "value": password }),
    ] {
        h.client.post("/v1/apps/probe/secrets", &set).await.unwrap();
    }
    let d = h.deploy(&probe_app(&h, "probe", 2, "")).await;
    assert_eq!(d["state"], "drained", "{d}");
    let status = h.client.get("/v1/status").await.unwrap();
    assert_eq!(status["isolation"], "container (runc)");

    let mut reports = Vec::new();
    for _ in 0..20 {
        let r = probe(&h, "probe.localhost").await;
        if !reports
            .iter()
            .any(|x: &Value| x["instance"] == r["instance"])
        {
            reports.push(r);
        }
        if reports.len() == 2 {
            break;
        }
    }
    assert_eq!(reports.len(), 2, "both instances answer: {reports:?}");
    let token = std::fs::read_to_string(h.data_dir().join("admin.token")).unwrap();
    for r in &reports {
        eprintln!("{r:#}");
        assert_eq!(r["uid"], 65534, "{r}");
        assert_eq!(r["hostname"], r["instance"], "{r}");
        assert_eq!(r["cwd"], "/app", "{r}");
        for key in ["write_app", "write_root", "write_etc"] {
            let what = r[key].as_str().unwrap();
            assert!(what.contains("Read-only file system"), "{key}: {what}");
        }
        assert!(r["write_tmp"].as_str().unwrap().starts_with("ok"), "{r}");
        // Its own pid namespace: molt's init is pid 1, no host process is visible.
        let init = r["init"].as_str().unwrap();
        assert!(
            init.contains(
                "/.molt/molt\\x00instance-init\\x00--env-file\\x00/run/molt-secret-env\\x00--\\x00"
            ),
            "{init}"
        );
        let pids: Vec<u64> = r["pids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap())
            .collect();
        assert_eq!(pids.first(), Some(&1), "{pids:?}");
        assert!(pids.iter().all(|p| *p < 64), "host processes: {pids:?}");
        // The admin token is not there at all; /etc/shadow is masked.
        let read = r["token"].as_str().unwrap();
        assert!(read.starts_with("error"), "token readable: {read}");
        assert!(!read.contains(token.trim()));
        assert!(r["shadow"] == "ok: ''" || r["shadow"].as_str().unwrap().starts_with("error"));
        let file = r["secret"].as_str().unwrap();
        let expected = format!("ok: {{'text': '{secret}', 'mode': '0o400', 'uid': 65534}}");
        assert_eq!(file, expected, "{r}");
        assert_eq!(r["secrets_dir"], "/run/secrets", "{r}");
        assert_eq!(r["secret_env"], password.as_str(), "{r}");
        assert!(
            r["write_secrets"].as_str().unwrap().starts_with("error"),
            "{r}"
        );
        // seccomp: unshare fails with EPERM even where unprivileged user namespaces work.
        let unshare = r["unshare"].as_str().unwrap();
        assert!(unshare.contains("Operation not permitted"), "{unshare}");
    }
    // Both instances read the same file of the one unpacked tree: same device and inode.
    assert_eq!(reports[0]["inode"], reports[1]["inode"]);
    let mut unpacked = Vec::new();
    find_files(&h.data_dir().join("images"), "probe.py", &mut unpacked);
    assert_eq!(unpacked.len(), 1, "{unpacked:?}");
    let host = std::fs::metadata(&unpacked[0]).unwrap();
    assert_eq!(reports[0]["inode"][1], host.ino());
    assert!(!unpacked[0].with_file_name("new-file").exists());

    // The value is in no file of the data directory: not in the bundles' config.json either.
    let mut files = Vec::new();
    find_files(&h.data_dir(), "", &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("config.json")),
        "{files:?}"
    );
    for file in files {
        let content = std::fs::read(&file).unwrap_or_default();
        for value in [&secret, &password] {
            let found = content.windows(value.len()).any(|w| w == value.as_bytes());
            assert!(!found, "{} holds a secret", file.display());
        }
    }

    let data = stop_keeping_data(&mut h).await;
    assert_eq!(leftovers(&data), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_memory_limit_kills_and_the_reason_says_oom() {
    if !can_run() {
        return;
    }
    let mut h = isolated().await;
    let limits = "[limits]\nmemory = \"64M\"\npids = 50\ncpu = 0.5\n";
    let d = h.deploy(&probe_app(&h, "hog", 1, limits)).await;
    assert_eq!(d["state"], "drained", "{d}");
    let owner = owner_of(&h.data_dir());
    let victim = probe(&h, "hog.localhost").await["instance"]
        .as_str()
        .unwrap()
        .to_string();
    // The limits are in the instance's cgroups.
    let cgroup = |controller: &str, file: &str| {
        std::fs::read_to_string(format!(
            "/sys/fs/cgroup/{controller}/molt/{owner}-{victim}/{file}"
        ))
        .map(|t| t.trim().to_string())
        .unwrap_or_default()
    };
    assert_eq!(cgroup("memory", "memory.limit_in_bytes"), "67108864");
    assert_eq!(cgroup("pids", "pids.max"), "50");
    assert_eq!(cgroup("cpu", "cpu.cfs_quota_us"), "50000");

    let (status, _) = h.get("hog.localhost", "/eat").await;
    assert_ne!(status, 200, "a 512 MiB allocation under a 64 MiB limit");
    eventually(Duration::from_secs(20), "the OOM recorded", || async {
        let events = h.client.get("/v1/apps/hog/events").await.unwrap();
        events.to_string().contains("out of memory")
    })
    .await;
    let events = h.client.get("/v1/apps/hog/events").await.unwrap();
    let text = events.to_string();
    // The exit status itself may be lost when runc reaps the container's init before molt
    // does ("exited"), so the test asks for what matters: the victim's event names the OOM kill.
    let victim_event = events
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["message"].as_str())
        .find(|m| m.starts_with(&format!("{victim} ")) && m.contains("out of memory"));
    let message = victim_event.unwrap_or_else(|| panic!("no OOM event for {victim}: {text}"));
    assert!(
        message.contains("killed by signal 9") || message.contains(" exited"),
        "{message}"
    );
    assert!(message.contains("memory limit of 64 MiB"), "{message}");
    // … and it was replaced.
    eventually(Duration::from_secs(20), "a replacement", || async {
        let r = h.client.get("/v1/status?app=hog").await.unwrap();
        r["apps"][0]["envs"][0]["instances"]
            .as_array()
            .is_some_and(|i| {
                i.iter()
                    .any(|x| x["state"] == "healthy" && x["id"] != victim.as_str())
            })
    })
    .await;
    let data = stop_keeping_data(&mut h).await;
    assert_eq!(leftovers(&data), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scratch_busybox_image_serves_and_is_readopted_after_a_restart() {
    if !can_run() {
        return;
    }
    let mut h = isolated().await;
    let dir = busybox_app(&h);
    let d = h.deploy(&dir).await;
    assert_eq!(d["state"], "drained", "{d}");
    let (status, body) = h.get("bb.localhost", "/").await;
    assert_eq!((status, body.as_str()), (200, "busybox in a box\n"));
    let before = h.client.get("/v1/status?app=bb").await.unwrap();

    // Restart molt serve on the same data directory: the containers are re-adopted.
    let data = h.data_dir();
    restart(&mut h, |cfg| cfg.isolation = Isolation::Runc).await;
    let after = h.client.get("/v1/status?app=bb").await.unwrap();
    assert_eq!(
        instance_pids(&before),
        instance_pids(&after),
        "{before}\n{after}"
    );
    let (status, body) = h.get("bb.localhost", "/").await;
    assert_eq!((status, body.as_str()), (200, "busybox in a box\n"));

    stop_keeping_data(&mut h).await;
    assert_eq!(leftovers(&data), Vec::<String>::new());
}

/// A scratch image holding only a static busybox that serves `/www` with httpd.
fn busybox_app(h: &Harness) -> PathBuf {
    let dir = h.tmp.path().join("app-bb");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::copy(BUSYBOX, dir.join("bin/busybox")).unwrap();
    std::fs::write(dir.join("www/index.html"), "busybox in a box\n").unwrap();
    std::fs::write(
        dir.join("molt.toml"),
        r#"name = "bb"
command = ["/bin/busybox", "httpd", "-f", "-p", "$HOST:$PORT", "-h", "/www"]
instances = 2
[health]
path = "/index.html"
interval = "200ms"
healthy_threshold = 1
start_deadline = "15s"
[deploy]
drain_timeout = "5s"
watch = "1s"
"#,
    )
    .unwrap();
    dir
}

/// Each instance of the first environment of the app in `status`: id and pid.
fn instance_pids(status: &Value) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = status["apps"][0]["envs"][0]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["id"].as_str().unwrap().to_string(), i["pid"].clone()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Stops the harness's server keeping its instances, and starts another on the same data
/// directory with settings adjusted by `adjust` (as a restart of molt serve would).
async fn restart(h: &mut Harness, adjust: impl FnOnce(&mut ServeConfig)) {
    let running = h.running.take().expect("running");
    running.shutdown(OnExit::KeepInstances).await.unwrap();
    let mut cfg = ServeConfig::new(h.data_dir());
    cfg.api_addr = "127.0.0.1:0".parse().unwrap();
    cfg.router_addr = "127.0.0.1:0".parse().unwrap();
    cfg.stop_grace = Duration::from_secs(1);
    adjust(&mut cfg);
    let running = molt_server::start(cfg).await.unwrap();
    h.client = molt_cli::Client::new(&format!("http://{}", running.api_addr), &running.token);
    h.router = running.router_addr;
    h.running = Some(running);
}

/// Deletes its bridge when dropped, also after a failed assertion.
struct BridgeGuard(BridgeNetwork);

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        if let Err(e) = self.0.remove() {
            eprintln!("cannot remove bridge {}: {e}", self.0.bridge());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bridge_mode_serves_through_the_router_and_is_readopted_with_its_namespaces() {
    if !can_run() {
        return;
    }
    let network = BridgeNetwork::new("mtbe2e", "10.231.20.0/24".parse().unwrap()).unwrap();
    let bridge = BridgeGuard(network.clone());
    let clock = manual_clock();
    let bridged = |cfg: &mut ServeConfig| {
        cfg.isolation = Isolation::Runc;
        cfg.network = Some(network.clone());
        cfg.clock = clock.clone();
    };
    let mut h = Harness::start_with(bridged).await;
    let dir = busybox_app(&h);
    let d = h.deploy(&dir).await;
    assert_eq!(d["state"], "drained", "{d}");
    let (status, body) = h.get("bb.localhost", "/").await;
    assert_eq!((status, body.as_str()), (200, "busybox in a box\n"));

    // Each instance has its own address of the subnet, port 8080, and its own namespace.
    let before = h.client.get("/v1/status?app=bb").await.unwrap();
    let owner = owner_of(&h.data_dir());
    let instances = before["apps"][0]["envs"][0]["instances"]
        .as_array()
        .unwrap();
    let mut hosts: Vec<&str> = instances
        .iter()
        .map(|i| i["host"].as_str().unwrap())
        .collect();
    hosts.sort();
    assert_eq!(hosts, ["10.231.20.2", "10.231.20.3"], "{before}");
    for inst in instances {
        assert_eq!(inst["port"], 8080, "{inst}");
        let netns =
            Path::new("/run/netns").join(format!("{owner}-{}", inst["id"].as_str().unwrap()));
        assert!(netns.exists(), "{} is missing", netns.display());
    }

    // A restart re-adopts the containers in their namespaces and routes to them again.
    let data = h.data_dir();
    restart(&mut h, bridged).await;
    let after = h.client.get("/v1/status?app=bb").await.unwrap();
    assert_eq!(
        instance_pids(&before),
        instance_pids(&after),
        "{before}\n{after}"
    );
    let (status, body) = h.get("bb.localhost", "/").await;
    assert_eq!((status, body.as_str()), (200, "busybox in a box\n"));

    // A redeploy gets the next free addresses while the old environment stays warm; once GC
    // retires it, its addresses are free and the next deployment gets them again, and the
    // router reaches the new instances there.
    let manifest = std::fs::read_to_string(dir.join("molt.toml")).unwrap();
    std::fs::write(
        dir.join("molt.toml"),
        manifest.replace("watch = \"1s\"", "watch = \"1s\"\nrollback_window = \"1s\""),
    )
    .unwrap();
    std::fs::write(dir.join("www/index.html"), "busybox again\n").unwrap();
    let d = h.deploy(&dir).await;
    assert_eq!(d["state"], "drained", "{d}");
    let (status, body) = h.get("bb.localhost", "/").await;
    assert_eq!((status, body.as_str()), (200, "busybox again\n"));
    let hosts_of = |status: &Value, env: &str| -> Vec<String> {
        let mut hosts: Vec<String> = status["apps"][0]["envs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["env"]["id"] == env)
            .flat_map(|e| e["instances"].as_array().unwrap())
            .map(|i| i["host"].as_str().unwrap().to_string())
            .collect();
        hosts.sort();
        hosts
    };
    let second = h.client.get("/v1/status?app=bb").await.unwrap();
    let env = d["env"].as_str().unwrap();
    assert_eq!(
        hosts_of(&second, env),
        ["10.231.20.4", "10.231.20.5"],
        "{second}"
    );
    // The old environment's rollback window (1 s) passes.
    clock.advance(Duration::from_millis(1300));
    let gc = h
        .client
        .post("/v1/gc", &serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(gc["envs"].as_array().map(Vec::len), Some(1), "{gc}");
    std::fs::write(dir.join("www/index.html"), "busybox reused\n").unwrap();
    let d = h.deploy(&dir).await;
    assert_eq!(d["state"], "drained", "{d}");
    let third = h.client.get("/v1/status?app=bb").await.unwrap();
    let env = d["env"].as_str().unwrap();
    assert_eq!(
        hosts_of(&third, env),
        ["10.231.20.2", "10.231.20.3"],
        "{third}"
    );
    for _ in 0..4 {
        let (status, body) = h.get("bb.localhost", "/").await;
        assert_eq!((status, body.as_str()), (200, "busybox reused\n"));
    }

    stop_keeping_data(&mut h).await;
    assert_eq!(leftovers(&data), Vec::<String>::new());
    drop(bridge);
    let links = std::process::Command::new("ip")
        .args(["-o", "link", "show", "mtbe2e"])
        .output()
        .unwrap();
    assert!(!links.status.success(), "the bridge is left");
}

#[tokio::test]
async fn bridge_mode_without_runc_is_refused_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = ServeConfig::new(tmp.path().join("data"));
    cfg.api_addr = "127.0.0.1:0".parse().unwrap();
    cfg.router_addr = "127.0.0.1:0".parse().unwrap();
    cfg.isolation = Isolation::None;
    cfg.network = Some(BridgeNetwork::new("mtbnone", "10.231.21.0/24".parse().unwrap()).unwrap());
    let err = match molt_server::start(cfg).await {
        Ok(_) => panic!("bridge mode without runc started"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("--network bridge needs the runc isolation"),
        "{err}"
    );
    assert!(
        !Path::new("/sys/class/net/mtbnone").exists(),
        "a bridge was made anyway"
    );
}

/// An app whose every answer is the id of the instance that gave it (`MOLT_INSTANCE`).
const WHOAMI: &str = r#"
import os, signal, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ME = os.environ.get("MOLT_INSTANCE", "?").encode()
if os.path.exists(os.environ.get("FAIL_IF_EXISTS", "/nonexistent")):
    sys.exit("told to fail")

class WhoAmI(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(ME)))
        self.end_headers()
        self.wfile.write(ME)

    def log_message(self, fmt, *args):
        pass

server = ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), WhoAmI)
server.daemon_threads = True
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
server.serve_forever()
"#;

/// An app folder running [`WHOAMI`] as `app.py` in two instances, with `env` lines.
fn whoami_app(h: &Harness, name: &str, env: &str) -> PathBuf {
    let dir = h.tmp.path().join(format!("app-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("app.py"), WHOAMI).unwrap();
    std::fs::write(
        dir.join("molt.toml"),
        format!(
            "name = \"{name}\"\ncommand = [\"python3\", \"app.py\"]\n{FAST}\n[env]\n\
             PYTHONUNBUFFERED = \"1\"\nPYTHONDONTWRITEBYTECODE = \"1\"\n{env}"
        ),
    )
    .unwrap();
    dir
}

/// The ids of the instances of `app`'s (first) environment.
async fn instance_ids(h: &Harness, app: &str) -> Vec<String> {
    let status = h
        .client
        .get(&format!("/v1/status?app={app}"))
        .await
        .unwrap();
    let mut ids: Vec<String> = status["apps"][0]["envs"][0]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// One answer under load: when its request was sent and when the answer came (ms since the
/// epoch), and what came back (status and body, i.e. the answering instance's id), or the
/// error.
type Answer = (u64, u64, Result<(u16, String), String>);

/// What [`UnderLoad::check`] found, for the test's output.
struct LoadReport {
    answers: usize,
    /// Answers to requests sent after the detection.
    after_detection: usize,
    /// Looks at the table that found the host's backend held.
    held_looks: usize,
    /// The longest time one request took (ms): a held request's wait shows here.
    slowest_ms: u64,
}

/// One look at the router's table: when (ms since the epoch, taken before the look), the
/// instances the host was routed to, and whether its backend was held.
type Sample = (u64, Vec<String>, bool);

/// Keep-alive GET load on a host and a watch on the router's table for it, until stopped.
struct UnderLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<Vec<Answer>>>,
    tables: tokio::task::JoinHandle<Vec<Sample>>,
}

impl UnderLoad {
    /// Starts two load clients and the table watch (each bounded to 2 minutes and a count).
    fn start(h: &Harness, host: &'static str) -> UnderLoad {
        use std::sync::atomic::Ordering::Relaxed;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let router = h.router;
        let clients = (0..2)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut conn = KeepAlive::connect(router).await;
                    let mut answers = Vec::new();
                    while !stop.load(Relaxed)
                        && answers.len() < 200_000
                        && std::time::Instant::now() < deadline
                    {
                        let sent = now_ms();
                        match conn.get(host, "/").await {
                            Ok(answer) => answers.push((sent, now_ms(), Ok(answer))),
                            Err(e) => {
                                answers.push((sent, now_ms(), Err(e.to_string())));
                                conn = KeepAlive::connect(router).await;
                            }
                        }
                    }
                    answers
                })
            })
            .collect();
        let table_of = h.running.as_ref().unwrap().controller().router().clone();
        let watching = stop.clone();
        let tables = tokio::spawn(async move {
            let mut samples = Vec::new();
            while !watching.load(Relaxed)
                && samples.len() < 200_000
                && std::time::Instant::now() < deadline
            {
                let at = now_ms();
                let table = table_of.table();
                let sample = match table.lookup(host) {
                    Some(route) => (
                        at,
                        route
                            .upstreams()
                            .iter()
                            .map(|u| u.instance.clone())
                            .collect(),
                        route.backend().held_until.is_some(),
                    ),
                    None => (at, Vec::new(), false),
                };
                drop(table);
                samples.push(sample);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            samples
        });
        UnderLoad {
            stop,
            clients,
            tables,
        }
    }

    /// Stops the load and checks it: every request answered 200; none sent after
    /// `detected_ms` was answered by one of `drifted`; no look at the table after
    /// `detected_ms` found one of `drifted` routed.
    async fn check(self, drifted: &[String], detected_ms: u64) -> LoadReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut answers = Vec::new();
        for client in self.clients {
            answers.extend(client.await.unwrap());
        }
        let failed: Vec<&Answer> = answers
            .iter()
            .filter(|(_, _, a)| !matches!(a, Ok((200, _))))
            .collect();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        let after: Vec<&str> = answers
            .iter()
            .filter(|(sent, _, _)| *sent > detected_ms)
            .filter_map(|(_, _, a)| a.as_ref().ok().map(|(_, body)| body.as_str()))
            .collect();
        let from_drifted: Vec<&&str> = after
            .iter()
            .filter(|id| drifted.iter().any(|d| d == **id))
            .collect();
        assert!(
            from_drifted.is_empty(),
            "answered by drifted instances after the detection: {from_drifted:?}"
        );
        let samples = self.tables.await.unwrap();
        for (at, routed, _) in samples.iter().filter(|(at, _, _)| *at > detected_ms) {
            assert!(
                !routed.iter().any(|r| drifted.contains(r)),
                "the table routed {routed:?} at {at}, after the detection at {detected_ms}"
            );
        }
        LoadReport {
            answers: answers.len(),
            after_detection: after.len(),
            held_looks: samples.iter().filter(|(_, _, held)| *held).count(),
            slowest_ms: answers
                .iter()
                .map(|(sent, answered, _)| answered.saturating_sub(*sent))
                .max()
                .unwrap_or(0),
        }
    }
}

/// Milliseconds since the epoch, as the store stamps events.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// When the drift of `app`'s tree was acted on: the event written once its instances were
/// out of the route table.
async fn detected_at(h: &Harness, app: &str) -> u64 {
    let events = h
        .client
        .get(&format!("/v1/apps/{app}/events"))
        .await
        .unwrap();
    events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["kind"] == "drift"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("take no more traffic"))
        })
        .and_then(|e| e["at_ms"].as_u64())
        .unwrap_or_else(|| panic!("no drift event: {events}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tampered_tree_is_detected_repaired_and_its_instances_replaced_under_load() {
    // Verification does not depend on the provider: with containers where possible.
    let isolation = if can_run() {
        Isolation::Runc
    } else {
        Isolation::None
    };
    let mut h = Harness::start_with(|cfg: &mut ServeConfig| {
        cfg.isolation = isolation;
        cfg.verify_interval = None;
    })
    .await;
    let d = h.deploy(&whoami_app(&h, "tamper", "")).await;
    assert_eq!(d["state"], "drained", "{d}");
    let status = h.client.get("/v1/status?app=tamper").await.unwrap();
    let env = &status["apps"][0]["envs"][0];
    let before = instance_ids(&h, "tamper").await;
    assert_eq!(env["attestation"]["state"], "verified", "{env}");
    assert_eq!(env["attestation"]["release"], 1);
    let rootfs_digest = env["attestation"]["rootfs_digest"].clone();
    assert!(rootfs_digest.as_str().unwrap().starts_with("sha256:"));

    let load = UnderLoad::start(&h, "tamper.localhost");
    eventually(Duration::from_secs(20), "load flowing", || async {
        let router = h.running.as_ref().unwrap().controller().router();
        router
            .env_stats(env["env"]["id"].as_str().unwrap())
            .answered
            >= 100
    })
    .await;

    // Tamper with the unpacked tree the instances run on.
    let mut files = Vec::new();
    find_files(&h.data_dir().join("images"), "app.py", &mut files);
    assert_eq!(files.len(), 1, "{files:?}");
    let mut text = std::fs::read_to_string(&files[0]).unwrap();
    text.push_str("\n# tampered\n");
    std::fs::write(&files[0], text).unwrap();

    let reports = h
        .client
        .post("/v1/verify", &serde_json::json!({ "app": "tamper" }))
        .await
        .unwrap();
    let report = &reports[0];
    assert_eq!(report["intact"], false, "{reports}");
    assert!(
        report["drift"]
            .as_str()
            .unwrap()
            .contains("modified /app.py"),
        "{reports}"
    );
    let mut replaced: Vec<String> = report["replaced"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap().to_string())
        .collect();
    replaced.sort();
    assert_eq!(replaced, before);

    // From now on only the new instances serve; the tree is clean again.
    let status = h.client.get("/v1/status?app=tamper").await.unwrap();
    let env = &status["apps"][0]["envs"][0];
    let after = instance_ids(&h, "tamper").await;
    assert_eq!(after.len(), 2, "{env}");
    assert!(after.iter().all(|id| !before.contains(id)), "{env}");
    assert_eq!(env["attestation"]["state"], "verified", "{env}");
    assert_eq!(env["attestation"]["rootfs_digest"], rootfs_digest);
    assert!(!std::fs::read_to_string(&files[0])
        .unwrap()
        .contains("tampered"));
    let again = h
        .client
        .post("/v1/verify", &serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(again[0]["intact"], true, "{again}");
    // The CLI: `molt verify` prints the table and exits 0 when intact.
    let out = molt_command(&h.data_dir(), &["verify", "tamper"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("intact") && text.contains("ROOTFS"), "{text}");
    let events = h.client.get("/v1/apps/tamper/events").await.unwrap();
    assert!(events.to_string().contains("drifted"), "{events}");
    let detected = detected_at(&h, "tamper").await;

    // Some more load on the new instances, then the verdict on all of it.
    let new_env = env["env"]["id"].as_str().unwrap().to_string();
    let router = h.running.as_ref().unwrap().controller().router().clone();
    let answered = router.env_stats(&new_env).answered;
    eventually(Duration::from_secs(20), "load after the repair", || async {
        router.env_stats(&new_env).answered > answered + 100
    })
    .await;
    let report = load.check(&before, detected).await;
    eprintln!(
        "served {} requests across the repair ({} sent after the drifted instances left the \
         table, none answered by one), none failed; {} looks at the table found the \
         environment held; the slowest request took {} ms ({isolation:?})",
        report.answers, report.after_detection, report.held_looks, report.slowest_ms
    );
    assert!(report.after_detection > 0);
    let data = stop_keeping_data(&mut h).await;
    if isolation == Isolation::Runc {
        assert_eq!(leftovers(&data), Vec::<String>::new());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn periodic_verification_finds_drift_by_itself_under_load() {
    let mut h = Harness::start_with(|cfg: &mut ServeConfig| {
        cfg.isolation = Isolation::None;
        cfg.verify_interval = Some(Duration::from_millis(200));
    })
    .await;
    let d = h.deploy(&whoami_app(&h, "watched", "")).await;
    assert_eq!(d["state"], "drained", "{d}");
    let before = instance_ids(&h, "watched").await;
    let load = UnderLoad::start(&h, "watched.localhost");
    let router = h.running.as_ref().unwrap().controller().router().clone();
    let env = d["env"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(20), "load flowing", || async {
        router.env_stats(&env).answered >= 100
    })
    .await;
    let mut files = Vec::new();
    find_files(&h.data_dir().join("images"), "app.py", &mut files);
    assert_eq!(files.len(), 1, "{files:?}");
    // An added file is drift too.
    let root = files[0].parent().unwrap();
    std::fs::write(root.join("backdoor.py"), "print('x')\n").unwrap();
    eventually(Duration::from_secs(20), "drift repaired", || async {
        let events = h.client.get("/v1/apps/watched/events").await.unwrap();
        events.to_string().contains("added /backdoor.py")
            && events.to_string().contains("(clean tree)")
    })
    .await;
    assert!(!root.join("backdoor.py").exists());
    let detected = detected_at(&h, "watched").await;
    eventually(
        Duration::from_secs(20),
        "the drifted instances stopped",
        || async {
            let now = instance_ids(&h, "watched").await;
            now.len() == 2 && now.iter().all(|id| !before.contains(id))
        },
    )
    .await;
    let answered = router.env_stats(&env).answered;
    eventually(Duration::from_secs(20), "load after the repair", || async {
        router.env_stats(&env).answered > answered + 100
    })
    .await;
    let report = load.check(&before, detected).await;
    eprintln!(
        "served {} requests ({} after the detection), none failed; the slowest took {} ms",
        report.answers, report.after_detection, report.slowest_ms
    );
    assert!(report.after_detection > 0);
    let (status, body) = h.get("watched.localhost", "/").await;
    assert_eq!(status, 200, "{body}");
    assert!(!before.contains(&body), "{body}");
    stop_keeping_data(&mut h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replacements_that_fail_release_the_hold_with_an_event() {
    let mut h = Harness::start_with(|cfg: &mut ServeConfig| {
        cfg.isolation = Isolation::None;
        cfg.verify_interval = None;
    })
    .await;
    let marker = h.tmp.path().join("fail");
    let env = format!("FAIL_IF_EXISTS = \"{}\"\n", marker.display());
    let d = h.deploy(&whoami_app(&h, "doomed", &env)).await;
    assert_eq!(d["state"], "drained", "{d}");
    let before = instance_ids(&h, "doomed").await;
    // From now on every new instance exits at once.
    std::fs::write(&marker, "").unwrap();
    let mut files = Vec::new();
    find_files(&h.data_dir().join("images"), "app.py", &mut files);
    assert_eq!(files.len(), 1, "{files:?}");
    std::fs::write(files[0].with_file_name("added.py"), "# tampered\n").unwrap();

    let verify = h
        .client
        .post("/v1/verify", &serde_json::json!({ "app": "doomed" }))
        .await;
    assert!(verify.is_err(), "{verify:?}");
    let events = h.client.get("/v1/apps/doomed/events").await.unwrap();
    assert!(
        events
            .to_string()
            .contains("could not replace the drifted instances"),
        "{events}"
    );
    // The hold is released: no instance, so a 503 at once (not a wait), and the drifted
    // instances are gone.
    let (status, body) = h.get("doomed.localhost", "/").await;
    assert_eq!(status, 503, "{body}");
    let now = instance_ids(&h, "doomed").await;
    assert!(now.iter().all(|id| !before.contains(id)), "{now:?}");

    // Once instances can start again, the reconcile loop brings the environment back.
    std::fs::remove_file(&marker).unwrap();
    eventually(
        Duration::from_secs(30),
        "a new healthy instance",
        || async {
            let (status, body) = h.get("doomed.localhost", "/").await;
            status == 200 && !before.contains(&body)
        },
    )
    .await;
    stop_keeping_data(&mut h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drifted_instances_found_at_restart_are_never_routed_and_are_replaced() {
    let mut h = Harness::start_with(|cfg: &mut ServeConfig| {
        cfg.isolation = Isolation::None;
        cfg.verify_interval = None;
    })
    .await;
    let d = h.deploy(&whoami_app(&h, "crashy", "")).await;
    assert_eq!(d["state"], "drained", "{d}");
    let before = instance_ids(&h, "crashy").await;
    let status = h.client.get("/v1/status?app=crashy").await.unwrap();
    let env = status["apps"][0]["envs"][0]["env"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // molt stops right after a repair marked the instances drifted (they keep running).
    let running = h.running.take().unwrap();
    let data = h.data_dir();
    running.shutdown(OnExit::KeepInstances).await.unwrap();
    let mut store = molt_store::Store::open(&data.join("state.db")).unwrap();
    let marked = store.mark_drifted(&env).unwrap();
    assert_eq!(marked.len(), before.len());
    drop(store);

    let mut cfg = ServeConfig::new(data.clone());
    cfg.api_addr = "127.0.0.1:0".parse().unwrap();
    cfg.router_addr = "127.0.0.1:0".parse().unwrap();
    cfg.stop_grace = Duration::from_secs(1);
    cfg.isolation = Isolation::None;
    cfg.verify_interval = None;
    let running = molt_server::start(cfg).await.unwrap();
    // The table rebuilt from the store routes none of them.
    let table = running.controller().router().table();
    let routed: Vec<String> = table
        .lookup("crashy.localhost")
        .map(|route| {
            route
                .upstreams()
                .iter()
                .map(|u| u.instance.clone())
                .collect()
        })
        .unwrap_or_default();
    drop(table);
    assert!(
        routed.iter().all(|id| !before.contains(id)),
        "{routed:?} {before:?}"
    );
    h.client = molt_cli::Client::new(&format!("http://{}", running.api_addr), &running.token);
    h.router = running.router_addr;
    h.running = Some(running);
    // The reconcile loop replaces them.
    eventually(Duration::from_secs(30), "replacements serving", || async {
        let now = instance_ids(&h, "crashy").await;
        let (status, body) = h.get("crashy.localhost", "/").await;
        now.len() == 2
            && now.iter().all(|id| !before.contains(id))
            && status == 200
            && !before.contains(&body)
    })
    .await;
    let owner = owner_of(&data);
    let left: Vec<(String, u32)> = processes_of(&owner)
        .into_iter()
        .filter(|(id, _)| before.contains(id))
        .collect();
    assert!(left.is_empty(), "drifted instances still running: {left:?}");
    stop_keeping_data(&mut h).await;
}

#[test]
fn the_binary_refuses_bad_network_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let serve = |extra: &[&str]| {
        let mut args = vec![
            "serve",
            "--api-listen",
            "127.0.0.1:0",
            "--router",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        molt_command(&data, &args).output().expect("molt runs")
    };
    let refused = |extra: &[&str], why: &str| {
        let out = serve(extra);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(why),
            "{why:?} missing: {}",
            text(&out)
        );
    };
    refused(
        &[
            "--network",
            "bridge",
            "--isolation",
            "none",
            "--bridge",
            "mtbflag",
        ],
        "--network bridge needs the runc isolation",
    );
    refused(
        &["--network", "bridge", "--bridge-subnet", "10.231.22.1/24"],
        "the network is 10.231.22.0/24",
    );
    refused(
        &["--network", "bridge", "--bridge", "a-name-far-too-long"],
        "not a valid interface name",
    );
    let out = serve(&["--network", "overlay"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!Path::new("/sys/class/net/mtbflag").exists());
}
