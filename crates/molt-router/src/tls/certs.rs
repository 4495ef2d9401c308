//! Certificates by hostname: what the TLS listener hands out for each SNI name.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::host::lookup_key;

/// Where a set of certificates came from. When two sources hold a certificate for the same
/// name, the later one in this order wins: files an operator placed override automatic ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CertSource {
    /// Issued through ACME by molt itself.
    Acme,
    /// PEM files in the certificate directory (`--tls-cert-dir`).
    Directory,
}

/// One certificate (chain + key) for one hostname, exact (`app.example.com`) or wildcard
/// (`*.example.com`).
#[derive(Clone)]
pub struct HostCert {
    /// Lowercase hostname, `*.` prefix for a wildcard.
    pub hostname: String,
    /// The chain and its signing key.
    pub key: Arc<CertifiedKey>,
}

/// The certificates the TLS listener serves, swapped as a whole on every change so a
/// handshake never waits for a reload.
///
/// Names match like routes do: the exact name first, then the most specific `*.` wildcard
/// (which, as for routes, covers one or more leading labels). A name without a certificate
/// (or a client without SNI) gets no certificate: its handshake fails.
pub struct CertStore {
    current: ArcSwap<CertMap>,
    sources: Mutex<BTreeMap<CertSource, Vec<HostCert>>>,
    reloaders: Mutex<Vec<Reloader>>,
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Hostnames served after the reload (from the directory reloaded
    /// ([`CertDir::reload`](super::CertDir::reload)), or, for [`CertStore::reload`], from every
    /// source).
    pub hostnames: Vec<String>,
    /// One line per file that could not be used (its hostname keeps its previous
    /// certificate, if it had one).
    pub errors: Vec<String>,
}

/// Re-reads one source of certificates (see [`CertStore::add_reloader`]).
pub type Reloader = Arc<dyn Fn() -> ReloadReport + Send + Sync>;

/// An immutable snapshot of the certificates by name.
#[derive(Default)]
struct CertMap {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Suffix (`example.com` for `*.example.com`) → certificate.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

/// The rustls side of a [`CertStore`]: picks the certificate for a handshake by SNI.
pub(crate) struct SniResolver(pub(crate) Arc<CertStore>);

impl CertStore {
    /// An empty store: every handshake fails until certificates are added.
    pub fn new() -> Arc<CertStore> {
        Arc::new(CertStore {
            current: ArcSwap::from_pointee(CertMap::default()),
            sources: Mutex::new(BTreeMap::new()),
            reloaders: Mutex::new(Vec::new()),
        })
    }

    /// Registers what [`CertStore::reload`] runs (a certificate directory registers itself).
    pub fn add_reloader(&self, reloader: Reloader) {
        self.reloaders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(reloader);
    }

    /// Whether anything can be reloaded (a certificate directory is configured).
    pub fn is_reloadable(&self) -> bool {
        !self
            .reloaders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Runs every registered reloader (blocking file I/O: call it from a blocking thread)
    /// and returns the names now served and every file that could not be used.
    pub fn reload(&self) -> ReloadReport {
        let reloaders = self
            .reloaders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut report = ReloadReport::default();
        for reloader in reloaders {
            report.errors.extend(reloader().errors);
        }
        report.hostnames = self.hostnames();
        report
    }

    /// Replaces every certificate of `source` with `certs` and makes the result live for the
    /// next handshake. Connections already established keep the certificate they got.
    pub fn replace_source(&self, source: CertSource, certs: Vec<HostCert>) {
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        sources.insert(source, certs);
        let mut map = CertMap::default();
        for cert in sources.values().flatten() {
            let name = cert.hostname.to_ascii_lowercase();
            match name.strip_prefix("*.") {
                Some(suffix) => map
                    .wildcard
                    .insert(suffix.to_owned(), Arc::clone(&cert.key)),
                None => map.exact.insert(name, Arc::clone(&cert.key)),
            };
        }
        self.current.store(Arc::new(map));
    }

    /// The certificate a client asking for `host` (an SNI name or a Host header value,
    /// port allowed) gets, if any.
    pub fn resolve(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let key = lookup_key(host).ok()?;
        let map = self.current.load();
        if let Some(cert) = map.exact.get(key.as_ref()) {
            return Some(Arc::clone(cert));
        }
        key.match_indices('.')
            .find_map(|(dot, _)| map.wildcard.get(&key[dot + 1..]))
            .map(Arc::clone)
    }

    /// Whether a client asking for `host` would get a certificate.
    pub fn covers(&self, host: &str) -> bool {
        self.resolve(host).is_some()
    }

    /// Every hostname with a certificate (wildcards as `*.suffix`), sorted, each once.
    pub fn hostnames(&self) -> Vec<String> {
        let map = self.current.load();
        let mut names: Vec<String> = map
            .exact
            .keys()
            .cloned()
            .chain(map.wildcard.keys().map(|suffix| format!("*.{suffix}")))
            .collect();
        names.sort();
        names
    }
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("hostnames", &self.hostnames())
            .finish()
    }
}

impl fmt::Debug for HostCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostCert")
            .field("hostname", &self.hostname)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SniResolver").field(&self.0).finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = client_hello.server_name()?;
        let cert = self.0.resolve(name);
        if cert.is_none() {
            tracing::debug!(
                sni = name,
                "no certificate for this name; refusing the handshake"
            );
        }
        cert
    }
}
