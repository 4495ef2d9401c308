//! `molt login` against a real `molt serve --api-tls-listen`: the certificate is pinned on
//! first use and every later command over HTTPS accepts only it; credentials are kept 0600;
//! the plain API refuses a non-loopback address.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use serde_json::Value;
use support::*;

fn molt_with(data: &Path, creds: &Path, args: &[&str]) -> Output {
    molt_command(data, args)
        .env("MOLT_CREDENTIALS", creds)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_pins_the_certificate_and_later_commands_use_it() {
    let h = Harness::start_with(|cfg| {
        cfg.api_tls = Some(molt_server::ApiTlsConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            names: Vec::new(),
        })
    })
    .await;
    let running = h.running.as_ref().unwrap();
    let url = format!("https://{}", running.api_tls_addr.unwrap());
    let pin = running.api_tls_fingerprint.clone().unwrap();
    let data = h.data_dir();
    let creds = h.tmp.path().join("config/molt/credentials.json");
    let token_file = data.join("admin.token");

    // Before a login, an https API is refused with the next step.
    let o = molt_with(&data, &creds, &["--api", &url, "apps"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(text(&o).contains("molt login"), "{}", text(&o));
    // A wrong token: refused, nothing kept.
    let wrong = h.tmp.path().join("wrong.token");
    std::fs::write(&wrong, "not-the-token").unwrap();
    let o = molt_with(
        &data,
        &creds,
        &["login", &url, "--token-file", wrong.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(!creds.exists());
    // The login: the fingerprint shown is the server's; credentials 0600.
    let o = molt_with(
        &data,
        &creds,
        &["login", &url, "--token-file", token_file.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(&pin), "{}", text(&o));
    assert_eq!(
        std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let saved: Value = serde_json::from_slice(&std::fs::read(&creds).unwrap()).unwrap();
    assert_eq!(saved["servers"][&url]["fingerprint"], pin.as_str());
    // Commands over HTTPS with the pinned certificate.
    let o = molt_with(&data, &creds, &["--api", &url, "tokens", "list", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("\"admin\""),
        "{}",
        text(&o)
    );
    // Another certificate at that address (a pin that no longer matches): refused.
    let mut tampered = saved.clone();
    tampered["servers"][&url]["fingerprint"] = Value::from(format!("sha256:{}", "0".repeat(64)));
    std::fs::write(&creds, tampered.to_string()).unwrap();
    let o = molt_with(&data, &creds, &["--api", &url, "apps"]);
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("not the one `molt login` pinned"),
        "{}",
        text(&o)
    );
    // Logging out forgets it.
    let o = molt_with(&data, &creds, &["logout", &url]);
    assert!(o.status.success(), "{}", text(&o));
    let saved: Value = serde_json::from_slice(&std::fs::read(&creds).unwrap()).unwrap();
    assert!(saved["servers"].as_object().unwrap().is_empty(), "{saved}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_api_stays_on_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = molt_server::ServeConfig::new(tmp.path().join("data"));
    cfg.api_addr = "0.0.0.0:0".parse().unwrap();
    cfg.router_addr = "127.0.0.1:0".parse().unwrap();
    let error = match molt_server::start(cfg).await {
        Ok(_) => panic!("the plain API listened beyond loopback"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("not a loopback address"), "{error}");
    assert!(error.contains("--api-tls-listen"), "{error}");
}
