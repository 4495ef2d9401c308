//! The canonical tar is a function of the tree alone: its bytes are what image digests are
//! made of, so they are pinned here.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use molt_pack::{write_canonical_tar, PackError};
use sha2::{Digest as _, Sha256};

fn write(path: &Path, contents: &str, mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn tar_of(dir: &Path) -> (Vec<u8>, u64) {
    let mut out = Vec::new();
    let (written, files) = write_canonical_tar(dir, &mut out).unwrap();
    assert_eq!(written, out.len() as u64);
    (out, files)
}

#[test]
fn the_same_tree_gives_the_same_bytes_whatever_its_order_times_and_modes() {
    let a = tempfile::tempdir().unwrap();
    write(&a.path().join("bin/run"), "#!/bin/sh\necho hi\n", 0o755);
    write(&a.path().join("README"), "hello\n", 0o644);
    let b = tempfile::tempdir().unwrap();
    write(&b.path().join("README"), "hello\n", 0o600);
    write(&b.path().join("bin/run"), "#!/bin/sh\necho hi\n", 0o700);
    let old = SystemTime::now() - Duration::from_secs(86_400);
    fs::File::open(b.path().join("README"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let (tar_a, files) = tar_of(a.path());
    assert_eq!(files, 2);
    assert_eq!(tar_a, tar_of(b.path()).0);
    // Pinned: a change here changes the digest of every image imported from a folder.
    assert_eq!(
        format!("{:x}", Sha256::digest(&tar_a)),
        "f9e8ef5fe4b7bfbcf7e20f759fcfbb6a4fb4a06064c4f7d3cb8caafa4ed7b38a",
        "the canonical tar of a known tree changed"
    );
}

#[test]
fn git_and_ignored_paths_are_left_out() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("app.txt"), "app\n", 0o644);
    let (plain, _) = tar_of(dir.path());
    write(&dir.path().join(".git/HEAD"), "ref: main\n", 0o644);
    write(&dir.path().join("deep/.git/config"), "x\n", 0o644);
    write(&dir.path().join("secret/key"), "k\n", 0o600);
    write(
        &dir.path().join(".moltignore"),
        "# not shipped\nsecret\n",
        0o644,
    );
    let (tar, files) = tar_of(dir.path());
    assert_eq!(files, 2, "app.txt and .moltignore");
    let listing = String::from_utf8_lossy(&tar);
    assert!(!listing.contains("HEAD") && !listing.contains("secret/key"));
    assert!(listing.contains("deep/"));
    assert_ne!(tar, plain);
}

#[test]
fn whiteout_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("sub/.wh.gone"), "", 0o644);
    let mut out = Vec::new();
    match write_canonical_tar(dir.path(), &mut out) {
        Err(PackError::UnsafeEntry { path, .. }) => assert_eq!(path, "sub/.wh.gone"),
        other => panic!("expected an unsafe entry, got {other:?}"),
    }
}
