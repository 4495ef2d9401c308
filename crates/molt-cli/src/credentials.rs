//! The CLI's credentials for remote servers, one entry per API URL: the token and the pinned
//! certificate fingerprint `molt login` recorded. One JSON file, 0600 in a 0700 directory:
//! `$MOLT_CREDENTIALS`, else `$XDG_CONFIG_HOME/molt/credentials.json`, else
//! `~/.config/molt/credentials.json`.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

/// What `molt login` keeps for one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    /// The API token.
    pub token: String,
    /// The pinned certificate (`sha256:<hex>`).
    pub fingerprint: String,
}

/// Every login, and the server used when none is named.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// By API URL (`https://host:port`).
    pub servers: BTreeMap<String, Login>,
    /// The URL of the newest login.
    pub current: Option<String>,
}

/// Where the credentials file is.
pub fn path() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("MOLT_CREDENTIALS") {
        return Ok(PathBuf::from(path));
    }
    let config = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(
            std::env::var_os("HOME")
                .ok_or_else(|| anyhow!("HOME is not set: set MOLT_CREDENTIALS to a file path"))?,
        )
        .join(".config"),
    };
    Ok(config.join("molt").join("credentials.json"))
}

impl Credentials {
    /// Reads the file (none yet: no logins).
    pub fn load() -> Result<Credentials> {
        let path = path()?;
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Credentials::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the file, 0600, through a temporary file.
    pub fn save(&self) -> Result<()> {
        let path = path()?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        file.write_all(serde_json::to_string_pretty(self)?.as_bytes())?;
        file.sync_all()?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }
}

/// An API URL as the credentials key it: no trailing slash.
pub fn normalize(url: &str) -> String {
    url.trim_end_matches('/').to_owned()
}
