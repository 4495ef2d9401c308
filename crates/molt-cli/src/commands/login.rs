//! `molt login` and `molt logout`: a remote server's certificate pinned on first use, and its
//! token kept in the credentials file (0600).

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;

use crate::client::{ApiError, Client};
use crate::credentials::{self, Credentials, Login};
use crate::output::print_json;
use crate::tls::Trust;

/// `molt login URL`: checks the token against the server over TLS and records both.
pub async fn login(url: &str, token_file: Option<PathBuf>, json: bool) -> Result<i32> {
    let url = credentials::normalize(url);
    if !url.starts_with("https://") {
        bail!(
            "molt login takes an https:// URL (molt serve --api-tls-listen): a token must not \
             cross a network in clear"
        );
    }
    let token = read_token(token_file)?;
    let mut creds = Credentials::load()?;
    let known = creds.servers.get(&url).map(|l| l.fingerprint.clone());
    let seen = Arc::new(Mutex::new(None));
    let trust = match &known {
        Some(pin) => Trust::Pinned(pin.clone()),
        None => Trust::FirstUse(Arc::clone(&seen)),
    };
    let client = Client::with_trust(&url, &token, trust);
    match client.get("/v1/apps").await {
        Ok(_) => {}
        // A token of role router may not list apps; it is still a token the server knows.
        Err(e)
            if e.downcast_ref::<ApiError>()
                .is_some_and(|a| a.status == 403) => {}
        Err(e) => return Err(e.context(format!("logging in to {url}"))),
    }
    let fingerprint = match known {
        Some(pin) => pin,
        None => seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| anyhow!("the server at {url} showed no certificate"))?,
    };
    creds.servers.insert(
        url.clone(),
        Login {
            token,
            fingerprint: fingerprint.clone(),
        },
    );
    creds.current = Some(url.clone());
    creds.save()?;
    if json {
        print_json(&json!({ "url": url, "fingerprint": fingerprint }));
    } else {
        println!("logged in to {url}; its certificate is pinned: {fingerprint}");
        println!("(compare it with the server's: molt serve logs it at start)");
    }
    Ok(0)
}

/// `molt logout URL`.
pub fn logout(url: &str, json: bool) -> Result<i32> {
    let url = credentials::normalize(url);
    let mut creds = Credentials::load()?;
    if creds.servers.remove(&url).is_none() {
        bail!("no login for {url}");
    }
    if creds.current.as_deref() == Some(url.as_str()) {
        creds.current = None;
    }
    creds.save()?;
    if json {
        print_json(&json!({ "url": url, "logged_out": true }));
    } else {
        println!("logged out of {url}; its pinned certificate is forgotten");
    }
    Ok(0)
}

/// The token: from `file`, else `MOLT_TOKEN`, else stdin (never argv).
fn read_token(file: Option<PathBuf>) -> Result<String> {
    let token = match file {
        Some(path) => std::fs::read_to_string(&path)
            .with_context(|| format!("reading the token from {}", path.display()))?,
        None => match std::env::var("MOLT_TOKEN") {
            Ok(token) if !token.is_empty() => token,
            _ => {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("reading the token from stdin")?;
                text
            }
        },
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        bail!("no token: pass --token-file, set MOLT_TOKEN, or pipe it in");
    }
    Ok(token)
}
