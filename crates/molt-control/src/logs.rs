//! Instance output files: `logs/<instance>.log`, rotated by size into `<instance>.log.1` …
//! `.N` (newest first), read back across the rotations, and removed when GC collects the
//! instance's environment.
//!
//! An instance writes its log itself (the file is its stdout and stderr, opened for append),
//! and it outlives `molt serve`: molt never sits between an instance and its log. So a
//! rotation copies the file to `.1` and truncates it in place (logrotate's `copytruncate`);
//! the instance's next write lands at the new end. A line written between the copy and the
//! truncation is lost, which is the price of never holding an instance's output in molt.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use molt_store::{EnvState, InstanceState};

use crate::{Controller, Result};

/// How instance logs are rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRotation {
    /// A log larger than this is rotated (bytes).
    pub max_bytes: u64,
    /// Rotated files kept besides the current one (`.1` … `.files`); 0 only truncates.
    pub files: u32,
}

impl Default for LogRotation {
    /// 10 MiB, three rotated files: at most 40 MiB per instance.
    fn default() -> Self {
        LogRotation {
            max_bytes: 10 << 20,
            files: 3,
        }
    }
}

/// How often live instances' logs are looked at.
const ROTATION_CHECK: Duration = Duration::from_secs(1);

/// The most bytes of an instance's output read back for one request.
const TAIL_BYTES: u64 = 4 << 20;

impl Controller {
    /// Where an instance's stdout and stderr go.
    pub(crate) fn log_path(&self, instance: &str) -> PathBuf {
        self.inner.config.logs_dir.join(format!("{instance}.log"))
    }

    /// The last lines of an instance's log, across its rotated files.
    pub(crate) async fn log_tail(&self, instance: &str, lines: usize) -> String {
        let path = self.log_path(instance);
        let files = self.inner.config.instance_log.files;
        tokio::task::spawn_blocking(move || tail_rotated(&path, files, lines))
            .await
            .unwrap_or_default()
    }

    /// Rotates the log of every instance still running that outgrew the limit.
    pub(crate) async fn rotate_logs(&self) -> Result<()> {
        let live: Vec<PathBuf> = self
            .db(|s| s.instances(None, false))
            .await?
            .into_iter()
            .filter(|i| i.state != InstanceState::Stopped)
            .map(|i| self.log_path(&i.id))
            .collect();
        let rotation = self.inner.config.instance_log;
        tokio::task::spawn_blocking(move || {
            for path in live {
                if let Err(e) = rotate_if_large(&path, rotation) {
                    tracing::warn!(log = %path.display(), "rotating an instance log: {e}");
                }
            }
        })
        .await?;
        Ok(())
    }

    /// Removes the logs (rotated files too) of every instance of a retired environment: what
    /// GC collected, or what a failed or superseded deployment retired before.
    pub(crate) async fn remove_retired_logs(&self) -> Result<usize> {
        let paths: Vec<PathBuf> = self
            .db(|s| {
                let mut ids = Vec::new();
                for env in s.envs(None, true)? {
                    if env.state == EnvState::Retired {
                        ids.extend(s.instances(Some(&env.id), true)?.into_iter().map(|i| i.id));
                    }
                }
                Ok(ids)
            })
            .await?
            .iter()
            .map(|id| self.log_path(id))
            .collect();
        let files = self.inner.config.instance_log.files;
        let removed = tokio::task::spawn_blocking(move || {
            paths
                .iter()
                .map(|path| remove_rotated(path, files))
                .sum::<usize>()
        })
        .await?;
        Ok(removed)
    }

    pub(crate) async fn log_rotation_loop(&self) {
        let shutdown = self.inner.shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(ROTATION_CHECK) => {}
            }
            if let Err(e) = self.rotate_logs().await {
                tracing::warn!("instance logs: {e}");
            }
        }
    }
}

/// `path` with the rotation suffix `n` (`x.log.2`); 0 is `path` itself.
fn rotated(path: &Path, n: u32) -> PathBuf {
    if n == 0 {
        return path.to_path_buf();
    }
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Rotates `path` when it is larger than the limit: `.N-1` → `.N` …, a copy of `path` → `.1`,
/// then `path` truncated. Returns whether it rotated.
pub(crate) fn rotate_if_large(path: &Path, rotation: LogRotation) -> io::Result<bool> {
    let len = match fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= rotation.max_bytes {
        return Ok(false);
    }
    if rotation.files > 0 {
        for n in (1..rotation.files).rev() {
            match fs::rename(rotated(path, n), rotated(path, n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        // Written beside `.1` and renamed over it, so a reader never sees half a copy.
        let partial = rotated(path, 1).with_extension("partial");
        fs::copy(path, &partial)?;
        fs::rename(&partial, rotated(path, 1))?;
    }
    fs::OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

/// The last `lines` lines of `path` and, before them, of its rotated files (at most
/// [`TAIL_BYTES`] read in all).
pub(crate) fn tail_rotated(path: &Path, files: u32, lines: usize) -> String {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut budget = TAIL_BYTES;
    let mut found = 0;
    for n in 0..=files {
        if found > lines || budget == 0 {
            break;
        }
        let Ok(bytes) = read_end(&rotated(path, n), budget) else {
            continue;
        };
        budget = budget.saturating_sub(bytes.len() as u64);
        found += bytes.iter().filter(|b| **b == b'\n').count();
        chunks.push(bytes);
    }
    let whole: Vec<u8> = chunks.into_iter().rev().flatten().collect();
    let text = String::from_utf8_lossy(&whole);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The last `at_most` bytes of a file.
fn read_end(path: &Path, at_most: u64) -> io::Result<Vec<u8>> {
    let mut file = fs::File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(at_most)))?;
    let mut bytes = Vec::new();
    file.take(at_most).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Removes `path` and its rotated files; returns how many there were.
fn remove_rotated(path: &Path, files: u32) -> usize {
    (0..=files)
        .filter(|n| fs::remove_file(rotated(path, *n)).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn rotates_by_size_keeps_n_files_and_reads_across_them() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("i.log");
        let rotation = LogRotation {
            max_bytes: 20,
            files: 2,
        };
        // The writer keeps its append handle across rotations, like an instance does.
        let mut writer = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut rotations = 0;
        for i in 0..40 {
            use std::io::Write;
            writeln!(writer, "line {i:02}").unwrap();
            if rotate_if_large(&log, rotation).unwrap() {
                rotations += 1;
            }
        }
        assert!(rotations >= 3, "{rotations} rotations");
        assert!(rotated(&log, 1).exists() && rotated(&log, 2).exists());
        assert!(!rotated(&log, 3).exists(), "only two rotated files kept");
        for n in 0..=2 {
            let len = fs::metadata(rotated(&log, n)).unwrap().len();
            assert!(len <= 2 * rotation.max_bytes, "{n}: {len} bytes");
        }
        // The last lines, in order, across the current file and the rotated ones.
        let tail = tail_rotated(&log, 2, 6);
        let expected: Vec<String> = (34..40).map(|i| format!("line {i:02}")).collect();
        assert_eq!(tail, expected.join("\n"));
        assert_eq!(remove_rotated(&log, 2), 3);
        assert!(!log.exists() && !rotated(&log, 1).exists());
    }

    #[test]
    fn a_small_or_missing_log_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("i.log");
        let rotation = LogRotation::default();
        assert!(!rotate_if_large(&log, rotation).unwrap());
        write(&log, "hello\n");
        assert!(!rotate_if_large(&log, rotation).unwrap());
        assert_eq!(tail_rotated(&log, 3, 10), "hello");
        let none = LogRotation {
            max_bytes: 1,
            files: 0,
        };
        assert!(rotate_if_large(&log, none).unwrap());
        assert_eq!(fs::metadata(&log).unwrap().len(), 0);
        assert!(!rotated(&log, 1).exists());
    }
}
