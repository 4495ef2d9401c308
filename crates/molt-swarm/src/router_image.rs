//! The tree of the router image: molt's own executable and exactly the shared libraries it
//! runs with, at their paths, so the image needs no base system.
//!
//! The libraries are read from `/proc/self/maps` (every shared object mapped into this very
//! process, the dynamic loader included) rather than from `ldd`, which is not always there and
//! runs the loader on the file. A statically linked molt maps none and the tree is just the
//! executable.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Where the executable goes in the image.
pub const ROUTER_EXECUTABLE: &str = "/molt";

/// Writes the router image's tree into `dir` (which must be empty or missing): the running
/// executable as [`ROUTER_EXECUTABLE`], the shared objects it has mapped at their own paths,
/// and `/etc/passwd` with the unprivileged user. Returns the files copied.
pub fn write_router_tree(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let exe = fs::read_link("/proc/self/exe")?;
    let maps = fs::read_to_string("/proc/self/maps")?;
    let mut copied = Vec::new();
    fs::create_dir_all(dir)?;
    copy_file(&exe, &dir.join(ROUTER_EXECUTABLE.trim_start_matches('/')))?;
    copied.push(PathBuf::from(ROUTER_EXECUTABLE));
    for library in mapped_libraries(&maps) {
        let inside = dir.join(library.strip_prefix("/").unwrap_or(&library));
        copy_file(&library, &inside)?;
        copied.push(library);
    }
    // The loader the kernel starts, at the path the executable names (often a symlink on
    // the host, e.g. /lib64/ld-linux-x86-64.so.2).
    if let Some(interpreter) = interpreter(&fs::read(&exe)?) {
        let inside = dir.join(interpreter.strip_prefix("/").unwrap_or(&interpreter));
        if !inside.exists() {
            copy_file(&interpreter, &inside)?;
            copied.push(interpreter);
        }
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

/// The shared objects of a `/proc/<pid>/maps` listing: mapped files whose name has `.so`.
fn mapped_libraries(maps: &str) -> BTreeSet<PathBuf> {
    maps.lines()
        .filter_map(|line| {
            // address perms offset dev inode pathname
            let path = line.split_whitespace().nth(5)?;
            let name = Path::new(path).file_name()?.to_str()?;
            (path.starts_with('/') && (name.contains(".so.") || name.ends_with(".so")))
                .then(|| PathBuf::from(path))
        })
        .collect()
}

/// The program interpreter (`PT_INTERP`) of a 64-bit little-endian ELF executable.
fn interpreter(elf: &[u8]) -> Option<PathBuf> {
    const PT_INTERP: u32 = 3;
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| {
        let bytes = elf.get(at..at + 8)?.try_into().ok()?;
        usize::try_from(u64::from_le_bytes(bytes)).ok()
    };
    // ELF magic, 64-bit, little-endian.
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let (phoff, phentsize, phnum) = (u64_at(0x20)?, usize::from(u16_at(0x36)?), u16_at(0x38)?);
    (0..usize::from(phnum)).find_map(|i| {
        let header = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(header)? != PT_INTERP {
            return None;
        }
        let (offset, size) = (u64_at(header + 8)?, u64_at(header + 32)?);
        let path = elf.get(offset..offset.checked_add(size)?)?;
        let path = path.strip_suffix(b"\0").unwrap_or(path);
        Some(PathBuf::from(std::str::from_utf8(path).ok()?))
    })
}

/// Copies `from` to `to` (creating parents), keeping the mode.
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
    fn this_executables_interpreter_is_found() {
        let exe = fs::read("/proc/self/exe").expect("read own executable");
        let loader = interpreter(&exe).expect("a dynamically linked test binary");
        assert!(loader.is_absolute(), "{loader:?}");
        assert!(loader.exists(), "{loader:?}");
        assert_eq!(interpreter(b"not an elf file at all"), None);
    }

    #[test]
    fn the_tree_runs_in_a_root_of_its_own() {
        let dir = tempfile::tempdir().expect("temp dir");
        let tree = dir.path().join("tree");
        let copied = write_router_tree(&tree).expect("tree");
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

    #[test]
    fn shared_objects_are_read_from_the_maps() {
        let maps = "\
5581c0a00000-5581c0a2a000 r--p 00000000 fe:01 1 /usr/local/bin/molt
7f1e4c000000-7f1e4c022000 r--p 00000000 fe:01 2 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1e4c022000-7f1e4c197000 r-xp 00022000 fe:01 2 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1e4c300000-7f1e4c301000 r--p 00000000 fe:01 3 /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
7f1e4c400000-7f1e4c401000 rw-p 00000000 00:00 0 [heap]
7f1e4c500000-7f1e4c501000 r--p 00000000 fe:01 4 /usr/lib/locale/C.utf8/LC_CTYPE
7f1e4c600000-7f1e4c601000 r--p 00000000 fe:01 5 /opt/x/libfoo.so
";
        let libraries: Vec<PathBuf> = mapped_libraries(maps).into_iter().collect();
        assert_eq!(
            libraries,
            [
                "/opt/x/libfoo.so",
                "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
            ]
            .map(PathBuf::from)
        );
    }
}
