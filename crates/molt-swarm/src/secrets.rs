//! Secrets delivered as files, as Docker secrets: one per environment and secret, made before
//! the environment's service and removed with it. Swarm keeps them encrypted in its raft log
//! and gives each task its files at `/run/secrets/NAME` on a tmpfs, 0400, owned by the task's
//! user. A value is only ever in a create request's body: never in a label, a name, an error
//! or a log line.

use std::collections::BTreeMap;

use base64::Engine as _;
use molt_provider::{EngineError, EnvironmentSpec, SecretFile};
use serde_json::json;
use tracing::{info, warn};

use crate::docker::query_escape;
use crate::model::{Created, SecretListed, SecretReference, SecretSpec, SecretTarget};
use crate::swarm::{Swarm, LABEL_ENV, LABEL_OWNER};

/// The label naming the secret (the file) a Docker secret holds.
pub const LABEL_SECRET: &str = "molt.secret";
/// Longest Docker secret name.
const NAME_MAX: usize = 64;

impl Swarm {
    /// Makes the Docker secrets of `spec`'s secret files (or finds the ones an earlier,
    /// interrupted start made); returns how the service refers to them.
    pub(crate) async fn create_secrets(
        &self,
        spec: &EnvironmentSpec,
    ) -> Result<Vec<SecretReference>, EngineError> {
        let mut references = Vec::new();
        for file in &spec.secret_files {
            let name = secret_name(&self.config.owner, &spec.env, &file.name);
            let id = self.create_secret(&name, &spec.env, file).await?;
            references.push(SecretReference {
                file: SecretTarget {
                    name: file.name.clone(),
                    uid: "65534".into(),
                    gid: "65534".into(),
                    mode: 0o400,
                },
                secret_id: id,
                secret_name: name,
            });
        }
        Ok(references)
    }

    async fn create_secret(
        &self,
        name: &str,
        env: &str,
        file: &SecretFile,
    ) -> Result<String, EngineError> {
        let action = format!("create secret {name}");
        let body = SecretSpec {
            name: name.to_owned(),
            labels: BTreeMap::from([
                (LABEL_OWNER.to_owned(), self.config.owner.clone()),
                (LABEL_ENV.to_owned(), env.to_owned()),
                (LABEL_SECRET.to_owned(), file.name.clone()),
            ]),
            data: base64::engine::general_purpose::STANDARD.encode(&file.value),
        };
        match self
            .docker
            .post::<_, Created>("/secrets/create", &body, &action)
            .await
        {
            Ok(created) => {
                info!(secret = %name, "docker secret created");
                Ok(created.id)
            }
            // Made by a start that was interrupted: the environment's, the same value.
            Err(EngineError::Refused { status: 409, .. }) => self
                .own_secrets(Some(env))
                .await?
                .into_iter()
                .find(|s| s.spec["Name"] == name)
                .map(|s| s.id)
                .ok_or_else(|| EngineError::Refused {
                    engine: self.docker.engine(),
                    action,
                    message: format!(
                        "a secret named {name} exists and is not this molt's for {env}"
                    ),
                    status: 409,
                }),
            Err(e) => Err(e),
        }
    }

    /// Removes the Docker secrets of environment `env` (its service is gone). One still in
    /// use, or an engine that does not answer, is left for the next removal and logged.
    pub(crate) async fn remove_secrets(&self, env: &str) {
        let secrets = match self.own_secrets(Some(env)).await {
            Ok(secrets) => secrets,
            Err(e) => {
                warn!(env, error = %e, "cannot list the environment's docker secrets");
                return;
            }
        };
        for secret in secrets {
            let name = secret.spec["Name"].as_str().unwrap_or_default().to_owned();
            let path = format!("/secrets/{}", query_escape(&secret.id));
            match self
                .docker
                .delete(&path, &format!("remove secret {name}"))
                .await
            {
                Ok(_) => info!(secret = %name, "docker secret removed"),
                Err(e) => warn!(secret = %name, error = %e, "cannot remove a docker secret"),
            }
        }
    }

    /// This molt's Docker secrets (of one environment, or all).
    pub(crate) async fn own_secrets(
        &self,
        env: Option<&str>,
    ) -> Result<Vec<SecretListed>, EngineError> {
        let mut labels = vec![format!("{LABEL_OWNER}={}", self.config.owner)];
        labels.extend(env.map(|env| format!("{LABEL_ENV}={env}")));
        let filters = json!({ "label": labels }).to_string();
        self.docker
            .get(
                &format!("/secrets?filters={}", query_escape(&filters)),
                "list secrets",
            )
            .await
    }
}

/// The Docker secret of `owner`'s environment `env` holding `secret`: `molt-<owner>-<env>-
/// <secret>` when that fits Docker's 64 characters, else the same cut, ended by a hash of the
/// whole so that two long names never meet.
fn secret_name(owner: &str, env: &str, secret: &str) -> String {
    let full = format!("molt-{owner}-{env}-{secret}");
    if full.len() <= NAME_MAX {
        return full;
    }
    let hash = molt_core::hash::fnv1a(full.as_bytes());
    let tail = format!("-{hash:016x}");
    format!("{}{tail}", &full[..NAME_MAX - tail.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_stay_apart() {
        let owner = "0123456789abcdef";
        assert_eq!(
            secret_name(owner, "shop-v3-ab12", "TLS_KEY"),
            "molt-0123456789abcdef-shop-v3-ab12-TLS_KEY"
        );
        let long_env = "a-very-long-application-name-v12-ab12";
        let a = secret_name(owner, long_env, "DATABASE_CLIENT_CERTIFICATE_ONE");
        let b = secret_name(owner, long_env, "DATABASE_CLIENT_CERTIFICATE_TWO");
        assert_eq!((a.len(), b.len()), (NAME_MAX, NAME_MAX));
        assert_ne!(a, b);
        // Docker's rule: letters and digits at both ends, `-_.` between.
        for name in [a, b] {
            assert!(name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c)));
            assert!(name.as_bytes()[NAME_MAX - 1].is_ascii_alphanumeric());
        }
    }
}
