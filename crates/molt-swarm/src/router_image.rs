//! The tree of the router image: molt's executable and exactly the shared libraries it links,
//! at their paths, so the image needs no base system.
//!
//! The libraries are read from the executable itself: its ELF interpreter (`PT_INTERP`, the
//! dynamic loader) and its `DT_NEEDED` entries, found in the loader's default directories and
//! followed through each library's own `DT_NEEDED`, the way the loader does. No `ldd` (it is
//! not always there, and it runs the loader on the file). A statically linked molt needs none,
//! and the tree is just the executable.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Where the executable goes in the image.
pub const ROUTER_EXECUTABLE: &str = "/molt";

/// Where the loader looks for libraries without a path of their own (Debian's multiarch
/// directories first).
const LIBRARY_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// Writes the router image's tree into `dir`: `executable` as [`ROUTER_EXECUTABLE`], its
/// loader and the shared libraries it links at their own paths, and `/etc/passwd` with the
/// unprivileged user. Returns the files copied.
pub fn write_router_tree(dir: &Path, executable: &Path) -> io::Result<Vec<PathBuf>> {
    let elf = fs::read(executable)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", executable.display())))?;
    let mut copied = Vec::new();
    fs::create_dir_all(dir)?;
    copy_file(
        executable,
        &dir.join(ROUTER_EXECUTABLE.trim_start_matches('/')),
    )?;
    copied.push(PathBuf::from(ROUTER_EXECUTABLE));
    // The loader the kernel starts, at the path the executable names (often a symlink on
    // the host, e.g. /lib64/ld-linux-x86-64.so.2: copied as the file it points to).
    if let Some(interpreter) = interpreter(&elf) {
        copy_file(&interpreter, &inside(dir, &interpreter))?;
        copied.push(interpreter);
    }
    for library in linked_libraries(&elf)? {
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

/// Every library `elf` needs, directly or through another library, found where the loader
/// would find it.
fn linked_libraries(elf: &[u8]) -> io::Result<BTreeSet<PathBuf>> {
    let mut found = BTreeSet::new();
    let mut pending: Vec<String> = needed(elf);
    let mut seen: BTreeSet<String> = BTreeSet::new();
    while let Some(name) = pending.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let path = LIBRARY_DIRS
            .iter()
            .map(|dir| Path::new(dir).join(&name))
            .find(|path| path.is_file())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("the shared library {name} is in none of {LIBRARY_DIRS:?}"),
                )
            })?;
        pending.extend(needed(&fs::read(&path)?));
        found.insert(path);
    }
    Ok(found)
}

/// A 64-bit little-endian ELF file's fields, read without trusting any offset.
struct Elf<'a>(&'a [u8]);

impl Elf<'_> {
    fn u16_at(&self, at: usize) -> Option<u16> {
        Some(u16::from_le_bytes(self.0.get(at..at + 2)?.try_into().ok()?))
    }

    fn u32_at(&self, at: usize) -> Option<u32> {
        Some(u32::from_le_bytes(self.0.get(at..at + 4)?.try_into().ok()?))
    }

    fn u64_at(&self, at: usize) -> Option<usize> {
        let bytes = self.0.get(at..at + 8)?.try_into().ok()?;
        usize::try_from(u64::from_le_bytes(bytes)).ok()
    }

    /// Program headers: (type, file offset, virtual address, file size).
    fn segments(&self) -> Option<Vec<(u32, usize, usize, usize)>> {
        if self.0.get(..6)? != b"\x7fELF\x02\x01" {
            return None;
        }
        let (phoff, phentsize, phnum) = (
            self.u64_at(0x20)?,
            usize::from(self.u16_at(0x36)?),
            self.u16_at(0x38)?,
        );
        (0..usize::from(phnum))
            .map(|i| {
                let at = phoff.checked_add(i.checked_mul(phentsize)?)?;
                Some((
                    self.u32_at(at)?,
                    self.u64_at(at + 8)?,
                    self.u64_at(at + 16)?,
                    self.u64_at(at + 32)?,
                ))
            })
            .collect()
    }

    /// The file offset of virtual address `addr` (through the loadable segments).
    fn offset_of(&self, segments: &[(u32, usize, usize, usize)], addr: usize) -> Option<usize> {
        const PT_LOAD: u32 = 1;
        segments
            .iter()
            .find(|(kind, _, vaddr, size)| {
                *kind == PT_LOAD && addr >= *vaddr && addr < vaddr.saturating_add(*size)
            })
            .map(|(_, offset, vaddr, _)| offset + (addr - vaddr))
    }

    /// The NUL-terminated string at `at`.
    fn str_at(&self, at: usize) -> Option<&str> {
        let rest = self.0.get(at..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&rest[..end]).ok()
    }
}

/// The program interpreter (`PT_INTERP`) of a 64-bit little-endian ELF executable.
fn interpreter(elf: &[u8]) -> Option<PathBuf> {
    const PT_INTERP: u32 = 3;
    let file = Elf(elf);
    let (_, offset, _, size) = file
        .segments()?
        .into_iter()
        .find(|(kind, ..)| *kind == PT_INTERP)?;
    let path = elf.get(offset..offset.checked_add(size)?)?;
    let path = path.strip_suffix(b"\0").unwrap_or(path);
    Some(PathBuf::from(std::str::from_utf8(path).ok()?))
}

/// The `DT_NEEDED` names of a 64-bit little-endian ELF file (none for a static one, or one
/// that cannot be read).
fn needed(elf: &[u8]) -> Vec<String> {
    const PT_DYNAMIC: u32 = 2;
    const DT_NULL: usize = 0;
    const DT_NEEDED: usize = 1;
    const DT_STRTAB: usize = 5;
    let file = Elf(elf);
    let Some(segments) = file.segments() else {
        return Vec::new();
    };
    let Some(&(_, dynamic, _, size)) = segments.iter().find(|(kind, ..)| *kind == PT_DYNAMIC)
    else {
        return Vec::new();
    };
    let mut names = Vec::new();
    let mut strtab = None;
    for entry in (dynamic..dynamic.saturating_add(size)).step_by(16) {
        let (Some(tag), Some(value)) = (file.u64_at(entry), file.u64_at(entry + 8)) else {
            break;
        };
        match tag {
            DT_NULL => break,
            DT_NEEDED => names.push(value),
            DT_STRTAB => strtab = file.offset_of(&segments, value),
            _ => {}
        }
    }
    let Some(strtab) = strtab else {
        return Vec::new();
    };
    names
        .into_iter()
        .filter_map(|at| file.str_at(strtab.checked_add(at)?).map(str::to_owned))
        .collect()
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

    fn own_executable() -> Vec<u8> {
        fs::read("/proc/self/exe").expect("read own executable")
    }

    #[test]
    fn this_executables_interpreter_and_libraries_are_found() {
        let exe = own_executable();
        let loader = interpreter(&exe).expect("a dynamically linked test binary");
        assert!(loader.is_absolute() && loader.exists(), "{loader:?}");
        let names = needed(&exe);
        assert!(names.iter().any(|n| n.starts_with("libc.so")), "{names:?}");
        let libraries = linked_libraries(&exe).expect("libraries");
        assert!(
            libraries.iter().any(|p| p.ends_with("libc.so.6")),
            "{libraries:?}"
        );
        assert_eq!(interpreter(b"not an elf file at all"), None);
        assert!(needed(b"\x7fELF\x02\x01 but cut short").is_empty());
    }

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
