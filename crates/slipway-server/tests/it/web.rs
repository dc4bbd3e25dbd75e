//! Attacks on the web UI and the listeners, against the real server on loopback (SQLite in
//! a temporary data dir, served as `slipway up` serves it) and, for cross-site requests,
//! headless Chromium: sessions end at logout and with their token; a page of another port
//! of the same host cannot post the UI's forms nor change anything through the API; every
//! answer carries the security headers; `/metrics` takes a token when configured; sockets
//! sending partial headers are cut off while `/healthz` answers; the data dir is private.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::browser::Browser;
use super::{BareRepo, TestServer, serve};

const ADMIN: &str = "web-admin-token-0123456789abcdef0123";
const REPO: &str = "team/app";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client")
}

/// `req` with the session cookie `cookie`.
fn with_session(req: reqwest::RequestBuilder, cookie: &str) -> reqwest::RequestBuilder {
    req.header("Cookie", format!("slipway_session={cookie}"))
}

/// The answer's `Set-Cookie` ("" without one).
fn set_cookie_of(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// `POST /login` with `token`, as the login page of `origin` sends it, plus `headers`.
async fn post_login(
    url: &str,
    origin: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = http()
        .post(format!("{url}/login"))
        .header("Origin", origin)
        .form(&[("token", token)]);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.expect("POST /login")
}

/// Logs in through `POST /login` as the login page does; the session cookie's value and
/// the whole `Set-Cookie`.
pub(crate) async fn login(url: &str, token: &str) -> (String, String) {
    let resp = post_login(url, url, token, &[]).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER, "login");
    let set = set_cookie_of(&resp);
    assert!(!set.is_empty(), "a Set-Cookie");
    let value = set
        .strip_prefix("slipway_session=")
        .and_then(|rest| rest.split(';').next())
        .expect("the session cookie")
        .to_owned();
    (value, set)
}

pub(crate) async fn get(url: &str, path: &str, cookie: &str) -> (StatusCode, HeaderMap, String) {
    let resp = with_session(http().get(format!("{url}{path}")), cookie)
        .send()
        .await
        .expect("GET");
    let status = resp.status();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap_or_default())
}

/// The form token a page carries.
pub(crate) fn csrf_of(page: &str) -> String {
    let (_, rest) = page
        .split_once("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no form token in {page}"));
    rest.split('"').next().expect("a value").to_owned()
}

fn is_login(status: StatusCode, headers: &HeaderMap) -> bool {
    status == StatusCode::SEE_OTHER
        && headers.get(LOCATION).and_then(|v| v.to_str().ok()) == Some("/login")
}

/// Posts `form` to the UI's `path` as its own page does: this origin, the session
/// `cookie` (the form token is the caller's to add).
pub(crate) fn form_post(
    url: &str,
    path: &str,
    cookie: &str,
    form: &[(&str, &str)],
) -> reqwest::RequestBuilder {
    with_session(http().post(format!("{url}{path}")), cookie)
        .header("Origin", url)
        .form(form)
}

/// An API call with the admin token; a `null` body sends none.
async fn admin_api(
    method: reqwest::Method,
    url: &str,
    path: &str,
    body: Value,
) -> reqwest::Response {
    let mut req = http()
        .request(method, format!("{url}{path}"))
        .bearer_auth(ADMIN);
    if !body.is_null() {
        req = req.json(&body);
    }
    req.send().await.expect("the API answers")
}

async fn add_repo(url: &str, clone_url: &str) {
    let resp = admin_api(
        reqwest::Method::POST,
        url,
        "/api/repos",
        json!({"name": REPO, "clone_url": clone_url}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED, "add the repository");
}

/// The database file and its WAL, as they are on disk now.
fn stored_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut bytes = std::fs::read(dir.join("slipway.db")).expect("the database file");
    bytes.extend(std::fs::read(dir.join("slipway.db-wal")).unwrap_or_default());
    bytes
}

fn holds(bytes: &[u8], text: &str) -> bool {
    bytes.windows(text.len()).any(|w| w == text.as_bytes())
}

/// The server opened again on the data dir `dir` (after the test's server was dropped).
async fn reopen(dir: &std::path::Path) -> slipway_server::app::Server {
    let mut config = slipway_server::config::ServerConfig::new(dir, "http://127.0.0.1:1");
    config.admin_token = Some(ADMIN.to_owned());
    slipway_server::app::Server::open(config)
        .await
        .expect("reopens")
}

/// Polls `done` every 100 ms until it holds, for at most 10 s; panics naming `what`.
async fn eventually<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn logout_and_a_deleted_token_end_the_session_and_pages_carry_security_headers() {
    let shutdown = CancellationToken::new();
    let TestServer {
        url,
        server,
        data: _data,
    } = serve(ADMIN, &shutdown, |_| {}).await;

    let (cookie, set_cookie) = login(&url, ADMIN).await;
    assert!(cookie.len() >= 64, "a 32-byte random id: {cookie}");
    assert_ne!(cookie, ADMIN, "the cookie is not the token");
    for part in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(part), "{set_cookie} lacks {part}");
    }
    assert!(
        !set_cookie.contains("Secure"),
        "plain http: no Secure ({set_cookie})"
    );
    // The raw admin token is no cookie any more (the old scheme).
    let (status, headers, _) = get(&url, "/", ADMIN).await;
    assert!(
        is_login(status, &headers),
        "a token as the cookie: {status}"
    );
    let resp = http()
        .get(format!("{url}/"))
        .header("Cookie", format!("slipway_token={ADMIN}"))
        .send()
        .await
        .expect("GET /");
    assert!(is_login(resp.status(), resp.headers()), "the old cookie");

    // Signed in: the pages, their headers, and the API's reads by the cookie.
    let (status, headers, page) = get(&url, "/", &cookie).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let (_, login_headers, _) = get(&url, "/login", "").await;
    for h in [&headers, &login_headers] {
        let csp = h
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .expect("a Content-Security-Policy");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(h.get("x-content-type-options").expect("nosniff"), "nosniff");
        assert_eq!(h.get("referrer-policy").expect("a policy"), "same-origin");
    }
    let (status, _, _) = get(&url, "/api/repos", &cookie).await;
    assert_eq!(status, StatusCode::OK, "the cookie reads the API");

    // The store holds the session's hash only.
    assert!(
        !holds(&stored_bytes(&server.state.config.data_dir), &cookie),
        "the session id is stored in clear"
    );

    // Logging out ends it in the store: the same cookie value, kept, is worthless.
    let csrf = csrf_of(&page);
    let resp = form_post(&url, "/logout", &cookie, &[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("POST /logout");
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let cleared = set_cookie_of(&resp);
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    let (status, headers, _) = get(&url, "/", &cookie).await;
    assert!(is_login(status, &headers), "after logout: {status}");
    let (status, _, _) = get(&url, "/api/repos", &cookie).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "after logout, the API");

    // A session of a token that is deleted ends with it.
    let made: Value = admin_api(
        reqwest::Method::POST,
        &url,
        "/api/tokens",
        json!({"name": "second", "scope": "admin"}),
    )
    .await
    .json()
    .await
    .expect("the token");
    let second = made["token"].as_str().expect("a secret");
    let (cookie, _) = login(&url, second).await;
    let (status, _, _) = get(&url, "/", &cookie).await;
    assert_eq!(status, StatusCode::OK, "the second admin's session");
    let resp = admin_api(
        reqwest::Method::DELETE,
        &url,
        &format!("/api/tokens/{}", made["id"]),
        Value::Null,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (status, headers, _) = get(&url, "/", &cookie).await;
    assert!(is_login(status, &headers), "the deleted token's session");
    let (status, _, _) = get(&url, "/api/repos", &cookie).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    shutdown.cancel();
}

#[tokio::test]
async fn the_session_cookie_is_secure_over_https() {
    // Behind a TLS proxy on this host, which says so.
    let shutdown = CancellationToken::new();
    let TestServer {
        url, data: _data, ..
    } = serve(ADMIN, &shutdown, |_| {}).await;
    let forwarded = |proto: &'static str| {
        let url = url.clone();
        async move {
            let resp = post_login(&url, &url, ADMIN, &[("X-Forwarded-Proto", proto)]).await;
            let set = set_cookie_of(&resp);
            assert!(!set.is_empty(), "a cookie");
            set
        }
    };
    assert!(forwarded("https").await.contains("; Secure"));
    assert!(!forwarded("http").await.contains("Secure"));
    shutdown.cancel();

    // A public URL of https.
    let shutdown = CancellationToken::new();
    let TestServer {
        url, data: _data, ..
    } = serve(ADMIN, &shutdown, |c| {
        c.public_url = "https://ci.example.com".to_owned();
    })
    .await;
    let resp = post_login(&url, "https://ci.example.com", ADMIN, &[]).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let set = set_cookie_of(&resp);
    assert!(set.contains("; Secure"), "{set}");
    shutdown.cancel();
}

/// What the attacks may change, read from the store.
async fn snapshot(server: &slipway_server::app::Server) -> Value {
    let store = &server.state.store;
    let mut repos = Vec::new();
    for repo in store.repos().await.expect("repos") {
        let secrets: Vec<String> = store
            .secrets(repo.id)
            .await
            .expect("secrets")
            .into_iter()
            .map(|s| s.name)
            .collect();
        let builds = store.builds(repo.id, 100, None).await.expect("builds");
        let builds: Vec<Value> = builds
            .iter()
            .map(|b| json!([b.number, b.status.as_str()]))
            .collect();
        repos.push(json!({
            "name": repo.name, "clone_url": repo.clone_url, "trusted": repo.trusted,
            "config_path": repo.config_path, "secrets": secrets, "builds": builds,
        }));
    }
    let tokens: Vec<String> = store
        .tokens()
        .await
        .expect("tokens")
        .into_iter()
        .map(|t| t.name)
        .collect();
    json!({"repos": repos, "tokens": tokens})
}

#[tokio::test]
async fn ui_posts_need_this_origin_and_the_form_token_and_api_changes_a_bearer_token() {
    let shutdown = CancellationToken::new();
    let TestServer {
        url,
        server,
        data: _data,
    } = serve(ADMIN, &shutdown, |_| {}).await;
    add_repo(&url, "https://git.example.com/team/app.git").await;
    let (cookie, _) = login(&url, ADMIN).await;
    let (_, _, page) = get(&url, &format!("/repos/{REPO}/settings"), &cookie).await;
    let csrf = csrf_of(&page);
    let before = snapshot(&server).await;
    let evil = [
        ("clone_url", "https://evil.example/x.git"),
        ("trusted", "true"),
    ];

    let post = |origin: Option<&'static str>, site: Option<&'static str>, token: Option<String>| {
        let mut form: Vec<(&str, String)> =
            evil.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        if let Some(t) = token {
            form.push(("csrf", t));
        }
        let mut req =
            with_session(http().post(format!("{url}/repos/{REPO}/settings")), &cookie).form(&form);
        if let Some(o) = origin {
            req = req.header("Origin", o);
        }
        if let Some(s) = site {
            req = req.header("Sec-Fetch-Site", s);
        }
        req.send()
    };
    for (origin, site, token, what) in [
        (
            Some("http://127.0.0.1:1"),
            None,
            Some(csrf.clone()),
            "another port's Origin",
        ),
        (
            None,
            Some("same-site"),
            Some(csrf.clone()),
            "Sec-Fetch-Site: same-site",
        ),
        (
            None,
            Some("cross-site"),
            Some(csrf.clone()),
            "Sec-Fetch-Site: cross-site",
        ),
        (
            None,
            None,
            Some(csrf.clone()),
            "neither Origin nor Sec-Fetch-Site",
        ),
        (Some("null"), None, Some(csrf.clone()), "Origin: null"),
    ] {
        let resp = post(origin, site, token).await.expect("POST settings");
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{what}");
        let body = resp.text().await.unwrap_or_default();
        assert!(body.contains("own page"), "{what}: {body}");
    }
    // This origin, but no form token, or another one.
    let origin: &'static str = Box::leak(url.clone().into_boxed_str());
    for token in [None, Some("0".repeat(64))] {
        let resp = post(Some(origin), None, token)
            .await
            .expect("POST settings");
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(resp.text().await.unwrap_or_default().contains("csrf"));
    }
    assert_eq!(
        snapshot(&server).await,
        before,
        "no refused post changed anything"
    );

    // The API: the cookie does not change anything, a body must be JSON.
    let secret = json!({"name": "EVIL", "value": "x"}).to_string();
    let cookie_post = with_session(
        http().post(format!("{url}/api/repos/{REPO}/secrets")),
        &cookie,
    )
    .header("Content-Type", "application/json")
    .body(secret.clone())
    .send()
    .await
    .expect("POST with the cookie");
    assert_eq!(cookie_post.status(), StatusCode::UNAUTHORIZED);
    let message = cookie_post.text().await.unwrap_or_default();
    assert!(message.contains("Bearer"), "{message}");
    let text_plain = http()
        .post(format!("{url}/api/repos/{REPO}/secrets"))
        .bearer_auth(ADMIN)
        .header("Content-Type", "text/plain")
        .body(secret.clone())
        .send()
        .await
        .expect("POST text/plain");
    assert_eq!(text_plain.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let patch = with_session(http().patch(format!("{url}/api/repos/{REPO}")), &cookie)
        .header("Content-Type", "application/json")
        .body(json!({"trusted": true}).to_string())
        .send()
        .await
        .expect("PATCH with the cookie");
    assert_eq!(patch.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        snapshot(&server).await,
        before,
        "no refused call changed anything"
    );

    // From the UI's own page, with its token: it works.
    let mut form = evil.to_vec();
    form.push(("csrf", csrf.as_str()));
    let resp = form_post(&url, &format!("/repos/{REPO}/settings"), &cookie, &form)
        .header("Sec-Fetch-Site", "same-origin")
        .send()
        .await
        .expect("POST settings");
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let repo = server
        .state
        .store
        .repo_by_name(REPO)
        .await
        .expect("read")
        .expect("the repository");
    assert!(repo.trusted);
    assert_eq!(repo.clone_url, "https://evil.example/x.git");
    shutdown.cancel();
}

#[tokio::test]
async fn metrics_are_open_unless_a_token_is_set() {
    let shutdown = CancellationToken::new();
    let TestServer {
        url, data: _data, ..
    } = serve(ADMIN, &shutdown, |_| {}).await;
    let resp = http()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.text()
            .await
            .unwrap_or_default()
            .contains("slipway_runners")
    );
    shutdown.cancel();

    let shutdown = CancellationToken::new();
    let TestServer {
        url, data: _data, ..
    } = serve(ADMIN, &shutdown, |c| {
        c.metrics_token = Some("scrape-me".to_owned());
    })
    .await;
    for (auth, expect) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("wrong"), StatusCode::UNAUTHORIZED),
        (Some(ADMIN), StatusCode::UNAUTHORIZED),
        (Some("scrape-me"), StatusCode::OK),
    ] {
        let mut req = http().get(format!("{url}/metrics"));
        if let Some(token) = auth {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.expect("GET /metrics");
        assert_eq!(resp.status(), expect, "{auth:?}");
        let body = resp.text().await.unwrap_or_default();
        assert_eq!(
            body.contains("slipway_runners"),
            expect == StatusCode::OK,
            "{body}"
        );
        if expect != StatusCode::OK {
            assert!(body.contains("--metrics-token"), "{body}");
        }
    }
    shutdown.cancel();
}

#[tokio::test]
async fn sockets_sending_partial_headers_are_closed_while_healthz_answers() {
    let shutdown = CancellationToken::new();
    let TestServer {
        url, data: _data, ..
    } = serve(ADMIN, &shutdown, |c| {
        c.limits.header_read_timeout = Duration::from_secs(2);
        c.limits.idle_timeout = Duration::from_secs(4);
    })
    .await;
    let addr = url.trim_start_matches("http://").to_owned();
    let started = Instant::now();
    let mut sockets = Vec::new();
    for i in 0..50 {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Slow-{i}: ").as_bytes())
            .await
            .expect("a partial header");
        sockets.push(s);
    }
    // Held open, they do not keep others out.
    for _ in 0..3 {
        let resp = http()
            .get(format!("{url}/healthz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .expect("/healthz answers while 50 sockets stall");
        assert_eq!(resp.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Each is closed after the header timeout (end of file, or a 408 and then the end).
    for (i, s) in sockets.iter_mut().enumerate() {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(6), s.read_to_end(&mut rest)).await;
        assert!(
            read.is_ok(),
            "socket {i} still open after {:?}",
            started.elapsed()
        );
        let text = String::from_utf8_lossy(&rest);
        assert!(!text.contains("200 OK"), "socket {i} was served: {text}");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "closed before the timeout ({took:?})"
    );

    // A connection that sends nothing at all goes after the idle timeout.
    let mut silent = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let opened = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "a silent socket is closed: {read:?}"
    );
    assert!(
        opened.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        opened.elapsed()
    );
    let resp = http()
        .get(format!("{url}/healthz"))
        .send()
        .await
        .expect("/healthz");
    assert_eq!(resp.status(), StatusCode::OK);
    shutdown.cancel();
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn the_data_dir_is_private_and_an_older_one_is_tightened() {
    let shutdown = CancellationToken::new();
    let TestServer { url, server, data } = serve(ADMIN, &shutdown, |_| {}).await;
    add_repo(&url, "https://git.example.com/team/app.git").await;
    // A log file, as a runner's report makes one.
    server
        .state
        .logs
        .append(
            &slipway_server::logstore::LogKey {
                build_id: 1,
                stage_id: 1,
                attempt: 1,
                step: "build".to_owned(),
            },
            0,
            vec!["a line".to_owned()],
        )
        .await
        .expect("a log");
    let dir = data.path().join("data");
    assert_eq!(mode(&dir), 0o700, "the data dir");
    for sub in ["logs", "mirrors", "registry", "service-logs"] {
        assert_eq!(mode(&dir.join(sub)), 0o700, "{sub}/");
    }
    let mut files = Vec::new();
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("meta");
            if path == dir.join("registry") || path == dir.join("service-logs") {
                // The registry's and the service logs' own trees are their crates' to lay
                // out; the 0700 directory above keeps them from others.
                continue;
            }
            if meta.is_dir() {
                assert_eq!(
                    mode(&path) & 0o077,
                    0,
                    "{} is open to others",
                    path.display()
                );
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    let names: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(&dir).unwrap_or(p).display().to_string())
        .collect();
    for expected in ["slipway.db", "secret.key", "runner.token"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{names:?} lacks {expected}"
        );
    }
    assert!(
        names.iter().any(|n| n.ends_with(".log")),
        "{names:?} has no log"
    );
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    shutdown.cancel();
    drop(server);

    // What an older version left: 0755 and 0644.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for name in ["slipway.db", "runner.token"] {
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
    }
    std::fs::set_permissions(dir.join("logs"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let reopened = reopen(&dir).await;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("logs")), 0o700);
    assert_eq!(mode(&dir.join("slipway.db")), 0o600);
    assert_eq!(mode(&dir.join("runner.token")), 0o600);
    drop(reopened);
}

/// The page another port of the same host serves: it posts every state-changing form of
/// the UI (each into a frame of its own, so all go) and calls the API as a page can without
/// CORS (`text/plain`, `no-cors`, the browser's cookie).
fn attack_page(target: &str, csrf: &str) -> String {
    let forms: &[(&str, &[(&str, &str)])] = &[
        (
            "/repos",
            &[
                ("name", "evil/repo"),
                ("clone_url", "https://evil.example/r.git"),
            ],
        ),
        (
            "/repos/team/app/settings",
            &[
                ("clone_url", "https://evil.example/x.git"),
                ("trusted", "true"),
                ("config_path", "evil.yml"),
            ],
        ),
        (
            "/repos/team/app/secrets",
            &[
                ("name", "EVIL"),
                ("value", "x"),
                ("allow_pull_request", "true"),
            ],
        ),
        ("/repos/team/app/secrets/KEEP/delete", &[]),
        (
            "/repos/team/app/run",
            &[("kind", "branch"), ("branch", "main")],
        ),
        ("/repos/team/app/builds/1/restart", &[]),
        ("/repos/team/app/builds/1/cancel", &[]),
        (
            "/repos/team/app/builds/1/promote",
            &[("target", "production")],
        ),
        ("/registry/team/app/tags/1/delete", &[]),
        ("/logout", &[]),
    ];
    let mut html = String::from("<!doctype html><html><body>");
    for (i, (action, fields)) in forms.iter().enumerate() {
        html.push_str(&format!(
            "<iframe name=\"f{i}\"></iframe><form method=\"post\" target=\"f{i}\" action=\"{target}{action}\">"
        ));
        // A guessed form token, and (to be sure it is not what stops them) the real one.
        for (k, v) in fields.iter().chain([("csrf", csrf)].iter()) {
            html.push_str(&format!(
                "<input type=\"hidden\" name=\"{k}\" value=\"{v}\">"
            ));
        }
        html.push_str("</form>");
    }
    html.push_str(&format!(
        "<script>
        window.done = 0;
        for (const f of document.forms) f.submit();
        const api = [
          ['POST', '/api/repos', {{name: 'evil/api', clone_url: 'https://evil.example/a.git'}}],
          ['POST', '/api/repos/team/app/secrets', {{name: 'EVIL_API', value: 'x'}}],
          ['PATCH', '/api/repos/team/app', {{trusted: true, clone_url: 'https://evil.example/p.git'}}],
          ['POST', '/api/repos/team/app/builds', {{branch: 'main'}}],
          ['POST', '/api/tokens', {{name: 'evil', scope: 'admin'}}],
          ['DELETE', '/api/repos/team/app/secrets/KEEP', null],
        ];
        const calls = [];
        for (const [method, path, body] of api) {{
          for (const mode of ['no-cors', 'cors']) {{
            const init = {{method, mode, credentials: 'include'}};
            if (body) {{ init.body = JSON.stringify(body); init.headers = {{'Content-Type': 'text/plain'}}; }}
            calls.push(fetch('{target}' + path, init).then(() => 1, () => 1));
          }}
        }}
        Promise.all(calls).then(() => {{ window.done = calls.length; }});
        </script></body></html>"
    ));
    html
}

/// Serves one page on another port of loopback; its URL.
async fn serve_attacker(page: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let page = page.clone();
            async move { axum::response::Html(page) }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

#[tokio::test]
async fn a_page_of_another_port_changes_nothing_and_the_ui_still_works_in_chromium() {
    let Some(browser) = Browser::start(1280, 900).await else {
        return;
    };
    let repo = BareRepo::with_pipeline(
        "kind: pipeline\nname: default\nsteps:\n- name: hi\n  image: busybox\n  commands: [echo hi]\n",
    );
    let shutdown = CancellationToken::new();
    let TestServer {
        url,
        server,
        data: _data,
    } = serve(ADMIN, &shutdown, |_| {}).await;
    let client = browser.client();

    // Log in through the form.
    browser.log_in(&url, ADMIN).await;

    // The UI's own forms work: add a repository, a secret, run a build.
    client
        .goto(&format!("{url}/repos/new"))
        .await
        .expect("new repo page");
    browser
        .eval(&format!(
            "document.querySelector('input[name=name]').value = '{REPO}';
             document.querySelector('input[name=clone_url]').value = '{}';
             document.querySelector('form[action=\"/repos\"]').submit(); return true;",
            repo.clone_url
        ))
        .await;
    browser
        .wait_for(
            "the settings page",
            &format!("return location.pathname === '/repos/{REPO}/settings';"),
        )
        .await;
    for name in ["KEEP", "GONE"] {
        client
            .goto(&format!("{url}/repos/{REPO}/secrets"))
            .await
            .expect("secrets page");
        browser
            .eval(&format!(
                "const f = document.querySelector('form[action=\"/repos/{REPO}/secrets\"]');
                 f.querySelector('[name=name]').value = '{name}';
                 f.querySelector('[name=value]').value = 'v';
                 f.submit(); return true;"
            ))
            .await;
        browser
            .wait_for("the secret listed", &format!("return document.readyState === 'complete' && document.body.textContent.includes('{name}');"))
            .await;
    }
    browser
        .eval(&format!(
            "document.querySelector('form[action=\"/repos/{REPO}/secrets/GONE/delete\"]').submit(); return true;"
        ))
        .await;
    browser
        .wait_for("GONE deleted", "return document.readyState === 'complete' && !document.body.textContent.includes('GONE') && document.body.textContent.includes('KEEP');")
        .await;
    client
        .goto(&format!("{url}/repos/{REPO}/run"))
        .await
        .expect("run page");
    browser
        .eval("document.getElementById('run-form').submit(); return true;")
        .await;
    browser
        .wait_for(
            "build 1",
            &format!("return location.pathname === '/repos/{REPO}/builds/1';"),
        )
        .await;
    let store = &server.state.store;
    let app = store
        .repo_by_name(REPO)
        .await
        .expect("read")
        .expect("added by the form");
    let secrets: Vec<String> = store
        .secrets(app.id)
        .await
        .expect("secrets")
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(secrets, ["KEEP"], "the UI's forms worked");
    assert_eq!(
        store.builds(app.id, 10, None).await.expect("builds").len(),
        1
    );

    // The attack, from another port of the same host (same site, another origin).
    let csrf: String = browser
        .eval("const i = document.querySelector('input[name=csrf]'); return i ? i.value : '';")
        .await
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(!csrf.is_empty(), "the build page carries a form token");
    let before = snapshot(&server).await;
    let evil = serve_attacker(attack_page(&url, &csrf)).await;
    client
        .goto(&format!("{evil}/"))
        .await
        .expect("the attacker's page");
    browser
        .wait_for("every call made", "return window.done >= 12;")
        .await;
    // Let the frames' posts land.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        snapshot(&server).await,
        before,
        "the other origin changed something"
    );

    // Still signed in (its logout post did not count), and the UI's forms still work.
    client
        .goto(&format!("{url}/repos/{REPO}/builds/1"))
        .await
        .expect("build page");
    browser
        .wait_for("the cancel button", "return document.readyState === 'complete' && !!document.getElementById('cancel-form');")
        .await;
    browser
        .eval("document.getElementById('cancel-form').submit(); return true;")
        .await;
    eventually("the cancel form did nothing", || async {
        let builds = store.builds(app.id, 10, None).await.expect("builds");
        builds.iter().any(|b| b.status.is_done())
    })
    .await;
    client
        .goto(&format!("{url}/repos/{REPO}/settings"))
        .await
        .expect("settings");
    browser
        .eval("document.querySelector('[name=trusted]').checked = true; document.querySelector('form[action$=\"/settings\"]').submit(); return true;")
        .await;
    eventually("the settings form did nothing", || async {
        store
            .repo_by_name(REPO)
            .await
            .expect("read")
            .expect("repo")
            .trusted
    })
    .await;
    browser.close().await;
    shutdown.cancel();
}

#[tokio::test]
async fn webhook_secrets_are_sealed_at_rest_and_old_clear_ones_sealed_at_start() {
    let shutdown = CancellationToken::new();
    let TestServer { url, server, data } = serve(ADMIN, &shutdown, |_| {}).await;
    let secret = "a-webhook-secret-in-the-clear-0123456789";
    let resp = admin_api(
        reqwest::Method::POST,
        &url,
        "/api/repos",
        json!({"name": REPO, "clone_url": "https://git.example.com/a.git",
               "webhook_secret": secret}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let shown: Value = resp.json().await.expect("JSON");
    assert_eq!(shown["webhook_secret"], secret, "shown once, in clear");
    let dir = data.path().join("data");
    assert!(
        !holds(&stored_bytes(&dir), secret),
        "the webhook secret is in the database file in clear"
    );
    let row = server
        .state
        .store
        .repo_by_name(REPO)
        .await
        .expect("read")
        .expect("repo");
    assert!(
        row.webhook_secret.starts_with("sealed:"),
        "{}",
        row.webhook_secret
    );
    // The API and the settings page give it back in clear.
    let got: Value = admin_api(
        reqwest::Method::GET,
        &url,
        &format!("/api/repos/{REPO}"),
        Value::Null,
    )
    .await
    .json()
    .await
    .expect("JSON");
    assert_eq!(got["webhook_secret"], secret);
    let (cookie, _) = login(&url, ADMIN).await;
    let (_, _, page) = get(&url, &format!("/repos/{REPO}/settings"), &cookie).await;
    assert!(
        page.contains(secret),
        "the settings page shows the secret to copy"
    );

    // A row of an older version, in clear, is sealed at the next start and still verifies.
    let mut old = row.clone();
    old.webhook_secret = secret.to_owned();
    server
        .state
        .store
        .update_repo(&old)
        .await
        .expect("write the old form");
    shutdown.cancel();
    drop(server);
    let reopened = reopen(&dir).await;
    let row = reopened
        .state
        .store
        .repo_by_name(REPO)
        .await
        .expect("read")
        .expect("repo");
    assert!(row.webhook_secret.starts_with("sealed:"), "sealed at start");
    assert_eq!(
        reopened
            .state
            .secrets
            .open_webhook_secret(REPO, &row.webhook_secret)
            .expect("opens"),
        secret
    );
    assert!(
        !holds(&stored_bytes(&dir), secret),
        "the old clear secret is still in the database file or its WAL"
    );
}

#[tokio::test]
async fn a_session_ends_at_its_expiry() {
    let shutdown = CancellationToken::new();
    let TestServer {
        url, data: _data, ..
    } = serve(ADMIN, &shutdown, |c| {
        c.session_ttl = Duration::from_secs(1);
    })
    .await;
    let (cookie, set) = login(&url, ADMIN).await;
    assert!(set.contains("Max-Age=1"), "{set}");
    let (status, _, _) = get(&url, "/", &cookie).await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // The browser would have dropped it; one that keeps it gets nothing either.
    let (status, headers, _) = get(&url, "/", &cookie).await;
    assert!(is_login(status, &headers), "an expired session: {status}");
    let (status, _, _) = get(&url, "/api/repos", &cookie).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    shutdown.cancel();
}

/// Starting with a new `--admin-token` (or runner token) rotates the old one out: it no
/// longer authenticates, and the sessions opened with it end; tokens of other names stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_configured_token_revokes_the_old_one() {
    let dir = tempfile::tempdir().expect("a data dir");
    let open = |admin: &str, runner: &str| {
        let mut config =
            slipway_server::config::ServerConfig::new(dir.path(), "http://127.0.0.1:1");
        config.admin_token = Some(admin.to_owned());
        config.runner_token = Some(runner.to_owned());
        slipway_server::app::Server::open(config)
    };
    let old_admin = "old-admin-token-0123456789abcdef0123";
    let old_runner = "old-runner-token-0123456789abcdef012";
    let first = open(old_admin, old_runner).await.expect("opens");
    let other = first
        .state
        .store
        .create_token(
            "ci-admin",
            &slipway_server::auth::hash("ci-admin-secret-0123456789abcdef"),
            "admin",
            1,
        )
        .await
        .expect("another admin token");
    drop(first);

    let second = open(ADMIN, "new-runner-token-0123456789abcdef012")
        .await
        .expect("reopens");
    let store = &second.state.store;
    for (secret, valid) in [
        (old_admin, false),
        (old_runner, false),
        (ADMIN, true),
        ("new-runner-token-0123456789abcdef012", true),
        ("ci-admin-secret-0123456789abcdef", true),
    ] {
        assert_eq!(
            slipway_server::auth::check(store, secret).await.is_some(),
            valid,
            "{secret}"
        );
    }
    let names: Vec<String> = store
        .tokens()
        .await
        .expect("tokens")
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(
        names.iter().filter(|n| *n == "admin").count(),
        1,
        "{names:?}"
    );
    assert!(
        store
            .tokens()
            .await
            .expect("tokens")
            .iter()
            .any(|t| t.id == other.id)
    );
}
