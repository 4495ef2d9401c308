//! The data directory is private: 0700, and everything molt writes outside the image trees
//! 0600/0700 (state.db with its WAL and SHM, tokens, logs), on a fresh start of the `molt`
//! binary (umask 077) and on an old, loosened directory (tightened at start); a directory of
//! another user is refused.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use support::*;

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// Every path under `dir` outside the trees instances see (`images/`, and each runc bundle's
/// `rootfs/` skeleton: open to the instance's user on purpose), bounded.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(next) = todo.pop() {
        assert!(
            out.len() < 100_000,
            "too many files under {}",
            dir.display()
        );
        for entry in std::fs::read_dir(&next).unwrap().flatten() {
            let path = entry.path();
            let instance_tree = path.starts_with(dir.join("bundles"))
                && path.file_name().is_some_and(|name| name == "rootfs");
            if path == dir.join("images") || instance_tree {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                todo.push(path.clone());
            }
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_data_directory_is_private() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut serve = Serve::start(&data, None, true);
    // A deployment: instance logs, a WAL with rows in it.
    let app = make_app(tmp.path(), "priv", &[], FAST);
    let deployed = deploy_dir(&serve.client, &app).await;
    assert_eq!(deployed["state"], "drained", "{deployed}");
    assert_eq!(mode(&data), 0o700);
    for name in [
        "state.db",
        "state.db-wal",
        "state.db-shm",
        "admin.token",
        "router.token",
    ] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
    let paths = walk(&data);
    assert!(paths
        .iter()
        .any(|p| p.starts_with(data.join("logs")) && p.is_file()));
    for path in &paths {
        assert_eq!(
            mode(path) & 0o077,
            0,
            "{} is open to others ({:o})",
            path.display(),
            mode(path)
        );
    }
    serve.signal(Signal::SIGTERM);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_loose_data_directory_is_tightened_and_its_token_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let first = Harness::start_at(data.clone(), |_| {}).await;
    let token = first.running.as_ref().unwrap().token.clone();
    first.stop().await;
    // As an older molt left it: world-readable everything.
    let open = |path: &Path, m: u32| std::fs::set_permissions(path, PermissionsExt::from_mode(m));
    open(&data, 0o755).unwrap();
    // (Not the secrets key: older molts had none, and a loose key is refused rather than
    // tightened, see tests/secrets.rs.)
    for path in walk(&data)
        .into_iter()
        .filter(|p| !p.ends_with("secrets.key"))
    {
        let m = if path.is_dir() { 0o755 } else { 0o644 };
        open(&path, m).unwrap();
    }
    std::fs::write(data.join("logs/old.log"), "x").unwrap();
    open(&data.join("logs/old.log"), 0o644).unwrap();
    let h = Harness::start_at(data.clone(), |_| {}).await;
    assert_eq!(
        h.running.as_ref().unwrap().token,
        token,
        "the admin token is kept"
    );
    h.client.get("/v1/apps").await.unwrap();
    assert_eq!(mode(&data), 0o700);
    for dir in ["images", "logs", "uploads"] {
        assert_eq!(mode(&data.join(dir)), 0o700, "{dir}");
    }
    for name in [
        "state.db",
        "admin.token",
        "router.token",
        "owner.id",
        "logs/old.log",
    ] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_another_user_is_refused() {
    let root = nix::unistd::geteuid().is_root();
    if !molt_testkit::needs(root, "root (to give a directory to another user)") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(4242), Some(4242)).unwrap();
    let mut cfg = molt_server::ServeConfig::new(data.clone());
    cfg.api_addr = "127.0.0.1:0".parse().unwrap();
    cfg.router_addr = "127.0.0.1:0".parse().unwrap();
    let error = match molt_server::start(cfg).await {
        Ok(_) => panic!("molt serve started on another user's directory"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("belongs to uid 4242"), "{error}");
    assert!(
        std::fs::read_dir(&data).unwrap().next().is_none(),
        "nothing written"
    );
    assert_eq!(std::fs::metadata(&data).unwrap().uid(), 4242);
}
