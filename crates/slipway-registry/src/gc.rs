//! Online garbage collection and retention.
//!
//! A run (1) applies [`RetentionRule`]s: deletes tags beyond the last N matching a
//! pattern, then untagged manifests older than a given age, but never one of
//! [`GcOptions::roots`] or what it refers to; (2) marks every blob that a
//! remaining manifest refers to; (3) deletes unmarked blobs, and upload sessions idle for
//! longer than [`GcOptions::upload_max_age`]. With [`GcOptions::dry_run`] nothing is
//! changed and the report lists what would be.
//!
//! It runs while the registry serves, so it must not delete what a concurrent push needs:
//! - blobs of uploads in progress are under `uploads/`, never swept (only sessions idle
//!   for `upload_max_age` are);
//! - blobs younger than [`GcOptions::blob_grace`] are kept, so the layers of a push whose
//!   manifest has not arrived yet survive;
//! - every manifest push, upload commit and mount first pins its digests
//!   ([`GcGuard::protect`]) and only then checks that the blobs it needs exist, keeping the
//!   pin until its metadata is written. A run starts with the pinned digests as its
//!   protected set, and digests pinned during the run are added to it and stay there until
//!   the run ends. The sweep deletes a blob only after checking that set under the same
//!   lock. So either the sweep sees the digest and keeps the blob, or the push sees the
//!   blob gone and fails with `MANIFEST_BLOB_UNKNOWN` (the client uploads again); never a
//!   manifest pointing at a deleted blob, even when the push checked just before the run
//!   began.
//!
//! Blob deletes go through the [`BlobStore`] (files, or S3 `DELETE`s); metadata stays on
//! the filesystem store.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use crate::auth::RepoPattern;
use crate::digest::Digest;
use crate::error::RegistryError;
use crate::name::RepoName;
use crate::storage::fs::unix_secs;
use crate::storage::{BlobStore, FsStore};
use crate::token::unix_now;
use crate::uploads::Uploads;

/// Which tags and manifests of matching repositories to let go.
#[derive(Debug, Clone)]
pub struct RetentionRule {
    pub repositories: RepoPattern,
    /// Tags the `keep_last` count applies to: `*` and `?` wildcards (`*` for all).
    pub tag_pattern: String,
    /// Keep the N most recently pushed tags matching `tag_pattern`; delete the others.
    pub keep_last: Option<usize>,
    /// Delete manifests no tag reaches (directly, through an index, or as a referrer of a
    /// kept manifest) that were pushed longer ago than this.
    pub untagged_older_than: Option<Duration>,
}

/// How a run behaves.
#[derive(Debug, Clone)]
pub struct GcOptions {
    pub dry_run: bool,
    pub retention: Vec<RetentionRule>,
    /// Unreferenced blobs younger than this are kept (default 1 hour).
    pub blob_grace: Duration,
    /// Upload sessions without a write for this long are deleted (default 24 hours).
    pub upload_max_age: Duration,
    /// Manifests kept whatever the rules say (repository, digest): what the deployer's kept
    /// revisions run, so a rollback never finds its image collected.
    pub roots: Vec<(String, Digest)>,
}

impl Default for GcOptions {
    fn default() -> GcOptions {
        GcOptions {
            dry_run: false,
            retention: Vec::new(),
            blob_grace: Duration::from_secs(3600),
            upload_max_age: Duration::from_secs(24 * 3600),
            roots: Vec::new(),
        }
    }
}

/// What a run deleted (or, in a dry run, would delete).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub dry_run: bool,
    pub tags: Vec<(String, String)>,
    pub manifests: Vec<(String, Digest)>,
    pub blobs: Vec<(Digest, u64)>,
    pub uploads: Vec<String>,
    /// Bytes of the deleted blobs and uploads.
    pub freed_bytes: u64,
}

/// What requests rely on, shared between the request handlers and the runs.
#[derive(Debug, Default)]
pub struct GcGuard {
    state: Mutex<GuardState>,
}

#[derive(Debug, Default)]
struct GuardState {
    /// The protected set of the active run, if one is running.
    active: Option<HashSet<Digest>>,
    /// Digests that requests in flight rely on, with how many requests do.
    pinned: HashMap<Digest, usize>,
}

/// Keeps the digests given to [`GcGuard::protect`] pinned until dropped (the end of the
/// request that relies on them).
#[derive(Debug)]
#[must_use = "the digests are only pinned while this lives"]
pub struct Pin<'a> {
    guard: &'a GcGuard,
    digests: Vec<Digest>,
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        let mut state = self.guard.lock();
        for digest in &self.digests {
            if let Some(count) = state.pinned.get_mut(digest) {
                *count -= 1;
                if *count == 0 {
                    state.pinned.remove(digest);
                }
            }
        }
    }
}

impl GcGuard {
    fn lock(&self) -> std::sync::MutexGuard<'_, GuardState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records digests a request is about to rely on, before it checks that they exist.
    /// They are pinned until the returned guard is dropped, and stay protected until the
    /// end of the active run (or of the run that starts while they are pinned): a run that
    /// begins after the request's check but before its metadata is written still sees them.
    pub fn protect<'a>(&self, digests: impl IntoIterator<Item = &'a Digest>) -> Pin<'_> {
        let digests: Vec<Digest> = digests.into_iter().cloned().collect();
        let mut state = self.lock();
        for digest in &digests {
            *state.pinned.entry(digest.clone()).or_insert(0) += 1;
        }
        if let Some(set) = state.active.as_mut() {
            set.extend(digests.iter().cloned());
        }
        Pin {
            guard: self,
            digests,
        }
    }

    fn begin(&self) -> bool {
        let mut state = self.lock();
        if state.active.is_some() {
            return false;
        }
        state.active = Some(state.pinned.keys().cloned().collect());
        true
    }

    fn end(&self) {
        self.lock().active = None;
    }

    /// Runs `delete` unless `digest` is protected, holding the lock so no request can
    /// start relying on it in between.
    fn delete_unless_protected(
        &self,
        digest: &Digest,
        delete: impl FnOnce() -> std::io::Result<bool>,
    ) -> std::io::Result<bool> {
        let state = self.lock();
        if state
            .active
            .as_ref()
            .is_some_and(|set| set.contains(digest))
        {
            return Ok(false);
        }
        delete()
    }
}

/// Ends the run even if it fails half-way.
struct RunGuard<'a>(&'a GcGuard);

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// `*` any run of characters, `?` one character, everything else literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// One garbage-collection run (blocking; call from a blocking thread).
pub(crate) fn run(
    runtime: &tokio::runtime::Handle,
    store: &FsStore,
    blobs: &BlobStore,
    uploads: &Uploads,
    guard: &GcGuard,
    options: &GcOptions,
) -> Result<GcReport, RegistryError> {
    if !guard.begin() {
        return Err(RegistryError::Busy);
    }
    let _end = RunGuard(guard);
    let io = |action: &'static str| {
        let root = store.root().to_path_buf();
        move |e| RegistryError::io(root, action, e)
    };
    let blob_io = |action: &'static str| {
        let location = blobs.location();
        move |e: std::io::Error| RegistryError::Storage {
            location,
            reason: format!("{action}: {e}"),
        }
    };
    let start = unix_now();
    let mut report = GcReport {
        dry_run: options.dry_run,
        ..GcReport::default()
    };
    let mut marked: HashSet<Digest> = HashSet::new();
    let (repos, _) = store.repositories_page(None, usize::MAX, |_| true);

    for name in repos {
        let Some(repo) = RepoName::parse(&name) else {
            continue;
        };
        let rules: Vec<&RetentionRule> = options
            .retention
            .iter()
            .filter(|r| r.repositories.matches(&name))
            .collect();

        // 1. Tags beyond keep_last.
        let mut tags = Vec::new();
        for tag in store
            .tags(&repo)
            .map_err(io("listing tags"))?
            .unwrap_or_default()
        {
            if let Some(info) = store.tag(&repo, &tag).map_err(io("reading a tag"))? {
                tags.push((tag, info));
            }
        }
        let mut dropped_tags: BTreeSet<String> = BTreeSet::new();
        for rule in &rules {
            let Some(keep) = rule.keep_last else { continue };
            let mut matching: Vec<_> = tags
                .iter()
                .filter(|(t, _)| glob_match(&rule.tag_pattern, t))
                .collect();
            matching.sort_by(|a, b| b.1.updated_at.cmp(&a.1.updated_at).then(b.0.cmp(&a.0)));
            for (tag, _) in matching.into_iter().skip(keep) {
                dropped_tags.insert(tag.clone());
            }
        }
        for tag in &dropped_tags {
            if !options.dry_run {
                store.delete_tag(&repo, tag).map_err(io("deleting a tag"))?;
            }
            report.tags.push((name.clone(), tag.clone()));
        }

        // 2. Which manifests are reachable from the remaining tags.
        let mut metas = Vec::new();
        for digest in store.manifests(&repo).map_err(io("listing manifests"))? {
            if let Some(meta) = store
                .manifest(&repo, &digest)
                .map_err(io("reading a manifest"))?
            {
                metas.push((digest, meta));
            }
        }
        let mut live: HashSet<Digest> = tags
            .iter()
            .filter(|(t, _)| !dropped_tags.contains(t))
            .map(|(_, i)| i.digest.clone())
            .chain(
                options
                    .roots
                    .iter()
                    .filter(|(r, _)| *r == name)
                    .map(|(_, d)| d.clone()),
            )
            .collect();
        loop {
            let before = live.len();
            for (digest, meta) in &metas {
                if live.contains(digest) {
                    live.extend(meta.references.iter().cloned());
                } else if meta.subject.as_ref().is_some_and(|s| live.contains(s)) {
                    live.insert(digest.clone());
                }
            }
            if live.len() == before {
                break;
            }
        }

        // 3. Untagged manifests past their age.
        let max_age = rules.iter().filter_map(|r| r.untagged_older_than).min();
        for (digest, meta) in &metas {
            let expired = max_age.is_some_and(|age| meta.pushed_at + age.as_secs() < start);
            if live.contains(digest) || !expired {
                marked.insert(digest.clone());
                marked.extend(meta.references.iter().cloned());
                continue;
            }
            let deleted = if options.dry_run {
                true
            } else {
                guard
                    .delete_unless_protected(digest, || {
                        if let Some(subject) = &meta.subject {
                            store.remove_referrer(&repo, subject, digest)?;
                        }
                        store.delete_manifest(&repo, digest)
                    })
                    .map_err(io("deleting a manifest"))?
            };
            if deleted {
                report.manifests.push((name.clone(), digest.clone()));
            } else {
                marked.insert(digest.clone());
                marked.extend(meta.references.iter().cloned());
            }
        }
    }

    // 4. Sweep blobs nothing refers to.
    let grace_start = start.saturating_sub(options.blob_grace.as_secs());
    let mut swept: HashSet<Digest> = HashSet::new();
    let listed = runtime
        .block_on(blobs.list())
        .map_err(blob_io("listing blobs"))?;
    for blob in listed {
        if marked.contains(&blob.digest) || blob.modified >= grace_start {
            continue;
        }
        let deleted = if options.dry_run {
            true
        } else {
            guard
                .delete_unless_protected(&blob.digest, || {
                    runtime.block_on(blobs.delete(&blob.digest))
                })
                .map_err(blob_io("deleting a blob"))?
        };
        if deleted {
            report.freed_bytes += blob.size;
            report.blobs.push((blob.digest.clone(), blob.size));
            swept.insert(blob.digest);
        }
    }
    if !options.dry_run && !swept.is_empty() {
        let (repos, _) = store.repositories_page(None, usize::MAX, |_| true);
        for repo in repos.iter().filter_map(|r| RepoName::parse(r)) {
            for digest in store.linked_blobs(&repo).map_err(io("listing links"))? {
                if swept.contains(&digest)
                    && runtime
                        .block_on(blobs.size(&digest))
                        .ok()
                        .flatten()
                        .is_none()
                {
                    store
                        .unlink_blob(&repo, &digest)
                        .map_err(io("unlinking a blob"))?;
                }
            }
        }
    }

    // 5. Abandoned uploads.
    let upload_cutoff = start.saturating_sub(options.upload_max_age.as_secs());
    for (id, _started) in uploads.on_disk().map_err(io("listing uploads"))? {
        let dir = store.uploads_dir().join(&id);
        // No `data` yet: the session is being created right now (its directory is new);
        // judge it by the directory, and skip it if that is gone too.
        let (size, modified) = match std::fs::metadata(dir.join("data")) {
            Ok(m) => (m.len(), m.modified().map(unix_secs).unwrap_or(0)),
            Err(_) => match std::fs::metadata(&dir) {
                Ok(m) => (0, m.modified().map(unix_secs).unwrap_or(u64::MAX)),
                Err(_) => continue,
            },
        };
        if modified >= upload_cutoff {
            continue;
        }
        if !options.dry_run {
            if !uploads.forget(&id) {
                continue; // a request is using it right now
            }
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(RegistryError::io(dir, "deleting an abandoned upload", e));
            }
        }
        report.freed_bytes += size;
        report.uploads.push(id);
    }
    Ok(report)
}
