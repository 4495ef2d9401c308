//! `molt instance-init`, the PID 1 of every container instance, run directly as a process (no
//! root, no container): it forwards signals to the program's process group, reaps the orphans
//! re-parented to it, exits with the program's code, and never leaves the program running.
//!
//! Outside a PID namespace the init makes itself the child subreaper, so orphans come to it as
//! they would to a PID 1. Every wait below is bounded; the assertions are on how processes
//! ended, never on how long it took.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Longest wait for anything the test expects (a line, an exit, a process to go).
const PATIENCE: Duration = Duration::from_secs(20);

/// `molt instance-init -- sh -c SCRIPT` with its stdout read line by line.
struct Init {
    child: Child,
    lines: Receiver<String>,
}

impl Init {
    fn sh(script: &str) -> Init {
        Init::start(&["sh", "-c", script])
    }

    fn start(program: &[&str]) -> Init {
        let mut child = Command::new(env!("CARGO_BIN_EXE_molt"))
            .args(["instance-init", "--"])
            .args(program)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start molt instance-init");
        let stdout = child.stdout.take().expect("piped stdout");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        Init { child, lines }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// The value of the next line `key=value` the program prints.
    fn expect(&self, key: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no line {key}=… from the program: {e}"));
            if let Some(value) = line.strip_prefix(&format!("{key}=")) {
                return value.to_string();
            }
        }
    }

    fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signal the init");
    }

    /// The init's exit code; panics (after killing it) if it does not exit.
    fn exit_code(mut self) -> i32 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the init") {
                return status
                    .code()
                    .unwrap_or_else(|| panic!("init ended by {status}"));
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the init did not exit");
            }
            sleep(Duration::from_millis(10));
        }
    }
}

/// Field `index` (1-based, as in proc(5)) of `/proc/<pid>/stat`; `None` once it is gone.
fn stat_field(pid: i32, index: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which ends at the last ')': state is field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(index - 3).map(str::to_string)
}

/// Waits until process `pid` has been reaped (its /proc entry is gone); false if it is still
/// there, alive or a zombie, at the end of the wait.
fn reaped(pid: i32) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if stat_field(pid, 3).is_none() {
            return true;
        }
        sleep(Duration::from_millis(10));
    }
    false
}

/// Waits until process `pid` has ended (reaped, or a zombie of whoever inherited it).
fn ended(pid: i32) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        match stat_field(pid, 3).as_deref() {
            None | Some("Z") => return true,
            Some(_) => sleep(Duration::from_millis(10)),
        }
    }
    false
}

#[test]
fn sigterm_is_forwarded_to_a_program_without_a_handler() {
    // `sleep` installs no handler: it ends by the default action of the signal it gets.
    let init = Init::sh("echo pid=$$; exec sleep 600");
    let program: i32 = init.expect("pid").parse().unwrap();
    assert_eq!(
        stat_field(program, 4),
        Some(init.pid().as_raw().to_string())
    );
    // Its own process group, apart from the test's.
    assert_eq!(stat_field(program, 5), Some(program.to_string()));
    init.signal(Signal::SIGTERM);
    assert_eq!(init.exit_code(), 128 + Signal::SIGTERM as i32);
    assert!(reaped(program), "the program was not reaped");
}

#[test]
fn every_forwarded_signal_reaches_the_program() {
    for signal in [
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        // Signalled once the program runs: before the init has blocked its signals, a signal
        // would end the init itself (as PID 1 it would be dropped: no worse than no init).
        let init = Init::sh("echo ready=1; exec sleep 600");
        init.expect("ready");
        init.signal(signal);
        assert_eq!(init.exit_code(), 128 + signal as i32, "{signal}");
    }
    // SIGWINCH is ignored by default: a handler shows it arrived.
    let init = Init::sh(
        "trap 'echo got=WINCH' WINCH; trap 'echo got=TERM; exit 7' TERM; echo ready=1; \
         while :; do sleep 0.05; done",
    );
    init.expect("ready");
    init.signal(Signal::SIGWINCH);
    assert_eq!(init.expect("got"), "WINCH");
    init.signal(Signal::SIGTERM);
    assert_eq!(init.expect("got"), "TERM");
    // The program's own exit code, after its handler ran.
    assert_eq!(init.exit_code(), 7);
}

#[test]
fn signals_reach_the_programs_whole_process_group() {
    // The shell waits on a child that has no handler: both get the signal (like `tini -g`).
    let init = Init::sh("sleep 600 & echo child=$!; echo ready=1; wait");
    let child: i32 = init.expect("child").parse().unwrap();
    init.expect("ready");
    init.signal(Signal::SIGTERM);
    assert_eq!(init.exit_code(), 128 + Signal::SIGTERM as i32);
    assert!(ended(child), "the program's child outlived the signal");
}

#[test]
fn orphans_are_reaped() {
    // Each subshell starts a sleep and exits at once: the sleeps are orphaned to the init
    // (not to the host's init: they show the init as their parent), which must reap them when
    // they end (here, when the test ends them), while the program itself keeps running.
    let init = Init::sh(
        "for i in 1 2 3 4 5 6 7 8; do (sleep 600 & echo orphan=$!); done; echo ready=1; \
         exec sleep 600",
    );
    let orphans: Vec<i32> = (0..8)
        .map(|_| init.expect("orphan").parse().unwrap())
        .collect();
    init.expect("ready");
    let me = init.pid().as_raw().to_string();
    for orphan in &orphans {
        let deadline = Instant::now() + PATIENCE;
        let mut parent = stat_field(*orphan, 4);
        while parent.as_ref().is_some_and(|p| *p != me) && Instant::now() < deadline {
            sleep(Duration::from_millis(5));
            parent = stat_field(*orphan, 4);
        }
        assert_eq!(
            parent,
            Some(me.clone()),
            "orphan {orphan} was not re-parented to the init"
        );
    }
    for orphan in &orphans {
        kill(Pid::from_raw(*orphan), Signal::SIGKILL).expect("end the orphan");
    }
    for orphan in &orphans {
        assert!(reaped(*orphan), "orphan {orphan} was left a zombie");
    }
    init.signal(Signal::SIGTERM);
    assert_eq!(init.exit_code(), 128 + Signal::SIGTERM as i32);
}

#[test]
fn exit_codes_propagate() {
    assert_eq!(Init::sh("exit 0").exit_code(), 0);
    assert_eq!(Init::sh("exit 3").exit_code(), 3);
    assert_eq!(Init::sh("exit 255").exit_code(), 255);
    assert_eq!(Init::sh("kill -KILL $$").exit_code(), 128 + 9);
    assert_eq!(Init::start(&["/no/such/program"]).exit_code(), 127);
    let not_executable = tempfile::NamedTempFile::new().expect("temp file");
    let path = not_executable.path().to_str().expect("utf-8 temp path");
    assert_eq!(Init::start(&[path]).exit_code(), 126);
    let usage = Command::new(env!("CARGO_BIN_EXE_molt"))
        .args(["instance-init", "--"])
        .stderr(Stdio::piped())
        .output()
        .expect("run molt instance-init");
    assert_eq!(usage.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&usage.stderr).contains("usage: molt instance-init"));
}

#[test]
fn the_program_never_outlives_the_init() {
    // The program exits and leaves a process in its group: the init kills it on the way out.
    let init = Init::sh("sleep 600 & echo left=$!; exit 4");
    let left: i32 = init.expect("left").parse().unwrap();
    assert_eq!(init.exit_code(), 4);
    assert!(ended(left), "a process of the program outlived the init");

    // The init itself is killed outright: the program dies with it (parent-death signal).
    let init = Init::sh("echo pid=$$; exec sleep 600");
    let program: i32 = init.expect("pid").parse().unwrap();
    init.signal(Signal::SIGKILL);
    assert_eq!(init.exit_code_or_signal(), Err(Signal::SIGKILL as i32));
    assert!(ended(program), "the program outlived its killed init");
}

impl Init {
    /// Exit code, or the signal that ended the init.
    fn exit_code_or_signal(mut self) -> Result<i32, i32> {
        use std::os::unix::process::ExitStatusExt;
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the init") {
                return status.code().ok_or(status.signal().unwrap_or(0));
            }
            assert!(Instant::now() < deadline, "the init did not exit");
            sleep(Duration::from_millis(10));
        }
    }
}
