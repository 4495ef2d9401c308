//! Sessions: a token pasted once becomes an HttpOnly, SameSite=Strict cookie naming a
//! session held in memory, with the session's CSRF token that every action must send back.
//! The token itself stays in the session and is checked again on every request, through the
//! mounting code's [`Authenticate`](crate::Authenticate): a token that stops being valid ends
//! its sessions at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};

/// The session cookie's name.
pub(crate) const COOKIE: &str = "molt_session";
/// The login form's cookie (its CSRF token: a login is an action too).
pub(crate) const LOGIN_COOKIE: &str = "molt_login";
/// How long a session lasts without a new login.
const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Most sessions held at once; the oldest goes first past this.
const MAX_SESSIONS: usize = 1024;

/// One logged-in browser.
#[derive(Clone)]
pub(crate) struct Session {
    /// The token it logged in with.
    pub(crate) token: String,
    /// What every form of this session carries.
    pub(crate) csrf: String,
    /// When it ends.
    expires: Instant,
}

/// Sessions by cookie value.
#[derive(Default)]
pub(crate) struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Starts a session for `token`; returns the cookie value.
    pub(crate) fn start(&self, token: String) -> String {
        let id = random_hex();
        let session = Session {
            token,
            csrf: random_hex(),
            expires: Instant::now() + LIFETIME,
        };
        let mut by_id = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        by_id.retain(|_, s| s.expires > now);
        if by_id.len() >= MAX_SESSIONS {
            if let Some(oldest) = by_id
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                by_id.remove(&oldest);
            }
        }
        by_id.insert(id.clone(), session);
        id
    }

    /// The session a request's cookie names, if it is still on.
    pub(crate) fn of(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let id = cookie(headers, COOKIE)?;
        let session = self.get(&id)?;
        Some((id, session))
    }

    /// The session named `id`, if it is still on.
    pub(crate) fn get(&self, id: &str) -> Option<Session> {
        let by_id = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        let session = by_id.get(id)?;
        (session.expires > Instant::now()).then(|| session.clone())
    }

    /// Ends a session.
    pub(crate) fn end(&self, id: &str) {
        let mut by_id = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        by_id.remove(id);
    }
}

/// The value of cookie `name` in a request.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, for the whole dashboard; `max_age` 0
/// removes it.
pub(crate) fn set_cookie(name: &str, value: &str, max_age: u64) -> String {
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}")
}

/// Whether two secrets are equal, in time that does not depend on where they differ.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() || b.is_empty() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 32 random bytes as hex: a session id or a CSRF token.
pub(crate) fn random_hex() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn a_session_is_found_by_its_cookie_and_ends() {
        let sessions = Sessions::default();
        let id = sessions.start("tok".into());
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {COOKIE}={id}")).unwrap(),
        );
        let (found, session) = sessions.of(&headers).expect("the session");
        assert_eq!(found, id);
        assert_eq!(session.token, "tok");
        assert_eq!(session.csrf.len(), 64);
        sessions.end(&id);
        assert!(sessions.of(&headers).is_none());
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("ab", "abc"));
        assert!(!same_secret("", ""));
    }
}
