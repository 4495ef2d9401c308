//! What an ELF executable needs besides itself to run in a root of its own: its program
//! interpreter (`PT_INTERP`, the dynamic loader) and every shared library it links
//! (`DT_NEEDED`, followed through each library's own `DT_NEEDED` the way the loader does),
//! found in the loader's default directories. No `ldd` (it is not always there, and it runs
//! the loader on the file). A statically linked executable needs neither.
//!
//! The router image of the Swarm engine copies them next to molt's executable; the runc
//! provider mounts them read-only into every container, for molt's init.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

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

/// The files of the host an executable needs to run, besides itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkedFiles {
    /// The program interpreter at the path the executable names (`None`: statically linked).
    pub interpreter: Option<PathBuf>,
    /// Every shared library it needs, directly or through another library, at the path where
    /// the loader finds it (sorted).
    pub libraries: Vec<PathBuf>,
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

/// Reads `executable` (a 64-bit little-endian ELF file) and finds the files it links.
pub fn linked_files(executable: &Path) -> io::Result<LinkedFiles> {
    let elf = fs::read(executable)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", executable.display())))?;
    Ok(LinkedFiles {
        interpreter: interpreter(&elf),
        libraries: linked_libraries(&elf)?.into_iter().collect(),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_executables_interpreter_and_libraries_are_found() {
        let exe = fs::read("/proc/self/exe").expect("read own executable");
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
        let files = linked_files(Path::new("/proc/self/exe")).expect("linked files");
        assert_eq!(files.interpreter, Some(loader));
        assert_eq!(files.libraries, libraries.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn a_static_executable_links_nothing() {
        // Debian's busybox-static, when it is there (the runc tests need it anyway).
        let Ok(files) = linked_files(Path::new("/bin/busybox")) else {
            return;
        };
        if files.interpreter.is_none() {
            assert!(files.libraries.is_empty(), "{files:?}");
        }
    }
}
