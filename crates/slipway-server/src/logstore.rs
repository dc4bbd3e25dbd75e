//! Build logs: one append-only file per step and attempt (or, for a short step, one row of
//! the store), each line written exactly once, and followed live.
//!
//! Layout under the log root: `<build id>/<stage id>.<attempt>.<step>.log`, one line of
//! output per line of file (the engine guarantees lines hold no `\n`). The step name is
//! percent-encoded for the file name. The raw download of a step's log is that file. One
//! directory a build, not one a stage and attempt: a new directory costs the file system
//! an inode as a file does, and two of them a stage were most of what storing a short
//! stage's log cost. Log roots of the earlier nested layout
//! (`<build>/<stage>/<attempt>/<step>.log`) are moved into this one when opened, once
//! (the root's `LAYOUT` file says it is done).
//!
//! **Short steps' logs go to the store instead.** A step that starts, prints and ends
//! within one report of its runner (most steps of a quick stage: the runner lets a batch
//! gather for a moment, and a stage's last batch travels with its end) has its whole log
//! in that report. Such a log, up to [`MAX_STORED_WHOLE`] bytes, is written to the store's
//! `step_logs` table in the report's own transaction ([`LogStore::may_store_whole`], then
//! a `ReportWrite::Log`), not to a file: a file costs an inode and an `fdatasync` of its
//! own, which were most of what a short stage's log cost, where the report's commit is
//! paid anyway. Reads look for the file first, then the store, so callers see one kind of
//! log.
//!
//! Invariants:
//! - **Exactly once.** Runners number the lines of a (stage, attempt, step) from 0. A batch
//!   is appended only from the next number the file lacks: lines already stored are skipped
//!   (a batch resent after a lost acknowledgement), and a batch that starts beyond the end is
//!   refused with [`LogError::Gap`], so no line is lost, duplicated or reordered. A log
//!   stored whole is written once (a resent report finds its row and writes nothing), and
//!   only while no file holds any of its lines, so a log is never split between the two.
//! - **On disk before acknowledged.** [`LogStore::append`] returns after the bytes were
//!   written and `fdatasync`ed (unless opened with `durable = false`, for benchmarks); a
//!   log stored whole is in the report's transaction, committed before the answer.
//! - **Crash safe.** The line count of a file is recovered by reading it when first opened;
//!   a torn last line (no `\n`, from a crash mid-write) is cut off, so the runner resends it.
//! - **Live.** Every append is published on a broadcast channel ([`LogStore::subscribe`]),
//!   and a log stored whole once its commit is done ([`LogStore::publish`]); a follower
//!   reads what is stored first and then takes published lines from where that ended, so
//!   it sees every line once, in order ([`LogStore::follow`]).
//! - **Private.** Log directories are made 0700 and log files 0600.

use std::collections::HashMap;
use std::io::{self, BufRead, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::store::{Store, StoreError};

/// Which log: one step of one attempt of one stage.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LogKey {
    pub build_id: i64,
    pub stage_id: i64,
    pub attempt: i64,
    pub step: String,
}

/// Lines appended to one log, as published to followers.
#[derive(Debug, Clone)]
pub struct Appended {
    pub key: LogKey,
    pub first_seq: u64,
    pub lines: Arc<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(
        "log line {got} of step `{step}` is ahead of the stored log, which ends at line {expected}"
    )]
    Gap {
        step: String,
        expected: u64,
        got: u64,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("reading a step's log from the database: {0}")]
    Store(#[from] StoreError),
}

/// What [`LogStore::append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Lines written now (the rest of the batch was already stored).
    pub appended: usize,
    /// The number the next line must have.
    pub next_seq: u64,
}

struct OpenLog {
    file: std::fs::File,
    next_seq: u64,
}

/// The log files of every build. Cheap to clone.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    durable: bool,
    /// Where the logs of short steps are ([`LogStore::may_store_whole`]); none in the
    /// tests of this file alone.
    stored: Option<Arc<Store>>,
    open: Mutex<HashMap<LogKey, Arc<Mutex<OpenLog>>>>,
    published: broadcast::Sender<Appended>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("root", &self.inner.root)
            .finish_non_exhaustive()
    }
}

impl LogStore {
    /// Logs under `root` (created when missing), and in `stored` those of short steps.
    pub fn open(
        root: impl Into<PathBuf>,
        durable: bool,
        stored: Option<Arc<Store>>,
    ) -> Result<LogStore, LogError> {
        let root = root.into();
        private_dirs(&root).map_err(|source| LogError::Io {
            action: "creating",
            path: root.clone(),
            source,
        })?;
        migrate_nested_layout(&root)?;
        let (published, _) = broadcast::channel(1024);
        Ok(LogStore {
            inner: Arc::new(Inner {
                root,
                durable,
                stored,
                open: Mutex::new(HashMap::new()),
                published,
            }),
        })
    }

    /// The file of one step's log (it may not exist yet).
    pub fn path(&self, key: &LogKey) -> PathBuf {
        self.inner
            .root
            .join(key.build_id.to_string())
            .join(file_name(
                key.stage_id,
                key.attempt,
                &encode_name(&key.step),
            ))
    }

    /// Appends the lines numbered `first_seq..` that are not stored yet. Blocking file IO
    /// runs on the blocking pool.
    pub async fn append(
        &self,
        key: &LogKey,
        first_seq: u64,
        lines: Vec<String>,
    ) -> Result<AppendOutcome, LogError> {
        let this = self.clone();
        let key = key.clone();
        let task_key = key.clone();
        let (outcome, fresh) =
            tokio::task::spawn_blocking(move || this.append_blocking(&task_key, first_seq, lines))
                .await
                .map_err(|e| LogError::Io {
                    action: "appending to",
                    path: self.path(&key),
                    source: io::Error::other(e.to_string()),
                })??;
        if let Some((first, lines)) = fresh {
            self.publish(key, first, lines);
        }
        Ok(outcome)
    }

    #[allow(clippy::type_complexity)]
    fn append_blocking(
        &self,
        key: &LogKey,
        first_seq: u64,
        lines: Vec<String>,
    ) -> Result<(AppendOutcome, Option<(u64, Vec<String>)>), LogError> {
        let log = self.open_log(key)?;
        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
        if first_seq > log.next_seq {
            return Err(LogError::Gap {
                step: key.step.clone(),
                expected: log.next_seq,
                got: first_seq,
            });
        }
        let skip = usize::try_from(log.next_seq - first_seq).unwrap_or(usize::MAX);
        if skip >= lines.len() {
            return Ok((
                AppendOutcome {
                    appended: 0,
                    next_seq: log.next_seq,
                },
                None,
            ));
        }
        // Published as stored, so live followers see what a later read gives.
        let fresh: Vec<String> = lines.into_iter().skip(skip).map(one_line).collect();
        let buf = log_text(&fresh).into_bytes();
        let path = self.path(key);
        let io_err = |source| LogError::Io {
            action: "writing",
            path: path.clone(),
            source,
        };
        log.file.write_all(&buf).map_err(io_err)?;
        if self.inner.durable {
            log.file.sync_data().map_err(io_err)?;
        }
        let first = log.next_seq;
        log.next_seq += fresh.len() as u64;
        Ok((
            AppendOutcome {
                appended: fresh.len(),
                next_seq: log.next_seq,
            },
            Some((first, fresh)),
        ))
    }

    fn open_log(&self, key: &LogKey) -> Result<Arc<Mutex<OpenLog>>, LogError> {
        let mut open = self.inner.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(log) = open.get(key) {
            return Ok(log.clone());
        }
        let path = self.path(key);
        let io_err = |action, source| LogError::Io {
            action,
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            private_dirs(dir).map_err(|e| io_err("creating the directory of", e))?;
        }
        // Logs may show what a build printed of its secrets before masking caught on:
        // the owner's only.
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_err("opening", e))?;
        let (lines, complete_len) =
            count_complete_lines(&mut file).map_err(|e| io_err("reading", e))?;
        let len = file.metadata().map_err(|e| io_err("reading", e))?.len();
        if complete_len < len {
            tracing::warn!(
                "{}: cutting off a torn last line ({} bytes)",
                path.display(),
                len - complete_len
            );
            file.set_len(complete_len)
                .map_err(|e| io_err("truncating", e))?;
        }
        let log = Arc::new(Mutex::new(OpenLog {
            file,
            next_seq: lines,
        }));
        open.insert(key.clone(), log.clone());
        Ok(log)
    }

    /// Forgets the open file of a log that is complete (its step finished); it is reopened,
    /// and recounted, if more lines come.
    pub fn close(&self, key: &LogKey) {
        self.inner
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Forgets the open files of every step of one attempt of a stage (it ended, was
    /// requeued or given up), so nothing stays open for a step that never reported its end.
    pub fn close_stage(&self, stage_id: i64, attempt: i64) {
        self.inner
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| !(k.stage_id == stage_id && k.attempt == attempt));
    }

    /// Every line of a log from `from_seq` on (an empty list when there is no log).
    pub async fn read_from(&self, key: &LogKey, from_seq: u64) -> Result<Vec<String>, LogError> {
        let path = self.path(key);
        let from_file = tokio::task::spawn_blocking(move || read_lines(&path, from_seq))
            .await
            .map_err(|e| LogError::Io {
                action: "reading",
                path: self.path(key),
                source: io::Error::other(e.to_string()),
            })??;
        if let Some(lines) = from_file {
            return Ok(lines);
        }
        let skip = usize::try_from(from_seq).unwrap_or(usize::MAX);
        Ok(match self.stored_whole(key).await? {
            Some(text) => stored_lines(&text).skip(skip).map(str::to_owned).collect(),
            None => Vec::new(),
        })
    }

    /// A log's bytes as stored, each line ended by `\n` (empty when there is no log): the
    /// raw download.
    pub async fn raw(&self, key: &LogKey) -> Result<Vec<u8>, LogError> {
        let path = self.path(key);
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(self
                .stored_whole(key)
                .await?
                .map(String::into_bytes)
                .unwrap_or_default()),
            Err(source) => Err(LogError::Io {
                action: "reading",
                path,
                source,
            }),
        }
    }

    /// The log of a short step as the store holds it.
    async fn stored_whole(&self, key: &LogKey) -> Result<Option<String>, LogError> {
        match &self.inner.stored {
            Some(store) => Ok(store.step_log(key.stage_id, key.attempt, &key.step).await?),
            None => Ok(None),
        }
    }

    /// Whether the whole log of a step, `bytes` long with its line ends, from its first
    /// line on, may be stored with the report that also ends the step, instead of in a
    /// file: it fits [`MAX_STORED_WHOLE`] and no file holds any of its lines. The caller
    /// writes it with that report (a `ReportWrite::Log` of [`log_text`]) and then tells
    /// followers with [`LogStore::publish`].
    pub fn may_store_whole(&self, key: &LogKey, bytes: usize) -> bool {
        self.inner.stored.is_some()
            && bytes <= MAX_STORED_WHOLE
            && !self
                .inner
                .open
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(key)
            && !self.path(key).exists()
    }

    /// Tells followers of lines stored elsewhere (see [`LogStore::may_store_whole`]), once
    /// they are committed.
    pub fn publish(&self, key: LogKey, first_seq: u64, lines: Vec<String>) {
        // Nobody listening is fine.
        let _ = self.inner.published.send(Appended {
            key,
            first_seq,
            lines: Arc::new(lines),
        });
    }

    /// Published appends, for live views. Subscribe *before* reading the file (see
    /// [`LogStore::follow`]).
    pub fn subscribe(&self) -> broadcast::Receiver<Appended> {
        self.inner.published.subscribe()
    }

    /// A follower of one log: the stored lines first, then live ones, each once and in
    /// order, as `(seq, line)`.
    pub fn follow(&self, key: LogKey) -> Follower {
        Follower {
            receiver: self.subscribe(),
            store: self.clone(),
            key,
            next_seq: 0,
            backlog: std::collections::VecDeque::new(),
            caught_up: false,
        }
    }
}

/// See [`LogStore::follow`].
#[derive(Debug)]
pub struct Follower {
    receiver: broadcast::Receiver<Appended>,
    store: LogStore,
    key: LogKey,
    next_seq: u64,
    backlog: std::collections::VecDeque<String>,
    caught_up: bool,
}

impl Follower {
    /// The next line, waiting for it if needed. `None` only when the store is gone.
    pub async fn next(&mut self) -> Option<Result<(u64, String), LogError>> {
        loop {
            if let Some(line) = self.backlog.pop_front() {
                let seq = self.next_seq;
                self.next_seq += 1;
                return Some(Ok((seq, line)));
            }
            if !self.caught_up {
                // Lines published after the subscription are either in the file now or
                // will come through the receiver; those with a seq below `next_seq` are
                // dropped there.
                match self.store.read_from(&self.key, self.next_seq).await {
                    Ok(lines) => self.backlog.extend(lines),
                    Err(e) => return Some(Err(e)),
                }
                self.caught_up = true;
                continue;
            }
            match self.receiver.recv().await {
                Ok(appended) if appended.key == self.key => {
                    let end = appended.first_seq + appended.lines.len() as u64;
                    if end <= self.next_seq {
                        continue;
                    }
                    if appended.first_seq > self.next_seq {
                        // Missed some (cannot happen without a lag, but be safe): reread.
                        self.caught_up = false;
                        continue;
                    }
                    let skip =
                        usize::try_from(self.next_seq - appended.first_seq).unwrap_or(usize::MAX);
                    self.backlog
                        .extend(appended.lines.iter().skip(skip).cloned());
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => self.caught_up = false,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next lines: at least one (waiting for it if needed), and with it every line
    /// already at hand, at most `max`. `None` only when the store is gone.
    pub async fn next_chunk(&mut self, max: usize) -> Option<Result<(u64, Vec<String>), LogError>> {
        let (first, line) = match self.next().await? {
            Ok(next) => next,
            Err(e) => return Some(Err(e)),
        };
        let mut lines = vec![line];
        while lines.len() < max.max(1) {
            let Some(line) = self.backlog.pop_front() else {
                break;
            };
            self.next_seq += 1;
            lines.push(line);
        }
        Some(Ok((first, lines)))
    }

    /// Lines already known to exist have all been returned (used to end a stream once the
    /// step has finished: after that, nothing new can arrive).
    pub async fn drain_stored(&mut self) -> Result<Vec<(u64, String)>, LogError> {
        let mut out = Vec::new();
        for line in std::mem::take(&mut self.backlog) {
            out.push((self.next_seq, line));
            self.next_seq += 1;
        }
        for line in self.store.read_from(&self.key, self.next_seq).await? {
            out.push((self.next_seq, line));
            self.next_seq += 1;
        }
        Ok(out)
    }
}

/// Number of `\n`-terminated lines and the byte length they span.
fn count_complete_lines(file: &mut std::fs::File) -> io::Result<(u64, u64)> {
    file.seek(io::SeekFrom::Start(0))?;
    let mut reader = io::BufReader::with_capacity(1 << 16, &mut *file);
    let mut lines = 0u64;
    let mut complete = 0u64;
    let mut offset = 0u64;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let n = buf.len();
        for (i, &b) in buf.iter().enumerate() {
            if b == b'\n' {
                lines += 1;
                complete = offset + i as u64 + 1;
            }
        }
        offset += n as u64;
        reader.consume(n);
    }
    Ok((lines, complete))
}

/// The lines of a log file from `from_seq` on; `None` when there is no such file.
fn read_lines(path: &Path, from_seq: u64) -> Result<Option<Vec<String>>, LogError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(LogError::Io {
                action: "opening",
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut reader = io::BufReader::with_capacity(1 << 16, file);
    let mut out = Vec::new();
    let mut seq = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| LogError::Io {
                action: "reading",
                path: path.to_owned(),
                source,
            })?;
        if n == 0 || buf.last() != Some(&b'\n') {
            // The end, or a line still being written: not a line yet.
            break;
        }
        if seq >= from_seq {
            buf.pop();
            out.push(String::from_utf8_lossy(&buf).into_owned());
        }
        seq += 1;
    }
    Ok(Some(out))
}

/// Largest log (in bytes, with its line ends) stored whole with the report that ends its
/// step; a longer one goes to a file as every log that arrives in parts does.
pub const MAX_STORED_WHOLE: usize = 16 * 1024;

/// Lines as a log stores them, each ended by `\n`; the lines as [`one_line`] leaves them.
pub fn log_text(lines: &[String]) -> String {
    let mut text = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for line in lines {
        debug_assert!(!line.contains('\n'), "a line not made one with `one_line`");
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// A line as a log stores it. A line never holds `\n` (the engine splits on it); a stray
/// one from elsewhere would break numbering, so it is replaced.
pub fn one_line(line: String) -> String {
    if line.contains('\n') {
        line.replace('\n', " ")
    } else {
        line
    }
}

/// The lines of a log stored whole ([`log_text`]); `\r` stays part of its line, as in a
/// file.
fn stored_lines(text: &str) -> impl Iterator<Item = &str> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    (!text.is_empty())
        .then(|| body.split('\n'))
        .into_iter()
        .flatten()
}

/// The file of a step's log in its build's directory; `encoded_step` as [`encode_name`]
/// makes it (or as the nested layout stored it: the same encoding).
fn file_name(stage_id: i64, attempt: i64, encoded_step: &str) -> String {
    format!("{stage_id}.{attempt}.{encoded_step}.log")
}

/// The root's record that its logs are in the flat layout.
const LAYOUT_FILE: &str = "LAYOUT";
const LAYOUT: &str = "flat: <build>/<stage>.<attempt>.<step>.log\n";

/// Moves the logs of the nested layout, `<build>/<stage>/<attempt>/<step>.log`, to
/// `<build>/<stage>.<attempt>.<step>.log`, and removes the emptied directories; then
/// writes `LAYOUT`, so later opens skip the walk. Each move is one rename, so a crash
/// half-way loses nothing: the next open goes on where this one stopped.
fn migrate_nested_layout(root: &Path) -> Result<(), LogError> {
    let marker = root.join(LAYOUT_FILE);
    if marker.exists() {
        return Ok(());
    }
    let io_err = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| LogError::Io {
            action,
            path,
            source,
        }
    };
    let numbered_dirs = |dir: &Path| -> Result<Vec<(String, PathBuf)>, LogError> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err("reading", dir))? {
            let entry = entry.map_err(io_err("reading", dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_dir = entry
                .file_type()
                .map_err(io_err("reading", &entry.path()))?
                .is_dir();
            if is_dir && name.parse::<i64>().is_ok() {
                found.push((name, entry.path()));
            }
        }
        Ok(found)
    };
    let mut moved = 0usize;
    for (_, build_dir) in numbered_dirs(root)? {
        for (stage, stage_dir) in numbered_dirs(&build_dir)? {
            for (attempt, attempt_dir) in numbered_dirs(&stage_dir)? {
                for entry in
                    std::fs::read_dir(&attempt_dir).map_err(io_err("reading", &attempt_dir))?
                {
                    let entry = entry.map_err(io_err("reading", &attempt_dir))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let Some(step) = name.strip_suffix(".log") else {
                        continue;
                    };
                    let to = build_dir.join(format!("{stage}.{attempt}.{step}.log"));
                    std::fs::rename(entry.path(), &to).map_err(io_err("moving", &entry.path()))?;
                    moved += 1;
                }
                // Only an emptied directory goes; anything else left in it stays.
                let _ = std::fs::remove_dir(&attempt_dir);
            }
            let _ = std::fs::remove_dir(&stage_dir);
        }
    }
    if moved > 0 {
        tracing::info!(
            "moved {moved} step logs under {} to one directory a build",
            root.display()
        );
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&marker)
        .and_then(|mut f| f.write_all(LAYOUT.as_bytes()))
        .map_err(io_err("writing", &marker))
}

/// Creates `dir` and its missing parents with mode 0700 (the owner's only).
fn private_dirs(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Longest encoded step name kept whole; longer ones are cut and given a hash of the whole
/// name, so every name fits a file name (255 bytes) with `.log`.
const MAX_ENCODED_NAME: usize = 200;

/// Keeps `[A-Za-z0-9._-]`, percent-encodes the rest, so any step name is one safe file name.
fn encode_name(name: &str) -> String {
    let encoded = encode_bytes(name);
    if encoded.len() <= MAX_ENCODED_NAME {
        return encoded;
    }
    use sha2::Digest as _;
    let hash = hex::encode(&sha2::Sha256::digest(name.as_bytes())[..8]);
    // The encoding is ASCII, so any byte offset is a character boundary.
    format!("{}~{hash}", &encoded[..MAX_ENCODED_NAME - 17])
}

fn encode_bytes(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-') || (b == b'.' && !out.is_empty()) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("%00");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(step: &str) -> LogKey {
        LogKey {
            build_id: 1,
            stage_id: 2,
            attempt: 1,
            step: step.to_owned(),
        }
    }

    fn lines(range: std::ops::Range<u32>) -> Vec<String> {
        range.map(|i| format!("line {i}")).collect()
    }

    #[tokio::test]
    async fn appends_once_skips_resent_and_refuses_gaps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::open(dir.path(), true, None).expect("open");
        let k = key("build");
        let out = store.append(&k, 0, lines(0..3)).await.expect("append");
        assert_eq!(
            out,
            AppendOutcome {
                appended: 3,
                next_seq: 3
            }
        );
        // Resent batch overlapping the end: only the new part is written.
        let out = store.append(&k, 1, lines(1..5)).await.expect("append");
        assert_eq!(
            out,
            AppendOutcome {
                appended: 2,
                next_seq: 5
            }
        );
        let out = store.append(&k, 0, lines(0..2)).await.expect("append");
        assert_eq!(out.appended, 0);
        let err = store.append(&k, 7, lines(7..8)).await.expect_err("gap");
        assert!(
            matches!(
                err,
                LogError::Gap {
                    expected: 5,
                    got: 7,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(store.read_from(&k, 0).await.expect("read"), lines(0..5));
        assert_eq!(store.read_from(&k, 3).await.expect("read"), lines(3..5));
    }

    #[tokio::test]
    async fn recovers_count_and_cuts_torn_line_after_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let k = key("test step/with odd:name");
        let path = {
            let store = LogStore::open(dir.path(), true, None).expect("open");
            store.append(&k, 0, lines(0..4)).await.expect("append");
            store.path(&k)
        };
        // A crash mid-write leaves half a line.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open log");
        f.write_all(b"line 4 half").expect("write");
        drop(f);
        let store = LogStore::open(dir.path(), true, None).expect("reopen");
        let out = store.append(&k, 4, lines(4..6)).await.expect("append");
        assert_eq!(
            out,
            AppendOutcome {
                appended: 2,
                next_seq: 6
            }
        );
        assert_eq!(store.read_from(&k, 0).await.expect("read"), lines(0..6));
    }

    #[tokio::test]
    async fn follower_sees_stored_then_live_lines_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::open(dir.path(), false, None).expect("open");
        let k = key("s");
        store.append(&k, 0, lines(0..3)).await.expect("append");
        let mut follower = store.follow(k.clone());
        let writer = store.clone();
        let wk = k.clone();
        let task = tokio::spawn(async move {
            for i in 3..50u32 {
                // Each batch overlaps the previous one by one line, like a resend.
                let first = i.saturating_sub(1);
                writer
                    .append(&wk, u64::from(first), lines(first..i + 1))
                    .await
                    .expect("append");
            }
        });
        let mut got = Vec::new();
        while got.len() < 50 {
            let (seq, line) = follower.next().await.expect("open").expect("line");
            assert_eq!(seq, got.len() as u64);
            got.push(line);
        }
        task.await.expect("writer");
        assert_eq!(got, lines(0..50));
        // Another log's lines do not reach this follower.
        store
            .append(&key("other"), 0, lines(0..1))
            .await
            .expect("append");
        assert!(follower.drain_stored().await.expect("drain").is_empty());
    }

    #[tokio::test]
    async fn chunks_take_every_line_at_hand_up_to_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::open(dir.path(), false, None).expect("open");
        let k = key("s");
        store.append(&k, 0, lines(0..7)).await.expect("append");
        let mut follower = store.follow(k.clone());
        let (first, got) = follower.next_chunk(5).await.expect("open").expect("chunk");
        assert_eq!((first, got), (0, lines(0..5)));
        let (first, got) = follower.next_chunk(5).await.expect("open").expect("chunk");
        assert_eq!((first, got), (5, lines(5..7)));
        store.append(&k, 7, lines(7..8)).await.expect("append");
        let (first, got) = follower.next_chunk(5).await.expect("open").expect("chunk");
        assert_eq!((first, got), (7, lines(7..8)));
    }

    #[tokio::test]
    async fn logs_of_the_nested_layout_are_moved_once_and_read_as_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = dir.path().join("1").join("2").join("1");
        std::fs::create_dir_all(&old).expect("mkdir");
        std::fs::write(old.join("a%2Fb.log"), "line 0\nline 1\n").expect("write");
        std::fs::write(old.join("notes.txt"), "not a log").expect("write");
        std::fs::create_dir_all(dir.path().join("1").join("3").join("2")).expect("mkdir");

        let store = LogStore::open(dir.path(), true, None).expect("open");
        let k = key("a/b");
        assert_eq!(store.path(&k), dir.path().join("1").join("2.1.a%2Fb.log"));
        assert_eq!(store.read_from(&k, 0).await.expect("read"), lines(0..2));
        // Numbering goes on from the moved file.
        let out = store.append(&k, 2, lines(2..3)).await.expect("append");
        assert_eq!(out.next_seq, 3);
        // What is not a log stays where it was, and so does its directory; emptied ones go.
        assert!(old.join("notes.txt").exists());
        assert!(!dir.path().join("1").join("3").exists());
        assert!(dir.path().join(LAYOUT_FILE).exists());
        drop(store);

        // Reopening walks nothing: a nested log put back now stays where it is.
        std::fs::write(old.join("late.log"), "x\n").expect("write");
        let store = LogStore::open(dir.path(), true, None).expect("reopen");
        assert!(old.join("late.log").exists());
        assert_eq!(store.read_from(&k, 0).await.expect("read"), lines(0..3));
    }

    #[test]
    fn names_are_encoded_into_one_file_name() {
        let long = "構".repeat(40);
        let other = format!("{}x", "構".repeat(39));
        assert!(encode_name(&long).len() <= MAX_ENCODED_NAME);
        assert_ne!(encode_name(&long), encode_name(&other));
        assert_eq!(encode_name("build"), "build");
        assert_eq!(encode_name("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_name(".."), "%2E.");
        assert_eq!(encode_name(""), "%00");
    }
}
