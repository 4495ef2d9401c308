//! The `runc` command line: every call names molt's own state directory (`--root`).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use molt_provider::ProviderError;
use serde::Deserialize;

/// What `runc state` and `runc list --format json` say about one container.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ContainerState {
    /// The container id.
    pub(crate) id: String,
    /// Host pid of the container's init process (0 once stopped).
    #[serde(default)]
    pub(crate) pid: u32,
    /// `created`, `running`, `paused` or `stopped`.
    pub(crate) status: String,
    /// The container's annotations (from the bundle's `config.json`).
    #[serde(default)]
    pub(crate) annotations: Option<HashMap<String, String>>,
}

/// A `runc` binary and the state directory it keeps molt's containers in.
#[derive(Debug, Clone)]
pub(crate) struct Runc {
    binary: PathBuf,
    root: PathBuf,
}

impl ContainerState {
    /// Whether the init process may still be alive (`created`, `running` or `paused`).
    pub(crate) fn is_live(&self) -> bool {
        self.status != "stopped" && self.pid != 0
    }

    /// The value of annotation `key`.
    pub(crate) fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

impl Runc {
    /// `binary --root <root> …`.
    pub(crate) fn new(binary: PathBuf, root: PathBuf) -> Self {
        Runc { binary, root }
    }

    /// `runc run --detach`: sets up the container of `bundle` and starts its program, whose
    /// stdout and stderr are `log`; the init pid goes to the bundle's pid file. runc's own
    /// messages go to `runc_log`, quoted in the error when it fails.
    pub(crate) fn run_detached(
        &self,
        bundle: &Path,
        id: &str,
        log: File,
        runc_log: &Path,
    ) -> Result<(), ProviderError> {
        let log_for_stderr = log.try_clone().map_err(|source| ProviderError::Io {
            path: bundle.to_path_buf(),
            source,
        })?;
        let mut command = self.command();
        command
            .arg("--log")
            .arg(runc_log)
            .args(["run", "--detach", "--pid-file"])
            .arg(bundle.join(crate::provider::PID_FILE))
            .arg("--bundle")
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_for_stderr);
        let status = command
            .status()
            .map_err(|source| self.spawn_error("run", source))?;
        if status.success() {
            return Ok(());
        }
        Err(self.failure("run", format!("{status}: {}", log_tail(runc_log))))
    }

    /// `runc state <id>`; `None` when runc knows no such container.
    pub(crate) fn state(&self, id: &str) -> Result<Option<ContainerState>, ProviderError> {
        let output = self.output(&["state", id])?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            if stderr.contains("does not exist") {
                return Ok(None);
            }
            return Err(self.failure("state", stderr.trim().to_string()));
        }
        serde_json::from_slice(&output.stdout)
            .map(Some)
            .map_err(|e| self.failure("state", format!("unreadable output: {e}")))
    }

    /// `runc list --format json`: every container in the state directory.
    pub(crate) fn list(&self) -> Result<Vec<ContainerState>, ProviderError> {
        let output = self.output(&["list", "--format", "json"])?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(self.failure("list", stderr.trim().to_string()));
        }
        // An empty state directory lists as `null`.
        serde_json::from_slice::<Option<Vec<ContainerState>>>(&output.stdout)
            .map(Option::unwrap_or_default)
            .map_err(|e| self.failure("list", format!("unreadable output: {e}")))
    }

    /// `runc kill <id> <signal>`; a container that is not running (any more) is not an error.
    pub(crate) fn kill(&self, id: &str, signal: &str) -> Result<(), ProviderError> {
        let output = self.output(&["kill", id, signal])?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("not running") || stderr.contains("does not exist") {
            return Ok(());
        }
        Err(self.failure("kill", stderr.trim().to_string()))
    }

    /// `runc delete --force <id>`: kills what is left, removes its cgroups and its state.
    /// A container runc does not know is not an error.
    pub(crate) fn delete_force(&self, id: &str) -> Result<(), ProviderError> {
        let output = self.output(&["delete", "--force", id])?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("does not exist") {
            return Ok(());
        }
        Err(self.failure("delete", stderr.trim().to_string()))
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command.arg("--root").arg(&self.root);
        command
    }

    fn output(&self, args: &[&str]) -> Result<Output, ProviderError> {
        self.command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| self.spawn_error(args.first().copied().unwrap_or(""), source))
    }

    fn spawn_error(&self, verb: &str, source: io::Error) -> ProviderError {
        ProviderError::Spawn {
            command: format!("{} {verb}", self.binary.display()),
            source,
        }
    }

    fn failure(&self, verb: &str, detail: String) -> ProviderError {
        self.spawn_error(verb, io::Error::other(detail))
    }
}

/// The last lines of runc's log, on one line, for an error message.
fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut last: Vec<&str> = text.lines().rev().take(3).collect();
    last.reverse();
    last.join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_output_parses() {
        let text = br#"[{"ociVersion":"1.0.2-dev","id":"m-web-1","pid":4242,"status":"running","bundle":"/b","rootfs":"/r","created":"2024-01-01T00:00:00Z","annotations":{"dev.molt.owner":"m"},"owner":"root"},
            {"ociVersion":"1.0.2-dev","id":"m-web-2","pid":0,"status":"stopped","bundle":"/b","rootfs":"/r","created":"2024-01-01T00:00:00Z","owner":"root"}]"#;
        let list: Option<Vec<ContainerState>> = serde_json::from_slice(text).unwrap();
        let list = list.unwrap();
        assert_eq!(list[0].pid, 4242);
        assert!(list[0].is_live());
        assert_eq!(list[0].annotation("dev.molt.owner"), Some("m"));
        assert!(!list[1].is_live());
        assert_eq!(list[1].annotation("dev.molt.owner"), None);
        let empty: Option<Vec<ContainerState>> = serde_json::from_slice(b"null").unwrap();
        assert!(empty.is_none());
    }
}
