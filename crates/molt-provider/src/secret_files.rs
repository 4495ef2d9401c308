//! Secrets delivered as files: per instance, one directory on a tmpfs (`/dev/shm`: memory,
//! never a disk) holding `files/` (one file per secret) and, for a container, `env` (the
//! secrets it gets as environment variables, which molt's init reads so that they are not
//! written into the container's bundle); directories 0500 and files 0400, owned by the user
//! the instance runs as. A container sees `files/` at [`CONTAINER_DIR`] (a read-only bind
//! mount); every instance is told where it is by [`DIR_VAR`].
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
/// An instance's directory of secret files, under its own directory.
const FILES: &str = "files";
/// An instance's environment file, under its own directory.
const ENV: &str = "env";
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

/// One secret an instance gets as an environment variable.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretVar {
    /// The variable's name.
    pub name: String,
    /// Its value (UTF-8, no NUL).
    pub value: String,
}

impl std::fmt::Debug for SecretVar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretVar")
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

    /// Writes `files` (and, when given, an environment file for molt's init) into a fresh
    /// directory of `instance`, everything owned by `uid:gid`. Refuses a root that is not on a
    /// tmpfs: a secret never reaches a disk.
    pub fn write(
        &self,
        instance: &str,
        files: &[SecretFile],
        env_file: Option<&[u8]>,
        uid: u32,
        gid: u32,
    ) -> io::Result<SecretPaths> {
        let dir = self.path(instance);
        self.remove(instance);
        self.make_root()?;
        // The root goes with its last instance (`remove`): made again if that just happened.
        match DirBuilder::new().mode(0o700).create(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.make_root()?;
                DirBuilder::new().mode(0o700).create(&dir)?;
            }
            other => other?,
        }
        let paths = SecretPaths {
            files: dir.join(FILES),
            env: env_file.map(|_| dir.join(ENV)),
        };
        let written = (|| {
            DirBuilder::new().mode(0o700).create(&paths.files)?;
            for file in files {
                if file.name.is_empty() || file.name.contains('/') || file.name.starts_with('.') {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{:?} is not a secret file name", file.name),
                    ));
                }
                write_private(&paths.files.join(&file.name), &file.value, uid, gid)?;
            }
            if let (Some(path), Some(bytes)) = (&paths.env, env_file) {
                write_private(path, bytes, uid, gid)?;
            }
            for dir in [&paths.files, &dir] {
                own(dir, uid, gid)?;
                fs::set_permissions(dir, fs::Permissions::from_mode(0o500))?;
            }
            Ok(())
        })();
        match written {
            Ok(()) => Ok(paths),
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
        for open in [dir.clone(), dir.join(FILES)] {
            let _ = fs::set_permissions(&open, fs::Permissions::from_mode(0o700));
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot remove secrets"),
        }
        // Nothing of this molt's is left on the tmpfs once its last instance is gone (refused
        // while another instance's directory is there).
        let _ = fs::remove_dir(&self.root);
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

/// Where an instance's secrets are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretPaths {
    /// The directory of its secret files (`/run/secrets` in a container).
    pub files: PathBuf,
    /// Its environment file, when it has one.
    pub env: Option<PathBuf>,
}

/// A new file only `uid` may read, holding `bytes`.
fn write_private(path: &Path, bytes: &[u8], uid: u32, gid: u32) -> io::Result<()> {
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)?;
    out.write_all(bytes)?;
    own(path, uid, gid)
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
        let paths = dirs
            .write("app-v1-ab12-1", &files, Some(b"K=v\0"), me.0, me.1)
            .unwrap();
        let files_dir = &paths.files;
        assert_eq!(
            fs::read(files_dir.join("TLS_KEY")).unwrap(),
            b"\0binary\xff"
        );
        let env = paths.env.clone().unwrap();
        assert_eq!(fs::read(&env).unwrap(), b"K=v\0");
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(files_dir), 0o500);
        assert_eq!(mode(files_dir.parent().unwrap()), 0o500);
        assert_eq!(mode(&files_dir.join("TOKEN")), 0o400);
        assert_eq!(mode(&env), 0o400);
        assert_eq!(mode(&dirs.root), 0o700);
        assert_eq!(fs::metadata(files_dir).unwrap().uid(), me.0);
        // Written again (a restart of the same instance): the old files go.
        let paths = dirs
            .write("app-v1-ab12-1", &files[1..], None, me.0, me.1)
            .unwrap();
        assert!(!paths.files.join("TLS_KEY").exists());
        assert_eq!(paths.env, None);
        let dir = dirs.path("app-v1-ab12-1");
        // Too young to sweep, then old enough.
        assert!(dirs.sweep(|_| false).is_empty());
        let old = std::time::SystemTime::now() - SWEEP_AFTER * 2;
        fs::File::open(&dir).unwrap().set_modified(old).unwrap();
        assert!(dir.exists());
        assert!(dirs.sweep(|id| id == "app-v1-ab12-1").is_empty());
        assert_eq!(
            dirs.sweep(|id| id != "app-v1-ab12-1"),
            vec!["secret files of app-v1-ab12-1".to_string()]
        );
        assert!(!dir.exists());
        assert!(!dirs.root.exists(), "the root goes with its last instance");
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
            assert!(dirs.write("i-1", &bad, None, me.0, me.1).is_err());
            assert!(!dirs.path("i-1").exists());
        }
        let _ = fs::remove_dir(&dirs.root);
        let on_disk = SecretDirs::at(std::env::temp_dir().join("molt-secrets-on-disk"));
        if statfs(&std::env::temp_dir()).is_ok_and(|s| s.filesystem_type() != TMPFS_MAGIC) {
            let error = on_disk.write("i-1", &[], None, me.0, me.1).unwrap_err();
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
