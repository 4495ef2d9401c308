//! The bare repository of each app under `<data dir>/git/<app>.git`, with molt's hook.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use molt_core::AppName;
use tokio::process::Command;

/// The `pre-receive` hook every repository gets (see `hook.sh`).
const HOOK: &str = include_str!("hook.sh");

/// Settings of every repository: pushes are on (the token was checked), a deleted or rewritten
/// branch is refused by git too (molt refuses them before deploying).
const CONFIG: &[(&str, &str)] = &[
    ("http.receivepack", "true"),
    ("receive.denyNonFastForwards", "true"),
    ("receive.denyDeletes", "true"),
    ("core.logAllRefUpdates", "true"),
];

/// Why a repository could not be made ready.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RepoError {
    /// A file operation failed.
    #[error("preparing the git repository {path}: {source}")]
    Io {
        /// What was written.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// `git` failed.
    #[error("`git {args}` failed: {stderr}")]
    Git {
        /// Its arguments.
        args: String,
        /// What it said.
        stderr: String,
    },
}

/// The repository of `app`, created (bare, with molt's settings and hook) on first use.
pub(crate) async fn ensure(root: &Path, app: &AppName) -> Result<PathBuf, RepoError> {
    let repo = root.join(format!("{app}.git"));
    if !repo.join("HEAD").exists() {
        create(root, &repo).await?;
    }
    install_hook(&repo).await?;
    Ok(repo)
}

/// Creates the repository beside its final path, then renames it there: two first pushes at
/// once never see half a repository.
async fn create(root: &Path, repo: &Path) -> Result<(), RepoError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RepoError::Io { path, source }
    };
    tokio::fs::create_dir_all(root)
        .await
        .map_err(io_err(root))?;
    let tmp = root.join(format!(".new-{:016x}", rand::random::<u64>()));
    git(
        &["init", "--quiet", "--bare", "--initial-branch=main"],
        &tmp,
    )
    .await?;
    for (key, value) in CONFIG {
        git(&["config", key, value], &tmp).await?;
    }
    match tokio::fs::rename(&tmp, repo).await {
        Ok(()) => Ok(()),
        // Another request made it first: theirs is as good.
        Err(_) if repo.join("HEAD").exists() => {
            let _ = tokio::fs::remove_dir_all(&tmp).await;
            Ok(())
        }
        Err(e) => Err(io_err(repo)(e)),
    }
}

/// Writes the hook when it is missing or differs (an older molt's).
async fn install_hook(repo: &Path) -> Result<(), RepoError> {
    let path = repo.join("hooks").join("pre-receive");
    if tokio::fs::read_to_string(&path).await.ok().as_deref() == Some(HOOK) {
        return Ok(());
    }
    let io_err = |source| RepoError::Io {
        path: path.clone(),
        source,
    };
    tokio::fs::create_dir_all(repo.join("hooks"))
        .await
        .map_err(io_err)?;
    let tmp = path.with_extension("new");
    tokio::fs::write(&tmp, HOOK).await.map_err(io_err)?;
    tokio::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .await
        .map_err(io_err)?;
    tokio::fs::rename(&tmp, &path).await.map_err(io_err)
}

/// Runs `git ARGS` on repository `repo` (`git init` creates it).
async fn git(args: &[&str], repo: &Path) -> Result<(), RepoError> {
    let mut command = Command::new("git");
    if args.first() == Some(&"init") {
        command.args(args).arg(repo);
    } else {
        command.arg("--git-dir").arg(repo).args(args);
    }
    let failed = |stderr: String| RepoError::Git {
        args: args.join(" "),
        stderr,
    };
    let output = command.output().await.map_err(|e| failed(e.to_string()))?;
    if !output.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    Ok(())
}
