//! Image tags: human names for one image digest, like a package version (`shop:42`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::InputError;
use crate::Digest;

/// An image tag: 1–128 characters of lowercase letters, digits and `.`, `_`, `-`, `:`, `/`,
/// starting with a letter or digit, and never something that reads as a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageTag(String);

impl ImageTag {
    /// The tag as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ImageTag {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, InputError> {
        let bad = |why: &str| InputError::InvalidName {
            kind: "image tag",
            value: s.to_string(),
            why: why.to_string(),
        };
        if s.is_empty() || s.len() > 128 {
            return Err(bad("must be 1 to 128 characters long"));
        }
        if !s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
            return Err(bad("must start with a lowercase letter or a digit"));
        }
        if let Some(c) = s.chars().find(|c| {
            !(c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || matches!(c, '.' | '_' | '-' | ':' | '/'))
        }) {
            return Err(bad(&format!(
                "'{c}' is not allowed: use lowercase letters, digits and . _ - : /"
            )));
        }
        if s.parse::<Digest>().is_ok() || s.starts_with("sha256:") {
            return Err(bad("reads as a digest; a tag must be a name like shop:42"));
        }
        Ok(ImageTag(s.to_string()))
    }
}

impl fmt::Display for ImageTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ImageTag {
    type Error = InputError;
    fn try_from(s: String) -> Result<Self, InputError> {
        s.parse()
    }
}

impl From<ImageTag> for String {
    fn from(t: ImageTag) -> String {
        t.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        for good in ["shop:42", "shop", "registry.local/team/shop:v1.2-rc_3", "7"] {
            assert_eq!(good.parse::<ImageTag>().unwrap().as_str(), good);
        }
        let hex = "a".repeat(64);
        for bad in [
            "",
            "Shop:1",
            ":1",
            "shop 1",
            "shop@sha256",
            "sha256:ab",
            &hex,
        ] {
            assert!(bad.parse::<ImageTag>().is_err(), "{bad}");
        }
        assert!("x".repeat(129).parse::<ImageTag>().is_err());
    }
}
