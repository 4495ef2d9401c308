//! Tokens and the audit trail, kept in the store. Deciding who may do what is molt-api's
//! (`auth.rs`); the controller only keeps the records.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use molt_store::StoredToken;
use molt_wire::{AuditEntry, Role, TokenRecord};

use molt_core::InputError;

use crate::{parse_app, Controller, Result};

/// Who a token stands for, as the parts mounted beside the API (the dashboard, the git
/// remote) see it: its name, role and app scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name: the actor recorded for what it does.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The apps it is limited to (none: every app).
    pub apps: Option<Vec<String>>,
}

impl Caller {
    /// Whether it may look (every role but `router`, whose token opens only the fleet's
    /// endpoints).
    pub fn can_read(&self) -> bool {
        matches!(self.role, Role::Read | Role::Deploy | Role::Admin)
    }

    /// Whether it may change `app` (deploy, roll back, swap, push): `deploy` for an app in its
    /// scope, or `admin`.
    pub fn can_change(&self, app: &str) -> bool {
        match self.role {
            Role::Admin => true,
            Role::Deploy => self
                .apps
                .as_ref()
                .is_none_or(|apps| apps.iter().any(|a| a == app)),
            Role::Read | Role::Router => false,
        }
    }
}

/// The one function that says who a token is (`None`: no valid token), handed by the server to
/// the parts mounted beside the API, so that none of them checks tokens itself (molt-api's
/// `authenticator` makes it over its `Auth`). The second argument is the address the token
/// came from, when it is a fresh attempt (a login, a push): failures from an address are
/// limited as the API's are.
pub type Authenticate = Arc<
    dyn Fn(String, Option<IpAddr>) -> Pin<Box<dyn Future<Output = Option<Caller>> + Send>>
        + Send
        + Sync,
>;

impl Controller {
    /// Every token with the hash of its secret, revoked ones included.
    pub async fn stored_tokens(&self) -> Result<Vec<StoredToken>> {
        self.db(|s| s.tokens()).await
    }

    /// Makes a token whose secret hashes to `hash` (a live token of that name is a conflict);
    /// its name and the names of the apps it is limited to are checked first.
    pub async fn create_token(&self, token: StoredToken) -> Result<()> {
        check_token_name(&token.record.name)?;
        for app in token.record.apps.iter().flatten() {
            parse_app(app)?;
        }
        if token.record.apps.as_ref().is_some_and(Vec::is_empty) {
            return Err(InputError::Invalid(
                "a token limited to apps needs at least one app (leave --apps out for every app)"
                    .into(),
            )
            .into());
        }
        self.db(move |s| s.create_token(&token)).await
    }

    /// Makes sure the token `name` of one of `molt serve`'s token files has `hash`.
    pub async fn ensure_file_token(&self, name: &str, role: Role, hash: String) -> Result<()> {
        let name = name.to_owned();
        self.db(move |s| s.ensure_file_token(&name, role, &hash))
            .await
    }

    /// Revokes a live token.
    pub async fn revoke_token(&self, name: &str) -> Result<TokenRecord> {
        let name = name.to_owned();
        self.db(move |s| s.revoke_token(&name)).await
    }

    /// Appends a call to the audit trail.
    pub async fn record_audit(&self, entry: AuditEntry) -> Result<()> {
        self.db(move |s| s.record_audit(&entry)).await
    }

    /// The newest `limit` audit entries, oldest first (one app's when `app` is set: an app
    /// name, existing or not, since a refused call may name an app that never was).
    pub async fn audit(&self, app: Option<String>, limit: usize) -> Result<Vec<AuditEntry>> {
        if let Some(app) = &app {
            parse_app(app)?;
        }
        self.db(move |s| s.audit(app.as_deref(), limit)).await
    }

    /// Now, ms since the epoch, by the controller's clock (token expiry is judged on it).
    pub fn clock_ms(&self) -> u64 {
        self.now_ms()
    }
}

/// A token's name: 1 to 64 letters, digits, '-', '_' and '.'.
fn check_token_name(name: &str) -> Result<()> {
    let fine = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if fine {
        Ok(())
    } else {
        Err(InputError::InvalidName {
            kind: "token name",
            value: name.chars().take(64).collect(),
            why: "use 1 to 64 letters, digits, '-', '_' and '.'".into(),
        }
        .into())
    }
}
