//! The root filesystem of one instance: a skeleton directory in the bundle plus read-only bind
//! mounts, so that neither the image tree nor the host is ever written to.
//!
//! runc creates a mount point it misses inside the root; with the image tree itself as the root
//! that would write into the (verified, shared) image. Instead the root is an empty skeleton in
//! the instance's bundle that holds only mount points and copies of top-level symlinks:
//!
//! - [`RootLayout::OwnRoot`]: each top-level entry of the image is bind-mounted read-only at
//!   the same place (a symlink is copied), so the image is the whole root.
//! - [`RootLayout::HostSystem`]: the host's system directories ([`HOST_SYSTEM_DIRS`]) are
//!   bind-mounted read-only (symlinks such as Debian's `/bin -> usr/bin` are copied) and the
//!   image tree at [`APP_DIR`]. Secrets under `/etc` are masked (see [`HOST_SECRETS`]).
//!
//! `/proc`, `/dev`, `/tmp`, `/run` and `/sys` are never taken from the image: the bundle mounts
//! its own there; nor is `/.molt`, where molt's init is mounted (`init.rs`).

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use molt_provider::{RootLayout, APP_DIR};

/// Host directories an app folder without a system of its own gets, read-only.
pub(crate) const HOST_SYSTEM_DIRS: &[&str] = &[
    "usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc",
];

/// Files and directories under the host's `/etc` that are masked in every [`HostSystem`]
/// instance (runc binds `/dev/null` over a file and an empty read-only tmpfs over a
/// directory): password hashes, host keys, private TLS keys, sudo and cron configuration.
///
/// [`HostSystem`]: RootLayout::HostSystem
pub(crate) const HOST_SECRETS: &[&str] = &[
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/security/opasswd",
    "/etc/ssh",
    "/etc/ssl/private",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/crontab",
    "/etc/cron.d",
    "/etc/machine-id",
    "/etc/molt",
];

/// Top-level names the bundle mounts itself; never taken from the image or the host
/// (`.molt` holds molt's init: `init.rs`).
const RESERVED: &[&str] = &["proc", "dev", "tmp", "run", "sys", ".molt"];

/// A read-only bind mount into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bind {
    /// Host path.
    pub(crate) source: PathBuf,
    /// Path inside the container.
    pub(crate) destination: String,
}

/// What [`prepare`] made: the skeleton root, the binds to put in it, the program's directory.
#[derive(Debug)]
pub(crate) struct PreparedRoot {
    /// The skeleton directory (runc's `root.path`).
    pub(crate) skeleton: PathBuf,
    /// Read-only binds, in mount order.
    pub(crate) binds: Vec<Bind>,
    /// The working directory inside the container.
    pub(crate) cwd: &'static str,
}

/// Builds the skeleton root of an instance in `skeleton` (which must not exist yet) for the
/// image tree `image` (canonical path) laid out as `layout`, with `host_root` standing for the
/// host's `/` (always `/` outside tests).
pub(crate) fn prepare(
    skeleton: &Path,
    image: &Path,
    layout: RootLayout,
    host_root: &Path,
) -> io::Result<PreparedRoot> {
    fs::create_dir_all(skeleton)?;
    open_to_instance(skeleton)?;
    for name in RESERVED {
        fs::create_dir(skeleton.join(name))?;
        open_to_instance(&skeleton.join(name))?;
    }
    let mut binds = Vec::new();
    let cwd = match layout {
        RootLayout::OwnRoot => {
            let mut entries: Vec<_> = fs::read_dir(image)?.collect::<io::Result<_>>()?;
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                let name = entry.file_name();
                let Some(name) = name.to_str().filter(|n| !RESERVED.contains(n)) else {
                    continue;
                };
                mirror(&entry.path(), skeleton, name, &mut binds)?;
            }
            "/"
        }
        RootLayout::HostSystem => {
            for name in HOST_SYSTEM_DIRS {
                let source = host_root.join(name);
                if fs::symlink_metadata(&source).is_ok() {
                    mirror(&source, skeleton, name, &mut binds)?;
                }
            }
            let app = APP_DIR.trim_start_matches('/');
            fs::create_dir(skeleton.join(app))?;
            open_to_instance(&skeleton.join(app))?;
            binds.push(Bind {
                source: image.to_path_buf(),
                destination: APP_DIR.to_string(),
            });
            APP_DIR
        }
    };
    Ok(PreparedRoot {
        skeleton: skeleton.to_path_buf(),
        binds,
        cwd,
    })
}

/// Makes a directory of the skeleton 0755 whatever the umask: `molt serve` runs with umask
/// 077 (its data directory is private), and the instance's user must still walk the
/// skeleton's own directories (the mounts inside them show their sources' modes).
pub(crate) fn open_to_instance(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
}

/// Puts top-level entry `source` at `/name` of the skeleton: a symlink is copied, a directory
/// or file gets a mount point and a bind; anything else (sockets, devices) is left out.
fn mirror(source: &Path, skeleton: &Path, name: &str, binds: &mut Vec<Bind>) -> io::Result<()> {
    let meta = fs::symlink_metadata(source)?;
    let target = skeleton.join(name);
    if meta.file_type().is_symlink() {
        symlink(fs::read_link(source)?, &target)?;
        return Ok(());
    }
    if meta.is_dir() {
        fs::create_dir(&target)?;
        open_to_instance(&target)?;
    } else if meta.is_file() {
        fs::File::create(&target)?;
    } else {
        return Ok(());
    }
    binds.push(Bind {
        source: source.to_path_buf(),
        destination: format!("/{name}"),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_root_mirrors_the_image_top_level() {
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("image");
        fs::create_dir_all(image.join("usr/bin")).unwrap();
        fs::create_dir_all(image.join("tmp")).unwrap();
        fs::write(image.join("hello.txt"), "hi").unwrap();
        symlink("usr/bin", image.join("bin")).unwrap();
        let skeleton = tmp.path().join("bundle/rootfs");
        let root = prepare(&skeleton, &image, RootLayout::OwnRoot, Path::new("/")).unwrap();
        assert_eq!(root.cwd, "/");
        let dests: Vec<&str> = root.binds.iter().map(|b| b.destination.as_str()).collect();
        assert_eq!(dests, ["/hello.txt", "/usr"]);
        assert_eq!(
            fs::read_link(skeleton.join("bin")).unwrap(),
            Path::new("usr/bin")
        );
        assert!(skeleton.join("usr").is_dir() && skeleton.join("proc").is_dir());
        assert_eq!(fs::read(skeleton.join("hello.txt")).unwrap(), b"");
        // The image itself is untouched: no mount points were added to it.
        assert!(!image.join("proc").exists());
    }

    #[test]
    fn host_system_binds_host_dirs_and_the_app() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().join("host");
        fs::create_dir_all(host.join("usr/bin")).unwrap();
        fs::create_dir_all(host.join("etc")).unwrap();
        fs::create_dir_all(host.join("home/secret")).unwrap();
        symlink("usr/bin", host.join("bin")).unwrap();
        let image = tmp.path().join("image");
        fs::create_dir_all(&image).unwrap();
        let skeleton = tmp.path().join("rootfs");
        let root = prepare(&skeleton, &image, RootLayout::HostSystem, &host).unwrap();
        assert_eq!(root.cwd, APP_DIR);
        let dests: Vec<&str> = root.binds.iter().map(|b| b.destination.as_str()).collect();
        assert_eq!(dests, ["/usr", "/etc", APP_DIR]);
        assert_eq!(root.binds[2].source, image);
        assert!(fs::read_link(skeleton.join("bin")).is_ok());
        assert!(!skeleton.join("home").exists());
    }
}
