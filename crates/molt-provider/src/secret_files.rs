//! Secrets delivered as files: per instance, one directory of files on a tmpfs (`/dev/shm`:
//! memory, never a disk), the directory 0500 and each file 0400, owned by the user the
//! instance runs as. A container sees its directory at [`CONTAINER_DIR`] (a read-only bind
//! mount); every instance is told where its directory is by [`DIR_VAR`].
//!
//! The directories of one molt live under `/dev/shm/molt-secrets-<owner>` (0700, molt's own
//! user), so no other user of the host can reach them; they go when their instance is
//! forgotten, and `sweep` takes those of instances that no longer exist.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::statfs::{statfs, TMPFS_MAGIC};
use nix::unistd::{chown, Gid, Uid};

/// Where a container instance finds its secret files.
pub const CONTAINER_DIR: &str = "/run/secrets";
/// The environment variable naming the directory of an instance's secret files (set only
/// when it has some).
pub const DIR_VAR: &str = "MOLT_SECRETS_DIR";
/// How old a directory must be before `sweep` may take it.
pub const SWEEP_AFTER: std::time::Duration = std::time::Duration::from_secs(60);
/// The tmpfs every Linux system has.
const SHM: &str = "/dev/shm";

/// One secret an instance gets as a file: `<dir>/<name>` holding `value`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretFile {
    /// The file's name: the secret's (an environment variable name, so a safe file name).
    pub name: String,
    /// Its bytes.
    pub value: Vec<u8>,
}

impl std::fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretFile")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The secret directories of one molt's instances.
#[derive(Debug, Clone)]
pub struct SecretDirs {
    root: PathBuf,
}

impl SecretDirs {
    /// The directories of the molt whose instances carry `owner`.
    pub fn for_owner(owner: &str) -> SecretDirs {
        SecretDirs::at(Path::new(SHM).join(format!("molt-secrets-{owner}")))
    }

    /// Directories under `root`, which must be on a tmpfs.
    pub fn at(root: impl Into<PathBuf>) -> SecretDirs {
        SecretDirs { root: root.into() }
    }

    /// The directory of `instance`.
    pub fn path(&self, instance: &str) -> PathBuf {
        self.root.join(instance)
    }

    /// Writes `files` into a fresh directory of `instance`, owned by `uid:gid`; returns the
    /// directory. Refuses a root that is not on a tmpfs: a secret never reaches a disk.
    pub fn write(
        &self,
        instance: &str,
        files: &[SecretFile],
        uid: u32,
        gid: u32,
    ) -> io::Result<PathBuf> {
        self.make_root()?;
        let dir = self.path(instance);
        self.remove(instance);
        DirBuilder::new().mode(0o700).create(&dir)?;
        let written = files.iter().try_for_each(|file| {
            if file.name.is_empty() || file.name.contains('/') || file.name.starts_with('.') {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{:?} is not a secret file name", file.name),
                ));
            }
            let path = dir.join(&file.name);
            let mut out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&path)?;
            out.write_all(&file.value)?;
            out.sync_all()?;
            own(&path, uid, gid)
        });
        let done = written
            .and_then(|()| own(&dir, uid, gid))
            .and_then(|()| fs::set_permissions(&dir, fs::Permissions::from_mode(0o500)));
        match done {
            Ok(()) => Ok(dir),
            Err(e) => {
                self.remove(instance);
                Err(e)
            }
        }
    }

    /// Removes the directory of `instance`, if there is one.
    pub fn remove(&self, instance: &str) {
        let dir = self.path(instance);
        // 0500 keeps its own user from changing it; molt's user owns the parent and may
        // open it up again (root may anyway).
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot remove secrets"),
        }
    }

    /// Removes the directories of instances `alive` says no longer exist; returns what went.
    /// A directory younger than [`SWEEP_AFTER`] is kept: its instance may be starting.
    pub fn sweep(&self, alive: impl Fn(&str) -> bool) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let young = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < SWEEP_AFTER));
            if !young && !alive(&name) {
                self.remove(&name);
                removed.push(format!("secret files of {name}"));
            }
        }
        removed
    }

    /// Makes the root (0700) on a tmpfs, or checks the one there.
    fn make_root(&self) -> io::Result<()> {
        let parent = self.root.parent().unwrap_or(Path::new("/"));
        let on_tmpfs = statfs(parent)
            .map(|s| s.filesystem_type() == TMPFS_MAGIC)
            .map_err(io::Error::from)?;
        if !on_tmpfs {
            return Err(io::Error::other(format!(
                "{} is not a tmpfs: secret files are kept in memory only, never on a disk",
                parent.display()
            )));
        }
        match DirBuilder::new().mode(0o700).create(&self.root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
            }
            Err(e) => Err(e),
        }
    }
}

fn own(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    if Uid::effective() == uid && Gid::effective() == gid {
        return Ok(());
    }
    chown(path, Some(uid), Some(gid)).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn dirs() -> SecretDirs {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        SecretDirs::at(Path::new(SHM).join(format!("molt-secrets-test-{}-{n}", std::process::id())))
    }

    #[test]
    fn files_are_written_private_and_removed() {
        let dirs = dirs();
        let me = (Uid::effective().as_raw(), Gid::effective().as_raw());
        let files = [
            SecretFile {
                name: "TLS_KEY".into(),
                value: b"\0binary\xff".to_vec(),
            },
            SecretFile {
                name: "TOKEN".into(),
                value: b"t".to_vec(),
            },
        ];
        let dir = dirs.write("app-v1-ab12-1", &files, me.0, me.1).unwrap();
        assert_eq!(fs::read(dir.join("TLS_KEY")).unwrap(), b"\0binary\xff");
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o500);
        assert_eq!(mode(&dir.join("TOKEN")), 0o400);
        assert_eq!(mode(&dirs.root), 0o700);
        assert_eq!(fs::metadata(&dir).unwrap().uid(), me.0);
        // Written again (a restart of the same instance): the old files go.
        let dir = dirs
            .write("app-v1-ab12-1", &files[1..], me.0, me.1)
            .unwrap();
        assert!(!dir.join("TLS_KEY").exists());
        // Too young to sweep, then old enough.
        assert!(dirs.sweep(|_| false).is_empty());
        let old = std::time::SystemTime::now() - SWEEP_AFTER * 2;
        fs::File::open(&dir).unwrap().set_modified(old).unwrap();
        assert!(dirs.sweep(|id| id == "app-v1-ab12-1").is_empty());
        assert_eq!(
            dirs.sweep(|id| id != "app-v1-ab12-1"),
            vec!["secret files of app-v1-ab12-1".to_string()]
        );
        assert!(!dir.exists());
        let _ = fs::remove_dir(&dirs.root);
    }

    #[test]
    fn a_bad_name_leaves_nothing_and_a_disk_is_refused() {
        let dirs = dirs();
        let me = (Uid::effective().as_raw(), Gid::effective().as_raw());
        for name in ["../x", "", ".hidden"] {
            let bad = [SecretFile {
                name: name.into(),
                value: b"v".to_vec(),
            }];
            assert!(dirs.write("i-1", &bad, me.0, me.1).is_err());
            assert!(!dirs.path("i-1").exists());
        }
        let _ = fs::remove_dir(&dirs.root);
        let on_disk = SecretDirs::at(std::env::temp_dir().join("molt-secrets-on-disk"));
        if statfs(&std::env::temp_dir()).is_ok_and(|s| s.filesystem_type() != TMPFS_MAGIC) {
            let error = on_disk.write("i-1", &[], me.0, me.1).unwrap_err();
            assert!(error.to_string().contains("not a tmpfs"), "{error}");
        }
        assert_eq!(
            format!(
                "{:?}",
                SecretFile {
                    name: "K".into(),
                    value: b"hunter2".to_vec()
                }
            ),
            "SecretFile { name: \"K\", .. }"
        );
    }
}
