//! Validated names and identifiers: once a value has one of these types, it is well formed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::InputError;

/// An app name: 1–63 lowercase letters, digits and '-', starting with a letter, not ending in '-'.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AppName(String);

/// A hostname a route answers to (lowercase, DNS labels, optional leading `*.` wildcard).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Hostname(String);

/// A content digest, `sha256:<64 lowercase hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EnvVarName(String);

impl AppName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for AppName {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, InputError> {
        let bad = |why: &str| InputError::InvalidName {
            kind: "app name",
            value: s.to_string(),
            why: why.to_string(),
        };
        if s.is_empty() || s.len() > 63 {
            return Err(bad("must be 1 to 63 characters long"));
        }
        if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(bad("must start with a lowercase letter"));
        }
        if s.ends_with('-') {
            return Err(bad("must not end with '-'"));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(bad(&format!(
                "'{c}' is not allowed: use lowercase letters, digits and '-'"
            )));
        }
        Ok(AppName(s.to_string()))
    }
}

impl Hostname {
    /// The hostname as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Hostname {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, InputError> {
        let lower = s.to_ascii_lowercase();
        let bad = |why: &str| InputError::InvalidName {
            kind: "hostname",
            value: s.to_string(),
            why: why.to_string(),
        };
        if lower.is_empty() || lower.len() > 253 {
            return Err(bad("must be 1 to 253 characters long"));
        }
        let body = lower.strip_prefix("*.").unwrap_or(&lower);
        for label in body.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(bad("each label must be 1 to 63 characters"));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(bad("a label must not start or end with '-'"));
            }
            if !label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                return Err(bad("use letters, digits, '-' and '.' only"));
            }
        }
        Ok(Hostname(lower))
    }
}

impl Digest {
    /// Builds a digest from raw sha256 output.
    pub fn from_sha256(bytes: &[u8; 32]) -> Digest {
        let mut hex = String::with_capacity(64);
        for b in bytes {
            hex.push_str(&format!("{b:02x}"));
        }
        Digest(format!("sha256:{hex}"))
    }

    /// The 64 hex characters without the algorithm prefix.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The first 12 hex characters, for display.
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }

    /// The full `sha256:…` text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Digest {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, InputError> {
        let hex = s.strip_prefix("sha256:").unwrap_or(s);
        if hex.len() != 64 || !hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
            return Err(InputError::InvalidName {
                kind: "digest",
                value: s.to_string(),
                why: "expected sha256:<64 lowercase hex characters>".to_string(),
            });
        }
        Ok(Digest(format!("sha256:{hex}")))
    }
}

impl EnvVarName {
    /// The variable name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for EnvVarName {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, InputError> {
        let ok = s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(InputError::InvalidName {
                kind: "environment variable name",
                value: s.to_string(),
                why: "use letters, digits and '_', not starting with a digit".to_string(),
            });
        }
        Ok(EnvVarName(s.to_string()))
    }
}

macro_rules! string_newtype_impls {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl TryFrom<String> for $t {
            type Error = InputError;
            fn try_from(s: String) -> Result<Self, InputError> {
                s.parse()
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
    )*};
}
string_newtype_impls!(AppName, Hostname, Digest, EnvVarName);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn app_names() {
        for ok in ["a", "shop", "my-app-2"] {
            assert!(ok.parse::<AppName>().is_ok(), "{ok}");
        }
        for bad in ["", "Shop", "2app", "app-", "a_b", "a.b", &"a".repeat(64)] {
            assert!(bad.parse::<AppName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn hostnames_are_lowercased_and_checked() {
        assert_eq!(
            "Shop.Example.COM".parse::<Hostname>().unwrap().as_str(),
            "shop.example.com"
        );
        assert!("*.example.com".parse::<Hostname>().is_ok());
        for bad in ["", "a..b", "-a.b", "a b", "a.*.b", "http://x"] {
            assert!(bad.parse::<Hostname>().is_err(), "{bad}");
        }
    }

    #[test]
    fn digests_round_trip() {
        let d = Digest::from_sha256(&[0xab; 32]);
        assert_eq!(d.as_str().parse::<Digest>().unwrap(), d);
        assert_eq!(d.hex().parse::<Digest>().unwrap(), d);
        assert_eq!(d.short().len(), 12);
        assert!("sha256:ABC".parse::<Digest>().is_err());
    }

    proptest! {
        #[test]
        fn parsed_app_names_reparse(s in "\\PC{0,70}") {
            if let Ok(n) = s.parse::<AppName>() {
                prop_assert_eq!(n.as_str().parse::<AppName>().unwrap(), n);
            }
        }

        #[test]
        fn hostnames_never_panic(s in "\\PC{0,300}") {
            let _ = s.parse::<Hostname>();
        }
    }
}
