//! `molt serve` with TLS: a deployed app over https (h1 and h2 with real curl), the
//! certificate directory reloaded through the API, the https redirect, and certificates
//! issued by Debian's pebble ACME test server through http-01 on the router.

mod support;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use molt_server::{AcmeConfig, ServeConfig, TlsConfig};
use molt_testkit::needs_command;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
};
use support::{Harness, KeepAlive, FAST};

/// A test CA writing leaf certificates as PEM.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key"))
            .expect("CA certificate");
        Pki { ca }
    }

    /// (chain PEM, key PEM) for `names`.
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].as_str());
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("leaf");
        (
            format!("{}{}", cert.pem(), self.ca.pem()),
            key.serialize_pem(),
        )
    }

    fn write_ca(&self, path: &Path) {
        std::fs::write(path, self.ca.pem()).expect("write CA");
    }
}

/// A port nobody listens on right now (bound, then released).
fn free_port() -> u16 {
    let listener = StdListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// curl over https with `--resolve` to 127.0.0.1; returns (exit ok, http version, body).
fn curl_https(
    ca: &Path,
    host: &str,
    tls: SocketAddr,
    path: &str,
    protocol: &str,
) -> (bool, String, String) {
    let port = tls.port();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", protocol, "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .args(["-w", "\n%{http_version}"])
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, version) = stdout.rsplit_once('\n').unwrap_or((&stdout, ""));
    (out.status.success(), version.to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployed_app_over_https_with_reload_and_redirect() {
    if !(needs_command("curl") && needs_command("python3")) {
        return;
    }
    let pki = Pki::new("molt e2e CA");
    let work = tempfile::tempdir().expect("temp dir");
    let ca = work.path().join("ca.pem");
    pki.write_ca(&ca);
    let certs = work.path().join("certs");
    std::fs::create_dir(&certs).expect("mkdir");
    let (chain, key) = pki.leaf(&["shop.localhost"]);
    std::fs::write(certs.join("shop.localhost.pem"), format!("{chain}{key}")).expect("write");

    let cert_dir = certs.clone();
    let h = Harness::start_with(move |cfg| {
        let mut tls = TlsConfig::new("127.0.0.1:0".parse().expect("addr"));
        tls.cert_dir = Some(cert_dir);
        tls.https_redirect = true;
        cfg.tls = Some(tls);
    })
    .await;
    let tls = h
        .running
        .as_ref()
        .and_then(|r| r.router_tls_addr)
        .expect("TLS listener");
    let d = h.deploy(&h.app("shop", &[], FAST)).await;
    assert_eq!(d["state"], "drained", "{d}");

    for (protocol, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (ok, got, body) = curl_https(&ca, "shop.localhost", tls, "/", protocol);
        assert!(ok, "{protocol}: {body}");
        assert_eq!(got, version);
        assert!(body.starts_with("hello from shop v1"), "{body}");
    }
    // Plain HTTP for a host with a certificate: 308 to https (tested without following).
    let mut plain = KeepAlive::connect(h.router).await;
    let (status, _) = plain.get("shop.localhost", "/x?y=1").await.expect("get");
    assert_eq!(status, 308);

    // A new certificate through the API; then a broken file keeps it.
    let (chain2, key2) = pki.leaf(&["shop.localhost", "www.shop.localhost"]);
    std::fs::write(certs.join("shop.localhost.pem"), format!("{chain2}{key2}")).expect("write");
    let report = h
        .client
        .post("/v1/tls/reload", &serde_json::json!({}))
        .await
        .expect("reload");
    assert_eq!(
        report["hostnames"],
        serde_json::json!(["shop.localhost"]),
        "{report}"
    );
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    std::fs::write(certs.join("shop.localhost.pem"), "not a certificate").expect("write");
    let report = h
        .client
        .post("/v1/tls/reload", &serde_json::json!({}))
        .await
        .expect("reload");
    let errors = report["errors"].to_string();
    assert!(errors.contains("no CERTIFICATE block found"), "{report}");
    assert!(
        errors.contains("keeping the certificate loaded before"),
        "{report}"
    );
    let (ok, _, body) = curl_https(&ca, "shop.localhost", tls, "/", "--http2");
    assert!(ok && body.starts_with("hello from shop"), "{body}");

    // The CLI says the same: `molt tls ls`, and `molt tls reload` exits 1 on unusable files.
    let molt = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_molt"))
            .arg("--data-dir")
            .arg(h.data_dir())
            .args(args)
            .env_remove("MOLT_API")
            .env_remove("MOLT_TOKEN")
            .output()
            .expect("molt runs")
    };
    let listed = molt(&["tls", "ls"]);
    assert_eq!(listed.status.code(), Some(0), "{listed:?}");
    assert_eq!(String::from_utf8_lossy(&listed.stdout), "shop.localhost\n");
    let reloaded = molt(&["tls", "reload"]);
    assert_eq!(reloaded.status.code(), Some(1), "{reloaded:?}");
    let stderr = String::from_utf8_lossy(&reloaded.stderr);
    assert!(stderr.contains("no CERTIFICATE block found"), "{stderr}");

    let metrics = h.client.get("/metrics").await.expect("metrics");
    let metrics = metrics.as_str().expect("text");
    assert!(
        metrics.contains("molt_router_client_requests_total{scheme=\"https\"} 3"),
        "{metrics}"
    );
    h.stop().await;
}

/// A child process killed when the test ends.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (≤ 10 s) until something accepts connections on `port`.
fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// pebble (ACME server) and pebble-challtestsrv (its DNS: every name → 127.0.0.1), with
/// pebble validating http-01 on `http_port`.
struct Pebble {
    _dns: Daemon,
    _pebble: Daemon,
    directory: String,
    management: u16,
    /// The CA of pebble's own HTTPS listener.
    ca: PathBuf,
}

impl Pebble {
    fn start(dir: &Path, http_port: u16, validity_secs: u64) -> Pebble {
        let pki = Pki::new("pebble listener CA");
        let ca = dir.join("pebble-ca.pem");
        pki.write_ca(&ca);
        let (chain, key) = pki.leaf(&["localhost", "127.0.0.1"]);
        std::fs::write(dir.join("pebble-cert.pem"), chain).expect("write");
        std::fs::write(dir.join("pebble-key.pem"), key).expect("write");
        let (listen, management, dns, dns_management) =
            (free_port(), free_port(), free_port(), free_port());
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{listen}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": dir.join("pebble-cert.pem"),
                "privateKey": dir.join("pebble-key.pem"),
                "httpPort": http_port,
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity_secs
            }
        });
        let config_path = dir.join("pebble-config.json");
        std::fs::write(&config_path, config.to_string()).expect("write");
        let log = |name: &str| std::fs::File::create(dir.join(name)).expect("log file");
        let dns_daemon = Daemon(
            Command::new("pebble-challtestsrv")
                .args(["-dns01", &format!("127.0.0.1:{dns}")])
                .args(["-management", &format!("127.0.0.1:{dns_management}")])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .stdout(log("challtestsrv.log"))
                .stderr(log("challtestsrv.err"))
                .spawn()
                .expect("start pebble-challtestsrv"),
        );
        wait_listening(dns_management, "pebble-challtestsrv");
        let pebble = Daemon(
            Command::new("pebble")
                .arg("-config")
                .arg(&config_path)
                .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .stdout(log("pebble.log"))
                .stderr(log("pebble.err"))
                .spawn()
                .expect("start pebble"),
        );
        wait_listening(listen, "pebble");
        Pebble {
            _dns: dns_daemon,
            _pebble: pebble,
            directory: format!("https://127.0.0.1:{listen}/dir"),
            management,
            ca,
        }
    }

    /// The root that signs the certificates pebble issues (made at its start).
    fn issuing_root(&self, dir: &Path) -> PathBuf {
        let path = dir.join("pebble-root.pem");
        let status = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "10", "--cacert"])
            .arg(&self.ca)
            .arg("-o")
            .arg(&path)
            .arg(format!("https://127.0.0.1:{}/roots/0", self.management))
            .status()
            .expect("run curl");
        assert!(status.success(), "fetching pebble's root");
        path
    }
}

/// How long pebble's certificates are valid in the ACME test: renewal is due after two
/// thirds of it (24 s), so the test sees one; until then there is ample time for the restart
/// to find the first certificate still current, even on a loaded machine.
const ACME_TEST_VALIDITY_SECS: u64 = 36;

fn acme_serve(
    data: Option<&Path>,
    router_port: u16,
    pebble: &Pebble,
) -> impl FnOnce(&mut ServeConfig) {
    let mut acme = AcmeConfig::new(pebble.directory.clone(), vec!["shop.acme.test".into()]);
    acme.ca_cert = Some(pebble.ca.clone());
    acme.contact = Some("ops@acme.test".into());
    acme.check_interval = Duration::from_millis(250);
    let data = data.map(Path::to_owned);
    move |cfg| {
        if let Some(data) = data {
            cfg.data_dir = data;
        }
        cfg.router_addr = SocketAddr::from(([127, 0, 0, 1], router_port));
        let mut tls = TlsConfig::new("127.0.0.1:0".parse().expect("addr"));
        tls.acme = Some(acme);
        cfg.tls = Some(tls);
    }
}

/// The leaf certificate the running server holds for `host` (DER), if any.
fn held_leaf(h: &Harness, host: &str) -> Option<Vec<u8>> {
    let running = h.running.as_ref().expect("running");
    let cert = running.controller().router().certificates().resolve(host)?;
    Some(cert.end_entity_cert().ok()?.to_vec())
}

/// Waits (≤ 60 s) until the server holds a certificate for `host` other than `old`.
async fn wait_for_new_cert(h: &Harness, host: &str, old: Option<&[u8]>, log: &Path) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match held_leaf(h, host) {
            Some(leaf) if Some(leaf.as_slice()) != old => return leaf,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no new ACME certificate after 60 s; pebble said: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_certificate_issued_by_pebble_through_http01_kept_and_renewed() {
    if !(needs_command("pebble") && needs_command("pebble-challtestsrv") && needs_command("curl")) {
        return;
    }
    let work = tempfile::tempdir().expect("temp dir");
    let log = work.path().join("pebble.log");
    let router_port = free_port();
    let pebble = Pebble::start(work.path(), router_port, ACME_TEST_VALIDITY_SECS);

    let h = Harness::start_with(acme_serve(None, router_port, &pebble)).await;
    let tls = h
        .running
        .as_ref()
        .and_then(|r| r.router_tls_addr)
        .expect("TLS listener");
    let first = wait_for_new_cert(&h, "shop.acme.test", None, &log).await;

    // pebble fetched the http-01 answer from the router's plain listener (no shortcut).
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    let fetched = format!(
        "Attempting to validate w/ HTTP: http://shop.acme.test:{router_port}/.well-known/acme-challenge/"
    );
    assert!(said.contains(&fetched), "{said}");
    assert!(said.contains("set VALID by completed challenge"), "{said}");

    // A real handshake, verified against pebble's issuing root: the router has no route for
    // the name, so it answers its own 404 page.
    let root = pebble.issuing_root(work.path());
    let (ok, version, body) = curl_https(&root, "shop.acme.test", tls, "/", "--http2");
    assert!(ok, "curl over https with the ACME certificate: {body}");
    assert_eq!(version, "2");
    assert!(body.contains("shop.acme.test"), "{body}");

    // Account and certificate are kept in the data directory, readable by the owner only.
    let data = h.data_dir();
    let acme_dir = data.join("tls/acme");
    for file in ["account.json", "shop.acme.test.pem"] {
        let meta = std::fs::metadata(acme_dir.join(file)).expect(file);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{file}");
    }
    // Stop the server but keep its harness, which owns the data directory.
    let mut first_server = h;
    first_server
        .running
        .take()
        .expect("running")
        .shutdown(molt_server::OnExit::StopInstances)
        .await
        .expect("shutdown");

    // After a restart the stored certificate is served at once (it is not due yet)...
    let h = Harness::start_with(acme_serve(Some(&data), router_port, &pebble)).await;
    assert_eq!(
        held_leaf(&h, "shop.acme.test").as_deref(),
        Some(first.as_slice())
    );
    // ... and renewed, with the same account, once two thirds of its lifetime have passed.
    let renewed = wait_for_new_cert(&h, "shop.acme.test", Some(&first), &log).await;
    let stored = std::fs::read(acme_dir.join("shop.acme.test.pem")).expect("read");
    let stored = molt_router::tls::HostCert::from_pem("shop.acme.test", &stored, &stored)
        .expect("stored certificate");
    assert_eq!(
        stored.key.end_entity_cert().expect("leaf").as_ref(),
        renewed.as_slice()
    );
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        said.matches("POST /sign-me-up").count(),
        1,
        "one account: {said}"
    );
    let tls = h
        .running
        .as_ref()
        .and_then(|r| r.router_tls_addr)
        .expect("TLS listener");
    let (ok, _, body) = curl_https(&root, "shop.acme.test", tls, "/", "--http1.1");
    assert!(ok, "renewed certificate served: {body}");
    h.stop().await;
    drop(first_server);
}
