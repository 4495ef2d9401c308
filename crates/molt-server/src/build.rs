//! The bake `run` sandbox `molt serve` hands the controller: molt-runtime's runc
//! [`BuildRunner`] behind molt-control's [`BuildIsolation`] seam.

use std::path::{Path, PathBuf};
use std::time::Duration;

use molt_control::{BuildIsolation, BuildSandbox, RunRequest};
use molt_runtime::{BuildCommand, BuildRunner, ContainerUser};

/// Longest a `run` step may take.
const RUN_STEP_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// `run` steps in runc containers whose state and bundles live under `dir`.
#[derive(Debug)]
pub(crate) struct RuncBuilds {
    pub(crate) dir: PathBuf,
}

/// One bake's runner.
struct RuncSandbox(BuildRunner);

impl BuildIsolation for RuncBuilds {
    /// Looks for root and runc at each bake; the error says which is missing.
    fn sandbox(&self) -> Result<Box<dyn BuildSandbox + Send>, String> {
        let runner = BuildRunner::detect(&self.dir, RUN_STEP_TIMEOUT)?;
        Ok(Box::new(RuncSandbox(runner)))
    }
}

impl BuildSandbox for RuncSandbox {
    fn run(&self, rootfs: &Path, request: &RunRequest<'_>) -> Result<(), String> {
        let (uid, gid) = request.user.unwrap_or((0, 0));
        self.0.run(
            rootfs,
            &BuildCommand {
                argv: request.argv,
                env: request.env.clone(),
                cwd: request.workdir.clone(),
                user: ContainerUser { uid, gid },
                network: request.network,
            },
        )
    }
}
