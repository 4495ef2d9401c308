//! The store as an OCI image layout: determinism, verification, archives, whiteouts, and
//! interop with the real skopeo and umoci (skipped without them, a failure in CI: see
//! molt-testkit).

use std::fs;
use std::io::Cursor;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use molt_core::Digest;
use molt_image::{ImageError, ImageStore};
use molt_testkit::needs_command;

mod support;
use support::{
    blob_path, index_entries, molt_digest, read_image, run, store, tar_dir, write_layout, Layer,
};

fn write(path: &Path, contents: &str, mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn app_tree(dir: &Path) {
    write(&dir.join("README"), "hello\n", 0o644);
    write(&dir.join("bin/run"), "#!/bin/sh\necho hi\n", 0o755);
    fs::create_dir_all(dir.join("empty")).unwrap();
    symlink("../README", dir.join("bin/readme")).unwrap();
}

/// A plain tar of (path, contents) files; a path ending in `/` is a directory.
fn tar_of(entries: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, contents) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        if path.ends_with('/') {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            builder
                .append_data(&mut header, path, std::io::empty())
                .unwrap();
        } else {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(contents.len() as u64);
            builder
                .append_data(&mut header, path, contents.as_bytes())
                .unwrap();
        }
    }
    builder.into_inner().unwrap()
}

/// Every path under `root` (relative, sorted) with file contents or link targets.
fn snapshot(root: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let meta = fs::symlink_metadata(&path).unwrap();
            let what = if meta.file_type().is_symlink() {
                format!("-> {}", fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path.clone());
                "dir".to_string()
            } else {
                let exec = meta.permissions().mode() & 0o111 != 0;
                format!("{exec} {}", fs::read_to_string(&path).unwrap())
            };
            out.push((rel, what));
        }
    }
    out.sort();
    out
}

/// Extracts an archive into a fresh directory with the system tar.
fn untar(archive: &Path, into: &Path) {
    fs::create_dir_all(into).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(into));
}

#[test]
fn same_tree_gives_the_same_image_in_any_store() {
    let app = tempfile::tempdir().unwrap();
    app_tree(app.path());
    let (one_dir, one) = store();
    let (two_dir, two) = store();
    let first = one.import_dir(app.path()).unwrap();
    let second = two.import_dir(app.path()).unwrap();
    assert_eq!(first, second);
    assert_eq!(one.import_dir(app.path()).unwrap(), first, "re-import");

    let root = one_dir.path().join("store");
    let (manifest, config) = read_image(&root, &first.digest);
    assert_eq!(manifest.layers().len(), 1);
    assert_eq!(
        manifest.layers()[0].media_type().to_string(),
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    if std::env::var_os("SOURCE_DATE_EPOCH").is_none() {
        assert_eq!(config.created().as_deref(), Some("1970-01-01T00:00:00Z"));
    }
    assert_eq!(config.os().to_string(), "linux");
    let layer = molt_digest(manifest.layers()[0].digest());
    let gz = fs::read(blob_path(&root, &layer)).unwrap();
    assert_eq!(&gz[..4], &[0x1f, 0x8b, 8, 0], "gzip without a file name");
    assert_eq!(&gz[4..8], &[0, 0, 0, 0], "gzip without an mtime");
    assert_eq!(
        gz,
        fs::read(blob_path(&two_dir.path().join("store"), &layer)).unwrap()
    );

    assert_eq!(
        fs::read_to_string(root.join("oci-layout")).unwrap(),
        r#"{"imageLayoutVersion":"1.0.0"}"#
    );
    assert_eq!(
        index_entries(&root),
        vec![(first.digest.clone(), Some(first.digest.to_string()))]
    );
    assert_eq!(
        one.list().unwrap(),
        vec![(first.digest.clone(), first.size)]
    );
}

#[test]
fn tampered_manifest_config_or_layer_is_corrupt() {
    let app = tempfile::tempdir().unwrap();
    app_tree(app.path());
    for victim in ["manifest", "config", "layer"] {
        let (dir, store) = store();
        let root = dir.path().join("store");
        let image = store.import_dir(app.path()).unwrap();
        let (manifest, _) = read_image(&root, &image.digest);
        let target = match victim {
            "manifest" => image.digest.clone(),
            "config" => molt_digest(manifest.config().digest()),
            _ => molt_digest(manifest.layers()[0].digest()),
        };
        let path = blob_path(&root, &target);
        let mut bytes = fs::read(&path).unwrap();
        bytes[10] ^= 0x20;
        fs::write(&path, bytes).unwrap();
        let err = store.rootfs(&image.digest).unwrap_err();
        assert!(matches!(err, ImageError::Corrupt { .. }), "{victim}: {err}");
        let err = store
            .export_oci_archive(&image.digest, "latest", &[], Vec::new())
            .unwrap_err();
        assert!(matches!(err, ImageError::Corrupt { .. }), "{victim}: {err}");
        assert!(!root.join("rootfs").join(image.digest.hex()).exists());
    }
}

#[test]
fn remove_keeps_blobs_another_image_uses() {
    let (dir, store) = store();
    let root = dir.path().join("store");
    let base = Layer {
        tar: tar_of(&[("etc/", ""), ("etc/base", "base\n")]),
        gzip: true,
    };
    let top = Layer {
        tar: tar_of(&[("app", "app\n")]),
        gzip: false,
    };
    let small = write_layout(
        &root,
        &[Layer {
            ..base_clone(&base)
        }],
        "small",
    );
    let big = write_layout(&root, &[base, top], "big");
    let blobs_before = fs::read_dir(root.join("blobs/sha256")).unwrap().count();
    assert_eq!(blobs_before, 6, "2 manifests, 2 configs, 2 distinct layers");
    assert!(store.contains(&small) && store.contains(&big));
    assert_eq!(
        fs::read_to_string(store.rootfs(&big).unwrap().join("app")).unwrap(),
        "app\n"
    );

    store.remove(&big).unwrap();
    assert!(!store.contains(&big));
    assert_eq!(fs::read_dir(root.join("blobs/sha256")).unwrap().count(), 3);
    let rootfs = store.rootfs(&small).unwrap();
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/base")).unwrap(),
        "base\n"
    );
    assert!(!rootfs.join("app").exists());
    store.remove(&small).unwrap();
    assert_eq!(fs::read_dir(root.join("blobs/sha256")).unwrap().count(), 0);
    assert!(index_entries(&root).is_empty());
}

fn base_clone(layer: &Layer) -> Layer {
    Layer {
        tar: layer.tar.clone(),
        gzip: layer.gzip,
    }
}

#[test]
fn layers_apply_in_order_with_whiteouts() {
    let layout = tempfile::tempdir().unwrap();
    let layers = [
        Layer {
            tar: tar_of(&[
                ("a/", ""),
                ("a/x", "x\n"),
                ("a/y", "y\n"),
                ("b/", ""),
                ("b/z", "z\n"),
                ("keep", "old\n"),
                ("gone", "gone\n"),
            ]),
            gzip: true,
        },
        Layer {
            tar: tar_of(&[
                ("a/new", "new\n"),
                ("a/.wh..wh..opq", ""),
                (".wh.gone", ""),
                ("keep", "new\n"),
            ]),
            gzip: false,
        },
        Layer {
            tar: tar_of(&[("b/.wh.z", ""), (".wh.never-was", "")]),
            gzip: true,
        },
    ];
    let digest = write_layout(layout.path(), &layers, "latest");
    let (_dir, store) = store();
    let imported = store
        .import_oci_archive(Cursor::new(tar_dir(layout.path())), None)
        .unwrap();
    assert_eq!(imported.digest, digest);
    let rootfs = store.rootfs(&digest).unwrap();
    let expected: Vec<(PathBuf, String)> = vec![
        ("a".into(), "dir".into()),
        ("a/new".into(), "false new\n".into()),
        ("b".into(), "dir".into()),
        ("keep".into(), "false new\n".into()),
    ];
    assert_eq!(snapshot(&rootfs), expected);
}

#[test]
fn export_then_import_round_trips() {
    let app = tempfile::tempdir().unwrap();
    app_tree(app.path());
    let (_a, one) = store();
    let image = one.import_dir(app.path()).unwrap();
    let mut archive = Vec::new();
    one.export_oci_archive(&image.digest, "latest", &[], &mut archive)
        .unwrap();
    let mut again = Vec::new();
    one.export_oci_archive(&image.digest, "latest", &[], &mut again)
        .unwrap();
    assert_eq!(archive, again, "exports are deterministic");

    let (_b, two) = store();
    let imported = two
        .import_oci_archive(Cursor::new(&archive), Some("latest"))
        .unwrap();
    assert_eq!(imported, image);
    assert_eq!(
        snapshot(&two.rootfs(&image.digest).unwrap()),
        snapshot(&one.rootfs(&image.digest).unwrap())
    );
    let err = two
        .import_oci_archive(Cursor::new(&archive), Some("other"))
        .unwrap_err();
    assert!(matches!(err, ImageError::InvalidLayout(_)), "{err}");
}

#[test]
fn hostile_or_broken_archives_are_refused_and_leave_nothing() {
    let layout = tempfile::tempdir().unwrap();
    let good = write_layout(
        layout.path(),
        &[Layer {
            tar: tar_of(&[("f", "f\n")]),
            gzip: true,
        }],
        "latest",
    );
    let good_tar = tar_dir(layout.path());

    let with_member = |name: &[u8], kind: tar::EntryType, data: &[u8], link: &[u8]| {
        let mut bytes = good_tar[..good_tar.len() - 1024].to_vec();
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        bytes.resize(bytes.len().div_ceil(512) * 512 + 1024, 0);
        bytes
    };
    let fake_hex = "0".repeat(64);
    let fake_blob = format!("blobs/sha256/{fake_hex}");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dot-dot",
            with_member(b"../../pwned", tar::EntryType::Regular, b"x", b""),
        ),
        (
            "absolute",
            with_member(b"/tmp/pwned", tar::EntryType::Regular, b"x", b""),
        ),
        (
            "symlink",
            with_member(b"blobs/evil", tar::EntryType::Symlink, b"", b"/etc"),
        ),
        (
            "hard link",
            with_member(b"blobs/evil", tar::EntryType::Link, b"", b"index.json"),
        ),
        (
            "blob not matching its name",
            with_member(fake_blob.as_bytes(), tar::EntryType::Regular, b"x", b""),
        ),
        (
            "stray file",
            with_member(b"notes.txt", tar::EntryType::Regular, b"x", b""),
        ),
        (
            "char device",
            with_member(b"blobs/null", tar::EntryType::Char, b"", b""),
        ),
        (
            "fifo",
            with_member(b"blobs/pipe", tar::EntryType::Fifo, b"", b""),
        ),
        (
            "symlink out of the archive",
            with_member(
                b"index2.json",
                tar::EntryType::Symlink,
                b"",
                b"../../etc/passwd",
            ),
        ),
        ("truncated", good_tar[..good_tar.len() / 2 + 700].to_vec()),
    ];
    for (what, bytes) in cases {
        let (dir, store) = store();
        let err = store
            .import_oci_archive(Cursor::new(&bytes), None)
            .unwrap_err();
        match (what, &err) {
            (
                "dot-dot"
                | "absolute"
                | "symlink"
                | "hard link"
                | "char device"
                | "fifo"
                | "symlink out of the archive",
                ImageError::UnsafeEntry { .. },
            ) => {}
            ("truncated", ImageError::Tar(_) | ImageError::InvalidLayout(_)) => {}
            ("blob not matching its name", ImageError::Corrupt { .. }) => {}
            ("stray file", ImageError::InvalidLayout(_)) => {}
            _ => panic!("{what}: unexpected {err:?}"),
        }
        let root = dir.path().join("store");
        for sub in ["blobs/sha256", "tmp", "rootfs"] {
            assert_eq!(
                fs::read_dir(root.join(sub)).unwrap().count(),
                0,
                "{what}: {sub}"
            );
        }
        assert!(!dir.path().join("pwned").exists());
    }

    // A layer whose content does not match the config's diff id.
    let (manifest, _) = read_image(layout.path(), &good);
    let layer = molt_digest(manifest.layers()[0].digest());
    let other = support::gzip(&tar_of(&[("f", "changed\n")]));
    let other_digest = support::sha256(&other);
    fs::remove_file(blob_path(layout.path(), &layer)).unwrap();
    fs::write(blob_path(layout.path(), &other_digest), &other).unwrap();
    let index = fs::read_to_string(layout.path().join("index.json")).unwrap();
    let manifest_json = fs::read_to_string(blob_path(layout.path(), &good)).unwrap();
    let patched = manifest_json
        .replace(layer.as_str(), other_digest.as_str())
        .replace(
            &format!("\"size\":{}", manifest.layers()[0].size()),
            &format!("\"size\":{}", other.len()),
        );
    let patched_digest = support::sha256(patched.as_bytes());
    fs::remove_file(blob_path(layout.path(), &good)).unwrap();
    fs::write(blob_path(layout.path(), &patched_digest), &patched).unwrap();
    let index = index
        .replace(good.as_str(), patched_digest.as_str())
        .replace(
            &format!("\"size\":{}", manifest_json.len()),
            &format!("\"size\":{}", patched.len()),
        );
    fs::write(layout.path().join("index.json"), index).unwrap();
    let (_dir, store) = store();
    let err = store
        .import_oci_archive(Cursor::new(tar_dir(layout.path())), None)
        .unwrap_err();
    assert!(matches!(err, ImageError::Corrupt { .. }), "{err}");
}

#[test]
fn skopeo_and_umoci_read_an_exported_image() {
    if !(needs_command("skopeo") && needs_command("umoci")) {
        return;
    }
    let app = tempfile::tempdir().unwrap();
    app_tree(app.path());
    let (dir, store) = store();
    let image = store.import_dir(app.path()).unwrap();
    let archive = dir.path().join("image.tar");
    store
        .export_oci_archive(
            &image.digest,
            "latest",
            &[],
            fs::File::create(&archive).unwrap(),
        )
        .unwrap();

    let inspect = run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", archive.display())));
    let inspected: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspected["Digest"], image.digest.as_str(), "{inspect}");
    assert_eq!(inspected["Os"], "linux");

    let layout = dir.path().join("layout");
    untar(&archive, &layout);
    let bundle = dir.path().join("bundle");
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--rootless")
        .arg("--image")
        .arg(format!("{}:latest", layout.display()))
        .arg(&bundle));
    assert_eq!(
        snapshot(&bundle.join("rootfs")),
        snapshot(&store.rootfs(&image.digest).unwrap())
    );

    // skopeo copies it layout to layout without touching a blob: same image, same digest.
    let copied = dir.path().join("copied");
    run(Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci-archive:{}", archive.display()))
        .arg(format!("oci:{}:copy", copied.display())));
    let (_other_dir, other) = self::store();
    let imported = other
        .import_oci_archive(Cursor::new(tar_dir(&copied)), Some("copy"))
        .unwrap();
    assert_eq!(imported.digest, image.digest);
}

#[test]
fn an_image_built_by_umoci_imports_and_unpacks() {
    if !needs_command("umoci") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let image = format!("{}:t", layout.display());
    run(Command::new("umoci")
        .arg("init")
        .arg("--layout")
        .arg(&layout));
    run(Command::new("umoci").arg("new").arg("--image").arg(&image));
    let one = work.path().join("one.txt");
    let two = work.path().join("two.txt");
    fs::write(&one, "one\n").unwrap();
    fs::write(&two, "two\n").unwrap();
    for (source, target) in [(&one, "/srv/one.txt"), (&two, "/srv/two.txt")] {
        run(Command::new("umoci")
            .args(["insert", "--rootless", "--image", &image])
            .arg(source)
            .arg(target));
    }
    run(Command::new("umoci").args([
        "insert",
        "--rootless",
        "--image",
        &image,
        "--whiteout",
        "/srv/one.txt",
    ]));

    let (_dir, store) = store();
    let imported = store
        .import_oci_archive(Cursor::new(tar_dir(&layout)), Some("t"))
        .unwrap();
    assert!(store.contains(&imported.digest));
    let rootfs = store.rootfs(&imported.digest).unwrap();
    assert_eq!(
        fs::read_to_string(rootfs.join("srv/two.txt")).unwrap(),
        "two\n"
    );
    assert!(!rootfs.join("srv/one.txt").exists(), "whiteout applied");
    let digest: Digest = imported.digest.clone();
    assert_eq!(store.list().unwrap(), vec![(digest, imported.size)]);
}

#[test]
fn concurrent_imports_through_separate_handles_all_land_in_the_index() {
    let (dir, _store) = store();
    let root = dir.path().join("store");
    let threads: Vec<_> = (0..6)
        .map(|n| {
            let root = root.clone();
            std::thread::spawn(move || {
                let store = ImageStore::open(&root).unwrap();
                let app = tempfile::tempdir().unwrap();
                write(&app.path().join("n"), &format!("{n}\n"), 0o644);
                store.import_dir(app.path()).unwrap().digest
            })
        })
        .collect();
    let mut digests: Vec<Digest> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    digests.sort();
    let listed: Vec<Digest> = ImageStore::open(&root)
        .unwrap()
        .list()
        .unwrap()
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    assert_eq!(listed, digests);
}
