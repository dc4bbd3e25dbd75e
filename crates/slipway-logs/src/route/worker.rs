//! The route worker: reads committed records through a [`LogSource`], sends those its
//! filter takes, and keeps a cursor per service that moves only over what was delivered.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::format::Outgoing;
use super::sink::{Sink, SinkError};
use super::uri::RouteUri;
use crate::record::{ContainerMeta, ServiceKey};
use crate::source::LogSource;

/// Records read (and sent) per service per turn.
pub const BATCH: usize = 500;
/// The longest wait between two attempts at a receiver that is down.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// How many refused records' reasons a status keeps.
const KEPT_REJECTIONS: usize = 20;

/// What a route has done, for the routes page and `slipway logs route ls`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteStatus {
    pub id: String,
    /// The URI, its password masked.
    pub uri: String,
    /// Records the receiver took (since this worker started).
    pub delivered: u64,
    /// Records the receiver refused for good (skipped).
    pub rejected: u64,
    /// The latest refusals' reasons, newest last.
    pub rejections: Vec<String>,
    /// Bytes lost to retention before the route read them.
    pub skipped_bytes: u64,
    /// Per service: how far the cursor is behind the end of its log.
    pub lag: Vec<ServiceLag>,
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
    pub connected: bool,
}

impl RouteStatus {
    /// Nothing delivered yet, not connected.
    fn new(id: String, uri: String) -> RouteStatus {
        RouteStatus {
            id,
            uri,
            delivered: 0,
            rejected: 0,
            rejections: Vec::new(),
            skipped_bytes: 0,
            lag: Vec::new(),
            last_error: None,
            last_error_at: None,
            connected: false,
        }
    }
}

/// A service's backlog on one route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceLag {
    pub service: ServiceKey,
    pub cursor: u64,
    /// Bytes of log after the cursor.
    pub bytes: u64,
    /// Records after the cursor, when known (the worker counts what its last read left:
    /// exact when that read reached the end, `None` while it is further behind).
    pub records: Option<u64>,
}

#[derive(Debug, Default)]
struct Shared {
    status: Option<RouteStatus>,
    cursors: BTreeMap<ServiceKey, u64>,
    /// Records the last read of a service left unread (0 when it reached the end).
    behind: BTreeMap<ServiceKey, Option<u64>>,
}

/// A running route: its status and its end.
pub struct RouteHandle {
    id: String,
    shared: Arc<Mutex<Shared>>,
    source: Arc<dyn LogSource>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for RouteHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteHandle")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl RouteHandle {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A snapshot: counters as of now, lag computed against the source's ends.
    pub fn status(&self) -> RouteStatus {
        let (mut status, cursors, behind) = {
            let g = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            (g.status.clone(), g.cursors.clone(), g.behind.clone())
        };
        let mut lag = Vec::new();
        let services = self.source.services();
        for key in services {
            let cursor = cursors.get(&key).copied().unwrap_or(0);
            let end = self.source.end(&key);
            let bytes = end.saturating_sub(cursor);
            let records = if bytes == 0 {
                Some(0)
            } else {
                behind.get(&key).copied().flatten()
            };
            lag.push(ServiceLag {
                service: key,
                cursor,
                bytes,
                records,
            });
        }
        let mut s = status
            .take()
            .unwrap_or_else(|| RouteStatus::new(self.id.clone(), String::new()));
        s.lag = lag;
        s
    }

    /// Asks this route's worker (only) to end, as the shutdown signal does: it finishes
    /// or drops the batch in flight (a dropped batch is sent again by the next worker)
    /// and closes its session. [`RouteHandle::join`] waits for it.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Whether the worker has ended (after the shutdown signal).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for the worker to end (send the shutdown signal first).
    pub async fn join(self) {
        let _ = self.task.await;
    }

    /// Ends the worker at once, wherever it is (a test's crash): what was sent but not
    /// yet recorded in the cursor is sent again by the next worker.
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// A route's cursors on disk: `CURSOR_DIR/ROUTE_ID.json`.
#[derive(Debug, Serialize, Deserialize)]
struct CursorFile {
    uri: String,
    cursors: Vec<(ServiceKey, u64)>,
}

fn cursor_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.json"))
}

fn load_cursors(path: &Path) -> io::Result<BTreeMap<ServiceKey, u64>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let f: CursorFile = serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("route cursor file {}: {e}", path.display()),
                )
            })?;
            Ok(f.cursors.into_iter().collect())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("reading route cursor file {}: {e}", path.display()),
        )),
    }
}

/// Writes the cursors atomically: a temporary file, fsync, rename, fsync of the directory.
fn save_cursors(path: &Path, uri: &str, cursors: &BTreeMap<ServiceKey, u64>) -> io::Result<()> {
    write_cursors(path, uri, cursors, true)
}

/// [`save_cursors`], durable (`sync`) or only safe from a kill of this process (a renamed
/// file in the page cache survives it): the cursor kept while RELP acknowledgements come
/// in, where an fsync per group of acknowledgements would cost more than it saves.
fn write_cursors(
    path: &Path,
    uri: &str,
    cursors: &BTreeMap<ServiceKey, u64>,
    sync: bool,
) -> io::Result<()> {
    use std::io::Write as _;
    let body = serde_json::to_vec(&CursorFile {
        uri: uri.to_string(),
        cursors: cursors.iter().map(|(k, v)| (k.clone(), *v)).collect(),
    })
    .map_err(io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&body)?;
    if sync {
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if sync
        && let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Errors starting a route.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("log route {uri}: {source}")]
    Sink { uri: String, source: SinkError },
    #[error("log route {uri}: cursor directory {dir}: {source}")]
    Cursors {
        uri: String,
        dir: String,
        source: io::Error,
    },
}

/// Starts a route's worker on the current Tokio runtime.
///
/// `cursor_dir` holds one file per route (named by [`RouteUri::id`]); the worker resumes
/// from it. `shutdown` ends the worker when it becomes `true` (RELP sessions are closed
/// with `close`).
pub fn spawn_route(
    uri: RouteUri,
    source: Arc<dyn LogSource>,
    cursor_dir: impl Into<PathBuf>,
    hostname: impl Into<String>,
    shutdown: watch::Receiver<bool>,
) -> Result<RouteHandle, SpawnError> {
    let cursor_dir = cursor_dir.into();
    let masked = uri.masked();
    let id = uri.id();
    let sink = Sink::new(&uri).map_err(|source| SpawnError::Sink {
        uri: masked.clone(),
        source,
    })?;
    let cursors_err = |source: io::Error| SpawnError::Cursors {
        uri: masked.clone(),
        dir: cursor_dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&cursor_dir).map_err(cursors_err)?;
    let path = cursor_path(&cursor_dir, &id);
    let cursors = load_cursors(&path).map_err(cursors_err)?;
    let shared = Arc::new(Mutex::new(Shared {
        status: Some(RouteStatus::new(id.clone(), masked.clone())),
        cursors: cursors.clone(),
        behind: BTreeMap::new(),
    }));
    let worker = Worker {
        uri,
        masked,
        source: source.clone(),
        sink,
        path,
        hostname: hostname.into(),
        cursors,
        metas: HashMap::new(),
        shared: shared.clone(),
    };
    // The worker watches one signal: this route's own, which the server-wide shutdown
    // (or its sender going away) also raises.
    let (stop, own) = watch::channel(false);
    let forward = stop.clone();
    let mut shutdown = shutdown;
    tokio::spawn(async move {
        loop {
            if *shutdown.borrow_and_update() {
                let _ = forward.send(true);
                return;
            }
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        let _ = forward.send(true);
                        return;
                    }
                }
                _ = forward.closed() => return,
            }
        }
    });
    let task = tokio::spawn(worker.run(own));
    Ok(RouteHandle {
        id,
        shared,
        source,
        stop,
        task,
    })
}

struct Worker {
    uri: RouteUri,
    masked: String,
    source: Arc<dyn LogSource>,
    sink: Sink,
    path: PathBuf,
    hostname: String,
    cursors: BTreeMap<ServiceKey, u64>,
    metas: HashMap<(ServiceKey, String), ContainerMeta>,
    shared: Arc<Mutex<Shared>>,
}

enum Turn {
    Progress,
    Idle,
    Failed(String),
}

impl Worker {
    fn update(&self, f: impl FnOnce(&mut RouteStatus)) {
        let mut g = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = g.status.as_mut() {
            f(s);
        }
    }

    fn error(&self, e: String) {
        tracing::warn!(route = %self.masked, "{e}");
        let connected = self.sink.connected();
        self.update(|s| {
            s.last_error = Some(e);
            s.last_error_at = Some(SystemTime::now());
            s.connected = connected;
        });
    }

    fn meta(&mut self, key: &ServiceKey, container: &str) -> ContainerMeta {
        let k = (key.clone(), container.to_string());
        if let Some(m) = self.metas.get(&k) {
            return m.clone();
        }
        let meta = self
            .source
            .container(key, container)
            .unwrap_or_else(|| ContainerMeta {
                id: container.to_string(),
                name: container.to_string(),
                image: String::new(),
                labels: BTreeMap::new(),
            });
        if self.metas.len() > 10_000 {
            self.metas.clear();
        }
        self.metas.insert(k, meta.clone());
        meta
    }

    fn set_cursor(&mut self, key: &ServiceKey, to: u64) -> Result<(), String> {
        self.cursors.insert(key.clone(), to);
        save_cursors(&self.path, &self.masked, &self.cursors)
            .map_err(|e| format!("saving the cursor {}: {e}", self.path.display()))?;
        let mut g = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        g.cursors.insert(key.clone(), to);
        Ok(())
    }

    /// One batch of one service.
    async fn turn(&mut self, key: &ServiceKey) -> Turn {
        let from = self.cursors.get(key).copied().unwrap_or(0);
        let batch = match self.source.read(key, from, BATCH) {
            Ok(b) => b,
            Err(e) => return Turn::Failed(format!("reading {key} from {from}: {e}")),
        };
        {
            let behind = if batch.records.len() < BATCH {
                Some(0)
            } else {
                None
            };
            let mut g = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            g.behind.insert(key.clone(), behind);
        }
        if batch.skipped > 0 {
            let skipped = batch.skipped;
            self.update(|s| s.skipped_bytes += skipped);
        }
        if batch.records.is_empty() {
            if batch.next > from {
                if let Err(e) = self.set_cursor(key, batch.next) {
                    return Turn::Failed(e);
                }
                return Turn::Progress;
            }
            return Turn::Idle;
        }
        let mut picked = Vec::new();
        for p in &batch.records {
            let meta = self.meta(key, &p.record.container);
            if self.uri.filter.matches(&meta, p.record.stream) {
                picked.push((p, meta));
            }
        }
        let out: Vec<Outgoing<'_>> = picked
            .iter()
            .map(|(p, meta)| Outgoing {
                key,
                position: p.position,
                record: &p.record,
                meta,
                hostname: &self.hostname,
            })
            .collect();
        // Acknowledged records move the cursor as they are acknowledged (RELP), not only
        // when the whole batch is.
        let (path, masked, mut cursors) = (&self.path, &self.masked, self.cursors.clone());
        let next_of = |done: usize| {
            if done >= out.len() {
                batch.next
            } else {
                out[done].position
            }
        };
        let mut progress = |done: usize| {
            cursors.insert(key.clone(), next_of(done));
            if let Err(e) = write_cursors(path, masked, &cursors, false) {
                tracing::warn!("saving the cursor {}: {e}", path.display());
            }
        };
        let sent = self.sink.send(&out, &mut progress).await;
        let done = sent.done.min(out.len());
        let to = if done == out.len() {
            batch.next
        } else {
            out[done].position
        };
        let rejected = sent.rejected.len() as u64;
        let delivered = done as u64 - rejected.min(done as u64);
        let connected = self.sink.connected();
        let rejections: Vec<String> = sent.rejected.into_iter().map(|(_, r)| r).collect();
        for r in &rejections {
            tracing::warn!(route = %self.masked, "{r}");
        }
        self.update(|s| {
            s.delivered += delivered;
            s.rejected += rejected;
            s.connected = connected;
            s.rejections.extend(rejections);
            let n = s.rejections.len();
            if n > KEPT_REJECTIONS {
                s.rejections.drain(..n - KEPT_REJECTIONS);
            }
        });
        if to > from
            && let Err(e) = self.set_cursor(key, to)
        {
            return Turn::Failed(e);
        }
        match sent.error {
            Some(e) => Turn::Failed(e.to_string()),
            None => Turn::Progress,
        }
    }

    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut changes = self.source.subscribe();
        let mut backoff = FIRST_BACKOFF;
        loop {
            if *shutdown.borrow() || shutdown.has_changed().is_err() {
                break;
            }
            changes.borrow_and_update();
            let mut progressed = false;
            let mut failure = None;
            for key in self.source.services() {
                let turn = tokio::select! {
                    t = self.turn(&key) => t,
                    _ = shutdown.changed() => break,
                };
                match turn {
                    Turn::Progress => progressed = true,
                    Turn::Idle => {}
                    Turn::Failed(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if *shutdown.borrow() || shutdown.has_changed().is_err() {
                break;
            }
            if let Some(e) = failure {
                self.error(e);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            backoff = FIRST_BACKOFF;
            if !progressed {
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = shutdown.changed() => {}
                    // The services list can change without a commit (retention).
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
        self.sink.close().await;
        self.update(|s| s.connected = false);
    }
}
