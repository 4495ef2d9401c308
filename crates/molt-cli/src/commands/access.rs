//! `molt tokens` and `molt audit`.

use std::io::Read;

use anyhow::{anyhow, bail, Context, Result};
use molt_wire::{
    AuditEntry, Role, SecretDelivery, SecretOutcome, SecretRecord, TokenCreated, TokenRecord,
};
use serde_json::json;

use super::deploy::follow;
use crate::client::{Answer, Client};
use crate::output::{age, print_json, print_list};
use crate::{SecretsAction, TokensAction};

/// `molt tokens create|list|revoke`.
pub async fn tokens(client: &Client, action: TokensAction, json: bool) -> Result<i32> {
    match action {
        TokensAction::Create {
            name,
            role,
            apps,
            expires,
        } => {
            let role: Role = role.parse().map_err(|e: String| anyhow!(e))?;
            let expires_in_secs = expires
                .map(|text| molt_core::duration::parse_duration(&text).map(|d| d.as_secs().max(1)))
                .transpose()?;
            let body = json!({
                "name": name, "role": role, "apps": apps, "expires_in_secs": expires_in_secs,
            });
            let answer = client.post_answer("/v1/tokens", &body).await?;
            let created: TokenCreated = answer.read()?;
            if json {
                print_json(answer.json());
            } else {
                println!("{}", created.secret);
                eprintln!(
                    "token '{}' ({}{}{}): the secret above is shown once; molt keeps only its \
                     hash",
                    created.token.name,
                    created.token.role,
                    scope(&created.token),
                    expiry(&created.token)
                );
            }
            Ok(0)
        }
        TokensAction::List => {
            let answer = client.get_answer("/v1/tokens").await?;
            let tokens: Vec<TokenRecord> = answer.read()?;
            let header = ["NAME", "ROLE", "APPS", "EXPIRES", "CREATED", "BY", "STATE"];
            print_list(answer.json(), &tokens, json, &header, |t| {
                vec![
                    t.name.clone(),
                    t.role.to_string(),
                    t.apps.as_ref().map_or("all".into(), |apps| apps.join(",")),
                    t.expires_ms.map_or("never".into(), ms_text),
                    age(t.created_ms),
                    t.created_by.clone(),
                    if t.revoked_ms.is_some() {
                        "revoked".into()
                    } else {
                        "live".into()
                    },
                ]
            });
            Ok(0)
        }
        TokensAction::Revoke { name } => {
            let answer = client.delete_answer(&format!("/v1/tokens/{name}")).await?;
            answer.read::<TokenRecord>()?;
            if json {
                print_json(answer.json());
            } else {
                println!("token '{name}' revoked: it no longer works");
            }
            Ok(0)
        }
    }
}

/// `molt secrets set|list|rm`.
pub async fn secrets(client: &Client, action: SecretsAction, json: bool) -> Result<i32> {
    match action {
        SecretsAction::Set {
            app,
            name,
            from_file,
            as_file,
            no_wait,
        } => {
            let mut value = match &from_file {
                Some(path) => std::fs::read(path)
                    .with_context(|| format!("reading the secret from {}", path.display()))?,
                None => {
                    let mut bytes = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut bytes)
                        .context("reading the secret from stdin")?;
                    bytes
                }
            };
            if value.is_empty() {
                bail!(
                    "the secret is empty: pipe it in (`printf %s \"$VALUE\" | molt secrets set \
                     {app} {name}`) or pass --from-file"
                );
            }
            let body = if as_file {
                secret_file_body(&name, value)
            } else {
                if value.ends_with(b"\n") {
                    value.pop();
                    if value.ends_with(b"\r") {
                        value.pop();
                    }
                }
                let Ok(value) = String::from_utf8(value) else {
                    bail!(
                        "the secret is not UTF-8 text: an environment variable cannot hold it \
                         (--as-file delivers any bytes as a file)"
                    );
                };
                if value.is_empty() {
                    bail!("the secret is only a newline");
                }
                json!({ "name": name, "value": value })
            };
            let answer = client
                .post_answer(&format!("/v1/apps/{app}/secrets"), &body)
                .await?;
            drop(body);
            outcome(client, &answer, no_wait, json).await
        }
        SecretsAction::List { app } => {
            let answer = client
                .get_answer(&format!("/v1/apps/{app}/secrets"))
                .await?;
            let secrets: Vec<SecretRecord> = answer.read()?;
            let header = ["NAME", "VERSION", "AS", "SET", "BY"];
            print_list(answer.json(), &secrets, json, &header, |s| {
                vec![
                    s.name.clone(),
                    format!("v{}", s.version),
                    match s.delivery {
                        SecretDelivery::Env => "env".into(),
                        SecretDelivery::File => "file".into(),
                    },
                    age(s.created_ms),
                    s.created_by.clone(),
                ]
            });
            Ok(0)
        }
        SecretsAction::Rm { app, name, no_wait } => {
            let answer = client
                .delete_answer(&format!("/v1/apps/{app}/secrets/{name}"))
                .await?;
            outcome(client, &answer, no_wait, json).await
        }
    }
}

/// Prints what a secret change did and follows its deployment.
async fn outcome(client: &Client, answer: &Answer, no_wait: bool, json: bool) -> Result<i32> {
    let outcome: SecretOutcome = answer.read()?;
    let s = &outcome.secret;
    match &outcome.deployment {
        Some(deployment) => {
            if !json {
                let what = if outcome.removed { "removed" } else { "set" };
                eprintln!(
                    "{} secret {} {what} (v{}); deploying",
                    s.app, s.name, s.version
                );
            }
            follow(
                client,
                deployment,
                &answer.json()["deployment"],
                no_wait,
                json,
            )
            .await
        }
        None => {
            if json {
                print_json(answer.json());
            } else if outcome.removed {
                println!("{} secret {} removed", s.app, s.name);
            } else {
                println!(
                    "{} secret {} set (v{}); the app's first deployment gets it",
                    s.app, s.name, s.version
                );
            }
            Ok(0)
        }
    }
}

/// `molt audit`: the newest mutating calls, oldest first.
pub async fn audit(client: &Client, app: Option<String>, limit: usize, json: bool) -> Result<i32> {
    let mut path = format!("/v1/audit?limit={limit}");
    if let Some(app) = &app {
        path.push_str(&format!("&app={app}"));
    }
    let answer = client.get_answer(&path).await?;
    let entries: Vec<AuditEntry> = answer.read()?;
    let header = ["WHEN", "WHO", "ROLE", "FROM", "ACTION", "TARGET", "RESULT"];
    print_list(answer.json(), &entries, json, &header, |e| {
        vec![
            age(e.at_ms),
            e.actor.clone(),
            e.role.to_string(),
            e.source.clone(),
            e.action.clone(),
            e.target.clone(),
            e.status.to_string(),
        ]
    });
    Ok(0)
}

fn scope(token: &TokenRecord) -> String {
    token
        .apps
        .as_ref()
        .map_or(String::new(), |apps| format!(", apps {}", apps.join(",")))
}

fn expiry(token: &TokenRecord) -> String {
    token
        .expires_ms
        .map_or(String::new(), |ms| format!(", expires {}", ms_text(ms)))
}

/// When an expiry comes: `in 29d`, or `expired`.
fn ms_text(ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let s = ms.saturating_sub(now) / 1000;
    match s {
        0 => "expired".into(),
        1..=3599 => format!("in {}m", s.div_ceil(60)),
        3600..=86_399 => format!("in {}h", s / 3600),
        _ => format!("in {}d", s / 86_400),
    }
}

/// The body that sets a secret delivered as a file: text as it is, other bytes as base64.
fn secret_file_body(name: &str, value: Vec<u8>) -> serde_json::Value {
    match String::from_utf8(value) {
        Ok(text) if !text.contains('\0') => {
            json!({ "name": name, "value": text, "delivery": "file" })
        }
        Ok(text) => secret_file_base64(name, text.as_bytes()),
        Err(e) => secret_file_base64(name, e.as_bytes()),
    }
}

fn secret_file_base64(name: &str, bytes: &[u8]) -> serde_json::Value {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    json!({ "name": name, "value_base64": encoded, "delivery": "file" })
}
