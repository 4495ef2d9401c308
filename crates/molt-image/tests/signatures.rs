//! Signatures carried in an OCI archive: written as annotations on the image's `index.json`
//! entry, read back on import, refused when malformed; the archive stays one skopeo reads
//! (skipped without skopeo, a failure in CI: see molt-testkit).

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;

use molt_core::Digest;
use molt_image::{CarriedSignature, ImageError, ImageStore};

mod support;
use molt_testkit::needs_command;
use support::{run, store, tar_dir};

fn signatures() -> Vec<CarriedSignature> {
    ["a", "b"]
        .iter()
        .map(|k| CarriedSignature {
            public_key: k.repeat(64),
            signature: format!("{k}0").repeat(64),
        })
        .collect()
}

/// An app folder with one file.
fn app() -> tempfile::TempDir {
    let app = tempfile::tempdir().unwrap();
    fs::write(app.path().join("index.html"), "signed\n").unwrap();
    app
}

#[test]
fn signatures_travel_in_an_oci_archive_and_come_back() {
    let app = app();
    let (_dir, store) = store();
    let image = store.import_dir(app.path()).unwrap();
    let mut archive = Vec::new();
    store
        .export_oci_archive(&image.digest, "latest", &signatures(), &mut archive)
        .unwrap();
    let (_other_dir, other) = self::store();
    let imported = other
        .import_oci_archive(Cursor::new(&archive), None)
        .unwrap();
    assert_eq!(
        imported.digest, image.digest,
        "signatures leave the image as it is"
    );
    assert_eq!(imported.signatures, signatures());

    // Without signatures, the archive is the one molt always wrote.
    let mut plain = Vec::new();
    store
        .export_oci_archive(&image.digest, "latest", &[], &mut plain)
        .unwrap();
    assert_ne!(plain, archive);
    let imported = other.import_oci_archive(Cursor::new(&plain), None).unwrap();
    assert_eq!(imported.signatures, Vec::new());

    // Docker archives have no place for them: an image comes back from one without any.
    let mut docker = Vec::new();
    store
        .export_docker_archive(&image.digest, None, &mut docker)
        .unwrap();
    let (imported, _) = other.import_archive(Cursor::new(&docker), None).unwrap();
    assert_eq!(imported.signatures, Vec::new());
}

#[test]
fn a_malformed_signature_annotation_is_refused_and_nothing_is_stored() {
    let app = app();
    let (dir, store) = store();
    let image = store.import_dir(app.path()).unwrap();
    let archive = export_signed(&store, &image.digest, dir.path());
    let layout = dir.path().join("layout");
    fs::create_dir_all(&layout).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout));
    let index = fs::read_to_string(layout.join("index.json")).unwrap();
    // The second signature loses a digit.
    let cut = format!("{}\"", "b0".repeat(64));
    assert!(index.contains(&cut), "{index}");
    fs::write(
        layout.join("index.json"),
        index.replace(&cut, &format!("{}\"", &"b0".repeat(64)[1..])),
    )
    .unwrap();

    let (_other_dir, other) = self::store();
    let error = other
        .import_oci_archive(Cursor::new(tar_dir(&layout)), None)
        .unwrap_err();
    assert!(matches!(error, ImageError::InvalidLayout(_)), "{error}");
    assert!(
        error.to_string().contains("dev.molt.signature.1"),
        "the error names the annotation: {error}"
    );
    assert!(!other.contains(&image.digest), "nothing was imported");
}

#[test]
fn skopeo_reads_and_copies_an_archive_that_carries_signatures() {
    if !needs_command("skopeo") {
        return;
    }
    let app = app();
    let (dir, store) = store();
    let image = store.import_dir(app.path()).unwrap();
    let archive = export_signed(&store, &image.digest, dir.path());
    let inspect = run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", archive.display())));
    let inspected: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspected["Digest"], image.digest.as_str(), "{inspect}");
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

/// `digest` exported as an OCI archive with [`signatures`], at `dir/signed.tar`.
fn export_signed(store: &ImageStore, digest: &Digest, dir: &Path) -> PathBuf {
    let archive = dir.join("signed.tar");
    store
        .export_oci_archive(
            digest,
            "latest",
            &signatures(),
            fs::File::create(&archive).unwrap(),
        )
        .unwrap();
    archive
}
