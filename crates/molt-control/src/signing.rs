//! Signed images: Ed25519 signatures over an image's manifest digest (ring's, already built
//! for TLS; no new crate), kept with the image in the store. With a required key
//! (`ControlConfig::require_signature`, `molt serve --require-signature`, or an app's
//! `[deploy] require_signature` in its molt.toml), a deployment of an image that key has not
//! signed is refused before anything is recorded or started.
//!
//! Signatures travel with their image: in an OCI archive's `index.json` and as an artifact
//! next to the image in a registry (molt-image's and molt-registry's `signatures.rs`). What
//! comes back in is checked here before it is kept, and one that is not its key's signature
//! of the image refuses the whole import or pull: a forged or damaged signature is never
//! quietly dropped, nor kept.
//!
//! Why plain Ed25519 and not cosign: a cosign signature lives in a registry as an OCI
//! artifact and its verification wants sigstore's crate tree; molt's images live in its own
//! store first, and one 64-byte signature over the digest says the same thing offline.

use molt_core::{Digest, InputError};
use molt_image::CarriedSignature;
use molt_wire::{signed_message, ImageSignature};
use ring::signature::{UnparsedPublicKey, ED25519};

use crate::{ControlError, Controller, Result};

/// An Ed25519 public key images must be signed with: 32 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKey([u8; 32]);

impl SigningKey {
    /// A key from its 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> std::result::Result<SigningKey, String> {
        let bytes = molt_core::hex::decode(text.trim())
            .filter(|b| b.len() == 32)
            .ok_or("an Ed25519 public key is 64 hex digits")?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes);
        Ok(SigningKey(key))
    }

    /// Its 64 hex digits.
    pub fn to_hex(&self) -> String {
        molt_core::hex::encode(&self.0)
    }

    /// Whether `signature` (hex) is this key's signature of image `digest`.
    pub fn verifies(&self, digest: &str, signature: &str) -> bool {
        molt_core::hex::decode(signature).is_some_and(|sig| {
            UnparsedPublicKey::new(&ED25519, &self.0)
                .verify(&signed_message(digest), &sig)
                .is_ok()
        })
    }
}

impl Controller {
    /// Keeps a signature of the image `reference` after checking it.
    pub async fn sign_image(
        &self,
        reference: &str,
        public_key: &str,
        signature: &str,
        by: &str,
    ) -> Result<ImageSignature> {
        let image = self.resolve_image_record(reference).await?;
        let key = SigningKey::from_hex(public_key).map_err(InputError::Invalid)?;
        let digest = image.digest.to_string();
        if !key.verifies(&digest, signature) {
            return Err(InputError::Invalid(format!(
                "the signature is not the key's signature of {digest}: sign this image's digest \
                 (`molt images sign {reference} --key FILE`)"
            ))
            .into());
        }
        let record = ImageSignature {
            digest,
            public_key: key.to_hex(),
            signature: signature.to_ascii_lowercase(),
            created_ms: self.now_ms(),
            created_by: by.to_owned(),
        };
        let stored = record.clone();
        self.db(move |s| s.add_image_signature(&stored)).await?;
        Ok(record)
    }

    /// The signatures of the image `reference`.
    pub async fn image_signatures(&self, reference: &str) -> Result<Vec<ImageSignature>> {
        let digest = self
            .resolve_image_record(reference)
            .await?
            .digest
            .to_string();
        self.db(move |s| s.image_signatures(&digest)).await
    }

    /// The signatures of `digest` as they travel with it (an OCI export, a push).
    pub(crate) async fn carried_signatures(
        &self,
        digest: &Digest,
    ) -> Result<Vec<CarriedSignature>> {
        let d = digest.to_string();
        let kept = self.db(move |s| s.image_signatures(&d)).await?;
        Ok(kept
            .into_iter()
            .map(|s| CarriedSignature {
                public_key: s.public_key,
                signature: s.signature,
            })
            .collect())
    }

    /// Refuses `digest` unless every key required of it has signed it: the server's
    /// (`--require-signature`) and the app's (`[deploy] require_signature`, `app_key`).
    pub(crate) async fn check_signature(&self, digest: &str, app_key: Option<&str>) -> Result<()> {
        let server = self
            .inner
            .config
            .require_signature
            .clone()
            .map(|key| (key, "this molt requires (--require-signature"));
        let app = match app_key {
            Some(hex) => Some((
                SigningKey::from_hex(hex).map_err(InputError::Invalid)?,
                "the app's molt.toml requires ([deploy] require_signature",
            )),
            None => None,
        };
        let required: Vec<(SigningKey, &str)> = server.into_iter().chain(app).collect();
        if required.is_empty() {
            return Ok(());
        }
        let d = digest.to_owned();
        let signatures = self.db(move |s| s.image_signatures(&d)).await?;
        for (key, whose) in required {
            let signed = signatures
                .iter()
                .any(|s| s.public_key == key.to_hex() && key.verifies(digest, &s.signature));
            if !signed {
                return Err(ControlError::Input(InputError::Invalid(format!(
                    "image {digest} is not signed by the key {whose} {}…): sign it with `molt \
                     images sign {digest} --key FILE`; nothing was deployed",
                    &key.to_hex()[..16]
                ))));
            }
        }
        Ok(())
    }
}

/// Signatures that came with the image `digest` from `whence` (an archive, a registry), as
/// records kept by `by`; the first one that is not its key's signature of the image is the
/// error, saying which key.
pub(crate) fn verified_signatures(
    digest: &Digest,
    carried: Vec<CarriedSignature>,
    whence: &str,
    by: &str,
    now_ms: u64,
) -> std::result::Result<Vec<ImageSignature>, String> {
    carried
        .into_iter()
        .map(|c| {
            let key = SigningKey::from_hex(&c.public_key)?;
            if !key.verifies(digest.as_str(), &c.signature) {
                return Err(format!(
                    "{whence} carries a signature by the key {}… that is not its signature of \
                     image {digest}",
                    &c.public_key[..16.min(c.public_key.len())]
                ));
            }
            Ok(ImageSignature {
                digest: digest.to_string(),
                public_key: key.to_hex(),
                signature: c.signature.to_ascii_lowercase(),
                created_ms: now_ms,
                created_by: by.to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    use super::*;

    #[test]
    fn a_signature_stands_for_its_digest_and_key_only() {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let public: String = pair
            .public_key()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = SigningKey::from_hex(&public).unwrap();
        let digest = format!("sha256:{}", "a".repeat(64));
        let sig: String = pair
            .sign(&signed_message(&digest))
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(key.verifies(&digest, &sig));
        assert!(!key.verifies(&format!("sha256:{}", "b".repeat(64)), &sig));
        assert!(!key.verifies(&digest, "00"));
        assert!(SigningKey::from_hex("zz").is_err());

        // What arrives with an image is kept only when every signature is its key's.
        let image: Digest = digest.parse().unwrap();
        let carried = |signature: &str| CarriedSignature {
            public_key: public.clone(),
            signature: signature.to_owned(),
        };
        let kept =
            verified_signatures(&image, vec![carried(&sig)], "the archive", "ann", 7).unwrap();
        assert_eq!(
            (kept[0].public_key.as_str(), kept[0].created_by.as_str()),
            (public.as_str(), "ann")
        );
        let forged = format!(
            "{}{}",
            if sig.starts_with('0') { "1" } else { "0" },
            &sig[1..]
        );
        let refused = verified_signatures(
            &image,
            vec![carried(&sig), carried(&forged)],
            "the archive",
            "ann",
            7,
        )
        .unwrap_err();
        assert!(
            refused.starts_with("the archive carries a signature by the key"),
            "{refused}"
        );
        assert!(refused.contains(&public[..16]), "{refused}");
    }
}
