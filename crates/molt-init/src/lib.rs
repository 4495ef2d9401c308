//! molt-init: the init every container instance runs as PID 1, what `docker run --init` does
//! with tini (this crate follows tini's design; the code is molt's own).
//!
//! Why it exists: the kernel drops every signal sent to the PID 1 of a PID namespace for which
//! that process has no handler. A program that relies on the default action of SIGTERM (busybox
//! `httpd`, most small servers) therefore ignores SIGTERM when it runs as PID 1, and each stop
//! waited out the whole grace period before SIGKILL: stopping 100 such runc instances took
//! 504 s. With this init as PID 1 the program is PID 2, SIGTERM has its default action again,
//! and the program's orphans are reaped instead of piling up as zombies.
//!
//! molt's own executable serves as the init (`molt instance-init -- PROGRAM ARGS…`, dispatched
//! before anything else in `main`, so no async runtime or command line parser starts). It:
//!
//! 1. blocks the signals it forwards ([`FORWARDED`]) and SIGCHLD, and waits for them with
//!    `sigwait` (a blocked signal is queued even for PID 1 without a handler; no handler ever
//!    runs, so there is no async-signal-safety to get wrong);
//! 2. starts the program as its child, in a process group of its own, with the signal mask the
//!    init was started with, default dispositions (std resets SIGPIPE, the only one Rust
//!    changes) and `PR_SET_PDEATHSIG` = SIGKILL;
//! 3. forwards each signal in [`FORWARDED`] to the program's process group (like `tini -g`):
//!    helpers the program started in its group (a shell's pipeline, worker processes) get the
//!    signal too, as they would from a terminal;
//! 4. reaps every child that ends: the program's orphans are re-parented to it (as PID 1, or
//!    as the child subreaper it makes itself when it is not PID 1);
//! 5. exits with the program's exit code, or 128 + the signal number when a signal ended it.
//!
//! It never leaves the program running when it exits: it exits only once the program has
//! ended (or could not start), and then first SIGKILLs what is left of the program's process
//! group (in a PID namespace the kernel kills every other process anyway when PID 1 exits); an
//! init killed outright takes the program along through `PR_SET_PDEATHSIG`.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::{getpid, getppid, Pid};

/// The subcommand of molt's executable that runs the init: `molt instance-init -- PROGRAM ARGS…`
/// (`molt init` already writes a starter molt.toml).
pub const SUBCOMMAND: &str = "instance-init";

/// The signals the init passes on to the program's process group.
pub const FORWARDED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Exit code when the program is not found (the shell's).
const NOT_FOUND: u8 = 127;
/// Exit code when the program was found but cannot be run (the shell's).
const CANNOT_RUN: u8 = 126;
/// Exit code when the init itself fails, or is called without a program.
const INIT_FAILED: u8 = 125;
/// Most children reaped after one SIGCHLD before waiting for signals again (a later SIGCHLD,
/// or the next forwarded signal, continues).
const MAX_REAPS_PER_WAKE: usize = 65_536;

/// What can go wrong in the init itself (the program's own failures are its exit code).
#[derive(Debug)]
pub enum InitError {
    /// The signal mask could not be changed, or waiting for signals failed.
    Signals(Errno),
    /// The program could not be started.
    Spawn {
        /// The program as given.
        program: OsString,
        /// Why (from `execvp`, or the setup before it).
        source: io::Error,
    },
    /// Waiting for children failed.
    Wait(Errno),
}

impl InitError {
    /// The exit code the init ends with on this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            InitError::Spawn { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                NOT_FOUND
            }
            InitError::Spawn { .. } => CANNOT_RUN,
            InitError::Signals(_) | InitError::Wait(_) => INIT_FAILED,
        }
    }
}

impl std::fmt::Display for InitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InitError::Signals(errno) => write!(f, "cannot block or wait for signals: {errno}"),
            InitError::Spawn { program, source } => {
                write!(f, "cannot run {}: {source}", program.to_string_lossy())
            }
            InitError::Wait(errno) => write!(f, "cannot wait for children: {errno}"),
        }
    }
}

impl std::error::Error for InitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            InitError::Signals(errno) | InitError::Wait(errno) => Some(errno),
            InitError::Spawn { source, .. } => Some(source),
        }
    }
}

/// The option naming a file of environment variables the program gets besides the init's own
/// environment: `NAME=VALUE` entries, each ended by a NUL byte (as `/proc/<pid>/environ`).
/// This is how secrets reach a container's program without being written into its bundle.
pub const ENV_FILE_OPTION: &str = "--env-file";

/// The init's entry point, given the words after [`SUBCOMMAND`]
/// (`[--env-file FILE] [--] PROGRAM ARGS…`): runs the program and returns the code to exit
/// with. Must be called before any other thread exists (the signal mask is the calling
/// thread's).
pub fn main(args: impl IntoIterator<Item = OsString>) -> u8 {
    let mut args = args.into_iter().peekable();
    let mut extra_env = Vec::new();
    if args.next_if(|first| first == ENV_FILE_OPTION).is_some() {
        let Some(path) = args.next() else {
            eprintln!("molt {SUBCOMMAND}: {ENV_FILE_OPTION} needs a file");
            return INIT_FAILED;
        };
        match read_env_file(std::path::Path::new(&path)) {
            Ok(vars) => extra_env = vars,
            Err(e) => {
                // The file's path and the reason; never its content.
                eprintln!("molt {SUBCOMMAND}: {}: {e}", path.to_string_lossy());
                return INIT_FAILED;
            }
        }
    }
    let _ = args.next_if(|first| first == "--");
    let Some(program) = args.next() else {
        eprintln!("usage: molt {SUBCOMMAND} [{ENV_FILE_OPTION} FILE] -- PROGRAM [ARGS…]");
        return INIT_FAILED;
    };
    let args: Vec<OsString> = args.collect();
    match run_with_env(&program, &args, extra_env) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("molt {SUBCOMMAND}: {e}");
            e.exit_code()
        }
    }
}

/// Reads an environment file (see [`ENV_FILE_OPTION`]). An entry without `=` or with an
/// empty name is refused, without quoting it.
pub fn read_env_file(path: &std::path::Path) -> io::Result<Vec<(OsString, OsString)>> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = std::fs::read(path)?;
    let mut vars = Vec::new();
    for (n, entry) in bytes.split(|b| *b == 0).enumerate() {
        if entry.is_empty() {
            continue;
        }
        match entry.iter().position(|b| *b == b'=') {
            Some(at) if at > 0 => vars.push((
                OsStr::from_bytes(&entry[..at]).to_os_string(),
                OsStr::from_bytes(&entry[at + 1..]).to_os_string(),
            )),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("entry {} is not NAME=VALUE", n + 1),
                ))
            }
        }
    }
    Ok(vars)
}

/// Writes what [`read_env_file`] reads.
pub fn env_file_bytes<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in vars {
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

/// Runs `program` with `args` under the init until it ends; returns its exit code (128 + the
/// signal number when a signal ended it). Must be called before any other thread exists.
pub fn run(program: &OsStr, args: &[OsString]) -> Result<u8, InitError> {
    run_with_env(program, args, Vec::new())
}

/// [`run`], the program's environment being the init's plus `extra_env`.
pub fn run_with_env(
    program: &OsStr,
    args: &[OsString],
    extra_env: Vec<(OsString, OsString)>,
) -> Result<u8, InitError> {
    let mut watched = SigSet::empty();
    for signal in FORWARDED {
        watched.add(signal);
    }
    watched.add(Signal::SIGCHLD);
    // Blocked before the program exists, so no signal meant for it can be lost in between.
    let original = watched
        .thread_swap_mask(SigmaskHow::SIG_BLOCK)
        .map_err(InitError::Signals)?;
    if getpid().as_raw() != 1 {
        // Outside a PID namespace (or not its first process) orphans of the program would go
        // to some other ancestor: make them ours, as they are for a PID 1.
        let _ = nix::sys::prctl::set_child_subreaper(true);
    }
    let init = getpid();
    let mut command = Command::new(program);
    command.args(args).envs(extra_env).process_group(0);
    // SAFETY: the closure runs in the child between fork and exec, and only makes
    // async-signal-safe system calls (prctl, getppid, sigprocmask); it does not allocate.
    unsafe {
        command.pre_exec(move || prepare_child(&original, init));
    }
    let child = command.spawn().map_err(|source| InitError::Spawn {
        program: program.to_os_string(),
        source,
    })?;
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("a pid fits in an i32"));
    // The `Child` is not waited through: every child is reaped by `reap` below.
    drop(child);
    supervise(pid, &watched)
}

/// In the child, before exec: die with the init, and get back the mask the init started with
/// (std empties it).
fn prepare_child(original: &SigSet, init: Pid) -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    // The init may have ended before the line above: then nothing would kill this child.
    if getppid() != init {
        return Err(io::Error::from_raw_os_error(Errno::ESRCH as i32));
    }
    original.thread_set_mask()?;
    Ok(())
}

/// Forwards signals to `program`'s process group and reaps children until `program` has
/// ended; returns its exit code.
///
/// The loop lasts as long as the program: each turn either forwards one signal or reaps, and
/// it ends when the program is reaped.
fn supervise(program: Pid, watched: &SigSet) -> Result<u8, InitError> {
    loop {
        let signal = match watched.wait() {
            Ok(signal) => signal,
            Err(errno) => {
                stop(program);
                return Err(InitError::Signals(errno));
            }
        };
        if signal != Signal::SIGCHLD {
            forward(program, signal);
            continue;
        }
        match reap(program) {
            Ok(Some(code)) => return Ok(code),
            Ok(None) => {}
            Err(e) => {
                stop(program);
                return Err(e);
            }
        }
    }
}

/// Sends `signal` to the program's process group (to the program alone if the group is gone).
fn forward(program: Pid, signal: Signal) {
    if killpg(program, signal) == Err(Errno::ESRCH) {
        let _ = kill(program, signal);
    }
}

/// Reaps every child that has ended. Each one is first looked at without being reaped
/// (`WNOWAIT`): when it is the program, what is left of its process group is killed while the
/// program's zombie still holds its pid (so the group id cannot have been reused), then it is
/// reaped. Returns the program's exit code once it has been reaped.
fn reap(program: Pid) -> Result<Option<u8>, InitError> {
    let mut code = None;
    for _ in 0..MAX_REAPS_PER_WAKE {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        let ended = match waitid(Id::All, flags) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(InitError::Wait(errno)),
            Ok(status) => status.pid(),
        };
        let Some(pid) = ended else {
            break;
        };
        if pid == program {
            let _ = killpg(program, Signal::SIGKILL);
        }
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(pid, status)) if pid == program => {
                code = Some(u8::try_from(status & 0xff).unwrap_or(INIT_FAILED));
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == program => {
                code = Some(128u8.saturating_add(signal as u8));
            }
            Ok(_) | Err(Errno::ECHILD) => {}
            Err(errno) => return Err(InitError::Wait(errno)),
        }
    }
    Ok(code)
}

/// On a failure of the init itself: kills the program's group and reaps the program, so the
/// init never exits with the program still running.
fn stop(program: Pid) {
    let _ = killpg(program, Signal::SIGKILL);
    let _ = kill(program, Signal::SIGKILL);
    let _ = waitpid(program, None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_the_shells_exit_codes() {
        let spawn = |kind| InitError::Spawn {
            program: "x".into(),
            source: io::Error::from(kind),
        };
        assert_eq!(spawn(io::ErrorKind::NotFound).exit_code(), 127);
        assert_eq!(spawn(io::ErrorKind::PermissionDenied).exit_code(), 126);
        assert_eq!(InitError::Wait(Errno::EINVAL).exit_code(), 125);
    }

    #[test]
    fn no_program_is_a_usage_error() {
        assert_eq!(main(Vec::<OsString>::new()), INIT_FAILED);
        assert_eq!(main(vec![OsString::from("--")]), INIT_FAILED);
        assert_eq!(main(vec![OsString::from(ENV_FILE_OPTION)]), INIT_FAILED);
    }

    #[test]
    fn an_env_file_reads_back_what_was_written() {
        let path = std::env::temp_dir().join(format!("molt-init-env-{}", std::process::id()));
        let vars = [("DB_PASSWORD", "a=b c\nd"), ("EMPTY", ""), ("X", "é")];
        std::fs::write(&path, env_file_bytes(vars)).unwrap();
        let read = read_env_file(&path).unwrap();
        let expected: Vec<(OsString, OsString)> =
            vars.iter().map(|(k, v)| (k.into(), v.into())).collect();
        assert_eq!(read, expected);
        // A broken entry is refused by its number, never quoted; a missing file too.
        std::fs::write(&path, b"GOOD=1\0hunter2\0").unwrap();
        let error = read_env_file(&path).unwrap_err().to_string();
        assert_eq!(error, "entry 2 is not NAME=VALUE");
        std::fs::write(&path, b"=x\0").unwrap();
        assert!(read_env_file(&path).is_err());
        std::fs::remove_file(&path).unwrap();
        assert!(read_env_file(&path).is_err());
        let env_file = OsString::from(path.as_os_str());
        let args = [ENV_FILE_OPTION.into(), env_file, "--".into(), "true".into()];
        assert_eq!(main(args), INIT_FAILED);
    }
}
