//! Looking a path up inside an image tree as if the tree were `/`, without ever leaving it.
//!
//! Image trees hold absolute symlinks (`bin -> /usr/bin`, `/etc/alternatives/…`): the kernel
//! resolves them inside the container, but a host-side `image.join("bin/sh")` would follow
//! them to the host's own files. Deciding whether a program is in the image must resolve
//! links the container's way.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// How many symlinks a lookup may pass through (Linux's own limit).
const MAX_HOPS: u32 = 40;

/// The host path of what `path` (absolute or relative to the root) names inside the tree at
/// `root`, following symlinks as the kernel would with `root` as `/` (absolute targets restart
/// at `root`, `..` stops there); `None` if it does not exist or the links loop.
pub fn lookup_in_root(root: &Path, path: &str) -> Option<PathBuf> {
    let mut pending: Vec<OsString> = components(Path::new(path));
    pending.reverse();
    let mut resolved: Vec<OsString> = Vec::new();
    let mut hops = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        resolved.push(name);
        let here: PathBuf = std::iter::once(root.as_os_str())
            .chain(resolved.iter().map(|n| n.as_os_str()))
            .collect();
        let meta = fs::symlink_metadata(&here).ok()?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > MAX_HOPS {
                return None;
            }
            let target = fs::read_link(&here).ok()?;
            resolved.pop();
            if target.as_os_str().as_bytes().starts_with(b"/") {
                resolved.clear();
            }
            let mut next = components(&target);
            next.reverse();
            pending.extend(next);
        }
    }
    Some(
        std::iter::once(root.as_os_str())
            .chain(resolved.iter().map(|n| n.as_os_str()))
            .collect(),
    )
}

/// Plain names and `..` of a path; `/` and `.` dropped.
fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_resolve_inside_the_root_never_on_the_host() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("image");
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::write(root.join("usr/bin/server"), "x").unwrap();
        symlink("/usr/bin", root.join("bin")).unwrap();
        symlink("../../../../usr/bin/server", root.join("usr/bin/up")).unwrap();
        symlink("/etc/hostname", root.join("hostname")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        let found = lookup_in_root(&root, "/bin/server").unwrap();
        assert_eq!(found, root.join("usr/bin/server"));
        assert_eq!(
            lookup_in_root(&root, "/usr/bin/up").unwrap(),
            root.join("usr/bin/server")
        );
        // The host has /etc/hostname; the image does not.
        assert_eq!(lookup_in_root(&root, "/hostname"), None);
        assert_eq!(lookup_in_root(&root, "/loop"), None);
        assert_eq!(lookup_in_root(&root, "/bin/missing"), None);
    }
}
