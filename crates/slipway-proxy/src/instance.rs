//! One running instance per data dir: [`InstanceLock`] is an exclusive `flock` on
//! `DATA/slipway.lock`, taken at start and held for the life of the process, with the
//! holder's pid written in the file so a refused second instance can say who holds it.
//!
//! Invariants: the lock is the kernel's, so it is released whenever its holder exits,
//! however it exits (a stale pid in the file means nothing: only the flock counts); a
//! second instance is refused with [`InstanceError::Held`] naming the data dir, the pid
//! and the `--takeover` hint, never blocked in silence; the lock file is 0600.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{FlockOperation, flock};

/// The lock file's name in the data dir.
pub const LOCK_FILE: &str = "slipway.lock";

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(
        "another Slipway instance{} is running on the data dir {}: stop it first, or start this one with --takeover to take its listeners over without dropping a request",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        data_dir.display()
    )]
    Held { data_dir: PathBuf, pid: Option<u32> },
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// This process's claim on a data dir, until dropped (or the process exits).
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
    data_dir: PathBuf,
}

impl InstanceLock {
    /// Takes the data dir's lock, or says who holds it. Creates the data dir if needed.
    pub fn acquire(data_dir: &Path) -> Result<InstanceLock, InstanceError> {
        let path = data_dir.join(LOCK_FILE);
        let io = |source| InstanceError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(InstanceError::Held {
                    data_dir: data_dir.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(e) => return Err(io(e.into())),
        }
        // Ours now: the pid of whoever held it before is replaced by ours.
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.sync_data().map_err(io)?;
        Ok(InstanceLock {
            _file: file,
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// [`InstanceLock::acquire`], retried until `timeout` while another instance holds
    /// it: for a successor that was told its predecessor has gone, whose exit (and so the
    /// lock's release) may lag a moment behind.
    pub async fn acquire_within(
        data_dir: &Path,
        timeout: Duration,
    ) -> Result<InstanceLock, InstanceError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match InstanceLock::acquire(data_dir) {
                Err(InstanceError::Held { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}
