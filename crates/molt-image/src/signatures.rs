//! Image signatures as they travel with an image outside molt's store: as annotations
//! `dev.molt.signature.<n>` = `<public key hex>:<signature hex>`, on the image's entry in an
//! OCI archive's `index.json` and on the signature artifact a registry push leaves next to the
//! image (molt-registry). Other tools ignore annotations they do not know, so an archive that
//! carries signatures stays a plain OCI layout that skopeo reads.
//!
//! This module only carries them: whether a signature is the key's signature of the image is
//! the controller's question (it holds the Ed25519 code), asked before it keeps one.

use serde::{Deserialize, Serialize};

/// What every signature annotation's key starts with; a decimal number follows.
pub const SIGNATURE_ANNOTATION_PREFIX: &str = "dev.molt.signature.";

/// Hex digits of an Ed25519 public key (32 bytes).
const PUBLIC_KEY_DIGITS: usize = 64;

/// Hex digits of an Ed25519 signature (64 bytes).
const SIGNATURE_DIGITS: usize = 128;

/// An image signature as it travels: a key and its signature of the image's digest, both
/// lowercase hex of the right length, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedSignature {
    /// The Ed25519 public key: 64 hex digits.
    pub public_key: String,
    /// Its signature of the image's digest: 128 hex digits.
    pub signature: String,
}

impl CarriedSignature {
    /// Reads an annotation's value, `<public key hex>:<signature hex>`.
    pub fn parse(value: &str) -> Result<CarriedSignature, String> {
        let well_formed = |text: &str, digits: usize| {
            (text.len() == digits && molt_core::hex::decode(text).is_some())
                .then(|| text.to_ascii_lowercase())
        };
        let (key, signature) = value
            .split_once(':')
            .ok_or_else(|| format!("{value:?} is not <public key hex>:<signature hex>"))?;
        Ok(CarriedSignature {
            public_key: well_formed(key, PUBLIC_KEY_DIGITS).ok_or_else(|| {
                format!("{key:?} is not an Ed25519 public key ({PUBLIC_KEY_DIGITS} hex digits)")
            })?,
            signature: well_formed(signature, SIGNATURE_DIGITS).ok_or_else(|| {
                format!("{signature:?} is not an Ed25519 signature ({SIGNATURE_DIGITS} hex digits)")
            })?,
        })
    }

    /// The annotation's value.
    pub fn to_annotation(&self) -> String {
        format!("{}:{}", self.public_key, self.signature)
    }
}

/// The annotations that carry `signatures`, numbered from 0 in order.
pub fn signature_annotations(signatures: &[CarriedSignature]) -> Vec<(String, String)> {
    signatures
        .iter()
        .enumerate()
        .map(|(n, s)| {
            (
                format!("{SIGNATURE_ANNOTATION_PREFIX}{n}"),
                s.to_annotation(),
            )
        })
        .collect()
}

/// The signatures among `annotations`, in the order of their numbers; the other annotations
/// are left alone. A signature annotation that does not read is an error, never skipped: a
/// signature lost on the way must not look like an image that had none.
pub fn signatures_in<'a>(
    annotations: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<Vec<CarriedSignature>, String> {
    let mut numbered = Vec::new();
    for (key, value) in annotations {
        let Some(number) = key.strip_prefix(SIGNATURE_ANNOTATION_PREFIX) else {
            continue;
        };
        let n: u32 = number
            .parse()
            .map_err(|_| format!("annotation {key:?} is not numbered"))?;
        let signature =
            CarriedSignature::parse(value).map_err(|why| format!("annotation {key:?}: {why}"))?;
        numbered.push((n, signature));
    }
    numbered.sort_by_key(|(n, _)| *n);
    Ok(numbered.into_iter().map(|(_, s)| s).collect())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn signature(key: char, sig: char) -> CarriedSignature {
        CarriedSignature {
            public_key: key.to_string().repeat(64),
            signature: sig.to_string().repeat(128),
        }
    }

    #[test]
    fn annotations_carry_signatures_in_order_and_leave_the_rest() {
        let signatures: Vec<_> = (0..12)
            .map(|i| signature(char::from(b'a' + (i % 6)), '0'))
            .collect();
        let mut annotations: HashMap<String, String> =
            signature_annotations(&signatures).into_iter().collect();
        annotations.insert("org.opencontainers.image.ref.name".into(), "latest".into());
        assert_eq!(signatures_in(&annotations), Ok(signatures));
        assert_eq!(signatures_in(&HashMap::new()), Ok(Vec::new()));
    }

    #[test]
    fn a_malformed_signature_annotation_is_an_error() {
        let good = signature('a', 'b').to_annotation();
        let upper = good.to_ascii_uppercase();
        assert_eq!(
            CarriedSignature::parse(&upper),
            Ok(signature('a', 'b')),
            "hex of either case reads, kept lowercase"
        );
        let cases = [
            ("dev.molt.signature.0", "ab"),
            ("dev.molt.signature.0", &good[..good.len() - 2]),
            ("dev.molt.signature.0", &good.replace(':', "")),
            ("dev.molt.signature.0", &good.replacen('a', "z", 1)),
            ("dev.molt.signature.x", &good),
        ];
        for (key, value) in cases {
            let annotations = HashMap::from([(key.to_string(), value.to_string())]);
            let error = signatures_in(&annotations).unwrap_err();
            assert!(error.contains(key), "{key}={value}: {error}");
        }
    }
}
