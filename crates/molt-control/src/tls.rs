//! The router's TLS certificates as the API shows them: which hostnames have one, and a reload
//! of the certificate directory on demand (it is also watched).

use std::sync::Arc;

use molt_wire::{TlsCertificates, TlsReload};

use crate::{ControlError, Controller, Result};

impl Controller {
    /// The hostnames the router's TLS listener has certificates for.
    pub fn tls_certificates(&self) -> TlsCertificates {
        let certs = self.inner.router.certificates();
        TlsCertificates {
            hostnames: certs.hostnames(),
            reloadable: certs.is_reloadable(),
        }
    }

    /// Re-reads the certificate directory now; files that cannot be used keep their
    /// hostname's previous certificate and are listed in the report's `errors`.
    pub async fn reload_tls(&self) -> Result<TlsReload> {
        let certs = Arc::clone(self.inner.router.certificates());
        if !certs.is_reloadable() {
            return Err(ControlError::Conflict(
                "TLS certificates are not loaded from a directory: start molt serve with \
                 --tls-listen and --tls-cert-dir"
                    .into(),
            ));
        }
        let report = tokio::task::spawn_blocking(move || certs.reload()).await?;
        Ok(TlsReload {
            errors: report.errors,
            hostnames: report.hostnames,
        })
    }
}
