//! The collector: follows the selected containers' output through the Docker API and
//! commits it to the [`Store`] with per-container checkpoints, exactly once across
//! collector crashes, container restarts and engine restarts.
//!
//! - [`Selection`] says which containers ([`Selection::decide`]) and which service a
//!   container's records go to ([`service_key`]).
//! - [`Assembler`] turns one container's frames (with the engine's timestamps) into
//!   records: drops what the checkpoint says was stored, joins 16 KiB partials and
//!   multi-line records, and says at which checkpoint a batch of records ends.
//! - [`Collector::run`] discovers containers (list, events, a periodic re-list), runs one
//!   task per container and one writer that group-commits everything (bounded channels;
//!   the blocking IO on `spawn_blocking`).
//! - [`CollectorStatus`] (through [`StatusHandle`]) says what each container gave and what
//!   was lost.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::query_parameters::{
    EventsOptions, InspectContainerOptions, ListContainersOptions, LogsOptions,
};
use futures_util::{FutureExt, StreamExt};
use regex::Regex;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::record::{ContainerMeta, Record, ServiceKey, Stream};
use crate::route::glob;
use crate::store::{Append, Checkpoint, Store};

pub const LABEL_ENV: &str = "io.slipway.env";
pub const LABEL_STACK: &str = "io.slipway.stack";
pub const LABEL_SERVICE: &str = "io.slipway.service";
pub const LABEL_REVISION: &str = "io.slipway.revision";
pub const LABEL_REPLICA: &str = "io.slipway.replica";
pub const LABEL_MULTILINE: &str = "io.slipway.logs.multiline";
pub const LABEL_MULTILINE_TIMEOUT: &str = "io.slipway.logs.multiline-timeout";
pub const LABEL_JSON: &str = "io.slipway.logs.json";
/// `true` opts a container in, `false` out.
pub const LABEL_OPT: &str = "slipway.logs";
const COMPOSE_PROJECT: &str = "com.docker.compose.project";
const COMPOSE_SERVICE: &str = "com.docker.compose.service";

/// How long an open multi-line record waits for a continuation line by default.
pub const DEFAULT_MULTILINE_TIMEOUT: Duration = Duration::from_secs(1);

/// Which containers are collected.
///
/// A container is when it has the `io.slipway.env`/`stack`/`service` labels, or
/// `slipway.logs=true`, or matches one of the extra filters; never when it has
/// `slipway.logs=false` or `LOGSPOUT=ignore` in its environment.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Container names (`*`, `?` globs).
    pub names: Vec<String>,
    /// `key=value` labels.
    pub labels: Vec<(String, String)>,
}

impl Selection {
    /// Adds a filter: `name=GLOB` or `label=KEY=VALUE`.
    pub fn add_filter(&mut self, filter: &str) -> Result<(), String> {
        if let Some(g) = filter.strip_prefix("name=") {
            self.names.push(g.to_owned());
            Ok(())
        } else if let Some(kv) = filter.strip_prefix("label=")
            && let Some((k, v)) = kv.split_once('=')
        {
            self.labels.push((k.to_owned(), v.to_owned()));
            Ok(())
        } else {
            Err(format!(
                "log filter {filter:?}: expected name=GLOB or label=KEY=VALUE"
            ))
        }
    }

    /// The service `name`'s records go to, or `None` when it is not collected.
    pub fn decide<S: std::hash::BuildHasher>(
        &self,
        name: &str,
        labels: &HashMap<String, String, S>,
        env: &[String],
    ) -> Option<ServiceKey> {
        let opt = labels.get(LABEL_OPT).map(String::as_str);
        if opt == Some("false") || env.iter().any(|e| e == "LOGSPOUT=ignore") {
            return None;
        }
        let ours = [LABEL_ENV, LABEL_STACK, LABEL_SERVICE]
            .iter()
            .all(|l| labels.contains_key(*l));
        let wanted = ours
            || opt == Some("true")
            || self.names.iter().any(|g| glob(g, name))
            || self
                .labels
                .iter()
                .any(|(k, v)| labels.get(k).is_some_and(|x| x == v));
        wanted.then(|| service_key(name, labels))
    }
}

/// The service of a container: its `io.slipway` labels; else env `-`, stack its compose
/// project (or `-`), service its compose service (or its name).
pub fn service_key<S: std::hash::BuildHasher>(
    name: &str,
    labels: &HashMap<String, String, S>,
) -> ServiceKey {
    if let (Some(e), Some(st), Some(sv)) = (
        labels.get(LABEL_ENV),
        labels.get(LABEL_STACK),
        labels.get(LABEL_SERVICE),
    ) {
        return ServiceKey::new(e, st, sv);
    }
    ServiceKey::new(
        ServiceKey::OTHER_ENV,
        labels.get(COMPOSE_PROJECT).map_or("-", String::as_str),
        labels.get(COMPOSE_SERVICE).map_or(name, String::as_str),
    )
}

/// A frame's timestamp prefix (`2024-05-01T10:00:00.123456789Z `) to nanoseconds, and the
/// rest.
pub fn split_timestamp(frame: &[u8]) -> Result<(i64, &[u8]), String> {
    let sp = memchr::memchr(b' ', frame).unwrap_or(frame.len());
    let ts = std::str::from_utf8(&frame[..sp])
        .map_err(|_| format!("frame without a timestamp: {:?}", lossy_head(frame)))?;
    let t = humantime::parse_rfc3339(ts).map_err(|e| format!("bad frame timestamp {ts:?}: {e}"))?;
    let ns = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("frame timestamp before 1970: {ts:?}"))?
        .as_nanos();
    let ns = i64::try_from(ns).map_err(|_| format!("frame timestamp too late: {ts:?}"))?;
    Ok((ns, frame.get(sp + 1..).unwrap_or_default()))
}

fn lossy_head(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(60)]).into_owned()
}

/// How an [`Assembler`] makes records of a container's frames.
#[derive(Debug, Clone, Default)]
pub struct AssemblyRules {
    /// A line matching starts a record; others continue the open one.
    pub multiline: Option<Regex>,
    pub multiline_timeout: Option<Duration>,
    /// Parse a record that is a JSON object into [`Record::fields`].
    pub json: bool,
}

impl AssemblyRules {
    /// From a container's `io.slipway.logs.*` labels; a bad label is warned about and
    /// ignored.
    pub fn from_labels<S: std::hash::BuildHasher>(
        name: &str,
        labels: &HashMap<String, String, S>,
    ) -> Self {
        let multiline = labels.get(LABEL_MULTILINE).and_then(|r| {
            Regex::new(r)
                .map_err(|e| tracing::warn!(container = name, "bad {LABEL_MULTILINE} {r:?}: {e}"))
                .ok()
        });
        let multiline_timeout = labels.get(LABEL_MULTILINE_TIMEOUT).and_then(|t| {
            humantime::parse_duration(t)
                .map_err(|e| {
                    tracing::warn!(container = name, "bad {LABEL_MULTILINE_TIMEOUT} {t:?}: {e}")
                })
                .ok()
        });
        AssemblyRules {
            multiline,
            multiline_timeout,
            json: labels.get(LABEL_JSON).is_some_and(|v| v == "true"),
        }
    }
}

#[derive(Debug)]
struct Pending {
    stream: Stream,
    start_seq: u64,
    end_seq: u64,
    end_ck: Checkpoint,
    time_ns: i64,
    text: Vec<u8>,
    done: bool,
    last_frame: Instant,
}

/// One container's frames to records, with exactly-once checkpoints.
#[derive(Debug)]
pub struct Assembler {
    rules: AssemblyRules,
    container: String,
    replica: Option<u32>,
    revision: Option<String>,
    /// The position after the last frame taken (or skipped as already stored).
    pos: Checkpoint,
    /// Frames at `resume.ts_ns` still to skip.
    skip_at_ts: Option<(i64, u64)>,
    seq: u64,
    pending: VecDeque<Pending>,
    /// Per stream: whether its last frame ended mid-line (a partial).
    mid_line: [bool; 2],
    /// Per stream: the start seq of its open record.
    open: [Option<u64>; 2],
    ready: Vec<Record>,
    ready_ck: Option<Checkpoint>,
}

fn idx(s: Stream) -> usize {
    match s {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

impl Assembler {
    /// For container `container` (its 12-digit id) resuming after `resume`.
    pub fn new(
        rules: AssemblyRules,
        container: &str,
        replica: Option<u32>,
        revision: Option<String>,
        resume: Option<Checkpoint>,
    ) -> Self {
        Assembler {
            rules,
            container: container.get(..12).unwrap_or(container).to_owned(),
            replica,
            revision,
            pos: resume.unwrap_or_default(),
            skip_at_ts: resume.map(|c| (c.ts_ns, c.count_at_ts)),
            seq: 0,
            pending: VecDeque::new(),
            mid_line: [false; 2],
            open: [None; 2],
            ready: Vec::new(),
            ready_ck: None,
        }
    }

    /// The `since` (seconds) to ask the engine for: a second before the checkpoint.
    pub fn since_secs(&self) -> i32 {
        match self.skip_at_ts {
            None if self.pos.ts_ns == 0 => 0,
            _ => i32::try_from(self.pos.ts_ns / 1_000_000_000 - 1)
                .unwrap_or(0)
                .max(0),
        }
    }

    /// Where the records handed out so far end.
    pub fn position(&self) -> Checkpoint {
        self.pos
    }

    /// Takes one frame (timestamp prefix included). `Ok(false)` when it was already
    /// stored and is skipped.
    pub fn push(&mut self, stream: Stream, frame: &[u8], now: Instant) -> Result<bool, String> {
        let (ts, body) = split_timestamp(frame)?;
        if let Some((sts, left)) = self.skip_at_ts {
            if ts < sts {
                return Ok(false);
            }
            if ts == sts && left > 0 {
                self.skip_at_ts = Some((sts, left - 1));
                return Ok(false);
            }
            self.skip_at_ts = None;
        }
        self.pos = if ts == self.pos.ts_ns {
            Checkpoint {
                ts_ns: ts,
                count_at_ts: self.pos.count_at_ts + 1,
            }
        } else {
            Checkpoint {
                ts_ns: ts,
                count_at_ts: 1,
            }
        };
        self.seq += 1;
        let seq = self.seq;
        let s = idx(stream);
        let complete = body.ends_with(b"\n");
        let continues = if self.mid_line[s] {
            true
        } else if let Some(re) = &self.rules.multiline {
            let line = body.strip_suffix(b"\n").unwrap_or(body);
            self.open[s].is_some() && !re.is_match(&String::from_utf8_lossy(line))
        } else {
            false
        };
        let open = if continues { self.open[s] } else { None };
        match open.and_then(|o| self.pending.iter_mut().rev().find(|p| p.start_seq == o)) {
            Some(p) => {
                p.text.extend_from_slice(body);
                p.end_seq = seq;
                p.end_ck = self.pos;
                p.last_frame = now;
            }
            None => {
                if let Some(o) = self.open[s].take() {
                    self.close(o);
                }
                self.pending.push_back(Pending {
                    stream,
                    start_seq: seq,
                    end_seq: seq,
                    end_ck: self.pos,
                    time_ns: ts,
                    text: body.to_vec(),
                    done: false,
                    last_frame: now,
                });
                self.open[s] = Some(seq);
            }
        }
        self.mid_line[s] = !complete;
        if complete
            && self.rules.multiline.is_none()
            && let Some(o) = self.open[s].take()
        {
            self.close(o);
        }
        self.cut();
        Ok(true)
    }

    fn close(&mut self, start_seq: u64) {
        if let Some(p) = self
            .pending
            .iter_mut()
            .rev()
            .find(|p| p.start_seq == start_seq)
        {
            p.done = true;
        }
    }

    /// Closes open multi-line records that waited longer than the timeout.
    pub fn flush_expired(&mut self, now: Instant) {
        let timeout = self
            .rules
            .multiline_timeout
            .unwrap_or(DEFAULT_MULTILINE_TIMEOUT);
        for s in 0..2 {
            if self.mid_line[s] {
                continue;
            }
            if let Some(o) = self.open[s]
                && let Some(p) = self.pending.iter().rev().find(|p| p.start_seq == o)
                && now.duration_since(p.last_frame) >= timeout
            {
                self.open[s] = None;
                self.close(o);
            }
        }
        self.cut();
    }

    /// When [`Assembler::flush_expired`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let timeout = self
            .rules
            .multiline_timeout
            .unwrap_or(DEFAULT_MULTILINE_TIMEOUT);
        (0..2)
            .filter(|&s| !self.mid_line[s])
            .filter_map(|s| self.open[s])
            .filter_map(|o| self.pending.iter().rev().find(|p| p.start_seq == o))
            .map(|p| p.last_frame + timeout)
            .min()
    }

    /// The stream ended (the container stopped): closes every open record.
    pub fn finish(&mut self) {
        for s in 0..2 {
            if let Some(o) = self.open[s].take() {
                self.close(o);
            }
            self.mid_line[s] = false;
        }
        self.cut();
    }

    /// Moves the done records that no open record overlaps to `ready`.
    fn cut(&mut self) {
        let mut cut = 0;
        let mut cut_ck = None;
        let mut max_end = 0u64;
        let mut max_ck = None;
        for (i, p) in self.pending.iter().enumerate() {
            if !p.done {
                break;
            }
            if p.end_seq >= max_end {
                max_end = p.end_seq;
                max_ck = Some(p.end_ck);
            }
            let next_start = self.pending.get(i + 1).map(|n| n.start_seq);
            if next_start.is_none_or(|n| max_end < n) {
                cut = i + 1;
                cut_ck = max_ck;
            }
        }
        for p in self.pending.drain(..cut) {
            let mut text = p.text;
            if text.ends_with(b"\n") {
                text.pop();
            }
            let line = match String::from_utf8(text) {
                Ok(s) => s,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            };
            let fields = if self.rules.json && line.trim_start().starts_with('{') {
                serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&line).ok()
            } else {
                None
            };
            self.ready.push(Record {
                time_ns: p.time_ns,
                stream: p.stream,
                container: self.container.clone(),
                replica: self.replica,
                revision: self.revision.clone(),
                line,
                fields,
            });
        }
        if cut_ck.is_some() {
            self.ready_ck = cut_ck;
        }
    }

    /// Records ready to commit, and the checkpoint to commit with them.
    pub fn take(&mut self) -> Option<(Vec<Record>, Checkpoint)> {
        let ck = self.ready_ck.take()?;
        Some((std::mem::take(&mut self.ready), ck))
    }

    /// How many records are ready.
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }
}

/// A container's state as the collector sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FollowState {
    Following,
    Stopped,
    /// The engine is unreachable or the stream failed; resumed when it is back.
    Reconnecting,
    /// Removed before all its output was read.
    Lost,
}

/// What was lost: a container removed before the collector read all its output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Loss {
    pub container: String,
    pub name: String,
    pub service: ServiceKey,
    pub last_ts_ns: i64,
    pub what: String,
}

/// One container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerStatus {
    pub id: String,
    pub name: String,
    pub service: ServiceKey,
    /// Records and bytes committed since the collector started.
    pub lines: u64,
    pub bytes: u64,
    pub last_ts_ns: Option<i64>,
    pub state: FollowState,
    pub losses: u64,
}

/// What [`StatusHandle::get`] gives.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CollectorStatus {
    pub engine_up: bool,
    pub containers: Vec<ContainerStatus>,
    pub losses: Vec<Loss>,
}

#[derive(Debug, Default)]
struct StatusInner {
    engine_up: bool,
    containers: BTreeMap<String, ContainerStatus>,
    losses: Vec<Loss>,
}

/// A shared view of a collector's [`CollectorStatus`].
#[derive(Debug, Clone, Default)]
pub struct StatusHandle(Arc<Mutex<StatusInner>>);

impl StatusHandle {
    pub fn get(&self) -> CollectorStatus {
        let s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        CollectorStatus {
            engine_up: s.engine_up,
            containers: s.containers.values().cloned().collect(),
            losses: s.losses.clone(),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut StatusInner) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn set_state(&self, id: &str, state: FollowState) {
        self.with(|s| {
            if let Some(c) = s.containers.get_mut(id) {
                c.state = state;
            }
        });
    }
}

/// Tuning of a [`Collector`].
#[derive(Debug, Clone)]
pub struct CollectorOptions {
    /// A container task hands records to the writer at this many, or when its stream
    /// has nothing more right now.
    pub chunk_records: usize,
    /// The writer commits at most this many records at once.
    pub commit_records: usize,
    /// How long the writer waits to fill a group commit.
    pub commit_delay: Duration,
    /// The safety-net re-list.
    pub relist_every: Duration,
    /// How often retention runs.
    pub retention_every: Duration,
}

impl Default for CollectorOptions {
    fn default() -> Self {
        CollectorOptions {
            chunk_records: 2000,
            commit_records: 20_000,
            commit_delay: Duration::from_millis(20),
            relist_every: Duration::from_secs(5),
            retention_every: Duration::from_secs(60),
        }
    }
}

#[derive(Debug)]
struct Chunk {
    key: ServiceKey,
    meta: ContainerMeta,
    records: Vec<Record>,
    checkpoint: Checkpoint,
    /// The container is gone and everything it wrote was handed over: its checkpoint is
    /// dropped once committed (not to be reported lost on the next start).
    forget: bool,
}

fn forget(key: &ServiceKey, meta: &ContainerMeta) -> Chunk {
    Chunk {
        key: key.clone(),
        meta: meta.clone(),
        records: Vec::new(),
        checkpoint: Checkpoint::default(),
        forget: true,
    }
}

/// Follows the selected containers into a [`Store`]: see the module docs.
#[derive(Debug)]
pub struct Collector {
    docker: Docker,
    store: Arc<Store>,
    selection: Selection,
    options: CollectorOptions,
    status: StatusHandle,
}

/// What a container task needs.
#[derive(Debug, Clone)]
struct Shared {
    docker: Docker,
    store: Arc<Store>,
    status: StatusHandle,
    /// Checkpoints handed to the writer (ahead of the store's), by full id: what a task
    /// resumes from after a restart within this run.
    sent: Arc<Mutex<HashMap<String, Checkpoint>>>,
    tx: mpsc::Sender<Chunk>,
    chunk_records: usize,
}

impl Collector {
    pub fn new(docker: Docker, store: Arc<Store>, selection: Selection) -> Self {
        Self::with_options(docker, store, selection, CollectorOptions::default())
    }

    pub fn with_options(
        docker: Docker,
        store: Arc<Store>,
        selection: Selection,
        options: CollectorOptions,
    ) -> Self {
        Collector {
            docker,
            store,
            selection,
            options,
            status: StatusHandle::default(),
        }
    }

    /// A handle on the status, valid after [`Collector::run`] took the collector.
    pub fn status(&self) -> StatusHandle {
        self.status.clone()
    }

    /// Runs until `shutdown`. Dropping the future (or aborting its task) stops every task
    /// it started; what was committed stays, the rest is read again next time.
    pub async fn run(self, shutdown: CancellationToken) {
        let (tx, rx) = mpsc::channel::<Chunk>(16);
        let mut tasks: JoinSet<()> = JoinSet::new();
        let writer = {
            let store = self.store.clone();
            let status = self.status.clone();
            let opts = self.options.clone();
            tokio::spawn(writer_loop(store, rx, status, opts))
        };
        // Abort the writer too when this future is dropped.
        let _writer_guard = AbortOnDrop(writer.abort_handle());
        let shared = Shared {
            docker: self.docker.clone(),
            store: self.store.clone(),
            status: self.status.clone(),
            sent: Arc::default(),
            tx,
            chunk_records: self.options.chunk_records,
        };
        let mut sup = Supervisor {
            selection: self.selection.clone(),
            shared,
            locks: HashMap::new(),
            first: true,
            cancel: shutdown.child_token(),
        };
        let mut outage = false;
        let mut backoff = Duration::from_millis(200);
        let mut retention = tokio::time::interval(self.options.retention_every);
        'outer: loop {
            match sup.relist(&mut tasks).await {
                Ok(()) => {
                    if outage {
                        tracing::info!("docker engine reachable again: resuming log collection");
                    }
                    outage = false;
                    backoff = Duration::from_millis(200);
                    self.status.with(|s| s.engine_up = true);
                }
                Err(e) => {
                    if !outage {
                        tracing::warn!("docker engine unreachable, log collection paused: {e}");
                        outage = true;
                    }
                    self.status.with(|s| s.engine_up = false);
                    tokio::select! {
                        _ = shutdown.cancelled() => break 'outer,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            let mut filters = HashMap::new();
            filters.insert("type".to_owned(), vec!["container".to_owned()]);
            filters.insert(
                "event".to_owned(),
                vec!["start".to_owned(), "die".to_owned(), "destroy".to_owned()],
            );
            let mut events = Box::pin(self.docker.events(Some(EventsOptions {
                filters: Some(filters),
                ..Default::default()
            })));
            let mut tick = tokio::time::interval(self.options.relist_every);
            tick.tick().await;
            loop {
                while tasks.try_join_next().is_some() {}
                tokio::select! {
                    _ = shutdown.cancelled() => break 'outer,
                    ev = events.next() => match ev {
                        Some(Ok(ev)) => {
                            let id = ev.actor.and_then(|a| a.id);
                            match (ev.action.as_deref(), id) {
                                (Some("start"), Some(id)) => sup.started(&id, &mut tasks).await,
                                (Some("destroy"), Some(id)) => sup.destroyed(&id).await,
                                _ => {}
                            }
                        }
                        Some(Err(_)) | None => continue 'outer,
                    },
                    _ = tick.tick() => {
                        if sup.relist(&mut tasks).await.is_err() {
                            continue 'outer;
                        }
                    }
                    _ = retention.tick() => {
                        let store = self.store.clone();
                        match tokio::task::spawn_blocking(move || store.enforce_retention()).await {
                            Ok(Err(e)) => tracing::warn!("log retention: {e}"),
                            Err(e) => tracing::warn!("log retention: {e}"),
                            Ok(Ok(_)) => {}
                        }
                    }
                }
            }
        }
        sup.cancel.cancel();
        while tasks.join_next().await.is_some() {}
        drop(sup);
        let _ = writer.await;
    }
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug)]
struct Supervisor {
    selection: Selection,
    shared: Shared,
    /// Per container: held by its task while it runs, so tasks of one container run
    /// one after the other.
    locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    first: bool,
    cancel: CancellationToken,
}

impl Supervisor {
    async fn relist(&mut self, tasks: &mut JoinSet<()>) -> Result<(), bollard::errors::Error> {
        let docker = &self.shared.docker;
        let list = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                ..Default::default()
            }))
            .await?;
        let mut present = std::collections::HashSet::new();
        for c in &list {
            let Some(id) = c.id.clone() else { continue };
            present.insert(id.clone());
            let running = c.state.as_ref().is_some_and(|s| s.to_string() == "running");
            let has_ck = self.shared.store.checkpoint(&id).is_some();
            let live = self
                .locks
                .get(&id)
                .is_some_and(|l| Arc::strong_count(l) > 1);
            if live {
                continue;
            }
            let stopped_unread = self.first && has_ck;
            // The environment only excludes: what the labels and name do not select is
            // not inspected.
            let name = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map_or(id.as_str(), |n| n.trim_start_matches('/'));
            let no_labels = HashMap::new();
            let labels = c.labels.as_ref().unwrap_or(&no_labels);
            if !has_ck && self.selection.decide(name, labels, &[]).is_none() {
                continue;
            }
            if running || stopped_unread {
                self.spawn(&id, tasks).await?;
            }
        }
        if self.first {
            self.first = false;
            for (key, id, meta, ck) in self.shared.store.checkpoints() {
                if present.contains(&id) {
                    continue;
                }
                let name = meta.map_or_else(|| id.get(..12).unwrap_or(&id).to_owned(), |m| m.name);
                tracing::warn!(
                    container = %name,
                    service = %key,
                    last_ts_ns = ck.ts_ns,
                    "container removed while the collector was down: its output after the last stored record is lost"
                );
                let last = ck.ts_ns;
                self.shared.status.with(|s| {
                    s.losses.push(Loss {
                        container: id.clone(),
                        name: name.clone(),
                        service: key.clone(),
                        last_ts_ns: last,
                        what: "removed while the collector was down".to_owned(),
                    });
                    s.containers.insert(
                        id.clone(),
                        ContainerStatus {
                            id: id.clone(),
                            name: name.clone(),
                            service: key.clone(),
                            lines: 0,
                            bytes: 0,
                            last_ts_ns: Some(last),
                            state: FollowState::Lost,
                            losses: 1,
                        },
                    );
                });
                let store = self.shared.store.clone();
                let forget = id.clone();
                let _ = tokio::task::spawn_blocking(move || store.forget_container(&forget)).await;
            }
        }
        Ok(())
    }

    /// A removed container whose task is done: everything it wrote was read.
    async fn destroyed(&mut self, id: &str) {
        let live = self.locks.get(id).is_some_and(|l| Arc::strong_count(l) > 1);
        self.locks.remove(id);
        if live || self.shared.store.checkpoint(id).is_none() {
            return;
        }
        let Some((key, _)) = self.shared.store.checkpoint(id) else {
            return;
        };
        let meta = ContainerMeta {
            id: id.to_owned(),
            name: String::new(),
            image: String::new(),
            labels: BTreeMap::new(),
        };
        let _ = self.shared.tx.send(forget(&key, &meta)).await;
    }

    async fn started(&mut self, id: &str, tasks: &mut JoinSet<()>) {
        if let Err(e) = self.spawn(id, tasks).await {
            tracing::debug!(container = id, "inspecting a started container: {e}");
        }
    }

    /// Starts a task for `id` if it is selected (after any task of it still running).
    async fn spawn(
        &mut self,
        id: &str,
        tasks: &mut JoinSet<()>,
    ) -> Result<(), bollard::errors::Error> {
        let info = self
            .shared
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await?;
        let name = info
            .name
            .as_deref()
            .unwrap_or(id)
            .trim_start_matches('/')
            .to_owned();
        let config = info.config.unwrap_or_default();
        let labels = config.labels.unwrap_or_default();
        let env = config.env.unwrap_or_default();
        let Some(key) = self.selection.decide(&name, &labels, &env) else {
            return Ok(());
        };
        let full_id = info.id.unwrap_or_else(|| id.to_owned());
        let meta = ContainerMeta {
            id: full_id.clone(),
            name,
            image: config.image.unwrap_or_default(),
            labels: labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        };
        let rules = AssemblyRules::from_labels(&meta.name, &labels);
        let lock = self.locks.entry(full_id.clone()).or_default().clone();
        let shared = self.shared.clone();
        let cancel = self.cancel.clone();
        self.shared.status.with(|s| {
            s.containers
                .entry(full_id.clone())
                .or_insert_with(|| ContainerStatus {
                    id: full_id.clone(),
                    name: meta.name.clone(),
                    service: key.clone(),
                    lines: 0,
                    bytes: 0,
                    last_ts_ns: None,
                    state: FollowState::Following,
                    losses: 0,
                })
                .state = FollowState::Following;
        });
        tasks.spawn(async move {
            let _held = lock.lock_owned().await;
            follow_container(shared, key, meta, rules, cancel).await;
        });
        Ok(())
    }
}

async fn follow_container(
    shared: Shared,
    key: ServiceKey,
    meta: ContainerMeta,
    rules: AssemblyRules,
    cancel: CancellationToken,
) {
    let id = meta.id.clone();
    let replica = meta.labels.get(LABEL_REPLICA).and_then(|r| r.parse().ok());
    let revision = meta.labels.get(LABEL_REVISION).cloned();
    let mut first_chunk = true;
    loop {
        // From what was handed over (records not yet handed over are read again).
        let resume = {
            let sent = shared.sent.lock().unwrap_or_else(PoisonError::into_inner);
            sent.get(&id).copied()
        }
        .or_else(|| shared.store.checkpoint(&id).map(|(_, c)| c));
        let mut asm = Assembler::new(rules.clone(), &id, replica, revision.clone(), resume);
        let mut stream = Box::pin(
            shared
                .docker
                .logs(
                    &id,
                    Some(LogsOptions {
                        follow: true,
                        stdout: true,
                        stderr: true,
                        timestamps: true,
                        since: asm.since_secs(),
                        ..Default::default()
                    }),
                )
                .peekable(),
        );
        let ended_ok = loop {
            let deadline = asm.next_deadline();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            let item = tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                item = stream.next() => item,
                _ = sleep => {
                    asm.flush_expired(Instant::now());
                    if !send(&shared, &key, &meta, &mut asm, &mut first_chunk).await { return; }
                    continue;
                }
            };
            match item {
                Some(Ok(out)) => {
                    let (stream_kind, msg) = match out {
                        LogOutput::StdOut { message } | LogOutput::Console { message } => {
                            (Stream::Stdout, message)
                        }
                        LogOutput::StdErr { message } => (Stream::Stderr, message),
                        LogOutput::StdIn { .. } => continue,
                    };
                    if let Err(e) = asm.push(stream_kind, &msg, Instant::now()) {
                        tracing::warn!(container = %meta.name, "{e}");
                        continue;
                    }
                    // Hand over when enough, or when nothing more is ready right now.
                    let more_ready = asm.ready_len() < shared.chunk_records;
                    let idle = stream.as_mut().peek().now_or_never().is_none();
                    if (!more_ready || idle)
                        && !send(&shared, &key, &meta, &mut asm, &mut first_chunk).await
                    {
                        return;
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(container = %meta.name, "log stream: {e}");
                    break false;
                }
                None => {
                    break true;
                }
            }
        };
        // Is it still running (a stream that ended while it runs is followed again)?
        let running = match shared
            .docker
            .inspect_container(&id, None::<InspectContainerOptions>)
            .await
        {
            Ok(i) => i.state.and_then(|s| s.running).unwrap_or(false),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) if ended_ok => {
                // Removed, and its stream ended: everything was read.
                asm.finish();
                let _ = send(&shared, &key, &meta, &mut asm, &mut first_chunk).await;
                let _ = shared.tx.send(forget(&key, &meta)).await;
                shared.status.set_state(&id, FollowState::Stopped);
                return;
            }
            Err(_) => {
                shared.status.set_state(&id, FollowState::Reconnecting);
                let _ = send(&shared, &key, &meta, &mut asm, &mut first_chunk).await;
                return;
            }
        };
        if !running && ended_ok {
            asm.finish();
            let _ = send(&shared, &key, &meta, &mut asm, &mut first_chunk).await;
            shared.status.set_state(&id, FollowState::Stopped);
            return;
        }
        if !send(&shared, &key, &meta, &mut asm, &mut first_chunk).await {
            return;
        }
        if !running {
            shared.status.set_state(&id, FollowState::Reconnecting);
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

async fn send(
    shared: &Shared,
    key: &ServiceKey,
    meta: &ContainerMeta,
    asm: &mut Assembler,
    first: &mut bool,
) -> bool {
    let Some((records, checkpoint)) = asm.take() else {
        return true;
    };
    let chunk = Chunk {
        key: key.clone(),
        meta: meta.clone(),
        records,
        checkpoint,
        forget: false,
    };
    *first = false;
    {
        let mut sent = shared.sent.lock().unwrap_or_else(PoisonError::into_inner);
        sent.insert(meta.id.clone(), checkpoint);
    }
    shared.tx.send(chunk).await.is_ok()
}

async fn writer_loop(
    store: Arc<Store>,
    mut rx: mpsc::Receiver<Chunk>,
    status: StatusHandle,
    opts: CollectorOptions,
) {
    while let Some(first) = rx.recv().await {
        let mut chunks = vec![first];
        let mut n = chunks[0].records.len();
        let until = tokio::time::Instant::now() + opts.commit_delay;
        while n < opts.commit_records {
            match rx.try_recv() {
                Ok(c) => {
                    n += c.records.len();
                    chunks.push(c);
                }
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(until, rx.recv()).await {
                        Ok(Some(c)) => {
                            n += c.records.len();
                            chunks.push(c);
                        }
                        _ => break,
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        }
        // One Append per service, in arrival order; per container the last checkpoint.
        let mut appends: Vec<Append> = Vec::new();
        let mut stats: HashMap<String, (u64, u64, i64)> = HashMap::new();
        let mut forgets: Vec<String> = Vec::new();
        for c in chunks {
            if c.forget {
                forgets.push(c.meta.id.clone());
                continue;
            }
            let st = stats.entry(c.meta.id.clone()).or_default();
            st.0 += c.records.len() as u64;
            st.1 += c.records.iter().map(|r| r.line.len() as u64).sum::<u64>();
            if let Some(r) = c.records.last() {
                st.2 = st.2.max(r.time_ns);
            }
            let a = match appends.iter_mut().find(|a| a.key == c.key) {
                Some(a) => a,
                None => {
                    appends.push(Append {
                        key: c.key.clone(),
                        records: Vec::new(),
                        checkpoints: Vec::new(),
                        containers: Vec::new(),
                    });
                    let Some(a) = appends.last_mut() else {
                        continue;
                    };
                    a
                }
            };
            a.records.extend(c.records);
            match a.checkpoints.iter_mut().find(|(id, _)| *id == c.meta.id) {
                Some(ck) => ck.1 = c.checkpoint,
                None => a.checkpoints.push((c.meta.id.clone(), c.checkpoint)),
            }
            if !a.containers.iter().any(|m| m.id == c.meta.id) {
                a.containers.push(c.meta);
            }
        }
        let s = store.clone();
        let res = tokio::task::spawn_blocking(move || {
            s.commit(&appends)?;
            for id in &forgets {
                s.forget_container(id)?;
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
        match res {
            Ok(Ok(())) => status.with(|s| {
                for (id, (lines, bytes, ts)) in stats {
                    if let Some(c) = s.containers.get_mut(&id) {
                        c.lines += lines;
                        c.bytes += bytes;
                        if lines > 0 {
                            c.last_ts_ns = Some(c.last_ts_ns.unwrap_or(ts).max(ts));
                        }
                    }
                }
            }),
            Ok(Err(e)) => {
                tracing::error!("committing logs: {e}");
                status.with(|s| {
                    for id in stats.keys() {
                        if let Some(c) = s.containers.get_mut(id) {
                            c.losses += 1;
                        }
                    }
                });
            }
            Err(e) => tracing::error!("committing logs: {e}"),
        }
    }
}

/// Now, in nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "2024-05-01T10:00:00";

    fn frame(frac: &str, body: &str) -> Vec<u8> {
        format!("{T}.{frac}Z {body}").into_bytes()
    }

    fn lines(asm: &mut Assembler) -> (Vec<String>, Option<Checkpoint>) {
        match asm.take() {
            Some((r, ck)) => (r.into_iter().map(|r| r.line).collect(), Some(ck)),
            None => (Vec::new(), None),
        }
    }

    #[test]
    fn timestamps_are_strict() {
        let (ns, rest) = split_timestamp(b"2024-05-01T10:00:00.123456789Z hello\n").expect("ts");
        assert_eq!(ns % 1_000_000_000, 123_456_789);
        assert_eq!(rest, b"hello\n");
        let (ns2, _) = split_timestamp(b"2024-05-01T10:00:00.1Z x").expect("ts");
        assert_eq!(ns2 % 1_000_000_000, 100_000_000);
        let e = split_timestamp(b"garbage line").expect_err("bad");
        assert!(e.contains("garbage"), "{e}");
    }

    #[test]
    fn resume_skips_exactly_the_frames_stored_at_the_checkpoint_time() {
        // Three frames share a timestamp; the first two were stored.
        let frames = [
            frame("000000001", "a\n"),
            frame("000000002", "b\n"),
            frame("000000002", "c\n"),
            frame("000000002", "d\n"),
            frame("000000003", "e\n"),
        ];
        let now = Instant::now();
        let mut first = Assembler::new(
            AssemblyRules::default(),
            "c0ffee123456789",
            None,
            None,
            None,
        );
        for f in &frames[..3] {
            first.push(Stream::Stdout, f, now).expect("push");
        }
        let (got, ck) = lines(&mut first);
        assert_eq!(got, ["a", "b", "c"]);
        let ck = ck.expect("checkpoint");
        assert_eq!(ck.count_at_ts, 2);
        // Resumed: the engine gives everything since a second before.
        let mut again = Assembler::new(
            AssemblyRules::default(),
            "c0ffee123456789",
            None,
            None,
            Some(ck),
        );
        assert!(again.since_secs() > 0);
        let taken: Vec<bool> = frames
            .iter()
            .map(|f| again.push(Stream::Stdout, f, now).expect("push"))
            .collect();
        assert_eq!(taken, [false, false, false, true, true]);
        let (got, ck2) = lines(&mut again);
        assert_eq!(got, ["d", "e"]);
        assert_eq!(ck2.map(|c| c.count_at_ts), Some(1));
        // And resuming from the middle of a same-timestamp run counts the run as a whole.
        let mut third = Assembler::new(
            AssemblyRules::default(),
            "c",
            None,
            None,
            Some(Checkpoint {
                ts_ns: ck.ts_ns,
                count_at_ts: 3,
            }),
        );
        for f in &frames {
            third.push(Stream::Stdout, f, now).expect("push");
        }
        assert_eq!(lines(&mut third).0, ["e"]);
    }

    #[test]
    fn partials_are_joined_and_checkpoints_wait_for_record_boundaries() {
        let now = Instant::now();
        let mut a = Assembler::new(AssemblyRules::default(), "c", None, None, None);
        a.push(Stream::Stdout, &frame("1", "xxxx"), now)
            .expect("push");
        assert!(a.take().is_none(), "no checkpoint inside a record");
        a.push(Stream::Stderr, &frame("2", "err\n"), now)
            .expect("push");
        assert!(
            a.take().is_none(),
            "the stderr record is after the open stdout one"
        );
        a.push(Stream::Stdout, &frame("3", "yyyy\n"), now)
            .expect("push");
        let (got, ck) = lines(&mut a);
        assert_eq!(got, ["xxxxyyyy", "err"]);
        assert_eq!(ck.map(|c| c.ts_ns % 1_000_000_000), Some(300_000_000));
    }

    #[test]
    fn multiline_records_join_until_the_next_start_or_the_timeout() {
        let now = Instant::now();
        let rules = AssemblyRules {
            multiline: Some(Regex::new(r"^\d").expect("re")),
            multiline_timeout: Some(Duration::from_millis(100)),
            json: false,
        };
        let mut a = Assembler::new(rules, "c", None, None, None);
        for (i, l) in ["1 start\n", "  at x\n", "  at y\n", "2 next\n"]
            .iter()
            .enumerate()
        {
            a.push(Stream::Stdout, &frame(&format!("{}", i + 1), l), now)
                .expect("push");
        }
        assert_eq!(lines(&mut a).0, ["1 start\n  at x\n  at y"]);
        a.flush_expired(now + Duration::from_millis(50));
        assert!(a.take().is_none());
        assert!(a.next_deadline().is_some());
        a.flush_expired(now + Duration::from_millis(150));
        assert_eq!(lines(&mut a).0, ["2 next"]);
    }

    #[test]
    fn json_fields() {
        let rules = AssemblyRules {
            json: true,
            ..AssemblyRules::default()
        };
        let mut a = Assembler::new(rules, "c", Some(2), Some("r1".into()), None);
        a.push(
            Stream::Stdout,
            &frame("1", "{\"level\":\"warn\",\"n\":1}\n"),
            Instant::now(),
        )
        .expect("push");
        a.push(Stream::Stdout, &frame("2", "not json\n"), Instant::now())
            .expect("push");
        let (recs, _) = a.take().expect("ready");
        assert_eq!(
            recs[0]
                .fields
                .as_ref()
                .and_then(|f| f.get("level"))
                .and_then(|v| v.as_str()),
            Some("warn")
        );
        assert_eq!(recs[0].replica, Some(2));
        assert!(recs[1].fields.is_none());
    }

    #[test]
    fn selection() {
        let l = |kv: &[(&str, &str)]| -> HashMap<String, String> {
            kv.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let mut s = Selection::default();
        let ours = l(&[
            (LABEL_ENV, "prod"),
            (LABEL_STACK, "shop"),
            (LABEL_SERVICE, "web"),
        ]);
        assert_eq!(
            s.decide("x", &ours, &[]),
            Some(ServiceKey::new("prod", "shop", "web"))
        );
        assert_eq!(s.decide("x", &ours, &["LOGSPOUT=ignore".to_owned()]), None);
        let mut off = ours.clone();
        off.insert(LABEL_OPT.into(), "false".into());
        assert_eq!(s.decide("x", &off, &[]), None);
        assert_eq!(s.decide("x", &l(&[]), &[]), None);
        assert_eq!(
            s.decide(
                "db-1",
                &l(&[
                    (LABEL_OPT, "true"),
                    (COMPOSE_PROJECT, "p"),
                    (COMPOSE_SERVICE, "db")
                ]),
                &[]
            ),
            Some(ServiceKey::new("-", "p", "db"))
        );
        s.add_filter("name=nginx-*").expect("filter");
        s.add_filter("label=team=core").expect("filter");
        assert!(s.add_filter("bogus").is_err());
        assert_eq!(
            s.decide("nginx-1", &l(&[]), &[]),
            Some(ServiceKey::new("-", "-", "nginx-1"))
        );
        assert!(s.decide("other", &l(&[("team", "core")]), &[]).is_some());
        assert!(s.decide("other", &l(&[("team", "ops")]), &[]).is_none());
        assert!(glob("a*b?c", "axxbyc") && !glob("a*b", "ac"));
    }
}
