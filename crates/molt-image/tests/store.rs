//! The image store against real directories, real tars and a corpus of hostile archives.

use std::fs;
use std::io::{Cursor, Read};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use molt_core::Digest;
use molt_image::{ImageError, ImageStore};
use sha2::{Digest as _, Sha256};

mod support;
use support::{blob_path, index_entries, read_image, write_layout, Layer};

/// A scratch area holding a store nested a few levels deep, so `../..` escapes land in `base`.
struct Scratch {
    base: tempfile::TempDir,
    store: ImageStore,
}

impl Scratch {
    fn new() -> Scratch {
        let base = tempfile::tempdir().unwrap();
        let store = ImageStore::open(&base.path().join("a/b/store")).unwrap();
        fs::create_dir(base.path().join("sentinel")).unwrap();
        Scratch { base, store }
    }

    fn store_root(&self) -> PathBuf {
        self.base.path().join("a/b/store")
    }

    /// Asserts that the store holds nothing at all and nothing was written outside it.
    fn assert_untouched(&self) {
        assert!(
            index_entries(&self.store_root()).is_empty(),
            "index.json lists images"
        );
        for dir in ["tmp", "rootfs", "blobs/sha256"] {
            let path = self.store_root().join(dir);
            let left: Vec<_> = fs::read_dir(&path).unwrap().collect();
            assert!(left.is_empty(), "{} holds {left:?}", path.display());
        }
        let mut outside = Vec::new();
        walk(self.base.path(), &mut outside);
        outside.retain(|p| !p.starts_with(self.store_root()));
        let expected: Vec<PathBuf> = ["a", "a/b", "sentinel"]
            .iter()
            .map(|p| self.base.path().join(p))
            .collect();
        outside.sort();
        assert_eq!(outside, expected, "something was written outside the store");
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        out.push(path.clone());
        if fs::symlink_metadata(&path).unwrap().is_dir() {
            walk(&path, out);
        }
    }
}

fn write(path: &Path, contents: &str, mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// An app tree with an executable, a symlink, a `.git` and ignored paths.
fn app_tree(dir: &Path) {
    write(&dir.join("README"), "hello\n", 0o600);
    write(&dir.join("bin/run"), "#!/bin/sh\necho hi\n", 0o700);
    write(&dir.join("src/deep/lib.txt"), "deep\n", 0o664);
    write(&dir.join(".git/HEAD"), "ref: refs/heads/main\n", 0o644);
    write(&dir.join("src/.git"), "gitdir: elsewhere\n", 0o644);
    write(
        &dir.join(".moltignore"),
        "# local junk\nsecret.txt\n./build/\n",
        0o644,
    );
    write(&dir.join("secret.txt"), "hunter2\n", 0o644);
    write(&dir.join("build/out.o"), "binary\n", 0o644);
    fs::create_dir_all(dir.join("empty")).unwrap();
    symlink("../README", dir.join("src/readme-link")).unwrap();
}

/// Tars `dir` by hand in reverse order, with odd mtimes, owners and modes.
fn messy_tar_of(dir: &Path) -> Vec<u8> {
    let mut paths = Vec::new();
    walk(dir, &mut paths);
    paths.sort();
    paths.reverse();
    let mut builder = tar::Builder::new(Vec::new());
    for path in paths {
        let rel = path.strip_prefix(dir).unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_mtime(1_700_000_000);
        header.set_uid(1000);
        header.set_gid(1000);
        header.set_username("alice").unwrap();
        header.set_groupname("staff").unwrap();
        header.set_mode(meta.permissions().mode() | 0o020);
        if meta.file_type().is_symlink() {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            let target = fs::read_link(&path).unwrap();
            builder.append_link(&mut header, rel, target).unwrap();
        } else if meta.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            builder
                .append_data(&mut header, rel, std::io::empty())
                .unwrap();
        } else {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(meta.len());
            let file = fs::File::open(&path).unwrap();
            builder.append_data(&mut header, rel, file).unwrap();
        }
    }
    builder.into_inner().unwrap()
}

fn canonical_tar(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    ImageStore::write_canonical_tar(dir, &mut out).unwrap();
    out
}

/// (path, mode) of every entry of a tar.
fn tar_listing(bytes: &[u8]) -> Vec<(String, u32)> {
    let mut archive = tar::Archive::new(Cursor::new(bytes));
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let path = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            (path, e.header().mode().unwrap())
        })
        .collect()
}

#[test]
fn same_tree_same_digest_from_dir_and_from_tar() {
    let scratch = Scratch::new();
    let app = tempfile::tempdir().unwrap();
    app_tree(app.path());

    let from_dir = scratch.store.import_dir(app.path()).unwrap();
    let tar = messy_tar_of(app.path());
    let from_tar = scratch.store.import_tar(Cursor::new(&tar)).unwrap();
    assert_eq!(from_dir, from_tar);
    assert_eq!(
        from_dir.files, 4,
        "README, bin/run, src/deep/lib.txt, .moltignore"
    );

    let canonical = canonical_tar(app.path());
    let hashed = Digest::from_sha256(&Sha256::digest(&canonical).into());
    let (manifest, config) = read_image(&scratch.store_root(), &from_dir.digest);
    assert_eq!(config.rootfs().diff_ids(), &vec![hashed.to_string()]);
    assert_eq!(manifest.layers().len(), 1);
    let blobs_size: u64 = fs::read_dir(scratch.store_root().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(from_dir.size, blobs_size, "manifest + config + layer");
    assert_eq!(
        canonical,
        canonical_tar(app.path()),
        "canonical tar is stable"
    );

    let via_path = scratch.store.import_path(app.path()).unwrap();
    assert_eq!(via_path.digest, from_dir.digest);
    let tar_file = app.path().join("../app.tar");
    fs::write(&tar_file, &tar).unwrap();
    assert_eq!(
        scratch.store.import_path(&tar_file).unwrap().digest,
        from_dir.digest
    );
    fs::remove_file(&tar_file).unwrap();

    assert_eq!(
        scratch.store.list().unwrap(),
        vec![(from_dir.digest.clone(), from_dir.size)]
    );
    assert!(scratch.store.contains(&from_dir.digest));
    let tmp_left: Vec<_> = fs::read_dir(scratch.store_root().join("tmp"))
        .unwrap()
        .collect();
    assert!(tmp_left.is_empty());
}

#[test]
fn canonical_tar_is_sorted_normalized_and_skips_ignored_paths() {
    let app = tempfile::tempdir().unwrap();
    app_tree(app.path());
    let listing = tar_listing(&canonical_tar(app.path()));
    let expected = vec![
        (".moltignore".to_string(), 0o644),
        ("README".to_string(), 0o644),
        ("bin/".to_string(), 0o755),
        ("bin/run".to_string(), 0o755),
        ("empty/".to_string(), 0o755),
        ("src/".to_string(), 0o755),
        ("src/deep/".to_string(), 0o755),
        ("src/deep/lib.txt".to_string(), 0o644),
        ("src/readme-link".to_string(), 0o777),
    ];
    assert_eq!(listing, expected);

    let bytes = canonical_tar(app.path());
    let mut archive = tar::Archive::new(Cursor::new(&bytes));
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let header = entry.header();
        assert_eq!(header.mtime().unwrap(), 0);
        assert_eq!(header.uid().unwrap(), 0);
        assert_eq!(header.gid().unwrap(), 0);
        assert_eq!(header.username_bytes(), Some(&b""[..]));
        if entry.path_bytes().as_ref() == b"src/readme-link" {
            assert_eq!(entry.link_name_bytes().unwrap().as_ref(), b"../README");
        }
    }
}

#[test]
fn changes_to_content_or_exec_bit_change_the_digest() {
    let scratch = Scratch::new();
    let app = tempfile::tempdir().unwrap();
    app_tree(app.path());
    let first = scratch.store.import_dir(app.path()).unwrap().digest;

    write(&app.path().join("README"), "hello!\n", 0o600);
    let edited = scratch.store.import_dir(app.path()).unwrap().digest;
    assert_ne!(first, edited);

    write(&app.path().join("README"), "hello!\n", 0o700);
    let executable = scratch.store.import_dir(app.path()).unwrap().digest;
    assert_ne!(edited, executable);

    // Modes other than the exec bit, and ignored paths, do not matter.
    write(&app.path().join("README"), "hello!\n", 0o755);
    write(&app.path().join("secret.txt"), "other secret\n", 0o644);
    write(&app.path().join(".git/HEAD"), "detached\n", 0o644);
    assert_eq!(
        scratch.store.import_dir(app.path()).unwrap().digest,
        executable
    );
    assert_eq!(scratch.store.list().unwrap().len(), 3);
}

#[test]
fn rootfs_is_read_only_idempotent_and_removable() {
    let scratch = Scratch::new();
    let app = tempfile::tempdir().unwrap();
    app_tree(app.path());
    let image = scratch.store.import_dir(app.path()).unwrap();

    let rootfs = scratch.store.rootfs(&image.digest).unwrap();
    assert_eq!(
        rootfs,
        scratch.store_root().join("rootfs").join(image.digest.hex())
    );
    let mode = |rel: &str| {
        fs::symlink_metadata(rootfs.join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("README"), 0o444);
    assert_eq!(mode("bin/run"), 0o555);
    assert_eq!(mode("bin"), 0o555);
    assert_eq!(mode(""), 0o555);
    assert_eq!(
        fs::read_to_string(rootfs.join("src/readme-link")).unwrap(),
        "hello\n"
    );
    assert!(!rootfs.join(".git").exists());
    assert!(!rootfs.join("secret.txt").exists());
    assert!(rootfs.join("empty").is_dir());

    assert_eq!(scratch.store.rootfs(&image.digest).unwrap(), rootfs);
    let rootfs_entries: Vec<_> = fs::read_dir(scratch.store_root().join("rootfs"))
        .unwrap()
        .collect();
    assert_eq!(rootfs_entries.len(), 1, "no temp dirs left behind");

    scratch.store.remove(&image.digest).unwrap();
    assert!(!scratch.store.contains(&image.digest));
    assert!(!rootfs.exists());
    assert!(scratch.store.list().unwrap().is_empty());
    scratch.store.remove(&image.digest).unwrap();
    assert!(matches!(
        scratch.store.rootfs(&image.digest),
        Err(ImageError::NotFound(_))
    ));
    scratch.assert_untouched();
}

#[test]
fn import_path_rejects_missing_and_special_files() {
    let scratch = Scratch::new();
    let missing = scratch.base.path().join("nope");
    assert!(matches!(
        scratch.store.import_path(&missing),
        Err(ImageError::Io { .. })
    ));
    assert!(matches!(
        scratch.store.import_path(Path::new("/dev/null")),
        Err(ImageError::NotADirectoryOrTar(_))
    ));
}

#[test]
fn import_dir_rejects_whiteout_names() {
    let scratch = Scratch::new();
    let app = tempfile::tempdir().unwrap();
    write(&app.path().join("ok"), "ok\n", 0o644);
    write(&app.path().join("sub/.wh.ok"), "not a whiteout\n", 0o644);
    let err = scratch.store.import_dir(app.path()).unwrap_err();
    assert!(matches!(err, ImageError::UnsafeEntry { .. }), "{err}");
    scratch.assert_untouched();
}

#[test]
fn import_dir_keeps_absolute_and_climbing_symlinks_as_data() {
    let scratch = Scratch::new();
    let app = tempfile::tempdir().unwrap();
    write(&app.path().join("ok"), "ok\n", 0o644);
    symlink("/etc/passwd", app.path().join("passwd")).unwrap();
    symlink("../../../sentinel", app.path().join("up")).unwrap();
    let image = scratch.store.import_dir(app.path()).unwrap();
    let rootfs = scratch.store.rootfs(&image.digest).unwrap();
    assert_eq!(
        fs::read_link(rootfs.join("passwd")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        fs::read_link(rootfs.join("up")).unwrap(),
        Path::new("../../../sentinel")
    );
    assert!(scratch
        .store
        .verify_rootfs(&image.digest)
        .unwrap()
        .is_intact());
    scratch.store.remove(&image.digest).unwrap();
    scratch.assert_untouched();
}

#[test]
fn corrupt_blob_is_refused_by_rootfs() {
    let scratch = Scratch::new();
    let app = tempfile::tempdir().unwrap();
    app_tree(app.path());
    let image = scratch.store.import_dir(app.path()).unwrap();
    let (manifest, _) = read_image(&scratch.store_root(), &image.digest);
    let layer = support::molt_digest(manifest.layers()[0].digest());
    let blob = blob_path(&scratch.store_root(), &layer);
    let mut bytes = fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&blob, bytes).unwrap();
    let err = scratch.store.rootfs(&image.digest).unwrap_err();
    assert!(matches!(err, ImageError::Corrupt { .. }), "{err}");
    scratch.store.remove(&image.digest).unwrap();
    scratch.assert_untouched();
}

/// Raw tar building: names and link names are written straight into the header bytes, so
/// the tar crate's own path checks cannot clean up the hostile input.
mod hostile {
    pub fn header(name: &[u8], kind: tar::EntryType, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(0o644);
        header
    }

    pub fn file(name: &[u8], data: &[u8]) -> Vec<u8> {
        let mut header = header(name, tar::EntryType::Regular, data.len() as u64);
        finish(&mut header, data)
    }

    pub fn dir(name: &[u8]) -> Vec<u8> {
        let mut header = header(name, tar::EntryType::Directory, 0);
        finish(&mut header, b"")
    }

    pub fn link(name: &[u8], kind: tar::EntryType, target: &[u8]) -> Vec<u8> {
        let mut header = header(name, kind, 0);
        header.as_old_mut().linkname[..target.len()].copy_from_slice(target);
        finish(&mut header, b"")
    }

    pub fn special(name: &[u8], kind: tar::EntryType) -> Vec<u8> {
        let mut header = header(name, kind, 0);
        finish(&mut header, b"")
    }

    /// A header claiming `size` bytes, followed by no data at all.
    pub fn huge(name: &[u8], size: u64) -> Vec<u8> {
        let mut header = header(name, tar::EntryType::Regular, size);
        header.set_cksum();
        header.as_bytes().to_vec()
    }

    /// A GNU long-name record (type 'L') carrying `long_name` for the next entry.
    pub fn gnu_long_name(long_name: &[u8]) -> Vec<u8> {
        let mut data = long_name.to_vec();
        data.push(0);
        let mut header = header(
            b"././@LongLink",
            tar::EntryType::GNULongName,
            data.len() as u64,
        );
        finish(&mut header, &data)
    }

    /// A PAX extended header setting `key=value` for the next entry.
    pub fn pax(key: &str, value: &[u8]) -> Vec<u8> {
        let body_len = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut total = body_len + 1;
        while total != body_len + total.to_string().len() {
            total = body_len + total.to_string().len();
        }
        let mut record = format!("{total} {key}=").into_bytes();
        record.extend_from_slice(value);
        record.push(b'\n');
        let mut header = header(b"PaxHeader", tar::EntryType::XHeader, record.len() as u64);
        finish(&mut header, &record)
    }

    fn finish(header: &mut tar::Header, data: &[u8]) -> Vec<u8> {
        header.set_cksum();
        let mut out = header.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    pub fn archive(parts: Vec<Vec<u8>>) -> Vec<u8> {
        let mut out: Vec<u8> = parts.concat();
        out.extend_from_slice(&[0u8; 1024]);
        out
    }
}

#[test]
fn hostile_tars_are_rejected_and_leave_nothing_behind() {
    use hostile::*;
    use tar::EntryType as T;
    let long_escape = [b"d/".repeat(60), b"../".repeat(70), b"pwned".to_vec()].concat();
    let corpus: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("absolute path", vec![file(b"/tmp/pwned", b"x")]),
        ("dot-dot", vec![file(b"../../../sentinel/pwned", b"x")]),
        (
            "dot-dot inside",
            vec![file(b"ok/../../../../sentinel/pwned", b"x")],
        ),
        ("dot-dot directory", vec![dir(b"../../../sentinel/d/")]),
        (
            "absolute symlink then write through it",
            vec![link(b"etc", T::Symlink, b"/etc"), file(b"etc/passwd", b"x")],
        ),
        (
            "absolute symlink then a directory through it",
            vec![link(b"etc", T::Symlink, b"/etc"), dir(b"etc/molt-pwned/")],
        ),
        (
            "escaping symlink then write through it",
            vec![
                link(b"out", T::Symlink, b"../../../sentinel"),
                file(b"out/pwned", b"x"),
            ],
        ),
        (
            "symlink replacing a directory, then write through it",
            vec![
                dir(b"d/"),
                link(b"d", T::Symlink, b"../../../sentinel"),
                file(b"d/pwned", b"x"),
            ],
        ),
        (
            "write through an inside symlink",
            vec![
                dir(b"real/"),
                link(b"alias", T::Symlink, b"real"),
                file(b"alias/f", b"x"),
            ],
        ),
        (
            "hard link outside",
            vec![link(b"h", T::Link, b"/etc/passwd")],
        ),
        (
            "hard link with dot-dot",
            vec![link(b"h", T::Link, b"../../../sentinel/x")],
        ),
        (
            "hard link through an absolute symlink",
            vec![
                link(b"etc", T::Symlink, b"/etc"),
                link(b"h", T::Link, b"etc/passwd"),
            ],
        ),
        (
            "hard link through an inside symlink",
            vec![
                dir(b"real/"),
                file(b"real/f", b"x"),
                link(b"alias", T::Symlink, b"real"),
                link(b"h", T::Link, b"alias/f"),
            ],
        ),
        (
            "hard link to a symlink",
            vec![
                link(b"s", T::Symlink, b"/etc/passwd"),
                link(b"h", T::Link, b"s"),
            ],
        ),
        (
            "hard link to a missing member",
            vec![link(b"h", T::Link, b"nothing")],
        ),
        (
            "hard link to a directory",
            vec![dir(b"d/"), link(b"h", T::Link, b"d")],
        ),
        (
            "file under a hard link",
            vec![
                file(b"a", b"x"),
                link(b"h", T::Link, b"a"),
                file(b"h/f", b"x"),
            ],
        ),
        ("char device", vec![special(b"null", T::Char)]),
        ("block device", vec![special(b"sda", T::Block)]),
        ("fifo", vec![special(b"pipe", T::Fifo)]),
        ("entry over 4 GiB", vec![huge(b"big", 5 << 30)]),
        (
            "gnu long name with dot-dot",
            vec![gnu_long_name(&long_escape), file(b"short", b"x")],
        ),
        (
            "pax path with dot-dot",
            vec![pax("path", b"../../../sentinel/pwned"), file(b"f", b"x")],
        ),
        (
            "pax hard link path with dot-dot",
            vec![
                pax("linkpath", b"../../../sentinel/x"),
                link(b"h", T::Link, b"ok"),
            ],
        ),
    ];
    for (what, parts) in corpus {
        let scratch = Scratch::new();
        let bytes = archive(parts);
        match scratch.store.import_tar(Cursor::new(&bytes)) {
            Err(ImageError::UnsafeEntry { path, why }) => {
                eprintln!("{what}: rejected {path:?}: {why}");
            }
            other => panic!("{what}: expected UnsafeEntry, got {other:?}"),
        }
        scratch.assert_untouched();
    }
}

/// Links real root filesystems hold (debootstrap's, a distribution image's): accepted, and
/// kept as data that never touches the host.
#[test]
fn absolute_symlinks_and_inside_hard_links_are_kept() {
    use hostile::*;
    use tar::EntryType as T;
    let scratch = Scratch::new();
    let bytes = archive(vec![
        dir(b"usr/"),
        dir(b"usr/lib64/"),
        dir(b"usr/bin/"),
        file(b"usr/bin/perl", b"#!perl"),
        link(b"usr/bin/perl5.36", T::Link, b"usr/bin/perl"),
        link(b"lib64", T::Symlink, b"/usr/lib64"),
        link(b"etc/localtime", T::Symlink, b"/usr/share/zoneinfo/Etc/UTC"),
        link(b"etc/up", T::Symlink, b"../../../../sentinel"),
        link(b"p/chain", T::Symlink, b"../p/../../sentinel"),
        dir(b"dev/"),
    ]);
    let image = scratch.store.import_tar(Cursor::new(&bytes)).unwrap();
    let rootfs = scratch.store.rootfs(&image.digest).unwrap();
    assert_eq!(
        fs::read_link(rootfs.join("lib64")).unwrap(),
        Path::new("/usr/lib64")
    );
    assert_eq!(
        fs::read_link(rootfs.join("etc/localtime")).unwrap(),
        Path::new("/usr/share/zoneinfo/Etc/UTC")
    );
    assert_eq!(
        fs::read(rootfs.join("usr/bin/perl5.36")).unwrap(),
        b"#!perl"
    );
    assert!(rootfs.join("dev").is_dir() && rootfs.join("usr/lib64").is_dir());
    let files = scratch.store.files(&image.digest).unwrap();
    assert_eq!(files["usr/bin/perl5.36"], files["usr/bin/perl"]);
    assert!(scratch
        .store
        .verify_rootfs(&image.digest)
        .unwrap()
        .is_intact());
    // A layer that holds the hard link itself (not re-canonicalized) unpacks the same way.
    let digest = write_layout(
        &scratch.store_root(),
        &[Layer {
            tar: bytes,
            gzip: true,
        }],
        "links",
    );
    let raw = scratch.store.rootfs(&digest).unwrap();
    assert_eq!(fs::read(raw.join("usr/bin/perl5.36")).unwrap(), b"#!perl");
    let listed = scratch.store.files(&digest).unwrap();
    assert_eq!(listed["usr/bin/perl5.36"], listed["usr/bin/perl"]);
    scratch.store.remove(&image.digest).unwrap();
    scratch.store.remove(&digest).unwrap();
    scratch.assert_untouched();
}

#[test]
fn hostile_blob_is_rejected_by_rootfs() {
    use hostile::*;
    let scratch = Scratch::new();
    let bytes = archive(vec![
        link(b"out", tar::EntryType::Symlink, b"/"),
        file(b"out/pwned", b"x"),
    ]);
    // The store root is an OCI layout: put a hostile image straight into it.
    let digest = write_layout(
        &scratch.store_root(),
        &[Layer {
            tar: bytes,
            gzip: true,
        }],
        "hostile",
    );
    let err = scratch.store.rootfs(&digest).unwrap_err();
    assert!(matches!(err, ImageError::UnsafeEntry { .. }), "{err}");
    scratch.store.remove(&digest).unwrap();
    scratch.assert_untouched();
}

#[test]
fn truncated_tar_is_a_tar_error_and_leaves_nothing_behind() {
    let scratch = Scratch::new();
    let app = tempfile::tempdir().unwrap();
    app_tree(app.path());
    let tar = canonical_tar(app.path());
    let mut cut = Vec::new();
    Cursor::new(&tar)
        .take(1536 + 100)
        .read_to_end(&mut cut)
        .unwrap();
    let err = scratch.store.import_tar(Cursor::new(&cut)).unwrap_err();
    assert!(matches!(err, ImageError::Tar(_)), "{err}");
    scratch.assert_untouched();
}
