//! Access: API tokens with roles, and the audit trail of mutating calls.

use serde::{Deserialize, Serialize};

/// What a token may do. `read` < `deploy` < `admin`; `router` is apart (only the fleet's
/// endpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// GET only.
    Read,
    /// Read, plus deploy, rollback, swap, scale, promote, abort, config and secrets of its
    /// apps, and image uploads and bakes.
    Deploy,
    /// Everything, tokens included.
    Admin,
    /// Only the fleet's endpoints (a `molt router` following the route table).
    Router,
}

impl Role {
    /// Every role, in the order of their names in the document.
    pub const ALL: [Role; 4] = [Role::Read, Role::Deploy, Role::Admin, Role::Router];

    /// Its name (`read`, `deploy`, `admin`, `router`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Deploy => "deploy",
            Role::Admin => "admin",
            Role::Router => "router",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| format!("unknown role '{s}': pick read, deploy, admin or router"))
    }
}

/// A token as it is listed: never its secret, nor the secret's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Its name: the actor of everything done with it.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The apps it is limited to (none: every app).
    pub apps: Option<Vec<String>>,
    /// When it stops working, ms since the epoch (none: never).
    pub expires_ms: Option<u64>,
    /// When it was made, ms since the epoch.
    pub created_ms: u64,
    /// The token that made it (`molt serve` for the ones made from the token files).
    pub created_by: String,
    /// When it was revoked, ms since the epoch.
    pub revoked_ms: Option<u64>,
}

/// `POST /v1/tokens`: a token to make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Its name: letters, digits, '-', '_' and '.', 1 to 64 characters.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Limit it to these apps.
    #[serde(default)]
    pub apps: Option<Vec<String>>,
    /// It stops working this many seconds from now.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

/// The answer to `POST /v1/tokens`: the only time the secret is ever shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    /// The token.
    pub token: TokenRecord,
    /// The bearer secret (64 hex digits); molt keeps only its SHA-256.
    pub secret: String,
}

/// One mutating API call, as the audit trail keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Order of the call.
    pub seq: u64,
    /// When it was answered, ms since the epoch.
    pub at_ms: u64,
    /// The name of the token it was made with.
    pub actor: String,
    /// That token's role.
    pub role: Role,
    /// The client's address (`unknown` when the listener does not say).
    pub source: String,
    /// The operation (its OpenAPI `operationId`, like `deploy` or `createToken`).
    pub action: String,
    /// What it acted on: the request's path.
    pub target: String,
    /// The app it concerned, if any.
    pub app: Option<String>,
    /// The HTTP status it was answered with.
    pub status: u16,
}

/// A secret of an app as it is listed: its name and newest version, never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    /// The app.
    pub app: String,
    /// Its name: the environment variable instances get.
    pub name: String,
    /// 1 for the first value, one more for each change.
    pub version: u64,
    /// When this version was set, ms since the epoch.
    pub created_ms: u64,
    /// The token that set it.
    pub created_by: String,
    /// How instances get it.
    #[serde(default)]
    pub delivery: SecretDelivery,
}

/// How instances get a secret.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretDelivery {
    /// As an environment variable of its name (the value is UTF-8 text without NUL).
    #[default]
    Env,
    /// As a file of its name on a tmpfs, 0400, owned by the instance's user:
    /// `/run/secrets/NAME` in a container, `$MOLT_SECRETS_DIR/NAME` everywhere (any bytes).
    File,
}

impl SecretDelivery {
    /// Its name in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretDelivery::Env => "env",
            SecretDelivery::File => "file",
        }
    }
}

impl std::str::FromStr for SecretDelivery {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "env" => Ok(SecretDelivery::Env),
            "file" => Ok(SecretDelivery::File),
            other => Err(format!("a secret's delivery is env or file, not {other:?}")),
        }
    }
}

/// What setting or removing a secret did: the secret, and the deployment of the release that
/// carries the change (none while the app has no release yet).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretOutcome {
    /// The secret as it is now (for a removal, the version removed).
    pub secret: SecretRecord,
    /// Whether it was removed.
    pub removed: bool,
    /// The deployment of the new release.
    pub deployment: Option<crate::DeploymentRecord>,
}

/// An Ed25519 signature of an image, as molt keeps it with the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSignature {
    /// The image's manifest digest (what is signed, see `signed_message`).
    pub digest: String,
    /// The signer's public key: 64 hex digits.
    pub public_key: String,
    /// The signature: 128 hex digits.
    pub signature: String,
    /// When it was added, ms since the epoch.
    pub created_ms: u64,
    /// The token that added it.
    pub created_by: String,
}

/// The bytes an image signature signs: a fixed context and the image's digest
/// (`sha256:<hex>`), so a signature never stands for anything but that image.
pub fn signed_message(digest: &str) -> Vec<u8> {
    format!("molt image signature v1\0{digest}").into_bytes()
}
