//! ACME http-01 challenge answers, served by the plain listener.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

/// The path under which ACME servers fetch http-01 challenge answers.
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Pending http-01 challenges: token → key authorization. Whoever runs ACME (the server
/// layer) adds a token before telling the ACME server to validate and removes it after.
#[derive(Debug, Default)]
pub struct AcmeChallenges {
    tokens: RwLock<HashMap<String, String>>,
}

impl AcmeChallenges {
    /// Answers `GET /.well-known/acme-challenge/<token>` with `key_authorization`.
    pub fn insert(&self, token: &str, key_authorization: &str) {
        self.tokens
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token.to_owned(), key_authorization.to_owned());
    }

    /// Stops answering for `token`.
    pub fn remove(&self, token: &str) {
        self.tokens
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(token);
    }

    /// The key authorization for a request path, when it is a pending challenge's.
    pub fn answer(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(ACME_CHALLENGE_PREFIX)?;
        let tokens = self.tokens.read().unwrap_or_else(PoisonError::into_inner);
        if tokens.is_empty() {
            return None;
        }
        tokens.get(token).cloned()
    }
}
