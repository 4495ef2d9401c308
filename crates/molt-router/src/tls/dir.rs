//! Certificates from PEM files in a directory, reloaded when the files change.
//!
//! Layout, one hostname per file name:
//! - `<host>.pem`: the certificate chain (leaf first) and the private key in one file; or
//! - `<host>.crt` + `<host>.key`: the chain and the key apart.
//!
//! `<host>` is the name clients ask for (`app.example.com`); a wildcard is written
//! `_wildcard.example.com` (or literally `*.example.com`). Each certificate must cover the
//! name of its file. Other files are ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::certs::{CertSource, CertStore, HostCert, ReloadReport};
use crate::host::lookup_key;

/// A certificate directory feeding a [`CertStore`].
pub struct CertDir {
    dir: PathBuf,
    store: Arc<CertStore>,
    provider: Arc<CryptoProvider>,
    state: Mutex<DirState>,
}

/// What the last scan found.
#[derive(Default)]
struct DirState {
    /// Hostname → the certificate loaded for it (kept when its files turn bad).
    loaded: BTreeMap<String, HostCert>,
    /// Every file considered, with its modification time and length, to notice changes.
    stamps: BTreeMap<PathBuf, (SystemTime, u64)>,
}

/// Why a certificate directory cannot be used at all.
#[derive(Debug)]
pub struct CertDirError(String);

/// The files of one hostname.
enum CertFiles {
    Combined(PathBuf),
    Split { chain: PathBuf, key: PathBuf },
}

impl CertDir {
    /// Loads every certificate in `dir` into `store`. Fails only when the directory cannot
    /// be read; files that cannot be used are listed in the report (and logged).
    pub fn open(
        dir: &Path,
        store: Arc<CertStore>,
    ) -> Result<(Arc<CertDir>, ReloadReport), CertDirError> {
        if !dir.is_dir() {
            return Err(CertDirError(format!(
                "the certificate directory {} does not exist or is not a directory",
                dir.display()
            )));
        }
        let cert_dir = Arc::new(CertDir {
            dir: dir.to_owned(),
            store,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            state: Mutex::new(DirState::default()),
        });
        let report = cert_dir.reload()?;
        let weak = Arc::downgrade(&cert_dir);
        cert_dir
            .store
            .add_reloader(Arc::new(move || match weak.upgrade() {
                Some(dir) => dir.reload().unwrap_or_else(|e| ReloadReport {
                    hostnames: Vec::new(),
                    errors: vec![e.to_string()],
                }),
                None => ReloadReport::default(),
            }));
        Ok((cert_dir, report))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Reads the directory again and makes what it holds live for the next handshake. A
    /// hostname whose files cannot be used keeps its previous certificate; a hostname whose
    /// files are gone loses it.
    pub fn reload(&self) -> Result<ReloadReport, CertDirError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (hosts, stamps) = scan(&self.dir)?;
        let mut report = ReloadReport::default();
        let mut loaded = BTreeMap::new();
        for (hostname, files) in hosts {
            match load(&hostname, &files, &self.provider) {
                Ok(key) => {
                    loaded.insert(hostname.clone(), HostCert { hostname, key });
                }
                Err(reason) => {
                    let kept = state.loaded.get(&hostname).cloned();
                    let line = format!(
                        "{}: {reason}{}",
                        files.display(),
                        if kept.is_some() {
                            "; keeping the certificate loaded before"
                        } else {
                            ""
                        }
                    );
                    error!(hostname, "TLS certificate not loaded: {line}");
                    report.errors.push(line);
                    if let Some(kept) = kept {
                        loaded.insert(hostname, kept);
                    }
                }
            }
        }
        report.hostnames = loaded.keys().cloned().collect();
        self.store
            .replace_source(CertSource::Directory, loaded.values().cloned().collect());
        info!(
            dir = %self.dir.display(),
            hostnames = ?report.hostnames,
            errors = report.errors.len(),
            "TLS certificates loaded"
        );
        state.loaded = loaded;
        state.stamps = stamps;
        Ok(report)
    }

    /// Reloads when a file was added, removed or modified since the last scan.
    pub fn reload_if_changed(&self) -> Result<Option<ReloadReport>, CertDirError> {
        let changed = {
            let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let (_, stamps) = scan(&self.dir)?;
            stamps != state.stamps
        };
        if changed {
            self.reload().map(Some)
        } else {
            Ok(None)
        }
    }

    /// Checks the directory for changes every `every` until `shutdown`, reloading on change.
    pub async fn watch(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let this = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || this.reload_if_changed()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => error!("TLS certificate directory: {e}"),
                Err(e) => error!("TLS certificate reload task failed: {e}"),
            }
        }
    }
}

impl fmt::Debug for CertDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertDir")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for CertDirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CertDirError {}

impl CertFiles {
    fn display(&self) -> String {
        match self {
            CertFiles::Combined(path) => path.display().to_string(),
            CertFiles::Split { chain, key } => format!("{} + {}", chain.display(), key.display()),
        }
    }
}

/// The certificate files by hostname, and the stamps of every candidate file.
type Scan = (
    BTreeMap<String, CertFiles>,
    BTreeMap<PathBuf, (SystemTime, u64)>,
);

fn scan(dir: &Path) -> Result<Scan, CertDirError> {
    let entries = fs::read_dir(dir).map_err(|e| {
        CertDirError(format!(
            "cannot read the certificate directory {}: {e}",
            dir.display()
        ))
    })?;
    let mut stamps = BTreeMap::new();
    let mut by_stem: BTreeMap<String, [Option<PathBuf>; 3]> = BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let (Some(stem), Some(ext)) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|s| s.to_str()),
        ) else {
            continue;
        };
        let slot = match ext {
            "pem" => 0,
            "crt" => 1,
            "key" => 2,
            _ => continue,
        };
        if let Ok(meta) = fs::metadata(&path) {
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            stamps.insert(path.clone(), (modified, meta.len()));
        }
        let stem = stem.to_owned();
        by_stem.entry(stem).or_default()[slot] = Some(path);
    }
    let mut hosts = BTreeMap::new();
    for (stem, [pem, crt, key]) in by_stem {
        let hostname = match stem.strip_prefix("_wildcard.") {
            Some(suffix) => format!("*.{suffix}"),
            None => stem,
        }
        .to_ascii_lowercase();
        let files = match (pem, crt, key) {
            (_, Some(chain), Some(key)) => CertFiles::Split { chain, key },
            (Some(pem), _, _) => CertFiles::Combined(pem),
            (None, Some(chain), None) => CertFiles::Split {
                key: chain.with_extension("key"),
                chain,
            },
            (None, None, Some(key)) => CertFiles::Split {
                chain: key.with_extension("crt"),
                key,
            },
            (None, None, None) => continue,
        };
        hosts.insert(hostname, files);
    }
    Ok((hosts, stamps))
}

impl HostCert {
    /// Parses a PEM chain (leaf first) and a PEM private key for `hostname`, checking that
    /// the key matches the leaf and that the leaf covers the name.
    pub fn from_pem(hostname: &str, chain_pem: &[u8], key_pem: &[u8]) -> Result<HostCert, String> {
        let provider = rustls::crypto::ring::default_provider();
        let hostname = hostname.to_ascii_lowercase();
        let key = parse(&hostname, chain_pem, key_pem, &provider)?;
        Ok(HostCert { hostname, key })
    }
}

/// Loads and checks one hostname's certificate files.
fn load(
    hostname: &str,
    files: &CertFiles,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    let read =
        |path: &Path| fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()));
    let (chain_pem, key_pem) = match files {
        CertFiles::Combined(path) => {
            let bytes = read(path)?;
            (bytes.clone(), bytes)
        }
        CertFiles::Split { chain, key } => (read(chain)?, read(key)?),
    };
    parse(hostname, &chain_pem, &key_pem, provider)
}

/// Parses and checks a certificate: the key matches the leaf, and the leaf covers the
/// hostname.
fn parse(
    hostname: &str,
    chain_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM certificate: {e}"))?;
    if chain.is_empty() {
        return Err("no CERTIFICATE block found".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY block found".to_owned(),
        e => format!("bad PEM private key: {e}"),
    })?;
    let certified = CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| format!("the key cannot be used with this certificate: {e}"))?;
    check_covers(hostname, &certified)?;
    Ok(Arc::new(certified))
}

/// The leaf certificate must be valid for the file's hostname (for a wildcard, for a name
/// one label below it).
fn check_covers(hostname: &str, certified: &CertifiedKey) -> Result<(), String> {
    let probe = match hostname.strip_prefix("*.") {
        Some(suffix) => format!("wildcard-probe.{suffix}"),
        None => hostname.to_owned(),
    };
    let valid_key =
        lookup_key(&probe).map_err(|_| format!("{hostname:?} is not a valid hostname"))?;
    let name = ServerName::try_from(valid_key.as_ref())
        .map_err(|_| format!("{hostname:?} is not a valid hostname"))?;
    let leaf = certified
        .end_entity_cert()
        .map_err(|e| format!("no leaf certificate: {e}"))?;
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("the leaf certificate cannot be parsed: {e}"))?;
    cert.verify_is_valid_for_subject_name(&name)
        .map_err(|_| format!("the certificate does not cover {hostname}"))
}
