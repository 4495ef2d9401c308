//! Signed images against a real `molt serve --require-signature`: an unsigned image is refused
//! before anything starts, a signature of another image is refused, and once signed with
//! `molt images sign` the same image deploys. Signatures travel with the image to another
//! molt (a fresh data directory) in an OCI archive and through a real `docker-registry`; one
//! changed on the way is refused with nothing imported.

mod support;

use std::path::Path;

use molt_cli::client::ApiError;
use molt_cli::Client;
use molt_image::{CarriedSignature, ImageStore};
use molt_registry::Credentials;
use molt_testkit::needs_command;
use serde_json::{json, Value};
use support::registry::start_registry;
use support::*;

/// `molt images keygen DIR/NAME`: the secret key's and the public key's paths.
fn keygen(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let name = dir.join(name);
    let o = molt_command(dir, &["images", "keygen", name.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    (name.with_extension("key"), name.with_extension("pub"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_signed_images_deploy_under_a_policy() {
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keygen(keys.path(), "release");
    let h = Harness::start_with(|cfg| cfg.require_signature = Some(public.clone())).await;
    let data = h.data_dir();
    let dir = h.app("signed", &[], FAST);

    // Unsigned: refused with the next step, nothing recorded.
    let error = start_deploy(&h.client, &dir).await.unwrap_err();
    let api = error.downcast_ref::<ApiError>().expect("an API error");
    assert_eq!(api.status.as_u16(), 400, "{error:#}");
    assert!(
        api.message.contains("is not signed by the key"),
        "{error:#}"
    );
    assert!(api.message.contains("molt images sign"), "{error:#}");
    assert_eq!(h.client.get("/v1/apps").await.unwrap(), json!([]));
    let images = h.client.get("/v1/images").await.unwrap();
    let digest = images[0]["digest"].as_str().unwrap().to_owned();

    // A signature of something else is refused.
    let other = format!("sha256:{}", "0".repeat(64));
    let pub_hex = std::fs::read_to_string(&public).unwrap().trim().to_owned();
    let wrong = h
        .client
        .post(
            &format!("/v1/images/{digest}/signatures"),
            &json!({ "public_key": pub_hex, "signature": "ab".repeat(64) }),
        )
        .await
        .unwrap_err();
    assert!(
        format!("{wrong:#}").contains("not the key's signature"),
        "{wrong:#} {other}"
    );

    // Signed with the CLI (the key stays here): it deploys.
    let o = molt_command(
        &data,
        &["images", "sign", &digest, "--key", key.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let listed = h
        .client
        .get(&format!("/v1/images/{digest}/signatures"))
        .await
        .unwrap();
    assert_eq!(listed[0]["public_key"], pub_hex.as_str(), "{listed}");
    assert_eq!(listed[0]["created_by"], "admin");
    let deployed = h.deploy(&dir).await;
    assert_eq!(deployed["state"], "drained", "{deployed}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apps_molt_toml_can_require_a_signature() {
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keygen(keys.path(), "shop");
    let pub_hex = std::fs::read_to_string(&public).unwrap().trim().to_owned();
    // No server-wide policy: the app's own manifest asks for the signature.
    let h = Harness::start().await;
    let data = h.data_dir();
    let manifest = FAST.replace(
        "[deploy]\n",
        &format!("[deploy]\nrequire_signature = \"{pub_hex}\"\n"),
    );
    let dir = h.app("shop", &[], &manifest);

    let error = start_deploy(&h.client, &dir).await.unwrap_err();
    let api = error.downcast_ref::<ApiError>().expect("an API error");
    assert_eq!(api.status.as_u16(), 400, "{error:#}");
    assert!(
        api.message.contains("the app's molt.toml requires"),
        "{error:#}"
    );
    assert_eq!(h.client.get("/v1/apps").await.unwrap(), json!([]));
    let images = h.client.get("/v1/images").await.unwrap();
    let digest = images[0]["digest"].as_str().unwrap().to_owned();

    // A malformed key is an error at its line, before anything else.
    let broken = h.app(
        "shop",
        &[],
        &FAST.replace("[deploy]\n", "[deploy]\nrequire_signature = \"shop.pub\"\n"),
    );
    let error = start_deploy(&h.client, &broken).await.unwrap_err();
    assert!(format!("{error:#}").contains("64 hex digits"), "{error:#}");

    let o = molt_command(
        &data,
        &["images", "sign", &digest, "--key", key.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let deployed = h.deploy(&dir).await;
    assert_eq!(deployed["state"], "drained", "{deployed}");
    h.stop().await;
}

/// `molt --json ARGS` against the server of `data`, with the test registry's credentials: the exit code 0 or 1 and the JSON printed (an answer, or an error's).
fn molt_json(data: &Path, args: &[&str]) -> (Option<i32>, Value) {
    let o = molt_command(data, &[&["--json"], args].concat())
        .env("MOLT_REGISTRY_USERNAME", "molt")
        .env("MOLT_REGISTRY_PASSWORD", "s3cret")
        .output()
        .unwrap();
    let printed = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {}", text(&o)));
    (o.status.code(), printed)
}

/// Like [`molt_json`], expecting success.
fn molt_ok(data: &Path, args: &[&str]) -> Value {
    let (code, printed) = molt_json(data, args);
    assert_eq!(code, Some(0), "{args:?}: {printed}");
    printed
}

/// Imports the app folder `dir` into the server of `data` and signs it with `key`; its digest.
fn import_and_sign(data: &Path, dir: &Path, key: &Path) -> String {
    let image = molt_ok(data, &["images", "import", dir.to_str().unwrap()]);
    let digest = image["digest"].as_str().unwrap().to_owned();
    let o = molt_command(
        data,
        &["images", "sign", &digest, "--key", key.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    digest
}

/// Starts a deployment of the stored image `digest` as `app` with the manifest of `dir`.
async fn deploy_image(
    client: &Client,
    app: &str,
    dir: &Path,
    digest: &str,
) -> anyhow::Result<Value> {
    let manifest = std::fs::read_to_string(dir.join("molt.toml"))?;
    client
        .post(
            &format!("/v1/apps/{app}/deployments"),
            &json!({ "image": digest, "manifest": manifest }),
        )
        .await
}

/// Deploys `digest` and expects the cutover.
async fn deploys(client: &Client, app: &str, dir: &Path, digest: &str) {
    let started = deploy_image(client, app, dir, digest)
        .await
        .expect("deploy accepted");
    let done = wait_deployment(client, started["id"].as_u64().unwrap()).await;
    assert_eq!(done["state"], "drained", "{done}");
}

/// Expects the deployment of `digest` to be refused for want of the key's signature.
async fn refused_unsigned(client: &Client, app: &str, dir: &Path, digest: &str) {
    let error = deploy_image(client, app, dir, digest).await.unwrap_err();
    assert!(
        format!("{error:#}").contains("is not signed by the key"),
        "{error:#}"
    );
}

/// `signature` with its first hex digit changed: still well formed, no longer the key's.
fn forged(signature: &str) -> String {
    let first = if signature.starts_with('0') { "1" } else { "0" };
    format!("{first}{}", &signature[1..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_travel_in_an_oci_archive_to_another_molt() {
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keygen(keys.path(), "release");
    let pub_hex = std::fs::read_to_string(&public).unwrap().trim().to_owned();
    // Where the image is made and signed: no policy.
    let home = Harness::start().await;
    let dir = home.app("travel", &[], FAST);
    let digest = import_and_sign(&home.data_dir(), &dir, &key);
    let signature = home
        .client
        .get(&format!("/v1/images/{digest}/signatures"))
        .await
        .unwrap()[0]["signature"]
        .as_str()
        .unwrap()
        .to_owned();
    let oci = keys.path().join("travel.tar");
    let docker = keys.path().join("travel.docker.tar");
    for (file, format) in [(&oci, "oci"), (&docker, "docker")] {
        let o = molt_command(
            &home.data_dir(),
            &[
                "images",
                "export",
                &digest,
                "-o",
                file.to_str().unwrap(),
                "--format",
                format,
            ],
        )
        .output()
        .unwrap();
        assert!(o.status.success(), "{}", text(&o));
    }

    // Another molt, which deploys only what the key signed.
    let away = Harness::start_with(|cfg| cfg.require_signature = Some(public.clone())).await;
    let data = away.data_dir();

    // The signature changed on the way (a same-length edit of index.json in the tar):
    // refused as bad input, nothing imported.
    let mut bytes = std::fs::read(&oci).unwrap();
    let at: Vec<usize> = bytes
        .windows(signature.len())
        .enumerate()
        .filter(|(_, w)| *w == signature.as_bytes())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "the archive carries the signature once");
    bytes[at[0]..at[0] + signature.len()].copy_from_slice(forged(&signature).as_bytes());
    let tampered = keys.path().join("tampered.tar");
    std::fs::write(&tampered, bytes).unwrap();
    let (code, error) = molt_json(&data, &["images", "import", tampered.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{error}");
    assert_eq!(error["status"], 400, "{error}");
    assert!(error.to_string().contains("not its signature"), "{error}");
    assert!(
        error.to_string().contains("nothing was imported"),
        "{error}"
    );
    assert_eq!(away.client.get("/v1/images").await.unwrap(), json!([]));

    // A Docker archive has no place for signatures: the image comes alone and the policy
    // refuses it.
    let imported = molt_ok(&data, &["images", "import", docker.to_str().unwrap()]);
    assert_eq!(imported["signatures"], 0, "{imported}");
    refused_unsigned(&away.client, "travel", &dir, &digest).await;

    // The OCI archive as exported: its signature verifies, is kept as the importer's (the
    // token's name), and the image deploys under the policy.
    let imported = molt_ok(&data, &["images", "import", oci.to_str().unwrap()]);
    assert_eq!(
        (&imported["digest"], &imported["signatures"]),
        (&json!(digest), &json!(1))
    );
    let listed = signatures_of(&away.client, &digest).await;
    assert_eq!(listed[0]["public_key"], pub_hex.as_str(), "{listed}");
    assert_eq!(listed[0]["signature"], signature.as_str(), "{listed}");
    assert_eq!(
        listed[0]["created_by"], "admin",
        "the importer's token: {listed}"
    );
    deploys(&away.client, "travel", &dir, &digest).await;
    away.stop().await;
    home.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_travel_through_a_registry_to_another_molt() {
    if !(needs_command("docker-registry") && needs_command("htpasswd")) {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let registry = start_registry(keys.path());
    let (key, public) = keygen(keys.path(), "release");
    let pub_hex = std::fs::read_to_string(&public).unwrap().trim().to_owned();
    let home = Harness::start().await;
    let dir = home.app("pushed", &[], FAST);
    let digest = import_and_sign(&home.data_dir(), &dir, &key);
    let target = format!("{}/team/pushed:1", registry.addr);
    let pushed = molt_ok(&home.data_dir(), &["images", "push", &digest, &target]);
    assert_eq!(pushed["signatures"], 1, "{pushed}");

    // Two more copies in the registry, put there without molt's controller: one unsigned,
    // one whose signature was changed.
    let creds = Credentials {
        username: "molt".into(),
        password: "s3cret".into(),
    };
    let scratch = ImageStore::open(&keys.path().join("scratch")).unwrap();
    let copy = molt_registry::pull(&scratch, &target, Some(&creds))
        .await
        .unwrap();
    assert_eq!(copy.digest.as_str(), digest);
    let unsigned = format!("{}/team/unsigned:1", registry.addr);
    molt_registry::push(&scratch, &copy.digest, &unsigned, Some(&creds), None, &[])
        .await
        .unwrap();
    let forgery = CarriedSignature {
        public_key: pub_hex.clone(),
        signature: forged(&copy.signatures[0].signature),
    };
    let forged_target = format!("{}/team/forged:1", registry.addr);
    molt_registry::push(
        &scratch,
        &copy.digest,
        &forged_target,
        Some(&creds),
        None,
        &[forgery],
    )
    .await
    .unwrap();

    let away = Harness::start_with(|cfg| cfg.require_signature = Some(public.clone())).await;
    let data = away.data_dir();

    // The forged signature fails the pull: the registry's fault (502), nothing cataloged.
    let (code, error) = molt_json(&data, &["images", "pull", &forged_target]);
    assert_eq!(code, Some(1), "{error}");
    assert_eq!(error["status"], 502, "{error}");
    assert!(error.to_string().contains("not its signature"), "{error}");
    assert_eq!(away.client.get("/v1/images").await.unwrap(), json!([]));

    // Without signatures in the registry, the image comes alone and the policy refuses it.
    let pulled = molt_ok(&data, &["images", "pull", &unsigned]);
    assert_eq!(pulled["signatures"], 0, "{pulled}");
    refused_unsigned(&away.client, "pushed", &dir, &digest).await;

    // Pulled from where molt pushed it, the signature comes too and the image deploys.
    let pulled = molt_ok(&data, &["images", "pull", &target, "--tag", "pushed:1"]);
    assert_eq!(
        (&pulled["digest"], &pulled["signatures"]),
        (&json!(digest), &json!(1))
    );
    let listed = signatures_of(&away.client, &digest).await;
    assert_eq!(listed[0]["public_key"], pub_hex.as_str(), "{listed}");
    deploys(&away.client, "pushed", &dir, &digest).await;
    away.stop().await;
    home.stop().await;
    drop(registry);
}

/// The signatures a molt keeps of image `digest`.
async fn signatures_of(client: &Client, digest: &str) -> Value {
    client
        .get(&format!("/v1/images/{digest}/signatures"))
        .await
        .expect("the image's signatures")
}
