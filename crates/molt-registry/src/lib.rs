//! molt-registry: pushing images of the store to an OCI registry and pulling them back, with
//! the `oci-client` crate (rustls with ring; no OpenSSL).
//!
//! Push uploads the config and layers streamed from the store (`upload.rs`: chunked, 4 MiB per
//! request, one chunk in memory, falling back to `oci-client`'s single-request upload of the
//! blob where a registry refuses chunks), trying a cross-repository mount first when given a
//! source repository on the same registry, then the manifest byte for byte, so the image keeps
//! its digest. Pull streams the manifest's blobs into files in the store's scratch space and
//! imports them with the same checks as an OCI archive (every blob against its digest, every
//! layer against its diff id). An image's signatures travel with it as an artifact that refers
//! to it (`signatures.rs`): pushed after the image when it has any, looked for after a pull.
//!
//! Architecture invariant: credentials are only handed to the client; they never appear in
//! errors, logs or reports. Plain HTTP is used only for loopback registries.

mod signatures;
mod upload;

use std::net::IpAddr;

use molt_core::Digest;
use molt_image::{CarriedSignature, ImageError, ImageStore};
/// What a push did is one of the API's records.
pub use molt_wire::PushReport;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};

pub use crate::signatures::{referrers_tag, SIGNATURE_ARTIFACT_TYPE};
use crate::upload::{UploadAuth, UploadError, Uploader};

/// Registry credentials (HTTP basic auth, exchanged for a token where the registry wants one).
#[derive(Clone, Deserialize, Serialize)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or access token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What a pull did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullReport {
    /// Where the image came from.
    pub reference: String,
    /// The manifest digest the image is stored under.
    pub digest: Digest,
    /// Bytes of its blobs as stored.
    pub size: u64,
    /// Regular files in its layers.
    pub files: u64,
    /// The signatures the registry holds for it, not yet verified (the controller verifies
    /// them before it keeps one).
    pub signatures: Vec<CarriedSignature>,
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The reference does not parse (`registry/repository:tag` or `…@sha256:…`).
    #[error("bad image reference {reference:?}: {why}")]
    Reference {
        /// What was given.
        reference: String,
        /// Why it does not parse.
        why: String,
    },
    /// The registry refused or failed (auth, not found, protocol, network).
    #[error("registry {registry}: {message}")]
    Registry {
        /// The registry host.
        registry: String,
        /// What it said.
        message: String,
    },
    /// The registry sent a manifest that is not the one asked for by digest.
    #[error("the registry sent manifest {actual}, not {expected}")]
    DigestMismatch {
        /// The digest in the reference.
        expected: String,
        /// What the manifest hashes to.
        actual: Digest,
    },
    /// The image store failed or refused what the registry sent.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A blocking task could not finish.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A client for one registry reference.
struct Session {
    client: Client,
    auth: RegistryAuth,
    reference: Reference,
}

/// Media types a pull accepts: single-platform image manifests.
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

impl Session {
    fn new(reference: &str, credentials: Option<&Credentials>) -> Result<Session, RegistryError> {
        let parsed: Reference = reference.parse().map_err(|e| RegistryError::Reference {
            reference: reference.to_string(),
            why: format!("{e}"),
        })?;
        let registry = parsed.resolve_registry().to_string();
        let protocol = if is_loopback(&registry) {
            ClientProtocol::HttpsExcept(vec![registry])
        } else {
            ClientProtocol::Https
        };
        let client = Client::new(ClientConfig {
            protocol,
            ..ClientConfig::default()
        });
        let auth = match credentials {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        };
        Ok(Session {
            client,
            auth,
            reference: parsed,
        })
    }

    /// A streaming uploader to this reference's repository; `token` is what `auth` returned
    /// (a bearer token, or none for basic auth and anonymous registries).
    fn uploader(&self, token: Option<String>) -> Result<Uploader, RegistryError> {
        let registry = self.reference.resolve_registry().to_string();
        let scheme = if is_loopback(&registry) {
            "http"
        } else {
            "https"
        };
        let auth = match (token, &self.auth) {
            (Some(token), _) => UploadAuth::Bearer(token),
            (None, RegistryAuth::Basic(user, password)) => {
                UploadAuth::Basic(user.clone(), password.clone())
            }
            (None, _) => UploadAuth::Anonymous,
        };
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| RegistryError::Internal(format!("HTTP client: {e}")))?;
        Ok(Uploader {
            http,
            base: format!("{scheme}://{registry}"),
            repository: self.reference.repository().to_string(),
            auth,
        })
    }

    /// The manifest `tag` in this reference's repository.
    fn at_tag(&self, tag: &str) -> Reference {
        Reference::with_tag(
            self.reference.registry().to_string(),
            self.reference.repository().to_string(),
            tag.to_string(),
        )
    }

    /// The manifest `digest` in this reference's repository.
    fn at_digest(&self, digest: &Digest) -> Reference {
        Reference::with_digest(
            self.reference.registry().to_string(),
            self.reference.repository().to_string(),
            digest.to_string(),
        )
    }

    fn error(&self, e: oci_client::errors::OciDistributionError) -> RegistryError {
        RegistryError::Registry {
            registry: self.reference.resolve_registry().to_string(),
            message: e.to_string(),
        }
    }
}

/// Pushes the stored image `digest` to `target` (`registry/repository:tag`), then its
/// `signatures`, if it has any, as an artifact that refers to it (`signatures.rs`).
///
/// With `mount_from` (a repository on the same registry), each blob is first offered as a
/// cross-repository mount; blobs the registry cannot mount are uploaded.
pub async fn push(
    store: &ImageStore,
    digest: &Digest,
    target: &str,
    credentials: Option<&Credentials>,
    mount_from: Option<&str>,
    signatures: &[CarriedSignature],
) -> Result<PushReport, RegistryError> {
    let session = Session::new(target, credentials)?;
    let details = blocking({
        let (store, digest) = (store.clone(), digest.clone());
        move || store.inspect(&digest)
    })
    .await?;
    let manifest = blocking({
        let (store, digest) = (store.clone(), digest.clone());
        move || store.manifest_bytes(&digest)
    })
    .await?;
    let source = match mount_from {
        Some(repo) => {
            let full = format!("{}/{repo}", session.reference.resolve_registry());
            Some(
                full.parse::<Reference>()
                    .map_err(|e| RegistryError::Reference {
                        reference: repo.to_string(),
                        why: format!("{e}"),
                    })?,
            )
        }
        None => None,
    };
    let token = session
        .client
        .auth(
            &session.reference,
            &session.auth,
            oci_client::RegistryOperation::Push,
        )
        .await
        .map_err(|e| session.error(e))?;
    let uploader = session.uploader(token)?;
    let mut report = PushReport {
        reference: target.to_string(),
        digest: digest.clone(),
        uploaded: 0,
        mounted: 0,
        present: 0,
        streamed: 0,
        bytes: 0,
        signatures: 0,
    };
    let mut blobs = vec![details.config_digest.clone()];
    blobs.extend(details.layers.iter().map(|l| l.digest.clone()));
    blobs.dedup();
    for blob in blobs {
        // Layers a release shares with the one before are in the repository already.
        if uploader.has(&blob).await {
            report.present += 1;
            continue;
        }
        if let Some(source) = &source {
            let mounted = session
                .client
                .mount_blob(&session.reference, source, blob.as_str())
                .await;
            if mounted.is_ok() {
                report.mounted += 1;
                continue;
            }
        }
        let (path, size) = store.blob_file(&blob)?;
        match uploader.upload(&path, &blob).await {
            Ok(()) => report.streamed += 1,
            Err(UploadError::Corrupt { actual }) => {
                return Err(RegistryError::Image(ImageError::Corrupt {
                    digest: blob,
                    actual,
                }))
            }
            Err(UploadError::Io(e)) => {
                return Err(RegistryError::Image(ImageError::Io { path, source: e }))
            }
            Err(UploadError::Refused(why)) => {
                tracing::warn!(%blob, %why, "chunked upload refused; uploading in one request");
                let bytes = blocking({
                    let (store, blob) = (store.clone(), blob.clone());
                    move || store.blob_bytes(&blob)
                })
                .await?;
                session
                    .client
                    .push_blob(&session.reference, &bytes, blob.as_str())
                    .await
                    .map_err(|e| session.error(e))?;
            }
        }
        report.uploaded += 1;
        report.bytes += size;
    }
    let content_type = manifest_media_type(&manifest);
    report.bytes += manifest.len() as u64;
    session
        .client
        .push_manifest_raw(
            &session.reference,
            manifest.clone(),
            content_type.parse().map_err(|_| {
                RegistryError::Internal(format!("bad manifest media type {content_type}"))
            })?,
        )
        .await
        .map_err(|e| session.error(e))?;
    if !signatures.is_empty() {
        report.bytes += signatures::push_signatures(
            &session,
            &uploader,
            digest,
            &manifest,
            &content_type,
            signatures,
        )
        .await?;
        report.signatures = signatures.len() as u64;
    }
    tracing::info!(image = %digest, target, uploaded = report.uploaded, mounted = report.mounted, present = report.present, signatures = report.signatures, "pushed");
    Ok(report)
}

/// Pulls `source` (`registry/repository:tag` or `…@sha256:…`) into the store, with the
/// signatures the registry holds for it (`signatures.rs`).
pub async fn pull(
    store: &ImageStore,
    source: &str,
    credentials: Option<&Credentials>,
) -> Result<PullReport, RegistryError> {
    let session = Session::new(source, credentials)?;
    let (manifest, _) = session
        .client
        .pull_manifest_raw(&session.reference, &session.auth, MANIFEST_TYPES)
        .await
        .map_err(|e| session.error(e))?;
    let parsed: oci_client::manifest::OciImageManifest = serde_json::from_slice(&manifest)
        .map_err(|e| RegistryError::Registry {
            registry: session.reference.resolve_registry().to_string(),
            message: format!("the manifest does not parse as an image manifest: {e}"),
        })?;
    let mut wanted = vec![parsed.config.clone()];
    wanted.extend(parsed.layers.iter().cloned());
    let mut files = Vec::new();
    let mut guards = Vec::new();
    for descriptor in &wanted {
        let digest: Digest = descriptor
            .digest
            .parse()
            .map_err(|_| RegistryError::Registry {
                registry: session.reference.resolve_registry().to_string(),
                message: format!("unsupported blob digest {}", descriptor.digest),
            })?;
        if files.iter().any(|(d, _)| d == &digest) {
            continue;
        }
        let path = store.download_path();
        guards.push(Removal(path.clone()));
        let mut out = tokio::fs::File::create(&path).await.map_err(|e| {
            RegistryError::Image(ImageError::Io {
                path: path.clone(),
                source: e,
            })
        })?;
        session
            .client
            .pull_blob(&session.reference, descriptor, &mut out)
            .await
            .map_err(|e| session.error(e))?;
        // tokio's File finishes its last write in the background: wait for it before the
        // import reads the file.
        tokio::io::AsyncWriteExt::flush(&mut out)
            .await
            .map_err(|e| {
                RegistryError::Image(ImageError::Io {
                    path: path.clone(),
                    source: e,
                })
            })?;
        files.push((digest, path));
    }
    let imported = blocking({
        let store = store.clone();
        let manifest = manifest.clone();
        move || store.import_pulled(&manifest, &files)
    })
    .await?;
    drop(guards);
    if let Some(expected) = session.reference.digest() {
        if expected != imported.digest.as_str() {
            return Err(RegistryError::DigestMismatch {
                expected: expected.to_string(),
                actual: imported.digest,
            });
        }
    }
    let signatures = signatures::pull_signatures(&session, &imported.digest).await?;
    Ok(PullReport {
        reference: source.to_string(),
        digest: imported.digest,
        size: imported.size,
        files: imported.files,
        signatures,
    })
}

/// Removes a downloaded file when dropped (on success and on every error path).
struct Removal(std::path::PathBuf);

impl Drop for Removal {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The media type a stored manifest declares (OCI unless it says otherwise).
fn manifest_media_type(manifest: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(manifest)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_string))
        .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".to_string())
}

/// Whether a registry host (`host[:port]`) is on this machine's loopback.
fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Runs blocking image-store work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, RegistryError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RegistryError::Internal(e.to_string()))?
        .map_err(RegistryError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_recognised() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example.com"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }

    #[test]
    fn credentials_never_print_the_password() {
        let c = Credentials {
            username: "ann".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
