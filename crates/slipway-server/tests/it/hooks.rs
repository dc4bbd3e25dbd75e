//! `POST /hook` of a real server (in-process, SQLite): every delivery of the corpus, signed
//! as its host signs it, builds or is ignored as the corpus expects; and every refusal (bad
//! signature, unknown repository, malformed body, unsupported event) and every redelivery
//! leaves every table of the database exactly as it was.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use slipway_server::app::Server;
use slipway_server::config::ServerConfig;
use slipway_server::store::NewRepo;
use slipway_server::webhook::Provider;

use super::{KEY, corpus, hmac_hex};

/// Row counts of every table of the SQLite database.
async fn table_counts(db: &Path) -> BTreeMap<String, i64> {
    let url = format!("sqlite://{}?mode=ro", db.display());
    let pool = sqlx::sqlite::SqlitePool::connect(&url)
        .await
        .expect("open the database read-only");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    )
    .fetch_all(&pool)
    .await
    .expect("list tables");
    let mut counts = BTreeMap::new();
    for table in tables {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM \"{table}\""))
            .fetch_one(&pool)
            .await
            .expect("count rows");
        counts.insert(table, n);
    }
    pool.close().await;
    counts
}

struct Delivery<'a> {
    provider: Provider,
    event_header: (&'a str, &'a str),
    id: &'a str,
    body: &'a [u8],
    secret: &'a [u8],
}

async fn deliver(client: &reqwest::Client, url: &str, d: &Delivery<'_>) -> (u16, Value) {
    let mut req = client
        .post(format!("{url}/hook"))
        .header("Content-Type", "application/json")
        .header(d.event_header.0, d.event_header.1)
        .body(d.body.to_vec());
    req = match d.provider {
        Provider::GitHub => req.header("X-GitHub-Delivery", d.id).header(
            "X-Hub-Signature-256",
            format!("sha256={}", hmac_hex(d.secret, d.body)),
        ),
        Provider::Gitea => req
            .header("X-Gitea-Delivery", d.id)
            .header("X-Gitea-Signature", hmac_hex(d.secret, d.body)),
        Provider::GitLab => req.header("X-Gitlab-Event-UUID", d.id).header(
            "X-Gitlab-Token",
            String::from_utf8_lossy(d.secret).into_owned(),
        ),
        Provider::Generic => req.header("Idempotency-Key", d.id).header(
            "X-Slipway-Signature",
            format!("sha256={}", hmac_hex(d.secret, d.body)),
        ),
    };
    let resp = req.send().await.expect("delivered");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A bare repository with one commit (the corpus' commits are not in it: their builds end
/// in `error`, which is still a build).
fn bare_repo(dir: &Path) -> String {
    let work = dir.join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    std::fs::write(
        work.join(".drone.yml"),
        "kind: pipeline\nsteps:\n- name: a\n  image: x\n  commands: [true]\n",
    )
    .expect("write");
    let git = |args: &[&str], cwd: &Path| {
        let ok = Command::new("git")
            .args(["-c", "user.name=T", "-c", "user.email=t@e.invalid"])
            .args(args)
            .current_dir(cwd)
            .status()
            .expect("git")
            .success();
        assert!(ok, "git {args:?}");
    };
    git(&["init", "-q", "-b", "main"], &work);
    git(&["add", "-A"], &work);
    git(&["commit", "-qm", "init"], &work);
    git(&["clone", "-q", "--bare", "work", "app.git"], dir);
    format!("file://{}", dir.join("app.git").display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_deliveries_build_once_and_refusals_change_nothing() {
    let Some(cases) = corpus() else { return };
    let data = tempfile::tempdir().expect("data dir");
    let repos = tempfile::tempdir().expect("repos dir");
    let clone_url = bare_repo(repos.path());
    let mut config = ServerConfig::new(data.path(), "http://127.0.0.1:1");
    config.admin_token = Some("hooks-test-admin-token-000000000000".into());
    let server = Server::open(config).await.expect("server opens");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let router = server.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let db = data.path().join("slipway.db");
    let client = reqwest::Client::new();

    let mut names = Vec::new();
    for case in &cases {
        let name = slipway_server::webhook::repository(case.provider, &case.body)
            .expect("corpus body is JSON")
            .expect("corpus body names a repository");
        if names.contains(&name) {
            continue;
        }
        server
            .state
            .store
            .create_repo(&NewRepo {
                name: name.clone(),
                provider: case.provider.as_str().to_owned(),
                clone_url: clone_url.clone(),
                config_path: None,
                webhook_secret: String::from_utf8_lossy(KEY).into_owned(),
                default_branch: "main".into(),
                trusted: false,
                auto_cancel: false,
                max_running: 0,
                status_url: None,
                status_token: None,
            })
            .await
            .expect("repository added");
        names.push(name);
    }

    let mut built = 0;
    for (i, case) in cases.iter().enumerate() {
        let id = format!("delivery-{i}");
        let d = Delivery {
            provider: case.provider,
            event_header: (&case.header_name, &case.event_header),
            id: &id,
            body: &case.body,
            secret: KEY,
        };
        let before = table_counts(&db).await;
        let (status, answer) = deliver(&client, &url, &d).await;
        let should_build = case.expect["build"] == true;
        if should_build {
            assert_eq!(status, 201, "{}: {answer}", case.name);
            built += 1;
            let after = table_counts(&db).await;
            assert_eq!(after["builds"], before["builds"] + 1, "{}", case.name);
            // The same delivery again builds nothing and writes nothing.
            let (status, answer) = deliver(&client, &url, &d).await;
            assert_eq!(status, 200, "{}: {answer}", case.name);
            assert_eq!(answer["duplicate"], true, "{}", case.name);
            assert_eq!(table_counts(&db).await, after, "{}: redelivery", case.name);
        } else {
            assert_eq!(status, 202, "{}: {answer}", case.name);
            assert!(answer["ignored"].is_string(), "{}: {answer}", case.name);
            assert_eq!(
                table_counts(&db).await,
                before,
                "{}: ignored delivery",
                case.name
            );
        }

        // Refusals of the same body write nothing either.
        let before = table_counts(&db).await;
        let bad = Delivery {
            id: "bad-signature",
            secret: b"another-secret-of-enough-length!!",
            ..d
        };
        let (status, answer) = deliver(&client, &url, &bad).await;
        assert_eq!(status, 401, "{}: {answer}", case.name);
        let garbage = Delivery {
            id: "garbage",
            body: b"{\"repository\": ",
            ..d
        };
        let (status, answer) = deliver(&client, &url, &garbage).await;
        assert_eq!(status, 400, "{}: {answer}", case.name);
        assert_eq!(table_counts(&db).await, before, "{}: refusals", case.name);
    }
    assert!(
        built >= 10,
        "the corpus has many building deliveries, saw {built}"
    );

    // A repository nobody added: 404, nothing written.
    let before = table_counts(&db).await;
    let body = br#"{"ref":"refs/heads/main","before":"0000000000000000000000000000000000000000","after":"1111111111111111111111111111111111111111","repository":{"full_name":"nobody/unknown","clone_url":"x"}}"#;
    let unknown = Delivery {
        provider: Provider::GitHub,
        event_header: ("X-GitHub-Event", "push"),
        id: "unknown-repo",
        body,
        secret: KEY,
    };
    let (status, answer) = deliver(&client, &url, &unknown).await;
    assert_eq!(status, 404, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("nobody/unknown")),
        "{answer}"
    );
    assert_eq!(table_counts(&db).await, before);
}
