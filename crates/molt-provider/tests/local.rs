//! The local provider against real processes (`sh`, `sleep`), with every process group killed
//! on the way out even when an assertion fails.

use std::cell::RefCell;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use molt_provider::procfs::ProcStat;
use molt_provider::{
    InstanceSpec, InstanceStatus, LocalProvider, ProcessHandle, Provider, ProviderError, StopSignal,
};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// A temp dir, a provider with an owner unique to the test, and a guard over what it started.
struct Harness {
    dir: tempfile::TempDir,
    owner: String,
    provider: LocalProvider,
    started: RefCell<Vec<ProcessHandle>>,
}

impl Harness {
    fn new(test: &str) -> Harness {
        let owner = format!("molt-test-{}-{test}", std::process::id());
        Harness {
            dir: tempfile::tempdir().unwrap(),
            provider: LocalProvider::new(owner.clone()),
            owner,
            started: RefCell::new(Vec::new()),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn spec(&self, id: &str, argv: &[&str]) -> InstanceSpec {
        InstanceSpec {
            id: id.to_string(),
            command: argv.iter().map(|s| s.to_string()).collect(),
            cwd: self.path().to_path_buf(),
            env: vec![("PATH".to_string(), "/usr/bin:/bin".to_string())],
            log_path: self.path().join("logs").join(format!("{id}.log")),
            limits: Default::default(),
            layout: Default::default(),
            address: std::net::Ipv4Addr::LOCALHOST.into(),
            secret_files: Vec::new(),
            secret_env: Vec::new(),
        }
    }

    fn start(&self, spec: &InstanceSpec) -> ProcessHandle {
        let handle = self.provider.start(spec).unwrap();
        self.started.borrow_mut().push(handle);
        handle
    }

    fn log(&self, id: &str) -> String {
        fs::read_to_string(self.path().join("logs").join(format!("{id}.log"))).unwrap()
    }

    /// Polls until the instance is no longer running; panics after 5 s.
    fn wait_exit(
        &self,
        provider: &LocalProvider,
        id: &str,
        handle: ProcessHandle,
    ) -> InstanceStatus {
        let mut status = provider.status(id, handle);
        let done = wait_until(Duration::from_secs(5), || {
            status = provider.status(id, handle);
            status != InstanceStatus::Running
        });
        assert!(done, "{id} still running after 5 s");
        status
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for handle in self.started.borrow().iter() {
            let _ = killpg(Pid::from_raw(handle.pid as i32), Signal::SIGKILL);
        }
    }
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Live (non-zombie) members of process group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let mut members = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Some(stat) = ProcStat::read(pid) else {
            continue;
        };
        if !stat.is_zombie() && stat.pgrp == i64::from(pgid) {
            members.push(pid);
        }
    }
    members
}

#[test]
fn names_itself() {
    let provider = LocalProvider::new("x");
    assert_eq!(provider.name(), "local");
    assert_eq!(provider.isolation(), "none");
}

#[test]
fn exit_code_and_signal_are_reported() {
    let h = Harness::new("exit");
    let ok = h.start(&h.spec("ok", &["sh", "-c", "exit 0"]));
    let three = h.start(&h.spec("three", &["sh", "-c", "exit 3"]));
    let killed = h.start(&h.spec("killed", &["sh", "-c", "kill -9 $$"]));
    assert_eq!(
        h.wait_exit(&h.provider, "ok", ok),
        InstanceStatus::Exited {
            code: Some(0),
            signal: None
        }
    );
    assert_eq!(
        h.wait_exit(&h.provider, "three", three),
        InstanceStatus::Exited {
            code: Some(3),
            signal: None
        }
    );
    assert_eq!(
        h.wait_exit(&h.provider, "killed", killed),
        InstanceStatus::Exited {
            code: None,
            signal: Some(9)
        }
    );
    // The exit status stays available until forgotten.
    assert_eq!(
        h.provider.status("three", three),
        InstanceStatus::Exited {
            code: Some(3),
            signal: None
        }
    );
    h.provider.forget("three");
    assert_eq!(h.provider.status("three", three), InstanceStatus::Gone);
}

#[test]
fn running_instance_reports_running() {
    let h = Harness::new("running");
    let handle = h.start(&h.spec("sleeper", &["sleep", "30"]));
    assert_eq!(
        h.provider.status("sleeper", handle),
        InstanceStatus::Running
    );
    assert!(handle.start_time > 0);
    h.provider.signal(handle, StopSignal::Force).unwrap();
    assert_eq!(
        h.wait_exit(&h.provider, "sleeper", handle),
        InstanceStatus::Exited {
            code: None,
            signal: Some(9)
        }
    );
}

#[test]
fn log_gets_stdout_and_stderr_appended() {
    let h = Harness::new("log");
    let spec = h.spec("talker", &["sh", "-c", "echo to-out; echo to-err >&2"]);
    let first = h.start(&spec);
    h.wait_exit(&h.provider, "talker", first);
    let second = h.start(&spec);
    h.wait_exit(&h.provider, "talker", second);
    let log = h.log("talker");
    assert_eq!(log.matches("to-out\n").count(), 2, "{log}");
    assert_eq!(log.matches("to-err\n").count(), 2, "{log}");
}

#[test]
fn environment_is_exactly_the_spec_plus_markers() {
    let h = Harness::new("env");
    let mut spec = h.spec(
        "env",
        &[
            "sh",
            "-c",
            "echo \"$FOO|$MOLT_INSTANCE|$MOLT_OWNER|${HOME-unset}|$PWD\"",
        ],
    );
    spec.env.push(("FOO".to_string(), "bar baz".to_string()));
    spec.env
        .push(("MOLT_OWNER".to_string(), "spoofed".to_string()));
    let handle = h.start(&spec);
    h.wait_exit(&h.provider, "env", handle);
    let cwd = fs::canonicalize(h.path()).unwrap();
    let log = h.log("env");
    let expected = format!("bar baz|env|{}|unset|{}\n", h.owner, cwd.display());
    assert!(
        log == expected || log == format!("bar baz|env|{}|unset|{}\n", h.owner, h.path().display()),
        "{log:?} != {expected:?}"
    );
}

#[test]
fn missing_commands_say_where_they_looked() {
    let h = Harness::new("missing");
    match h.provider.start(&h.spec("a", &["no-such-program-molt"])) {
        Err(ProviderError::CommandNotFound { command, searched }) => {
            assert_eq!(command, "no-such-program-molt");
            assert!(searched.contains("/usr/bin:/bin"), "{searched}");
        }
        other => panic!("expected CommandNotFound, got {other:?}"),
    }
    match h.provider.start(&h.spec("b", &["./bin/missing.sh"])) {
        Err(ProviderError::CommandNotFound { searched, .. }) => {
            assert!(
                searched.starts_with(&h.path().display().to_string()),
                "{searched}"
            );
        }
        other => panic!("expected CommandNotFound, got {other:?}"),
    }
    assert!(matches!(
        h.provider.start(&h.spec("c", &[])),
        Err(ProviderError::EmptyCommand { .. })
    ));
    let script = h.path().join("plain.sh");
    fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    match h.provider.start(&h.spec("d", &["./plain.sh"])) {
        Err(ProviderError::NotExecutable { path }) => assert_eq!(path, h.path().join("./plain.sh")),
        other => panic!("expected NotExecutable, got {other:?}"),
    }
}

#[test]
fn relative_and_path_commands_resolve() {
    let h = Harness::new("resolve");
    let write_script = |rel: &str, text: &str| {
        let path = h.path().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, format!("#!/bin/sh\necho {text} \"$@\"\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    };
    write_script("bin/hello.sh", "relative");
    write_script("tools/mytool", "from-path");

    let relative = h.start(&h.spec("rel", &["bin/hello.sh", "arg"]));
    h.wait_exit(&h.provider, "rel", relative);
    assert_eq!(h.log("rel"), "relative arg\n");

    let mut spec = h.spec("path", &["mytool"]);
    spec.env = vec![("PATH".to_string(), "tools:/usr/bin:/bin".to_string())];
    let via_path = h.start(&spec);
    h.wait_exit(&h.provider, "path", via_path);
    assert_eq!(h.log("path"), "from-path\n");
}

#[test]
fn graceful_stop_reaches_a_process_that_handles_term() {
    let h = Harness::new("graceful");
    let script = "trap 'echo bye; exit 0' TERM; echo ready; while :; do sleep 0.05; done";
    let handle = h.start(&h.spec("polite", &["sh", "-c", script]));
    assert!(wait_until(Duration::from_secs(5), || h
        .log("polite")
        .contains("ready")));
    h.provider.signal(handle, StopSignal::Graceful).unwrap();
    assert_eq!(
        h.wait_exit(&h.provider, "polite", handle),
        InstanceStatus::Exited {
            code: Some(0),
            signal: None
        }
    );
    assert!(h.log("polite").contains("bye"));
    assert!(wait_until(Duration::from_secs(5), || group_members(
        handle.pid
    )
    .is_empty()));
    // Signalling an instance that is gone is fine.
    h.provider.signal(handle, StopSignal::Graceful).unwrap();
}

#[test]
fn force_kills_the_whole_group_even_when_term_is_ignored() {
    let h = Harness::new("force");
    let handle = h.start(&h.spec(
        "stubborn",
        &[
            "sh",
            "-c",
            "trap '' TERM; echo ready; sleep 30; echo unreachable",
        ],
    ));
    assert!(wait_until(Duration::from_secs(5), || group_members(
        handle.pid
    )
    .len()
        == 2));
    assert!(h.log("stubborn").contains("ready"));

    h.provider.signal(handle, StopSignal::Graceful).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        h.provider.status("stubborn", handle),
        InstanceStatus::Running
    );
    assert_eq!(group_members(handle.pid).len(), 2, "sleep ignores TERM too");

    h.provider.signal(handle, StopSignal::Force).unwrap();
    assert_eq!(
        h.wait_exit(&h.provider, "stubborn", handle),
        InstanceStatus::Exited {
            code: None,
            signal: Some(9)
        }
    );
    assert!(
        wait_until(Duration::from_secs(5), || group_members(handle.pid)
            .is_empty()),
        "the sleep child survived"
    );
}

#[test]
fn a_restarted_provider_adopts_and_scans_live_instances() {
    let h = Harness::new("adopt");
    let handle = h.start(&h.spec("web-1", &["sh", "-c", "sleep 30 & wait"]));
    assert!(wait_until(Duration::from_secs(5), || group_members(
        handle.pid
    )
    .len()
        == 2));

    // A new provider with the same owner stands for molt after a restart.
    let restarted = LocalProvider::new(h.owner.clone());
    assert!(restarted.adopt("web-1", handle));
    assert!(!restarted.adopt("web-2", handle), "instance id must match");
    let stale = ProcessHandle {
        start_time: handle.start_time + 1,
        ..handle
    };
    assert!(!restarted.adopt("web-1", stale), "start time must match");
    assert_eq!(restarted.status("web-1", handle), InstanceStatus::Running);
    assert_eq!(restarted.status("web-1", stale), InstanceStatus::Gone);
    // Only the group leader is reported, not the sleep it spawned.
    assert_eq!(restarted.scan(), vec![("web-1".to_string(), handle)]);

    let stranger = LocalProvider::new(format!("{}-other", h.owner));
    assert!(!stranger.adopt("web-1", handle));
    assert!(stranger.scan().is_empty());

    restarted.signal(handle, StopSignal::Force).unwrap();
    h.wait_exit(&h.provider, "web-1", handle);
    assert!(wait_until(Duration::from_secs(5), || group_members(
        handle.pid
    )
    .is_empty()));
    assert!(!restarted.adopt("web-1", handle));
    assert_eq!(restarted.status("web-1", handle), InstanceStatus::Gone);
    assert!(restarted.scan().is_empty());
}

#[test]
fn refuses_to_signal_special_pids() {
    let provider = LocalProvider::new("x");
    for pid in [0, 1, std::process::id(), u32::MAX] {
        let handle = ProcessHandle { pid, start_time: 0 };
        assert!(matches!(
            provider.signal(handle, StopSignal::Force),
            Err(ProviderError::InvalidPid { .. })
        ));
    }
}

#[test]
fn instances_get_the_open_files_limit_of_their_release() {
    let h = Harness::new("nofile");
    // The default: 64 Ki, or molt's own hard limit when molt may not raise limits.
    let spec = h.spec("nofile-default", &["sh", "-c", "ulimit -n"]);
    let handle = h.start(&spec);
    h.wait_exit(&h.provider, "nofile-default", handle);
    let expected = molt_provider::open_files_limit(molt_provider::DEFAULT_NOFILE);
    assert_eq!(h.log("nofile-default").trim(), expected.to_string());
    let own_hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .unwrap()
        .1;
    assert!(
        expected == molt_provider::DEFAULT_NOFILE || expected == own_hard,
        "{expected}"
    );

    // `[limits] nofile` sets it.
    let mut spec = h.spec("nofile-set", &["sh", "-c", "ulimit -n; ulimit -Hn"]);
    spec.limits.nofile = Some(512);
    let handle = h.start(&spec);
    h.wait_exit(&h.provider, "nofile-set", handle);
    assert_eq!(
        h.log("nofile-set").split_whitespace().collect::<Vec<_>>(),
        ["512", "512"]
    );
}
