//! Baking `[build]` recipes: layers per step, the layer cache, reproducibility, attachments
//! (SBOM and provenance) and image diffs, on real directories and a real store.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use molt_core::{BuildSpec, Digest, ImageRef, Manifest};
use molt_image::{
    BakeOptions, BakeReport, ImageStore, SourceInfo, StepOutcome, PROVENANCE_ANNOTATION,
    SBOM_ANNOTATION,
};

fn spec(build: &str) -> BuildSpec {
    let text = format!("name = \"shop\"\ncommand = [\"/bin/server\"]\n[build]\n{build}");
    Manifest::parse(&text, "molt.toml")
        .unwrap()
        .build
        .expect("[build]")
}

fn resolve(reference: &ImageRef) -> Result<Digest, String> {
    match reference {
        ImageRef::Digest(d) => Ok(d.clone()),
        ImageRef::Tag(t) => Err(format!("no tag {t} in this test")),
    }
}

fn options(epoch: u64) -> BakeOptions<'static> {
    BakeOptions {
        resolve: &resolve,
        source: SourceInfo {
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            dirty: true,
        },
        source_date_epoch: epoch,
        name: "shop".into(),
        molt_version: "0.1.0".into(),
        sandbox: None,
    }
}

fn write(path: &Path, contents: &str, mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// An app folder: a server binary, static files and something that must not be copied.
fn app(dir: &Path) {
    write(&dir.join("target/server"), "#!/bin/sh\necho hi\n", 0o755);
    write(&dir.join("static/index.html"), "<h1>shop</h1>", 0o644);
    write(&dir.join("static/css/site.css"), "h1 {}", 0o644);
    write(&dir.join("notes.txt"), "not copied", 0o600);
}

const RECIPE: &str = r#"base = "scratch"
steps = [
  { copy = "target/server", to = "/bin/server" },
  { env = { RUST_LOG = "info" } },
  { copy = "static", to = "/srv/static", owner = "1000:1000" },
  { workdir = "/srv" },
  { cmd = ["/bin/server", "--port", "8080"] },
  { port = 8080 },
]
"#;

fn outcomes(report: &BakeReport) -> Vec<StepOutcome> {
    report.steps.iter().map(|s| s.outcome).collect()
}

#[test]
fn copy_and_config_steps_make_an_image_with_one_layer_per_copy() {
    let (store_dir, ctx) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    app(ctx.path());
    let store = ImageStore::open(store_dir.path()).unwrap();
    let report = store.bake(ctx.path(), &spec(RECIPE), &options(0)).unwrap();
    assert_eq!(report.files, 3);
    use StepOutcome::*;
    assert_eq!(
        outcomes(&report),
        [Base, Built, Config, Built, Config, Config, Config]
    );

    let (manifest, config) = support::read_image(store_dir.path(), &report.digest);
    assert_eq!(manifest.layers().len(), 2);
    let c = config.config().as_ref().unwrap();
    assert_eq!(c.env().as_ref().unwrap(), &["RUST_LOG=info".to_string()]);
    assert_eq!(c.working_dir().as_deref(), Some("/srv"));
    assert_eq!(
        c.cmd().as_ref().unwrap(),
        &["/bin/server", "--port", "8080"].map(String::from)
    );
    assert_eq!(
        c.exposed_ports().as_ref().unwrap(),
        &["8080/tcp".to_string()]
    );
    let history = config.history().as_ref().unwrap();
    assert_eq!(history.len(), 6);
    assert!(history
        .iter()
        .all(|h| h.created().as_deref() == Some("1970-01-01T00:00:00Z")));
    assert_eq!(history[1].empty_layer(), Some(true));

    let rootfs = store.rootfs(&report.digest).unwrap();
    let server = fs::metadata(rootfs.join("bin/server")).unwrap();
    assert_eq!(server.permissions().mode() & 0o111, 0o111);
    assert_eq!(
        fs::read_to_string(rootfs.join("srv/static/css/site.css")).unwrap(),
        "h1 {}"
    );
    assert!(!rootfs.join("notes.txt").exists());

    // Owners are normalised except where a step says otherwise; mtimes are the epoch.
    let layer = support::molt_digest(manifest.layers()[1].digest());
    let tar = flate2::read::GzDecoder::new(
        fs::File::open(support::blob_path(store_dir.path(), &layer)).unwrap(),
    );
    for entry in tar::Archive::new(tar).entries().unwrap() {
        let entry = entry.unwrap();
        let h = entry.header();
        let path = entry.path().unwrap().into_owned();
        // The parents the copy creates stay root's; the copied folder and its contents not.
        let want = if path.starts_with("srv/static") {
            1000
        } else {
            0
        };
        assert_eq!(h.uid().unwrap(), want, "{path:?}");
        assert_eq!(h.gid().unwrap(), want, "{path:?}");
        assert_eq!(h.mtime().unwrap(), 0);
    }
}

#[test]
fn an_unchanged_bake_reuses_every_layer_and_gives_the_same_digest() {
    let (store_dir, ctx) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    app(ctx.path());
    let store = ImageStore::open(store_dir.path()).unwrap();
    let first = store.bake(ctx.path(), &spec(RECIPE), &options(0)).unwrap();
    let second = store.bake(ctx.path(), &spec(RECIPE), &options(0)).unwrap();
    assert_eq!(first.digest, second.digest);
    assert_eq!(first.inputs, second.inputs);
    assert!(!outcomes(&second).contains(&StepOutcome::Built));
    assert_eq!(
        outcomes(&second)
            .iter()
            .filter(|o| **o == StepOutcome::Cached)
            .count(),
        2
    );
}

#[test]
fn a_one_file_change_rebuilds_only_from_its_step_on() {
    let (store_dir, ctx) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    app(ctx.path());
    let store = ImageStore::open(store_dir.path()).unwrap();
    let before = store.bake(ctx.path(), &spec(RECIPE), &options(0)).unwrap();
    write(
        &ctx.path().join("static/index.html"),
        "<h1>shop v2</h1>",
        0o644,
    );
    let after = store.bake(ctx.path(), &spec(RECIPE), &options(0)).unwrap();
    use StepOutcome::*;
    assert_eq!(
        outcomes(&after),
        [Base, Cached, Config, Built, Config, Config, Config]
    );
    assert_eq!(before.steps[1].layer, after.steps[1].layer);
    assert_ne!(before.digest, after.digest);
    let diff = store.diff(&before.digest, &after.digest).unwrap();
    assert_eq!(diff.changed, ["srv/static/index.html"]);
    assert!(diff.added.is_empty() && diff.removed.is_empty());
}

#[test]
fn the_same_inputs_from_other_paths_times_and_modes_give_the_same_digest() {
    let recipe = spec(RECIPE);
    let bake = |ctx: &Path, epoch: u64| {
        let store_dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(store_dir.path()).unwrap();
        store.bake(ctx, &recipe, &options(epoch)).unwrap().digest
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    app(a.path());
    // Another copy, somewhere else, written with another umask, at another time.
    let b_app = b.path().join("deeper/copy");
    app(&b_app);
    write(&b_app.join("static/index.html"), "<h1>shop</h1>", 0o600);
    write(&b_app.join("static/css/site.css"), "h1 {}", 0o664);
    fs::File::options()
        .write(true)
        .open(b_app.join("target/server"))
        .unwrap()
        .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_234_567))
        .unwrap();
    assert_eq!(bake(a.path(), 0), bake(&b_app, 0));
    // SOURCE_DATE_EPOCH is part of the image (mtimes and created).
    assert_ne!(bake(a.path(), 0), bake(a.path(), 1_700_000_000));
}

#[test]
fn a_docker_archive_base_bakes_the_same_tree_as_the_stored_image() {
    let (store_dir, ctx) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    app(ctx.path());
    let store = ImageStore::open(store_dir.path()).unwrap();
    let base_tree = tempfile::tempdir().unwrap();
    write(&base_tree.path().join("etc/os-release"), "ID=test\n", 0o644);
    write(&base_tree.path().join("bin/tool"), "tool", 0o755);
    let base = store.import_dir(base_tree.path()).unwrap();
    let steps = "steps = [{ copy = \"target/server\", to = \"/bin/server\" }]\n";
    let on_image = store
        .bake(
            ctx.path(),
            &spec(&format!("base = \"{}\"\n{steps}", base.digest)),
            &options(0),
        )
        .unwrap();
    let (_, image_config) = support::read_image(store_dir.path(), &on_image.digest);

    // molt's own Docker export of the base, baked on in a store that never saw it.
    let mut archive = Vec::new();
    store
        .export_docker_archive(&base.digest, Some("base:1"), &mut archive)
        .unwrap();
    assert_eq!(
        molt_image::sniff_archive(&archive[..]).unwrap(),
        Some(molt_image::ArchiveFormat::Docker)
    );
    fs::write(ctx.path().join("base.tar"), archive).unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other = ImageStore::open(other_dir.path()).unwrap();
    let on_archive = other
        .bake(
            ctx.path(),
            &spec(&format!("base = {{ archive = \"base.tar\" }}\n{steps}")),
            &options(0),
        )
        .unwrap();
    // The same uncompressed layers (diff ids) and the same files as baking on the image.
    let (manifest, config) = support::read_image(other_dir.path(), &on_archive.digest);
    assert_eq!(manifest.layers().len(), 2);
    assert_eq!(config.rootfs().diff_ids(), image_config.rootfs().diff_ids());
    assert_eq!(
        other.files(&on_archive.digest).unwrap(),
        store.files(&on_image.digest).unwrap()
    );
    let rootfs = other.rootfs(&on_archive.digest).unwrap();
    assert_eq!(fs::read_to_string(rootfs.join("bin/tool")).unwrap(), "tool");

    // Something that is neither archive kind is refused with a clear error.
    fs::write(
        ctx.path().join("base.tar"),
        support::tar_dir(base_tree.path()),
    )
    .unwrap();
    let err = other
        .bake(
            ctx.path(),
            &spec(&format!("base = {{ archive = \"base.tar\" }}\n{steps}")),
            &options(0),
        )
        .unwrap_err();
    assert!(err.to_string().contains("neither an oci-layout"), "{err}");
}

#[test]
fn bases_can_be_a_stored_image_an_oci_archive_or_a_rootfs_folder() {
    let (store_dir, ctx) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    app(ctx.path());
    let store = ImageStore::open(store_dir.path()).unwrap();
    let base_tree = tempfile::tempdir().unwrap();
    write(&base_tree.path().join("etc/os-release"), "ID=test\n", 0o644);
    write(&base_tree.path().join("bin/tool"), "tool", 0o755);
    let base = store.import_dir(base_tree.path()).unwrap();

    let steps = "steps = [{ copy = \"target/server\", to = \"/bin/server\" }]\n";
    let on_image = store
        .bake(
            ctx.path(),
            &spec(&format!("base = \"{}\"\n{steps}", base.digest)),
            &options(0),
        )
        .unwrap();
    let (manifest, _) = support::read_image(store_dir.path(), &on_image.digest);
    assert_eq!(manifest.layers().len(), 2);
    let files = store.files(&on_image.digest).unwrap();
    let paths: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(paths, ["bin/server", "bin/tool", "etc/os-release"]);

    let mut archive = Vec::new();
    store
        .export_oci_archive(&base.digest, "base", &[], &mut archive)
        .unwrap();
    fs::write(ctx.path().join("base.tar"), archive).unwrap();
    let on_archive = store
        .bake(
            ctx.path(),
            &spec(&format!("base = {{ archive = \"base.tar\" }}\n{steps}")),
            &options(0),
        )
        .unwrap();
    // The same layers; the image differs only by its provenance, which names the base.
    let (archive_manifest, _) = support::read_image(store_dir.path(), &on_archive.digest);
    assert_eq!(archive_manifest.layers(), manifest.layers());
    assert_eq!(store.files(&on_archive.digest).unwrap(), files);

    let rootfs_dir = ctx.path().join("rootfs");
    fs::rename(base_tree.path(), &rootfs_dir).unwrap_or_else(|_| {
        write(&rootfs_dir.join("etc/os-release"), "ID=test\n", 0o644);
        write(&rootfs_dir.join("bin/tool"), "tool", 0o755);
    });
    let on_rootfs = store
        .bake(
            ctx.path(),
            &spec(&format!("base = {{ rootfs = \"rootfs\" }}\n{steps}")),
            &options(0),
        )
        .unwrap();
    assert_eq!(on_rootfs.steps[0].outcome, StepOutcome::Built);
    assert_eq!(store.files(&on_rootfs.digest).unwrap(), files);
    let again = store
        .bake(
            ctx.path(),
            &spec(&format!("base = {{ rootfs = \"rootfs\" }}\n{steps}")),
            &options(0),
        )
        .unwrap();
    assert_eq!(again.steps[0].outcome, StepOutcome::Cached);
}

#[test]
fn bad_bakes_get_clear_errors_and_leave_no_image() {
    let (store_dir, ctx) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    app(ctx.path());
    let store = ImageStore::open(store_dir.path()).unwrap();
    let cases = [
        (
            "base = \"scratch\"\nsteps = [{ run = [\"/bin/true\"] }]\n",
            "run steps need isolation: root and runc",
        ),
        (
            "base = \"scratch\"\nsteps = [{ copy = \"missing\", to = \"/x\" }]\n",
            "missing",
        ),
        ("base = \"shop:1\"\n", "no tag shop:1"),
        (
            "base = \"scratch\"\nsteps = [{ copy = \"target/server\", to = \"/a\" }, { run = [\"x\"] }]\n",
            "run steps need isolation",
        ),
    ];
    for (recipe, want) in cases {
        let err = store
            .bake(ctx.path(), &spec(recipe), &options(0))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{err:?} lacks {want:?}");
    }
    std::os::unix::fs::symlink("/etc", ctx.path().join("escape")).unwrap();
    let err = store
        .bake(
            ctx.path(),
            &spec("base = \"scratch\"\nsteps = [{ copy = \"escape\", to = \"/x\" }]\n"),
            &options(0),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("outside the app folder"), "{err}");
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn baked_images_carry_an_sbom_and_provenance_that_gc_keeps() {
    let (store_dir, ctx) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    app(ctx.path());
    let store = ImageStore::open(store_dir.path()).unwrap();
    let report = store.bake(ctx.path(), &spec(RECIPE), &options(0)).unwrap();

    let sbom = store
        .attachment(&report.digest, SBOM_ANNOTATION)
        .unwrap()
        .expect("an SBOM");
    assert_eq!(sbom["bomFormat"], "CycloneDX");
    assert_eq!(sbom["specVersion"], "1.5");
    let components = sbom["components"].as_array().unwrap();
    assert_eq!(components.len(), 3);
    let server = components
        .iter()
        .find(|c| c["name"] == "/bin/server")
        .unwrap();
    assert_eq!(
        server["hashes"][0]["content"],
        support::sha256(b"#!/bin/sh\necho hi\n").hex()
    );
    assert_eq!(server["properties"][0]["value"], "18");

    let provenance = store
        .attachment(&report.digest, PROVENANCE_ANNOTATION)
        .unwrap()
        .expect("provenance");
    assert_eq!(
        provenance["source"]["commit"],
        "0123456789abcdef0123456789abcdef01234567"
    );
    assert_eq!(provenance["source"]["dirty"], true);
    assert_eq!(provenance["inputs"], report.inputs.to_string());
    assert_eq!(provenance["molt_version"], "0.1.0");
    assert_eq!(provenance["steps"].as_array().unwrap().len(), 7);

    // Removing another image sweeps unreferenced blobs, never a baked image's attachments.
    let other = tempfile::tempdir().unwrap();
    write(&other.path().join("x"), "x", 0o644);
    let other = store.import_dir(other.path()).unwrap();
    store.remove(&other.digest).unwrap();
    assert!(store
        .attachment(&report.digest, SBOM_ANNOTATION)
        .unwrap()
        .is_some());
    // They travel with the image in an OCI archive, too.
    let mut archive = Vec::new();
    store
        .export_oci_archive(&report.digest, "latest", &[], &mut archive)
        .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let elsewhere = ImageStore::open(elsewhere.path()).unwrap();
    let imported = elsewhere.import_oci_archive(&archive[..], None).unwrap();
    assert_eq!(imported.digest, report.digest);
}

#[test]
fn diff_works_for_images_without_provenance() {
    let (store_dir, a, b) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let store = ImageStore::open(store_dir.path()).unwrap();
    write(&a.path().join("same"), "1", 0o644);
    write(&a.path().join("gone"), "2", 0o644);
    write(&a.path().join("dir/edited"), "3", 0o644);
    write(&b.path().join("same"), "1", 0o644);
    write(&b.path().join("dir/edited"), "33", 0o644);
    write(&b.path().join("dir/new"), "4", 0o644);
    let (a, b) = (
        store.import_dir(a.path()).unwrap(),
        store.import_dir(b.path()).unwrap(),
    );
    let diff = store.diff(&a.digest, &b.digest).unwrap();
    assert_eq!(diff.added, ["dir/new"]);
    assert_eq!(diff.removed, ["gone"]);
    assert_eq!(diff.changed, ["dir/edited"]);
    assert!(store
        .attachment(&a.digest, SBOM_ANNOTATION)
        .unwrap()
        .is_none());
}

#[test]
fn copy_targets_modes_and_the_whole_folder() {
    let (store_dir, ctx) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    app(ctx.path());
    fs::write(ctx.path().join(".moltignore"), "notes.txt\n").unwrap();
    fs::create_dir(ctx.path().join(".git")).unwrap();
    fs::write(ctx.path().join(".git/HEAD"), "ref").unwrap();
    let store = ImageStore::open(store_dir.path()).unwrap();
    let report = store
        .bake(
            ctx.path(),
            &spec(
                r#"base = "scratch"
steps = [
  { copy = "target/server", to = "/opt/tools/" },
  { copy = "static/index.html", to = "/index.html", mode = "0600" },
  { copy = ".", to = "/app" },
]
"#,
            ),
            &options(0),
        )
        .unwrap();
    let rootfs = store.rootfs(&report.digest).unwrap();
    assert!(rootfs.join("opt/tools/server").is_file());
    assert!(rootfs.join("app/static/css/site.css").is_file());
    // The whole folder keeps the app's ignore rules.
    assert!(!rootfs.join("app/notes.txt").exists());
    assert!(!rootfs.join("app/.git").exists());
    // mode is what the layer says (the store's rootfs strips write bits, so read the layer).
    let (manifest, _) = support::read_image(store_dir.path(), &report.digest);
    let layer = support::molt_digest(manifest.layers()[1].digest());
    let tar = flate2::read::GzDecoder::new(
        fs::File::open(support::blob_path(store_dir.path(), &layer)).unwrap(),
    );
    let modes: Vec<(String, u32)> = tar::Archive::new(tar)
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                e.header().mode().unwrap(),
            )
        })
        .collect();
    assert_eq!(modes, [("index.html".to_string(), 0o600)]);
}

/// A root filesystem tarball shaped like `debootstrap`'s output: merged-/usr links, absolute
/// links (`lib64`, `/etc/alternatives`, `/etc/localtime`), a hard-linked binary, a setuid
/// file owned by root, a `/dev` without device nodes, a sticky `/tmp` and a directory owned by
/// a system user.
fn debootstrap_like_tar() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut add =
        |path: &str, kind: tar::EntryType, mode: u32, owner: u64, data: &[u8], link: &str| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_uid(owner);
            header.set_gid(owner);
            header.set_mtime(1_700_000_000);
            header.set_size(data.len() as u64);
            if link.is_empty() {
                builder.append_data(&mut header, path, data).unwrap();
            } else {
                builder.append_link(&mut header, path, link).unwrap();
            }
        };
    use tar::EntryType::{Directory as D, Link as H, Regular as F, Symlink as S};
    for dir in [
        "./",
        "dev/",
        "etc/",
        "etc/alternatives/",
        "usr/",
        "usr/bin/",
        "usr/lib64/",
    ] {
        add(dir, D, 0o755, 0, b"", "");
    }
    add("tmp/", D, 0o1777, 0, b"", "");
    add("var/cache/apt/archives/partial/", D, 0o700, 42, b"", "");
    add("bin", S, 0o777, 0, b"", "usr/bin");
    add("lib64", S, 0o777, 0, b"", "/usr/lib64");
    add(
        "usr/lib64/ld-linux-x86-64.so.2",
        F,
        0o755,
        0,
        b"\x7fELF loader",
        "",
    );
    add("usr/bin/mawk", F, 0o755, 0, b"mawk", "");
    add("etc/alternatives/awk", S, 0o777, 0, b"", "/usr/bin/mawk");
    add("usr/bin/awk", S, 0o777, 0, b"", "/etc/alternatives/awk");
    add(
        "etc/localtime",
        S,
        0o777,
        0,
        b"",
        "/usr/share/zoneinfo/Etc/UTC",
    );
    add("etc/os-release", F, 0o644, 0, b"ID=debian\n", "");
    add("usr/bin/perl", F, 0o755, 0, b"perl", "");
    add("usr/bin/perl5.36.0", H, 0o755, 0, b"", "usr/bin/perl");
    add("usr/bin/passwd", F, 0o4755, 0, b"passwd", "");
    add(
        "usr/share/doc/up",
        S,
        0o777,
        0,
        b"",
        "../../../../../../outside",
    );
    builder.into_inner().unwrap()
}

#[test]
fn a_debootstrap_shaped_rootfs_is_a_base_and_bakes() {
    let (store_dir, ctx) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    app(ctx.path());
    fs::write(ctx.path().join("rootfs.tar"), debootstrap_like_tar()).unwrap();
    let store = ImageStore::open(store_dir.path()).unwrap();
    // Copies through the base's links land behind them: `bin -> usr/bin` stays a link.
    let recipe = "base = { rootfs = \"rootfs.tar\" }\nsteps = [\n  \
        { copy = \"target/server\", to = \"/usr/local/bin/server\" },\n  \
        { copy = \"target/server\", to = \"/bin/server\" },\n  \
        { copy = \"static\", to = \"/lib64/static\" },\n  \
        { cmd = [\"/usr/local/bin/server\"] },\n]\n";
    let first = store.bake(ctx.path(), &spec(recipe), &options(0)).unwrap();
    assert_eq!(
        outcomes(&first),
        [
            StepOutcome::Built,
            StepOutcome::Built,
            StepOutcome::Built,
            StepOutcome::Built,
            StepOutcome::Config
        ]
    );
    let rootfs = store.rootfs(&first.digest).unwrap();
    for (link, target) in [
        ("bin", "usr/bin"),
        ("lib64", "/usr/lib64"),
        ("usr/bin/awk", "/etc/alternatives/awk"),
        ("etc/alternatives/awk", "/usr/bin/mawk"),
        ("etc/localtime", "/usr/share/zoneinfo/Etc/UTC"),
        ("usr/share/doc/up", "../../../../../../outside"),
    ] {
        assert_eq!(fs::read_link(rootfs.join(link)).unwrap(), Path::new(target));
    }
    assert_eq!(
        fs::read(rootfs.join("usr/bin/perl5.36.0")).unwrap(),
        b"perl"
    );
    assert!(rootfs.join("dev").is_dir() && rootfs.join("tmp").is_dir());
    assert!(rootfs.join("var/cache/apt/archives/partial").is_dir());
    // Modes are the store's normalized ones: a setuid bit is not carried into the image.
    let mode = fs::metadata(rootfs.join("usr/bin/passwd"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o555);
    let files = store.files(&first.digest).unwrap();
    for path in [
        "usr/bin/perl",
        "usr/bin/perl5.36.0",
        "usr/local/bin/server",
        "usr/bin/server",
        "usr/lib64/static/index.html",
        "usr/lib64/ld-linux-x86-64.so.2",
    ] {
        assert!(files.contains_key(path), "{path}: {:?}", files.keys());
    }
    assert!(!files.contains_key("bin/server") && !files.contains_key("lib64/static/index.html"));
    assert!(rootfs.join("usr/bin/server").is_file());
    assert!(store.verify_rootfs(&first.digest).unwrap().is_intact());

    // Unchanged: every layer from the cache, the same digest.
    let again = store.bake(ctx.path(), &spec(recipe), &options(0)).unwrap();
    assert_eq!(again.digest, first.digest);
    assert_eq!(again.steps[0].outcome, StepOutcome::Cached);

    // The same tree as a folder (unpacked by the store, so with the same links) is the same base.
    let unpacked = ctx.path().join("rootfs");
    fs::create_dir(&unpacked).unwrap();
    tar::Archive::new(&debootstrap_like_tar()[..])
        .unpack(&unpacked)
        .unwrap();
    let from_dir = store
        .bake(
            ctx.path(),
            &spec(&recipe.replace("rootfs.tar", "rootfs")),
            &options(0),
        )
        .unwrap();
    assert_eq!(store.files(&from_dir.digest).unwrap(), files);
    assert_eq!(from_dir.steps[0].layer, first.steps[0].layer);
}

/// Names of the files in the store's bake cache.
fn cache_files(store_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(store_dir.join("cache"))
        .map(|items| {
            items
                .map(|i| i.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn swept_layers_leave_no_cache_entry_and_a_missing_blob_is_rebuilt() {
    let (store_dir, ctx) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    app(ctx.path());
    let store = ImageStore::open(store_dir.path()).unwrap();
    let first = store.bake(ctx.path(), &spec(RECIPE), &options(0)).unwrap();
    let layers: Vec<Digest> = first.steps.iter().filter_map(|s| s.layer.clone()).collect();
    assert_eq!(layers.len(), 2);

    // A layer blob lost behind the cache's back: the bake rebuilds that step (same bytes).
    fs::remove_file(store_dir.path().join("blobs/sha256").join(layers[1].hex())).unwrap();
    let rebuilt = store.bake(ctx.path(), &spec(RECIPE), &options(0)).unwrap();
    assert_eq!(
        outcomes(&rebuilt)
            .into_iter()
            .filter(|o| !matches!(o, StepOutcome::Config | StepOutcome::Base))
            .collect::<Vec<_>>(),
        [StepOutcome::Cached, StepOutcome::Built]
    );
    assert_eq!(rebuilt.digest, first.digest);
    // The size is the whole image's, however many of its blobs this bake wrote.
    assert_eq!(rebuilt.size, first.size);
    let listed = store.list().unwrap();
    assert_eq!(listed, [(first.digest.clone(), first.size)]);
    assert!(store
        .rootfs(&rebuilt.digest)
        .unwrap()
        .join("srv/static/index.html")
        .is_file());

    // Kept: the sweep leaves the cache alone.
    let keep = std::collections::HashSet::from([first.digest.clone()]);
    let kept = store.collect(&keep, Duration::ZERO, false).unwrap();
    assert_eq!(kept.cache_entries, 0);
    let cached = cache_files(store_dir.path());
    assert_eq!(cached.len(), 4, "two keys and two listings: {cached:?}");

    // Not kept: the layers go, and so does every cache file naming them (the dry run counts
    // the same and removes nothing).
    let none = std::collections::HashSet::new();
    let plan = store.collect(&none, Duration::ZERO, true).unwrap();
    assert_eq!(plan.cache_entries, 4);
    assert_eq!(cache_files(store_dir.path()), cached);
    let swept = store.collect(&none, Duration::ZERO, false).unwrap();
    assert_eq!(swept.cache_entries, 4);
    assert!(swept.blobs >= 2);
    assert!(cache_files(store_dir.path()).is_empty());

    // The next bake builds every layer again and gives the same image.
    let again = store.bake(ctx.path(), &spec(RECIPE), &options(0)).unwrap();
    assert!(!outcomes(&again).contains(&StepOutcome::Cached));
    assert_eq!(again.digest, first.digest);
    assert!(store
        .rootfs(&again.digest)
        .unwrap()
        .join("bin/server")
        .is_file());
}
