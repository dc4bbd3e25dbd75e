//! The filesystem store: metadata and upload sessions always, blob content too unless
//! another [`super::BlobStore`] is configured (then `blobs/` stays empty). Layout under the
//! registry root:
//!
//! ```text
//! blobs/<alg>/<hex[..2]>/<hex>                    verified content, immutable once renamed here
//! uploads/<id>/data                               bytes received so far for upload <id>
//! uploads/<id>/info.json                          its repository and start time
//! repositories.idx                                repository names, one a line (catalog index)
//! repositories/<name>/_layers/<alg>/<hex>         empty file: blob linked into the repository
//! repositories/<name>/_manifests/revisions/<alg>/<hex>   JSON ManifestMeta of a manifest
//! repositories/<name>/_manifests/tags/<tag>       the tagged manifest's digest
//! repositories/<name>/_referrers/<alg>/<subject-hex>/<alg>-<hex>  descriptor of a referrer
//! tmp/                                            scratch files for atomic writes of blobs
//! ```
//!
//! Every file whose content matters is written to a temporary name in the same filesystem,
//! fsynced and renamed into place, and the directory is fsynced after the rename; so a
//! reader sees the old or the new content, never a torn one, and never a blob whose bytes
//! do not hash to its name.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::digest::{Algorithm, Digest};
use crate::error::RegistryError;
use crate::manifest::Descriptor;
use crate::name::RepoName;

/// What the registry records about a manifest revision in a repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestMeta {
    pub media_type: String,
    pub size: u64,
    /// Seconds since the Unix epoch.
    pub pushed_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Blobs and child manifests it refers to (for garbage collection).
    #[serde(default)]
    pub references: Vec<Digest>,
}

/// A tag and where it points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagInfo {
    pub digest: Digest,
    /// When the tag was last set, seconds since the Unix epoch.
    pub updated_at: u64,
}

/// The filesystem store; cheap to clone.
#[derive(Debug, Clone)]
pub struct FsStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    /// Sorted repository names, loaded from `repositories.idx` at open.
    repos: Mutex<BTreeSet<String>>,
}

impl FsStore {
    /// Opens (creating if needed) the store at `root`, loading the repository index.
    pub fn open(root: &Path) -> Result<FsStore, RegistryError> {
        for dir in ["blobs", "uploads", "repositories", "tmp"] {
            let path = root.join(dir);
            fs::create_dir_all(&path)
                .map_err(|e| RegistryError::io(&path, "creating directory", e))?;
        }
        let repos = load_index(root)?;
        Ok(FsStore {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                repos: Mutex::new(repos),
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Runs `f` on the blocking pool: file operations are blocking system calls.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&FsStore) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(io::Error::other)?
    }

    // ---- paths ----

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.inner
            .root
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    pub fn uploads_dir(&self) -> PathBuf {
        self.inner.root.join("uploads")
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.inner.root.join("tmp")
    }

    fn repo_dir(&self, repo: &RepoName) -> PathBuf {
        self.inner.root.join("repositories").join(repo.as_str())
    }

    fn layer_link(&self, repo: &RepoName, digest: &Digest) -> PathBuf {
        self.repo_dir(repo)
            .join("_layers")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    fn revision_path(&self, repo: &RepoName, digest: &Digest) -> PathBuf {
        self.repo_dir(repo)
            .join("_manifests/revisions")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    fn tags_dir(&self, repo: &RepoName) -> PathBuf {
        self.repo_dir(repo).join("_manifests/tags")
    }

    fn referrers_dir(&self, repo: &RepoName, subject: &Digest) -> PathBuf {
        self.repo_dir(repo)
            .join("_referrers")
            .join(subject.algorithm().as_str())
            .join(subject.hex())
    }

    // ---- blobs ----

    /// Size of the blob if the store holds it.
    pub fn blob_size(&self, digest: &Digest) -> io::Result<Option<u64>> {
        match fs::metadata(self.blob_path(digest)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Moves a complete, fsynced and verified file into place as blob `digest`. If the blob
    /// already exists (pushed concurrently) the identical content simply replaces it.
    pub fn commit_blob(&self, verified: &Path, digest: &Digest) -> io::Result<()> {
        let target = self.blob_path(digest);
        let dir = parent(&target)?;
        fs::create_dir_all(dir)?;
        fs::rename(verified, &target)?;
        sync_dir(dir)
    }

    /// Stores small content (a manifest) as a blob, atomically.
    pub fn put_blob_bytes(&self, digest: &Digest, data: &[u8]) -> io::Result<()> {
        if self.blob_size(digest)? == Some(data.len() as u64) {
            return Ok(());
        }
        let tmp = self.tmp_dir().join(super::random_id());
        let result = (|| {
            let mut file = File::create(&tmp)?;
            file.write_all(data)?;
            file.sync_all()?;
            self.commit_blob(&tmp, digest)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    pub fn delete_blob(&self, digest: &Digest) -> io::Result<bool> {
        remove_file_if_exists(&self.blob_path(digest))
    }

    /// Every blob in the store (for garbage collection).
    pub fn all_blobs(&self) -> io::Result<Vec<Digest>> {
        let mut out = Vec::new();
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let dir = self.inner.root.join("blobs").join(alg.as_str());
            for prefix in read_dir_names(&dir)? {
                for hex in read_dir_names(&dir.join(&prefix))? {
                    if let Ok(d) = format!("{}:{hex}", alg.as_str()).parse() {
                        out.push(d);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Every blob with its size and modification time (for garbage collection).
    pub fn blob_infos(&self) -> io::Result<Vec<super::BlobInfo>> {
        let mut out = Vec::new();
        for digest in self.all_blobs()? {
            match fs::metadata(self.blob_path(&digest)) {
                Ok(meta) => out.push(super::BlobInfo {
                    size: meta.len(),
                    modified: meta.modified().map(unix_secs).unwrap_or(u64::MAX),
                    digest,
                }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    // ---- repository links ----

    /// Makes `digest` readable through `repo` (creating the repository if new).
    pub fn link_blob(&self, repo: &RepoName, digest: &Digest) -> io::Result<()> {
        self.ensure_repo(repo)?;
        let link = self.layer_link(repo, digest);
        fs::create_dir_all(parent(&link)?)?;
        File::create(&link)?;
        Ok(())
    }

    pub fn blob_linked(&self, repo: &RepoName, digest: &Digest) -> bool {
        self.layer_link(repo, digest).is_file()
    }

    pub fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> io::Result<bool> {
        remove_file_if_exists(&self.layer_link(repo, digest))
    }

    /// Digests linked into `repo`.
    pub fn linked_blobs(&self, repo: &RepoName) -> io::Result<Vec<Digest>> {
        self.digests_under(&self.repo_dir(repo).join("_layers"))
    }

    // ---- manifests ----

    pub fn put_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        meta: &ManifestMeta,
    ) -> io::Result<()> {
        self.ensure_repo(repo)?;
        let json = serde_json::to_vec(meta).map_err(io::Error::other)?;
        write_atomic(&self.revision_path(repo, digest), &json)
    }

    pub fn manifest(&self, repo: &RepoName, digest: &Digest) -> io::Result<Option<ManifestMeta>> {
        match fs::read(self.revision_path(repo, digest)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> io::Result<bool> {
        remove_file_if_exists(&self.revision_path(repo, digest))
    }

    /// Manifest digests of `repo`.
    pub fn manifests(&self, repo: &RepoName) -> io::Result<Vec<Digest>> {
        self.digests_under(&self.repo_dir(repo).join("_manifests/revisions"))
    }

    fn digests_under(&self, dir: &Path) -> io::Result<Vec<Digest>> {
        let mut out = Vec::new();
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            for hex in read_dir_names(&dir.join(alg.as_str()))? {
                if let Ok(d) = format!("{}:{hex}", alg.as_str()).parse() {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    // ---- tags ----

    pub fn set_tag(&self, repo: &RepoName, tag: &str, digest: &Digest) -> io::Result<()> {
        self.ensure_repo(repo)?;
        write_atomic(
            &self.tags_dir(repo).join(tag),
            digest.to_string().as_bytes(),
        )
    }

    pub fn tag(&self, repo: &RepoName, tag: &str) -> io::Result<Option<TagInfo>> {
        let path = self.tags_dir(repo).join(tag);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let digest = text.trim().parse().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })?;
        let updated_at = fs::metadata(&path)?.modified().map(unix_secs).unwrap_or(0);
        Ok(Some(TagInfo { digest, updated_at }))
    }

    pub fn delete_tag(&self, repo: &RepoName, tag: &str) -> io::Result<bool> {
        remove_file_if_exists(&self.tags_dir(repo).join(tag))
    }

    /// Tags of `repo` in ASCII order; `None` if the repository does not exist.
    pub fn tags(&self, repo: &RepoName) -> io::Result<Option<Vec<String>>> {
        if !self.repo_exists(repo) {
            return Ok(None);
        }
        let mut tags = read_dir_names(&self.tags_dir(repo))?;
        tags.retain(|t| crate::name::valid_tag(t));
        tags.sort();
        Ok(Some(tags))
    }

    // ---- referrers ----

    pub fn add_referrer(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Descriptor,
    ) -> io::Result<()> {
        let json = serde_json::to_vec(referrer).map_err(io::Error::other)?;
        let name = format!(
            "{}-{}.json",
            referrer.digest.algorithm().as_str(),
            referrer.digest.hex()
        );
        write_atomic(&self.referrers_dir(repo, subject).join(name), &json)
    }

    pub fn remove_referrer(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Digest,
    ) -> io::Result<bool> {
        let name = format!("{}-{}.json", referrer.algorithm().as_str(), referrer.hex());
        remove_file_if_exists(&self.referrers_dir(repo, subject).join(name))
    }

    /// Referrers of `subject` in `repo`, ordered by digest.
    pub fn referrers(&self, repo: &RepoName, subject: &Digest) -> io::Result<Vec<Descriptor>> {
        let dir = self.referrers_dir(repo, subject);
        let mut names = read_dir_names(&dir)?;
        names.sort();
        let mut out = Vec::new();
        for name in names.iter().filter(|n| n.ends_with(".json")) {
            match fs::read(dir.join(name)) {
                Ok(bytes) => {
                    if let Ok(d) = serde_json::from_slice(&bytes) {
                        out.push(d);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    // ---- repositories ----

    pub fn repo_exists(&self, repo: &RepoName) -> bool {
        self.lock_repos().contains(repo.as_str())
    }

    /// Adds `repo` to the index (appended and fsynced before anything is stored in it, so
    /// the index never misses a repository that has content).
    fn ensure_repo(&self, repo: &RepoName) -> io::Result<()> {
        let mut repos = self.lock_repos();
        if repos.contains(repo.as_str()) {
            return Ok(());
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.inner.root.join("repositories.idx"))?;
        file.write_all(format!("{}\n", repo.as_str()).as_bytes())?;
        file.sync_data()?;
        repos.insert(repo.as_str().to_string());
        Ok(())
    }

    /// Up to `n` repository names after `last`, in ASCII order, that `visible` accepts; and
    /// whether more visible names follow. Reads only the in-memory index, from `last` on.
    pub fn repositories_page(
        &self,
        last: Option<&str>,
        n: usize,
        visible: impl Fn(&str) -> bool,
    ) -> (Vec<String>, bool) {
        use std::ops::Bound;
        let repos = self.lock_repos();
        let start = last.map_or(Bound::Unbounded, |l| Bound::Excluded(l.to_string()));
        let mut iter = repos
            .range::<String, _>((start, Bound::Unbounded))
            .filter(|r| visible(r));
        let page: Vec<String> = iter.by_ref().take(n).cloned().collect();
        let more = iter.next().is_some();
        (page, more)
    }

    fn lock_repos(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        // A panic while holding this lock cannot leave the set half-updated.
        self.inner
            .repos
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Reads `repositories.idx`, keeping names whose directory exists; rebuilds it by walking
/// `repositories/` when it is missing.
fn load_index(root: &Path) -> Result<BTreeSet<String>, RegistryError> {
    let index = root.join("repositories.idx");
    let repos_dir = root.join("repositories");
    match fs::read_to_string(&index) {
        Ok(text) => Ok(text
            .lines()
            .filter(|l| RepoName::parse(l).is_some() && repos_dir.join(l).is_dir())
            .map(str::to_string)
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut found = BTreeSet::new();
            walk_repos(&repos_dir, "", &mut found)
                .map_err(|e| RegistryError::io(&repos_dir, "listing repositories", e))?;
            let text: String = found.iter().map(|r| format!("{r}\n")).collect();
            write_atomic(&index, text.as_bytes())
                .map_err(|e| RegistryError::io(&index, "writing the repository index", e))?;
            Ok(found)
        }
        Err(e) => Err(RegistryError::io(&index, "reading the repository index", e)),
    }
}

fn walk_repos(dir: &Path, prefix: &str, found: &mut BTreeSet<String>) -> io::Result<()> {
    for name in read_dir_names(dir)? {
        if name.starts_with('_') {
            continue;
        }
        let full = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let path = dir.join(&name);
        if !path.is_dir() {
            continue;
        }
        if (path.join("_manifests").is_dir() || path.join("_layers").is_dir())
            && RepoName::parse(&full).is_some()
        {
            found.insert(full.clone());
        }
        walk_repos(&path, &full, found)?;
    }
    Ok(())
}

/// Writes `data` to `path` through a temporary file in the same directory, fsync, rename and
/// directory fsync.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = parent(path)?;
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".tmp-{}", super::random_id()));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent(path: &Path) -> io::Result<&Path> {
    path.parent()
        .ok_or_else(|| io::Error::other(format!("{} has no parent directory", path.display())))
}

fn remove_file_if_exists(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Names in `dir` (not starting with `.`); empty if the directory does not exist.
pub(crate) fn read_dir_names(dir: &Path) -> io::Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        if let Some(name) = entry.file_name().to_str()
            && !name.starts_with('.')
        {
            out.push(name.to_string());
        }
    }
    Ok(out)
}

pub(crate) fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
