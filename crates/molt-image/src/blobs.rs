//! Content-addressed blobs under `blobs/sha256/`: written whole or not at all, verified on read.

use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use molt_core::Digest;
use sha2::{Digest as _, Sha256};

use crate::fsutil::{fsync_dir, remove_tree, unique_name, TempPath};
use crate::ImageError;

/// Largest JSON document (manifest, config, index) the store will parse.
pub(crate) const MAX_JSON_SIZE: u64 = 4 << 20;

/// The blob directory of a store or of an OCI layout.
#[derive(Debug, Clone)]
pub(crate) struct Blobs {
    dir: PathBuf,
}

/// A blob being written: a temp file in the blob directory, hashed as it goes.
pub(crate) struct BlobWriter {
    temp: TempPath,
    out: HashingWriter<BufWriter<fs::File>>,
}

/// A complete, fsynced blob that is not yet visible under its name.
pub(crate) struct StagedBlob {
    temp: TempPath,
    /// sha256 of the content.
    pub(crate) digest: Digest,
    /// Length of the content in bytes.
    pub(crate) size: u64,
}

/// Feeds everything written through it to a sha256.
pub(crate) struct HashingWriter<W> {
    pub(crate) inner: W,
    pub(crate) hasher: Sha256,
    pub(crate) written: u64,
}

/// Feeds everything read through it to a sha256.
pub(crate) struct HashingReader<R> {
    pub(crate) inner: R,
    pub(crate) hasher: Sha256,
}

/// Reads a stored blob; `finish` drains it and says whether it still hashes to its name.
pub(crate) struct VerifyingReader {
    reader: HashingReader<BufReader<fs::File>>,
    expected: Digest,
    path: PathBuf,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl<R> HashingReader<R> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: R) -> HashingReader<R> {
        HashingReader {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// The digest of everything read so far.
    pub(crate) fn digest(self) -> Digest {
        Digest::from_sha256(&self.hasher.finalize().into())
    }
}

impl<W> HashingWriter<W> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: W) -> HashingWriter<W> {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl BlobWriter {
    /// Flushes and fsyncs the temp file; the blob is complete but not yet visible.
    pub(crate) fn finish(self) -> Result<StagedBlob, ImageError> {
        let BlobWriter { temp, out } = self;
        let HashingWriter {
            inner,
            hasher,
            written,
        } = out;
        let file = inner
            .into_inner()
            .map_err(|e| ImageError::io(temp.path())(e.into_error()))?;
        file.sync_all().map_err(ImageError::io(temp.path()))?;
        Ok(StagedBlob {
            temp,
            digest: Digest::from_sha256(&hasher.finalize().into()),
            size: written,
        })
    }
}

impl StagedBlob {
    /// Where the staged content is until it is committed.
    pub(crate) fn path(&self) -> &Path {
        self.temp.path()
    }
}

impl Read for VerifyingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl VerifyingReader {
    /// Reads what is left and checks the whole blob against its digest.
    pub(crate) fn finish(mut self) -> Result<(), ImageError> {
        io::copy(&mut self.reader, &mut io::sink()).map_err(ImageError::io(&self.path))?;
        let actual = self.reader.digest();
        if actual == self.expected {
            Ok(())
        } else {
            Err(ImageError::Corrupt {
                digest: self.expected,
                actual,
            })
        }
    }
}

impl Blobs {
    /// The blobs under `dir` (`<root>/blobs/sha256`).
    pub(crate) fn new(dir: PathBuf) -> Blobs {
        Blobs { dir }
    }

    /// The directory holding the blobs.
    pub(crate) fn dir(&self) -> PathBuf {
        self.dir.clone()
    }

    /// Where the blob of `digest` lives.
    pub(crate) fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// Whether the blob of `digest` is stored.
    pub(crate) fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Starts a new blob in a temp file next to the others (same filesystem, so rename works).
    pub(crate) fn create(&self) -> Result<BlobWriter, ImageError> {
        let temp = TempPath::new(self.dir.join(unique_name("blob")));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(temp.path())
            .map_err(ImageError::io(temp.path()))?;
        Ok(BlobWriter {
            temp,
            out: HashingWriter::new(BufWriter::new(file)),
        })
    }

    /// Writes `bytes` as a staged blob.
    pub(crate) fn stage_bytes(&self, bytes: &[u8]) -> Result<StagedBlob, ImageError> {
        let mut writer = self.create()?;
        writer
            .write_all(bytes)
            .map_err(ImageError::io(writer.temp.path()))?;
        writer.finish()
    }

    /// Makes a staged blob visible under its digest; an existing blob is kept as it is.
    pub(crate) fn commit(&self, staged: StagedBlob) -> Result<(), ImageError> {
        let target = self.path(&staged.digest);
        if target.is_file() {
            return Ok(());
        }
        fs::rename(staged.temp.path(), &target).map_err(ImageError::io(&target))?;
        staged.temp.keep();
        fsync_dir(&self.dir)
    }

    /// Opens a blob for a verified read.
    pub(crate) fn open(&self, digest: &Digest) -> Result<VerifyingReader, ImageError> {
        let path = self.path(digest);
        let file = match fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ImageError::MissingBlob(digest.clone()))
            }
            Err(e) => return Err(ImageError::io(path)(e)),
        };
        Ok(VerifyingReader {
            reader: HashingReader::new(BufReader::new(file)),
            expected: digest.clone(),
            path,
        })
    }

    /// Reads a small blob whole (at most `MAX_JSON_SIZE`) and verifies it.
    pub(crate) fn read(&self, digest: &Digest) -> Result<Vec<u8>, ImageError> {
        let mut reader = self.open(digest)?;
        let mut bytes = Vec::new();
        (&mut reader)
            .take(MAX_JSON_SIZE + 1)
            .read_to_end(&mut bytes)
            .map_err(ImageError::io(self.path(digest)))?;
        if bytes.len() as u64 > MAX_JSON_SIZE {
            return Err(ImageError::InvalidLayout(format!(
                "blob {digest} is too large for a JSON document"
            )));
        }
        reader.finish()?;
        Ok(bytes)
    }

    /// Deletes a blob; a missing one is fine.
    pub(crate) fn remove(&self, digest: &Digest) -> Result<(), ImageError> {
        remove_tree(&self.path(digest))
    }

    /// Every committed blob (temp files and foreign names are skipped).
    pub(crate) fn list(&self) -> Result<Vec<Digest>, ImageError> {
        let mut digests = Vec::new();
        for item in fs::read_dir(&self.dir).map_err(ImageError::io(&self.dir))? {
            let item = item.map_err(ImageError::io(&self.dir))?;
            let name = item.file_name();
            let Some(hex) = name.to_str() else { continue };
            if hex.len() != 64 {
                continue;
            }
            if let Ok(digest) = hex.parse::<Digest>() {
                digests.push(digest);
            }
        }
        digests.sort();
        Ok(digests)
    }
}
