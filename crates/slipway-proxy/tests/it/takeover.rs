//! Restart without dropping traffic, between real processes: the running ("old") proxy is
//! a child process, this test binary re-executed with `SLIPWAY_TEST_CHILD` naming its role
//! (the test [`child_role`], a no-op otherwise). A child is the honest test: the listening
//! sockets cross a real unix socket into another process's fd table, the instance lock is
//! a real flock between two processes, and "the old one exits" is a process exit.
//!
//! Also: a successor of another protocol version refused while the running one keeps
//! its listeners (two tasks over a real unix socket); the stored route table (served by a
//! new proxy before any provider set a route, basic-auth hashes kept) and a corrupt stored
//! file (ignored, with a log line naming it); and the [`slipway_proxy::Edge`]'s wiring of
//! all of it, two edges in one process.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slipway_proxy::instance::{InstanceError, InstanceLock};
use slipway_proxy::serve::{Connections, serve_http_on};
use slipway_proxy::takeover::{Claim, ClaimError, Handover, claim, listener_fd, socket_path};
use slipway_proxy::{Config, Proxy, RouteTable, persist};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdout, Command};
use tokio_util::sync::CancellationToken;

use super::serve::{TestBackend, client};

const ROLE: &str = "SLIPWAY_TEST_CHILD";
const DATA: &str = "SLIPWAY_TEST_DATA";
const ROUTES: &str = "SLIPWAY_TEST_ROUTES";

/// Not a test of its own: the body of a child process when [`ROLE`] is set.
#[test]
fn child_role() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let data = PathBuf::from(std::env::var(DATA).expect("child: data dir"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("child: runtime");
    let code = match role.as_str() {
        "hold-lock" => rt.block_on(hold_lock(&data)),
        "old-proxy" => rt.block_on(old_proxy(
            &data,
            &std::env::var(ROUTES).expect("child: routes"),
        )),
        other => panic!("child: unknown role {other}"),
    };
    // Past libtest's own reporting: the parent reads this process's lines and status only.
    std::process::exit(code);
}

/// Holds the data dir's lock until its stdin closes.
async fn hold_lock(data: &Path) -> i32 {
    let _lock = InstanceLock::acquire(data).expect("child: lock");
    println!("CHILD locked");
    let _ = tokio::task::spawn_blocking(|| {
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest)
    })
    .await;
    0
}

/// A proxy as `slipway proxy` runs one: the lock, the stored routes, a listener, the
/// handover socket; on a takeover it stops accepting, drains and exits 0 (3 when the
/// drain timeout cut something).
async fn old_proxy(data: &Path, routes: &str) -> i32 {
    let lock = InstanceLock::acquire(data).expect("child: lock");
    let config = Config {
        drain_timeout: Duration::from_secs(20),
        ..Config::default()
    };
    let proxy = Arc::new(Proxy::new(config, RouteTable::default()));
    let stop = CancellationToken::new();
    persist::spawn_saver(
        proxy.clone(),
        persist::dir(data),
        Duration::from_millis(20),
        stop.clone(),
    );
    let set = slipway_proxy::file::parse(routes, "routes.yml").expect("child: routes");
    proxy.set_provider("file", set);
    let stored = persist::dir(data).join(persist::FILE);
    while !stored.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("child: bind");
    let addr = listener.local_addr().expect("child: addr");
    let fds = BTreeMap::from([(
        "proxy-http".to_owned(),
        listener_fd(&listener).expect("child: fd"),
    )]);
    let handover = Handover::bind(&socket_path(data), fds).expect("child: handover");
    let connections = Connections::new();
    let accepting = CancellationToken::new();
    let serving = tokio::spawn(serve_http_on(
        proxy.clone(),
        listener,
        accepting.clone(),
        connections.clone(),
    ));
    println!("CHILD ready {addr}");
    let successor = handover.taken().await;
    println!("CHILD handed-over");
    accepting.cancel();
    let _ = serving.await;
    let drained = successor
        .drain_and_depart(&connections, &proxy, Duration::from_secs(20), Some(lock))
        .await;
    println!("CHILD drained {drained}");
    stop.cancel();
    if drained { 0 } else { 3 }
}

struct ChildProcess {
    child: Child,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl ChildProcess {
    fn spawn(role: &str, data: &Path, routes: &str) -> ChildProcess {
        let exe = std::env::current_exe().expect("test binary");
        let mut child = Command::new(exe)
            .args(["takeover::child_role", "--exact", "--nocapture"])
            .env(ROLE, role)
            .env(DATA, data)
            .env(ROUTES, routes)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the child");
        let stdout = child.stdout.take().expect("child stdout");
        ChildProcess {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The rest of the first line of the child's that starts with `CHILD {word}`.
    async fn expect(&mut self, word: &str) -> String {
        let want = format!("CHILD {word}");
        let read = async {
            while let Some(line) = self.lines.next_line().await.expect("child output") {
                if let Some(rest) = line.strip_prefix(&want) {
                    return rest.trim().to_owned();
                }
            }
            panic!("the child ended without saying `{want}`");
        };
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .unwrap_or_else(|_| panic!("the child did not say `{want}` in time"))
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("child pid")
    }

    fn has_exited(&mut self) -> bool {
        self.child.try_wait().expect("child status").is_some()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_one_data_dir_is_refused_naming_the_dir_the_pid_and_takeover() {
    let data = tempfile::tempdir().expect("data dir");
    let mut holder = ChildProcess::spawn("hold-lock", data.path(), "");
    holder.expect("locked").await;
    let refused = InstanceLock::acquire(data.path()).expect_err("a second instance");
    match &refused {
        InstanceError::Held { pid, .. } => assert_eq!(*pid, Some(holder.pid())),
        other => panic!("not refused as held: {other}"),
    }
    let message = refused.to_string();
    assert!(
        message.contains(&data.path().display().to_string()),
        "{message}"
    );
    assert!(
        message.contains(&format!("pid {}", holder.pid())),
        "{message}"
    );
    assert!(message.contains("--takeover"), "{message}");
    let mode = std::fs::metadata(data.path().join("slipway.lock"))
        .expect("lock file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The holder's exit releases the lock, whatever its file still says.
    drop(holder.child.stdin.take());
    let status = tokio::time::timeout(Duration::from_secs(10), holder.child.wait())
        .await
        .expect("holder exits")
        .expect("holder status");
    assert!(status.success());
    let lock = InstanceLock::acquire(data.path()).expect("free once the holder exited");
    let written = std::fs::read_to_string(data.path().join("slipway.lock")).expect("read");
    assert_eq!(written.trim(), std::process::id().to_string());
    drop(lock);
}

/// What a bounded load of keep-alive GETs saw: every answer and every error.
#[derive(Debug, Default)]
struct Seen {
    ok: usize,
    failed: Vec<String>,
}

/// `clients` loops of GETs, each on its own keep-alive client, until `until`.
fn load(
    addr: SocketAddr,
    host: &'static str,
    clients: usize,
    until: Instant,
) -> Vec<tokio::task::JoinHandle<Seen>> {
    (0..clients)
        .map(|_| {
            tokio::spawn(async move {
                let c = client();
                let mut seen = Seen::default();
                // Bounded in time and in count.
                while Instant::now() < until && seen.ok + seen.failed.len() < 10_000 {
                    match c
                        .get(format!("http://{addr}/"))
                        .header("host", host)
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == reqwest::StatusCode::OK => match r.bytes().await {
                            Ok(_) => seen.ok += 1,
                            Err(e) => seen.failed.push(format!("body: {e}")),
                        },
                        Ok(r) => seen.failed.push(format!("status {}", r.status())),
                        Err(e) => seen.failed.push(format!("error: {e:?}")),
                    }
                }
                seen
            })
        })
        .collect()
}

/// An upgraded echo tunnel through the proxy at `addr`.
async fn open_tunnel(addr: SocketAddr, host: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        format!("GET /ws HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("handshake");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.expect("read head"),
            1,
            "closed: {head:?}"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    s
}

async fn echo(s: &mut TcpStream, msg: &str) {
    s.write_all(msg.as_bytes())
        .await
        .expect("send on the tunnel");
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(buf, msg.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_under_load_fails_no_request_and_the_old_proxy_exits_after_its_last_request() {
    let data = tempfile::tempdir().expect("data dir");
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let routes = format!(
        "routes:\n  - host: app.test\n    backends: [\"{}\", \"{}\"]\n",
        a.addr, b.addr
    );
    let mut old = ChildProcess::spawn("old-proxy", data.path(), &routes);
    let addr: SocketAddr = old.expect("ready").await.parse().expect("old's address");

    // Without --takeover, a second instance is refused while the old one runs.
    match claim(data.path(), false).await {
        Err(ClaimError::Instance(InstanceError::Held { pid, .. })) => {
            assert_eq!(pid, Some(old.pid()))
        }
        other => panic!("a second instance was not refused: {other:?}"),
    }
    let mode = std::fs::metadata(socket_path(data.path()))
        .expect("handover socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let until = Instant::now() + Duration::from_secs(5);
    let load = load(addr, "app.test", 4, until);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // In flight on the old one when it hands over: a slow request and an open tunnel.
    let slow = tokio::spawn(async move {
        client()
            .get(format!("http://{addr}/slow?ms=1500"))
            .header("host", "app.test")
            .send()
            .await
    });
    let mut tunnel = open_tunnel(addr, "app.test").await;
    echo(&mut tunnel, "before the takeover").await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The new instance: the listeners from the old one, the routes it stored.
    let taken = match claim(data.path(), true).await {
        Ok(Claim::Successor(taken)) => taken,
        other => panic!("not a takeover: {other:?}"),
    };
    assert_eq!(
        taken.listeners.keys().collect::<Vec<_>>(),
        ["proxy-http"],
        "names as the old one gave them"
    );
    assert_eq!(taken.predecessor.pid(), old.pid());
    let new_proxy = Arc::new(Proxy::new(Config::default(), RouteTable::default()));
    let restored = persist::restore(&new_proxy, &persist::dir(data.path()));
    assert_eq!(restored.providers, ["file"]);
    assert!(restored.ignored.is_none());
    let mut listeners = taken.listeners;
    let std_listener = listeners.remove("proxy-http").expect("proxy-http");
    std_listener.set_nonblocking(true).expect("nonblocking");
    assert_eq!(
        std_listener.local_addr().expect("addr"),
        addr,
        "the same socket"
    );
    let new_stop = CancellationToken::new();
    let _stop_new = new_stop.clone().drop_guard();
    tokio::spawn(serve_http_on(
        new_proxy.clone(),
        TcpListener::from_std(std_listener).expect("tokio listener"),
        new_stop,
        Connections::new(),
    ));
    old.expect("handed-over").await;

    // The old one still serves what it had: the tunnel echoes, the slow request answers.
    echo(&mut tunnel, "after the takeover").await;
    let slow = slow.await.expect("slow task").expect("the slow request");
    assert_eq!(slow.status(), reqwest::StatusCode::OK);
    // Its connections have all ended by now; the tunnel alone keeps it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!old.has_exited(), "the old proxy left with a tunnel open");
    echo(&mut tunnel, "still open").await;
    drop(tunnel);

    let said = old.expect("drained").await;
    assert_eq!(said, "true", "the old proxy's drain timed out");
    let status = tokio::time::timeout(Duration::from_secs(15), old.child.wait())
        .await
        .expect("the old proxy exits")
        .expect("status");
    assert!(status.success(), "{status}");
    let _lock = tokio::time::timeout(
        Duration::from_secs(10),
        taken
            .predecessor
            .gone_then_lock(data.path(), Duration::from_secs(5)),
    )
    .await
    .expect("the new one learns the old one has gone")
    .expect("the lock, once the old one has gone");

    let mut seen = Seen::default();
    for t in load {
        let s = t.await.expect("load task");
        seen.ok += s.ok;
        seen.failed.extend(s.failed);
    }
    assert!(
        seen.failed.is_empty(),
        "{} failed: {:?}",
        seen.failed.len(),
        seen.failed
    );
    eprintln!("{} requests answered through the takeover", seen.ok);
    assert!(seen.ok > 50, "only {} requests", seen.ok);
    // Served by the new one alone now, from the routes it restored.
    let r = client()
        .get(format!("http://{addr}/"))
        .header("host", "app.test")
        .send()
        .await
        .expect("after the old one has gone");
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    assert!(a.hits() > 0 && b.hits() > 0);
}

async fn serve(proxy: Arc<Proxy>) -> (SocketAddr, tokio_util::sync::DropGuard) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    tokio::spawn(serve_http_on(
        proxy,
        listener,
        stop.clone(),
        Connections::new(),
    ));
    (addr, stop.drop_guard())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_routes_are_served_by_a_new_proxy_before_any_provider_with_their_hashes() {
    let data = tempfile::tempdir().expect("data dir");
    let backend = TestBackend::start("a").await;
    // `printf 'secret p4ss' | openssl sha1 -binary | base64`
    let routes = format!(
        "routes:\n  - host: private.test\n    backends: [\"{}\"]\n    basic_auth: [\"ann:{{SHA}}vxwVaHCynNyI/Wtw62mLQM7jAhA=\"]\n  - host: open.test\n    path: /api\n    backends: [{{address: \"{}\", weight: 3}}]\n",
        backend.addr, backend.addr
    );
    let first = Arc::new(Proxy::new(Config::default(), RouteTable::default()));
    let stop = CancellationToken::new();
    let saver = persist::spawn_saver(
        first.clone(),
        persist::dir(data.path()),
        Duration::from_millis(20),
        stop.clone(),
    );
    first.set_provider(
        "file",
        slipway_proxy::file::parse(&routes, "routes.yml").expect("routes"),
    );
    let stored = persist::dir(data.path()).join(persist::FILE);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !stored.exists() {
        assert!(Instant::now() < deadline, "nothing stored");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    saver.await.expect("saver");
    let mode = std::fs::metadata(&stored)
        .expect("stored")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "it holds password hashes");
    let text = std::fs::read_to_string(&stored).expect("read");
    assert!(text.contains("vxwVaHCynNyI"), "the hash is kept: {text}");
    // The `--json` view still shows none.
    let json = serde_json::to_string(&first.providers()).expect("json");
    assert!(!json.contains("vxwVaHCynNyI"), "{json}");

    // A new proxy, no provider: the stored routes, served at once.
    let second = Arc::new(Proxy::new(Config::default(), RouteTable::default()));
    let restored = persist::restore(&second, &persist::dir(data.path()));
    assert_eq!(restored.providers, ["file"]);
    assert_eq!(
        second.providers(),
        first.providers(),
        "the same routes, hashes included"
    );
    let (addr, _stop) = serve(second).await;
    let c = client();
    let url = |path: &str| format!("http://{addr}{path}");
    let denied = c
        .get(url("/"))
        .header("host", "private.test")
        .send()
        .await
        .expect("get");
    assert_eq!(denied.status(), reqwest::StatusCode::UNAUTHORIZED);
    let allowed = c
        .get(url("/"))
        .header("host", "private.test")
        .basic_auth("ann", Some("secret p4ss"))
        .send()
        .await
        .expect("get");
    assert_eq!(allowed.status(), reqwest::StatusCode::OK);
    let api = c
        .get(url("/api/x"))
        .header("host", "open.test")
        .send()
        .await
        .expect("get");
    assert_eq!(api.status(), reqwest::StatusCode::OK);
    let outside = c
        .get(url("/web"))
        .header("host", "open.test")
        .send()
        .await
        .expect("get");
    assert_eq!(outside.status(), reqwest::StatusCode::NOT_FOUND);
}

/// The log lines written while `f` runs.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&buffer.0.lock().expect("log buffer")).into_owned();
    (out, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_or_unknown_stored_table_is_ignored_with_a_log_line_naming_it() {
    let data = tempfile::tempdir().expect("data dir");
    let dir = persist::dir(data.path());
    std::fs::create_dir_all(&dir).expect("mkdir");
    let stored = dir.join(persist::FILE);
    for (content, says) in [
        (
            "{\"version\": 1, \"providers\": {\"file\": [{\"host\": 7",
            "not a stored route table",
        ),
        ("{\"version\": 99, \"providers\": {}}", "version 99"),
        (
            "{\"version\": 1, \"providers\": {\"file\": [{\"host\": \"bad host!\", \"path\": null, \"exact\": false, \"priority\": 0, \"tls\": \"off\", \"backend_sets\": [], \"options\": {\"http\": \"serve\", \"hsts\": null, \"request_headers\": {}, \"response_headers\": {}, \"strip_prefixes\": [], \"basic_auth\": null, \"sticky\": null, \"health_check\": null, \"acme_email\": null}, \"source\": {\"kind\": \"public-url\"}, \"origin\": null}]}}",
            "route 0",
        ),
        ("\u{0}\u{1}garbage", "not a stored route table"),
    ] {
        std::fs::write(&stored, content).expect("write");
        let proxy = Arc::new(Proxy::new(Config::default(), RouteTable::default()));
        let (restored, log) = logged(|| persist::restore(&proxy, &dir));
        assert!(restored.providers.is_empty());
        let ignored = restored.ignored.expect("reported").to_string();
        assert!(ignored.contains(says), "{ignored}");
        assert!(
            log.contains(&stored.display().to_string()),
            "no path in: {log}"
        );
        assert!(log.contains("ignored"), "{log}");
        assert!(proxy.providers().is_empty());
        assert!(proxy.snapshot().table.routes().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_of_another_version_is_refused_and_the_running_one_keeps_its_listeners() {
    let data = tempfile::tempdir().expect("data dir");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let fds = BTreeMap::from([("proxy-http".to_owned(), listener_fd(&listener).expect("fd"))]);
    let handover = Arc::new(Handover::bind(&socket_path(data.path()), fds).expect("handover"));
    let waiting = tokio::spawn({
        let handover = handover.clone();
        async move { handover.taken().await }
    });
    let mut other = tokio::net::UnixStream::connect(socket_path(data.path()))
        .await
        .expect("connect");
    other
        .write_all(b"slipway-takeover 9\n")
        .await
        .expect("hello");
    let mut answer = String::new();
    other.read_to_string(&mut answer).await.expect("answer");
    assert!(
        answer.starts_with("slipway-error") && answer.contains("version 1"),
        "{answer}"
    );
    assert!(!waiting.is_finished(), "a refused successor took nothing");
    // A successor of this version still gets the listener afterwards.
    let taken = slipway_proxy::take_over(&socket_path(data.path()))
        .await
        .expect("take over");
    let got = &taken.listeners["proxy-http"];
    assert_eq!(got.local_addr().expect("addr"), addr);
    let _successor = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the handover ends")
        .expect("task");
}

/// Two edges in one process (one runtime): the listeners still pass as fds over the real
/// unix socket and the flock conflicts between the two opens of the lock file, so this
/// proves the edge's wiring; the two-process test above proves the handover itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_on_a_data_dir_hands_its_listeners_and_routes_to_a_successor_edge() {
    use slipway_proxy::{Edge, EdgeConfig, EdgeError};
    let data = tempfile::tempdir().expect("data dir");
    let web = TestBackend::start("web").await;
    let routes = data.path().join("routes.yml");
    std::fs::write(
        &routes,
        format!(
            "routes:\n  - host: app.test\n    backends: [\"{}\"]\n",
            web.addr
        ),
    )
    .expect("write routes");
    let config = |takeover: bool, routes_file: Option<PathBuf>| EdgeConfig {
        http: Some("127.0.0.1:0".parse().expect("addr")),
        metrics: Some("127.0.0.1:0".parse().expect("addr")),
        routes_file,
        data_dir: Some(data.path().to_path_buf()),
        takeover,
        drain_timeout: Some(Duration::from_secs(10)),
        ..EdgeConfig::default()
    };
    let old_stop = CancellationToken::new();
    let _old_stop = old_stop.clone().drop_guard();
    let old = Edge::start(config(false, Some(routes.clone())), old_stop)
        .await
        .expect("the first edge starts");
    let addr = old.http_addr().expect("http");
    let c = client();
    let get = |path: &'static str| {
        let c = c.clone();
        async move {
            c.get(format!("http://{addr}{path}"))
                .header("host", "app.test")
                .send()
                .await
        }
    };
    assert_eq!(
        get("/").await.expect("get").text().await.expect("body"),
        "web"
    );

    // A second edge without takeover is refused, naming the data dir, the pid, the flag.
    let refused = Edge::start(config(false, None), CancellationToken::new()).await;
    match refused {
        Err(e @ EdgeError::Claim(_)) => {
            let message = e.to_string();
            assert!(
                message.contains(&data.path().display().to_string()),
                "{message}"
            );
            assert!(
                message.contains(&format!("pid {}", std::process::id())),
                "{message}"
            );
            assert!(message.contains("--takeover"), "{message}");
        }
        other => panic!("a second edge was not refused: {other:?}"),
    }

    let stored = persist::dir(data.path()).join(persist::FILE);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !stored.exists() {
        assert!(Instant::now() < deadline, "the routes were not stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let slow = tokio::spawn(get("/slow?ms=1500"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The caller's own listener (`slipway up`'s API), added after the edge started.
    let api = std::net::TcpListener::bind("127.0.0.1:0").expect("api listener");
    old.hand_over_also("api", &api)
        .expect("api handed over too");

    // The successor has no routes file: it serves what the old one stored.
    let new_stop = CancellationToken::new();
    let _new_stop = new_stop.clone().drop_guard();
    let new = Edge::start(config(true, None), new_stop)
        .await
        .expect("the successor starts");
    assert_eq!(new.http_addr(), Some(addr), "the same listener");
    assert_eq!(
        new.metrics_addr(),
        old.metrics_addr(),
        "the same metrics listener"
    );
    assert!(
        new.take_listener("proxy-http").is_none(),
        "the edge serves its own"
    );
    let new_api = new
        .take_listener("api")
        .expect("the api listener, for the caller");
    assert_eq!(
        new_api.local_addr().expect("addr"),
        api.local_addr().expect("addr")
    );
    assert!(new.take_listener("api").is_none(), "taken once");
    let from_new = get("/").await.expect("get after the takeover");
    assert_eq!(from_new.text().await.expect("body"), "web");

    let old_signal = old.handed_over_signal();
    tokio::time::timeout(Duration::from_secs(5), old_signal.cancelled())
        .await
        .expect("the old edge was told");
    let slow = slow
        .await
        .expect("join")
        .expect("the slow request on the old edge");
    assert_eq!(slow.status(), reqwest::StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(15), old.wait())
        .await
        .expect("the old edge ends once drained");
    assert!(old.handed_over());
    assert!(!new.handed_over());

    // The successor now holds the data dir and answers the next successor.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let refused = Edge::start(config(false, None), CancellationToken::new()).await;
        let held = matches!(refused, Err(EdgeError::Claim(_)));
        if held && socket_path(data.path()).exists() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the successor did not take the data dir"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..3 {
        let r = get("/").await.expect("get from the successor alone");
        assert_eq!(r.status(), reqwest::StatusCode::OK);
    }
}
