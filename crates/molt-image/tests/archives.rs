//! Docker archives, zstd layers, `inspect` and blob GC, with the real skopeo where it matters
//! (skipped without it, a failure in CI: see molt-testkit).

use std::collections::HashSet;
use std::fs;
use std::io::Cursor;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use molt_image::{ArchiveFormat, ImageError, ImageStore};

mod support;
use molt_testkit::needs_command;
use support::{run, store, tar_dir};

fn app_tree(dir: &Path, version: &str) {
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::write(dir.join("README"), "hello\n").unwrap();
    fs::write(dir.join("bin/version"), version).unwrap();
    std::os::unix::fs::symlink("../README", dir.join("bin/readme")).unwrap();
}

/// Every file under `root` with its contents (symlinks as their targets), sorted.
fn files(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                out.push((
                    rel,
                    format!("-> {}", fs::read_link(&path).unwrap().display()),
                ));
            } else if meta.is_dir() {
                stack.push(path);
            } else {
                out.push((
                    rel,
                    String::from_utf8_lossy(&fs::read(&path).unwrap()).into_owned(),
                ));
            }
        }
    }
    out.sort();
    out
}

fn leftovers(root: &Path) -> usize {
    ["blobs/sha256", "tmp", "rootfs"]
        .iter()
        .map(|sub| fs::read_dir(root.join(sub)).unwrap().count())
        .sum()
}

#[test]
fn docker_archive_export_then_import_keeps_the_digest() {
    let app = tempfile::tempdir().unwrap();
    app_tree(app.path(), "1\n");
    let (_one_dir, one) = store();
    let image = one.import_dir(app.path()).unwrap();
    let mut archive = Vec::new();
    one.export_docker_archive(&image.digest, Some("shop:1"), &mut archive)
        .unwrap();
    let (_two_dir, two) = store();
    let (imported, format) = two.import_archive(Cursor::new(&archive), None).unwrap();
    assert_eq!(format, ArchiveFormat::Docker);
    assert_eq!(imported.digest, image.digest);
    assert_eq!(imported.files, image.files);
    assert_eq!(
        files(&two.rootfs(&imported.digest).unwrap()),
        files(&one.rootfs(&image.digest).unwrap())
    );
    // By tag, and a tag the archive does not hold.
    let (again, _) = two
        .import_archive(Cursor::new(&archive), Some("shop:1"))
        .unwrap();
    assert_eq!(again.digest, image.digest);
    let err = two
        .import_archive(Cursor::new(&archive), Some("shop:2"))
        .unwrap_err();
    assert!(err.to_string().contains("shop:2"), "{err}");
    // The same export twice is byte-identical.
    let mut second = Vec::new();
    one.export_docker_archive(&image.digest, Some("shop:1"), &mut second)
        .unwrap();
    assert_eq!(archive, second);
}

#[test]
fn skopeo_reads_our_docker_archives_and_we_read_its() {
    if !needs_command("skopeo") {
        return;
    }
    let app = tempfile::tempdir().unwrap();
    app_tree(app.path(), "2\n");
    let (dir, store) = store();
    let image = store.import_dir(app.path()).unwrap();
    let ours = dir.path().join("ours.tar");
    store
        .export_docker_archive(
            &image.digest,
            Some("shop:2"),
            fs::File::create(&ours).unwrap(),
        )
        .unwrap();
    let inspected: serde_json::Value = serde_json::from_str(&run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("docker-archive:{}", ours.display()))))
    .unwrap();
    assert_eq!(inspected["Os"], "linux");
    assert_eq!(inspected["RepoTags"], serde_json::json!([]));
    let layout = dir.path().join("layout");
    run(Command::new("skopeo")
        .arg("copy")
        .arg(format!("docker-archive:{}", ours.display()))
        .arg(format!("oci:{}:copy", layout.display())));

    // skopeo writes a Docker archive (stand-in for `docker save`) from our OCI export.
    let oci = dir.path().join("image.oci.tar");
    store
        .export_oci_archive(
            &image.digest,
            "latest",
            &[],
            fs::File::create(&oci).unwrap(),
        )
        .unwrap();
    let theirs = dir.path().join("theirs.tar");
    run(Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci-archive:{}", oci.display()))
        .arg(format!("docker-archive:{}:shop:2", theirs.display())));
    let (_other_dir, other) = self::store();
    let (imported, format) = other
        .import_archive(fs::File::open(&theirs).unwrap(), Some("shop:2"))
        .unwrap();
    assert_eq!(format, ArchiveFormat::Docker);
    assert_eq!(
        files(&other.rootfs(&imported.digest).unwrap()),
        files(&store.rootfs(&image.digest).unwrap())
    );
    // skopeo keeps the config byte for byte and we gzip layers as we always do: same image.
    assert_eq!(imported.digest, image.digest);
}

#[test]
fn zstd_layers_from_skopeo_import_and_unpack() {
    if !needs_command("skopeo") {
        return;
    }
    let app = tempfile::tempdir().unwrap();
    app_tree(app.path(), "3\n");
    let (dir, store) = store();
    let image = store.import_dir(app.path()).unwrap();
    let oci = dir.path().join("image.oci.tar");
    store
        .export_oci_archive(
            &image.digest,
            "latest",
            &[],
            fs::File::create(&oci).unwrap(),
        )
        .unwrap();
    let layout = dir.path().join("zstd");
    run(Command::new("skopeo")
        .args(["copy", "--dest-compress-format", "zstd"])
        .arg(format!("oci-archive:{}", oci.display()))
        .arg(format!("oci:{}:z", layout.display())));
    let (_other_dir, other) = self::store();
    let (imported, format) = other
        .import_archive(Cursor::new(tar_dir(&layout)), Some("z"))
        .unwrap();
    assert_eq!(format, ArchiveFormat::Oci);
    assert_ne!(imported.digest, image.digest, "recompressed layers");
    let details = other.inspect(&imported.digest).unwrap();
    assert_eq!(
        details.layers[0].media_type,
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    assert_eq!(
        files(&other.rootfs(&imported.digest).unwrap()),
        files(&store.rootfs(&image.digest).unwrap())
    );
    // Exported as a Docker archive, the zstd layer is plain again and reads back gzipped.
    let mut docker = Vec::new();
    other
        .export_docker_archive(&imported.digest, None, &mut docker)
        .unwrap();
    let (back, _) = store.import_archive(Cursor::new(&docker), None).unwrap();
    assert_eq!(back.digest, image.digest);
}

#[test]
fn inspect_shows_config_layers_and_sizes() {
    let app = tempfile::tempdir().unwrap();
    app_tree(app.path(), "4\n");
    let (_dir, store) = store();
    let image = store.import_dir(app.path()).unwrap();
    let details = store.inspect(&image.digest).unwrap();
    assert_eq!(details.digest, image.digest);
    assert_eq!(details.size, image.size);
    assert_eq!(details.layers.len(), 1);
    assert_eq!(
        details.layers[0].media_type,
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(details.config["os"], "linux");
    assert_eq!(
        details.config["rootfs"]["diff_ids"][0].as_str(),
        details.layers[0].diff_id.as_deref()
    );
    assert!(!details.unpacked);
    store.rootfs(&image.digest).unwrap();
    assert!(store.inspect(&image.digest).unwrap().unpacked);
    let missing = "sha256:".to_string() + &"1".repeat(64);
    assert!(matches!(
        store.inspect(&missing.parse().unwrap()),
        Err(ImageError::NotFound(_))
    ));
}

#[test]
fn collect_sweeps_what_no_kept_image_reaches() {
    let (dir, store) = store();
    let root = dir.path().join("store");
    let mut digests = Vec::new();
    for version in ["a\n", "b\n"] {
        let app = tempfile::tempdir().unwrap();
        app_tree(app.path(), version);
        let image = store.import_dir(app.path()).unwrap();
        store.rootfs(&image.digest).unwrap();
        digests.push(image);
    }
    let (kept, dropped) = (&digests[0], &digests[1]);
    // A leftover of an interrupted import.
    fs::write(root.join("blobs/sha256/.tmp-blob-leftover"), "junk").unwrap();
    let keep: HashSet<_> = [kept.digest.clone()].into();
    let before = files(&root);

    // Inside the grace period nothing listed in the index goes.
    let young = store
        .collect(&keep, Duration::from_secs(3600), false)
        .unwrap();
    assert!(young.images.is_empty(), "{young:?}");
    assert_eq!(young.blobs, 0);
    assert_eq!(files(&root), before);

    let plan = store.collect(&keep, Duration::ZERO, true).unwrap();
    assert!(plan.dry_run);
    assert_eq!(plan.images, vec![dropped.digest.clone()]);
    // The dropped image's manifest, config and layer; the README-only blobs differ too.
    assert_eq!(plan.blobs, 3);
    assert_eq!(plan.blob_bytes, dropped.size);
    assert_eq!(plan.rootfs, 1);
    assert!(plan.rootfs_bytes > 0);
    assert_eq!(plan.temps, 1);
    assert_eq!(files(&root), before, "a dry run changes nothing");

    let done = store.collect(&keep, Duration::ZERO, false).unwrap();
    assert_eq!(
        (done.images.clone(), done.blobs, done.rootfs, done.temps),
        (plan.images.clone(), plan.blobs, plan.rootfs, plan.temps)
    );
    assert!(store.contains(&kept.digest));
    assert!(!store.contains(&dropped.digest));
    assert!(!root.join("rootfs").join(dropped.digest.hex()).exists());
    assert_eq!(
        files(&store.rootfs(&kept.digest).unwrap()),
        files(&root.join("rootfs").join(kept.digest.hex()))
    );
    assert_eq!(fs::read_dir(root.join("blobs/sha256")).unwrap().count(), 3);
    // Nothing left to do.
    let again = store.collect(&keep, Duration::ZERO, false).unwrap();
    assert_eq!((again.images.len(), again.blobs, again.rootfs), (0, 0, 0));
}

/// One hand-made archive member: (name, kind, data, link target).
type Member<'a> = (&'a [u8], tar::EntryType, &'a [u8], &'a [u8]);

/// A Docker archive built by hand.
fn docker_tar(members: &[Member]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (name, kind, data, link) in members {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        header.set_entry_type(*kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    }
    bytes.resize(bytes.len() + 1024, 0);
    bytes
}

#[test]
fn hostile_or_broken_docker_archives_are_refused_and_leave_nothing() {
    use tar::EntryType::{Block, Char, Link, Regular, Symlink};
    let layer = {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(3);
        header.set_mode(0o644);
        builder.append_data(&mut header, "f", &b"hi\n"[..]).unwrap();
        builder.into_inner().unwrap()
    };
    let diff_id = support::sha256(&layer);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#
    );
    let manifest = br#"[{"Config":"c.json","RepoTags":["x:1"],"Layers":["l.tar"]}]"#;
    let good = docker_tar(&[
        (b"c.json", Regular, config.as_bytes(), b""),
        (b"l.tar", Regular, &layer, b""),
        (b"manifest.json", Regular, manifest, b""),
    ]);
    {
        let (_dir, store) = store();
        let (image, format) = store.import_archive(Cursor::new(&good), None).unwrap();
        assert_eq!((format, image.files), (ArchiveFormat::Docker, 1));
    }
    let bad_layer = {
        let mut l = layer.clone();
        l[512] = b'H';
        l
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dot-dot",
            docker_tar(&[
                (b"../c.json", Regular, config.as_bytes(), b""),
                (b"manifest.json", Regular, manifest, b""),
            ]),
        ),
        (
            "absolute",
            docker_tar(&[(b"/etc/c.json", Regular, config.as_bytes(), b"")]),
        ),
        (
            "symlink",
            docker_tar(&[(b"l.tar", Symlink, b"", b"/etc/passwd")]),
        ),
        ("hard link", docker_tar(&[(b"l.tar", Link, b"", b"c.json")])),
        ("char device", docker_tar(&[(b"l.tar", Char, b"", b"")])),
        ("block device", docker_tar(&[(b"l.tar", Block, b"", b"")])),
        (
            "missing layer",
            docker_tar(&[
                (b"c.json", Regular, config.as_bytes(), b""),
                (b"manifest.json", Regular, manifest, b""),
            ]),
        ),
        (
            "layer not matching its diff id",
            docker_tar(&[
                (b"c.json", Regular, config.as_bytes(), b""),
                (b"l.tar", Regular, &bad_layer, b""),
                (b"manifest.json", Regular, manifest, b""),
            ]),
        ),
        ("truncated", good[..good.len() / 2 + 100].to_vec()),
        (
            "bad manifest",
            docker_tar(&[(b"manifest.json", Regular, b"{not json", b"")]),
        ),
    ];
    for (what, bytes) in cases {
        let (dir, store) = store();
        let err = store
            .import_archive(Cursor::new(&bytes), None)
            .map(|_| ())
            .unwrap_err();
        match (what, &err) {
            (
                "dot-dot" | "absolute" | "symlink" | "hard link" | "char device" | "block device",
                ImageError::UnsafeEntry { .. },
            ) => {}
            ("layer not matching its diff id", ImageError::Corrupt { .. }) => {}
            ("truncated", ImageError::Tar(_) | ImageError::InvalidLayout(_)) => {}
            ("missing layer" | "bad manifest", ImageError::InvalidLayout(_)) => {}
            _ => panic!("{what}: unexpected {err:?}"),
        }
        assert_eq!(leftovers(&dir.path().join("store")), 0, "{what}");
        assert!(!dir.path().join("c.json").exists());
    }
}

#[test]
fn sniffing_tells_oci_docker_and_plain_trees_apart() {
    let app = tempfile::tempdir().unwrap();
    app_tree(app.path(), "5\n");
    let (_dir, store) = store();
    let image = store.import_dir(app.path()).unwrap();
    let mut oci = Vec::new();
    store
        .export_oci_archive(&image.digest, "latest", &[], &mut oci)
        .unwrap();
    let mut docker = Vec::new();
    store
        .export_docker_archive(&image.digest, None, &mut docker)
        .unwrap();
    let mut tree = Vec::new();
    ImageStore::write_canonical_tar(app.path(), &mut tree).unwrap();
    // An app that happens to ship a manifest.json of its own is still a tree.
    fs::write(app.path().join("manifest.json"), r#"{"name":"web app"}"#).unwrap();
    let mut web = Vec::new();
    ImageStore::write_canonical_tar(app.path(), &mut web).unwrap();
    let sniff = |bytes: &[u8]| molt_image::sniff_archive(Cursor::new(bytes)).unwrap();
    assert_eq!(sniff(&oci), Some(ArchiveFormat::Oci));
    assert_eq!(sniff(&docker), Some(ArchiveFormat::Docker));
    assert_eq!(sniff(&tree), None);
    assert_eq!(sniff(&web), None);
}
