//! Restart without dropping traffic: the running instance hands its listening sockets to
//! its successor over a unix socket in the data dir (`DATA/slipway.sock`, 0600), as file
//! descriptors (`SCM_RIGHTS`), each with its name (`proxy-http`, `proxy-https`, `api`).
//!
//! The old side is a [`Handover`]; the new side calls [`take_over`] and gets [`Taken`].
//! The exchange (version 1; one line each, `\n`-terminated, UTF-8):
//!
//! ```text
//! new → old   slipway-takeover 1
//! old → new   slipway-listeners 1 PID N       (one sendmsg; the N fds ride on it)
//!             NAME                            × N, in the fds' order
//! new → old   ok                              (or `error REASON`)
//! old → new   EOF, once it has drained and released the data dir's lock
//! ```
//!
//! A version the old does not speak gets `slipway-error TEXT` and the connection closed.
//! Both instances accept on the same sockets for a moment, which drops nothing: a
//! connection waits in the one backlog until either accepts it.
//!
//! The sequence, for `slipway proxy --takeover` and `slipway up --takeover` alike:
//! 1. new: [`claim`]`(dir, takeover)`: the lock when free ([`Claim::Fresh`]); else, with
//!    `--takeover`, [`take_over`]`(&socket_path(dir))` ([`Claim::Successor`]): the
//!    listeners by name, to serve at once (each through
//!    `tokio::net::TcpListener::from_std`; a name it wants and did not get, it binds);
//!    else the refusal. It restores the stored routes ([`crate::persist::restore`]).
//! 2. old: [`Handover::taken`] returns a [`Successor`]: it ends its accept loops, then
//!    [`Successor::drain_and_depart`]: [`Connections::close`], [`Connections::drained`]
//!    (in-flight requests and tunnels, up to the drain timeout), the lock released, EOF;
//!    and exits.
//! 3. new: [`Predecessor::gone_then_lock`] resolves at the EOF with the lock; it starts
//!    what only one instance may run, and binds its own [`Handover`] for the next upgrade.
//!
//! Invariants: the old stops accepting only after the new said `ok` (a successor that
//! fails midway leaves the old serving); only a peer of the socket owner's uid is
//! answered; a received fd that is not a listening TCP socket is refused, not served.

use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};

use crate::forward::Proxy;
use crate::instance::{InstanceError, InstanceLock};
use crate::serve::Connections;

/// The handover socket's name in the data dir.
pub const SOCKET_FILE: &str = "slipway.sock";
/// The protocol version this build speaks.
pub const VERSION: u32 = 1;
/// Most listeners one handover carries.
pub const MAX_LISTENERS: usize = 16;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_LINE: usize = 256;

/// `DATA/slipway.sock`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// A listener's own fd, for [`Handover::bind`] (the accept loop keeps the listener).
pub fn listener_fd(listener: &impl AsFd) -> std::io::Result<OwnedFd> {
    listener.as_fd().try_clone_to_owned()
}

#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error(
        "no Slipway instance answers on {}: {source} (is one running on this data dir?)",
        path.display()
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen for a successor on {}: {source}", path.display())]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the takeover over {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the takeover over {}: {reason}", path.display())]
    Protocol { path: PathBuf, reason: String },
    #[error("a listener name must be 1-64 of a-z, 0-9 and `-`: `{0}`")]
    BadName(String),
    #[error("at most {MAX_LISTENERS} listeners can be handed over, not {0}")]
    TooMany(usize),
}

/// The running instance's side: answers a successor on `DATA/slipway.sock`.
#[derive(Debug)]
pub struct Handover {
    socket: UnixListener,
    path: PathBuf,
    listeners: HandoverSet,
}

/// The listeners a [`Handover`] gives, by name; shared, so their owner can add one after
/// the handover socket is bound (`slipway up` adds its API listener to the edge's).
#[derive(Debug, Clone, Default)]
pub struct HandoverSet(Arc<Mutex<BTreeMap<String, OwnedFd>>>);

impl HandoverSet {
    pub fn new() -> HandoverSet {
        HandoverSet::default()
    }

    /// Adds (or replaces) the listener `name`: 1-64 of a-z, 0-9 and `-`.
    pub fn insert(&self, name: &str, fd: OwnedFd) -> Result<(), TakeoverError> {
        if !valid_name(name) {
            return Err(TakeoverError::BadName(name.to_owned()));
        }
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !set.contains_key(name) && set.len() >= MAX_LISTENERS {
            return Err(TakeoverError::TooMany(set.len() + 1));
        }
        set.insert(name.to_owned(), fd);
        Ok(())
    }

    /// The names, in the order they are sent.
    pub fn names(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Each listener with its own copy of the fd, to send without holding the lock.
    fn copies(&self) -> std::io::Result<Vec<(String, OwnedFd)>> {
        let set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        set.iter()
            .map(|(name, fd)| Ok((name.clone(), fd.try_clone()?)))
            .collect()
    }
}

impl Handover {
    /// Listens on `path` (a stale socket file is replaced: the caller holds the data
    /// dir's lock, so nothing else listens there) for a successor, to which it will hand
    /// `listeners`. Call within a tokio runtime.
    pub fn bind(
        path: &Path,
        listeners: BTreeMap<String, OwnedFd>,
    ) -> Result<Handover, TakeoverError> {
        if listeners.len() > MAX_LISTENERS {
            return Err(TakeoverError::TooMany(listeners.len()));
        }
        let set = HandoverSet::new();
        for (name, fd) in listeners {
            set.insert(&name, fd)?;
        }
        Handover::bind_set(path, set)
    }

    /// [`Handover::bind`], handing over whatever is in `listeners` when a successor asks.
    pub fn bind_set(path: &Path, listeners: HandoverSet) -> Result<Handover, TakeoverError> {
        let err = |source| TakeoverError::Bind {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let socket = UnixListener::bind(path).map_err(err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        Ok(Handover {
            socket,
            path: path.to_path_buf(),
            listeners,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answers successors until one has taken the listeners and said `ok`; a successor
    /// that fails midway is logged and the wait goes on. Cancel-safe.
    pub async fn taken(&self) -> Successor {
        loop {
            let stream = match self.socket.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), "takeover socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.answer(stream)).await {
                Ok(Ok(successor)) => return successor,
                Ok(Err(e)) => tracing::warn!("{e}; this instance keeps serving"),
                Err(_) => tracing::warn!(
                    path = %self.path.display(),
                    "a successor did not finish the takeover in {HANDSHAKE_TIMEOUT:?}; this instance keeps serving"
                ),
            }
        }
    }

    async fn answer(&self, mut stream: UnixStream) -> Result<Successor, TakeoverError> {
        let protocol = |reason: String| TakeoverError::Protocol {
            path: self.path.clone(),
            reason,
        };
        let io = |source| TakeoverError::Io {
            path: self.path.clone(),
            source,
        };
        let owner = std::fs::metadata(&self.path).map_err(io)?.uid();
        let peer = stream.peer_cred().map_err(io)?;
        if peer.uid() != owner {
            return Err(protocol(format!(
                "refused a peer of uid {} (the socket is uid {owner}'s)",
                peer.uid()
            )));
        }
        let hello = read_line(&mut stream).await.map_err(io)?;
        let version = hello
            .strip_prefix("slipway-takeover ")
            .and_then(|v| v.trim().parse::<u32>().ok());
        if version != Some(VERSION) {
            let _ = stream
                .write_all(
                    format!("slipway-error this instance speaks takeover version {VERSION}\n")
                        .as_bytes(),
                )
                .await;
            return Err(protocol(format!(
                "a successor said `{hello}`, not `slipway-takeover {VERSION}`"
            )));
        }
        let listeners = self.listeners.copies().map_err(io)?;
        let mut payload = format!(
            "slipway-listeners {VERSION} {} {}\n",
            std::process::id(),
            listeners.len()
        );
        for (name, _) in &listeners {
            payload.push_str(name);
            payload.push('\n');
        }
        let fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|(_, f)| f.as_fd()).collect();
        let mut space =
            vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(protocol(
                "the descriptors do not fit their buffer".to_owned(),
            ));
        }
        let sent = stream
            .async_io(Interest::WRITABLE, || {
                sendmsg(
                    &stream,
                    &[IoSlice::new(payload.as_bytes())],
                    &mut control,
                    SendFlags::NOSIGNAL,
                )
                .map_err(std::io::Error::from)
            })
            .await
            .map_err(io)?;
        if sent != payload.len() {
            return Err(protocol(format!(
                "sent {sent} of {} bytes of the listeners",
                payload.len()
            )));
        }
        let ack = read_line(&mut stream).await.map_err(io)?;
        if ack != "ok" {
            return Err(protocol(format!("the successor answered `{ack}`")));
        }
        tracing::info!(
            listeners = ?listeners.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            "handed the listeners over to a successor"
        );
        Ok(Successor { stream })
    }
}

/// The instance that took the listeners over, as its predecessor holds it: dropping it
/// tells the successor this instance has gone.
#[derive(Debug)]
pub struct Successor {
    stream: UnixStream,
}

impl Successor {
    /// Releases the data dir's lock, then tells the successor (EOF), in this order, so the
    /// successor finds the lock free when it looks.
    pub fn depart(self, lock: Option<InstanceLock>) {
        drop(lock);
        drop(self.stream);
    }

    /// The old side's end, once its accept loops have ended: asks every connection to
    /// finish, waits for them and for every request and tunnel of `proxy` (up to
    /// `drain_timeout`), then [`Successor::depart`]s. Whether everything ended in time.
    pub async fn drain_and_depart(
        self,
        connections: &Connections,
        proxy: &Proxy,
        drain_timeout: Duration,
        lock: Option<InstanceLock>,
    ) -> bool {
        connections.close();
        let drained = connections.drained(proxy, drain_timeout).await;
        tracing::info!(drained, "handed over; this instance has finished and goes");
        self.depart(lock);
        drained
    }
}

/// How an instance starts on a data dir: see [`claim`].
#[derive(Debug)]
pub enum Claim {
    /// No other instance ran: the lock is ours; bind the listeners.
    Fresh(InstanceLock),
    /// Another ran, and handed its listeners over: serve them, then wait for
    /// [`Predecessor::gone_then_lock`].
    Successor(Taken),
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(transparent)]
    Instance(#[from] InstanceError),
    #[error(transparent)]
    Takeover(#[from] TakeoverError),
}

/// Takes the data dir for a starting instance: its lock when free; else, with `takeover`,
/// the running instance's listeners; else the refusal ([`InstanceError::Held`], which
/// names the pid and `--takeover`). `--takeover` with nothing running starts fresh.
pub async fn claim(data_dir: &Path, takeover: bool) -> Result<Claim, ClaimError> {
    match InstanceLock::acquire(data_dir) {
        Ok(lock) => {
            if takeover {
                tracing::info!(
                    data_dir = %data_dir.display(),
                    "--takeover: no instance runs on this data dir; starting afresh"
                );
            }
            Ok(Claim::Fresh(lock))
        }
        Err(InstanceError::Held { .. }) if takeover => {
            Ok(Claim::Successor(take_over(&socket_path(data_dir)).await?))
        }
        Err(e) => Err(e.into()),
    }
}

/// What a successor got from the running instance.
#[derive(Debug)]
pub struct Taken {
    /// By name, each a listening TCP socket in blocking mode as `std` makes them: call
    /// `set_nonblocking(true)` before `tokio::net::TcpListener::from_std`.
    pub listeners: BTreeMap<String, std::net::TcpListener>,
    pub predecessor: Predecessor,
}

/// The instance that handed its listeners over, until it has gone.
#[derive(Debug)]
pub struct Predecessor {
    stream: UnixStream,
    pid: u32,
}

impl Predecessor {
    /// Its process id, as it said.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resolves once it has drained, released the data dir's lock and gone (EOF on the
    /// socket, or its process died).
    pub async fn gone(mut self) {
        let mut buf = [0u8; 64];
        while let Ok(n) = self.stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    }

    /// [`Predecessor::gone`], then the data dir's lock (retried for `timeout`, as the
    /// predecessor's process may take a moment to exit).
    pub async fn gone_then_lock(
        self,
        data_dir: &Path,
        timeout: Duration,
    ) -> Result<InstanceLock, InstanceError> {
        self.gone().await;
        InstanceLock::acquire_within(data_dir, timeout).await
    }
}

/// Asks the instance listening on `path` (`DATA/slipway.sock`) for its listeners.
pub async fn take_over(path: &Path) -> Result<Taken, TakeoverError> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, take_over_now(path)).await {
        Ok(r) => r,
        Err(_) => Err(TakeoverError::Protocol {
            path: path.to_path_buf(),
            reason: format!("the running instance did not answer in {HANDSHAKE_TIMEOUT:?}"),
        }),
    }
}

async fn take_over_now(path: &Path) -> Result<Taken, TakeoverError> {
    let protocol = |reason: String| TakeoverError::Protocol {
        path: path.to_path_buf(),
        reason,
    };
    let io = |source| TakeoverError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|source| TakeoverError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    stream
        .write_all(format!("slipway-takeover {VERSION}\n").as_bytes())
        .await
        .map_err(io)?;
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_LISTENERS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut buf = vec![0u8; 64 * 1024];
    let got = stream
        .async_io(Interest::READABLE, || {
            recvmsg(
                &stream,
                &mut [IoSliceMut::new(&mut buf)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )
            .map_err(std::io::Error::from)
        })
        .await
        .map_err(io)?;
    // Owned at once, so every fd received is closed on any error below.
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if got.flags.contains(ReturnFlags::CTRUNC) {
        return Err(protocol(format!(
            "more descriptors came than the {MAX_LISTENERS} this build takes"
        )));
    }
    let mut text = buf[..got.bytes].to_vec();
    // The names may come after the header in later reads (a stream has no boundaries).
    let expected = loop {
        let lines: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
        let complete = lines.len() - 1;
        if complete >= 1 {
            let header = String::from_utf8_lossy(lines[0]).into_owned();
            if let Some(err) = header.strip_prefix("slipway-error ") {
                return Err(protocol(format!("the running instance refused: {err}")));
            }
            let n = parse_header(&header).ok_or_else(|| {
                protocol(format!(
                    "the running instance said `{header}`, not `slipway-listeners {VERSION} PID N`"
                ))
            })?;
            if complete > n.1 {
                break n;
            }
        }
        if got.bytes == 0 || text.len() > 64 * 1024 {
            return Err(protocol(
                "the running instance closed the socket before it sent its listeners".to_owned(),
            ));
        }
        let mut more = [0u8; 4096];
        let n = stream.read(&mut more).await.map_err(io)?;
        if n == 0 {
            return Err(protocol(
                "the running instance closed the socket midway".to_owned(),
            ));
        }
        text.extend_from_slice(&more[..n]);
    };
    let (pid, count) = expected;
    let body = String::from_utf8_lossy(&text).into_owned();
    let names: Vec<&str> = body.lines().skip(1).take(count).collect();
    let checked = check_listeners(&names, fds, count);
    let listeners = match checked {
        Ok(l) => l,
        Err(reason) => {
            // Told, so the old one logs why and keeps serving.
            let _ = stream
                .write_all(format!("error {reason}\n").as_bytes())
                .await;
            return Err(protocol(reason));
        }
    };
    stream.write_all(b"ok\n").await.map_err(io)?;
    tracing::info!(
        pid,
        listeners = ?listeners.keys().collect::<Vec<_>>(),
        "took the listeners over from the running instance"
    );
    Ok(Taken {
        listeners,
        predecessor: Predecessor { stream, pid },
    })
}

/// The received fds by name, each a listening TCP socket.
fn check_listeners(
    names: &[&str],
    fds: Vec<OwnedFd>,
    count: usize,
) -> Result<BTreeMap<String, std::net::TcpListener>, String> {
    if fds.len() != count {
        return Err(format!(
            "{count} listeners were named but {} descriptors came",
            fds.len()
        ));
    }
    let mut listeners = BTreeMap::new();
    for (name, fd) in names.iter().zip(fds) {
        if !valid_name(name) {
            return Err(format!("a listener is named `{name}`"));
        }
        check_listening_tcp(&fd).map_err(|reason| format!("listener `{name}`: {reason}"))?;
        listeners.insert((*name).to_owned(), std::net::TcpListener::from(fd));
    }
    Ok(listeners)
}

/// `slipway-listeners 1 PID N` → (PID, N).
fn parse_header(line: &str) -> Option<(u32, usize)> {
    let mut words = line.split(' ');
    if words.next()? != "slipway-listeners" || words.next()?.parse::<u32>().ok()? != VERSION {
        return None;
    }
    let pid = words.next()?.parse().ok()?;
    let n = words.next()?.parse().ok()?;
    (words.next().is_none() && n <= MAX_LISTENERS).then_some((pid, n))
}

fn check_listening_tcp(fd: &OwnedFd) -> Result<(), String> {
    use rustix::net::{AddressFamily, SocketType, sockopt};
    let kind = sockopt::socket_type(fd).map_err(|e| format!("not a socket ({e})"))?;
    let family = sockopt::socket_domain(fd).map_err(|e| format!("not a socket ({e})"))?;
    let listening = sockopt::socket_acceptconn(fd).map_err(|e| e.to_string())?;
    if kind != SocketType::STREAM
        || !(family == AddressFamily::INET || family == AddressFamily::INET6)
    {
        return Err("not a TCP socket".to_owned());
    }
    if !listening {
        return Err("not listening".to_owned());
    }
    Ok(())
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// One line, without its `\n`; at most [`MAX_LINE`] bytes. Byte by byte, so nothing past
/// the line is consumed (the stream's EOF is read later).
async fn read_line(stream: &mut UnixStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    loop {
        let b = stream.read_u8().await?;
        if b == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        if line.len() >= MAX_LINE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a line longer than 256 bytes",
            ));
        }
        line.push(b);
    }
}
