//! TLS termination: certificates by SNI from a directory, hot reload, h1 and h2 over TLS
//! (with real curl), the https redirect and ACME http-01 answers on the plain listener.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use molt_router::tls::{CertDir, CertStore};
use molt_router::{ClientScheme, Router, RouterConfig};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
};
use rustls::pki_types::{CertificateDer, ServerName};
use support::{table, upstream, within, Client, Reply};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

/// A test certificate authority that issues leaf certificates.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: tempfile::TempDir,
}

/// A leaf certificate as written to disk.
struct Leaf {
    der: CertificateDer<'static>,
    chain_pem: String,
    key_pem: String,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "molt test CA");
        let key = KeyPair::generate().expect("CA key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("ca.pem.txt"), ca.pem()).expect("write CA");
        Pki { ca, dir }
    }

    /// Where the CA's certificate is (for curl's `--cacert`).
    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem.txt")
    }

    fn leaf(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        // A subject of its own, so that it is not taken for a self-signed certificate.
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].as_str());
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.ca).expect("leaf certificate");
        Leaf {
            der: cert.der().clone(),
            chain_pem: format!("{}{}", cert.pem(), self.ca.pem()),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes `<stem>.pem` (chain and key in one file) into the certificate directory.
    fn install_combined(&self, dir: &Path, stem: &str, leaf: &Leaf) {
        write_replacing(
            &dir.join(format!("{stem}.pem")),
            &format!("{}{}", leaf.chain_pem, leaf.key_pem),
        );
    }

    /// Writes `<stem>.crt` and `<stem>.key` into the certificate directory.
    fn install_split(&self, dir: &Path, stem: &str, leaf: &Leaf) {
        write_replacing(&dir.join(format!("{stem}.key")), &leaf.key_pem);
        write_replacing(&dir.join(format!("{stem}.crt")), &leaf.chain_pem);
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca.der().clone())
            .expect("CA is a valid root");
        roots
    }
}

/// Writes through a temp file and a rename, as a deploy tool would.
fn write_replacing(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).expect("write cert file");
    std::fs::rename(&tmp, path).expect("rename cert file");
}

/// A router with a plain and a TLS listener, certificates from a directory.
struct TlsHarness {
    router: Arc<Router>,
    plain: SocketAddr,
    tls: SocketAddr,
    certs: Arc<CertDir>,
    cert_dir: tempfile::TempDir,
    shutdown: CancellationToken,
}

impl TlsHarness {
    async fn start(config: RouterConfig, fill: impl FnOnce(&Path)) -> TlsHarness {
        let cert_dir = tempfile::tempdir().expect("temp dir");
        fill(cert_dir.path());
        let router = Router::new(config);
        let (certs, report) =
            CertDir::open(cert_dir.path(), Arc::clone(router.certificates())).expect("cert dir");
        assert!(report.errors.is_empty(), "{report:?}");
        let plain_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let tls_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let plain = plain_listener.local_addr().expect("addr");
        let tls = tls_listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        tokio::spawn(Arc::clone(&router).serve(plain_listener, shutdown.clone()));
        tokio::spawn(Arc::clone(&router).serve_tls(tls_listener, shutdown.clone()));
        TlsHarness {
            router,
            plain,
            tls,
            certs,
            cert_dir,
            shutdown,
        }
    }

    fn dir(&self) -> &Path {
        self.cert_dir.path()
    }

    /// Opens a TLS connection asking for `sni`, trusting `pki`'s CA.
    async fn connect(&self, pki: &Pki, sni: &str) -> std::io::Result<TlsStream<TcpStream>> {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(pki.roots())
        .with_no_client_auth();
        let connector = TlsConnector::from(Arc::new(config));
        let tcp = within(TcpStream::connect(self.tls)).await?;
        let name = ServerName::try_from(sni.to_owned()).expect("server name");
        within(connector.connect(name, tcp)).await
    }

    /// The leaf certificate the router presents for `sni`.
    async fn served_leaf(&self, pki: &Pki, sni: &str) -> std::io::Result<CertificateDer<'static>> {
        let stream = self.connect(pki, sni).await?;
        let (_, session) = stream.get_ref();
        let chain = session
            .peer_certificates()
            .expect("server sent certificates");
        Ok(chain[0].clone().into_owned())
    }
}

impl Drop for TlsHarness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An HTTP/1.1 keep-alive connection over an established TLS stream.
struct TlsClient {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl TlsClient {
    async fn over(stream: TlsStream<TcpStream>) -> TlsClient {
        let (sender, connection) =
            within(hyper::client::conn::http1::handshake(TokioIo::new(stream)))
                .await
                .expect("handshake");
        tokio::spawn(connection);
        TlsClient { sender }
    }

    async fn get(&mut self, host: &str, path: &str) -> (StatusCode, String) {
        let request = Request::builder()
            .uri(path)
            .header("host", host)
            .body(Empty::new())
            .expect("request");
        within(self.sender.ready()).await.expect("ready");
        let response = within(self.sender.send_request(request))
            .await
            .expect("response");
        let status = response.status();
        let body = within(response.into_body().collect())
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

/// Whether curl is here and speaks HTTP/2 (else the test is skipped, or fails in CI).
async fn curl_with_h2() -> bool {
    if !molt_testkit::needs_command("curl") {
        return false;
    }
    let version = tokio::process::Command::new("curl")
        .arg("--version")
        .output()
        .await;
    let speaks_h2 = version.is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("HTTP2"));
    molt_testkit::needs(speaks_h2, "curl built with HTTP/2 (nghttp2)")
}

/// `curl` over https to `host` on the harness's TLS port: (http version, body).
async fn curl_https(
    h: &TlsHarness,
    pki: &Pki,
    host: &str,
    path: &str,
    protocol: &str,
) -> (String, String) {
    curl_https_at(h.tls.port(), pki, host, path, protocol).await
}

/// `curl` over https to `host` on 127.0.0.1:`port`: (http version, body).
async fn curl_https_at(
    port: u16,
    pki: &Pki,
    host: &str,
    path: &str,
    protocol: &str,
) -> (String, String) {
    let out = within(
        tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "5", protocol, "--cacert"])
            .arg(pki.ca_file())
            .arg("--resolve")
            .arg(format!("{host}:{port}:127.0.0.1"))
            .args(["-w", "\n%{http_version}"])
            .arg(format!("https://{host}:{port}{path}"))
            .output(),
    )
    .await
    .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, version) = stdout.rsplit_once('\n').expect("curl wrote the version");
    (version.to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_speaks_http1_and_h2_over_tls_and_upstreams_see_https() {
    if !curl_with_h2().await {
        return;
    }
    let pki = Pki::new();
    let leaf = pki.leaf(&["app.test"]);
    let h = TlsHarness::start(RouterConfig::default(), |dir| {
        pki.install_combined(dir, "app.test", &leaf)
    })
    .await;
    let blue = upstream(Reply::Name("blue")).await;
    h.router
        .publish(table(&[("app.test", "blue", &[blue])]))
        .await;

    let (version, body) = curl_https(&h, &pki, "app.test", "/", "--http1.1").await;
    assert_eq!((version.as_str(), body.as_str()), ("1.1", "blue"));
    let (version, body) = curl_https(&h, &pki, "app.test", "/", "--http2").await;
    assert_eq!((version.as_str(), body.as_str()), ("2", "blue"));

    for protocol in ["--http1.1", "--http2"] {
        let (_, echo) = curl_https(&h, &pki, "app.test", "/echo", protocol).await;
        assert!(echo.contains(" xfp=https "), "{protocol}: {echo}");
        assert!(
            echo.contains("fwd=for=127.0.0.1;proto=https;host="),
            "{protocol}: {echo}"
        );
    }
    assert_eq!(h.router.requests_over(ClientScheme::Https), 4);
    assert_eq!(h.router.requests_over(ClientScheme::Http), 0);

    // The plain listener still says http.
    let mut plain = Client::connect(h.plain).await;
    let (_, echo) = plain.get(Some("app.test"), "/echo").await;
    assert!(echo.contains(" xfp=http "), "{echo}");
    assert!(echo.contains("proto=http;"), "{echo}");
}

#[tokio::test]
async fn tls_on_threads_speaks_http1_and_h2_and_stops() {
    if !curl_with_h2().await {
        return;
    }
    let pki = Pki::new();
    let leaf = pki.leaf(&["app.test"]);
    let cert_dir = tempfile::tempdir().expect("temp dir");
    pki.install_combined(cert_dir.path(), "app.test", &leaf);
    let router = Router::new(RouterConfig::default());
    let (_certs, report) =
        CertDir::open(cert_dir.path(), Arc::clone(router.certificates())).expect("cert dir");
    assert!(report.errors.is_empty(), "{report:?}");
    let blue = upstream(Reply::Name("blue")).await;
    within(router.publish(table(&[("app.test", "blue", &[blue])]))).await;
    let shutdown = CancellationToken::new();
    let threads = Arc::clone(&router)
        .serve_tls_on_threads("127.0.0.1:0".parse().expect("addr"), 2, shutdown.clone())
        .expect("serving threads");
    let port = threads.local_addr().port();

    for _ in 0..3 {
        let (version, body) = curl_https_at(port, &pki, "app.test", "/", "--http1.1").await;
        assert_eq!((version.as_str(), body.as_str()), ("1.1", "blue"));
        let (version, body) = curl_https_at(port, &pki, "app.test", "/", "--http2").await;
        assert_eq!((version.as_str(), body.as_str()), ("2", "blue"));
    }
    assert_eq!(router.requests_over(ClientScheme::Https), 6);

    shutdown.cancel();
    within(tokio::task::spawn_blocking(move || threads.join()))
        .await
        .expect("join")
        .expect("every thread stopped cleanly");
}

#[tokio::test]
async fn sni_picks_each_names_certificate_wildcards_included_and_unknown_names_fail() {
    let pki = Pki::new();
    let app = pki.leaf(&["app.test"]);
    let other = pki.leaf(&["other.test"]);
    let wild = pki.leaf(&["*.apps.test"]);
    let h = TlsHarness::start(RouterConfig::default(), |dir| {
        pki.install_combined(dir, "app.test", &app);
        pki.install_split(dir, "other.test", &other);
        pki.install_combined(dir, "_wildcard.apps.test", &wild);
        std::fs::write(dir.join("README.txt"), "ignored").expect("write");
    })
    .await;
    assert_eq!(
        h.router.certificates().hostnames(),
        ["*.apps.test", "app.test", "other.test"]
    );

    assert_eq!(h.served_leaf(&pki, "app.test").await.expect("tls"), app.der);
    assert_eq!(h.served_leaf(&pki, "APP.test").await.expect("tls"), app.der);
    assert_eq!(
        h.served_leaf(&pki, "other.test").await.expect("tls"),
        other.der
    );
    assert_eq!(
        h.served_leaf(&pki, "shop.apps.test").await.expect("tls"),
        wild.der
    );

    // No certificate for the name: the handshake fails (no default certificate).
    let failures = h.router.tls_handshake_failures();
    assert!(h.connect(&pki, "unknown.test").await.is_err());
    assert!(h.connect(&pki, "apps.test").await.is_err());
    assert!(support::eventually(|| h.router.tls_handshake_failures() == failures + 2).await);
}

#[tokio::test]
async fn reload_swaps_a_certificate_while_open_connections_keep_working() {
    let pki = Pki::new();
    let first = pki.leaf(&["app.test"]);
    let h = TlsHarness::start(RouterConfig::default(), |dir| {
        pki.install_split(dir, "app.test", &first)
    })
    .await;
    let blue = upstream(Reply::Name("blue")).await;
    h.router
        .publish(table(&[("app.test", "blue", &[blue])]))
        .await;

    let stream = h.connect(&pki, "app.test").await.expect("tls");
    assert_eq!(
        stream.get_ref().1.peer_certificates().expect("certs")[0],
        first.der
    );
    let mut open = TlsClient::over(stream).await;
    assert_eq!(
        open.get("app.test", "/").await,
        (StatusCode::OK, "blue".into())
    );

    let second = pki.leaf(&["app.test"]);
    pki.install_split(h.dir(), "app.test", &second);
    let report = h.certs.reload().expect("reload");
    assert_eq!(report.hostnames, ["app.test"]);
    assert!(report.errors.is_empty(), "{report:?}");

    // The open connection keeps its session; a new one gets the new certificate.
    assert_eq!(
        open.get("app.test", "/").await,
        (StatusCode::OK, "blue".into())
    );
    assert_eq!(
        h.served_leaf(&pki, "app.test").await.expect("tls"),
        second.der
    );
    let mut fresh = TlsClient::over(h.connect(&pki, "app.test").await.expect("tls")).await;
    assert_eq!(
        fresh.get("app.test", "/").await,
        (StatusCode::OK, "blue".into())
    );
}

#[tokio::test]
async fn a_bad_certificate_file_keeps_the_previous_certificate() {
    let pki = Pki::new();
    let good = pki.leaf(&["app.test"]);
    let h = TlsHarness::start(RouterConfig::default(), |dir| {
        pki.install_combined(dir, "app.test", &good)
    })
    .await;
    let path = h.dir().join("app.test.pem");

    let wrong_name = pki.leaf(&["elsewhere.test"]);
    let other_key = pki.leaf(&["app.test"]);
    let cases = [
        ("garbage".to_owned(), "no CERTIFICATE"),
        (good.chain_pem.clone(), "no PRIVATE KEY"),
        (
            format!("{}{}", good.chain_pem, other_key.key_pem),
            "key cannot be used",
        ),
        (
            format!("{}{}", wrong_name.chain_pem, wrong_name.key_pem),
            "does not cover app.test",
        ),
    ];
    for (text, error) in cases {
        write_replacing(&path, &text);
        let report = h.certs.reload().expect("reload");
        assert_eq!(report.errors.len(), 1, "{report:?}");
        assert!(report.errors[0].contains(error), "{error}: {report:?}");
        assert!(
            report.errors[0].contains("keeping the certificate loaded before"),
            "{report:?}"
        );
        assert_eq!(report.hostnames, ["app.test"]);
        assert_eq!(
            h.served_leaf(&pki, "app.test").await.expect("tls"),
            good.der
        );
    }

    // A new name that never loaded is simply absent; removing a file removes its name.
    write_replacing(&h.dir().join("new.test.pem"), "garbage");
    let report = h.certs.reload().expect("reload");
    assert_eq!(report.errors.len(), 2, "{report:?}");
    assert!(h.connect(&pki, "new.test").await.is_err());
    std::fs::remove_file(&path).expect("remove");
    let report = h.certs.reload().expect("reload");
    assert!(report.hostnames.is_empty(), "{report:?}");
    assert!(h.connect(&pki, "app.test").await.is_err());
}

#[tokio::test]
async fn a_watched_directory_picks_up_new_and_changed_files() {
    let pki = Pki::new();
    let first = pki.leaf(&["app.test"]);
    let h = TlsHarness::start(RouterConfig::default(), |dir| {
        pki.install_combined(dir, "app.test", &first)
    })
    .await;
    let stop = CancellationToken::new();
    tokio::spawn(Arc::clone(&h.certs).watch(Duration::from_millis(20), stop.clone()));

    assert_eq!(h.certs.reload_if_changed().expect("scan"), None);
    let added = pki.leaf(&["added.test"]);
    pki.install_combined(h.dir(), "added.test", &added);
    let store: &Arc<CertStore> = h.router.certificates();
    assert!(support::eventually(|| store.covers("added.test")).await);
    assert_eq!(
        h.served_leaf(&pki, "added.test").await.expect("tls"),
        added.der
    );
    stop.cancel();
}

#[tokio::test]
async fn plain_listener_redirects_hosts_with_certificates_except_acme_challenges() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["app.test"]);
    let config = RouterConfig {
        https_redirect: Some(8443),
        ..RouterConfig::default()
    };
    let h = TlsHarness::start(config, |dir| pki.install_combined(dir, "app.test", &leaf)).await;
    let blue = upstream(Reply::Name("blue")).await;
    h.router
        .publish(table(&[
            ("app.test", "blue", &[blue]),
            ("plain.test", "blue", &[blue]),
        ]))
        .await;
    let mut client = Client::connect(h.plain).await;

    let response = client
        .send("GET", Some("App.test:8080"), "/a/b?c=d", "")
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        response.headers()["location"],
        "https://app.test:8443/a/b?c=d"
    );
    support::read(response).await;
    // Hosts without a certificate are served as before.
    assert_eq!(
        client.get(Some("plain.test"), "/").await,
        (StatusCode::OK, "blue".into())
    );

    // ACME http-01: a pending token is answered by the router, other challenge paths go
    // to the app, unredirected.
    h.router
        .acme_challenges()
        .insert("tok-1", "tok-1.thumbprint");
    let path = "/.well-known/acme-challenge/tok-1";
    assert_eq!(
        client.get(Some("app.test"), path).await,
        (StatusCode::OK, "tok-1.thumbprint".into())
    );
    assert_eq!(
        client
            .get(Some("app.test"), "/.well-known/acme-challenge/other")
            .await,
        (StatusCode::OK, "blue".into())
    );
    h.router.acme_challenges().remove("tok-1");
    assert_eq!(
        client.get(Some("app.test"), path).await,
        (StatusCode::OK, "blue".into())
    );

    // The TLS listener never redirects, and does not answer challenges itself.
    let mut tls = TlsClient::over(h.connect(&pki, "app.test").await.expect("tls")).await;
    assert_eq!(
        tls.get("app.test", "/").await,
        (StatusCode::OK, "blue".into())
    );
}

#[tokio::test]
async fn ambiguous_framing_is_refused_over_tls_too() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let leaf = pki.leaf(&["app.test"]);
    let h = TlsHarness::start(RouterConfig::default(), |dir| {
        pki.install_combined(dir, "app.test", &leaf)
    })
    .await;
    let blue = upstream(Reply::Name("blue")).await;
    h.router
        .publish(table(&[("app.test", "blue", &[blue])]))
        .await;

    let mut stream = h.connect(&pki, "app.test").await.expect("tls");
    let request = "POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\n\
                   Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    within(stream.write_all(request.as_bytes()))
        .await
        .expect("write");
    let mut response = Vec::new();
    // The router closes the connection after its refusal: read to the end.
    let _ = within(stream.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 400 "), "{response}");
    assert_eq!(h.router.env_stats("blue").accepted, 0);
}
