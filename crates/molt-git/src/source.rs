//! What a push brings: the ref updates the hook reported, checked (the deploy branch only,
//! fast-forward only, no deletion), and the pushed commit checked out into a clean folder.
//! The pushed objects are still in git's quarantine, so every `git` here runs with the object
//! directories the hook reported.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

/// The all-zero object id: a ref that is created (as the old id) or deleted (as the new one).
const ZERO_PREFIX: &str = "0000000000";

/// One ref update of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RefUpdate {
    /// The ref's id before (all zeros for a new ref).
    pub(crate) old: String,
    /// The pushed commit.
    pub(crate) new: String,
    /// The full ref name (`refs/heads/main`).
    pub(crate) name: String,
}

/// The push as the hook reported it, and where to check it out.
pub(crate) struct Checkout {
    repo: PathBuf,
    dir: PathBuf,
    object_dir: String,
    alternates: String,
    updates: Vec<RefUpdate>,
}

/// Why a push's source cannot be deployed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SourceError {
    /// The hook's report was not in its format.
    #[error("the hook's report is malformed: {0}")]
    Report(String),
    /// A ref other than the deploy branch.
    #[error("only pushes to '{branch}' deploy (you pushed {pushed}); push with `git push molt HEAD:{branch}`")]
    OtherRef {
        /// The deploy branch.
        branch: String,
        /// What was pushed.
        pushed: String,
    },
    /// The push deletes the branch.
    #[error("deleting '{0}' is refused: the release history keeps what ran")]
    Deletion(String),
    /// The push rewrites the branch.
    #[error("non-fast-forward push to '{0}' refused: pull (or rebase) first; to go back, use `molt rollback`")]
    NotFastForward(String),
    /// `git` failed.
    #[error("`git {args}` failed: {stderr}")]
    Git {
        /// Its arguments.
        args: String,
        /// What it said.
        stderr: String,
    },
}

impl RefUpdate {
    /// The update as `old..new` with short ids (`new` alone for a new ref).
    pub(crate) fn short(&self) -> String {
        let new = self.new.get(..12).unwrap_or(&self.new);
        if self.is_creation() {
            new.to_string()
        } else {
            format!("{}..{new}", self.old.get(..12).unwrap_or(&self.old))
        }
    }

    fn is_creation(&self) -> bool {
        is_zero(&self.old)
    }
}

impl Checkout {
    /// Reads the hook's report (`request` in push directory `dir`) for repository `repo`.
    pub(crate) fn new(repo: &Path, dir: &Path, report: &str) -> Result<Checkout, SourceError> {
        let mut object_dir = String::new();
        let mut alternates = String::new();
        let mut updates = Vec::new();
        for line in report.lines() {
            if let Some(v) = line.strip_prefix("GIT_OBJECT_DIRECTORY=") {
                object_dir = v.to_string();
            } else if let Some(v) = line.strip_prefix("GIT_ALTERNATE_OBJECT_DIRECTORIES=") {
                alternates = v.to_string();
            } else if !line.trim().is_empty() {
                let mut parts = line.split_whitespace();
                let (Some(old), Some(new), Some(name), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Err(SourceError::Report(format!("not a ref update: {line:?}")));
                };
                if !is_object_id(old) || !is_object_id(new) {
                    return Err(SourceError::Report(format!("not object ids: {line:?}")));
                }
                updates.push(RefUpdate {
                    old: old.into(),
                    new: new.into(),
                    name: name.into(),
                });
            }
        }
        Ok(Checkout {
            repo: repo.to_path_buf(),
            dir: dir.to_path_buf(),
            object_dir,
            alternates,
            updates,
        })
    }

    /// The deploy branch: the repository's `molt.branch`, else `main`.
    pub(crate) async fn branch(&self) -> String {
        match self.git(&["config", "--get", "molt.branch"]).await {
            Ok(out) if !out.trim().is_empty() => out.trim().to_string(),
            _ => "main".to_string(),
        }
    }

    /// The one update of the push: to `branch`, not a deletion.
    pub(crate) fn update_of(&self, branch: &str) -> Result<RefUpdate, SourceError> {
        let wanted = format!("refs/heads/{branch}");
        if let Some(other) = self.updates.iter().find(|u| u.name != wanted) {
            return Err(SourceError::OtherRef {
                branch: branch.to_string(),
                pushed: other.name.clone(),
            });
        }
        let update = self
            .updates
            .first()
            .ok_or_else(|| SourceError::Report("no ref was pushed".into()))?;
        if is_zero(&update.new) {
            return Err(SourceError::Deletion(branch.to_string()));
        }
        Ok(update.clone())
    }

    /// Refuses an update whose old commit is not an ancestor of the new one.
    pub(crate) async fn check_fast_forward(&self, update: &RefUpdate) -> Result<(), SourceError> {
        if update.is_creation() {
            return Ok(());
        }
        let ok = self
            .command(&["merge-base", "--is-ancestor", &update.old, &update.new])
            .status()
            .await
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            Ok(())
        } else {
            Err(SourceError::NotFastForward(update.name.clone()))
        }
    }

    /// The commit's time (seconds since the epoch; 0 if git cannot say), the bake's
    /// `SOURCE_DATE_EPOCH`.
    pub(crate) async fn commit_time(&self, update: &RefUpdate) -> u64 {
        self.git(&["log", "-1", "--format=%ct", &update.new])
            .await
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Checks the pushed commit out into `<push dir>/source` (a clean folder: the commit's
    /// files and nothing else) and returns it.
    pub(crate) async fn check_out(&self, update: &RefUpdate) -> Result<PathBuf, SourceError> {
        let source = self.dir.join("source");
        let failed = |stderr: String| SourceError::Git {
            args: format!("archive {}", update.new),
            stderr,
        };
        tokio::fs::create_dir_all(&source)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let mut archive = self
            .command(&["archive", "--format=tar", &update.new])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| failed(e.to_string()))?;
        let tar_input: Stdio = archive
            .stdout
            .take()
            .ok_or_else(|| failed("no output".into()))?
            .try_into()
            .map_err(|e: std::io::Error| failed(e.to_string()))?;
        let untar = Command::new("tar")
            .args(["-x", "--no-same-owner", "-f", "-", "-C"])
            .arg(&source)
            .stdin(tar_input)
            .output()
            .await
            .map_err(|e| failed(e.to_string()))?;
        let archived = archive
            .wait_with_output()
            .await
            .map_err(|e| failed(e.to_string()))?;
        if !archived.status.success() {
            return Err(failed(
                String::from_utf8_lossy(&archived.stderr).trim().into(),
            ));
        }
        if !untar.status.success() {
            return Err(failed(format!(
                "tar: {}",
                String::from_utf8_lossy(&untar.stderr).trim()
            )));
        }
        Ok(source)
    }

    /// `git ARGS` on the repository with the pushed objects visible.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("git");
        command
            .arg("--git-dir")
            .arg(&self.repo)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .stdin(Stdio::null());
        if !self.object_dir.is_empty() {
            command.env("GIT_OBJECT_DIRECTORY", &self.object_dir);
        }
        if !self.alternates.is_empty() {
            command.env("GIT_ALTERNATE_OBJECT_DIRECTORIES", &self.alternates);
        }
        command
    }

    /// Runs `git ARGS` and returns its output.
    async fn git(&self, args: &[&str]) -> Result<String, SourceError> {
        let failed = |stderr: String| SourceError::Git {
            args: args.join(" "),
            stderr,
        };
        let output = self
            .command(args)
            .output()
            .await
            .map_err(|e| failed(e.to_string()))?;
        if !output.status.success() {
            return Err(failed(
                String::from_utf8_lossy(&output.stderr).trim().into(),
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

fn is_zero(id: &str) -> bool {
    id.starts_with(ZERO_PREFIX) && id.bytes().all(|b| b == b'0')
}

fn is_object_id(id: &str) -> bool {
    matches!(id.len(), 40 | 64) && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";
    const Z: &str = "0000000000000000000000000000000000000000";

    fn checkout(report: &str) -> Result<Checkout, SourceError> {
        Checkout::new(Path::new("/r"), Path::new("/d"), report)
    }

    #[test]
    fn only_the_deploy_branch_deploys() {
        let c = checkout(&format!(
            "GIT_OBJECT_DIRECTORY=/q\n{A} {B} refs/heads/main\n"
        ))
        .unwrap();
        assert_eq!(c.object_dir, "/q");
        assert_eq!(c.update_of("main").unwrap().new, B);
        assert!(matches!(
            c.update_of("prod"),
            Err(SourceError::OtherRef { .. })
        ));
        let both = checkout(&format!(
            "{A} {B} refs/heads/main\n{A} {B} refs/heads/dev\n"
        ))
        .unwrap();
        assert!(both.update_of("main").is_err());
        let deleted = checkout(&format!("{A} {Z} refs/heads/main\n")).unwrap();
        assert!(matches!(
            deleted.update_of("main"),
            Err(SourceError::Deletion(_))
        ));
        assert!(checkout("").unwrap().update_of("main").is_err());
    }

    #[test]
    fn a_malformed_report_is_refused() {
        assert!(checkout("nonsense\n").is_err());
        assert!(checkout(&format!("{A} zz refs/heads/main\n")).is_err());
        assert!(checkout(&format!("{A} {B} refs/heads/main extra\n")).is_err());
    }

    #[test]
    fn a_new_ref_shows_its_commit_alone() {
        let new = RefUpdate {
            old: Z.into(),
            new: B.into(),
            name: "refs/heads/main".into(),
        };
        assert_eq!(new.short(), "222222222222");
        let moved = RefUpdate {
            old: A.into(),
            ..new
        };
        assert_eq!(moved.short(), "111111111111..222222222222");
    }
}
