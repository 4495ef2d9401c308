//! TLS termination: certificates by SNI name ([`CertStore`]), loaded from a directory
//! ([`CertDir`]) or issued by the server layer (ACME), and the http-01 challenge answers the
//! plain listener gives ([`AcmeChallenges`]).

mod certs;
mod challenge;
mod dir;

use std::sync::Arc;

use rustls::ServerConfig;

pub use certs::{CertSource, CertStore, HostCert, ReloadReport, Reloader};
pub use challenge::{AcmeChallenges, ACME_CHALLENGE_PREFIX};
pub use dir::{CertDir, CertDirError};

use certs::SniResolver;

/// The rustls configuration of the TLS listener: ring, TLS 1.2 and 1.3, certificates by SNI
/// from `certs`, ALPN `h2` then `http/1.1`.
pub(crate) fn server_config(certs: Arc<CertStore>) -> ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver(certs)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}
