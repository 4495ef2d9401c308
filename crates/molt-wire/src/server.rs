//! Answers about the server itself: its health, its TLS certificates, and the shape of every
//! error.

use serde::{Deserialize, Serialize};

/// `GET /v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    /// Always true when the server answers.
    pub ok: bool,
    /// The molt version serving.
    pub version: String,
}

/// The hostnames the TLS listener has certificates for (`GET /v1/tls`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TlsCertificates {
    /// Hostnames (`*.domain` for wildcards).
    pub hostnames: Vec<String>,
    /// True when the certificates come from a directory that `POST /v1/tls/reload` re-reads.
    pub reloadable: bool,
}

/// What a reload of the certificate directory found (`POST /v1/tls/reload`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TlsReload {
    /// Files that could not be used (their hostname keeps its previous certificate).
    pub errors: Vec<String>,
    /// Hostnames with a certificate after the reload.
    pub hostnames: Vec<String>,
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what to do next, for people.
    pub error: String,
    /// The kind, for programs: `invalid`, `unauthorized`, `not_found`, `conflict`,
    /// `disk_full`, `unavailable`, `registry` or `internal`.
    pub kind: String,
}
