//! The one integration-test binary of slipway-server (one binary keeps link time down).

mod browser;
mod corpus;
mod deploy_ui;
mod generic;
mod hooks;
mod live_ui;
mod logs_ui;
mod mirror;
mod notify_deploy;
mod parse;
mod protocol;
mod registry_tokens;
mod robustness;
mod runner_harness;
mod secrets;
mod signature;
mod status;
mod store;
mod web;

use std::path::PathBuf;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use slipway_server::webhook::{Hook, Parsed, Provider};

/// `../shared/corpus/webhooks` beside the clone. `None` (and a message) when absent, as in a
/// user's checkout.
pub fn corpus_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus/webhooks");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "skipping: ../shared/corpus not found ({} is not beside this checkout)",
            dir.display()
        );
        None
    }
}

/// One real delivery of the corpus: `NAME.json` and what `NAME.meta.json` says of it.
#[derive(Debug)]
pub struct Case {
    /// `github/push_tag`.
    pub name: String,
    pub provider: Provider,
    pub header_name: String,
    pub event_header: String,
    pub body: Vec<u8>,
    pub expect: Value,
}

/// Every case of the corpus, sorted by name; `None` when the corpus is absent.
pub fn corpus() -> Option<Vec<Case>> {
    let dir = corpus_dir()?;
    let mut cases = Vec::new();
    for sub in ["github", "gitea", "gitlab"] {
        let entries = std::fs::read_dir(dir.join(sub)).expect("corpus directory readable");
        for entry in entries {
            let path = entry.expect("corpus entry").path();
            let Some(file) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(stem) = file.strip_suffix(".meta.json") else {
                continue;
            };
            let meta: Value = serde_json::from_slice(&std::fs::read(&path).expect("meta readable"))
                .expect("meta is JSON");
            let body = std::fs::read(dir.join(sub).join(format!("{stem}.json")))
                .expect("body beside its meta");
            let provider = Provider::parse(meta["provider"].as_str().expect("meta.provider"))
                .expect("known provider");
            cases.push(Case {
                name: format!("{sub}/{stem}"),
                provider,
                header_name: meta["header_name"]
                    .as_str()
                    .expect("header_name")
                    .to_owned(),
                event_header: meta["event_header"]
                    .as_str()
                    .expect("event_header")
                    .to_owned(),
                body,
                expect: meta["expect"].clone(),
            });
        }
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    Some(cases)
}

pub const KEY: &[u8] = b"an-example-webhook-secret-of-32-bytes!";

/// Lowercase hex HMAC-SHA256, computed here independently of the crate.
pub fn hmac_hex(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Headers as a list of pairs.
pub fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The hook of a delivery that must build.
pub fn build(parsed: Result<Parsed, slipway_server::webhook::WebhookError>) -> Box<Hook> {
    match parsed {
        Ok(Parsed::Build(hook)) => hook,
        other => panic!("expected a build, got {other:?}"),
    }
}

/// The reason of a delivery that must be ignored.
pub fn ignored(parsed: Result<Parsed, slipway_server::webhook::WebhookError>) -> String {
    match parsed {
        Ok(Parsed::Ignored { reason }) => reason,
        other => panic!("expected to be ignored, got {other:?}"),
    }
}

/// A bare repository (served over `file://`) whose one commit on `main` holds `.drone.yml`.
#[derive(Debug)]
pub struct BareRepo {
    pub clone_url: String,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl BareRepo {
    pub fn with_pipeline(pipeline: &str) -> BareRepo {
        let work = tempfile::tempdir().expect("a work tree");
        std::fs::write(work.path().join(".drone.yml"), pipeline).expect("write .drone.yml");
        git(work.path(), &["init", "-q", "-b", "main"]);
        git(work.path(), &["add", "-A"]);
        git(work.path(), &["commit", "-q", "-m", "the pipeline"]);
        let bare = tempfile::tempdir().expect("a bare repository dir");
        let bare_path = bare.path().join("repo.git");
        let status = std::process::Command::new("git")
            .args(["clone", "-q", "--bare"])
            .arg(work.path())
            .arg(&bare_path)
            .status()
            .expect("git clone --bare");
        assert!(status.success(), "git clone --bare");
        BareRepo {
            clone_url: format!("file://{}", bare_path.display()),
            _dirs: (work, bare),
        }
    }
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let status = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=T", "-c", "user.email=t@example.invalid"])
        .args(args)
        .status()
        .expect("git runs");
    assert!(status.success(), "git {args:?} failed");
}

/// The real server in-process on loopback (served as `slipway up` serves it): data in a
/// temporary dir, `admin` as the admin token, polls held up to 5 s; `tweak` may change the
/// rest of the configuration. Stops when `shutdown` is cancelled.
pub struct TestServer {
    pub url: String,
    pub server: slipway_server::app::Server,
    pub data: tempfile::TempDir,
}

pub async fn serve(
    admin: &str,
    shutdown: &tokio_util::sync::CancellationToken,
    tweak: impl FnOnce(&mut slipway_server::config::ServerConfig),
) -> TestServer {
    let data = tempfile::tempdir().expect("a data dir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let mut config =
        slipway_server::config::ServerConfig::new(data.path().join("data"), url.clone());
    config.admin_token = Some(admin.to_owned());
    config.poll_wait = std::time::Duration::from_secs(5);
    tweak(&mut config);
    let limits = config.limits;
    let server = slipway_server::app::Server::open(config)
        .await
        .expect("the server opens");
    server.spawn_background(shutdown.clone());
    let router = server.router();
    // The listener of `slipway up`: its limits, and the peer address handlers see.
    tokio::spawn(slipway_server::listen::serve(
        listener,
        router,
        limits,
        shutdown.clone(),
    ));
    TestServer { url, server, data }
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("url", &self.url)
            .field("data", &self.data)
            .finish_non_exhaustive()
    }
}
