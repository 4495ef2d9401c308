//! Streaming blob uploads: the OCI distribution protocol's chunked upload (`POST` a session,
//! one `PATCH` per 4 MiB read from the stored blob, `PUT ?digest=` to close it), so a push
//! holds one chunk in memory, never a whole layer. `oci-client` 0.15 only uploads from a byte
//! slice; its client still does authentication (the token it returns is reused here).

use std::path::Path;

use molt_core::Digest;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt;

/// Bytes sent per `PATCH`.
pub(crate) const CHUNK: usize = 4 << 20;

/// How requests of an upload authenticate.
pub(crate) enum UploadAuth {
    Anonymous,
    Basic(String, String),
    Bearer(String),
}

/// One repository of a registry, reached over HTTP(S).
pub(crate) struct Uploader {
    pub(crate) http: reqwest::Client,
    /// `scheme://registry`.
    pub(crate) base: String,
    pub(crate) repository: String,
    pub(crate) auth: UploadAuth,
}

/// Why a streamed upload failed: the registry said no (`Refused`, worth one more try through
/// a single-request upload) or the local blob did not match its digest.
pub(crate) enum UploadError {
    Refused(String),
    /// The stored bytes hash to `actual` instead.
    Corrupt {
        actual: Digest,
    },
    Io(std::io::Error),
}

impl Uploader {
    /// Uploads the blob stored at `path`, checking on the way that it hashes to `digest`
    /// before the upload is closed (a mismatch abandons the session: nothing is committed).
    pub(crate) async fn upload(&self, path: &Path, digest: &Digest) -> Result<(), UploadError> {
        let start = self
            .request(
                reqwest::Method::POST,
                &format!("{}/v2/{}/blobs/uploads/", self.base, self.repository),
            )
            .header(reqwest::header::CONTENT_LENGTH, "0")
            .send()
            .await;
        let mut location = self
            .next_location(start, reqwest::StatusCode::ACCEPTED)
            .await?;
        let mut file = tokio::fs::File::open(path).await.map_err(UploadError::Io)?;
        let mut hasher = Sha256::new();
        let mut offset: u64 = 0;
        loop {
            let mut chunk = Vec::with_capacity(CHUNK);
            while chunk.len() < CHUNK {
                let read = (&mut file)
                    .take((CHUNK - chunk.len()) as u64)
                    .read_to_end(&mut chunk)
                    .await
                    .map_err(UploadError::Io)?;
                if read == 0 {
                    break;
                }
            }
            if chunk.is_empty() {
                break;
            }
            hasher.update(&chunk);
            let end = offset + chunk.len() as u64 - 1;
            let len = chunk.len();
            let sent = self
                .request(reqwest::Method::PATCH, &location)
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .header(reqwest::header::CONTENT_RANGE, format!("{offset}-{end}"))
                .header(reqwest::header::CONTENT_LENGTH, len.to_string())
                .body(chunk)
                .send()
                .await;
            location = self
                .next_location(sent, reqwest::StatusCode::ACCEPTED)
                .await?;
            offset += len as u64;
        }
        let actual = Digest::from_sha256(&hasher.finalize().into());
        if actual != *digest {
            return Err(UploadError::Corrupt { actual });
        }
        let separator = if location.contains('?') { '&' } else { '?' };
        let closed = self
            .request(
                reqwest::Method::PUT,
                &format!("{location}{separator}digest={}", digest.as_str()),
            )
            .header(reqwest::header::CONTENT_LENGTH, "0")
            .send()
            .await;
        self.next_location(closed, reqwest::StatusCode::CREATED)
            .await
            .map(|_| ())
    }

    /// Whether the repository already has blob `digest` (`HEAD`: a 200 says so; anything
    /// else, an error included, means it must be uploaded).
    pub(crate) async fn has(&self, digest: &Digest) -> bool {
        self.request(
            reqwest::Method::HEAD,
            &format!("{}/v2/{}/blobs/{digest}", self.base, self.repository),
        )
        .send()
        .await
        .is_ok_and(|response| response.status() == reqwest::StatusCode::OK)
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, url);
        match &self.auth {
            UploadAuth::Anonymous => builder,
            UploadAuth::Basic(user, password) => builder.basic_auth(user, Some(password)),
            UploadAuth::Bearer(token) => builder.bearer_auth(token),
        }
    }

    /// The absolute `Location` of a response with status `want`; else the registry's refusal
    /// (status and the start of its body, which never holds our credentials).
    async fn next_location(
        &self,
        response: reqwest::Result<reqwest::Response>,
        want: reqwest::StatusCode,
    ) -> Result<String, UploadError> {
        let response = response.map_err(|e| UploadError::Refused(e.without_url().to_string()))?;
        let status = response.status();
        if status != want {
            let body = response.text().await.unwrap_or_default();
            let body: String = body.chars().take(300).collect();
            return Err(UploadError::Refused(format!("{status}: {}", body.trim())));
        }
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        Ok(if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            location.to_string()
        })
    }
}
