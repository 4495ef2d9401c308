//! molt's init as PID 1 of every container (see `molt-init` for what it does and why): how
//! molt's own executable gets into a container whose root may hold nothing but the program.
//!
//! The executable is bind-mounted read-only at [`INIT_DIR`]`/molt`. molt is normally linked
//! dynamically against glibc, and an image that is its own root may have no libc at all (a
//! static busybox image) or other versions of it, so the loader and the libraries the
//! executable links (found by `molt_provider::elf`, read from the file itself) are
//! bind-mounted read-only under [`INIT_DIR`]`/lib/`, and the init is started through that
//! loader with that directory as its only library path:
//!
//! ```text
//! /.molt/lib/ld-linux-x86-64.so.2 --library-path /.molt/lib /.molt/molt instance-init -- PROGRAM ARGS…
//! ```
//!
//! Nothing of the image is shadowed (everything lives under `/.molt`, a mount point of the
//! instance's skeleton root, never of the image), and the program itself runs on the image's
//! own files: the init `execvp`s it in the container's environment, which gains nothing. A
//! statically linked molt is started directly (`/.molt/molt instance-init -- …`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::rootfs::{Bind, PreparedRoot};

/// Where the init and its libraries are mounted in every container.
pub const INIT_DIR: &str = "/.molt";
/// The executable inside the container.
const EXECUTABLE: &str = "/.molt/molt";
/// The loader's library path inside the container.
const LIBRARY_DIR: &str = "/.molt/lib";

/// molt's executable as the init of every instance, with the host files it needs to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInit {
    /// The executable on the host (canonical).
    executable: PathBuf,
    /// The dynamic loader on the host (canonical); `None` for a static executable.
    loader: Option<PathBuf>,
    /// The shared libraries on the host (canonical), each mounted under its own file name.
    libraries: Vec<PathBuf>,
}

impl InstanceInit {
    /// Resolves `executable` (molt's own, in `molt serve`: `std::env::current_exe()`) and the
    /// loader and libraries it links; read once, when the provider is made.
    pub fn resolve(executable: &Path) -> io::Result<InstanceInit> {
        let executable = fs::canonicalize(executable)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", executable.display())))?;
        let linked = molt_provider::elf::linked_files(&executable)?;
        let canonical = |path: &Path| {
            fs::canonicalize(path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
        };
        let loader = linked.interpreter.as_deref().map(canonical).transpose()?;
        let mut libraries = linked
            .libraries
            .iter()
            .map(|library| canonical(library))
            .collect::<io::Result<Vec<_>>>()?;
        // libc names the loader too: it is mounted once, as the loader.
        libraries.retain(|library| Some(library) != loader.as_ref());
        libraries.dedup();
        Ok(InstanceInit {
            executable,
            loader,
            libraries,
        })
    }

    /// The executable on the host.
    pub fn executable(&self) -> &Path {
        &self.executable
    }

    /// The container's process arguments: the init (through its loader when it has one),
    /// then `program` with its arguments.
    pub(crate) fn command(&self, program: &[String], env_file: Option<&str>) -> Vec<String> {
        let mut args = Vec::with_capacity(program.len() + 8);
        if let Some(loader) = &self.loader {
            args.push(inside(LIBRARY_DIR, loader));
            args.push("--library-path".to_string());
            args.push(LIBRARY_DIR.to_string());
        }
        args.push(EXECUTABLE.to_string());
        args.push(molt_init::SUBCOMMAND.to_string());
        if let Some(file) = env_file {
            args.push(molt_init::ENV_FILE_OPTION.to_string());
            args.push(file.to_string());
        }
        args.push("--".to_string());
        args.extend(program.iter().cloned());
        args
    }

    /// The read-only binds that put the init into a container.
    fn binds(&self) -> Vec<Bind> {
        let mut binds = vec![Bind {
            source: self.executable.clone(),
            destination: EXECUTABLE.to_string(),
        }];
        for file in self.loader.iter().chain(&self.libraries) {
            binds.push(Bind {
                source: file.clone(),
                destination: inside(LIBRARY_DIR, file),
            });
        }
        binds
    }

    /// Adds the init to the skeleton root `root`: its mount points (empty files under
    /// [`INIT_DIR`], which the skeleton reserves) and their binds.
    pub(crate) fn mount_into(&self, root: &mut PreparedRoot) -> io::Result<()> {
        let lib = root.skeleton.join(LIBRARY_DIR.trim_start_matches('/'));
        fs::create_dir_all(&lib)?;
        for dir in lib
            .ancestors()
            .take_while(|dir| dir.starts_with(&root.skeleton))
        {
            crate::rootfs::open_to_instance(dir)?;
        }
        for bind in self.binds() {
            fs::File::create(root.skeleton.join(bind.destination.trim_start_matches('/')))?;
            root.binds.push(bind);
        }
        Ok(())
    }
}

/// The path of host file `file` in container directory `dir`: its file name under `dir`.
fn inside(dir: &str, file: &Path) -> String {
    let name = file.file_name().map_or_else(
        || file.to_string_lossy().into_owned(),
        |name| name.to_string_lossy().into_owned(),
    );
    format!("{dir}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_init_runs_through_its_own_loader_and_libraries() {
        // The test binary is linked like molt: dynamically, against glibc.
        let init = InstanceInit::resolve(Path::new("/proc/self/exe")).expect("resolve");
        let loader = init
            .loader
            .clone()
            .expect("a dynamically linked test binary");
        let loader_name = loader.file_name().unwrap().to_string_lossy().into_owned();
        let args = init.command(&["/bin/busybox".into(), "httpd".into(), "-f".into()], None);
        assert_eq!(
            args,
            [
                format!("/.molt/lib/{loader_name}"),
                "--library-path".into(),
                "/.molt/lib".into(),
                "/.molt/molt".into(),
                "instance-init".into(),
                "--".into(),
                "/bin/busybox".into(),
                "httpd".into(),
                "-f".into(),
            ]
        );
        let binds = init.binds();
        assert_eq!(binds[0].destination, EXECUTABLE);
        assert!(binds
            .iter()
            .any(|b| b.destination.starts_with("/.molt/lib/libc.so")));
        assert!(binds
            .iter()
            .all(|b| b.source.is_absolute()
                && !fs::symlink_metadata(&b.source).unwrap().is_symlink()));

        let tmp = tempfile::tempdir().unwrap();
        let mut root = PreparedRoot {
            skeleton: tmp.path().join("rootfs"),
            binds: Vec::new(),
            cwd: "/",
        };
        init.mount_into(&mut root).expect("mount points");
        assert_eq!(root.binds, binds);
        for bind in &root.binds {
            let point = root.skeleton.join(bind.destination.trim_start_matches('/'));
            assert!(point.is_file(), "{}", point.display());
        }
    }

    #[test]
    fn a_static_init_is_started_directly() {
        let init = InstanceInit {
            executable: PathBuf::from("/usr/bin/molt"),
            loader: None,
            libraries: Vec::new(),
        };
        assert_eq!(
            init.command(&["sleep".into()], None),
            ["/.molt/molt", "instance-init", "--", "sleep"]
        );
        assert_eq!(init.binds().len(), 1);
    }
}
