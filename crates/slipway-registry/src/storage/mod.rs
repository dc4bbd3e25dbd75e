//! Where the registry keeps its data.
//!
//! Two parts:
//! - [`fs::FsStore`]: the metadata (repository links, manifest records, tags, referrers,
//!   the catalog index) and the upload sessions, always on the local filesystem in the
//!   layout described in the crate documentation.
//! - [`BlobStore`]: the content of blobs and manifests, addressed by digest. `Fs` keeps it
//!   under `blobs/` next to the metadata (the default); `S3` (cargo feature `s3`) keeps it in
//!   an S3-compatible bucket ([`s3`]). Which one is chosen by [`StorageConfig`].
//!
//! Every backend keeps the same promises: a blob is only visible once complete and
//! verified against its digest (the fs backend renames a fsynced file into place; S3 makes
//! an object visible only when its PUT or multipart upload completes), and identical
//! content written twice (two clients pushing the same layer) simply replaces itself.

pub mod fs;
#[cfg(feature = "s3")]
pub mod s3;
#[cfg(feature = "s3")]
pub mod sigv4;

use std::io;
use std::path::Path;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;

use crate::digest::Digest;

pub use fs::{FsStore, ManifestMeta, TagInfo};

/// 128 random bits as 32 lowercase hex digits: upload ids, temp-file names, token ids.
pub fn random_id() -> String {
    let bytes: [u8; 16] = rand::random();
    crate::digest::to_hex(&bytes)
}

/// Where blob content goes (metadata and uploads stay on disk under the registry root).
#[derive(Debug, Clone, Default)]
pub enum StorageConfig {
    /// `blobs/` under the registry root.
    #[default]
    Filesystem,
    /// An S3-compatible bucket.
    #[cfg(feature = "s3")]
    S3(s3::S3Config),
}

/// A blob as listed by [`BlobStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
    /// Last write, seconds since the Unix epoch.
    pub modified: u64,
}

/// A blob's bytes, streamed.
pub type BlobStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Read buffer for streaming blobs out of files.
const READ_CHUNK: usize = 256 * 1024;

/// Content-addressed blob storage; cheap to clone.
#[derive(Debug, Clone)]
pub enum BlobStore {
    /// Files under `blobs/` of the registry root.
    Fs(FsStore),
    /// Objects in an S3-compatible bucket.
    #[cfg(feature = "s3")]
    S3(s3::S3Blobs),
}

impl BlobStore {
    /// Opens the backend `config` selects; `fs` is the registry's filesystem store.
    pub fn open(config: &StorageConfig, fs: &FsStore) -> Result<BlobStore, crate::RegistryError> {
        match config {
            StorageConfig::Filesystem => Ok(BlobStore::Fs(fs.clone())),
            #[cfg(feature = "s3")]
            StorageConfig::S3(config) => Ok(BlobStore::S3(s3::S3Blobs::new(config.clone())?)),
        }
    }

    /// Where the blobs are, for messages: a directory or an `s3://` URL.
    pub fn location(&self) -> String {
        match self {
            BlobStore::Fs(fs) => fs.root().join("blobs").display().to_string(),
            #[cfg(feature = "s3")]
            BlobStore::S3(s3) => s3.location(),
        }
    }

    /// Size of the blob if the store holds it.
    pub async fn size(&self, digest: &Digest) -> io::Result<Option<u64>> {
        match self {
            BlobStore::Fs(fs) => {
                let d = digest.clone();
                fs.blocking(move |s| s.blob_size(&d)).await
            }
            #[cfg(feature = "s3")]
            BlobStore::S3(s3) => s3.size(digest).await,
        }
    }

    /// Stores the complete, verified file `file` (`size` bytes) as blob `digest`. The fs
    /// backend fsyncs and renames it (the file is gone afterwards); S3 uploads a copy.
    pub async fn commit_file(&self, file: &Path, digest: &Digest, size: u64) -> io::Result<()> {
        let _ = size; // only S3 needs it up front
        match self {
            BlobStore::Fs(fs) => {
                let (f, d) = (file.to_path_buf(), digest.clone());
                fs.blocking(move |s| {
                    // The blob's age (for the grace period of garbage collection) counts
                    // from now, not from the last chunk: a slow client's upload may have
                    // been written long before it is closed.
                    let file = std::fs::File::options().write(true).open(&f)?;
                    file.set_modified(std::time::SystemTime::now())?;
                    file.sync_all()?;
                    s.commit_blob(&f, &d)
                })
                .await
            }
            #[cfg(feature = "s3")]
            BlobStore::S3(s3) => s3.put_file(file, digest, size).await,
        }
    }

    /// Stores small content (a manifest) as blob `digest`.
    pub async fn put_bytes(&self, digest: &Digest, data: Bytes) -> io::Result<()> {
        match self {
            BlobStore::Fs(fs) => {
                let d = digest.clone();
                fs.blocking(move |s| s.put_blob_bytes(&d, &data)).await
            }
            #[cfg(feature = "s3")]
            BlobStore::S3(s3) => s3.put_bytes(digest, data).await,
        }
    }

    /// `len` bytes of blob `digest` from `start` on; `None` if the store does not hold it.
    pub async fn read(
        &self,
        digest: &Digest,
        start: u64,
        len: u64,
    ) -> io::Result<Option<BlobStream>> {
        match self {
            BlobStore::Fs(fs) => {
                use tokio::io::{AsyncReadExt, AsyncSeekExt};
                let mut file = match tokio::fs::File::open(fs.blob_path(digest)).await {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e),
                };
                if start > 0 {
                    file.seek(io::SeekFrom::Start(start)).await?;
                }
                let stream =
                    tokio_util::io::ReaderStream::with_capacity(file.take(len), READ_CHUNK);
                Ok(Some(Box::pin(stream)))
            }
            #[cfg(feature = "s3")]
            BlobStore::S3(s3) => s3.read(digest, start, len).await,
        }
    }

    /// The whole blob in memory (manifests only: they are small and bounded).
    pub async fn read_all(&self, digest: &Digest) -> io::Result<Option<Bytes>> {
        match self {
            BlobStore::Fs(fs) => match tokio::fs::read(fs.blob_path(digest)).await {
                Ok(b) => Ok(Some(Bytes::from(b))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
            #[cfg(feature = "s3")]
            BlobStore::S3(s3) => s3.read_all(digest).await,
        }
    }

    /// Deletes blob `digest`; `false` if it was not there (S3 does not tell: always `true`).
    pub async fn delete(&self, digest: &Digest) -> io::Result<bool> {
        match self {
            BlobStore::Fs(fs) => {
                let d = digest.clone();
                fs.blocking(move |s| s.delete_blob(&d)).await
            }
            #[cfg(feature = "s3")]
            BlobStore::S3(s3) => s3.delete(digest).await,
        }
    }

    /// Every blob in the store, with size and last write (for garbage collection).
    pub async fn list(&self) -> io::Result<Vec<BlobInfo>> {
        match self {
            BlobStore::Fs(fs) => fs.blocking(|s| s.blob_infos()).await,
            #[cfg(feature = "s3")]
            BlobStore::S3(s3) => s3.list().await,
        }
    }
}
