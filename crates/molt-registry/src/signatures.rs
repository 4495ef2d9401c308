//! An image's signatures in a registry: one small OCI 1.1 artifact whose `subject` is the
//! image, the signatures in its annotations (molt-image's `signatures.rs`), the empty config
//! `{}` and that same empty blob as its one layer (OCI 1.1 asks for a layer "for
//! portability"; distribution 2.8 takes either). It is found through the referrers *tag
//! schema*: the index under the tag `sha256-<hex of the image digest>` lists what refers to
//! the image, each entry with its `artifactType`.
//!
//! Why the tag schema and not the referrers API: Debian's `docker-registry` (distribution
//! 2.8) has no referrers API but stores the index and its tag like any other; a registry with
//! the API serves the tag all the same, so one path works everywhere. Why not cosign's
//! `sha256-<hex>.sig` tag: a push there would replace a cosign signature of the same image;
//! in the index, molt's entry sits next to whatever other tools listed, and only molt's
//! earlier entry is replaced.

use molt_core::Digest;
use molt_image::{signature_annotations, signatures_in, CarriedSignature};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::Reference;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::upload::Uploader;
use crate::{RegistryError, Session};

/// The `artifactType` of molt's signature artifacts.
pub const SIGNATURE_ARTIFACT_TYPE: &str = "application/vnd.dev.molt.signature.v1";

/// The media type of the empty blob `{}` an artifact without content names as its config.
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";

/// The empty blob: `{}`.
const EMPTY_BLOB: &[u8] = b"{}";

const IMAGE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const IMAGE_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The tag of the referrers index of `image` (the referrers API's tag schema).
pub fn referrers_tag(image: &Digest) -> String {
    format!("sha256-{}", image.hex())
}

/// Pushes `signatures` of the image `image` (whose manifest is `manifest`, of `media_type`)
/// as an artifact, listed in the image's referrers index; returns the bytes sent.
pub(crate) async fn push_signatures(
    session: &Session,
    uploader: &Uploader,
    image: &Digest,
    manifest: &[u8],
    media_type: &str,
    signatures: &[CarriedSignature],
) -> Result<u64, RegistryError> {
    let empty = sha256(EMPTY_BLOB);
    let mut bytes = 0;
    if !uploader.has(&empty).await {
        session
            .client
            .push_blob(&session.reference, EMPTY_BLOB, empty.as_str())
            .await
            .map_err(|e| session.error(e))?;
        bytes += EMPTY_BLOB.len() as u64;
    }
    let subject = json!({
        "mediaType": media_type,
        "digest": image.as_str(),
        "size": manifest.len(),
    });
    let artifact = artifact_manifest(subject, signatures);
    let artifact_digest = sha256(&artifact);
    let artifact_size = artifact.len();
    put_manifest(
        session,
        &session.at_digest(&artifact_digest),
        artifact,
        IMAGE_MANIFEST,
    )
    .await?;
    bytes += artifact_size as u64;

    // The index: every entry other tools keep, molt's earlier signature set replaced.
    let tag = session.at_tag(&referrers_tag(image));
    let mut entries = match fetch(session, &tag, IMAGE_INDEX).await? {
        Some(index) => index_entries(session, &index)?,
        None => Vec::new(),
    };
    entries.retain(|entry| entry["artifactType"] != SIGNATURE_ARTIFACT_TYPE);
    entries.push(json!({
        "mediaType": IMAGE_MANIFEST,
        "artifactType": SIGNATURE_ARTIFACT_TYPE,
        "digest": artifact_digest.as_str(),
        "size": artifact_size,
    }));
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": IMAGE_INDEX,
        "manifests": entries,
    }))
    .expect("a JSON value serializes");
    bytes += index.len() as u64;
    put_manifest(session, &tag, index, IMAGE_INDEX).await?;
    Ok(bytes)
}

/// The signatures of `image` its referrers index lists; none when the registry has no index
/// for it or the index lists no molt signatures. What does not read is an error, never
/// skipped: a signature lost on the way must not look like an image that had none.
pub(crate) async fn pull_signatures(
    session: &Session,
    image: &Digest,
) -> Result<Vec<CarriedSignature>, RegistryError> {
    let tag = session.at_tag(&referrers_tag(image));
    let Some(index) = fetch(session, &tag, IMAGE_INDEX).await? else {
        return Ok(Vec::new());
    };
    let mut signatures: Vec<CarriedSignature> = Vec::new();
    for entry in index_entries(session, &index)? {
        if entry["artifactType"] != SIGNATURE_ARTIFACT_TYPE {
            continue;
        }
        let digest: Digest = entry["digest"]
            .as_str()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| {
                bad(
                    session,
                    "an entry of the referrers index has no sha256 digest",
                )
            })?;
        let artifact = fetch(session, &session.at_digest(&digest), IMAGE_MANIFEST)
            .await?
            .ok_or_else(|| {
                bad(
                    session,
                    &format!("the referrers index lists signatures {digest} it does not hold"),
                )
            })?;
        let artifact: Value = serde_json::from_slice(&artifact).map_err(|e| {
            bad(
                session,
                &format!("signature artifact {digest} is not JSON: {e}"),
            )
        })?;
        if artifact["subject"]["digest"] != image.as_str() {
            return Err(bad(
                session,
                &format!("signature artifact {digest} names another image as its subject"),
            ));
        }
        let annotations: serde_json::Map<String, Value> = match &artifact["annotations"] {
            Value::Object(map) => map.clone(),
            _ => serde_json::Map::new(),
        };
        let texts: Vec<(String, String)> = annotations
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_owned())))
            .collect();
        let found = signatures_in(texts.iter().map(|(k, v)| (k, v)))
            .map_err(|why| bad(session, &format!("signature artifact {digest}: {why}")))?;
        for signature in found {
            if !signatures.contains(&signature) {
                signatures.push(signature);
            }
        }
    }
    Ok(signatures)
}

/// The artifact carrying `signatures` of `subject`.
fn artifact_manifest(subject: Value, signatures: &[CarriedSignature]) -> Vec<u8> {
    let empty = json!({
        "mediaType": EMPTY_MEDIA_TYPE,
        "digest": sha256(EMPTY_BLOB).as_str(),
        "size": EMPTY_BLOB.len(),
    });
    let annotations: serde_json::Map<String, Value> = signature_annotations(signatures)
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": IMAGE_MANIFEST,
        "artifactType": SIGNATURE_ARTIFACT_TYPE,
        "config": empty,
        "layers": [empty],
        "subject": subject,
        "annotations": annotations,
    }))
    .expect("a JSON value serializes")
}

/// The entries of a referrers index.
fn index_entries(session: &Session, index: &[u8]) -> Result<Vec<Value>, RegistryError> {
    let parsed: Value = serde_json::from_slice(index)
        .map_err(|e| bad(session, &format!("the referrers index is not JSON: {e}")))?;
    match &parsed["manifests"] {
        Value::Array(entries) => Ok(entries.clone()),
        _ => Err(bad(
            session,
            "the referrers tag holds something other than an image index",
        )),
    }
}

/// The manifest at `reference`, or `None` when the registry does not know it.
async fn fetch(
    session: &Session,
    reference: &Reference,
    media_type: &str,
) -> Result<Option<Vec<u8>>, RegistryError> {
    match session
        .client
        .pull_manifest_raw(reference, &session.auth, &[media_type])
        .await
    {
        Ok((bytes, _)) => Ok(Some(bytes)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(session.error(e)),
    }
}

/// Puts a manifest (or index) at `reference`.
async fn put_manifest(
    session: &Session,
    reference: &Reference,
    body: Vec<u8>,
    media_type: &str,
) -> Result<(), RegistryError> {
    let content_type = media_type
        .parse()
        .expect("a media type constant is a header value");
    session
        .client
        .push_manifest_raw(reference, body, content_type)
        .await
        .map_err(|e| session.error(e))?;
    Ok(())
}

/// Whether the registry answered that it does not have the manifest (404).
fn is_not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestUnknown | OciErrorCode::NotFound
            )
        }),
        OciDistributionError::ServerError { code, .. } => *code == 404,
        _ => false,
    }
}

/// The registry sent signatures molt cannot read.
fn bad(session: &Session, why: &str) -> RegistryError {
    RegistryError::Registry {
        registry: session.reference.resolve_registry().to_string(),
        message: why.to_string(),
    }
}

fn sha256(bytes: &[u8]) -> Digest {
    Digest::from_sha256(&Sha256::digest(bytes).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_artifact_refers_to_its_image_and_carries_every_signature() {
        let signature = CarriedSignature {
            public_key: "a".repeat(64),
            signature: "b".repeat(128),
        };
        let subject = json!({ "mediaType": IMAGE_MANIFEST, "digest": "sha256:00", "size": 9 });
        let artifact: Value = serde_json::from_slice(&artifact_manifest(
            subject.clone(),
            std::slice::from_ref(&signature),
        ))
        .unwrap();
        assert_eq!(artifact["subject"], subject);
        assert_eq!(artifact["artifactType"], SIGNATURE_ARTIFACT_TYPE);
        assert_eq!(
            artifact["config"]["digest"],
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
            "the OCI empty descriptor"
        );
        assert_eq!(
            artifact["annotations"]["dev.molt.signature.0"],
            signature.to_annotation()
        );
        let digest: Digest = format!("sha256:{}", "c".repeat(64)).parse().unwrap();
        assert_eq!(referrers_tag(&digest), format!("sha256-{}", "c".repeat(64)));
    }
}
