//! molt-testkit: what a test needs from the machine, said in one way across the workspace.
//!
//! A test that needs root, a tool or a file asks for it before it starts:
//!
//! ```no_run
//! # fn a_test() {
//! if !(molt_testkit::needs_root() && molt_testkit::needs_command("runc")) {
//!     return;
//! }
//! # }
//! ```
//!
//! On a laptop a missing prerequisite skips the test: it prints `skipped: needs runc (apt-get
//! install runc)` and passes. In CI it fails with the same words instead, because a test that
//! could not run must not pass there: CI is `MOLT_TEST_STRICT=1` (which `.ci/run` exports) or
//! `CI=true` (what hosted CI services set).
//!
//! Used only as a dev-dependency; it has no dependencies of its own.

use std::env;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Debian packages of the commands the tests use whose package has another name.
const PACKAGES: &[(&str, &str)] = &[
    ("htpasswd", "apache2-utils"),
    ("pebble-challtestsrv", "pebble"),
    ("ip", "iproute2"),
    ("chromedriver", "chromium-driver"),
];

/// Whether a missing prerequisite fails the test instead of skipping it: `MOLT_TEST_STRICT=1`
/// or `CI=true`.
pub fn is_strict() -> bool {
    env::var("MOLT_TEST_STRICT").is_ok_and(|v| v == "1")
        || env::var("CI").is_ok_and(|v| v == "true")
}

/// True when `available`. Otherwise the test cannot run: under [`is_strict`] this panics with
/// `needs {what}`; elsewhere it prints `skipped: needs {what}` and returns false, and the test
/// returns early.
#[track_caller]
pub fn needs(available: bool, what: &str) -> bool {
    if available {
        return true;
    }
    if is_strict() {
        panic!(
            "needs {what}: this test cannot run here, and MOLT_TEST_STRICT=1 (or CI=true) \
             does not let it skip"
        );
    }
    eprintln!("skipped: needs {what}");
    false
}

/// The test runs as root (to mount, or to run containers).
#[track_caller]
pub fn needs_root() -> bool {
    needs(is_root(), "root")
}

/// `program` is an executable file in a directory of `PATH`, where the test will run it from.
#[track_caller]
pub fn needs_command(program: &str) -> bool {
    let package = PACKAGES
        .iter()
        .find(|(command, _)| *command == program)
        .map_or(program, |(_, package)| package);
    needs(
        on_path(program),
        &format!("{program} (apt-get install {package})"),
    )
}

/// The file `path` exists; `package` is the Debian package that installs it.
#[track_caller]
pub fn needs_file(path: &str, package: &str) -> bool {
    needs(
        Path::new(path).exists(),
        &format!("{path} (apt-get install {package})"),
    )
}

/// Whether this process's effective uid is 0 (read from `/proc/self/status`).
fn is_root() -> bool {
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return false;
    };
    // `Uid:` lists the real, effective, saved and filesystem uids.
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().nth(1))
        .is_some_and(|effective| effective == "0")
}

/// Whether `program` is an executable file in one of the directories of `PATH`.
fn on_path(program: &str) -> bool {
    let Some(path) = env::var_os("PATH") else {
        return false;
    };
    env::split_paths(&path).any(|dir| {
        fs::metadata(dir.join(program))
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_there_is_found() {
        assert!(needs(true, "nothing"));
        assert!(on_path("sh"));
        assert!(!on_path("molt-testkit-no-such-program"));
        assert!(needs_file("/proc/self/status", "procps"));
    }

    #[test]
    fn a_missing_prerequisite_skips_or_fails_by_mode() {
        let missing = std::panic::catch_unwind(|| needs(false, "a unicorn"));
        if is_strict() {
            let panic = missing.expect_err("strict mode fails the test");
            let message = panic.downcast_ref::<String>().expect("a formatted message");
            assert!(message.starts_with("needs a unicorn"), "{message}");
        } else {
            assert_eq!(missing.ok(), Some(false));
        }
    }
}
