//! Secrets: values encrypted at rest with ChaCha20-Poly1305 under a key kept outside the
//! database ([`SecretKey`], `<data dir>/secrets.key` or the environment: molt-server's), each
//! change a new version and a new release naming that version, never the value. Values are
//! opened only to start an instance, which gets each as an environment variable or, when set
//! with delivery `file`, as a file on a tmpfs (`molt_provider::SecretFile`).
//!
//! Each value is sealed with a fresh random 96-bit nonce (safe far beyond the number of
//! values one molt ever stores) and bound to its app, name and version as associated data,
//! so a row copied onto another secret does not open.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use molt_core::{EnvVarName, InputError};
use molt_provider::SecretFile;
use molt_store::SealedSecret;
use molt_wire::{SecretDelivery, SecretOutcome, SecretRecord};

use crate::{parse_app, ControlError, Controller, Result};

/// The largest secret value accepted.
const MAX_VALUE: usize = 64 * 1024;

/// The key secrets are sealed with: 256 bits. Its `Debug` never shows it.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    /// A key from its 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> std::result::Result<SecretKey, String> {
        let text = text.trim();
        if text.len() != 64 {
            return Err(format!(
                "a secrets key is 64 hex digits (256 bits), not {} characters",
                text.len()
            ));
        }
        let bytes = molt_core::hex::decode(text)
            .ok_or_else(|| "a secrets key is 64 hex digits (0-9, a-f)".to_owned())?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes);
        Ok(SecretKey(key))
    }

    /// A fresh random key.
    pub fn generate() -> SecretKey {
        SecretKey(rand::random())
    }

    /// Its 64 hex digits (for the key file).
    pub fn to_hex(&self) -> String {
        molt_core::hex::encode(&self.0)
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.0))
    }

    /// Seals `value` as version `version` of `app`'s secret `name`.
    pub fn seal(&self, app: &str, name: &str, version: u64, value: &[u8]) -> SealedSecret {
        let nonce: [u8; 12] = rand::random();
        let aad = associated_data(app, name, version);
        let ciphertext = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: value,
                    aad: &aad,
                },
            )
            .expect("ChaCha20-Poly1305 encrypts any message shorter than 256 GiB");
        SealedSecret {
            nonce: nonce.to_vec(),
            ciphertext,
            delivery: SecretDelivery::Env,
        }
    }

    /// Opens what [`SecretKey::seal`] made for the same app, name and version.
    pub fn open(
        &self,
        app: &str,
        name: &str,
        version: u64,
        sealed: &SealedSecret,
    ) -> std::result::Result<Vec<u8>, String> {
        if sealed.nonce.len() != 12 {
            return Err("a stored secret has a nonce of the wrong length".into());
        }
        let aad = associated_data(app, name, version);
        self.cipher()
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| {
                format!(
                    "secret {name} v{version} of {app} does not open with this key: is \
                     secrets.key (or MOLT_SECRETS_KEY) the one it was set with?"
                )
            })
    }
}

fn associated_data(app: &str, name: &str, version: u64) -> Vec<u8> {
    format!("molt-secret\0{app}\0{name}\0{version}").into_bytes()
}

impl Controller {
    fn secrets_key(&self) -> Result<&SecretKey> {
        self.inner.config.secrets_key.as_ref().ok_or_else(|| {
            ControlError::Conflict(
                "this molt serve has no secrets key: it makes <data dir>/secrets.key at start, \
                 or takes MOLT_SECRETS_KEY"
                    .into(),
            )
        })
    }

    /// The app's secrets: names, newest versions, who and when; never values.
    pub async fn secrets(&self, app: &str) -> Result<Vec<SecretRecord>> {
        let app = parse_app(app)?.to_string();
        self.db(move |s| s.secrets(&app)).await
    }

    /// Sets a secret (a new version) and, when the app has a release, deploys a new release
    /// naming that version. The value is sealed here and never leaves in an answer or an error.
    pub async fn set_secret(
        &self,
        app: &str,
        name: &str,
        value: Vec<u8>,
        delivery: SecretDelivery,
        by: &str,
    ) -> Result<SecretOutcome> {
        let app = parse_app(app)?;
        let name: EnvVarName = name.parse()?;
        check_value(&value, delivery)?;
        let key = self.secrets_key()?.clone();
        let (a, n, by) = (app.to_string(), name.clone(), by.to_owned());
        let (secret, release) = self
            .db(move |s| {
                let version = s.next_secret_version(&a, n.as_str())?;
                let sealed = SealedSecret {
                    delivery,
                    ..key.seal(&a, n.as_str(), version, &value)
                };
                drop(value);
                let secret = s.put_secret(&a, n.as_str(), version, &sealed, &by)?;
                let release = new_release(s, &a, |secrets| {
                    secrets.insert(n.clone(), version);
                    format!("secret set {n} (v{version})")
                })?;
                Ok((secret, release))
            })
            .await?;
        self.outcome(secret, false, release).await
    }

    /// Removes a secret and, when the app has a release, deploys a new release without it.
    pub async fn remove_secret(&self, app: &str, name: &str) -> Result<SecretOutcome> {
        let app = parse_app(app)?;
        let name: EnvVarName = name.parse()?;
        let a = app.to_string();
        let (secret, release) = self
            .db(move |s| {
                let secret = s.remove_secret(&a, name.as_str())?;
                let release = new_release(s, &a, |secrets| {
                    secrets.remove(&name);
                    format!("secret removed {name}")
                })?;
                Ok((secret, release))
            })
            .await?;
        self.outcome(secret, true, release).await
    }

    async fn outcome(
        &self,
        secret: SecretRecord,
        removed: bool,
        release: Option<molt_wire::ReleaseRecord>,
    ) -> Result<SecretOutcome> {
        let deployment = match release {
            Some(release) => Some(self.start_deployment(&release, None).await?),
            None => None,
        };
        Ok(SecretOutcome {
            secret,
            removed,
            deployment,
        })
    }

    /// The values of the secrets `release` names, opened: the environment variables and the
    /// files its instances get.
    pub(crate) async fn open_secrets(
        &self,
        release: &molt_wire::ReleaseRecord,
    ) -> Result<OpenedSecrets> {
        if release.config.secrets.is_empty() {
            return Ok(OpenedSecrets::default());
        }
        let key = self.secrets_key()?.clone();
        let (app, wanted) = (release.app.clone(), release.config.secrets.clone());
        self.db(move |s| {
            let mut opened = OpenedSecrets::default();
            for (name, version) in &wanted {
                let sealed = s.sealed_secret(&app, name.as_str(), *version)?;
                let value = key
                    .open(&app, name.as_str(), *version, &sealed)
                    .map_err(molt_store::StoreError::Corrupt)?;
                match sealed.delivery {
                    SecretDelivery::Env => {
                        let value = String::from_utf8(value).map_err(|_| {
                            molt_store::StoreError::Corrupt(format!("secret {name} is not UTF-8"))
                        })?;
                        opened.vars.push((name.to_string(), value));
                    }
                    SecretDelivery::File => opened.files.push(SecretFile {
                        name: name.to_string(),
                        value,
                    }),
                }
            }
            Ok(opened)
        })
        .await
    }
}

/// The secrets of a release, opened for its instances.
#[derive(Default)]
pub(crate) struct OpenedSecrets {
    /// Environment variables.
    pub(crate) vars: Vec<(String, String)>,
    /// Files.
    pub(crate) files: Vec<SecretFile>,
}

/// The app's secrets as a new release gets them: each set one at its newest version.
pub(crate) fn current_versions(
    store: &molt_store::Store,
    app: &str,
) -> std::result::Result<std::collections::BTreeMap<EnvVarName, u64>, molt_store::StoreError> {
    let mut out = std::collections::BTreeMap::new();
    for secret in store.secrets(app)? {
        let name = secret
            .name
            .parse()
            .map_err(|e: InputError| molt_store::StoreError::Corrupt(e.to_string()))?;
        out.insert(name, secret.version);
    }
    Ok(out)
}

/// A new release of `app` from its newest, with its secrets changed by `change` (which says
/// how, for the release's note); none when the app has no release yet.
fn new_release(
    s: &mut molt_store::Store,
    app: &str,
    change: impl FnOnce(&mut std::collections::BTreeMap<EnvVarName, u64>) -> String,
) -> std::result::Result<Option<molt_wire::ReleaseRecord>, molt_store::StoreError> {
    let Some(latest) = s.latest_release(app)? else {
        return Ok(None);
    };
    let mut config = latest.config.clone();
    let note = change(&mut config.secrets);
    s.create_release(app, &latest.image, &config, &note)
        .map(Some)
}

/// A value instances can get: not empty, bounded; as an environment variable also UTF-8
/// without NUL (a file takes any bytes). The refusal never quotes the value.
fn check_value(value: &[u8], delivery: SecretDelivery) -> Result<()> {
    let as_env = delivery == SecretDelivery::Env;
    let why = if value.is_empty() {
        Some("a secret's value cannot be empty".to_owned())
    } else if value.len() > MAX_VALUE {
        Some(format!("a secret's value is at most {MAX_VALUE} bytes"))
    } else if as_env && std::str::from_utf8(value).is_err() {
        Some(
            "a secret's value must be UTF-8 text to be an environment variable (deliver it \
             as a file for any bytes)"
                .to_owned(),
        )
    } else if as_env && value.contains(&0) {
        Some(
            "a secret's value cannot contain a NUL byte to be an environment variable \
             (deliver it as a file for any bytes)"
                .to_owned(),
        )
    } else {
        None
    };
    match why {
        Some(why) => Err(InputError::Invalid(why).into()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_where_they_were_sealed() {
        let key = SecretKey::generate();
        let sealed = key.seal("shop", "DB_PASSWORD", 1, b"hunter2");
        assert!(!sealed.ciphertext.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            key.open("shop", "DB_PASSWORD", 1, &sealed).unwrap(),
            b"hunter2"
        );
        assert!(key.open("shop", "DB_PASSWORD", 2, &sealed).is_err());
        assert!(key.open("blog", "DB_PASSWORD", 1, &sealed).is_err());
        let other = SecretKey::generate();
        let error = other.open("shop", "DB_PASSWORD", 1, &sealed).unwrap_err();
        assert!(!error.contains("hunter2"));
        assert_eq!(format!("{key:?}"), "SecretKey(..)");
        let again = SecretKey::from_hex(&key.to_hex()).unwrap();
        assert_eq!(
            again.open("shop", "DB_PASSWORD", 1, &sealed).unwrap(),
            b"hunter2"
        );
        assert!(SecretKey::from_hex("zz").is_err());
        // 64 bytes that are not 64 ASCII digits: refused, never sliced mid-character.
        assert!(SecretKey::from_hex(&"é".repeat(32)).is_err());
        assert!(SecretKey::from_hex(&"g".repeat(64)).is_err());
    }

    #[test]
    fn bad_values_are_refused_without_quoting_them() {
        for bad in [&b""[..], b"a\0b", b"\xff\xfe"] {
            let error = check_value(bad, SecretDelivery::Env)
                .unwrap_err()
                .to_string();
            assert!(error.contains("secret's value"), "{error}");
        }
        assert!(check_value(b"fine", SecretDelivery::Env).is_ok());
        // A file takes any bytes, but not none and not too many.
        assert!(check_value(b"a\0b\xff", SecretDelivery::File).is_ok());
        assert!(check_value(b"", SecretDelivery::File).is_err());
        assert!(check_value(&vec![b'x'; MAX_VALUE + 1], SecretDelivery::File).is_err());
    }
}
