//! Promotion across stages end to end: `molt deploy --from APP[@vN]` deploys another app's
//! release's exact image with this app's molt.toml; the release says where it came from.

mod support;

use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_is_promoted_from_another_app_with_its_image_digest() {
    let h = Harness::start().await;
    let staging = h.deploy(&h.app("staging", &[], FAST)).await;
    assert_eq!(staging["state"], "drained", "{staging}");
    let releases = h
        .client
        .get("/v1/apps/staging/releases")
        .await
        .expect("releases");
    let image = releases[0]["image"].as_str().expect("image").to_owned();

    // prod has its own molt.toml (its greeting); the image is staging's v1, never re-imported.
    let prod = h.app("prod", &[("GREETING", "live")], FAST);
    let out = tokio::task::spawn_blocking({
        let (data, dir) = (h.data_dir(), prod.clone());
        move || {
            molt_command(
                &data,
                &[
                    "deploy",
                    "--from",
                    "staging@v1",
                    dir.to_str().expect("utf-8"),
                ],
            )
            .output()
            .expect("molt runs")
        }
    })
    .await
    .expect("join");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("imported"),
        "{}",
        text(&out)
    );
    let releases = h
        .client
        .get("/v1/apps/prod/releases")
        .await
        .expect("releases");
    assert_eq!(releases[0]["image"], image.as_str(), "{releases}");
    assert_eq!(
        releases[0]["note"], "promoted from staging@v1",
        "{releases}"
    );
    let (status, body) = h.get("prod.localhost", "/").await;
    assert_eq!(status, 200);
    assert!(body.starts_with("live from prod v1"), "{body}");

    // Without a release number, the newest; unknown apps and releases change nothing.
    let manifest = std::fs::read_to_string(prod.join("molt.toml")).expect("manifest");
    let newest = h
        .client
        .post(
            "/v1/apps/prod/deployments",
            &json!({ "manifest": manifest, "from": "staging" }),
        )
        .await
        .expect("deploy");
    let newest = wait_deployment(&h.client, newest["id"].as_u64().expect("id")).await;
    assert_eq!(newest["state"], "drained", "{newest}");
    for (from, want) in [("nope", 404), ("staging@v9", 404), ("staging@latest", 400)] {
        let error = h
            .client
            .post(
                "/v1/apps/prod/deployments",
                &json!({ "manifest": manifest, "from": from }),
            )
            .await
            .expect_err("refused");
        let api = error
            .downcast_ref::<molt_cli::client::ApiError>()
            .unwrap_or_else(|| panic!("not an API error: {error:#}"));
        assert_eq!(api.status.as_u16(), want, "{from}: {}", api.message);
    }
    let releases = h
        .client
        .get("/v1/apps/prod/releases")
        .await
        .expect("releases");
    assert_eq!(releases.as_array().map(Vec::len), Some(2), "{releases}");
    h.stop().await;
}
