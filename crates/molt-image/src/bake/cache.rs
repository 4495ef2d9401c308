//! The bake cache: each step's key, and `cache/<key>` naming the layer that key produced.
//!
//! A key is sha256 over the parent step's key and the length-prefixed parts of this step (its
//! kind, canonical text and, for a copy, the content hash of its inputs), so it changes when
//! anything before it does. Losing `cache/` only makes the next bake slower: an entry is used
//! only while its layer blob is still stored.

use std::fs;
use std::path::{Path, PathBuf};

use molt_core::Digest;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::oci::write_atomically;
use crate::{ImageError, ImageStore};

/// The cache key of a bake so far: a digest of every input up to the current step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CacheKey([u8; 32]);

/// What `cache/<key>` remembers: the layer a step produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct CacheEntry {
    /// The layer blob (compressed).
    pub(super) layer: Digest,
    /// Its uncompressed tar's digest.
    pub(super) diff_id: Digest,
    /// Bytes of the layer blob.
    pub(super) size: u64,
}

impl CacheKey {
    /// The key before any step.
    pub(super) fn start() -> CacheKey {
        CacheKey([0; 32]).then(&[b"molt-bake-v1"])
    }

    /// After starting from the stored image `digest`.
    pub(super) fn base_image(&self, digest: &Digest) -> CacheKey {
        self.then(&[b"base image", digest.as_str().as_bytes()])
    }

    /// After a step that changes only the image config.
    pub(super) fn config(&self, step: &str) -> CacheKey {
        self.then(&[b"config", step.as_bytes()])
    }

    /// After a step whose layer's uncompressed tar is `diff_id` (copy steps, a rootfs base).
    pub(super) fn layer(&self, step: &str, diff_id: &Digest) -> CacheKey {
        self.then(&[b"layer", step.as_bytes(), diff_id.as_str().as_bytes()])
    }

    /// After a `run` step: its output is only known once run, so only its text counts.
    pub(super) fn run(&self, step: &str) -> CacheKey {
        self.then(&[b"run", step.as_bytes()])
    }

    /// The key as a digest (the bake's `inputs`, the provenance's step keys).
    pub(super) fn digest(&self) -> Digest {
        Digest::from_sha256(&self.0)
    }

    /// sha256 over this key and length-prefixed parts.
    fn then(&self, parts: &[&[u8]]) -> CacheKey {
        let mut hasher = Sha256::new();
        hasher.update(self.0);
        for part in parts {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        CacheKey(hasher.finalize().into())
    }

    /// The name of its file under `cache/`.
    fn file_name(&self) -> String {
        self.digest().hex().to_string()
    }
}

impl ImageStore {
    /// The cached layer of `key` with this diff id, if its blob is still stored.
    pub(super) fn cache_lookup(&self, key: &CacheKey, diff_id: &Digest) -> Option<CacheEntry> {
        self.cache_get(key)
            .filter(|entry| entry.diff_id == *diff_id)
    }

    /// The cached layer of `key`, if it is known and its blob is still stored.
    pub(super) fn cache_get(&self, key: &CacheKey) -> Option<CacheEntry> {
        let bytes = fs::read(self.cache_dir().join(key.file_name())).ok()?;
        let entry: CacheEntry = serde_json::from_slice(&bytes).ok()?;
        self.blobs.contains(&entry.layer).then_some(entry)
    }

    /// Remembers the layers of a committed bake (each file written atomically).
    pub(super) fn cache_put(&self, entries: &[(CacheKey, CacheEntry)]) -> Result<(), ImageError> {
        let cache_dir = self.cache_dir();
        fs::create_dir_all(&cache_dir).map_err(ImageError::io(&cache_dir))?;
        for (key, entry) in entries {
            let bytes =
                serde_json::to_vec(entry).map_err(|e| ImageError::InvalidLayout(e.to_string()))?;
            write_atomically(&cache_dir, &key.file_name(), &bytes)?;
        }
        Ok(())
    }

    /// `cache/`: step keys and layer listings.
    pub(crate) fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// The layer and diff id a `cache/<key>` file names, if it parses.
    pub(crate) fn cache_entry_at(&self, path: &Path) -> Option<(Digest, Digest)> {
        let bytes = fs::read(path).ok()?;
        let entry: CacheEntry = serde_json::from_slice(&bytes).ok()?;
        Some((entry.layer, entry.diff_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_moves_the_key() {
        let start = CacheKey::start();
        let diff: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        let keys = [
            start,
            start.config("env A=1"),
            start.config("env A=2"),
            start.layer("env A=1", &diff),
            start.run("env A=1"),
            start.base_image(&diff),
            start.config("env A=1").config("env A=1"),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // Length prefixes: moving a byte from one part to the next is another key.
        assert_ne!(start.then(&[b"ab", b"c"]), start.then(&[b"a", b"bc"]));
        assert_eq!(start.config("x"), CacheKey::start().config("x"));
    }
}
