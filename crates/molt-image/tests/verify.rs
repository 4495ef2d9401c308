//! Verified immutability: the tree manifest recorded at unpack, drift detection, re-unpack.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use molt_image::ImageStore;

#[test]
fn a_tampered_tree_is_detected_and_reunpacked_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("store")).unwrap();
    let app = tmp.path().join("app");
    fs::create_dir_all(app.join("lib")).unwrap();
    fs::write(app.join("server.py"), "print('hi')\n").unwrap();
    fs::write(app.join("lib/util.py"), "X = 1\n").unwrap();
    let digest = store.import_dir(&app).unwrap().digest;
    let root = store.rootfs(&digest).unwrap();

    let recorded = store.tree_manifest(&digest).unwrap();
    assert!(recorded.entries.contains_key("lib/util.py"));
    let v = store.verify_rootfs(&digest).unwrap();
    assert!(v.is_intact(), "{v:?}");
    assert_eq!(v.actual, recorded.digest);
    // The same image always records the same rootfs digest.
    let other = ImageStore::open(&tmp.path().join("other")).unwrap();
    let again = other.import_dir(&app).unwrap().digest;
    other.rootfs(&again).unwrap();
    assert_eq!(other.tree_manifest(&again).unwrap().digest, recorded.digest);

    // Edit a file (root ignores the missing write bit), add one, remove one.
    let file = root.join("server.py");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&file, "print('pwned')\n").unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o444)).unwrap();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("extra"), "x").unwrap();
    fs::set_permissions(root.join("lib"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::remove_file(root.join("lib/util.py")).unwrap();
    let v = store.verify_rootfs(&digest).unwrap();
    assert!(!v.is_intact());
    assert_eq!(
        v.modified.iter().filter(|p| *p == "/server.py").count(),
        1,
        "{v:?}"
    );
    assert!(v.added.contains(&"/extra".to_string()), "{v:?}");
    assert_eq!(v.removed, ["/lib/util.py"]);
    assert_eq!(v.expected, recorded.digest);

    // Re-unpack: a clean tree at the same path; the drifted one is set aside, then discarded.
    let clean = store.reunpack(&digest).unwrap();
    assert_eq!(clean, root);
    assert!(store.verify_rootfs(&digest).unwrap().is_intact());
    assert_eq!(
        fs::read_to_string(clean.join("server.py")).unwrap(),
        "print('hi')\n"
    );
    store.discard_set_aside().unwrap();
    let leftovers: Vec<_> = fs::read_dir(root.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "the tree only: {leftovers:?}");

    // Removing the image removes its manifest too.
    store.remove(&digest).unwrap();
    assert!(fs::read_dir(root.parent().unwrap())
        .unwrap()
        .next()
        .is_none());
    let trees = tmp.path().join("store/trees");
    assert!(fs::read_dir(trees).unwrap().next().is_none());
}
