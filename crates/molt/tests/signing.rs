//! Signed images against a real `molt serve --require-signature`: an unsigned image is refused
//! before anything starts, a signature of another image is refused, and once signed with
//! `molt images sign` the same image deploys.

mod support;

use molt_cli::client::ApiError;
use serde_json::json;
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
