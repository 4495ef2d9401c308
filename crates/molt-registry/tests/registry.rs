//! Push and pull against Debian's real `docker-registry` (distribution 2.8) on 127.0.0.1, with
//! htpasswd auth and filesystem storage in a temp dir. Skipped when `docker-registry` or
//! `htpasswd` (apache2-utils) is missing; in CI, which installs both, that is a failure
//! (molt-testkit).

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use molt_image::CarriedSignature;
use molt_image::ImageStore;
use molt_registry::{
    pull, push, referrers_tag, Credentials, RegistryError, SIGNATURE_ARTIFACT_TYPE,
};
use molt_testkit::needs_command;

/// A registry process, killed (by its own pid) when dropped.
struct Registry {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        let htpasswd = Command::new("htpasswd")
            .args(["-Bbn", "molt", "s3cret"])
            .output()
            .unwrap();
        assert!(htpasswd.status.success());
        fs::write(dir.join("htpasswd"), &htpasswd.stdout).unwrap();
        // A free port: bind, note it, release it for the registry.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: molt-test\n    path: {}\n",
            dir.join("storage").display(),
            dir.join("htpasswd").display()
        );
        fs::write(dir.join("config.yml"), config).unwrap();
        let log = fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let registry = Registry { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start: {}",
                fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }
}

fn creds() -> Credentials {
    Credentials {
        username: "molt".into(),
        password: "s3cret".into(),
    }
}

/// An app tree with a 5 MiB file that does not compress, so the layer needs two chunks.
fn big_app(dir: &Path) {
    let mut bytes = vec![0u8; 5 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in bytes.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::File::create(dir.join("bin/blob"))
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    fs::write(dir.join("index.html"), "hello\n").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_then_pull_through_a_real_registry_keeps_the_digest() {
    if !(needs_command("docker-registry") && needs_command("htpasswd")) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::start(tmp.path());
    let app = tmp.path().join("app");
    big_app(&app);
    let one = ImageStore::open(&tmp.path().join("one")).unwrap();
    let image = one.import_dir(&app).unwrap();
    let target = format!("{}/shop/web:1", registry.addr);

    // Wrong password: a clear error that does not echo the password.
    let wrong = Credentials {
        username: "molt".into(),
        password: "nope-nope".into(),
    };
    let err = push(&one, &image.digest, &target, Some(&wrong), None, &[])
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Registry { .. }), "{err}");
    assert!(!err.to_string().contains("nope-nope"), "{err}");

    let pushed = push(&one, &image.digest, &target, Some(&creds()), None, &[])
        .await
        .unwrap();
    assert_eq!(pushed.digest, image.digest);
    assert_eq!((pushed.uploaded, pushed.mounted), (2, 0));
    // Both blobs went up streamed from the store in 4 MiB chunks (the layer needs two).
    assert_eq!(pushed.streamed, 2, "{pushed:?}");
    assert!(pushed.bytes > 5 << 20, "{pushed:?}");

    // A second repository on the same registry mounts the blobs instead of uploading them.
    let copy = format!("{}/shop/copy:1", registry.addr);
    let mounted = push(
        &one,
        &image.digest,
        &copy,
        Some(&creds()),
        Some("shop/web"),
        &[],
    )
    .await
    .unwrap();
    assert_eq!((mounted.uploaded, mounted.mounted), (0, 2), "{mounted:?}");

    // Pushing again (a redeploy of the same image): every blob is there already, none is sent.
    let again = push(&one, &image.digest, &target, Some(&creds()), None, &[])
        .await
        .unwrap();
    assert_eq!(
        (again.uploaded, again.mounted, again.present),
        (0, 0, 2),
        "{again:?}"
    );

    // Pull into an empty store, by tag and by digest: the same image, unpacked the same.
    let two = ImageStore::open(&tmp.path().join("two")).unwrap();
    let pulled = pull(&two, &copy, Some(&creds())).await.unwrap();
    assert_eq!(pulled.digest, image.digest);
    // Pushed without signatures, the registry has no referrers index for it: none came.
    assert_eq!(pulled.signatures, Vec::new());
    assert_eq!(pulled.files, image.files);
    let by_digest = format!("{}/shop/web@{}", registry.addr, image.digest);
    assert_eq!(
        pull(&two, &by_digest, Some(&creds())).await.unwrap().digest,
        image.digest
    );
    let rootfs = two.rootfs(&pulled.digest).unwrap();
    assert_eq!(
        fs::read(rootfs.join("bin/blob")).unwrap(),
        fs::read(app.join("bin/blob")).unwrap()
    );
    // Nothing is left in the store's scratch space.
    assert_eq!(fs::read_dir(tmp.path().join("two/tmp")).unwrap().count(), 0);

    // Unknown tag and anonymous access: clear errors, nothing stored.
    let three = ImageStore::open(&tmp.path().join("three")).unwrap();
    let missing = format!("{}/shop/web:404", registry.addr);
    assert!(pull(&three, &missing, Some(&creds())).await.is_err());
    assert!(pull(&three, &copy, None).await.is_err());
    assert!(three.list().unwrap().is_empty());

    // skopeo reads what molt pushed.
    if needs_command("skopeo") {
        let out = Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--creds", "molt:s3cret"])
            .arg(format!("docker://{target}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["Digest"], image.digest.as_str());
    }

    // A stored layer damaged on disk is caught while it streams: the upload is never closed,
    // the push fails with the store's error and the registry gets no manifest.
    let layer = one.inspect(&image.digest).unwrap().layers[0].digest.clone();
    let (path, _) = one.blob_file(&layer).unwrap();
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&path, bytes).unwrap();
    let bad = format!("{}/shop/bad:1", registry.addr);
    let err = push(&one, &image.digest, &bad, Some(&creds()), None, &[])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::Image(molt_image::ImageError::Corrupt { .. })
        ),
        "{err}"
    );
    assert!(pull(&three, &bad, Some(&creds())).await.is_err());
    drop(registry);
}

/// Stand-ins for signatures: molt-registry carries them and never checks them (the controller
/// does, see `crates/molt/tests/signing.rs`).
fn signatures(keys: &[char]) -> Vec<CarriedSignature> {
    keys.iter()
        .map(|k| CarriedSignature {
            public_key: k.to_string().repeat(64),
            signature: format!("{k}1").repeat(64),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_go_up_next_to_the_image_and_come_back_with_it() {
    if !(needs_command("docker-registry") && needs_command("htpasswd")) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::start(tmp.path());
    let app = tmp.path().join("app");
    fs::create_dir_all(&app).unwrap();
    fs::write(app.join("index.html"), "signed\n").unwrap();
    let one = ImageStore::open(&tmp.path().join("one")).unwrap();
    let image = one.import_dir(&app).unwrap();
    let target = format!("{}/shop/signed:1", registry.addr);

    let pushed = push(
        &one,
        &image.digest,
        &target,
        Some(&creds()),
        None,
        &signatures(&['a', 'b']),
    )
    .await
    .unwrap();
    assert_eq!(pushed.signatures, 2, "{pushed:?}");
    let two = ImageStore::open(&tmp.path().join("two")).unwrap();
    let pulled = pull(&two, &target, Some(&creds())).await.unwrap();
    assert_eq!(pulled.digest, image.digest);
    assert_eq!(pulled.signatures, signatures(&['a', 'b']));
    // By digest too: the signatures are found from the image, not from the tag.
    let by_digest = format!("{}/shop/signed@{}", registry.addr, image.digest);
    let pulled = pull(&two, &by_digest, Some(&creds())).await.unwrap();
    assert_eq!(pulled.signatures, signatures(&['a', 'b']));

    // What the registry holds is the referrers tag schema: an index under sha256-<hex>
    // listing one artifact whose subject is the image, as other tools read it.
    if needs_command("skopeo") {
        let index = format!(
            "{}/shop/signed:{}",
            registry.addr,
            referrers_tag(&image.digest)
        );
        let raw = |reference: &str| {
            let out = Command::new("skopeo")
                .args([
                    "inspect",
                    "--raw",
                    "--tls-verify=false",
                    "--creds",
                    "molt:s3cret",
                ])
                .arg(format!("docker://{reference}"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
        };
        let listed = raw(&index);
        assert_eq!(
            listed["manifests"][0]["artifactType"],
            SIGNATURE_ARTIFACT_TYPE
        );
        let artifact = raw(&format!(
            "{}/shop/signed@{}",
            registry.addr,
            listed["manifests"][0]["digest"].as_str().unwrap()
        ));
        assert_eq!(artifact["subject"]["digest"], image.digest.as_str());
    }

    // Pushed again with another set: the image's entry is replaced, not added to.
    let again = push(
        &one,
        &image.digest,
        &target,
        Some(&creds()),
        None,
        &signatures(&['c']),
    )
    .await
    .unwrap();
    assert_eq!((again.present, again.signatures), (2, 1), "{again:?}");
    let three = ImageStore::open(&tmp.path().join("three")).unwrap();
    let pulled = pull(&three, &target, Some(&creds())).await.unwrap();
    assert_eq!(pulled.signatures, signatures(&['c']));
    drop(registry);
}
