//! `slipway proxy` (serving, `routes-from`, `check`, `routes`) and the proxy of `slipway up`,
//! as a user runs them.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::{slipway, text};

/// `slipway proxy ARGS... FILE`, to run with [`outcome`].
fn proxy(args: &[&str], file: &Path) -> Command {
    let mut cmd = slipway();
    cmd.arg("proxy").args(args).arg(file);
    cmd
}

/// Runs `cmd`: its exit code, standard output and standard error.
fn outcome(mut cmd: Command) -> (Option<i32>, String, String) {
    let out = cmd.output().expect("slipway runs");
    let (stdout, stderr) = text(&out);
    (out.status.code(), stdout, stderr)
}

/// `text` written to `name` in `dir`: its path.
fn written(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let file = dir.path().join(name);
    std::fs::write(&file, text).expect("write");
    file
}

const STACK: &str = r#"
version: "3.7"
x-labels: &common
  traefik.enable: "true"
services:
  web:
    image: nginx
    ports: ["127.0.0.1:8080:80"]
    deploy:
      labels:
        <<: *common
        traefik.http.routers.web.rule: Host(`${APP_HOST}`) || Host(`www.${APP_HOST}`)
        traefik.http.services.web.loadbalancer.server.port: "80"
  api:
    image: api
    expose: ["9000"]
    environment:
      - VIRTUAL_HOST=api.example.com
      - VIRTUAL_PATH=/v1
  db:
    image: postgres
"#;

#[test]
fn proxy_routes_from_prints_the_routes_of_a_stack_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = written(&dir, "stack.yml", STACK);
    let (code, stdout, stderr) = outcome(proxy(
        &[
            "routes-from",
            "--json",
            "--env",
            "APP_HOST=shop.example.com",
        ],
        &file,
    ));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let v: Value = serde_json::from_str(&stdout).expect("json");
    let routes: Vec<(String, String, String)> = v["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .map(|r| {
            (
                format!(
                    "{}{}",
                    r["host"].as_str().unwrap_or(""),
                    r["path"].as_str().unwrap_or("")
                ),
                r["backend_sets"][0]["backends"][0]["address"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                r["source"]["container"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        routes,
        [
            (
                "api.example.com/v1".into(),
                "api:9000".into(),
                "service api".into()
            ),
            (
                "shop.example.com".into(),
                "127.0.0.1:8080".into(),
                "service web".into()
            ),
            (
                "www.shop.example.com".into(),
                "127.0.0.1:8080".into(),
                "service web".into()
            ),
        ]
    );
    // A `.env` beside the file is read, and the environment wins over it.
    written(
        &dir,
        ".env",
        "# as compose reads it\nAPP_HOST=dotenv.example.com\n",
    );
    let mut cmd = proxy(&["routes-from"], &file);
    cmd.env_remove("APP_HOST");
    let (_, stdout, stderr) = outcome(cmd);
    assert!(
        stdout.contains("dotenv.example.com -> "),
        "{stdout}{stderr}"
    );
    // The human form: one line a route.
    let mut cmd = proxy(&["routes-from"], &file);
    cmd.env("APP_HOST", "env.example.com");
    let (_, stdout, _) = outcome(cmd);
    assert!(
        stdout.contains("env.example.com -> 127.0.0.1:8080*1 tls=off http=serve (labels of service web, router web)"),
        "{stdout}"
    );
}

#[test]
fn proxy_routes_from_reports_problems_with_their_place_and_exits_1() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = written(
        &dir,
        "stack.yml",
        "services:\n  web:\n    labels:\n      - \"traefik.http.routers.w.rule=Host(`${NAME?set NAME}`)\"\n",
    );
    let mut cmd = proxy(&["routes-from"], &file);
    cmd.env_remove("NAME");
    let (code, stdout, stderr) = outcome(cmd);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:4:9: error: required variable `NAME`: set NAME",
            file.display()
        )),
        "{stderr}"
    );
    let (code, _, stderr) = outcome(proxy(&["routes-from"], Path::new("/nonexistent.yml")));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("cannot read /nonexistent.yml"), "{stderr}");
}

#[test]
fn proxy_check_reads_a_routes_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = written(
        &dir,
        "routes.yml",
        "routes:\n  - host: app.example.com\n    path: /api\n    backends: [\"127.0.0.1:9000\", {address: \"127.0.0.1:9001\", weight: 3}]\n    tls: acme\n",
    );
    let (code, stdout, stderr) = outcome(proxy(&["check"], &file));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.starts_with(
            "app.example.com/api -> 127.0.0.1:9000*1, 127.0.0.1:9001*3 tls=acme http=serve (file "
        ),
        "{stdout}"
    );
    written(
        &dir,
        "routes.yml",
        "routes:\n  - host: a.com\n    backend: [\"127.0.0.1:1\"]\n",
    );
    let (code, _, stderr) = outcome(proxy(&["check"], &file));
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&format!(
            "{}:3:5: error: unknown key `backend` in a route (hint: did you mean `backends`?)",
            file.display()
        )),
        "{stderr}"
    );
}

#[test]
fn proxy_routes_from_shows_a_conflict_and_which_service_won() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = written(
        &dir,
        "compose.yml",
        "services:\n  one:\n    environment: {VIRTUAL_HOST: a.example.com, VIRTUAL_PORT: \"3000\"}\n  two:\n    labels: {slipway.proxy.host: a.example.com, slipway.proxy.port: \"4000\", slipway.proxy.tls: acme}\n",
    );
    let (code, stdout, stderr) = outcome(proxy(&["routes-from"], &file));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("a.example.com -> one:3000*1 tls=off"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stderr.contains("conflict: a.example.com: labels of service one wins over labels of service two (their TLS differs)"),
        "{stderr}"
    );
}

/// A backend that answers every request with its name, on a thread.
fn name_backend(name: &'static str) -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                loop {
                    // One request head per turn; keep-alive until the proxy closes.
                    let mut line = String::new();
                    let mut head_done = false;
                    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                        if line == "\r\n" {
                            head_done = true;
                            break;
                        }
                        line.clear();
                    }
                    if !head_done {
                        return;
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Backend: {name}\r\n\r\n{name}",
                        name.len()
                    );
                    if reader.get_mut().write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// `slipway proxy` running, its stderr collected.
struct ProxyProcess {
    child: std::process::Child,
    addr: String,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_proxy(routes: &std::path::Path) -> ProxyProcess {
    start_proxy_with(&["--routes", routes.to_str().expect("utf-8 path")])
}

/// `slipway proxy --http 127.0.0.1:0 ARGS...`, once it listens.
fn start_proxy_with(args: &[&str]) -> ProxyProcess {
    use std::io::{BufRead, BufReader};
    let mut child = slipway()
        .args(["proxy", "--http", "127.0.0.1:0"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start slipway proxy");
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = stderr.clone();
    let err = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Ok(mut s) = sink.lock() {
                s.push_str(&line);
                s.push('\n');
            }
        }
    });
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read stdout");
    let addr = line
        .trim()
        .strip_prefix("slipway proxy listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    ProxyProcess {
        child,
        addr,
        stderr,
    }
}

fn get_through(addr: &str, host: &str) -> (u16, String) {
    let c = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let r = c
        .get(format!("http://{addr}/"))
        .header("host", host)
        .send()
        .expect("request through slipway proxy");
    (r.status().as_u16(), r.text().unwrap_or_default())
}

fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn slipway_proxy_serves_a_routes_file_and_follows_its_changes() {
    let a = name_backend("A");
    let b = name_backend("B");
    let dir = tempfile::tempdir().expect("temp dir");
    let routes = dir.path().join("routes.yml");
    std::fs::write(
        &routes,
        format!("routes:\n  - host: app.test\n    backends: [\"{a}\"]\n"),
    )
    .expect("write routes");
    let p = start_proxy(&routes);
    assert_eq!(get_through(&p.addr, "app.test"), (200, "A".to_owned()));
    let (status, body) = get_through(&p.addr, "other.test");
    assert_eq!(status, 404, "{body}");

    // A broken file is reported where it is broken, and A keeps serving.
    std::fs::write(
        &routes,
        format!("routes:\n  - host: app.test\n    backendz: [\"{b}\"]\n"),
    )
    .expect("write routes");
    let shown = routes.display().to_string();
    eventually("the error to be reported", || {
        p.stderr
            .lock()
            .is_ok_and(|s| s.contains(&format!("{shown}:3:5")) && s.contains("keep serving"))
    });
    assert_eq!(get_through(&p.addr, "app.test"), (200, "A".to_owned()));

    std::fs::write(
        &routes,
        format!(
            "routes:\n  - host: app.test\n    backends: [\"{b}\"]\n  - host: other.test\n    backends: [\"{a}\"]\n"
        ),
    )
    .expect("write routes");
    eventually("the new routes to serve", || {
        get_through(&p.addr, "app.test") == (200, "B".to_owned())
    });
    assert_eq!(get_through(&p.addr, "other.test"), (200, "A".to_owned()));
}

#[test]
fn slipway_proxy_refuses_a_taken_port_and_a_broken_file_with_hints() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = slipway()
        .args(["proxy", "--http", &addr])
        .output()
        .expect("run");
    let (_, err) = text(&out);
    assert!(!out.status.success());
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(err.contains("--http 127.0.0.1:8000"), "{err}");

    let dir = tempfile::tempdir().expect("temp dir");
    let routes = dir.path().join("routes.yml");
    std::fs::write(
        &routes,
        "routes:\n  - host: a.test\n    backends: [\"nope\"]\n",
    )
    .expect("write");
    let out = slipway()
        .args(["proxy", "--http", "127.0.0.1:0", "--routes"])
        .arg(&routes)
        .output()
        .expect("run");
    let (_, err) = text(&out);
    assert!(!out.status.success());
    assert!(err.contains(&format!("{}:3:", routes.display())), "{err}");
    assert!(err.contains("slipway proxy check"), "{err}");
}

#[test]
fn slipway_up_serves_the_proxy_and_reports_its_routes() {
    let a = name_backend("A");
    let dir = tempfile::tempdir().expect("temp dir");
    let routes_file = written(
        &dir,
        "routes.yml",
        &format!("routes:\n  - host: app.test\n    backends: [\"{a}\"]\n"),
    );
    let data = dir.path().join("data");
    let up = super::server::start_up(
        &data,
        &[
            "--proxy-http",
            "127.0.0.1:0",
            "--proxy-https",
            "127.0.0.1:0",
            "--no-docker-labels",
            "--no-acme",
            "--proxy-routes",
            routes_file.to_str().expect("utf-8 path"),
            "--public-url",
            "http://ci.test",
        ],
    );
    let edge = up.facts["proxy_http"]
        .as_str()
        .expect("proxy_http in the start-up facts")
        .to_owned();
    assert_eq!(get_through(&edge, "app.test"), (200, "A".to_owned()));
    let (status, _) = get_through(&edge, "nobody.test");
    assert_eq!(status, 404, "an unknown host is not proxied anywhere");
    // --public-url's host is Slipway itself.
    let c = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let health = c
        .get(format!("http://{edge}/healthz"))
        .header("host", "ci.test")
        .send()
        .expect("slipway through its proxy");
    assert_eq!(health.text().unwrap_or_default(), "ok\n");

    // --public-url names a host this machine cannot resolve: talk to the listener.
    let server = format!("http://{}", up.facts["listen"].as_str().expect("listen"));
    let out = slipway()
        .args([
            "proxy",
            "routes",
            "--json",
            "--server",
            &server,
            "--token",
            super::server::ADMIN,
        ])
        .output()
        .expect("run");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let status: Value = serde_json::from_str(&stdout).expect("JSON");
    let routes = status["routes"].as_array().expect("routes");
    let app = routes
        .iter()
        .find(|r| r["host"] == "app.test")
        .unwrap_or_else(|| panic!("app.test in {status}"));
    assert!(
        app["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("file ")),
        "{app}"
    );
    assert_eq!(app["backends"][0]["address"], a.to_string());
    assert_eq!(app["backends"][0]["state"], "serving");
    let ci = routes
        .iter()
        .find(|r| r["host"] == "ci.test")
        .unwrap_or_else(|| panic!("ci.test in {status}"));
    assert_eq!(ci["source"], "--public-url");

    let out = slipway()
        .args([
            "proxy",
            "routes",
            "--server",
            &server,
            "--token",
            super::server::ADMIN,
        ])
        .output()
        .expect("run");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!(
            "app.test  tls=off  (file {})",
            routes_file.display()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("  {a}  serving  weight 1  0 in flight")),
        "{stdout}"
    );

    // The server's /metrics carries the proxy's.
    let metrics = c
        .get(format!("{server}/metrics"))
        .send()
        .expect("metrics")
        .text()
        .unwrap_or_default();
    assert!(
        metrics.contains("slipway_proxy_requests_total{route=\"app.test\",code=\"2xx\"} 1"),
        "{metrics}"
    );

    // Without a token the API says no.
    let r = c
        .get(format!("{server}/api/proxy/routes"))
        .send()
        .expect("api");
    assert_eq!(r.status(), 401);
}

#[test]
fn slipway_up_names_its_proxy_flag_when_the_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = slipway()
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--proxy-http",
            &addr,
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .output()
        .expect("run");
    let (_, err) = text(&out);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("cannot listen on {addr} for --proxy-http")),
        "{err}"
    );
    assert!(err.contains("--proxy-http 127.0.0.1:8000"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A backend that reads one request's body of `Content-Length` bytes, and answers with
/// how many bytes and their sum.
fn counting_backend() -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::with_capacity(1 << 16, stream);
                let mut length = 0u64;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let (mut got, mut sum) = (0u64, 0u64);
                let mut buf = vec![0u8; 1 << 16];
                while got < length {
                    let want = buf.len().min((length - got) as usize);
                    match reader.read(&mut buf[..want]) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            got += n as u64;
                            sum = buf[..n]
                                .iter()
                                .fold(sum, |s, b| s.wrapping_add(u64::from(*b)));
                        }
                    }
                }
                let body = format!("{got} {sum}");
                let _ = write!(
                    reader.get_mut(),
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    addr
}

/// `len` bytes of a repeating pattern, made as they are read.
struct Pattern {
    left: u64,
    at: u8,
}

impl std::io::Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.left as usize);
        for b in &mut buf[..n] {
            *b = self.at;
            self.at = self.at.wrapping_add(7);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_1_gb_upload_streams_through_slipway_proxy_in_bounded_memory() {
    const LEN: u64 = 1 << 30;
    let backend = counting_backend();
    let dir = tempfile::tempdir().expect("temp dir");
    let routes = written(
        &dir,
        "routes.yml",
        &format!("routes:\n  - host: up.test\n    backends: [\"{backend}\"]\n"),
    );
    let p = start_proxy(&routes);
    let before = peak_rss_kib(p.child.id());
    // Each cycle of 256 bytes of the pattern visits every byte value once (7 is odd), and
    // LEN is whole cycles: the sum, without making a gigabyte.
    const _: () = assert!(LEN.is_multiple_of(256));
    let expected_sum = (LEN / 256) * (255 * 256 / 2);
    let c = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(300))
        .build()
        .expect("client");
    let r = c
        .post(format!("http://{}/upload", p.addr))
        .header("host", "up.test")
        .body(reqwest::blocking::Body::sized(
            Pattern { left: LEN, at: 0 },
            LEN,
        ))
        .send()
        .expect("the upload goes through");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().unwrap_or_default(),
        format!("{LEN} {expected_sum}"),
        "every byte arrived, in order"
    );
    let peak = peak_rss_kib(p.child.id());
    assert!(peak > 0, "VmHWM of the proxy is readable");
    // Streamed, the proxy holds a few buffers; buffered, it would hold the gigabyte.
    assert!(
        peak < 64 * 1024,
        "slipway proxy's peak RSS {peak} KiB (at start {before} KiB) for a 1 GiB upload"
    );
    eprintln!("slipway proxy's peak RSS: {before} KiB at start, {peak} KiB after 1 GiB");
}

/// What a load's clients saw: answers by body, and every failure.
type Answers = (std::collections::BTreeMap<String, usize>, Vec<String>);

/// Keep-alive clients sending GETs for `host` through `addr` until [`Load::finish`] (at
/// most 20,000 each); every answer and every failure, connection errors included, counted.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<Answers>>,
    clients: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: &str, host: &'static str, clients: usize) -> Load {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen: std::sync::Arc<std::sync::Mutex<Answers>> = Default::default();
        let clients = (0..clients)
            .map(|_| {
                let (stop, seen, addr) = (stop.clone(), seen.clone(), addr.to_owned());
                std::thread::spawn(move || {
                    let c = reqwest::blocking::Client::builder()
                        .no_proxy()
                        .build()
                        .expect("client");
                    let mut sent = 0;
                    while !stop.load(Ordering::Relaxed) && sent < 20_000 {
                        sent += 1;
                        let outcome = c
                            .get(format!("http://{addr}/"))
                            .header("host", host)
                            .send()
                            .map_err(|e| format!("{e:?}"))
                            .and_then(|r| {
                                let status = r.status();
                                let body = r.text().map_err(|e| format!("{e:?}"))?;
                                if status == 200 {
                                    Ok(body)
                                } else {
                                    Err(format!("{status}: {body}"))
                                }
                            });
                        let mut s = seen.lock().expect("lock");
                        match outcome {
                            Ok(body) => *s.0.entry(body).or_default() += 1,
                            Err(e) => s.1.push(e),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            seen,
            clients,
        }
    }

    /// Stops the clients; what they saw.
    fn finish(self) -> Answers {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.clients
            .into_iter()
            .for_each(|c| c.join().expect("client thread"));
        std::mem::take(&mut *self.seen.lock().expect("lock"))
    }
}

#[test]
fn changing_the_routes_file_under_load_fails_no_request() {
    let a = name_backend("A");
    let b = name_backend("B");
    let dir = tempfile::tempdir().expect("temp dir");
    let file =
        |backends: &str| format!("routes:\n  - host: app.test\n    backends: [{backends}]\n");
    let routes = written(&dir, "routes.yml", &file(&format!("\"{a}\"")));
    let p = start_proxy(&routes);
    let load = Load::start(&p.addr, "app.test", 4);
    // A, then A and B, then B, then A again: each applied while requests are in flight.
    for (i, backends) in [
        format!("\"{a}\", \"{b}\""),
        format!("\"{b}\""),
        format!("\"{a}\""),
        format!("\"{b}\""),
    ]
    .iter()
    .enumerate()
    {
        std::thread::sleep(std::time::Duration::from_millis(1300));
        std::fs::write(&routes, file(backends)).expect("rewrite routes");
        eventually("the change to be applied", || {
            p.stderr
                .lock()
                .is_ok_and(|s| s.matches("applied, 1 route(s)").count() > i)
        });
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let s = load.finish();
    assert!(
        s.1.is_empty(),
        "{} failed requests: {:?}",
        s.1.len(),
        &s.1[..s.1.len().min(5)]
    );
    assert!(
        s.0.get("A").is_some_and(|n| *n > 50) && s.0.get("B").is_some_and(|n| *n > 50),
        "both backends served: {:?}",
        s.0
    );
    eprintln!("answers by backend across 4 route changes: {:?}", s.0);
}

#[test]
fn slipway_proxy_routes_a_container_by_its_traefik_labels_and_drops_it_when_stopped() {
    if Command::new("docker")
        .arg("version")
        .output()
        .map_or(true, |o| !o.status.success())
    {
        eprintln!("skipping: no Docker engine");
        return;
    }
    let name = format!("slipway-it-labels-{}", std::process::id());
    let host = format!("{name}.test");
    struct Container(String);
    impl Drop for Container {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
        }
    }
    let p = start_proxy_with(&["--docker-labels"]);
    let out = Command::new("docker")
        .args(["run", "-d", "--name", &name])
        .args(["--label", "traefik.enable=true"])
        .arg("--label")
        .arg(format!("traefik.http.routers.web.rule=Host(`{host}`)"))
        .args([
            "--label",
            "traefik.http.services.web.loadbalancer.server.port=80",
        ])
        .arg(crate::test_image())
        .args([
            "sh",
            "-c",
            "mkdir -p /www && echo from-the-container > /www/index.html && httpd -f -p 80 -h /www",
        ])
        .output()
        .expect("docker run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let container = Container(name);
    eventually("the container to be routed", || {
        get_through(&p.addr, &host) == (200, "from-the-container\n".to_owned())
    });
    let out = Command::new("docker")
        .args(["stop", "-t", "1", &container.0])
        .output()
        .expect("docker stop");
    assert!(out.status.success());
    eventually("the stopped container's route to go", || {
        matches!(get_through(&p.addr, &host).0, 404 | 503)
    });
}

#[test]
fn slipway_up_takeover_under_load_fails_no_request_and_the_old_one_exits() {
    let a = name_backend("A");
    let dir = tempfile::tempdir().expect("temp dir");
    let routes = written(
        &dir,
        "routes.yml",
        &format!("routes:\n  - host: app.test\n    backends: [\"{a}\"]\n"),
    );
    let data = dir.path().join("data");
    let flags = [
        "--proxy-http",
        "127.0.0.1:0",
        "--proxy-https",
        "127.0.0.1:0",
        "--no-docker-labels",
        "--no-acme",
        "--proxy-routes",
        routes.to_str().expect("utf-8 path"),
    ];
    let mut old = super::server::start_up(&data, &flags);
    let edge = old.facts["proxy_http"]
        .as_str()
        .expect("proxy_http")
        .to_owned();
    let listen = old.facts["listen"].as_str().expect("listen").to_owned();

    // Without --takeover, a second instance on the data dir is refused, naming the flag.
    let out = slipway()
        .args(["up", "--listen", "127.0.0.1:0"])
        .args(flags)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("run");
    let (_, err) = text(&out);
    assert!(!out.status.success());
    assert!(err.contains("--takeover"), "{err}");
    assert!(
        err.contains(&old.child.id().to_string()),
        "the pid is named: {err}"
    );

    let load = Load::start(&edge, "app.test", 4);
    std::thread::sleep(std::time::Duration::from_millis(800));
    // Its first line comes once the old one has gone and the store is its own.
    let mut takeover = ["--takeover"].to_vec();
    takeover.extend(flags);
    let new = super::server::start_up(&data, &takeover);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    let status = loop {
        if let Some(status) = old.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the old instance did not exit"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "the old instance exits cleanly: {status}");
    std::thread::sleep(std::time::Duration::from_millis(800));
    let s = load.finish();
    assert!(
        s.1.is_empty(),
        "{} failed requests: {:?}",
        s.1.len(),
        &s.1[..s.1.len().min(5)]
    );
    assert!(s.0.get("A").is_some_and(|n| *n > 100), "{:?}", s.0);
    assert_eq!(
        new.facts["proxy_http"],
        edge.as_str(),
        "the same listener serves on"
    );
    assert_eq!(new.facts["listen"], listen.as_str(), "the API listener too");
    let health = reqwest::blocking::get(format!("http://{listen}/healthz"))
        .expect("the new server answers")
        .text()
        .unwrap_or_default();
    assert_eq!(health, "ok\n");
    eprintln!("answers across the takeover: {:?}", s.0);
}

#[test]
fn docker_pushes_200_mb_to_the_registry_through_the_proxy_over_https() {
    if Command::new("docker")
        .arg("version")
        .output()
        .map_or(true, |o| !o.status.success())
    {
        eprintln!("skipping: no Docker engine");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    // An uploaded certificate for 127.0.0.1: Docker sends no SNI to an IP address, and the
    // proxy answers with the certificate of the route named by its listener's IP.
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed");
    let cert_file = written(&dir, "cert.pem", &cert.pem());
    let key_file = written(&dir, "key.pem", &key.serialize_pem());
    let out = slipway()
        .args(["proxy", "cert", "add", "127.0.0.1", "--cert"])
        .arg(&cert_file)
        .arg("--key")
        .arg(&key_file)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("cert add");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.starts_with("127.0.0.1  until "), "{stdout}");

    let https_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let registry = format!("127.0.0.1:{https_port}");
    let up = super::server::start_up(
        &data,
        &[
            "--proxy-http",
            "127.0.0.1:0",
            "--proxy-https",
            &registry,
            "--no-docker-labels",
            "--no-acme",
            "--public-url",
            &format!("https://{registry}"),
        ],
    );
    assert_eq!(up.facts["proxy_https"], registry.as_str());
    let config = tempfile::tempdir().expect("docker config");
    let docker = |args: &[&str]| {
        Command::new("docker")
            .arg("--config")
            .arg(config.path())
            .args(args)
            .output()
            .expect("docker runs")
    };
    let image = format!("{registry}/team/big:{}", std::process::id());
    struct Image(String);
    impl Drop for Image {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
        }
    }
    let build = tempfile::tempdir().expect("context");
    std::fs::write(
        build.path().join("Dockerfile"),
        format!(
            "FROM {}\nRUN head -c 100000000 /dev/urandom > /a\nRUN head -c 100000000 /dev/urandom > /b\n",
            crate::test_image()
        ),
    )
    .expect("Dockerfile");
    let out = Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "-q", "-t", &image])
        .arg(build.path())
        .output()
        .expect("docker build");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _image = Image(image.clone());
    let login = {
        use std::io::Write;
        let mut child = Command::new("docker")
            .arg("--config")
            .arg(config.path())
            .args(["login", &registry, "-u", "admin", "--password-stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("docker login");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(super::server::ADMIN.as_bytes())
            .expect("password");
        child.wait_with_output().expect("docker login")
    };
    assert!(
        login.status.success(),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );
    let out = docker(&["push", &image]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The layers are in the registry, whole: read the manifest back over HTTPS.
    let c = reqwest::blocking::Client::builder()
        .no_proxy()
        .danger_accept_invalid_certs(true)
        .build()
        .expect("client");
    let listen = up.facts["listen"].as_str().expect("listen");
    let out = docker(&["manifest", "inspect", "--insecure", &image]);
    let manifest: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let total: u64 = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .filter_map(|l| l["size"].as_u64())
        .sum();
    assert!(total > 200_000_000, "the pushed layers hold {total} bytes");
    // And it went through the proxy's TLS listener: the proxy's metrics counted it.
    let metrics = c
        .get(format!("http://{listen}/metrics"))
        .send()
        .expect("metrics")
        .text()
        .unwrap_or_default();
    assert!(
        metrics.contains("slipway_proxy_requests_total{route=\"127.0.0.1\",code=\"2xx\"}"),
        "{metrics}"
    );
}
