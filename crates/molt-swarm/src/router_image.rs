//! The tree of the router image: molt's executable and exactly the shared libraries it links,
//! at their paths, so the image needs no base system.
//!
//! The libraries are read from the executable itself (`molt_provider::elf`: its ELF
//! interpreter and `DT_NEEDED` entries, as the loader finds them). A statically linked molt
//! needs none, and the tree is just the executable.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Where the executable goes in the image.
pub const ROUTER_EXECUTABLE: &str = "/molt";

/// Writes the router image's tree into `dir`: `executable` as [`ROUTER_EXECUTABLE`], its
/// loader and the shared libraries it links at their own paths, and `/etc/passwd` with the
/// unprivileged user. Returns the files copied.
pub fn write_router_tree(dir: &Path, executable: &Path) -> io::Result<Vec<PathBuf>> {
    let linked = molt_provider::elf::linked_files(executable)?;
    let mut copied = Vec::new();
    fs::create_dir_all(dir)?;
    copy_file(
        executable,
        &dir.join(ROUTER_EXECUTABLE.trim_start_matches('/')),
    )?;
    copied.push(PathBuf::from(ROUTER_EXECUTABLE));
    // The loader the kernel starts, at the path the executable names (often a symlink on
    // the host, e.g. /lib64/ld-linux-x86-64.so.2: copied as the file it points to).
    if let Some(interpreter) = linked.interpreter {
        copy_file(&interpreter, &inside(dir, &interpreter))?;
        copied.push(interpreter);
    }
    for library in linked.libraries {
        copy_file(&library, &inside(dir, &library))?;
        copied.push(library);
    }
    // No /tmp: the engine mounts a tmpfs there, and a directory of the image under it would
    // lend it its owner and mode (root, 0755: not writable by the router's user).
    fs::create_dir_all(dir.join("etc"))?;
    fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n",
    )?;
    fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    Ok(copied)
}

/// Where `path` of the host goes in the tree at `dir`.
fn inside(dir: &Path, path: &Path) -> PathBuf {
    dir.join(path.strip_prefix("/").unwrap_or(path))
}

/// Copies `from` (following symlinks) to `to`, creating parents and keeping the mode.
fn copy_file(from: &Path, to: &Path) -> io::Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(from, to).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", from.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_runs_in_a_root_of_its_own() {
        let dir = tempfile::tempdir().expect("temp dir");
        let tree = dir.path().join("tree");
        let exe = fs::read_link("/proc/self/exe").expect("own path");
        let copied = write_router_tree(&tree, &exe).expect("tree");
        assert!(
            copied
                .iter()
                .any(|p| p.to_string_lossy().contains("libc.so")),
            "{copied:?}"
        );
        // As root, run the copied test binary chrooted into the tree: it finds every library.
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let output = std::process::Command::new("chroot")
            .arg(&tree)
            .arg(ROUTER_EXECUTABLE)
            .arg("--list")
            .output()
            .expect("run chroot");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
