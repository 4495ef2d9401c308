//! runc instances under molt's init (this very `molt` binary, mounted read-only at `/.molt`
//! with its loader and libraries), in an image that is its own root holding nothing but a
//! static busybox (`RootLayout::OwnRoot`), and in the host-system layout.
//!
//! They need root, `runc` and `/bin/busybox` (Debian's `busybox-static`): skipped on a laptop
//! without them, a failure in CI (molt-testkit). Every wait is bounded; the assertions are on
//! how instances ended, never on how long they took.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use molt_provider::{
    InstanceSpec, InstanceStatus, ProcessHandle, Provider, RootLayout, StopSignal,
};
use molt_runtime::{InstanceInit, RuncConfig, RuncProvider};

const BUSYBOX: &str = "/bin/busybox";
const PAGE: &str = "served under molt's init\n";
/// Instances of the stop test.
const INSTANCES: usize = 50;
/// Threads starting and stopping them.
const WORKERS: usize = 8;
/// Longest wait for an instance to answer, or to end after a signal.
const PATIENCE: Duration = Duration::from_secs(60);
/// SIGTERM: the init exits with 128 + 15, which the provider reports as the signal (were the
/// init itself killed by SIGKILL instead, it would be 9).
const SIGTERM: i32 = 15;

/// A busybox root filesystem, runc state and bundles in a temp dir; removes whatever is left
/// when dropped (after a failed assertion too).
struct Sandbox {
    dir: tempfile::TempDir,
    owner: String,
}

impl Sandbox {
    fn new(owner: &str) -> Option<Sandbox> {
        let can_run = molt_testkit::needs_root()
            && molt_testkit::needs_command("runc")
            && molt_testkit::needs_file(BUSYBOX, "busybox-static");
        if !can_run {
            return None;
        }
        RuncProvider::become_subreaper().expect("subreaper");
        let dir = tempfile::tempdir().expect("temp dir");
        let rootfs = dir.path().join("rootfs");
        // An image that is its own root: busybox and a page, no libc, no /.molt.
        for sub in ["bin", "www"] {
            fs::create_dir_all(rootfs.join(sub)).expect("rootfs dir");
        }
        fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copy busybox");
        fs::write(rootfs.join("www/index.html"), PAGE).expect("page");
        fs::set_permissions(&rootfs, fs::Permissions::from_mode(0o755)).expect("chmod");
        Some(Sandbox {
            dir,
            owner: owner.to_string(),
        })
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
        config.memory_limit = Some(64 << 20);
        config.pids_limit = Some(32);
        config.init =
            Some(InstanceInit::resolve(Path::new(env!("CARGO_BIN_EXE_molt"))).expect("the init"));
        RuncProvider::new(config)
    }

    fn spec(&self, id: &str, args: &[&str]) -> InstanceSpec {
        let mut command = vec![BUSYBOX.to_string()];
        command.extend(args.iter().map(|a| a.to_string()));
        InstanceSpec {
            id: id.to_string(),
            command,
            cwd: self.dir.path().join("rootfs"),
            env: vec![("PATH".to_string(), "/bin".to_string())],
            log_path: self.log_path(id),
            limits: Default::default(),
            layout: RootLayout::OwnRoot,
            address: std::net::Ipv4Addr::LOCALHOST.into(),
            secret_files: Vec::new(),
            secret_env: Vec::new(),
        }
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.dir.path().join("logs").join(format!("{id}.log"))
    }

    fn log(&self, id: &str) -> String {
        fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

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

    /// Live processes whose environment carries this sandbox's owner marker.
    fn processes(&self) -> Vec<u32> {
        let marker = format!("MOLT_OWNER={}", self.owner);
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
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for cid in self.runc_containers() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(self.state_root())
                .args(["delete", "--force", &cid])
                .status();
        }
    }
}

/// Ports free on 127.0.0.1, all held while they are picked so that none repeats.
fn free_ports(count: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("address").port())
        .collect()
}

/// One GET of `/`; the whole response.
fn get(port: u16) -> std::io::Result<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// Polls until `port` answers with the page (at most [`PATIENCE`]).
fn answers(port: u16) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if get(port).is_ok_and(|r| r.ends_with(PAGE)) {
            return true;
        }
        sleep(Duration::from_millis(20));
    }
    false
}

/// Polls the status until it is no longer `Running` (at most [`PATIENCE`]).
fn ended(provider: &RuncProvider, id: &str, handle: ProcessHandle) -> InstanceStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = provider.status(id, handle);
        if status != InstanceStatus::Running || Instant::now() >= deadline {
            return status;
        }
        sleep(Duration::from_millis(20));
    }
}

/// Runs `work(i)` for every `i` in `0..count` on [`WORKERS`] threads.
fn in_parallel<T: Send>(count: usize, work: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let results = Mutex::new((0..count).map(|_| None).collect::<Vec<Option<T>>>());
    std::thread::scope(|scope| {
        for _ in 0..WORKERS {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return;
                }
                let result = work(i);
                results.lock().unwrap()[i] = Some(result);
            });
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("every item was worked on"))
        .collect()
}

#[test]
fn fifty_httpd_instances_without_a_term_handler_all_stop_on_sigterm() {
    let Some(sandbox) = Sandbox::new("t-init50") else {
        return;
    };
    let provider = sandbox.provider();
    let ports = free_ports(INSTANCES);
    let id = |i: usize| format!("httpd-{i}");

    // busybox httpd installs no SIGTERM handler: as PID 1 it would ignore SIGTERM.
    let handles = in_parallel(INSTANCES, |i| {
        let listen = format!("127.0.0.1:{}", ports[i]);
        let spec = sandbox.spec(&id(i), &["httpd", "-f", "-p", &listen, "-h", "/www"]);
        let handle = provider
            .start(&spec)
            .unwrap_or_else(|e| panic!("start {}: {e}", id(i)));
        assert!(
            answers(ports[i]),
            "{} never answered; log:\n{}",
            id(i),
            sandbox.log(&id(i))
        );
        handle
    });

    // SIGTERM only, never SIGKILL: each must end by the SIGTERM its init forwarded.
    let endings = in_parallel(INSTANCES, |i| {
        provider
            .signal(handles[i], StopSignal::Graceful)
            .expect("SIGTERM");
        ended(&provider, &id(i), handles[i])
    });
    for (i, ending) in endings.iter().enumerate() {
        assert_eq!(
            *ending,
            InstanceStatus::Exited {
                code: None,
                signal: Some(SIGTERM)
            },
            "{} did not end by SIGTERM; log:\n{}",
            id(i),
            sandbox.log(&id(i))
        );
    }

    in_parallel(INSTANCES, |i| provider.forget(&id(i)));
    assert_eq!(sandbox.runc_containers(), Vec::<String>::new());
    assert_eq!(sandbox.processes(), Vec::<u32>::new());
    for (i, port) in ports.iter().enumerate() {
        let bundle = provider.bundle_dir(&id(i));
        assert!(!bundle.exists(), "{} is left", bundle.display());
        assert!(get(*port).is_err(), "{} still answers", id(i));
    }
}

#[test]
fn the_init_is_pid_1_in_both_layouts() {
    let Some(sandbox) = Sandbox::new("t-init-pid") else {
        return;
    };
    let provider = sandbox.provider();
    let script = "echo pid=$$; echo init=$(tr '\\0' ' ' < /proc/1/cmdline); \
                  (sleep 0.1 &); sleep 1; echo zombies=$(grep -l '^State:.*Z' /proc/[0-9]*/status | wc -l)";
    for (id, layout) in [
        ("own-root", RootLayout::OwnRoot),
        ("host-system", RootLayout::HostSystem),
    ] {
        let mut spec = sandbox.spec(id, &["sh", "-c", script]);
        spec.layout = layout;
        let handle = provider.start(&spec).expect("start");
        let status = ended(&provider, id, handle);
        let log = sandbox.log(id);
        assert_eq!(
            status,
            InstanceStatus::Exited {
                code: Some(0),
                signal: None
            },
            "{id}: {log}"
        );
        // The init is PID 1, the program is not (runc's own threads took the pids between).
        assert!(
            log.contains("pid=") && !log.contains("pid=1\n"),
            "{id}: {log}"
        );
        assert!(log.contains("/.molt/molt instance-init -- "), "{id}: {log}");
        // The orphaned sleep was reaped by the init before the program looked.
        assert!(log.contains("zombies=0\n"), "{id}: {log}");
        provider.forget(id);
        assert!(!provider.bundle_dir(id).exists());
    }
    assert_eq!(sandbox.runc_containers(), Vec::<String>::new());
}
