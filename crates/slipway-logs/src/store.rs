//! The local store: every service's records in append-only segment files, committed with
//! the collector's checkpoints so that a record is kept exactly once across crashes.
//!
//! # Layout
//!
//! ```text
//! <dir>/<env>/<stack>/<service>/        names escaped (see `escape_name`)
//!     00000000000000000000.log          segments, named by their base position
//!     00000000000000000000.idx          sparse index of a closed segment (time per ~256 KiB)
//!     00000000000067108864.log
//!     checkpoint.json                   committed end, per-container checkpoints, segment times
//!     containers.json                   ContainerMeta of each container that wrote here
//! ```
//!
//! One line per record:
//! `time_ns \t o|e \t container12 \t replica \t revision \t fields-json \t message \n`, the
//! message (and revision) with `\\`, `\n`, `\t`, `\r` escaped, empty fields for none.
//!
//! # Commit protocol
//!
//! [`Store::commit`] appends to the active segment, `fdatasync`s it, then writes the
//! service's `checkpoint.json` once (temporary file, fsync, rename): the committed end and
//! the checkpoints of the containers whose records were appended change together. On
//! [`Store::open`] anything past the committed end is truncated: the collector reads it
//! again from its checkpoint. Readers never see past the committed end.
//!
//! # Search
//!
//! Segments whose time range misses a query's `since`/`until` are not read, nor are the
//! blocks of the sparse index that miss it; lines are split with `memchr`, filtered on
//! their raw fields, and only unescaped (into a reused buffer) for the regex when they
//! hold an escape; only matches are decoded into [`Record`]s.
//!
//! # Retention
//!
//! [`Retention::default`] is 7 days and 1 GiB per service. [`Store::enforce_retention`]
//! (the collector runs it every minute) removes whole closed segments, oldest first; the
//! active segment is never removed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::record::{ContainerMeta, Record, ServiceKey, Stream, strip_ansi};
use crate::source::{Batch, LogSource, Positioned};

/// Segments are closed at this size unless [`StoreOptions::segment_bytes`] says otherwise.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

const CHECKPOINT_FILE: &str = "checkpoint.json";
const CONTAINERS_FILE: &str = "containers.json";
const SEGMENT_EXT: &str = "log";
const SCAN_CHUNK: usize = 1024 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn corrupt(path: &Path, offset: u64, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: offset {offset}: {what}", path.display()),
    )
}

/// How much of a service's log retention keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Closed segments whose newest record is older are removed.
    pub max_age: Duration,
    /// Oldest closed segments are removed while the service's log is larger.
    pub max_bytes: u64,
}

impl Default for Retention {
    /// 7 days, 1 GiB per service.
    fn default() -> Self {
        Retention {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// Retention for every service, and per environment where it differs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub default: Retention,
    pub per_env: BTreeMap<String, Retention>,
}

/// A bad `--log-retention` value.
#[derive(Debug, thiserror::Error)]
#[error("--log-retention {arg:?}: {what}")]
pub struct RetentionArgError {
    pub arg: String,
    pub what: String,
}

impl RetentionPolicy {
    pub fn for_env(&self, env: &str) -> Retention {
        self.per_env.get(env).copied().unwrap_or(self.default)
    }

    /// Applies one `--log-retention` value, `[ENV=]AGE[,SIZE]` (`14d,2GiB`, `staging=2d`,
    /// `prod=30d,10GiB`): without `ENV` it sets the default. A size left out is the
    /// default's (for an environment: the default as set so far).
    pub fn parse_arg(&mut self, arg: &str) -> Result<(), RetentionArgError> {
        let err = |what: String| RetentionArgError {
            arg: arg.to_owned(),
            what,
        };
        let (env, rest) = match arg.split_once('=') {
            Some((env, rest)) => {
                let env = env.trim();
                if env.is_empty() {
                    return Err(err("empty environment before '='".to_owned()));
                }
                (Some(env), rest)
            }
            None => (None, arg),
        };
        let (age, size) = match rest.split_once(',') {
            Some((a, s)) => (a.trim(), Some(s.trim())),
            None => (rest.trim(), None),
        };
        let max_age = humantime::parse_duration(age)
            .map_err(|e| err(format!("age {age:?}: {e} (like 7d, 36h)")))?;
        let base = self.default;
        let max_bytes = match size {
            Some(s) => parse_size(s).map_err(|e| err(format!("size {s:?}: {e}")))?,
            None => base.max_bytes,
        };
        let r = Retention { max_age, max_bytes };
        match env {
            Some(env) => {
                self.per_env.insert(env.to_owned(), r);
            }
            None => self.default = r,
        }
        Ok(())
    }

    /// A policy from every `--log-retention` value, in order.
    pub fn from_args<S: AsRef<str>>(args: &[S]) -> Result<Self, RetentionArgError> {
        let mut p = RetentionPolicy::default();
        for a in args {
            p.parse_arg(a.as_ref())?;
        }
        Ok(p)
    }
}

/// `512MiB`, `2GiB`, `1GB`, `100k`, `12345` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| "expected a number then a unit (like 1GiB, 500MB)".to_owned())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit {other:?} (B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)"
            ));
        }
    };
    Ok((num * mult as f64) as u64)
}

/// How a [`Store`] is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// A segment is closed (and a new one started) once it is at least this large.
    pub segment_bytes: u64,
    pub retention: RetentionPolicy,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            retention: RetentionPolicy::default(),
        }
    }
}

/// Where the collector is in one container's output: the engine timestamp of the last
/// record stored and how many records (counted in frames' timestamps) had exactly that
/// timestamp, so that resuming with `since` skips exactly those.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub ts_ns: i64,
    pub count_at_ts: u64,
}

/// What one service gets in one [`Store::commit`].
#[derive(Debug, Clone)]
pub struct Append {
    pub key: ServiceKey,
    pub records: Vec<Record>,
    /// Full container id → its checkpoint after these records.
    pub checkpoints: Vec<(String, Checkpoint)>,
    /// Containers that wrote (or will write) here, kept in `containers.json`.
    pub containers: Vec<ContainerMeta>,
}

/// What to search.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub env: Option<String>,
    pub stack: Option<String>,
    pub service: Option<String>,
    /// Records at or after, in nanoseconds since the epoch.
    pub since_ns: Option<i64>,
    /// Records before.
    pub until_ns: Option<i64>,
    /// Matched against the message without ANSI escapes.
    pub grep: Option<regex::Regex>,
    pub revision: Option<String>,
    pub replica: Option<u32>,
    pub stream: Option<Stream>,
    /// Only the last so many (across the services, by time).
    pub tail: Option<usize>,
}

impl Query {
    fn wants(&self, key: &ServiceKey) -> bool {
        self.env.as_deref().is_none_or(|e| e == key.env)
            && self.stack.as_deref().is_none_or(|s| s == key.stack)
            && self.service.as_deref().is_none_or(|s| s == key.service)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SegMeta {
    base: u64,
    min_ts: i64,
    max_ts: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CheckpointFile {
    end: u64,
    #[serde(default)]
    containers: BTreeMap<String, Checkpoint>,
    #[serde(default)]
    segments: Vec<SegMeta>,
}

#[derive(Debug, Clone)]
struct Segment {
    base: u64,
    /// Committed bytes.
    len: u64,
    min_ts: i64,
    max_ts: i64,
    /// The sparse index: blocks of about [`BLOCK_BYTES`] starting at record boundaries,
    /// with their time range, so that a time-bounded search reads only the blocks that
    /// may match. Kept in `<base>.idx` once the segment is closed; rebuilt by a scan for
    /// the active segment on open.
    blocks: Arc<Vec<Block>>,
}

/// One stretch of a segment in the sparse index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Block {
    /// Offset in the segment of its first record.
    offset: u64,
    min_ts: i64,
    max_ts: i64,
}

/// The sparse index's granularity.
const BLOCK_BYTES: u64 = 256 * 1024;

fn index_record(blocks: &mut Vec<Block>, offset: u64, ts: i64) {
    match blocks.last_mut() {
        Some(b) if offset - b.offset < BLOCK_BYTES => {
            b.min_ts = b.min_ts.min(ts);
            b.max_ts = b.max_ts.max(ts);
        }
        _ => blocks.push(Block {
            offset,
            min_ts: ts,
            max_ts: ts,
        }),
    }
}

fn index_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.idx"))
}

impl Segment {
    fn path(&self, dir: &Path) -> PathBuf {
        segment_path(dir, self.base)
    }
    fn widen(&mut self, ts: i64) {
        if self.len == 0 && self.min_ts == i64::MAX {
            self.min_ts = ts;
            self.max_ts = ts;
        } else {
            self.min_ts = self.min_ts.min(ts);
            self.max_ts = self.max_ts.max(ts);
        }
    }
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.{SEGMENT_EXT}"))
}

#[derive(Debug)]
struct ServiceLog {
    dir: PathBuf,
    /// Oldest first; the last is the active one. Never empty once written to.
    segments: Vec<Segment>,
    end: u64,
    checkpoints: BTreeMap<String, Checkpoint>,
    containers: BTreeMap<String, ContainerMeta>,
    active: Option<File>,
}

#[derive(Debug, Clone)]
struct Snapshot {
    dir: PathBuf,
    segments: Vec<Segment>,
    end: u64,
}

impl Snapshot {
    fn start(&self) -> u64 {
        self.segments.first().map_or(self.end, |s| s.base)
    }
}

/// A JSON file's value, the default when there is no file; a file that does not parse is
/// an error naming it.
fn read_json_or_default<T: Default + serde::de::DeserializeOwned>(path: &Path) -> io::Result<T> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(e),
    }
}

impl ServiceLog {
    fn open(dir: PathBuf) -> io::Result<ServiceLog> {
        let ck: CheckpointFile = read_json_or_default(&dir.join(CHECKPOINT_FILE))?;
        let containers: BTreeMap<String, ContainerMeta> =
            read_json_or_default(&dir.join(CONTAINERS_FILE))?;
        let mut bases = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(".log")
                && let Ok(base) = stem.parse::<u64>()
            {
                bases.push(base);
            }
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
        bases.sort_unstable();
        let metas: HashMap<u64, &SegMeta> = ck.segments.iter().map(|m| (m.base, m)).collect();
        let mut segments = Vec::new();
        for (i, &base) in bases.iter().enumerate() {
            let path = segment_path(&dir, base);
            if base >= ck.end {
                // Started after the last commit: nothing in it is committed.
                fs::remove_file(&path)?;
                continue;
            }
            let file_len = fs::metadata(&path)?.len();
            let next = bases.get(i + 1).copied().filter(|&n| n < ck.end);
            let committed = match next {
                Some(n) => n - base,
                None => ck.end.saturating_sub(base),
            };
            if file_len < committed {
                return Err(corrupt(
                    &path,
                    file_len,
                    format!("segment ends before the committed end {}", ck.end),
                ));
            }
            if file_len > committed {
                // Appended but not committed: the collector reads it again.
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(committed)?;
                f.sync_data()?;
            }
            let mut seg = Segment {
                base,
                len: committed,
                min_ts: i64::MAX,
                max_ts: i64::MIN,
                blocks: Arc::default(),
            };
            let last = bases[i + 1..].iter().all(|&n| n >= ck.end);
            let saved: Option<Vec<Block>> = if last {
                None
            } else {
                fs::read(index_path(&dir, base))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
            };
            match (metas.get(&base), saved) {
                (Some(m), Some(blocks)) => {
                    seg.min_ts = m.min_ts;
                    seg.max_ts = m.max_ts;
                    seg.blocks = Arc::new(blocks);
                }
                (meta, _) => {
                    // The active segment (or an index lost): scan.
                    let mut lo = i64::MAX;
                    let mut hi = i64::MIN;
                    let mut blocks = Vec::new();
                    let scanned = scan(&path, base, base, base + committed, &mut |pos, line| {
                        let l = parse_line(line)?;
                        lo = lo.min(l.time_ns);
                        hi = hi.max(l.time_ns);
                        index_record(&mut blocks, pos - base, l.time_ns);
                        Ok(true)
                    });
                    match scanned {
                        Ok(()) => {
                            seg.min_ts = lo;
                            seg.max_ts = hi;
                            seg.blocks = Arc::new(blocks);
                        }
                        Err(e) => {
                            // Kept without an index: reads that reach the bad line say so.
                            tracing::warn!("log segment not indexed: {e}");
                            seg.min_ts = meta.map_or(i64::MIN, |m| m.min_ts);
                            seg.max_ts = meta.map_or(i64::MAX, |m| m.max_ts);
                        }
                    }
                }
            }
            segments.push(seg);
        }
        Ok(ServiceLog {
            dir,
            segments,
            end: ck.end,
            checkpoints: ck.containers,
            containers,
            active: None,
        })
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            dir: self.dir.clone(),
            segments: self.segments.clone(),
            end: self.end,
        }
    }

    fn write_checkpoint(&self) -> io::Result<()> {
        let ck = CheckpointFile {
            end: self.end,
            containers: self.checkpoints.clone(),
            segments: self
                .segments
                .iter()
                .map(|s| SegMeta {
                    base: s.base,
                    min_ts: s.min_ts,
                    max_ts: s.max_ts,
                })
                .collect(),
        };
        let bytes = serde_json::to_vec(&ck).map_err(io::Error::other)?;
        write_atomic(&self.dir, CHECKPOINT_FILE, &bytes)
    }

    fn append(&mut self, a: &Append, segment_bytes: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        let mut meta_changed = false;
        for c in &a.containers {
            if self.containers.get(&c.id) != Some(c) {
                self.containers.insert(c.id.clone(), c.clone());
                meta_changed = true;
            }
        }
        if meta_changed {
            let bytes = serde_json::to_vec_pretty(&self.containers).map_err(io::Error::other)?;
            write_atomic(&self.dir, CONTAINERS_FILE, &bytes)?;
        }
        if !a.records.is_empty() {
            let need_new = match self.segments.last() {
                None => true,
                Some(s) => s.len >= segment_bytes,
            };
            if need_new {
                if let Some(closed) = self.segments.last() {
                    let bytes =
                        serde_json::to_vec(closed.blocks.as_ref()).map_err(io::Error::other)?;
                    let name = format!("{:020}.idx", closed.base);
                    write_atomic(&self.dir, &name, &bytes)?;
                }
                let seg = Segment {
                    base: self.end,
                    len: 0,
                    min_ts: i64::MAX,
                    max_ts: i64::MIN,
                    blocks: Arc::default(),
                };
                let path = seg.path(&self.dir);
                let f = OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .open(&path)?;
                sync_dir(&self.dir)?;
                self.active = Some(f);
                self.segments.push(seg);
            }
            if self.active.is_none() {
                let seg = self
                    .segments
                    .last()
                    .ok_or_else(|| io::Error::other("no active segment"))?;
                let f = OpenOptions::new().write(true).open(seg.path(&self.dir))?;
                self.active = Some(f);
            }
            buf.clear();
            let (Some(f), Some(seg)) = (self.active.as_mut(), self.segments.last_mut()) else {
                return Err(io::Error::other("no active segment"));
            };
            let (mut lo, mut hi) = (i64::MAX, i64::MIN);
            let mut blocks = seg.blocks.as_ref().clone();
            for r in &a.records {
                index_record(&mut blocks, seg.len + buf.len() as u64, r.time_ns);
                encode(r, buf);
                lo = lo.min(r.time_ns);
                hi = hi.max(r.time_ns);
            }
            f.write_all_at(buf, seg.len)?;
            f.sync_data()?;
            seg.widen(lo);
            seg.widen(hi);
            seg.len += buf.len() as u64;
            seg.blocks = Arc::new(blocks);
        }
        let new_end = self.segments.last().map_or(self.end, |s| s.base + s.len);
        let old_end = self.end;
        let old_ck: Vec<_> = a
            .checkpoints
            .iter()
            .map(|(id, _)| (id.clone(), self.checkpoints.get(id).copied()))
            .collect();
        self.end = new_end;
        for (id, ck) in &a.checkpoints {
            self.checkpoints.insert(id.clone(), *ck);
        }
        if let Err(e) = self.write_checkpoint() {
            // Not committed: undo in memory; the bytes past the end are truncated on open
            // and overwritten by the next append.
            self.end = old_end;
            if let Some(seg) = self.segments.last_mut() {
                seg.len = old_end.saturating_sub(seg.base);
                let len = seg.len;
                let mut blocks = seg.blocks.as_ref().clone();
                blocks.retain(|b| b.offset < len);
                seg.blocks = Arc::new(blocks);
            }
            for (id, ck) in old_ck {
                match ck {
                    Some(ck) => self.checkpoints.insert(id, ck),
                    None => self.checkpoints.remove(&id),
                };
            }
            return Err(e);
        }
        Ok(())
    }

    /// Removes closed segments past `r`; the bytes removed.
    fn retain(&mut self, r: Retention, now_ns: i64) -> io::Result<u64> {
        let cutoff = now_ns.saturating_sub(i64::try_from(r.max_age.as_nanos()).unwrap_or(i64::MAX));
        let mut total: u64 = self.segments.iter().map(|s| s.len).sum();
        let mut removed = 0;
        while self.segments.len() > 1 {
            let s = &self.segments[0];
            if s.max_ts < cutoff || total > r.max_bytes {
                let path = s.path(&self.dir);
                total -= s.len;
                removed += s.len;
                let idx = index_path(&self.dir, s.base);
                self.segments.remove(0);
                let _ = fs::remove_file(idx);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            } else {
                break;
            }
        }
        if removed > 0 {
            self.write_checkpoint()?;
        }
        Ok(removed)
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// A path component for `name`: ASCII letters, digits, `_`, `-` and (not leading) `.`
/// kept, every other byte `%XX`; the empty name is `%`. Reversed by [`unescape_name`].
pub fn escape_name(name: &str) -> String {
    if name.is_empty() {
        return "%".to_owned();
    }
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The name [`escape_name`] made `s` from.
pub fn unescape_name(s: &str) -> Option<String> {
    if s == "%" {
        return Some(String::new());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn escape_into(s: &str, out: &mut Vec<u8>) {
    let b = s.as_bytes();
    let mut last = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\t' => b"\\t",
            b'\r' => b"\\r",
            _ => continue,
        };
        out.extend_from_slice(&b[last..i]);
        out.extend_from_slice(esc);
        last = i + 1;
    }
    out.extend_from_slice(&b[last..]);
}

fn needs_unescape(b: &[u8]) -> bool {
    memchr::memchr(b'\\', b).is_some()
}

fn unescape_into(b: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
    out.clear();
    let mut last = 0;
    for i in memchr::memchr_iter(b'\\', b) {
        if i < last {
            continue;
        }
        out.extend_from_slice(&b[last..i]);
        let c = *b.get(i + 1).ok_or("escape at the end of a field")?;
        out.push(match c {
            b'\\' => b'\\',
            b'n' => b'\n',
            b't' => b'\t',
            b'r' => b'\r',
            _ => return Err("unknown escape"),
        });
        last = i + 2;
    }
    out.extend_from_slice(&b[last..]);
    Ok(())
}

fn encode(r: &Record, out: &mut Vec<u8>) {
    use std::io::Write as _;
    let _ = write!(out, "{}", r.time_ns);
    out.extend_from_slice(match r.stream {
        Stream::Stdout => b"\to\t",
        Stream::Stderr => b"\te\t",
    });
    escape_into(r.container.get(..12).unwrap_or(&r.container), out);
    out.push(b'\t');
    if let Some(rep) = r.replica {
        let _ = write!(out, "{rep}");
    }
    out.push(b'\t');
    if let Some(rev) = &r.revision {
        escape_into(rev, out);
    }
    out.push(b'\t');
    if let Some(f) = &r.fields {
        // Compact JSON escapes control characters in strings: no raw tabs or newlines.
        let _ = serde_json::to_writer(&mut *out, f);
    }
    out.push(b'\t');
    escape_into(&r.line, out);
    out.push(b'\n');
}

/// One stored line, undecoded.
#[derive(Debug)]
struct Line<'a> {
    time_ns: i64,
    stream: Stream,
    container: &'a [u8],
    replica: &'a [u8],
    revision: &'a [u8],
    fields: &'a [u8],
    message: &'a [u8],
}

fn parse_i64(b: &[u8]) -> Option<i64> {
    let (neg, digits) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(if neg { -v } else { v })
}

fn parse_line(line: &[u8]) -> io::Result<Line<'_>> {
    parse_line_inner(line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn parse_line_inner(line: &[u8]) -> Result<Line<'_>, &'static str> {
    let mut tabs = memchr::memchr_iter(b'\t', line);
    let mut cut = [0usize; 6];
    for c in &mut cut {
        *c = tabs.next().ok_or("too few fields")?;
    }
    let time_ns = parse_i64(&line[..cut[0]]).ok_or("bad time")?;
    let stream = match &line[cut[0] + 1..cut[1]] {
        b"o" => Stream::Stdout,
        b"e" => Stream::Stderr,
        _ => return Err("bad stream"),
    };
    Ok(Line {
        time_ns,
        stream,
        container: &line[cut[1] + 1..cut[2]],
        replica: &line[cut[2] + 1..cut[3]],
        revision: &line[cut[3] + 1..cut[4]],
        fields: &line[cut[4] + 1..cut[5]],
        message: &line[cut[5] + 1..],
    })
}

fn field_string(b: &[u8], buf: &mut Vec<u8>) -> Result<String, &'static str> {
    let bytes = if needs_unescape(b) {
        unescape_into(b, buf)?;
        buf.as_slice()
    } else {
        b
    };
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| "not UTF-8")
}

fn decode(l: &Line<'_>, buf: &mut Vec<u8>) -> Result<Record, &'static str> {
    let replica = if l.replica.is_empty() {
        None
    } else {
        Some(
            std::str::from_utf8(l.replica)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or("bad replica")?,
        )
    };
    let revision = if l.revision.is_empty() {
        None
    } else {
        Some(field_string(l.revision, buf)?)
    };
    let fields = if l.fields.is_empty() {
        None
    } else {
        Some(serde_json::from_slice(l.fields).map_err(|_| "bad fields JSON")?)
    };
    Ok(Record {
        time_ns: l.time_ns,
        stream: l.stream,
        container: field_string(l.container, buf)?,
        replica,
        revision,
        line: field_string(l.message, buf)?,
        fields,
    })
}

/// Calls `f(position, line)` (without its newline) for each line of the segment at `path`
/// (based at `base`) in `[from, to)`; stops when `f` says `false`.
fn scan(
    path: &Path,
    base: u64,
    from: u64,
    to: u64,
    f: &mut dyn FnMut(u64, &[u8]) -> io::Result<bool>,
) -> io::Result<()> {
    if from >= to {
        return Ok(());
    }
    let file = File::open(path)?;
    let mut buf = vec![0u8; SCAN_CHUNK.min((to - from) as usize)];
    let mut filled = 0usize;
    let mut pos = from; // position of buf[0]
    let mut read_at = from; // next byte to read
    while read_at < to || filled > 0 {
        if read_at < to {
            if filled == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
            let want = (buf.len() - filled).min((to - read_at) as usize);
            let n = file.read_at(&mut buf[filled..filled + want], read_at - base)?;
            if n == 0 {
                return Err(corrupt(
                    path,
                    read_at - base,
                    "file ends before the committed end",
                ));
            }
            filled += n;
            read_at += n as u64;
        }
        let mut start = 0usize;
        for nl in memchr::memchr_iter(b'\n', &buf[..filled]) {
            let line = &buf[start..nl];
            let p = pos + start as u64;
            match f(p, line) {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(e)
                    if e.kind() == io::ErrorKind::InvalidData
                        && !e.to_string().contains(": offset ") =>
                {
                    return Err(corrupt(path, p - base, e));
                }
                Err(e) => return Err(e),
            }
            start = nl + 1;
        }
        if start == 0 && read_at >= to && filled > 0 {
            return Err(corrupt(path, pos - base, "line without its newline"));
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        pos += start as u64;
    }
    Ok(())
}

/// What a [`Query`] asks of a line, prepared once.
#[derive(Debug)]
struct Filter<'q> {
    q: &'q Query,
    revision: Option<Vec<u8>>,
    replica: Option<Vec<u8>>,
}

impl<'q> Filter<'q> {
    fn new(q: &'q Query) -> Self {
        Filter {
            q,
            revision: q.revision.as_ref().map(|r| {
                let mut v = Vec::new();
                escape_into(r, &mut v);
                v
            }),
            replica: q.replica.map(|r| r.to_string().into_bytes()),
        }
    }

    fn segment_may_match(&self, s: &Segment) -> bool {
        if s.len == 0 {
            return false;
        }
        if let Some(since) = self.q.since_ns
            && s.max_ts < since
        {
            return false;
        }
        if let Some(until) = self.q.until_ns
            && s.min_ts >= until
        {
            return false;
        }
        true
    }

    /// The stretches `[from, to)` (positions) of `s` whose blocks may hold a match.
    fn ranges(&self, s: &Segment) -> Vec<(u64, u64)> {
        let end = s.base + s.len;
        if self.q.since_ns.is_none() && self.q.until_ns.is_none() || s.blocks.is_empty() {
            return vec![(s.base, end)];
        }
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (i, b) in s.blocks.iter().enumerate() {
            if b.offset >= s.len {
                break;
            }
            let may = self.q.since_ns.is_none_or(|t| b.max_ts >= t)
                && self.q.until_ns.is_none_or(|t| b.min_ts < t);
            if !may {
                continue;
            }
            let from = s.base + b.offset;
            let to = s
                .blocks
                .get(i + 1)
                .map_or(end, |n| (s.base + n.offset).min(end));
            match out.last_mut() {
                Some(last) if last.1 == from => last.1 = to,
                _ => out.push((from, to)),
            }
        }
        out
    }

    fn matches(&self, l: &Line<'_>, buf: &mut Vec<u8>) -> io::Result<bool> {
        if self.q.since_ns.is_some_and(|s| l.time_ns < s)
            || self.q.until_ns.is_some_and(|u| l.time_ns >= u)
            || self.q.stream.is_some_and(|s| s != l.stream)
            || self.replica.as_deref().is_some_and(|r| r != l.replica)
            || self.revision.as_deref().is_some_and(|r| r != l.revision)
        {
            return Ok(false);
        }
        let Some(re) = &self.q.grep else {
            return Ok(true);
        };
        let bytes = if needs_unescape(l.message) {
            unescape_into(l.message, buf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            buf.as_slice()
        } else {
            l.message
        };
        let text = std::str::from_utf8(bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "message not UTF-8"))?;
        Ok(re.is_match(&strip_ansi(text)))
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The store of every service's records; share it as `Arc<Store>` (it locks inside).
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    opts: StoreOptions,
    services: RwLock<BTreeMap<ServiceKey, Arc<Mutex<ServiceLog>>>>,
    /// Full container id → the service it writes to (from checkpoints).
    owners: RwLock<HashMap<String, ServiceKey>>,
    commits: watch::Sender<u64>,
    /// Serializes commits (one writer; also retention).
    write: Mutex<Vec<u8>>,
}

impl Store {
    /// Opens (creating) the store in `dir`, truncating what was appended but never
    /// committed.
    pub fn open(dir: impl Into<PathBuf>, opts: StoreOptions) -> io::Result<Store> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        let mut services = BTreeMap::new();
        let mut owners = HashMap::new();
        for env in read_subdirs(&dir)? {
            for stack in read_subdirs(&env.1)? {
                for service in read_subdirs(&stack.1)? {
                    let (Some(e), Some(st), Some(sv)) = (
                        unescape_name(&env.0),
                        unescape_name(&stack.0),
                        unescape_name(&service.0),
                    ) else {
                        tracing::warn!(dir = %service.1.display(), "not a service's log directory");
                        continue;
                    };
                    let key = ServiceKey::new(e, st, sv);
                    let log = ServiceLog::open(service.1)?;
                    for id in log.checkpoints.keys() {
                        owners.insert(id.clone(), key.clone());
                    }
                    services.insert(key, Arc::new(Mutex::new(log)));
                }
            }
        }
        Ok(Store {
            dir,
            opts,
            services: RwLock::new(services),
            owners: RwLock::new(owners),
            commits: watch::channel(0).0,
            write: Mutex::new(Vec::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn options(&self) -> &StoreOptions {
        &self.opts
    }

    fn service(&self, key: &ServiceKey) -> Option<Arc<Mutex<ServiceLog>>> {
        self.services
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    fn service_or_create(&self, key: &ServiceKey) -> io::Result<Arc<Mutex<ServiceLog>>> {
        if let Some(s) = self.service(key) {
            return Ok(s);
        }
        let dir = self
            .dir
            .join(escape_name(&key.env))
            .join(escape_name(&key.stack))
            .join(escape_name(&key.service));
        fs::create_dir_all(&dir)?;
        let log = Arc::new(Mutex::new(ServiceLog::open(dir)?));
        let mut w = self
            .services
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(w.entry(key.clone()).or_insert(log).clone())
    }

    /// Appends and commits: per service, records appended and synced, then its
    /// checkpoint file written once. Subscribers are woken after.
    pub fn commit(&self, appends: &[Append]) -> io::Result<()> {
        let mut buf = lock(&self.write);
        let mut result = Ok(());
        let mut any = false;
        for a in appends {
            if a.records.is_empty() && a.checkpoints.is_empty() && a.containers.is_empty() {
                continue;
            }
            let r = self
                .service_or_create(&a.key)
                .and_then(|log| lock(&log).append(a, self.opts.segment_bytes, &mut buf));
            match r {
                Ok(()) => {
                    any = true;
                    let mut owners = self.owners.write().unwrap_or_else(PoisonError::into_inner);
                    for (id, _) in &a.checkpoints {
                        if owners.get(id) != Some(&a.key) {
                            owners.insert(id.clone(), a.key.clone());
                        }
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if any {
            self.commits.send_modify(|n| *n += 1);
        }
        result
    }

    /// The committed checkpoint of a container (by full id) and the service it writes to.
    pub fn checkpoint(&self, container_id: &str) -> Option<(ServiceKey, Checkpoint)> {
        let key = self
            .owners
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(container_id)
            .cloned()?;
        let log = self.service(&key)?;
        let ck = lock(&log).checkpoints.get(container_id).copied()?;
        Some((key, ck))
    }

    /// Every container with a checkpoint: its service, what is known of it, its checkpoint.
    pub fn checkpoints(&self) -> Vec<(ServiceKey, String, Option<ContainerMeta>, Checkpoint)> {
        let services: Vec<_> = self
            .services
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut out = Vec::new();
        for (key, log) in services {
            let log = lock(&log);
            for (id, ck) in &log.checkpoints {
                out.push((
                    key.clone(),
                    id.clone(),
                    log.containers.get(id).cloned(),
                    *ck,
                ));
            }
        }
        out
    }

    /// Forgets a container's checkpoint (it is gone and its loss reported).
    pub fn forget_container(&self, container_id: &str) -> io::Result<()> {
        let _w = lock(&self.write);
        let key = self
            .owners
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(container_id);
        if let Some(key) = key
            && let Some(log) = self.service(&key)
        {
            let mut log = lock(&log);
            if log.checkpoints.remove(container_id).is_some() {
                log.write_checkpoint()?;
            }
        }
        Ok(())
    }

    /// Removes closed segments that retention no longer keeps; the bytes removed.
    pub fn enforce_retention(&self) -> io::Result<u64> {
        self.enforce_retention_at(now_ns())
    }

    /// [`Store::enforce_retention`] as if it were `now_ns`.
    pub fn enforce_retention_at(&self, now_ns: i64) -> io::Result<u64> {
        let _w = lock(&self.write);
        let services: Vec<_> = self
            .services
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut removed = 0;
        for (key, log) in services {
            let r = self.opts.retention.for_env(&key.env);
            removed += lock(&log).retain(r, now_ns)?;
        }
        Ok(removed)
    }

    fn snapshot(&self, key: &ServiceKey) -> Option<Snapshot> {
        let log = self.service(key)?;
        let snap = lock(&log).snapshot();
        Some(snap)
    }

    fn snapshots(&self, q: &Query) -> Vec<(ServiceKey, Snapshot)> {
        let services: Vec<_> = self
            .services
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(k, _)| q.wants(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        services
            .into_iter()
            .map(|(k, v)| {
                let s = lock(&v).snapshot();
                (k, s)
            })
            .collect()
    }

    /// Records matching `q`, merged by time across services (per service in stored
    /// order), the last `q.tail` of them when set.
    pub fn query(&self, q: &Query) -> io::Result<Vec<(ServiceKey, Positioned)>> {
        Ok(self.query_with_ends(q)?.0)
    }

    fn query_with_ends(&self, q: &Query) -> io::Result<(Vec<(ServiceKey, Positioned)>, Cursors)> {
        let filter = Filter::new(q);
        let mut out: Vec<(ServiceKey, Positioned)> = Vec::new();
        let mut ends = BTreeMap::new();
        let mut buf = Vec::new();
        for (key, snap) in self.snapshots(q) {
            ends.insert(key.clone(), snap.end);
            let found = match q.tail {
                Some(n) => query_tail(&snap, &filter, n, &mut buf)?,
                None => {
                    query_range(&snap, &filter, snap.start(), snap.end, usize::MAX, &mut buf)?.0
                }
            };
            out.extend(found.into_iter().map(|p| (key.clone(), p)));
        }
        out.sort_by(|a, b| {
            a.1.record
                .time_ns
                .cmp(&b.1.record.time_ns)
                .then_with(|| a.0.cmp(&b.0))
                .then_with(|| a.1.position.cmp(&b.1.position))
        });
        if let Some(n) = q.tail
            && out.len() > n
        {
            out.drain(..out.len() - n);
        }
        Ok((out, ends))
    }

    /// The tail of `q` (all of it without `q.tail`), then every new committed record that
    /// matches, as it is committed.
    pub fn follow(self: &Arc<Self>, q: Query) -> Follow {
        let rx = self.commits.subscribe();
        Follow {
            store: self.clone(),
            q,
            cursors: None,
            rx,
        }
    }
}

fn read_subdirs(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            out.push((e.file_name().to_string_lossy().into_owned(), e.path()));
        }
    }
    Ok(out)
}

/// Matching records of `snap` in `[from, to)`, at most `max`; and the position after the
/// last line looked at.
fn query_range(
    snap: &Snapshot,
    filter: &Filter<'_>,
    from: u64,
    to: u64,
    max: usize,
    buf: &mut Vec<u8>,
) -> io::Result<(Vec<Positioned>, u64)> {
    let mut out = Vec::new();
    let mut next = from;
    if max == 0 {
        return Ok((out, next));
    }
    for seg in &snap.segments {
        let seg_end = seg.base + seg.len;
        if seg_end <= from || seg.base >= to {
            continue;
        }
        if !filter.segment_may_match(seg) {
            next = next.max(seg_end.min(to));
            continue;
        }
        let path = seg.path(&snap.dir);
        let mut full = false;
        for (r_from, r_to) in filter.ranges(seg) {
            let (a, b) = (r_from.max(from), r_to.min(to));
            if a >= b {
                continue;
            }
            scan(&path, seg.base, a, b, &mut |pos, line| {
                next = pos + line.len() as u64 + 1;
                let l = parse_line(line)?;
                if filter.matches(&l, buf)? {
                    let record = decode(&l, buf)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    out.push(Positioned {
                        position: pos,
                        record,
                    });
                    if out.len() >= max {
                        full = true;
                        return Ok(false);
                    }
                }
                Ok(true)
            })?;
            if full {
                break;
            }
        }
        if full {
            break;
        }
        next = next.max(seg_end.min(to));
    }
    Ok((out, next))
}

/// The last `n` matching records of `snap`: segments newest first, positions only until
/// enough, then those decoded.
fn query_tail(
    snap: &Snapshot,
    filter: &Filter<'_>,
    n: usize,
    buf: &mut Vec<u8>,
) -> io::Result<Vec<Positioned>> {
    let mut found: VecDeque<Positioned> = VecDeque::new();
    if n == 0 {
        return Ok(Vec::new());
    }
    for seg in snap.segments.iter().rev() {
        if !filter.segment_may_match(seg) {
            continue;
        }
        let path = seg.path(&snap.dir);
        let mut positions: VecDeque<(u64, usize)> = VecDeque::new();
        for (a, b) in filter.ranges(seg) {
            scan(&path, seg.base, a, b, &mut |pos, line| {
                let l = parse_line(line)?;
                if filter.matches(&l, buf)? {
                    positions.push_back((pos, line.len()));
                    if positions.len() > n {
                        positions.pop_front();
                    }
                }
                Ok(true)
            })?;
        }
        let file = File::open(&path)?;
        let mut line = Vec::new();
        let mut these = Vec::with_capacity(positions.len());
        for (pos, len) in positions {
            line.resize(len, 0);
            file.read_exact_at(&mut line, pos - seg.base)?;
            let l = parse_line(&line).map_err(|e| corrupt(&path, pos - seg.base, e))?;
            let record = decode(&l, buf).map_err(|e| corrupt(&path, pos - seg.base, e))?;
            these.push(Positioned {
                position: pos,
                record,
            });
        }
        for p in these.into_iter().rev() {
            if found.len() >= n {
                break;
            }
            found.push_front(p);
        }
        if found.len() >= n {
            break;
        }
    }
    Ok(found.into())
}

impl LogSource for Store {
    fn services(&self) -> Vec<ServiceKey> {
        self.services
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    fn read(&self, key: &ServiceKey, from: u64, max: usize) -> io::Result<Batch> {
        let Some(snap) = self.snapshot(key) else {
            return Ok(Batch {
                records: Vec::new(),
                next: from,
                skipped: 0,
            });
        };
        let start = snap.start();
        let (from, skipped) = if from < start {
            (start, start - from)
        } else {
            (from, 0)
        };
        let q = Query::default();
        let filter = Filter::new(&q);
        let mut buf = Vec::new();
        let (records, next) = match query_range(&snap, &filter, from, snap.end, max, &mut buf) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Retention removed the segment meanwhile: once more, from what is kept.
                let Some(again) = self.snapshot(key) else {
                    return Err(e);
                };
                let start = again.start();
                let (from2, skipped2) = if from < start {
                    (start, start - from)
                } else {
                    (from, 0)
                };
                let (records, next) =
                    query_range(&again, &filter, from2, again.end, max, &mut buf)?;
                return Ok(Batch {
                    records,
                    next: next.max(from2),
                    skipped: skipped + skipped2,
                });
            }
            r => r?,
        };
        Ok(Batch {
            records,
            next: next.max(from),
            skipped,
        })
    }

    fn end(&self, key: &ServiceKey) -> u64 {
        self.snapshot(key).map_or(0, |s| s.end)
    }

    fn container(&self, key: &ServiceKey, id: &str) -> Option<ContainerMeta> {
        let log = self.service(key)?;
        let log = lock(&log);
        if let Some(c) = log.containers.get(id) {
            return Some(c.clone());
        }
        log.containers
            .values()
            .find(|c| c.short_id() == id || c.id.starts_with(id))
            .cloned()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.commits.subscribe()
    }
}

/// A live tail: see [`Store::follow`].
#[derive(Debug)]
pub struct Follow {
    store: Arc<Store>,
    q: Query,
    cursors: Option<BTreeMap<ServiceKey, u64>>,
    rx: watch::Receiver<u64>,
}

impl Follow {
    /// The first call: the tail; then waits for, and gives, newly committed matching
    /// records (never an empty batch). An error when the store is gone.
    pub async fn next(&mut self) -> io::Result<Vec<(ServiceKey, Positioned)>> {
        loop {
            self.rx.borrow_and_update();
            let store = self.store.clone();
            let q = self.q.clone();
            let cursors = self.cursors.take();
            let (out, cursors) =
                tokio::task::spawn_blocking(move || follow_step(&store, &q, cursors))
                    .await
                    .map_err(io::Error::other)??;
            self.cursors = Some(cursors);
            if !out.is_empty() {
                return Ok(out);
            }
            if self.rx.changed().await.is_err() {
                return Err(io::Error::other("the store was closed"));
            }
        }
    }
}

type Cursors = BTreeMap<ServiceKey, u64>;

fn follow_step(
    store: &Store,
    q: &Query,
    cursors: Option<Cursors>,
) -> io::Result<(Vec<(ServiceKey, Positioned)>, Cursors)> {
    let Some(mut cursors) = cursors else {
        return store.query_with_ends(q);
    };
    let mut live = q.clone();
    live.tail = None;
    let filter = Filter::new(&live);
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for (key, snap) in store.snapshots(&live) {
        let from = cursors.get(&key).copied().unwrap_or(0).max(snap.start());
        if from >= snap.end {
            continue;
        }
        let (found, _) = query_range(&snap, &filter, from, snap.end, usize::MAX, &mut buf)?;
        cursors.insert(key.clone(), snap.end);
        out.extend(found.into_iter().map(|p| (key.clone(), p)));
    }
    out.sort_by(|a, b| {
        a.1.record
            .time_ns
            .cmp(&b.1.record.time_ns)
            .then_with(|| a.0.cmp(&b.0))
            .then_with(|| a.1.position.cmp(&b.1.position))
    });
    Ok((out, cursors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_escape_reversibly() {
        for n in [
            "", "-", "web", "a/b", "..", ".hidden", "x y%z", "ünï", "a.b",
        ] {
            let e = escape_name(n);
            assert!(!e.contains('/') && e != "." && e != "..", "{e}");
            assert_eq!(unescape_name(&e).as_deref(), Some(n));
        }
    }

    #[test]
    fn lines_round_trip() {
        let r = Record {
            time_ns: 1_700_000_000_123_456_789,
            stream: Stream::Stderr,
            container: "0123456789abcdef".to_owned(),
            replica: Some(3),
            revision: Some("r\t1".to_owned()),
            line: "a\tb\nc\\n\r\u{1b}[31mred\u{1b}[0m\\".to_owned(),
            fields: serde_json::from_str(r#"{"k":"v\tw\nx"}"#).ok(),
        };
        let mut out = Vec::new();
        encode(&r, &mut out);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(out.iter().filter(|&&b| b == b'\t').count(), 6);
        let l = parse_line(&out[..out.len() - 1]).expect("parses");
        let mut buf = Vec::new();
        let back = decode(&l, &mut buf).expect("decodes");
        assert_eq!(back.container, "0123456789ab");
        assert_eq!(
            Record {
                container: r.container[..12].to_owned(),
                ..r
            },
            back
        );
    }

    #[test]
    fn retention_args() {
        let p = RetentionPolicy::from_args(&["14d,2GiB", "staging=2d", "prod=30d,10GB"])
            .expect("parses");
        assert_eq!(p.default.max_age, Duration::from_secs(14 * 86400));
        assert_eq!(p.default.max_bytes, 2 << 30);
        assert_eq!(p.for_env("staging").max_age, Duration::from_secs(2 * 86400));
        assert_eq!(p.for_env("staging").max_bytes, 2 << 30);
        assert_eq!(p.for_env("prod").max_bytes, 10_000_000_000);
        assert_eq!(p.for_env("other"), p.default);
        let e = RetentionPolicy::from_args(&["7x"]).expect_err("bad age");
        assert!(e.to_string().contains("age \"7x\""), "{e}");
        let e = RetentionPolicy::from_args(&["7d,3zB"]).expect_err("bad size");
        assert!(e.to_string().contains("size \"3zB\""), "{e}");
        let e = RetentionPolicy::from_args(&["=7d"]).expect_err("bad env");
        assert!(e.to_string().contains("environment"), "{e}");
        assert_eq!(RetentionPolicy::default().default, Retention::default());
    }
}
