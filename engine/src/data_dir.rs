//! One process per data directory: `sardonyx run` holds an exclusive lock on
//! `DIR/sardonyx.lock` (which records the holder's pid) for as long as it uses the directory, so
//! a second process on the same directory is refused by name instead of failing deep inside
//! RocksDB.
//!
//! The lock is advisory (`flock`), taken on an open file: the operating system releases it when
//! the process ends in any way (`kill -9` included), so a stale lock file never blocks a restart.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "sardonyx.lock";

/// Why a data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Another process holds the lock.
    #[error(
        "the data directory {dir} is in use by another sardonyx process{}; stop it, or give \
         this run another --data directory",
        .pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    InUse {
        /// The directory.
        dir: PathBuf,
        /// The holder's pid, as it recorded it (if it could be read).
        pid: Option<u32>,
    },
    /// The directory or its lock file could not be created or locked.
    #[error("cannot lock the data directory {dir}: {source}")]
    Io {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// An exclusive hold on a data directory, released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Creates `dir` if needed and locks it for this process, recording this process's pid in
    /// the lock file; refuses with [`DataDirError::InUse`] if another process holds it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, DataDirError> {
        let io = |source| DataDirError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join(LOCK_FILE);
        // Not truncated on open: the holder's pid must stay readable to whoever is refused.
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => {}
            Err(fs4::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let pid = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                return Err(DataDirError::InUse {
                    dir: dir.to_path_buf(),
                    pid,
                });
            }
            Err(fs4::TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.sync_data().map_err(io)?;
        Ok(DataDirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_hold_is_refused_with_the_holders_pid_until_the_first_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let held = DataDirLock::acquire(&dir).unwrap();
        assert_eq!(
            std::fs::read_to_string(held.path()).unwrap(),
            format!("{}\n", std::process::id())
        );
        // flock locks belong to the open file, so a second open in this process conflicts too.
        let refused = DataDirLock::acquire(&dir).unwrap_err();
        assert_eq!(
            refused.to_string(),
            format!(
                "the data directory {} is in use by another sardonyx process (pid {}); stop it, \
                 or give this run another --data directory",
                dir.display(),
                std::process::id()
            )
        );
        drop(held);
        DataDirLock::acquire(&dir).unwrap();
    }
}
