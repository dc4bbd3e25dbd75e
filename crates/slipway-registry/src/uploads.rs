//! Blob upload sessions: bytes streamed to `uploads/<id>/data` while being hashed, resumable
//! chunk by chunk and across restarts, committed into the blob store only after an fsync
//! and a digest check.
//!
//! The hash state of a session lives in memory. After a restart a session is found again
//! from its directory and its hash recomputed from the bytes on disk, so a client can ask
//! for the upload's status (`Range`) and continue where the data on disk ends.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::digest::{Algorithm, Digest, Hasher};
use crate::name::RepoName;
use crate::storage::{BlobStore, FsStore, random_id};
use crate::token::unix_now;

/// One upload in progress.
#[derive(Debug)]
pub struct Session {
    pub id: String,
    pub repo: RepoName,
    /// Bytes received and written so far.
    pub size: u64,
    pub started_at: u64,
    /// Set once finished or cancelled: requests that were waiting for the lock must not
    /// touch it any more.
    pub closed: bool,
    /// Hash of the first `size` bytes; `None` when it must be recomputed from disk.
    hasher: Option<Hasher>,
}

#[derive(Serialize, Deserialize)]
struct Info {
    repo: String,
    started_at: u64,
}

/// Why appending to or finishing an upload failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the client stopped sending: {0}")]
    Client(String),
    #[error("digest mismatch: the uploaded content is {actual}, not {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("storage error: {0}")]
    Io(#[from] io::Error),
}

/// A shared handle to a session; holding its lock serialises requests on one upload.
pub type SessionHandle = Arc<tokio::sync::Mutex<Session>>;

/// All upload sessions of a store.
#[derive(Debug)]
pub struct Uploads {
    store: FsStore,
    blobs: BlobStore,
    sessions: Mutex<HashMap<String, SessionHandle>>,
}

/// Upload ids are 32 lowercase hex digits; anything else never reaches the filesystem.
pub fn valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Uploads {
    pub fn new(store: FsStore, blobs: BlobStore) -> Uploads {
        Uploads {
            store,
            blobs,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.store.uploads_dir().join(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SessionHandle>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts an upload into `repo`.
    pub async fn start(&self, repo: &RepoName) -> io::Result<SessionHandle> {
        let id = random_id();
        let dir = self.dir(&id);
        let info = Info {
            repo: repo.as_str().to_string(),
            started_at: unix_now(),
        };
        let json = serde_json::to_vec(&info).map_err(io::Error::other)?;
        self.store
            .blocking(move |_| {
                fs::create_dir_all(&dir)?;
                File::create(dir.join("data"))?;
                crate::storage::fs::write_atomic(&dir.join("info.json"), &json)
            })
            .await?;
        let session = Arc::new(tokio::sync::Mutex::new(Session {
            id: id.clone(),
            repo: repo.clone(),
            size: 0,
            started_at: info.started_at,
            closed: false,
            hasher: Some(Algorithm::Sha256.hasher()),
        }));
        self.lock().insert(id, session.clone());
        Ok(session)
    }

    /// The session `id` of `repo`, from memory or (after a restart) from disk.
    pub async fn get(&self, repo: &RepoName, id: &str) -> io::Result<Option<SessionHandle>> {
        if !valid_id(id) {
            return Ok(None);
        }
        let found = self.lock().get(id).cloned();
        let handle = match found {
            Some(h) => h,
            None => {
                let dir = self.dir(id);
                let loaded = self
                    .store
                    .blocking(move |_| {
                        let info = match fs::read(dir.join("info.json")) {
                            Ok(b) => b,
                            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                            Err(e) => return Err(e),
                        };
                        let info: Info = serde_json::from_slice(&info)
                            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                        let size = fs::metadata(dir.join("data"))?.len();
                        Ok(Some((info, size)))
                    })
                    .await?;
                let Some((info, size)) = loaded else {
                    return Ok(None);
                };
                let Some(owner) = RepoName::parse(&info.repo) else {
                    return Ok(None);
                };
                let session = Arc::new(tokio::sync::Mutex::new(Session {
                    id: id.to_string(),
                    repo: owner,
                    size,
                    started_at: info.started_at,
                    closed: false,
                    hasher: None,
                }));
                self.lock().entry(id.to_string()).or_insert(session).clone()
            }
        };
        let same_repo = handle.lock().await.repo == *repo;
        Ok(same_repo.then_some(handle))
    }

    /// Appends the request body to the session. `algorithm` (known when the client gave the
    /// digest up front) selects the hash for an upload that has no bytes yet.
    pub async fn append(
        &self,
        session: &mut Session,
        body: Body,
        algorithm: Option<Algorithm>,
    ) -> Result<u64, UploadError> {
        let hasher = match (session.size, algorithm, session.hasher.take()) {
            (0, Some(alg), _) => alg.hasher(),
            (_, _, Some(h)) => h,
            (_, alg, None) => {
                let alg = alg.unwrap_or(Algorithm::Sha256);
                self.rehash(session, alg).await?
            }
        };
        let path = self.dir(&session.id).join("data");
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let writer = tokio::task::spawn_blocking(move || write_chunks(&path, hasher, rx));
        let mut stream = body.into_data_stream();
        let mut client_error = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => {
                    if tx.send(chunk).await.is_err() {
                        break; // the writer failed; its error is reported below
                    }
                }
                Err(e) => {
                    client_error = Some(e.to_string());
                    break;
                }
            }
        }
        drop(tx);
        let outcome = writer.await.map_err(io::Error::other)?;
        match outcome {
            Ok((hasher, written)) => {
                session.size += written;
                session.hasher = Some(hasher);
                match client_error {
                    Some(e) => Err(UploadError::Client(e)),
                    None => Ok(written),
                }
            }
            Err(e) => {
                // What reached the disk is unknown: recompute from the file next time.
                let path = self.dir(&session.id).join("data");
                session.size = fs::metadata(&path).map_or(session.size, |m| m.len());
                session.hasher = None;
                Err(UploadError::Io(e))
            }
        }
    }

    async fn rehash(&self, session: &Session, algorithm: Algorithm) -> io::Result<Hasher> {
        let path = self.dir(&session.id).join("data");
        let size = session.size;
        self.store
            .blocking(move |_| hash_file(&path, algorithm, size))
            .await
    }

    /// Checks the data against `digest` and hands it to the blob store (which fsyncs and
    /// renames it, or uploads it to the bucket). The
    /// session is gone afterwards, whether this succeeded or not (like distribution, a
    /// failed commit cancels the upload). Returns the blob's size.
    pub async fn finish(&self, session: &mut Session, digest: &Digest) -> Result<u64, UploadError> {
        let hasher = match session.hasher.take() {
            Some(h) if h.algorithm() == digest.algorithm() => h,
            _ => self.rehash(session, digest.algorithm()).await?,
        };
        let actual = hasher.finish();
        let data = self.dir(&session.id).join("data");
        let result = if actual != *digest {
            Err(UploadError::DigestMismatch {
                expected: digest.clone(),
                actual,
            })
        } else {
            self.blobs
                .commit_file(&data, digest, session.size)
                .await
                .map_err(UploadError::Io)
        };
        self.remove(session).await;
        result.map(|()| session.size)
    }

    /// Cancels the session and deletes its data.
    pub async fn remove(&self, session: &mut Session) {
        session.closed = true;
        self.remove_id(&session.id).await;
    }

    /// Deletes the session `id` (garbage collection of abandoned uploads).
    pub async fn remove_id(&self, id: &str) {
        self.lock().remove(id);
        let dir = self.dir(id);
        let _ = self
            .store
            .blocking(move |_| match fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            })
            .await;
    }

    /// Drops an idle session from memory and marks it closed, so that its directory can be
    /// deleted; `false` when a request holds it right now.
    pub fn forget(&self, id: &str) -> bool {
        let mut sessions = self.lock();
        if let Some(handle) = sessions.get(id) {
            match handle.try_lock() {
                Ok(mut session) => session.closed = true,
                Err(_) => return false,
            }
            sessions.remove(id);
        }
        true
    }

    /// Ids of sessions on disk and when they started (for garbage collection).
    pub fn on_disk(&self) -> io::Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for id in crate::storage::fs::read_dir_names(&self.store.uploads_dir())? {
            if !valid_id(&id) {
                continue;
            }
            let started = fs::read(self.dir(&id).join("info.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<Info>(&b).ok())
                .map_or(0, |i| i.started_at);
            out.push((id, started));
        }
        Ok(out)
    }
}

fn write_chunks(
    path: &std::path::Path,
    mut hasher: Hasher,
    mut rx: mpsc::Receiver<Bytes>,
) -> io::Result<(Hasher, u64)> {
    let file = OpenOptions::new().append(true).open(path)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut written = 0u64;
    while let Some(chunk) = rx.blocking_recv() {
        out.write_all(&chunk)?;
        hasher.update(&chunk);
        written += chunk.len() as u64;
    }
    out.flush()?;
    Ok((hasher, written))
}

fn hash_file(path: &std::path::Path, algorithm: Algorithm, size: u64) -> io::Result<Hasher> {
    let mut hasher = algorithm.hasher();
    let mut file = File::open(path)?.take(size);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher)
}
