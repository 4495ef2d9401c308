//! Automatic certificates through ACME (RFC 8555) with http-01 challenges.
//!
//! The router only sees the result: certificates in its [`CertStore`] (source
//! [`CertSource::Acme`]) and pending challenge tokens in its [`AcmeChallenges`], which the
//! plain listener answers. Everything else lives here, in the data directory:
//!
//! - `tls/acme/account.json` (0600): the ACME account credentials and the directory URL
//!   they belong to;
//! - `tls/acme/<hostname>.pem` (0600): the issued chain followed by its private key — the same
//!   layout as `--tls-cert-dir`.
//!
//! A certificate is ordered when a hostname has none, and renewed once less than a third of
//! its lifetime is left; the check runs at start and every `check_interval`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use molt_router::tls::{AcmeChallenges, CertSource, CertStore, HostCert};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::write_atomically;

/// How `molt serve` gets certificates from an ACME server.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The ACME directory URL (e.g. Let's Encrypt's
    /// `https://acme-v02.api.letsencrypt.org/directory`).
    pub directory_url: String,
    /// The hostnames to get certificates for (one certificate each).
    pub domains: Vec<String>,
    /// An e-mail address the ACME server may write to about the account.
    pub contact: Option<String>,
    /// A PEM root certificate to trust for the ACME server's own HTTPS (test CAs such as
    /// pebble); the system roots otherwise.
    pub ca_cert: Option<PathBuf>,
    /// How often certificates are checked for renewal.
    pub check_interval: Duration,
}

/// What `account.json` holds.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory_url: String,
    credentials: AccountCredentials,
}

/// Issues and renews the certificates of [`AcmeConfig::domains`].
pub(crate) struct AcmeManager {
    config: AcmeConfig,
    dir: PathBuf,
    certs: Arc<CertStore>,
    challenges: Arc<AcmeChallenges>,
    /// The certificates held now, by hostname.
    held: Vec<HostCert>,
}

impl AcmeConfig {
    /// ACME against `directory_url` for `domains`, checked hourly, system roots.
    pub fn new(directory_url: String, domains: Vec<String>) -> AcmeConfig {
        AcmeConfig {
            directory_url,
            domains,
            contact: None,
            ca_cert: None,
            check_interval: Duration::from_secs(3600),
        }
    }
}

impl AcmeManager {
    /// Loads the certificates stored under `data_dir/tls/acme` into `certs` (so TLS works at
    /// once after a restart); issuing starts with [`AcmeManager::run`].
    pub(crate) fn open(
        config: AcmeConfig,
        data_dir: &Path,
        certs: Arc<CertStore>,
        challenges: Arc<AcmeChallenges>,
    ) -> Result<AcmeManager> {
        if config.domains.is_empty() {
            bail!("ACME needs at least one hostname: pass --acme-domain");
        }
        let dir = data_dir.join("tls").join("acme");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut manager = AcmeManager {
            config,
            dir,
            certs,
            challenges,
            held: Vec::new(),
        };
        for domain in manager.config.domains.clone() {
            let path = manager.cert_path(&domain);
            let Ok(pem) = fs::read(&path) else { continue };
            match HostCert::from_pem(&domain, &pem, &pem) {
                Ok(cert) => manager.held.push(cert),
                Err(e) => warn!(
                    "stored ACME certificate {} is not usable ({e}); a new one will be ordered",
                    path.display()
                ),
            }
        }
        manager.publish();
        Ok(manager)
    }

    /// Orders missing certificates and renews due ones now, then every `check_interval`,
    /// until `stop`. A failed order is logged and retried at the next check.
    pub(crate) async fn run(mut self, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.check() => {}
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.config.check_interval) => {}
            }
        }
    }

    /// One pass over the hostnames.
    async fn check(&mut self) {
        let due: Vec<String> = self
            .config
            .domains
            .iter()
            .filter(
                |domain| match self.held.iter().find(|c| &c.hostname == *domain) {
                    None => true,
                    Some(cert) => renewal_due(cert, SystemTime::now()),
                },
            )
            .cloned()
            .collect();
        if due.is_empty() {
            return;
        }
        let account = match self.account().await {
            Ok(account) => account,
            Err(e) => {
                error!("ACME account at {}: {e:#}", self.config.directory_url);
                return;
            }
        };
        for domain in due {
            match self.issue(&account, &domain).await {
                Ok(cert) => {
                    info!(hostname = %domain, "ACME certificate issued");
                    self.held.retain(|c| c.hostname != domain);
                    self.held.push(cert);
                    self.publish();
                }
                Err(e) => error!(hostname = %domain, "ACME certificate not issued: {e:#}"),
            }
        }
    }

    fn publish(&self) {
        self.certs
            .replace_source(CertSource::Acme, self.held.clone());
    }

    fn cert_path(&self, domain: &str) -> PathBuf {
        self.dir.join(format!("{domain}.pem"))
    }

    /// The stored account for this directory, or a new one (then stored, 0600).
    async fn account(&self) -> Result<Account> {
        let builder = || match &self.config.ca_cert {
            Some(path) => Account::builder_with_root(path)
                .with_context(|| format!("trusting the ACME CA {}", path.display())),
            None => Account::builder().context("setting up the ACME client"),
        };
        let path = self.dir.join("account.json");
        if let Ok(text) = fs::read_to_string(&path) {
            match serde_json::from_str::<StoredAccount>(&text) {
                Ok(stored) if stored.directory_url == self.config.directory_url => {
                    return builder()?
                        .from_credentials(stored.credentials)
                        .await
                        .context("restoring the stored ACME account");
                }
                Ok(_) => info!("the ACME directory changed: creating a new account"),
                Err(e) => warn!(
                    "{} is not readable ({e}): creating a new account",
                    path.display()
                ),
            }
        }
        let contact: Vec<String> = self
            .config
            .contact
            .iter()
            .map(|email| format!("mailto:{email}"))
            .collect();
        let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, credentials) = builder()?
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.config.directory_url.clone(),
                None,
            )
            .await
            .context("creating an ACME account")?;
        let stored = StoredAccount {
            directory_url: self.config.directory_url.clone(),
            credentials,
        };
        write_atomically(&path, serde_json::to_string(&stored)?.as_bytes(), 0o600)?;
        Ok(account)
    }

    /// Orders one certificate, answering its http-01 challenges through the router.
    async fn issue(&self, account: &Account, domain: &str) -> Result<HostCert> {
        let identifiers = [Identifier::Dns(domain.to_owned())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .context("creating the order")?;
        let mut tokens = Vec::new();
        let ready = async {
            let mut authorizations = order.authorizations();
            while let Some(authorization) = authorizations.next().await {
                let mut authorization = authorization.context("reading an authorization")?;
                match authorization.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    status => bail!("authorization is {status:?}"),
                }
                let mut challenge = authorization
                    .challenge(ChallengeType::Http01)
                    .ok_or_else(|| anyhow!("the ACME server offers no http-01 challenge"))?;
                let key_authorization = challenge.key_authorization();
                self.challenges
                    .insert(&challenge.token, key_authorization.as_str());
                tokens.push(challenge.token.clone());
                challenge.set_ready().await.context("starting the challenge")?;
            }
            let status = order
                .poll_ready(&RetryPolicy::new().timeout(Duration::from_secs(60)))
                .await
                .context("waiting for validation")?;
            if status != OrderStatus::Ready {
                bail!("the order is {status:?} after validation (is port 80 of {domain} this router's plain listener?)");
            }
            Ok(())
        }
        .await;
        for token in &tokens {
            self.challenges.remove(token);
        }
        ready?;
        let key_pem = order.finalize().await.context("finalizing the order")?;
        let chain_pem = order
            .poll_certificate(&RetryPolicy::new().timeout(Duration::from_secs(60)))
            .await
            .context("downloading the certificate")?;
        let cert = HostCert::from_pem(domain, chain_pem.as_bytes(), key_pem.as_bytes())
            .map_err(|e| anyhow!("the issued certificate is not usable: {e}"))?;
        let pem = format!("{chain_pem}{key_pem}");
        write_atomically(&self.cert_path(domain), pem.as_bytes(), 0o600)?;
        Ok(cert)
    }
}

/// Whether less than a third of the certificate's lifetime is left at `now` (or its dates
/// cannot be read).
fn renewal_due(cert: &HostCert, now: SystemTime) -> bool {
    let Ok(leaf) = cert.key.end_entity_cert() else {
        return true;
    };
    let Some((not_before, not_after)) = validity(leaf.as_ref()) else {
        return true;
    };
    let lifetime = not_after.saturating_sub(not_before);
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    now + lifetime / 3 >= not_after
}

/// `notBefore` and `notAfter` of a DER certificate, in seconds since the Unix epoch.
fn validity(der: &[u8]) -> Option<(u64, u64)> {
    let (certificate, _) = der_element(der, 0x30)?;
    let (tbs, _) = der_element(certificate, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = der_element(rest, 0xa0)?.1; // version
    }
    rest = der_element(rest, 0x02)?.1; // serialNumber
    rest = der_element(rest, 0x30)?.1; // signature
    rest = der_element(rest, 0x30)?.1; // issuer
    let (validity, _) = der_element(rest, 0x30)?;
    let (not_before, rest) = der_time(validity)?;
    let (not_after, _) = der_time(rest)?;
    Some((not_before, not_after))
}

/// The contents of the DER element at the start of `input` (which must have tag `tag`) and
/// what follows it.
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&len, mut rest) = rest.split_first()?;
    let len = if len < 0x80 {
        usize::from(len)
    } else {
        let bytes = usize::from(len & 0x7f);
        if bytes == 0 || bytes > 4 || rest.len() < bytes {
            return None;
        }
        let (len_bytes, after) = rest.split_at(bytes);
        rest = after;
        len_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// A UTCTime or GeneralizedTime (`Z` form, as RFC 5280 requires) as Unix seconds.
fn der_time(input: &[u8]) -> Option<(u64, &[u8])> {
    let (text, rest, year) = match input.first()? {
        0x17 => {
            let (text, rest) = der_element(input, 0x17)?;
            let yy = digits(text.get(0..2)?)?;
            (
                text.get(2..)?,
                rest,
                if yy >= 50 { 1900 + yy } else { 2000 + yy },
            )
        }
        0x18 => {
            let (text, rest) = der_element(input, 0x18)?;
            (text.get(4..)?, rest, digits(text.get(0..4)?)?)
        }
        _ => return None,
    };
    if text.len() != 11 || text[10] != b'Z' {
        return None;
    }
    let field = |at: usize| digits(&text[at..at + 2]);
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    let days = days_from_civil(year, month, day)?;
    Some((days * 86_400 + hour * 3600 + minute * 60 + second, rest))
}

fn digits(text: &[u8]) -> Option<u64> {
    text.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
    })
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || year < 1970 {
        return None;
    }
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let year_of_era = year - era * 400;
    let month_index = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    Some(era * 146_097 + day_of_era - 719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_valid(from: (i32, u8, u8), to: (i32, u8, u8)) -> HostCert {
        let mut params =
            rcgen::CertificateParams::new(vec!["app.test".to_owned()]).expect("params");
        params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        params.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        HostCert::from_pem(
            "app.test",
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
        )
        .expect("usable certificate")
    }

    fn at(year: i32, month: u8, day: u8) -> SystemTime {
        let days = days_from_civil(year as u64, u64::from(month), u64::from(day)).expect("date");
        UNIX_EPOCH + Duration::from_secs(days * 86_400)
    }

    #[test]
    fn validity_dates_are_read_from_the_certificate() {
        // UTCTime before 2050, GeneralizedTime from 2050 on.
        let cert = cert_valid((2026, 1, 1), (2051, 3, 1));
        let leaf = cert.key.end_entity_cert().expect("leaf");
        let (not_before, not_after) = validity(leaf.as_ref()).expect("dates");
        assert_eq!(UNIX_EPOCH + Duration::from_secs(not_before), at(2026, 1, 1));
        assert_eq!(UNIX_EPOCH + Duration::from_secs(not_after), at(2051, 3, 1));
        assert_eq!(days_from_civil(1970, 1, 1), Some(0));
        assert_eq!(days_from_civil(2000, 3, 1), Some(11_017));
        assert!(validity(b"\x30\x03\x02\x01").is_none());
        assert!(validity(&[]).is_none());
    }

    #[test]
    fn renewal_is_due_in_the_last_third_of_the_lifetime() {
        // 90 days: due from day 60 on.
        let cert = cert_valid((2026, 1, 1), (2026, 4, 1));
        assert!(!renewal_due(&cert, at(2026, 1, 2)));
        assert!(!renewal_due(&cert, at(2026, 2, 28)));
        assert!(renewal_due(&cert, at(2026, 3, 2)));
        assert!(renewal_due(&cert, at(2026, 5, 1)));
    }
}
