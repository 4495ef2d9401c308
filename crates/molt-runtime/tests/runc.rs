//! End-to-end tests with the real `runc` and a scratch root filesystem holding only busybox.
//!
//! They need root, `runc` and a static `/bin/busybox` (Debian's `busybox-static`); without them
//! each test is skipped, or fails in CI (molt-testkit). Bridge-mode tests each use a
//! bridge and a 10.x subnet of their own, so they run in parallel, and remove them at the end.
//! Whatever a test started is removed when its [`Sandbox`] is dropped, even after a panic.

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use molt_provider::{
    InstanceSpec, InstanceStatus, ProcessHandle, Provider, RootLayout, StopSignal,
};
use molt_runtime::{BridgeNetwork, RuncConfig, RuncProvider, NETNS_DIR};

const BUSYBOX: &str = "/bin/busybox";
const PAGE: &str = "hello from a read-only root\n";

/// A temp directory with a busybox root filesystem, a runc state root and a bundle root; in
/// bridge mode also a bridge of its own.
struct Sandbox {
    dir: tempfile::TempDir,
    owner: String,
    network: Option<BridgeNetwork>,
}

impl Sandbox {
    /// `None` (after saying so) when the machine cannot run containers.
    fn new(owner: &str) -> Option<Sandbox> {
        let can_run = molt_testkit::needs_root()
            && molt_testkit::needs_command("runc")
            && molt_testkit::needs_file(BUSYBOX, "busybox-static");
        if !can_run {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let rootfs = dir.path().join("rootfs");
        // What an image would hold: busybox, a page, and the usual (empty) mount points.
        for sub in ["bin", "www", "proc", "dev", "tmp", "run", "etc"] {
            fs::create_dir_all(rootfs.join(sub)).expect("rootfs dir");
        }
        fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copy busybox");
        fs::write(rootfs.join("www/index.html"), PAGE).expect("page");
        fs::set_permissions(&rootfs, fs::Permissions::from_mode(0o755)).expect("chmod");
        // World-writable, so only the read-only mount can refuse a write to it.
        fs::set_permissions(rootfs.join("etc"), fs::Permissions::from_mode(0o1777)).expect("chmod");
        Some(Sandbox {
            dir,
            owner: owner.to_string(),
            network: None,
        })
    }

    /// A sandbox whose instances get network namespaces on bridge `bridge` with `subnet`.
    fn bridged(owner: &str, bridge: &str, subnet: &str) -> Option<Sandbox> {
        let mut sandbox = Sandbox::new(owner)?;
        let network = BridgeNetwork::new(bridge, subnet.parse().expect("subnet")).expect("bridge");
        network.ensure().expect("bridge is created");
        // Idempotent: a second molt start finds it as it is.
        network.ensure().expect("bridge is kept");
        sandbox.network = Some(network);
        Some(sandbox)
    }

    /// The `n`th instance address of the bridge's subnet (`n` ≥ 2).
    fn address(&self, n: u8) -> Ipv4Addr {
        let network = self.network.as_ref().expect("bridge mode");
        let subnet = network.subnet().to_string();
        let base: Ipv4Addr = subnet.split('/').next().unwrap().parse().unwrap();
        Ipv4Addr::from(u32::from(base) + u32::from(n))
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    fn state_root(&self) -> PathBuf {
        self.dir.path().join("runc-state")
    }

    fn provider(&self) -> RuncProvider {
        let mut config = RuncConfig::new(
            &self.owner,
            self.state_root(),
            self.dir.path().join("bundles"),
        );
        config.memory_limit = Some(128 << 20);
        config.pids_limit = Some(64);
        config.network = self.network.clone();
        RuncProvider::new(config)
    }

    fn spec(&self, id: &str, args: &[&str]) -> InstanceSpec {
        let mut command = vec![BUSYBOX.to_string()];
        command.extend(args.iter().map(|a| a.to_string()));
        InstanceSpec {
            id: id.to_string(),
            command,
            cwd: self.rootfs(),
            env: vec![("PATH".to_string(), "/bin".to_string())],
            log_path: self.dir.path().join("logs").join(format!("{id}.log")),
            limits: Default::default(),
            layout: Default::default(),
            address: Ipv4Addr::LOCALHOST.into(),
            secret_files: Vec::new(),
            secret_env: Vec::new(),
        }
    }

    fn log(&self, id: &str) -> String {
        fs::read_to_string(self.dir.path().join("logs").join(format!("{id}.log")))
            .unwrap_or_default()
    }

    /// Ids of the containers runc lists in this sandbox's state root.
    fn runc_containers(&self) -> Vec<String> {
        let output = Command::new("runc")
            .arg("--root")
            .arg(self.state_root())
            .args(["list", "--quiet"])
            .output()
            .expect("runc list");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Checks that instance `id` left nothing: no container, no mount, no cgroup, no bundle.
    fn assert_nothing_left(&self, provider: &RuncProvider, id: &str) {
        let cid = provider.container_id(id);
        assert!(
            !self.runc_containers().contains(&cid),
            "{cid} still in runc list"
        );
        let bundle = provider.bundle_dir(id);
        assert!(!bundle.exists(), "{} still exists", bundle.display());
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let tmp = self.dir.path().to_string_lossy().into_owned();
        assert!(
            !mountinfo.lines().any(|line| line.contains(&tmp)),
            "a mount under {tmp} is left:\n{mountinfo}"
        );
        let netns = provider.netns_path(id);
        assert!(!netns.exists(), "{} is left", netns.display());
        assert!(
            !mountinfo.contains(&format!("{NETNS_DIR}/{cid} ")),
            "the namespace of {cid} is still mounted"
        );
        let veth = provider.veth_name(id);
        assert!(
            links_with_prefix(&veth).is_empty(),
            "veth {veth} of {id} is left"
        );
        for hierarchy in fs::read_dir("/sys/fs/cgroup")
            .expect("cgroup root")
            .flatten()
        {
            for leaf in [provider.cgroup_path(id), Path::new("/molt").join(id)] {
                let path = hierarchy
                    .path()
                    .join(leaf.strip_prefix("/").expect("absolute"));
                assert!(!path.exists(), "cgroup {} is left", path.display());
            }
        }
    }
}

impl Drop for Sandbox {
    /// Runs after a failed assertion too: no container, namespace or bridge of the test is
    /// left for the next run.
    fn drop(&mut self) {
        for cid in self.runc_containers() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(self.state_root())
                .args(["delete", "--force", &cid])
                .status();
        }
        let prefix = format!("{}-", self.owner);
        for entry in fs::read_dir(NETNS_DIR).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
        if let Some(network) = &self.network {
            let _ = Command::new("ip")
                .args(["link", "del", network.bridge()])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Names of the host's network interfaces starting with `prefix` (`ip -o link`).
fn links_with_prefix(prefix: &str) -> Vec<String> {
    let output = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .filter(|name| name.starts_with(prefix))
        .collect()
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// One HTTP/1.0 GET of `/`; the whole response.
fn get(port: u16) -> std::io::Result<String> {
    get_at(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

/// One HTTP/1.0 GET of `/` from `addr`; the whole response.
fn get_at(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// GETs `/` until it answers 200 (at most 5 s).
fn get_until_ok(port: u16) -> Option<String> {
    get_until_ok_at(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

/// GETs `/` from `addr` until it answers 200 (at most 5 s).
fn get_until_ok_at(addr: SocketAddr) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(response) = get_at(addr) {
            if response.starts_with("HTTP/1.") && response.contains(" 200 ") {
                return Some(response);
            }
        }
        sleep(Duration::from_millis(20));
    }
    None
}

/// Polls the status until it is no longer `Running` (at most `limit`).
fn wait_not_running(
    provider: &RuncProvider,
    id: &str,
    handle: ProcessHandle,
    limit: Duration,
) -> InstanceStatus {
    let deadline = Instant::now() + limit;
    loop {
        let status = provider.status(id, handle);
        if status != InstanceStatus::Running || Instant::now() >= deadline {
            return status;
        }
        sleep(Duration::from_millis(20));
    }
}

/// TERM, then KILL if it is still running after a second; then forget it.
fn stop(provider: &RuncProvider, id: &str, handle: ProcessHandle) {
    provider.signal(handle, StopSignal::Graceful).expect("TERM");
    if wait_not_running(provider, id, handle, Duration::from_secs(1)) == InstanceStatus::Running {
        provider.signal(handle, StopSignal::Force).expect("KILL");
    }
    let status = wait_not_running(provider, id, handle, Duration::from_secs(5));
    assert_ne!(status, InstanceStatus::Running, "{id} survived KILL");
    provider.forget(id);
}

#[test]
fn serves_http_and_is_adopted_and_scanned() {
    let Some(sandbox) = Sandbox::new("t-http") else {
        return;
    };
    let provider = sandbox.provider();
    assert_eq!(provider.isolation(), "container (runc)");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let spec = sandbox.spec("web-1", &["httpd", "-f", "-p", &listen, "-h", "/www"]);

    let started = Instant::now();
    let handle = provider.start(&spec).expect("start");
    let response = get_until_ok(port);
    let elapsed = started.elapsed();
    let response = response.unwrap_or_else(|| panic!("no answer; log:\n{}", sandbox.log("web-1")));
    eprintln!("start to first successful GET: {elapsed:?}");
    assert!(response.ends_with(PAGE), "{response}");
    assert_eq!(provider.status("web-1", handle), InstanceStatus::Running);

    // A second provider (molt after a restart) finds and adopts it.
    let again = sandbox.provider();
    assert_eq!(again.scan(), vec![("web-1".to_string(), handle)]);
    assert!(again.adopt("web-1", handle));
    assert!(!again.adopt("web-2", handle));
    let stale = ProcessHandle {
        pid: handle.pid,
        start_time: handle.start_time + 1,
    };
    assert!(!again.adopt("web-1", stale));
    // Another owner sees nothing.
    let other = RuncConfig::new("t-other", sandbox.state_root(), sandbox.dir.path());
    assert!(RuncProvider::new(other).scan().is_empty());

    // httpd as pid 1 has no TERM handler, so the kernel ignores TERM: KILL stops it.
    stop(&again, "web-1", handle);
    assert!(get(port).is_err(), "still answering after stop");
    assert_eq!(provider.status("web-1", handle), InstanceStatus::Gone);
    sandbox.assert_nothing_left(&provider, "web-1");
}

#[test]
fn root_is_read_only_and_namespaces_are_private() {
    let Some(sandbox) = Sandbox::new("t-ns") else {
        return;
    };
    let provider = sandbox.provider();
    let script = "echo x > /etc/x; echo rc=$?; \
        echo y > /tmp/y && echo tmp=$(cat /tmp/y); \
        echo pid=$$; echo host=$(hostname); echo uid=$(id -u); \
        echo procs=$(ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' ')";
    let spec = sandbox.spec("probe-7", &["sh", "-c", script]);
    let handle = provider.start(&spec).expect("start");
    let status = wait_not_running(&provider, "probe-7", handle, Duration::from_secs(5));
    assert!(
        matches!(status, InstanceStatus::Exited { .. }),
        "{status:?}"
    );
    let log = sandbox.log("probe-7");
    eprintln!("{log}");
    assert!(log.contains("Read-only file system"), "{log}");
    assert!(
        log.lines().any(|l| l.starts_with("rc=") && l != "rc=0"),
        "{log}"
    );
    assert!(!sandbox.rootfs().join("etc/x").exists());
    assert!(log.contains("tmp=y\n"), "{log}");
    assert!(log.contains("pid=1\n"), "{log}");
    assert!(log.contains("host=probe-7\n"), "{log}");
    assert!(log.contains("uid=65534\n"), "{log}");
    let procs_line = log
        .lines()
        .find_map(|l| l.strip_prefix("procs="))
        .expect("procs line");
    let pids: Vec<u32> = procs_line
        .split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect();
    assert!(pids.contains(&1), "{pids:?}");
    assert!(
        pids.iter().all(|p| *p < 32),
        "host processes visible: {pids:?}"
    );
    assert!(!pids.contains(&std::process::id()));

    provider.forget("probe-7");
    sandbox.assert_nothing_left(&provider, "probe-7");
}

#[test]
fn term_stops_an_instance_that_handles_it() {
    let Some(sandbox) = Sandbox::new("t-term") else {
        return;
    };
    let provider = sandbox.provider();
    let script = "trap 'echo got TERM; exit 0' TERM; echo ready; while true; do sleep 1; done";
    let handle = provider
        .start(&sandbox.spec("worker", &["sh", "-c", script]))
        .expect("start");
    assert_eq!(provider.status("worker", handle), InstanceStatus::Running);
    provider.signal(handle, StopSignal::Graceful).expect("TERM");
    let status = wait_not_running(&provider, "worker", handle, Duration::from_secs(5));
    assert!(
        matches!(status, InstanceStatus::Exited { .. }),
        "{status:?}"
    );
    assert!(sandbox.log("worker").contains("got TERM"));
    // Signalling what is gone is not an error.
    provider
        .signal(handle, StopSignal::Force)
        .expect("KILL after exit");
    provider.forget("worker");
    sandbox.assert_nothing_left(&provider, "worker");
}

#[test]
fn fifty_start_stop_cycles_leave_nothing_behind() {
    let Some(sandbox) = Sandbox::new("t-loop") else {
        return;
    };
    let provider = sandbox.provider();
    for round in 0..50 {
        let id = format!("loop-{}", round % 3);
        let mut spec = sandbox.spec(&id, &["sleep", "600"]);
        if round % 2 == 1 {
            // The host-system layout: the host's busybox, the image tree at /app.
            spec.layout = RootLayout::HostSystem;
            spec.command = vec![BUSYBOX.to_string(), "sleep".into(), "600".into()];
        }
        let handle = provider.start(&spec).expect("start");
        assert_eq!(provider.status(&id, handle), InstanceStatus::Running);
        stop(&provider, &id, handle);
        sandbox.assert_nothing_left(&provider, &id);
    }
    assert!(sandbox.runc_containers().is_empty());
    assert_eq!(processes_marked("t-loop"), Vec::<u32>::new());
}

#[test]
fn host_system_layout_confines_an_app_folder() {
    let Some(sandbox) = Sandbox::new("t-host") else {
        return;
    };
    let provider = sandbox.provider();
    let script = "echo cwd=$(pwd); ls /app/www/index.html && echo app=yes; \
        echo x > /app/new 2>/dev/null || echo app-ro=yes; \
        echo y > /usr/new 2>/dev/null || echo usr-ro=yes; \
        echo shadow=[$(cat /etc/shadow 2>&1)]; \
        test -e /home && echo home=yes || echo home=no; \
        busybox unshare -U true 2>/dev/null && echo unshare=yes || echo unshare=no";
    let mut spec = sandbox.spec("host-1", &["sh", "-c", script]);
    spec.layout = RootLayout::HostSystem;
    let handle = provider.start(&spec).expect("start");
    let status = wait_not_running(&provider, "host-1", handle, Duration::from_secs(5));
    assert!(
        matches!(status, InstanceStatus::Exited { .. }),
        "{status:?}"
    );
    let log = sandbox.log("host-1");
    eprintln!("{log}");
    for want in [
        "cwd=/app\n",
        "app=yes\n",
        "app-ro=yes\n",
        "usr-ro=yes\n",
        "shadow=[]\n",
        "home=no\n",
        "unshare=no\n",
    ] {
        assert!(log.contains(want), "{want:?} missing from:\n{log}");
    }
    assert!(!sandbox.rootfs().join("new").exists());
    provider.forget("host-1");
    sandbox.assert_nothing_left(&provider, "host-1");
}

#[test]
fn a_memory_limit_kill_is_reported_as_oom() {
    let Some(sandbox) = Sandbox::new("t-oom") else {
        return;
    };
    let provider = sandbox.provider();
    let mut spec = sandbox.spec(
        "hog",
        &["sh", "-c", "x=$(yes | head -c 200000000); echo survived"],
    );
    spec.limits.memory = Some(16 << 20);
    let handle = provider.start(&spec).expect("start");
    let status = wait_not_running(&provider, "hog", handle, Duration::from_secs(30));
    assert!(
        matches!(status, InstanceStatus::Exited { .. }),
        "{status:?}"
    );
    let reason = provider.exit_reason("hog", handle).expect("an exit reason");
    assert!(reason.contains("out of memory"), "{reason}");
    assert!(reason.contains("16 MiB"), "{reason}");
    assert!(!sandbox.log("hog").contains("survived"));
    provider.forget("hog");
    sandbox.assert_nothing_left(&provider, "hog");
}

#[test]
fn instances_get_their_open_files_limit() {
    let Some(sandbox) = Sandbox::new("t-nofile") else {
        return;
    };
    let provider = sandbox.provider();
    let mut spec = sandbox.spec("files", &["sh", "-c", "ulimit -n; ulimit -Hn"]);
    spec.limits.nofile = Some(2048);
    let handle = provider.start(&spec).expect("start");
    wait_not_running(&provider, "files", handle, Duration::from_secs(30));
    let log = sandbox.log("files");
    assert_eq!(
        log.split_whitespace().collect::<Vec<_>>(),
        ["2048", "2048"],
        "{log}"
    );
    provider.forget("files");
    sandbox.assert_nothing_left(&provider, "files");
}

/// Live processes whose environment carries `MOLT_OWNER=<owner>`.
fn processes_marked(owner: &str) -> Vec<u32> {
    let marker = format!("MOLT_OWNER={owner}");
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn bad_starts_leave_nothing_behind() {
    let Some(sandbox) = Sandbox::new("t-bad") else {
        return;
    };
    let provider = sandbox.provider();
    let mut missing = sandbox.spec("bad-1", &[]);
    missing.command = vec!["/bin/nope".to_string()];
    let err = provider.start(&missing).expect_err("missing program");
    assert!(err.to_string().contains("/bin/nope"), "{err}");
    sandbox.assert_nothing_left(&provider, "bad-1");

    // Found by runc's PATH lookup inside the container, and missing there too.
    let mut unknown = sandbox.spec("bad-2", &[]);
    unknown.command = vec!["nope".to_string()];
    let err = provider.start(&unknown).expect_err("unknown program");
    eprintln!("{err}");
    sandbox.assert_nothing_left(&provider, "bad-2");

    let mut empty = sandbox.spec("bad-3", &[]);
    empty.command.clear();
    assert!(provider.start(&empty).is_err());
}

/// Answers every connection to `listener` with a 200 and `body`, on a thread, until `count`
/// connections were served (the test never waits for it).
fn answer(listener: TcpListener, body: &'static str, count: usize) {
    std::thread::spawn(move || {
        for stream in listener.incoming().take(count) {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 1024];
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = stream.read(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
}

#[test]
fn a_program_that_exits_at_once_keeps_its_identity() {
    let Some(sandbox) = Sandbox::new("t-instant") else {
        return;
    };
    let provider = sandbox.provider();
    let handle = provider
        .start(&sandbox.spec("instant", &["true"]))
        .expect("start");
    assert!(handle.pid > 0 && handle.start_time > 0, "{handle:?}");
    let status = wait_not_running(&provider, "instant", handle, Duration::from_secs(5));
    assert!(
        matches!(status, InstanceStatus::Exited { .. }),
        "{status:?}"
    );
    provider.forget("instant");
    sandbox.assert_nothing_left(&provider, "instant");
}

#[test]
fn bridge_mode_serves_on_its_own_address_and_sees_only_the_host_gateway() {
    let Some(sandbox) = Sandbox::bridged("t-br-iso", "mtbiso", "10.231.7.0/24") else {
        return;
    };
    let provider = sandbox.provider();
    let gateway = sandbox.network.as_ref().unwrap().subnet().gateway();
    // A service on the host's loopback, and one on the host's bridge address.
    let loopback = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let loopback_port = loopback.local_addr().unwrap().port();
    answer(loopback, "host loopback\n", 4);
    let on_bridge = TcpListener::bind((gateway, 0)).expect("bind on the bridge");
    let bridge_port = on_bridge.local_addr().unwrap().port();
    answer(on_bridge, "host bridge\n", 4);

    let web_ip = sandbox.address(2);
    let mut web = sandbox.spec(
        "web",
        &["httpd", "-f", "-p", &format!("{web_ip}:8080"), "-h", "/www"],
    );
    web.address = IpAddr::V4(web_ip);
    let web_handle = provider.start(&web).expect("start web");
    let response = get_until_ok_at(SocketAddr::from((web_ip, 8080)))
        .unwrap_or_else(|| panic!("no answer from {web_ip}; log:\n{}", sandbox.log("web")));
    assert!(response.ends_with(PAGE), "{response}");

    // A neighbour probes what it can reach: the host's bridge address only.
    let probe_ip = sandbox.address(3);
    // busybox's wget crashes in a scratch root (static glibc looks for NSS); nc does not.
    let fetch = |name: &str, ip: Ipv4Addr, port: u16| {
        format!(
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {ip} {port} 2>&1 | grep -q ' 200 ' \\
             && echo {name}=reached || echo {name}=blocked; "
        )
    };
    let script = [
        fetch("gateway", gateway, bridge_port),
        fetch("host_loopback", Ipv4Addr::LOCALHOST, loopback_port),
        fetch("host_loopback_via_gateway", gateway, loopback_port),
        fetch("neighbour", web_ip, 8080),
        "echo done".to_string(),
    ]
    .concat();
    let mut probe = sandbox.spec("probe", &["sh", "-c", &script]);
    probe.address = IpAddr::V4(probe_ip);
    let probe_handle = provider.start(&probe).expect("start probe");
    let status = wait_not_running(&provider, "probe", probe_handle, Duration::from_secs(30));
    assert!(
        matches!(status, InstanceStatus::Exited { .. }),
        "{status:?}"
    );
    let log = sandbox.log("probe");
    eprintln!("{log}");
    for want in [
        "gateway=reached\n",
        "host_loopback=blocked\n",
        "host_loopback_via_gateway=blocked\n",
        "neighbour=blocked\n",
        "done\n",
    ] {
        assert!(log.contains(want), "{want:?} missing from:\n{log}");
    }

    // An address outside the subnet is refused before anything is made.
    let mut stray = sandbox.spec("stray", &["true"]);
    stray.address = IpAddr::V4(Ipv4Addr::new(10, 99, 0, 2));
    let err = provider
        .start(&stray)
        .expect_err("address outside the subnet");
    assert!(err.to_string().contains("10.231.7.0/24"), "{err}");
    sandbox.assert_nothing_left(&provider, "stray");

    provider.forget("probe");
    stop(&provider, "web", web_handle);
    assert!(get_at(SocketAddr::from((web_ip, 8080))).is_err());
    for id in ["web", "probe"] {
        sandbox.assert_nothing_left(&provider, id);
    }
    assert_eq!(
        links_with_prefix(&provider.veth_prefix()),
        Vec::<String>::new()
    );
}

#[test]
fn fifty_start_stop_cycles_in_bridge_mode_leave_nothing_behind() {
    let Some(sandbox) = Sandbox::bridged("t-br-loop", "mtbloop", "10.231.8.0/24") else {
        return;
    };
    let provider = sandbox.provider();
    for round in 0..50u8 {
        let id = format!("loop-{}", round % 3);
        let ip = sandbox.address(2 + round % 3);
        let mut spec = sandbox.spec(
            &id,
            &["httpd", "-f", "-p", &format!("{ip}:8080"), "-h", "/www"],
        );
        spec.address = IpAddr::V4(ip);
        let handle = provider.start(&spec).expect("start");
        if round % 10 == 0 {
            let response = get_until_ok_at(SocketAddr::from((ip, 8080)));
            assert!(response.is_some(), "round {round}: {ip} does not answer");
        }
        assert_eq!(provider.status(&id, handle), InstanceStatus::Running);
        // httpd as pid 1 ignores TERM: KILL at once.
        provider.signal(handle, StopSignal::Force).expect("KILL");
        let status = wait_not_running(&provider, &id, handle, Duration::from_secs(5));
        assert_ne!(status, InstanceStatus::Running, "{id} survived KILL");
        provider.forget(&id);
        sandbox.assert_nothing_left(&provider, &id);
    }
    assert!(sandbox.runc_containers().is_empty());
    assert_eq!(processes_marked("t-br-loop"), Vec::<u32>::new());
    assert_eq!(
        links_with_prefix(&provider.veth_prefix()),
        Vec::<String>::new()
    );
}

#[test]
fn sweep_removes_the_network_of_a_container_that_is_gone() {
    let Some(sandbox) = Sandbox::bridged("t-br-sweep", "mtbsweep", "10.231.9.0/24") else {
        return;
    };
    let provider = sandbox.provider();
    let mut spec = sandbox.spec("lost", &["sleep", "600"]);
    spec.address = IpAddr::V4(sandbox.address(2));
    provider.start(&spec).expect("start");
    assert!(provider.netns_path("lost").exists());
    assert_eq!(
        provider.sweep(),
        Vec::<String>::new(),
        "a live container's network is kept"
    );
    // The container disappears behind molt's back (as if molt had been down).
    let status = Command::new("runc")
        .arg("--root")
        .arg(sandbox.state_root())
        .args(["delete", "--force", &provider.container_id("lost")])
        .status()
        .expect("runc delete");
    assert!(status.success());
    let removed = provider.sweep();
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert!(!provider.netns_path("lost").exists());
    assert!(links_with_prefix(&provider.veth_prefix()).is_empty());
    provider.forget("lost");
    sandbox.assert_nothing_left(&provider, "lost");
}

#[test]
fn sweep_stops_a_container_whose_data_directory_was_deleted() {
    let Some(doomed) = Sandbox::new("t-doomed") else {
        return;
    };
    let Some(survivor) = Sandbox::new("t-survivor") else {
        return;
    };
    let provider = doomed.provider();
    let handle = provider
        .start(&doomed.spec("left", &["sleep", "600"]))
        .expect("start");
    let kept = survivor.provider();
    let kept_handle = kept
        .start(&survivor.spec("kept", &["sleep", "600"]))
        .expect("start");
    // The data directory goes away under the running container: runc state, bundle and all.
    for sub in ["runc-state", "bundles", "rootfs"] {
        fs::remove_dir_all(doomed.dir.path().join(sub)).expect("remove");
    }
    let removed = kept.sweep();
    let cid = provider.container_id("left");
    assert!(removed.iter().any(|r| r.contains(&cid)), "{removed:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{}", handle.pid)).exists() && Instant::now() < deadline {
        sleep(Duration::from_millis(20));
    }
    assert!(
        !Path::new(&format!("/proc/{}", handle.pid)).exists(),
        "the abandoned container still runs"
    );
    for hierarchy in fs::read_dir("/sys/fs/cgroup").expect("cgroups").flatten() {
        let leaf = hierarchy.path().join("molt").join(&cid);
        assert!(!leaf.exists(), "{} is left", leaf.display());
    }
    // A container whose data directory exists is not touched.
    assert_eq!(kept.status("kept", kept_handle), InstanceStatus::Running);
    kept.signal(kept_handle, StopSignal::Force).expect("KILL");
    wait_not_running(&kept, "kept", kept_handle, Duration::from_secs(5));
    kept.forget("kept");
    survivor.assert_nothing_left(&kept, "kept");
}
