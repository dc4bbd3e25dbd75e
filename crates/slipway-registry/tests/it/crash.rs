//! Crash safety: the registry runs in a child process (this test binary re-run as the
//! ignored test `crash::child_server`), is killed with SIGKILL in the middle of uploads, and
//! restarted on the same data directory.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::StatusCode;
use slipway_registry::{Registry, RegistryConfig};

use crate::api::header;
use crate::support::{
    ADMIN_TOKEN, Docker, assert_blobs_verified, authenticator, client, sha256, text, unique,
};

const CHILD_ENV: &str = "SLIPWAY_REGISTRY_CHILD_DIR";

/// Not a test: the server process of the crash tests. Serves the registry in
/// `$SLIPWAY_REGISTRY_CHILD_DIR/registry` and writes its address to `…/addr`.
#[test]
#[ignore = "helper process of the crash tests, started by them"]
fn child_server() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let registry = Registry::open(
        RegistryConfig::new(dir.join("registry")),
        Arc::new(authenticator()),
    )
    .expect("open registry");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        std::fs::write(dir.join("addr.tmp"), addr).expect("write addr");
        std::fs::rename(dir.join("addr.tmp"), dir.join("addr")).expect("rename addr");
        axum::serve(listener, registry.router())
            .await
            .expect("serve");
    });
}

/// A registry in a child process; killed (SIGKILL) when dropped.
struct ChildServer {
    process: std::process::Child,
    addr: SocketAddr,
}

impl ChildServer {
    fn start(dir: &Path) -> ChildServer {
        let _ = std::fs::remove_file(dir.join("addr"));
        let exe = std::env::current_exe().expect("test binary path");
        let process = Command::new(exe)
            .args(["--exact", "crash::child_server", "--ignored", "--nocapture"])
            .env(CHILD_ENV, dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child server");
        // Owned by the guard from here on: a panic below kills and reaps it.
        let mut child = ChildServer {
            process,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let addr = std::fs::read_to_string(dir.join("addr"))
                .ok()
                .and_then(|text| text.trim().parse::<SocketAddr>().ok());
            if let Some(addr) = addr {
                child.addr = addr;
                return child;
            }
            assert!(
                Instant::now() < deadline,
                "child server did not start within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn kill(mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

#[test]
fn chunked_upload_interrupted_by_a_kill_resumes_after_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let digest = sha256(&data);
    let http = client();

    let server = ChildServer::start(dir.path());
    let start = http
        .post(server.url("/v2/crash/app/blobs/uploads/"))
        .basic_auth("admin", Some(ADMIN_TOKEN))
        .send()
        .expect("start");
    assert_eq!(start.status(), StatusCode::ACCEPTED);
    let location = header(&start, "location");
    let first = http
        .patch(server.url(&location))
        .basic_auth("admin", Some(ADMIN_TOKEN))
        .header("content-range", "0-999999")
        .body(data[..1_000_000].to_vec())
        .send()
        .expect("first chunk");
    assert_eq!(first.status(), StatusCode::ACCEPTED);

    // Second chunk: announce 2 MB, send 600 KB, and kill the server while it waits for more.
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("admin:{ADMIN_TOKEN}"));
    write!(
        stream,
        "PATCH {location} HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic {auth}\r\nContent-Type: application/octet-stream\r\nContent-Length: 2000000\r\nContent-Range: 1000000-2999999\r\n\r\n",
        server.addr
    )
    .expect("write headers");
    stream
        .write_all(&data[1_000_000..1_600_000])
        .expect("write part");
    stream.flush().expect("flush");
    std::thread::sleep(Duration::from_millis(500));
    server.kill();
    drop(stream);

    let root = dir.path().join("registry");
    assert_blobs_verified(&root);
    let server = ChildServer::start(dir.path());
    let head = http
        .head(server.url(&format!("/v2/crash/app/blobs/{digest}")))
        .basic_auth("admin", Some(ADMIN_TOKEN))
        .send()
        .expect("head");
    assert_eq!(
        head.status(),
        StatusCode::NOT_FOUND,
        "a partial upload became visible"
    );

    // The session is still there; continue where its data ends.
    let status = http
        .get(server.url(&location))
        .basic_auth("admin", Some(ADMIN_TOKEN))
        .send()
        .expect("status");
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    let range = header(&status, "range");
    let end: usize = range
        .strip_prefix("0-")
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("bad Range {range}"));
    let have = end + 1;
    assert!(
        (1_000_000..=1_600_000).contains(&have),
        "upload has {have} bytes"
    );
    let rest = http
        .patch(server.url(&location))
        .basic_auth("admin", Some(ADMIN_TOKEN))
        .header("content-range", format!("{have}-{}", data.len() - 1))
        .body(data[have..].to_vec())
        .send()
        .expect("rest");
    assert_eq!(rest.status(), StatusCode::ACCEPTED);
    let put = http
        .put(server.url(&format!("{location}?digest={digest}")))
        .basic_auth("admin", Some(ADMIN_TOKEN))
        .send()
        .expect("put");
    assert_eq!(put.status(), StatusCode::CREATED);
    let got = http
        .get(server.url(&format!("/v2/crash/app/blobs/{digest}")))
        .basic_auth("admin", Some(ADMIN_TOKEN))
        .send()
        .expect("get")
        .bytes()
        .expect("body");
    assert!(got.as_ref() == data.as_slice(), "resumed blob differs");
    assert_blobs_verified(&root);
}

/// Largest file under `uploads/`, to know a push is under way.
fn largest_upload(root: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(root.join("uploads")) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::metadata(e.path().join("data")).ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0)
}

#[test]
fn docker_push_killed_mid_way_leaves_no_partial_blob_and_repeats_to_success() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("registry");
    let docker = Docker::new();
    let id = unique();
    let local = format!("slipway-reg-test/{id}:build");
    let sums = docker.build_image(&local, 2, 40_000_000);

    let server = ChildServer::start(dir.path());
    let host = server.addr.to_string();
    let login = docker.login(&host, "admin", ADMIN_TOKEN);
    assert!(login.status.success(), "{}", text(&login));
    let first = format!("{host}/crash/app-{id}:v1");
    docker.owns(&first);
    docker.ok(&["tag", &local, &first]);
    let mut push = docker
        .cmd()
        .args(["push", &first])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn docker push");
    let deadline = Instant::now() + Duration::from_secs(120);
    while largest_upload(&root) < 5_000_000 {
        assert!(Instant::now() < deadline, "push never got going");
        assert!(
            push.try_wait().expect("try_wait").is_none(),
            "push finished before the kill"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    server.kill();
    let _ = push.kill();
    let _ = push.wait();

    assert_blobs_verified(&root);
    let server = ChildServer::start(dir.path());
    let tags = client()
        .get(server.url(&format!("/v2/crash/app-{id}/tags/list")))
        .basic_auth("admin", Some(ADMIN_TOKEN))
        .send()
        .expect("tags");
    // Either the repository has no tag yet, or it does not exist at all.
    if tags.status() == StatusCode::OK {
        let body: serde_json::Value = tags.json().expect("json");
        assert_eq!(body["tags"], serde_json::json!([]));
    } else {
        assert_eq!(tags.status(), StatusCode::NOT_FOUND);
    }

    // The same push, to the restarted server, succeeds; the image pulls back intact.
    let host = server.addr.to_string();
    let login = docker.login(&host, "admin", ADMIN_TOKEN);
    assert!(login.status.success(), "{}", text(&login));
    let second = format!("{host}/crash/app-{id}:v1");
    docker.owns(&second);
    docker.ok(&["tag", &local, &second]);
    docker.ok(&["push", &second]);
    docker.ok(&["rmi", &first, &second, &local]);
    docker.ok(&["pull", &second]);
    assert_eq!(docker.ok(&["run", "--rm", &second]), sums);
    assert_blobs_verified(&root);
}
