//! The API over TLS, for what reaches the control plane from other machines: `molt router`s
//! of the fleet (and remote CLIs). The plain API stays on its loopback address for the CLI on
//! this machine.
//!
//! The certificate is molt's own, self-signed, kept in `<data dir>/api-tls/` (`cert.pem`,
//! `key.pem` 0600) and made again only when the names it must cover change. A router trusts
//! exactly that certificate (`molt router --control-ca <data dir>/api-tls/cert.pem`), so no
//! certificate authority is involved and nothing else can pose as the control plane.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish once the server stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The API's TLS listener.
#[derive(Debug, Clone)]
pub struct ApiTlsConfig {
    /// Where it listens (an address the other machines reach).
    pub listen: SocketAddr,
    /// Names and addresses the certificate covers besides the listen address, `localhost`,
    /// 127.0.0.1 and the machine's hostname (e.g. the name routers dial).
    pub names: Vec<String>,
}

/// The fingerprint of a certificate as `molt login` pins it: `sha256:` and the hex SHA-256
/// of its DER.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(der);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Where the certificate is.
pub fn cert_path(data_dir: &Path) -> PathBuf {
    data_dir.join("api-tls").join("cert.pem")
}

/// The certificate and key of the API for `names`, made (and saved) when the saved one does
/// not cover them all.
pub(crate) fn certificate(
    data_dir: &Path,
    config: &ApiTlsConfig,
    bound: SocketAddr,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let dir = data_dir.join("api-tls");
    let names = names_to_cover(config, bound);
    let (cert_file, key_file, names_file) =
        (dir.join("cert.pem"), dir.join("key.pem"), dir.join("names"));
    let saved: BTreeSet<String> = std::fs::read_to_string(&names_file)
        .map(|text| text.lines().map(str::to_owned).collect())
        .unwrap_or_default();
    if !(cert_file.exists() && key_file.exists() && names.is_subset(&saved)) {
        let all: BTreeSet<String> = saved.union(&names).cloned().collect();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let key = rcgen::KeyPair::generate().context("making the API's key")?;
        let mut params = rcgen::CertificateParams::new(all.iter().cloned().collect::<Vec<_>>())
            .context("the API certificate's names")?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "molt control plane");
        let cert = params
            .self_signed(&key)
            .context("making the API's certificate")?;
        crate::write_atomically(&key_file, key.serialize_pem().as_bytes(), 0o600)?;
        crate::write_atomically(&cert_file, cert.pem().as_bytes(), 0o644)?;
        let listed: String = all.iter().map(|n| format!("{n}\n")).collect();
        crate::write_atomically(&names_file, listed.as_bytes(), 0o644)?;
        tracing::info!(names = ?all, path = %cert_file.display(), "made the API's TLS certificate (routers trust this file)");
    }
    let certs = CertificateDer::pem_file_iter(&cert_file)
        .with_context(|| format!("reading {}", cert_file.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading {}", cert_file.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key_file)
        .with_context(|| format!("reading {}", key_file.display()))?;
    Ok((certs, key))
}

/// Serves `app` over TLS on `listener` until `stop`.
pub(crate) async fn serve(
    listener: TcpListener,
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    app: axum::Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(std::io::Error::other)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let http = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::debug!(%error, "API TLS accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Without it, a TLS record split over two writes waits for the peer's delayed ACK:
        // measured, a new connection's first answer took 43 ms instead of 3 ms.
        let _ = stream.set_nodelay(true);
        let (acceptor, http, app, stop) =
            (acceptor.clone(), http.clone(), app.clone(), stop.clone());
        connections.spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "API TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            // The peer's address, as `axum::serve` gives it over plain HTTP (the API's failed
            // authentications are limited per address).
            let app = app.layer(axum::Extension(axum::extract::ConnectInfo(peer)));
            let service = TowerToHyperService::new(app);
            let connection = http.serve_connection_with_upgrades(TokioIo::new(tls), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    drop(listener);
    connections.close();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, connections.wait()).await;
    Ok(())
}

/// Every name and address the certificate must cover.
fn names_to_cover(config: &ApiTlsConfig, bound: SocketAddr) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = ["localhost", "127.0.0.1"].map(str::to_owned).into();
    if !bound.ip().is_unspecified() {
        names.insert(bound.ip().to_string());
    }
    if let Ok(hostname) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let hostname = hostname.trim();
        if !hostname.is_empty() {
            names.insert(hostname.to_owned());
        }
    }
    for name in &config.names {
        let name = name.trim();
        if !name.is_empty() {
            // An IP address is kept in its canonical spelling.
            names.insert(
                name.parse::<IpAddr>()
                    .map(|ip| ip.to_string())
                    .unwrap_or_else(|_| name.to_ascii_lowercase()),
            );
        }
    }
    names
}
