//! Authentication: a bearer secret becomes a [`Principal`] (a token's name, role and app
//! scope), or an [`AuthError`] that never repeats the secret.
//!
//! Secrets are 256 random bits, so the store keeps a plain SHA-256 of each: with that much
//! entropy a slow, salted password hash buys nothing (there is no dictionary to slow down),
//! and one SHA-256 per call costs well under a microsecond. Tokens are looked up in memory by
//! that hash (a map loaded from the store at the first call, reloaded when a token is made
//! or revoked); a lookup's timing can only tell about the hash, never the secret.
//!
//! Failed authentications are counted per source address ([`FailureLimiter`]): past a burst,
//! an address is answered `429` with `Retry-After` until its allowance refills.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use molt_control::{Controller, StoredToken};
use molt_core::authorization::{self, BearerError};
use molt_wire::{Role, TokenRecord};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::Tokens;

/// Who made a call: the token it authenticated with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name: the actor recorded in the audit trail and the history.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The apps it is limited to (none: every app).
    pub apps: Option<Vec<String>>,
}

/// Why a call was not authenticated. The words never include the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization` header.
    Missing,
    /// An `Authorization` header that is not `Bearer <token>` with a token of visible ASCII.
    Malformed,
    /// No token has this secret.
    Unknown,
    /// The token was revoked.
    Revoked(String),
    /// The token expired.
    Expired(String),
    /// Too many failures from this address; retry after this many seconds.
    Limited(u64),
    /// The tokens could not be read from the store.
    Unavailable(String),
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Missing => f.write_str(
                "missing API token: send 'Authorization: Bearer <token>' (an admin's token is in \
                 <data dir>/admin.token; `molt tokens create` makes more)",
            ),
            AuthError::Malformed => f.write_str(
                "malformed Authorization header: send 'Authorization: Bearer <token>' with the \
                 API token",
            ),
            AuthError::Unknown => f.write_str(
                "unknown API token: check the token you send (an admin's token is in <data \
                 dir>/admin.token)",
            ),
            AuthError::Revoked(name) => write!(
                f,
                "the API token '{name}' was revoked: ask an admin for a new one"
            ),
            AuthError::Expired(name) => write!(
                f,
                "the API token '{name}' has expired: ask an admin for a new one"
            ),
            AuthError::Limited(secs) => write!(
                f,
                "too many failed API token attempts from this address: retry in {secs} s"
            ),
            AuthError::Unavailable(why) => write!(f, "cannot check the API token now: {why}"),
        }
    }
}

/// The token of an `Authorization` header value: `Bearer <token>` (the scheme in any case,
/// one or more spaces), the token 1 to 256 characters of visible ASCII
/// (`molt_core::authorization`, fuzzed there).
pub fn bearer_token(header: Option<&[u8]>) -> Result<&str, AuthError> {
    authorization::bearer_token(header).map_err(|e| match e {
        BearerError::Missing => AuthError::Missing,
        BearerError::Malformed => AuthError::Malformed,
    })
}

/// Lowercase hex SHA-256 of a secret: what the store keeps.
pub fn token_hash(secret: &str) -> String {
    molt_core::hex::encode(&Sha256::digest(secret.as_bytes()))
}

/// A fresh secret: 256 random bits as 64 hex digits.
pub fn new_secret() -> String {
    molt_core::hex::encode(&rand::random::<[u8; 32]>())
}

/// Turns bearer secrets into principals. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<AuthInner>,
}

struct AuthInner {
    controller: Controller,
    /// The secrets of `admin.token` and `router.token`, made tokens at the first call.
    files: Tokens,
    loaded: OnceCell<()>,
    by_hash: RwLock<HashMap<String, TokenRecord>>,
    limiter: Mutex<FailureLimiter>,
}

impl Auth {
    /// Authentication over the controller's tokens; `files` become the tokens `admin` and
    /// `router` (so deployments from before roles keep working).
    pub fn new(controller: Controller, files: Tokens) -> Auth {
        Auth::with_policy(controller, files, FailurePolicy::default())
    }

    /// The same, with failed authentications limited by `policy`.
    pub fn with_policy(controller: Controller, files: Tokens, policy: FailurePolicy) -> Auth {
        Auth {
            inner: Arc::new(AuthInner {
                controller,
                files,
                loaded: OnceCell::new(),
                by_hash: RwLock::new(HashMap::new()),
                limiter: Mutex::new(FailureLimiter::new(policy)),
            }),
        }
    }

    /// The one way in: the principal a bearer `secret` sent from `source` stands for.
    /// Failures from an address are rate-limited; a limited address is refused before its
    /// secret is looked at.
    pub async fn authenticate(
        &self,
        secret: &str,
        source: Option<IpAddr>,
    ) -> Result<Principal, AuthError> {
        let now = Instant::now();
        if let Some(ip) = source {
            if let Some(wait) = self.limiter().retry_after(ip, now) {
                return Err(AuthError::Limited(wait.as_secs().max(1)));
            }
        }
        let found = self.lookup(secret).await;
        if let (Err(error), Some(ip)) = (&found, source) {
            if !matches!(error, AuthError::Unavailable(_)) {
                self.limiter().failed(ip, now);
            }
        }
        found
    }

    /// Reads the tokens from the store again (after one was made or revoked).
    pub async fn reload(&self) -> Result<(), AuthError> {
        let tokens = self
            .inner
            .controller
            .stored_tokens()
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        let map = tokens
            .into_iter()
            .map(|StoredToken { record, hash }| (hash, record))
            .collect();
        *self
            .inner
            .by_hash
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = map;
        Ok(())
    }

    async fn lookup(&self, secret: &str) -> Result<Principal, AuthError> {
        self.inner.loaded.get_or_try_init(|| self.load()).await?;
        let hash = token_hash(secret);
        let record = self
            .inner
            .by_hash
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&hash)
            .cloned()
            .ok_or(AuthError::Unknown)?;
        if record.revoked_ms.is_some() {
            return Err(AuthError::Revoked(record.name));
        }
        let now = self.inner.controller.clock_ms();
        if record.expires_ms.is_some_and(|at| at <= now) {
            return Err(AuthError::Expired(record.name));
        }
        Ok(Principal {
            name: record.name,
            role: record.role,
            apps: record.apps,
        })
    }

    /// Makes the token files' tokens, then loads every token.
    async fn load(&self) -> Result<(), AuthError> {
        let files = &self.inner.files;
        for (name, role, secret) in [
            ("admin", Role::Admin, &files.admin),
            ("router", Role::Router, &files.router),
        ] {
            self.inner
                .controller
                .ensure_file_token(name, role, token_hash(secret))
                .await
                .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        }
        self.reload().await
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, FailureLimiter> {
        self.inner
            .limiter
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How many failures an address may make: a burst, then one more per `refill`.
#[derive(Debug, Clone, Copy)]
pub struct FailurePolicy {
    /// Failures allowed at once.
    pub burst: u32,
    /// Time that gives one failure back.
    pub refill: Duration,
    /// Addresses tracked at most (the ones with their whole allowance are dropped first).
    pub max_addresses: usize,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        FailurePolicy {
            burst: 30,
            refill: Duration::from_secs(2),
            max_addresses: 10_000,
        }
    }
}

/// Failed authentications per source address, as a token bucket each. Time is passed in.
#[derive(Debug)]
pub struct FailureLimiter {
    policy: FailurePolicy,
    /// Per address: failures still allowed (fractional) as of the instant.
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl FailureLimiter {
    /// An empty limiter.
    pub fn new(policy: FailurePolicy) -> FailureLimiter {
        FailureLimiter {
            policy,
            buckets: HashMap::new(),
        }
    }

    fn allowance(&self, ip: IpAddr, now: Instant) -> f64 {
        let burst = f64::from(self.policy.burst);
        match self.buckets.get(&ip) {
            None => burst,
            Some((left, at)) => {
                let refilled = now.saturating_duration_since(*at).as_secs_f64()
                    / self.policy.refill.as_secs_f64().max(f64::MIN_POSITIVE);
                (left + refilled).min(burst)
            }
        }
    }

    /// How long `ip` must wait before its next attempt is looked at (none: go ahead).
    pub fn retry_after(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let left = self.allowance(ip, now);
        (left < 1.0).then(|| self.policy.refill.mul_f64(1.0 - left))
    }

    /// Counts a failure of `ip`.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        let left = (self.allowance(ip, now) - 1.0).max(0.0);
        if self.buckets.len() >= self.policy.max_addresses && !self.buckets.contains_key(&ip) {
            let burst = f64::from(self.policy.burst);
            let policy = self.policy;
            self.buckets.retain(|_, (left, at)| {
                let refilled =
                    now.saturating_duration_since(*at).as_secs_f64() / policy.refill.as_secs_f64();
                *left + refilled < burst
            });
            if self.buckets.len() >= self.policy.max_addresses {
                return;
            }
        }
        self.buckets.insert(ip, (left, now));
    }
}

#[cfg(test)]
mod tests;
