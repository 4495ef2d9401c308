//! molt-image: a minimal content-addressed image store.
//!
//! An image is the canonical tar of a directory tree (sorted entries, zeroed times and owners,
//! normalized modes), named by the sha256 of those bytes, so the same tree always gets the same
//! digest whether it arrived as a directory or as a tar. Layout under the store root:
//!
//! - `blobs/sha256/<hex>.tar` — the canonical tar, written to a temp file, fsynced, renamed;
//! - `rootfs/<hex>/` — the tree unpacked once, read-only, shared by every instance;
//! - `tmp/` — scratch space for imports; anything named `.tmp-*` is a leftover and can go.
//!
//! Everything here blocks; async callers use `spawn_blocking`.

mod canonical;
mod error;
mod fsutil;
mod unpack;

use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use molt_core::Digest;
use sha2::{Digest as _, Sha256};

use crate::canonical::{collect_tree, write_tree, Filter};
use crate::fsutil::{fsync_dir, make_read_only, remove_tree, unique_name, TempPath, TEMP_PREFIX};
use crate::unpack::unpack_tar;

pub use crate::error::ImageError;

/// A content-addressed store of images on the local filesystem.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

/// The result of an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedImage {
    /// Digest of the canonical tar.
    pub digest: Digest,
    /// Size of the canonical tar in bytes.
    pub size: u64,
    /// Number of regular files in the image.
    pub files: u64,
}

/// Feeds everything written through it to a sha256.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

/// Feeds everything read through it to a sha256.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl ImageStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        let store = ImageStore {
            root: root.to_path_buf(),
        };
        for dir in [store.blobs_dir(), store.rootfs_dir(), store.tmp_dir()] {
            fs::create_dir_all(&dir).map_err(ImageError::io(&dir))?;
        }
        Ok(store)
    }

    /// Writes the canonical tar of `dir` to `out` and returns (bytes written, regular files).
    ///
    /// Entries are sorted bytewise by path; only regular files, directories and symlinks are
    /// kept; mtime, uid and gid are 0 and user/group names empty; directories and files with
    /// any exec bit get mode 0o755, other files 0o644. Symlink targets are kept as they are but
    /// must resolve inside `dir` (else `UnsafeEntry`), so every image can be unpacked safely.
    /// `.git` is skipped at any depth, and so is every path listed in a top-level `.moltignore`
    /// (one relative path per line, `#` comments).
    pub fn write_canonical_tar(dir: &Path, out: &mut impl Write) -> Result<(u64, u64), ImageError> {
        let entries = collect_tree(dir, Filter::AppIgnores)?;
        write_tree(dir, &entries, out)
    }

    /// Imports a directory as the blob of its canonical tar; an existing blob is kept.
    pub fn import_dir(&self, dir: &Path) -> Result<ImportedImage, ImageError> {
        let blobs = self.blobs_dir();
        let temp = TempPath::new(blobs.join(unique_name("blob")));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(temp.path())
            .map_err(ImageError::io(temp.path()))?;
        let mut out = HashingWriter {
            inner: BufWriter::new(file),
            hasher: Sha256::new(),
        };
        let (size, files) = Self::write_canonical_tar(dir, &mut out)?;
        let HashingWriter { inner, hasher } = out;
        let file = inner
            .into_inner()
            .map_err(|e| ImageError::io(temp.path())(e.into_error()))?;
        file.sync_all().map_err(ImageError::io(temp.path()))?;
        drop(file);
        let digest = Digest::from_sha256(&hasher.finalize().into());
        let blob = self.blob_path(&digest);
        if !blob.is_file() {
            fs::rename(temp.path(), &blob).map_err(ImageError::io(&blob))?;
            temp.keep();
            fsync_dir(&blobs)?;
        }
        Ok(ImportedImage {
            digest,
            size,
            files,
        })
    }

    /// Imports a tar stream after validating every entry; nothing is left behind on error.
    ///
    /// Absolute paths, `..` components, symlinks resolving outside the root, hard links,
    /// devices, fifos and entries over 4 GiB are rejected with `UnsafeEntry`. Accepted trees are
    /// unpacked into a temp dir inside the store and re-canonicalized, so the digest matches
    /// `import_dir` of the same tree.
    pub fn import_tar(&self, reader: impl Read) -> Result<ImportedImage, ImageError> {
        let temp = TempPath::new(self.tmp_dir().join(unique_name("import")));
        fs::create_dir(temp.path()).map_err(ImageError::io(temp.path()))?;
        unpack_tar(reader, temp.path())?;
        self.import_dir(temp.path())
    }

    /// Imports a directory (as `import_dir`) or a plain tar file (as `import_tar`).
    pub fn import_path(&self, path: &Path) -> Result<ImportedImage, ImageError> {
        let meta = fs::metadata(path).map_err(ImageError::io(path))?;
        if meta.is_dir() {
            self.import_dir(path)
        } else if meta.is_file() {
            let file = fs::File::open(path).map_err(ImageError::io(path))?;
            self.import_tar(BufReader::new(file))
        } else {
            Err(ImageError::NotADirectoryOrTar(path.to_path_buf()))
        }
    }

    /// Whether the blob of `digest` is stored.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Every stored image with the size of its blob, sorted by digest.
    pub fn list(&self) -> Result<Vec<(Digest, u64)>, ImageError> {
        let blobs = self.blobs_dir();
        let mut images = Vec::new();
        for item in fs::read_dir(&blobs).map_err(ImageError::io(&blobs))? {
            let item = item.map_err(ImageError::io(&blobs))?;
            let name = item.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".tar")) else {
                continue;
            };
            if hex.starts_with(TEMP_PREFIX) {
                continue;
            }
            let Ok(digest) = hex.parse::<Digest>() else {
                continue;
            };
            let path = item.path();
            let meta = item.metadata().map_err(ImageError::io(&path))?;
            if meta.is_file() {
                images.push((digest, meta.len()));
            }
        }
        images.sort();
        Ok(images)
    }

    /// The unpacked, read-only root filesystem of an image, unpacked on first use.
    ///
    /// The blob is checked against its digest and validated like an import, unpacked into a temp dir, stripped of write bits
    /// and renamed into place, so a rootfs that exists is always complete. Files are not
    /// fsynced one by one; after a crash, `remove` and re-import if a rootfs looks damaged.
    pub fn rootfs(&self, digest: &Digest) -> Result<PathBuf, ImageError> {
        let blob = self.blob_path(digest);
        if !blob.is_file() {
            return Err(ImageError::NotFound(digest.clone()));
        }
        let rootfs_dir = self.rootfs_dir();
        let target = rootfs_dir.join(digest.hex());
        if target.is_dir() {
            return Ok(target);
        }
        let temp = TempPath::new(rootfs_dir.join(unique_name("rootfs")));
        fs::create_dir(temp.path()).map_err(ImageError::io(temp.path()))?;
        let file = fs::File::open(&blob).map_err(ImageError::io(&blob))?;
        let mut reader = HashingReader {
            inner: BufReader::new(file),
            hasher: Sha256::new(),
        };
        unpack_tar(&mut reader, temp.path())?;
        // The archive ends before the file does (padding); hash the rest too.
        io::copy(&mut reader, &mut io::sink()).map_err(ImageError::io(&blob))?;
        let actual = Digest::from_sha256(&reader.hasher.finalize().into());
        if actual != *digest {
            return Err(ImageError::Corrupt {
                digest: digest.clone(),
                actual,
            });
        }
        collect_tree(temp.path(), Filter::Nothing)?;
        make_read_only(temp.path())?;
        match fs::rename(temp.path(), &target) {
            Ok(()) => {
                temp.keep();
                fsync_dir(&rootfs_dir)?;
                Ok(target)
            }
            // Another caller unpacked the same image first; theirs is as good as ours.
            Err(_) if target.is_dir() => Ok(target),
            Err(e) => Err(ImageError::io(&target)(e)),
        }
    }

    /// Removes an image's blob and its unpacked rootfs; a missing image is not an error.
    pub fn remove(&self, digest: &Digest) -> Result<(), ImageError> {
        remove_tree(&self.rootfs_dir().join(digest.hex()))?;
        remove_tree(&self.blob_path(digest))
    }

    /// Where the blob of `digest` lives.
    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(format!("{}.tar", digest.hex()))
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    fn rootfs_dir(&self) -> PathBuf {
        self.root.join("rootfs")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
}
