//! The image store's archive readers on arbitrary bytes: `sniff_archive`, `import_archive`
//! (OCI and Docker archives), `import_oci_archive` and `import_tar` (a plain tree), each into a
//! fresh store, then `rootfs` of whatever got imported. Errors are fine; panics are not,
//! nothing may appear next to the store root and no temp file (`.tmp-*`) may be left inside it.
#![no_main]

use std::fs;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use molt_image::ImageStore;

fuzz_target!(|data: &[u8]| {
    let _ = molt_image::sniff_archive(data);

    let outer = tempfile::tempdir().expect("temp dir");
    let root = outer.path().join("store");
    let store = ImageStore::open(&root).expect("open store");
    let mut imported = Vec::new();
    if let Ok((image, _)) = store.import_archive(data, None) {
        imported.push(image.digest);
    }
    if let Ok(image) = store.import_oci_archive(data, None) {
        imported.push(image.digest);
    }
    if let Ok(image) = store.import_tar(data) {
        imported.push(image.digest);
    }
    for digest in &imported {
        let _ = store.rootfs(digest);
    }
    assert_only_store(outer.path());
    assert_no_temp_files(&root);
});

/// The store root is the only thing in `outer`: no member escaped it.
fn assert_only_store(outer: &Path) {
    let names: Vec<_> = fs::read_dir(outer)
        .expect("read outer dir")
        .map(|e| e.expect("dir entry").file_name())
        .collect();
    assert_eq!(
        names,
        ["store"],
        "something was written outside the store root"
    );
}

/// No `.tmp-*` staging file or directory survives an import, successful or not.
fn assert_no_temp_files(dir: &Path) {
    for entry in fs::read_dir(dir).expect("read store dir") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name();
        assert!(
            !name.to_string_lossy().starts_with(".tmp-"),
            "left behind: {}",
            entry.path().display()
        );
        if entry.file_type().expect("file type").is_dir() {
            assert_no_temp_files(&entry.path());
        }
    }
}
