//! The store, one suite run against both engines: every test below is run as
//! `store::sqlite::NAME` (a fresh file in a temp dir) and `store::postgres::NAME` (a fresh
//! database per test, created from `SLIPWAY_TEST_POSTGRES_URL` and dropped when the test
//! passes; a failed test leaves it, uniquely named, to look at). Without that variable the
//! PostgreSQL variants print a message and pass.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use slipway_engine::Status;
use slipway_server::store::{
    Backend, ChannelRow, CompiledBuild, DeployNotice, EndedStage, HeadLease, LeasedEnd, NewAttempt,
    NewBuild, NewDelivery, NewRepo, NewRevision, NewStage, Repo, ReportWrite, Runner, Stage,
    StepUpdate, Store, StoreError,
};
use sqlx::{Connection, Row};

// ------------------------------------------------------------------------ harness

/// One fresh database of one engine.
pub struct TestDb {
    url: String,
    backend: Backend,
    /// PostgreSQL: the URL the database was created from, and its name.
    postgres: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// `postgres://u:p@h:port/DB?query` with DB replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{}", &base[..host_end], name);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

impl TestDb {
    fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("slipway.db").display());
        TestDb {
            url,
            backend: Backend::Sqlite,
            postgres: None,
            _dir: Some(dir),
        }
    }

    async fn postgres() -> Option<TestDb> {
        let Ok(admin) = std::env::var("SLIPWAY_TEST_POSTGRES_URL") else {
            eprintln!("skipping: SLIPWAY_TEST_POSTGRES_URL not set");
            return None;
        };
        sqlx::any::install_default_drivers();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos();
        let name = format!(
            "slipway_test_{}_{}_{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            nanos % 1_000_000_000_000
        );
        let mut conn = sqlx::AnyConnection::connect(&admin)
            .await
            .expect("SLIPWAY_TEST_POSTGRES_URL answers");
        let mut tries = 0;
        loop {
            // CREATE DATABASE can fail while another one copies the template at that moment.
            match sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
            {
                Ok(_) => break,
                Err(e) if tries < 10 => {
                    tries += 1;
                    eprintln!("CREATE DATABASE {name} failed ({e}), retrying");
                    tokio::time::sleep(Duration::from_millis(200 * tries)).await;
                }
                Err(e) => panic!("cannot create test database {name}: {e}"),
            }
        }
        conn.close().await.expect("close admin connection");
        Some(TestDb {
            url: with_database(&admin, &name),
            backend: Backend::Postgres,
            postgres: Some((admin, name)),
            _dir: None,
        })
    }

    async fn open(&self) -> Store {
        let store = Store::open(&self.url).await.expect("store opens");
        assert_eq!(store.backend(), self.backend);
        store
    }

    /// A connection of our own, beside the store's pool, to look at the tables directly.
    async fn raw(&self) -> sqlx::AnyConnection {
        sqlx::any::install_default_drivers();
        sqlx::AnyConnection::connect(&self.url)
            .await
            .expect("raw connection")
    }

    async fn finish(self) {
        if let Some((admin, name)) = &self.postgres {
            let mut conn = sqlx::AnyConnection::connect(admin)
                .await
                .expect("admin connection");
            // FORCE ends the store's connections that are still closing, but a role without
            // `pg_signal_backend` may not end an autovacuum worker that has just entered the
            // new database (PostgreSQL refuses with 42501). A plain DROP waits for such a
            // worker itself, so it is the fallback, retried while our connections go away.
            let force = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            let plain = format!("DROP DATABASE IF EXISTS {name}");
            let mut result = sqlx::raw_sql(&force).execute(&mut conn).await.map(drop);
            if let Err(e) = &result {
                let code = e.as_database_error().and_then(|d| d.code());
                assert_eq!(
                    code.as_deref(),
                    Some("42501"),
                    "cannot drop test database {name}: {e}"
                );
            }
            let mut tries = 0;
            while let Err(e) = &result {
                tries += 1;
                if tries > 8 {
                    panic!("cannot drop test database {name}: {e}");
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                result = sqlx::raw_sql(&plain).execute(&mut conn).await.map(drop);
            }
            conn.close().await.expect("close admin connection");
        }
    }
}

macro_rules! both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = super::TestDb::sqlite();
                    super::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(db) = super::TestDb::postgres().await else {
                        return;
                    };
                    super::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
    };
}

both_engines!(
    repositories,
    build_creation_and_queries,
    build_with_error_and_skipped_stage,
    a_build_of_many_stages_keeps_their_order_and_steps,
    build_status_and_listing,
    build_numbers_have_no_gaps_under_concurrency,
    numbers_are_per_repository,
    duplicate_delivery_changes_nothing,
    replayed_body_changes_nothing,
    create_build_for_a_missing_repository_leaves_nothing,
    lease_has_exactly_one_winner,
    lease_lifecycle,
    requeue_resets_steps,
    cancel_and_finish_without_attempt,
    steps_updates,
    report_writes_and_leased_end,
    whole_step_logs_are_kept_once_per_attempt,
    lease_head_takes_only_a_head_any_runner_may_run,
    ends_arriving_together_are_each_applied_as_alone,
    secrets,
    runners,
    tokens,
    artifacts_and_stats,
    reopen_runs_no_migration_twice,
    unknown_status_is_corrupt,
    notifications_outbox_deliveries_and_attempts,
    environments_stacks_and_revisions,
);

// ------------------------------------------------------------------------ helpers

fn new_repo(name: &str) -> NewRepo {
    NewRepo {
        name: name.to_owned(),
        provider: "gitea".to_owned(),
        clone_url: format!("https://git.example/{name}.git"),
        config_path: None,
        webhook_secret: "hook-secret".to_owned(),
        default_branch: "main".to_owned(),
        trusted: false,
        auto_cancel: true,
        max_running: 0,
        status_url: None,
        status_token: None,
    }
}

fn new_build(repo_id: i64, delivery: Option<&str>) -> NewBuild {
    NewBuild {
        repo_id,
        event: "push".to_owned(),
        reference: "refs/heads/main".to_owned(),
        branch: "main".to_owned(),
        commit: "0123456789abcdef0123456789abcdef01234567".to_owned(),
        message: "fix: the thing".to_owned(),
        author: "alice".to_owned(),
        trigger: "webhook".to_owned(),
        deploy_to: String::new(),
        delivery_id: delivery.map(str::to_owned),
        body_digest: None,
    }
}

fn new_stage(name: &str, steps: &[&str]) -> NewStage {
    NewStage {
        name: name.to_owned(),
        status: Status::Pending,
        depends_on: Vec::new(),
        labels: BTreeMap::from([("os".to_owned(), "linux".to_owned())]),
        plan: json!({"name": name, "steps": steps}),
        steps: steps.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// A pending build of two stages: `build` (clone, compile, test) and `deploy` (clone,
/// push), `deploy` depending on `build`.
fn two_stages(number: i64) -> CompiledBuild {
    let mut deploy = new_stage("deploy", &["clone", "push"]);
    deploy.depends_on = vec!["build".to_owned()];
    CompiledBuild {
        status: Status::Pending,
        error: None,
        context: json!({"build": {"number": number}}),
        stages: vec![new_stage("build", &["clone", "compile", "test"]), deploy],
    }
}

/// A store with one repository, `name`.
async fn store_with_repo(db: &TestDb, name: &str) -> (Store, Repo) {
    let store = db.open().await;
    let repo = store.create_repo(&new_repo(name)).await.expect("repo");
    (store, repo)
}

/// Repository `acme/app` with one two-stage build; returns the store, repo id, build id
/// and the first stage's id.
async fn one_build(db: &TestDb) -> (Store, i64, i64, i64) {
    let (store, repo) = store_with_repo(db, "acme/app").await;
    let (build, stages) = store
        .create_build(&new_build(repo.id, None), two_stages)
        .await
        .expect("build");
    (store, repo.id, build.id, stages[0].id)
}

/// [`one_build`] with its first stage leased to a new runner `r1`: the store, build and
/// stage ids, the runner and the leased stage.
async fn one_leased_stage(db: &TestDb) -> (Store, i64, i64, Runner, Stage) {
    let (store, _repo_id, build_id, stage_id) = one_build(db).await;
    let runner = store
        .register_runner("r1", &BTreeMap::new(), 1, "test", "", 100)
        .await
        .expect("runner");
    let leased = store
        .lease_stage(stage_id, runner.id, 60_000, 1_000)
        .await
        .expect("lease")
        .expect("leased");
    (store, build_id, stage_id, runner, leased)
}

const TABLES: &[&str] = &[
    "repos",
    "builds",
    "stages",
    "steps",
    "secrets",
    "runners",
    "tokens",
    "artifacts",
    "step_logs",
    "sessions",
    "schema_migrations",
];

/// Row count of every table, and every repository's build counter.
async fn snapshot(db: &TestDb) -> Vec<(String, i64)> {
    let mut conn = db.raw().await;
    let mut out = Vec::new();
    for table in TABLES {
        let count: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&mut conn)
            .await
            .expect("count");
        out.push(((*table).to_owned(), count));
    }
    let counters = sqlx::query("SELECT id, build_counter FROM repos ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .expect("counters");
    for row in counters {
        let id: i64 = row.get("id");
        out.push((format!("repo {id} build_counter"), row.get("build_counter")));
    }
    conn.close().await.expect("close");
    out
}

/// More stages and steps than one statement writes (they are written many rows at a time).
async fn a_build_of_many_stages_keeps_their_order_and_steps(db: &TestDb) {
    let (store, repo) = store_with_repo(db, "acme/many").await;
    let names = ["clone", "build", "test"];
    let (build, created) = store
        .create_build(&new_build(repo.id, None), |_| CompiledBuild {
            status: Status::Pending,
            error: None,
            context: json!({}),
            stages: (0..230)
                .map(|i| {
                    let mut stage = new_stage(&format!("p{i}"), &names[..i % 3 + 1]);
                    if i % 7 == 0 {
                        stage.status = Status::Skipped;
                    }
                    stage
                })
                .collect(),
        })
        .await
        .expect("build");
    let stored = store.stages(build.id).await.expect("stages");
    assert_eq!(
        created, stored,
        "create_build answers what it stored, in order"
    );
    assert_eq!(stored.len(), 230);
    for (i, stage) in stored.iter().enumerate() {
        assert_eq!(stage.number, i as i64 + 1);
        assert_eq!(stage.name, format!("p{i}"));
        assert_eq!(
            stage.plan,
            json!({"name": format!("p{i}"), "steps": &names[..i % 3 + 1]})
        );
        let skipped = i % 7 == 0;
        assert_eq!(
            stage.status,
            if skipped {
                Status::Skipped
            } else {
                Status::Pending
            }
        );
        assert_eq!(stage.finished.is_some(), skipped);
        let steps = store.steps(stage.id).await.expect("steps");
        let got: Vec<(i64, &str, Status)> = steps
            .iter()
            .map(|s| (s.number, s.name.as_str(), s.status))
            .collect();
        let want: Vec<(i64, &str, Status)> = names[..i % 3 + 1]
            .iter()
            .enumerate()
            .map(|(n, name)| (n as i64 + 1, *name, Status::Pending))
            .collect();
        assert_eq!(got, want, "steps of stage {}", stage.name);
    }
}

// ------------------------------------------------------------------------ repositories

async fn repositories(db: &TestDb) {
    let store = db.open().await;
    assert!(store.repos().await.expect("repos").is_empty());
    let mut spec = new_repo("zeta/svc");
    spec.config_path = Some(".ci.yml".to_owned());
    spec.trusted = true;
    spec.max_running = 2;
    spec.status_url = Some("https://api.github.com".to_owned());
    spec.status_token = Some("c2VjcmV0".to_owned());
    let zeta = store.create_repo(&spec).await.expect("create zeta");
    assert!(zeta.id > 0);
    assert_eq!(zeta.name, "zeta/svc");
    assert_eq!(zeta.config_path.as_deref(), Some(".ci.yml"));
    assert!(zeta.trusted);
    assert!(zeta.auto_cancel);
    assert_eq!(zeta.max_running, 2);
    assert_eq!(zeta.status_token.as_deref(), Some("c2VjcmV0"));
    assert!(zeta.created > 1_600_000_000_000, "created is unix ms");
    let alpha = store
        .create_repo(&new_repo("alpha/web"))
        .await
        .expect("create alpha");
    assert_ne!(alpha.id, zeta.id);
    assert_eq!(alpha.config_path, None);

    match store.create_repo(&new_repo("zeta/svc")).await {
        Err(StoreError::Conflict { what, name }) => {
            assert_eq!(what, "repository");
            assert_eq!(name, "zeta/svc");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }

    assert_eq!(store.repo(zeta.id).await.expect("repo"), Some(zeta.clone()));
    assert_eq!(store.repo(9999).await.expect("repo"), None);
    assert_eq!(
        store.repo_by_name("alpha/web").await.expect("by name"),
        Some(alpha.clone())
    );
    assert_eq!(
        store.repo_by_name("nope/nope").await.expect("by name"),
        None
    );
    let names: Vec<String> = store
        .repos()
        .await
        .expect("repos")
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["alpha/web", "zeta/svc"]);

    let changed = Repo {
        name: "ignored/rename".to_owned(),
        created: 1,
        provider: "github".to_owned(),
        clone_url: "https://github.com/zeta/svc.git".to_owned(),
        config_path: None,
        webhook_secret: "new-secret".to_owned(),
        default_branch: "trunk".to_owned(),
        trusted: false,
        auto_cancel: false,
        max_running: 5,
        status_url: None,
        status_token: None,
        ..zeta.clone()
    };
    store.update_repo(&changed).await.expect("update");
    let stored = store.repo(zeta.id).await.expect("repo").expect("exists");
    assert_eq!(
        stored,
        Repo {
            name: zeta.name.clone(),
            created: zeta.created,
            ..changed
        }
    );
}

// ------------------------------------------------------------------------ builds

async fn build_creation_and_queries(db: &TestDb) {
    let (store, repo) = store_with_repo(db, "acme/app").await;
    let called = AtomicBool::new(false);
    let (build, stages) = store
        .create_build(&new_build(repo.id, Some("delivery-1")), |number| {
            called.store(true, Ordering::SeqCst);
            assert_eq!(number, 1);
            two_stages(number)
        })
        .await
        .expect("create");
    assert!(called.load(Ordering::SeqCst));
    assert_eq!(build.number, 1);
    assert_eq!(build.repo_id, repo.id);
    assert_eq!(build.status, Status::Pending);
    assert_eq!(build.event, "push");
    assert_eq!(build.reference, "refs/heads/main");
    assert_eq!(build.branch, "main");
    assert_eq!(build.commit, "0123456789abcdef0123456789abcdef01234567");
    assert_eq!(build.message, "fix: the thing");
    assert_eq!(build.author, "alice");
    assert_eq!(build.trigger, "webhook");
    assert_eq!(build.deploy_to, "");
    assert_eq!(build.delivery_id.as_deref(), Some("delivery-1"));
    assert_eq!(build.context, json!({"build": {"number": 1}}));
    assert_eq!(build.error, None);
    assert_eq!((build.started, build.finished), (None, None));

    assert_eq!(stages.len(), 2);
    assert_eq!(stages[0].number, 1);
    assert_eq!(stages[0].name, "build");
    assert_eq!(stages[1].number, 2);
    assert_eq!(stages[1].name, "deploy");
    assert_eq!(stages[1].depends_on, ["build"]);
    for stage in &stages {
        assert_eq!(stage.build_id, build.id);
        assert_eq!(stage.repo_id, repo.id);
        assert_eq!(stage.status, Status::Pending);
        assert_eq!(stage.attempt, 0);
        assert_eq!((stage.runner_id, stage.lease_expires), (None, None));
        assert!(!stage.cancel_requested);
        assert_eq!(stage.labels.get("os").map(String::as_str), Some("linux"));
        assert_eq!(stage.plan["name"], json!(stage.name));
    }

    assert_eq!(
        store.build(build.id).await.expect("build"),
        Some(build.clone())
    );
    assert_eq!(store.build(build.id + 100).await.expect("build"), None);
    assert_eq!(
        store.build_by_number(repo.id, 1).await.expect("by number"),
        Some(build.clone())
    );
    assert_eq!(
        store.build_by_number(repo.id, 2).await.expect("by number"),
        None
    );
    assert_eq!(store.stages(build.id).await.expect("stages"), stages);
    assert_eq!(
        store.stage(stages[1].id).await.expect("stage"),
        Some(stages[1].clone())
    );
    assert_eq!(store.stage(stages[1].id + 100).await.expect("stage"), None);
    assert_eq!(
        store
            .delivery_build(repo.id, "delivery-1")
            .await
            .expect("delivery"),
        Some(build.id)
    );
    assert_eq!(
        store
            .delivery_build(repo.id, "delivery-2")
            .await
            .expect("delivery"),
        None
    );

    let steps = store.steps(stages[0].id).await.expect("steps");
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["clone", "compile", "test"]);
    for (i, step) in steps.iter().enumerate() {
        assert_eq!(step.number, i as i64 + 1);
        assert_eq!(step.stage_id, stages[0].id);
        assert_eq!(step.status, Status::Pending);
        assert_eq!((step.exit_code, &step.error), (None, &None));
        assert_eq!((step.started, step.finished), (None, None));
    }
    let all = store
        .steps_of_build(build.id)
        .await
        .expect("steps of build");
    let order: Vec<(i64, &str)> = all.iter().map(|s| (s.stage_id, s.name.as_str())).collect();
    assert_eq!(
        order,
        [
            (stages[0].id, "clone"),
            (stages[0].id, "compile"),
            (stages[0].id, "test"),
            (stages[1].id, "clone"),
            (stages[1].id, "push"),
        ]
    );

    // A build without stages is fine too.
    let (empty, none) = store
        .create_build(&new_build(repo.id, None), |n| CompiledBuild {
            stages: Vec::new(),
            ..two_stages(n)
        })
        .await
        .expect("empty build");
    assert_eq!(empty.number, 2);
    assert!(none.is_empty());
    assert!(
        store
            .steps_of_build(empty.id)
            .await
            .expect("steps")
            .is_empty()
    );
}

async fn build_with_error_and_skipped_stage(db: &TestDb) {
    let (store, repo) = store_with_repo(db, "acme/app").await;
    let (broken, stages) = store
        .create_build(&new_build(repo.id, None), |_| CompiledBuild {
            status: Status::Error,
            error: Some(".drone.yml:3:1: error: bad".to_owned()),
            context: json!({}),
            stages: Vec::new(),
        })
        .await
        .expect("error build");
    assert_eq!(broken.status, Status::Error);
    assert_eq!(broken.error.as_deref(), Some(".drone.yml:3:1: error: bad"));
    assert_eq!(broken.finished, Some(broken.created));
    assert!(stages.is_empty());

    let (build, stages) = store
        .create_build(&new_build(repo.id, None), |n| {
            let mut compiled = two_stages(n);
            compiled.stages[1].status = Status::Skipped;
            compiled
        })
        .await
        .expect("build");
    assert_eq!(build.number, 2);
    assert_eq!(stages[0].status, Status::Pending);
    assert_eq!(stages[0].finished, None);
    assert_eq!(stages[1].status, Status::Skipped);
    assert_eq!(stages[1].finished, Some(stages[1].created));
    let pending = store.pending_stages(0, 10).await.expect("pending");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, stages[0].id);
}

async fn build_status_and_listing(db: &TestDb) {
    let (store, app) = store_with_repo(db, "acme/app").await;
    let lib = store
        .create_repo(&new_repo("acme/lib"))
        .await
        .expect("repo");
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut spec = new_build(app.id, None);
        if i == 3 {
            spec.branch = "feature".to_owned();
        }
        if i == 4 {
            spec.event = "tag".to_owned();
        }
        let (build, _) = store.create_build(&spec, two_stages).await.expect("build");
        ids.push(build.id);
    }
    let (lib_build, _) = store
        .create_build(&new_build(lib.id, None), two_stages)
        .await
        .expect("lib build");

    let numbers = |builds: Vec<slipway_server::store::Build>| -> Vec<i64> {
        builds.into_iter().map(|b| b.number).collect()
    };
    assert_eq!(
        numbers(store.builds(app.id, 10, None).await.expect("builds")),
        [5, 4, 3, 2, 1]
    );
    assert_eq!(
        numbers(store.builds(app.id, 2, None).await.expect("builds")),
        [5, 4]
    );
    assert_eq!(
        numbers(store.builds(app.id, 2, Some(4)).await.expect("builds")),
        [3, 2]
    );
    assert_eq!(
        numbers(store.builds(app.id, 10, Some(1)).await.expect("builds")),
        Vec::<i64>::new()
    );
    assert_eq!(
        numbers(store.builds(lib.id, 10, None).await.expect("builds")),
        [1]
    );

    // Pending pushes to main below #5: #1, #2, #3 (#4 is another branch, #5 a tag).
    assert_eq!(
        numbers(
            store
                .pending_builds_on_branch(app.id, "main", "push", 5)
                .await
                .expect("pending")
        ),
        [1, 2, 3]
    );
    assert!(store.start_build(ids[1], 1000).await.expect("start"));
    assert_eq!(
        numbers(
            store
                .pending_builds_on_branch(app.id, "main", "push", 3)
                .await
                .expect("pending")
        ),
        [1]
    );
    let running = store.build(ids[1]).await.expect("build").expect("exists");
    assert_eq!(running.status, Status::Running);
    assert_eq!((running.started, running.finished), (Some(1000), None));
    // Only a pending build starts, and a build finishes once: started is never
    // overwritten, and a second end (two settles at once) changes nothing.
    assert!(!store.start_build(ids[1], 2000).await.expect("start again"));
    assert!(
        store
            .finish_build(ids[1], Status::Success, 3000)
            .await
            .expect("finish")
    );
    assert!(
        !store
            .finish_build(ids[1], Status::Failure, 4000)
            .await
            .expect("finish again")
    );
    assert!(
        !store
            .start_build(ids[1], 5000)
            .await
            .expect("start a finished build")
    );
    let done = store.build(ids[1]).await.expect("build").expect("exists");
    assert_eq!(done.status, Status::Success);
    assert_eq!((done.started, done.finished), (Some(1000), Some(3000)));

    let recent = store.recent_builds(3).await.expect("recent");
    let seen: Vec<(i64, &str)> = recent
        .iter()
        .map(|(b, name)| (b.id, name.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (lib_build.id, "acme/lib"),
            (ids[4], "acme/app"),
            (ids[3], "acme/app")
        ]
    );
    assert_eq!(store.recent_builds(100).await.expect("recent").len(), 6);
}

async fn build_numbers_have_no_gaps_under_concurrency(db: &TestDb) {
    let (store, repo) = store_with_repo(db, "acme/app").await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let delivery = format!("delivery-{i}");
            let (build, stages) = store
                .create_build(&new_build(repo.id, Some(&delivery)), two_stages)
                .await
                .expect("concurrent create");
            assert_eq!(build.context["build"]["number"], json!(build.number));
            assert_eq!(stages.len(), 2);
            build.number
        }));
    }
    let mut numbers = Vec::new();
    for task in tasks {
        numbers.push(task.await.expect("task"));
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=20).collect::<Vec<i64>>());
    let stored: Vec<i64> = store
        .builds(repo.id, 100, None)
        .await
        .expect("builds")
        .into_iter()
        .map(|b| b.number)
        .collect();
    assert_eq!(stored, (1..=20).rev().collect::<Vec<i64>>());
    assert_eq!(store.queue_stats().await.expect("stats").pending_stages, 40);
}

async fn numbers_are_per_repository(db: &TestDb) {
    let (store, a) = store_with_repo(db, "a/a").await;
    let b = store.create_repo(&new_repo("b/b")).await.expect("repo");
    let mut tasks = Vec::new();
    for i in 0..10 {
        let store = store.clone();
        let repo_id = if i % 2 == 0 { a.id } else { b.id };
        tasks.push(tokio::spawn(async move {
            let (build, _) = store
                .create_build(&new_build(repo_id, None), two_stages)
                .await
                .expect("create");
            (repo_id, build.number)
        }));
    }
    let mut per_repo: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for task in tasks {
        let (repo_id, number) = task.await.expect("task");
        per_repo.entry(repo_id).or_default().push(number);
    }
    for numbers in per_repo.values_mut() {
        numbers.sort_unstable();
        assert_eq!(*numbers, [1, 2, 3, 4, 5]);
    }
}

/// A webhook body built once is refused again under any delivery id (or none), for its
/// repository only, and the refusal writes nothing.
async fn replayed_body_changes_nothing(db: &TestDb) {
    let (store, repo) = store_with_repo(db, "acme/app").await;
    let other = store
        .create_repo(&new_repo("acme/other"))
        .await
        .expect("repo");
    let with_body = |repo_id: i64, delivery: Option<&str>, digest: &str| NewBuild {
        body_digest: Some(digest.to_owned()),
        ..new_build(repo_id, delivery)
    };
    let (first, _) = store
        .create_build(&with_body(repo.id, Some("d-1"), "aa"), two_stages)
        .await
        .expect("first");
    assert_eq!(
        store.body_build(repo.id, "aa").await.expect("lookup"),
        Some(first.id)
    );
    let before = snapshot(db).await;
    for delivery in [Some("d-2"), None] {
        match store
            .create_build(&with_body(repo.id, delivery, "aa"), two_stages)
            .await
        {
            Err(StoreError::ReplayedBody { build_id }) => assert_eq!(build_id, first.id),
            other => panic!("expected ReplayedBody for {delivery:?}, got {other:?}"),
        }
    }
    assert_eq!(snapshot(db).await, before, "database unchanged");
    // Another body, or the same body for another repository, builds.
    let (second, _) = store
        .create_build(&with_body(repo.id, Some("d-3"), "bb"), two_stages)
        .await
        .expect("another body");
    assert_eq!(second.number, 2, "the refusals used no number");
    store
        .create_build(&with_body(other.id, Some("d-1"), "aa"), two_stages)
        .await
        .expect("same body, other repository");
    assert_eq!(store.body_build(repo.id, "cc").await.expect("lookup"), None);
}

async fn duplicate_delivery_changes_nothing(db: &TestDb) {
    let (store, repo) = store_with_repo(db, "acme/app").await;
    let other = store
        .create_repo(&new_repo("acme/other"))
        .await
        .expect("repo");
    let (first, _) = store
        .create_build(&new_build(repo.id, Some("abc-123")), two_stages)
        .await
        .expect("first");
    let before = snapshot(db).await;
    let called = AtomicBool::new(false);
    let result = store
        .create_build(&new_build(repo.id, Some("abc-123")), |n| {
            called.store(true, Ordering::SeqCst);
            two_stages(n)
        })
        .await;
    match result {
        Err(StoreError::DuplicateDelivery {
            delivery_id,
            build_id,
        }) => {
            assert_eq!(delivery_id, "abc-123");
            assert_eq!(build_id, first.id);
        }
        other => panic!("expected DuplicateDelivery, got {other:?}"),
    }
    assert!(!called.load(Ordering::SeqCst), "compile not called");
    assert_eq!(snapshot(db).await, before, "database unchanged");

    // Concurrent repeats of one delivery: exactly one build.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .create_build(&new_build(repo.id, Some("burst")), two_stages)
                .await
        }));
    }
    let mut created = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => created += 1,
            Err(StoreError::DuplicateDelivery { delivery_id, .. }) => {
                assert_eq!(delivery_id, "burst")
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(created, 1);

    // The same id for another repository is another delivery; the number has no gap.
    let (theirs, _) = store
        .create_build(&new_build(other.id, Some("abc-123")), two_stages)
        .await
        .expect("other repo");
    assert_eq!(theirs.number, 1);
    let (next, _) = store
        .create_build(&new_build(repo.id, Some("abc-124")), two_stages)
        .await
        .expect("next");
    assert_eq!(next.number, 3);
}

async fn create_build_for_a_missing_repository_leaves_nothing(db: &TestDb) {
    let store = db.open().await;
    let before = snapshot(db).await;
    let result = store.create_build(&new_build(4242, None), two_stages).await;
    assert!(
        matches!(result, Err(StoreError::Database(sqlx::Error::RowNotFound))),
        "{result:?}"
    );
    assert_eq!(snapshot(db).await, before);
}

// ------------------------------------------------------------------------ leases

async fn lease_has_exactly_one_winner(db: &TestDb) {
    let (store, repo_id, _build_id, stage_id) = one_build(db).await;
    let mut tasks = Vec::new();
    for runner_id in 1..=20 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .lease_stage(stage_id, runner_id, 60_000, 1_000)
                .await
                .expect("lease")
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        if let Some(stage) = task.await.expect("task") {
            winners.push(stage);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one runner gets the stage");
    let won = &winners[0];
    assert_eq!(won.id, stage_id);
    assert_eq!(won.status, Status::Running);
    assert_eq!(won.attempt, 1);
    assert_eq!(won.lease_expires, Some(60_000));
    assert_eq!(won.started, Some(1_000));
    assert!(won.runner_id.is_some());
    assert_eq!(
        store.stage(stage_id).await.expect("stage").as_ref(),
        Some(won)
    );
    assert_eq!(store.running_count(repo_id).await.expect("count"), 1);
    assert_eq!(store.running_count(repo_id + 1).await.expect("count"), 0);
    let running = store.running_stages().await.expect("running");
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].id, stage_id);
    let pending = store.pending_stages(0, 10).await.expect("pending");
    assert_eq!(pending.len(), 1);
    assert_ne!(pending[0].id, stage_id);
}

async fn lease_lifecycle(db: &TestDb) {
    let (store, _repo_id, build_id, stage_id) = one_build(db).await;
    let leased = store
        .lease_stage(stage_id, 7, 10_000, 1_000)
        .await
        .expect("lease")
        .expect("won");
    assert_eq!(leased.attempt, 1);
    assert_eq!(leased.runner_id, Some(7));
    // Leasing again is refused: it is not pending.
    assert_eq!(
        store
            .lease_stage(stage_id, 8, 10_000, 1_000)
            .await
            .expect("lease"),
        None
    );

    // Renew: only the holder, in its attempt.
    assert_eq!(
        store
            .renew_lease(stage_id, 2, 7, 20_000)
            .await
            .expect("renew"),
        None
    );
    assert_eq!(
        store
            .renew_lease(stage_id, 1, 8, 20_000)
            .await
            .expect("renew"),
        None
    );
    assert_eq!(
        store
            .renew_lease(stage_id, 1, 7, 20_000)
            .await
            .expect("renew"),
        Some(false)
    );
    assert_eq!(
        store
            .stage(stage_id)
            .await
            .expect("stage")
            .expect("exists")
            .lease_expires,
        Some(20_000)
    );

    // Expiry.
    assert!(
        store
            .expired_leases(20_000)
            .await
            .expect("expired")
            .is_empty()
    );
    let expired = store.expired_leases(20_001).await.expect("expired");
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].id, stage_id);

    // At server start every running lease gets time.
    assert_eq!(
        store.extend_running_leases(50_000).await.expect("extend"),
        1
    );
    assert!(
        store
            .expired_leases(40_000)
            .await
            .expect("expired")
            .is_empty()
    );

    // Cancel is seen by the next renew.
    assert_eq!(store.request_cancel(build_id).await.expect("cancel"), 2);
    assert_eq!(
        store
            .renew_lease(stage_id, 1, 7, 60_000)
            .await
            .expect("renew"),
        Some(true)
    );
    assert!(
        store
            .stages(build_id)
            .await
            .expect("stages")
            .iter()
            .all(|s| s.cancel_requested)
    );

    // Finish: refused for another attempt, once for the right one.
    assert!(
        !store
            .finish_stage(stage_id, Some(2), Status::Success, None, 70_000)
            .await
            .expect("finish")
    );
    assert!(
        store
            .finish_stage(stage_id, Some(1), Status::Killed, Some("cancelled"), 70_000)
            .await
            .expect("finish")
    );
    assert!(
        !store
            .finish_stage(stage_id, Some(1), Status::Success, None, 80_000)
            .await
            .expect("finish")
    );
    let finished = store.stage(stage_id).await.expect("stage").expect("exists");
    assert_eq!(finished.status, Status::Killed);
    assert_eq!(finished.error.as_deref(), Some("cancelled"));
    assert_eq!(finished.finished, Some(70_000));
    assert_eq!(finished.lease_expires, None);
    assert_eq!(finished.started, Some(1_000));
    // A lost lease after the end.
    assert_eq!(
        store
            .renew_lease(stage_id, 1, 7, 90_000)
            .await
            .expect("renew"),
        None
    );
    assert!(
        !store
            .requeue_stage(stage_id, 1, 999_999)
            .await
            .expect("requeue")
    );
    // Not cancellable any more: done stages are left alone.
    assert_eq!(store.request_cancel(build_id).await.expect("cancel"), 1);
    assert!(store.running_stages().await.expect("running").is_empty());
}

async fn requeue_resets_steps(db: &TestDb) {
    let (store, _repo_id, _build_id, stage_id) = one_build(db).await;
    store
        .lease_stage(stage_id, 3, 10_000, 1_000)
        .await
        .expect("lease")
        .expect("won");
    for (name, status, exit) in [
        ("clone", Status::Success, Some(0)),
        ("compile", Status::Running, None),
    ] {
        assert!(
            store
                .update_step(
                    stage_id,
                    name,
                    &StepUpdate {
                        status,
                        exit_code: exit,
                        error: Some("x".to_owned()),
                        started: Some(1_100),
                        finished: exit.map(|_| 1_200),
                    },
                )
                .await
                .expect("update")
        );
    }
    assert!(
        !store
            .requeue_stage(stage_id, 2, 20_000)
            .await
            .expect("wrong attempt")
    );
    // A lease renewed since it was seen expired is not taken away.
    assert!(
        !store
            .requeue_stage(stage_id, 1, 5_000)
            .await
            .expect("lease still valid")
    );
    assert_eq!(
        store
            .stage(stage_id)
            .await
            .expect("stage")
            .expect("exists")
            .status,
        Status::Running
    );
    assert!(
        store
            .requeue_stage(stage_id, 1, 20_000)
            .await
            .expect("requeue")
    );
    let stage = store.stage(stage_id).await.expect("stage").expect("exists");
    assert_eq!(stage.status, Status::Pending);
    assert_eq!((stage.runner_id, stage.lease_expires), (None, None));
    assert_eq!(stage.attempt, 1);
    for step in store.steps(stage_id).await.expect("steps") {
        assert_eq!(step.status, Status::Pending, "{}", step.name);
        assert_eq!((step.exit_code, &step.error), (None, &None));
        assert_eq!((step.started, step.finished), (None, None));
    }
    assert!(
        !store
            .requeue_stage(stage_id, 1, 20_000)
            .await
            .expect("not running")
    );
    let again = store
        .lease_stage(stage_id, 4, 30_000, 5_000)
        .await
        .expect("lease")
        .expect("won");
    assert_eq!(again.attempt, 2);
    assert_eq!(again.runner_id, Some(4));
    assert_eq!(
        again.started,
        Some(1_000),
        "started kept from the first attempt"
    );
    // The old attempt can do nothing any more.
    assert_eq!(
        store
            .renew_lease(stage_id, 1, 3, 40_000)
            .await
            .expect("renew"),
        None
    );
    assert!(
        !store
            .finish_stage(stage_id, Some(1), Status::Success, None, 6_000)
            .await
            .expect("finish")
    );
    assert!(
        store
            .finish_stage(stage_id, Some(2), Status::Success, None, 6_000)
            .await
            .expect("finish")
    );
}

async fn cancel_and_finish_without_attempt(db: &TestDb) {
    let (store, _repo_id, build_id, stage_id) = one_build(db).await;
    let stages = store.stages(build_id).await.expect("stages");
    let deploy = stages[1].id;
    // Pending → skipped without an attempt.
    assert!(
        store
            .finish_stage(deploy, None, Status::Skipped, None, 2_000)
            .await
            .expect("skip")
    );
    assert!(
        !store
            .finish_stage(deploy, None, Status::Killed, None, 3_000)
            .await
            .expect("done already")
    );
    let skipped = store.stage(deploy).await.expect("stage").expect("exists");
    assert_eq!(skipped.status, Status::Skipped);
    assert_eq!(skipped.finished, Some(2_000));
    assert_eq!(skipped.error, None);
    // Running → killed without an attempt.
    store
        .lease_stage(stage_id, 1, 10_000, 1_000)
        .await
        .expect("lease")
        .expect("won");
    let running = StepUpdate {
        status: Status::Running,
        exit_code: None,
        error: None,
        started: Some(1_500),
        finished: None,
    };
    assert!(
        store
            .update_step(stage_id, "clone", &running)
            .await
            .expect("step")
    );
    assert!(
        store
            .finish_stage(
                stage_id,
                None,
                Status::Killed,
                Some("cancelled by @bob"),
                4_000
            )
            .await
            .expect("kill")
    );
    // Its open steps were closed with it.
    let steps: Vec<(String, Status, Option<i64>)> = store
        .steps(stage_id)
        .await
        .expect("steps")
        .into_iter()
        .map(|s| (s.name, s.status, s.finished))
        .collect();
    assert_eq!(
        steps,
        [
            ("clone".to_owned(), Status::Killed, Some(4_000)),
            ("compile".to_owned(), Status::Skipped, None),
            ("test".to_owned(), Status::Skipped, None),
        ]
    );
    let killed = store.stage(stage_id).await.expect("stage").expect("exists");
    assert_eq!(killed.status, Status::Killed);
    assert_eq!(killed.error.as_deref(), Some("cancelled by @bob"));
    assert_eq!(killed.lease_expires, None);
    assert_eq!(store.request_cancel(build_id).await.expect("cancel"), 0);
}

// ------------------------------------------------------------------------ steps

async fn steps_updates(db: &TestDb) {
    let (store, _repo_id, _build_id, stage_id) = one_build(db).await;
    let started = StepUpdate {
        status: Status::Running,
        exit_code: None,
        error: None,
        started: Some(1_000),
        finished: None,
    };
    assert!(
        store
            .update_step(stage_id, "clone", &started)
            .await
            .expect("update")
    );
    assert!(
        !store
            .update_step(stage_id, "no-such-step", &started)
            .await
            .expect("update")
    );
    assert!(
        store
            .update_step(
                stage_id,
                "clone",
                &StepUpdate {
                    status: Status::Failure,
                    exit_code: Some(2),
                    error: Some("exit status 2".to_owned()),
                    started: None,
                    finished: Some(1_500),
                },
            )
            .await
            .expect("update")
    );
    // Only the status: the rest stays.
    assert!(
        store
            .update_step(
                stage_id,
                "clone",
                &StepUpdate {
                    status: Status::Success,
                    exit_code: None,
                    error: None,
                    started: None,
                    finished: None,
                },
            )
            .await
            .expect("update")
    );
    assert!(
        store
            .update_step(stage_id, "compile", &started)
            .await
            .expect("update")
    );
    let steps = store.steps(stage_id).await.expect("steps");
    let clone = &steps[0];
    assert_eq!(clone.status, Status::Success);
    assert_eq!(clone.exit_code, Some(2));
    assert_eq!(clone.error.as_deref(), Some("exit status 2"));
    assert_eq!((clone.started, clone.finished), (Some(1_000), Some(1_500)));

    store
        .finish_open_steps(stage_id, 9_000)
        .await
        .expect("finish open");
    let steps = store.steps(stage_id).await.expect("steps");
    let states: Vec<(&str, Status, Option<i64>)> = steps
        .iter()
        .map(|s| (s.name.as_str(), s.status, s.finished))
        .collect();
    assert_eq!(
        states,
        [
            ("clone", Status::Success, Some(1_500)),
            ("compile", Status::Killed, Some(9_000)),
            ("test", Status::Skipped, None),
        ]
    );
}

/// A short step's log stored with a report: written once (a resent report keeps the
/// first), one per attempt, and gone with nothing else when refused with its end.
async fn whole_step_logs_are_kept_once_per_attempt(db: &TestDb) {
    let (store, build_id, stage_id, runner, leased) = one_leased_stage(db).await;
    let log = |attempt: i64, text: &str| ReportWrite::Log {
        step: "clone".to_owned(),
        attempt,
        text: text.to_owned(),
    };
    assert_eq!(
        store.step_log(stage_id, 1, "clone").await.expect("read"),
        None
    );
    for text in ["first\n", "resent, differently\n"] {
        store
            .write_report(build_id, stage_id, &[log(1, text)])
            .await
            .expect("write a report");
    }
    store
        .write_report(build_id, stage_id, &[log(2, "attempt 2\n")])
        .await
        .expect("write a report");
    assert_eq!(
        store
            .step_log(stage_id, 1, "clone")
            .await
            .expect("read")
            .as_deref(),
        Some("first\n")
    );
    assert_eq!(
        store
            .step_log(stage_id, 2, "clone")
            .await
            .expect("read")
            .as_deref(),
        Some("attempt 2\n")
    );
    assert_eq!(
        store.step_log(stage_id, 1, "compile").await.expect("read"),
        None
    );

    // An end that is refused (not this runner's lease) writes its log nowhere.
    let refused = store
        .end_leased_stage(LeasedEnd {
            writes: vec![ReportWrite::Log {
                step: "compile".to_owned(),
                attempt: leased.attempt,
                text: "lost\n".to_owned(),
            }],
            ..plain_end(
                stage_id,
                leased.attempt,
                runner.id + 1,
                Status::Success,
                2_000,
            )
        })
        .await
        .expect("end");
    assert!(refused.is_none());
    assert_eq!(
        store.step_log(stage_id, 1, "compile").await.expect("read"),
        None
    );
}

async fn report_writes_and_leased_end(db: &TestDb) {
    let (store, build_id, stage_id, runner, leased) = one_leased_stage(db).await;
    let step = |name: &str, status: Status, started: Option<i64>, finished: Option<i64>| {
        ReportWrite::Step {
            name: name.to_owned(),
            update: StepUpdate {
                status,
                exit_code: finished.map(|_| 0),
                error: None,
                started,
                finished,
            },
        }
    };
    // Several writes, one transaction.
    store
        .write_report(
            build_id,
            stage_id,
            &[
                step("clone", Status::Running, Some(1_100), None),
                step("clone", Status::Success, None, Some(1_200)),
                ReportWrite::Artifact {
                    image: "reg.example/acme/app:1".to_owned(),
                    digest: "sha256:aa".to_owned(),
                    now: 1_250,
                },
                step("compile", Status::Running, Some(1_300), None),
            ],
        )
        .await
        .expect("write a report");
    let artifacts = store.artifacts(build_id).await.expect("artifacts");
    assert_eq!(artifacts.len(), 1);
    assert_eq!(artifacts[0].image, "reg.example/acme/app:1");

    // The end by another runner or another attempt writes nothing.
    let compile_done = [step("compile", Status::Success, None, Some(1_400))];
    for (attempt, runner_id) in [
        (leased.attempt, runner.id + 1),
        (leased.attempt + 1, runner.id),
    ] {
        let refused = store
            .end_leased_stage(LeasedEnd {
                writes: compile_done.to_vec(),
                ..plain_end(stage_id, attempt, runner_id, Status::Success, 2_000)
            })
            .await
            .expect("end");
        assert!(refused.is_none());
    }
    let stage = store
        .stage_state(stage_id)
        .await
        .expect("read")
        .expect("stage");
    assert_eq!(stage.status, Status::Running);
    assert_eq!(
        store.steps(stage_id).await.expect("steps")[1].status,
        Status::Running
    );

    // The holder's end: the last writes, the stage ended, `test` (never started) closed.
    let EndedStage {
        stage: ended,
        closed,
        next,
    } = store
        .end_leased_stage(LeasedEnd {
            writes: compile_done.to_vec(),
            ..plain_end(stage_id, leased.attempt, runner.id, Status::Success, 2_000)
        })
        .await
        .expect("end")
        .expect("the holder ends it");
    assert_eq!(next, None, "no next stage was asked for");
    assert_eq!(
        (ended.id, ended.status, ended.finished, ended.lease_expires),
        (stage_id, Status::Success, Some(2_000), None)
    );
    assert_eq!(
        closed
            .iter()
            .map(|s| (s.name.as_str(), s.status))
            .collect::<Vec<_>>(),
        [("test", Status::Skipped)]
    );
    let states: Vec<(String, Status, Option<i64>, Option<i64>)> = store
        .steps(stage_id)
        .await
        .expect("steps")
        .into_iter()
        .map(|s| (s.name, s.status, s.started, s.finished))
        .collect();
    assert_eq!(
        states,
        [
            (
                "clone".to_owned(),
                Status::Success,
                Some(1_100),
                Some(1_200)
            ),
            (
                "compile".to_owned(),
                Status::Success,
                Some(1_300),
                Some(1_400)
            ),
            ("test".to_owned(), Status::Skipped, None, None),
        ]
    );
    // Ended once: a second end is refused and changes nothing.
    let again = store
        .end_leased_stage(plain_end(
            stage_id,
            leased.attempt,
            runner.id,
            Status::Failure,
            3_000,
        ))
        .await
        .expect("end again");
    assert!(again.is_none());
    let stage = store
        .stage_state(stage_id)
        .await
        .expect("read")
        .expect("stage");
    assert_eq!(
        (stage.status, stage.finished),
        (Status::Success, Some(2_000))
    );
}

/// A new build of `repo_id` with one stage `name` asking for `labels` (none: any runner
/// may take it); the stage's id.
async fn one_stage_build(store: &Store, repo_id: i64, name: &str, labels: &[(&str, &str)]) -> i64 {
    let mut stage = new_stage(name, &["run"]);
    stage.labels = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let (_, stages) = store
        .create_build(&new_build(repo_id, None), |_| CompiledBuild {
            status: Status::Pending,
            error: None,
            context: json!({}),
            stages: vec![stage],
        })
        .await
        .expect("build");
    stages[0].id
}

/// The end of `stage_id` in `attempt` by `runner_id` with `status` at `now`: no error, no
/// last writes, no next stage asked for.
fn plain_end(stage_id: i64, attempt: i64, runner_id: i64, status: Status, now: i64) -> LeasedEnd {
    LeasedEnd {
        stage_id,
        attempt,
        runner_id,
        status,
        error: None,
        writes: Vec::new(),
        now,
        next: None,
    }
}

/// [`plain_end`] asking for the next stage for `runner`, leased until `lease_expires`.
fn end_asking_next(
    stage_id: i64,
    runner: &Runner,
    status: Status,
    now: i64,
    lease_expires: i64,
) -> LeasedEnd {
    LeasedEnd {
        next: Some(HeadLease {
            labels: runner.labels.clone(),
            lease_expires,
        }),
        ..plain_end(stage_id, 1, runner.id, status, now)
    }
}

/// `runner` is given nothing by [`Store::lease_head`] while `stage` heads the queue; then
/// `stage` is closed with `status`, so that the next one comes to the head.
async fn head_refused_then_close(store: &Store, runner: &Runner, stage: i64, status: Status) {
    assert_eq!(
        store
            .lease_head(runner.id, &runner.labels, 60_000, 1_000)
            .await
            .expect("lease"),
        None,
        "stage {stage} heads the queue: not one this runner takes at once"
    );
    assert!(
        store
            .finish_stage(stage, None, status, None, 1_000)
            .await
            .expect("close")
    );
}

async fn lease_head_takes_only_a_head_any_runner_may_run(db: &TestDb) {
    let (store, repo) = store_with_repo(db, "acme/app").await;
    let limited = store
        .create_repo(&NewRepo {
            max_running: 1,
            ..new_repo("acme/limited")
        })
        .await
        .expect("repo");
    let runner = store
        .register_runner("r1", &BTreeMap::new(), 1, "test", "", 100)
        .await
        .expect("runner");
    assert_eq!(
        store
            .lease_head(runner.id, &runner.labels, 60_000, 1_000)
            .await
            .expect("lease"),
        None,
        "an empty queue"
    );

    // The head asks for a label: not taken here, and nothing behind it either (oldest
    // first is for the full look through the queue to keep).
    let labelled = one_stage_build(&store, repo.id, "arm", &[("arch", "arm64")]).await;
    let simple = one_stage_build(&store, repo.id, "simple", &[]).await;
    head_refused_then_close(&store, &runner, labelled, Status::Skipped).await;

    // A simple head is leased whole, like `lease_stage` does.
    let leased = store
        .lease_head(runner.id, &runner.labels, 60_000, 1_000)
        .await
        .expect("lease")
        .expect("the simple head is leased");
    assert_eq!(
        (leased.id, leased.status, leased.attempt, leased.runner_id),
        (simple, Status::Running, 1, Some(runner.id))
    );
    assert_eq!(
        (leased.lease_expires, leased.started),
        (Some(60_000), Some(1_000))
    );
    assert_eq!(leased.plan["name"], "simple", "the plan comes with it");

    // Labels: a stage asking for some of a runner's labels is that runner's, not another's.
    let amd64 = store
        .register_runner(
            "r2",
            &BTreeMap::from([
                ("arch".to_owned(), "amd64".to_owned()),
                ("os".to_owned(), "linux".to_owned()),
                ("zone".to_owned(), "b".to_owned()),
            ]),
            1,
            "test",
            "",
            100,
        )
        .await
        .expect("runner");
    let linux = one_stage_build(&store, repo.id, "linux", &[("os", "linux"), ("zone", "b")]).await;
    assert_eq!(
        store
            .lease_head(runner.id, &runner.labels, 60_000, 1_000)
            .await
            .expect("lease"),
        None
    );
    let leased = store
        .lease_head(amd64.id, &amd64.labels, 60_000, 1_000)
        .await
        .expect("lease")
        .expect("the runner with those labels gets it");
    assert_eq!((leased.id, leased.runner_id), (linux, Some(amd64.id)));

    // Heads of a repository with a concurrency limit, or with a cancel asked for, are the
    // full look's to decide.
    let in_limited = one_stage_build(&store, limited.id, "limited", &[]).await;
    head_refused_then_close(&store, &runner, in_limited, Status::Skipped).await;
    let cancelled = one_stage_build(&store, repo.id, "cancelled", &[]).await;
    let cancelled_build = store
        .stage_state(cancelled)
        .await
        .expect("read")
        .expect("stage")
        .build_id;
    assert_eq!(
        store.request_cancel(cancelled_build).await.expect("cancel"),
        1
    );
    head_refused_then_close(&store, &runner, cancelled, Status::Killed).await;

    // Ending a stage with the next one asked for: the next head comes in the same
    // transaction, to the same runner.
    let after = one_stage_build(&store, repo.id, "after", &[]).await;
    let ended = store
        .end_leased_stage(end_asking_next(
            simple,
            &runner,
            Status::Success,
            2_000,
            70_000,
        ))
        .await
        .expect("end")
        .expect("the holder ends it");
    assert_eq!(ended.stage.status, Status::Success);
    let next = ended.next.expect("the next head is leased with the end");
    assert_eq!(
        (next.id, next.status, next.runner_id, next.lease_expires),
        (after, Status::Running, Some(runner.id), Some(70_000))
    );
    // Nothing left: an end asking for more gets the end alone.
    let ended = store
        .end_leased_stage(end_asking_next(
            after,
            &runner,
            Status::Failure,
            3_000,
            80_000,
        ))
        .await
        .expect("end")
        .expect("the holder ends it");
    assert_eq!((ended.stage.status, ended.next), (Status::Failure, None));
    // A refused end leases nothing either.
    let again = one_stage_build(&store, repo.id, "again", &[]).await;
    let refused = store
        .end_leased_stage(end_asking_next(
            after,
            &runner,
            Status::Success,
            4_000,
            90_000,
        ))
        .await
        .expect("end");
    assert!(refused.is_none());
    let again = store
        .stage_state(again)
        .await
        .expect("read")
        .expect("stage");
    assert_eq!((again.status, again.runner_id), (Status::Pending, None));
}

/// Eight runners end their stages at once, each asking for the next; two more ends are
/// refused. On SQLite they share commits (the store's group commit): each must still be
/// applied exactly as alone.
async fn ends_arriving_together_are_each_applied_as_alone(db: &TestDb) {
    let (store, repo) = store_with_repo(db, "acme/app").await;
    let mut stages = Vec::new();
    for i in 0..16 {
        stages.push(one_stage_build(&store, repo.id, &format!("s{i}"), &[]).await);
    }
    let mut runners = Vec::new();
    for (i, stage_id) in stages[..8].iter().enumerate() {
        let runner = store
            .register_runner(&format!("r{i}"), &BTreeMap::new(), 1, "test", "", 100)
            .await
            .expect("runner");
        let leased = store
            .lease_head(runner.id, &runner.labels, 60_000, 1_000)
            .await
            .expect("lease")
            .expect("leased");
        assert_eq!(leased.id, *stage_id, "oldest first");
        runners.push(runner);
    }
    let mut ends = Vec::new();
    let mut all = Vec::new();
    for (i, runner) in runners.iter().enumerate() {
        all.push(end_asking_next(
            stages[i],
            runner,
            Status::Success,
            2_000,
            70_000,
        ));
    }
    // Refused: another attempt, and another runner.
    for (attempt, runner_id) in [(2, runners[0].id), (1, runners[1].id)] {
        all.push(LeasedEnd {
            error: Some("refused".to_owned()),
            ..plain_end(stages[0], attempt, runner_id, Status::Failure, 2_000)
        });
    }
    for end in all {
        let store = store.clone();
        ends.push(tokio::spawn(
            async move { store.end_leased_stage(end).await },
        ));
    }
    let mut next_ids = Vec::new();
    for (i, end) in ends.into_iter().enumerate() {
        let ended = end.await.expect("joined").expect("end");
        if i >= 8 {
            assert_eq!(ended, None, "a refused end");
            continue;
        }
        let ended = ended.expect("the holder ends it");
        assert_eq!(
            (ended.stage.id, ended.stage.status),
            (stages[i], Status::Success)
        );
        let next = ended.next.expect("a next stage for every runner");
        assert_eq!(next.runner_id, Some(runners[i].id));
        next_ids.push(next.id);
    }
    next_ids.sort();
    assert_eq!(next_ids, stages[8..], "each next stage leased once");
    for id in &stages[..8] {
        let stage = store.stage_state(*id).await.expect("read").expect("stage");
        assert_eq!((stage.status, stage.error), (Status::Success, None));
    }
}

// ------------------------------------------------------------------------ the rest

async fn secrets(db: &TestDb) {
    let (store, repo) = store_with_repo(db, "acme/app").await;
    let other = store
        .create_repo(&new_repo("acme/other"))
        .await
        .expect("repo");
    let token = store
        .put_secret(repo.id, "token", "Y2lwaGVy", false, 1_000)
        .await
        .expect("put");
    assert_eq!(token.repo_id, repo.id);
    assert_eq!(token.name, "token");
    assert_eq!(token.ciphertext, "Y2lwaGVy");
    assert!(!token.allow_pull_request);
    assert_eq!((token.created, token.updated), (1_000, 1_000));
    store
        .put_secret(repo.id, "aws_key", "a2V5", true, 1_100)
        .await
        .expect("put");
    store
        .put_secret(other.id, "token", "b3RoZXI=", false, 1_200)
        .await
        .expect("put");
    let replaced = store
        .put_secret(repo.id, "token", "bmV3", true, 2_000)
        .await
        .expect("replace");
    assert_eq!(replaced.id, token.id);
    assert_eq!(replaced.ciphertext, "bmV3");
    assert!(replaced.allow_pull_request);
    assert_eq!((replaced.created, replaced.updated), (1_000, 2_000));

    let listed = store.secrets(repo.id).await.expect("secrets");
    let names: Vec<&str> = listed.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["aws_key", "token"]);
    assert_eq!(listed[1], replaced);
    assert!(store.delete_secret(repo.id, "token").await.expect("delete"));
    assert!(!store.delete_secret(repo.id, "token").await.expect("delete"));
    assert_eq!(store.secrets(repo.id).await.expect("secrets").len(), 1);
    assert_eq!(store.secrets(other.id).await.expect("secrets").len(), 1);
}

async fn runners(db: &TestDb) {
    let store = db.open().await;
    assert!(store.runners().await.expect("runners").is_empty());
    let labels = BTreeMap::from([
        ("arch".to_owned(), "amd64".to_owned()),
        ("os".to_owned(), "linux".to_owned()),
    ]);
    let zulu = store
        .register_runner("zulu", &labels, 2, "0.1.0", "h1", 1_000)
        .await
        .expect("register");
    assert_eq!(zulu.name, "zulu");
    assert_eq!(zulu.labels, labels);
    assert_eq!(zulu.capacity, 2);
    assert_eq!(zulu.version, "0.1.0");
    assert_eq!((zulu.last_seen, zulu.created), (1_000, 1_000));
    assert_eq!(zulu.credential_hash, "h1");
    let alpha = store
        .register_runner("alpha", &BTreeMap::new(), 1, "0.1.0", "h2", 1_100)
        .await
        .expect("register");
    assert!(alpha.labels.is_empty());

    let new_labels = BTreeMap::from([("gpu".to_owned(), "yes".to_owned())]);
    let again = store
        .register_runner("zulu", &new_labels, 4, "0.2.0", "h3", 5_000)
        .await
        .expect("re-register");
    assert_eq!(again.id, zulu.id, "same name keeps the id");
    assert_eq!(again.labels, new_labels);
    assert_eq!((again.capacity, again.version.as_str()), (4, "0.2.0"));
    assert_eq!((again.last_seen, again.created), (5_000, 1_000));
    assert_eq!(
        again.credential_hash, "h3",
        "registering again replaces the credential"
    );

    store.touch_runner(alpha.id, 9_000).await.expect("touch");
    let touched = store
        .runner(alpha.id)
        .await
        .expect("runner")
        .expect("exists");
    assert_eq!(touched.last_seen, 9_000);
    assert_eq!(
        store
            .runner(alpha.id + zulu.id + 100)
            .await
            .expect("runner"),
        None
    );
    let names: Vec<String> = store
        .runners()
        .await
        .expect("runners")
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["alpha", "zulu"]);
}

async fn tokens(db: &TestDb) {
    let store = db.open().await;
    let admin = store
        .create_token("admin", &"a".repeat(64), "admin", 1_000)
        .await
        .expect("token");
    assert_eq!(admin.name, "admin");
    assert_eq!(admin.hash, "a".repeat(64));
    assert_eq!(admin.scope, "admin");
    assert_eq!(admin.created, 1_000);
    let runner = store
        .create_token("runner-1", &"b".repeat(64), "runner", 2_000)
        .await
        .expect("token");
    match store
        .create_token("dup", &"a".repeat(64), "read", 3_000)
        .await
    {
        Err(StoreError::Conflict { what, name }) => {
            assert_eq!((what, name.as_str()), ("token", "dup"))
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        store.token_by_hash(&"b".repeat(64)).await.expect("by hash"),
        Some(runner.clone())
    );
    assert_eq!(store.token_by_hash("c").await.expect("by hash"), None);
    assert_eq!(
        store.tokens().await.expect("tokens"),
        [admin.clone(), runner.clone()]
    );
    assert!(store.delete_token(admin.id).await.expect("delete"));
    assert!(!store.delete_token(admin.id).await.expect("delete"));
    assert_eq!(store.tokens().await.expect("tokens"), [runner]);
    assert_eq!(
        store.token_by_hash(&"a".repeat(64)).await.expect("by hash"),
        None
    );
}

async fn artifacts_and_stats(db: &TestDb) {
    let (store, _repo_id, build_id, stage_id) = one_build(db).await;
    let first = store
        .add_artifact(build_id, "reg.example/acme/app:1", "sha256:aa", 1_000)
        .await
        .expect("artifact");
    assert_eq!(first.build_id, build_id);
    assert_eq!(first.image, "reg.example/acme/app:1");
    assert_eq!(first.digest, "sha256:aa");
    assert_eq!(first.created, 1_000);
    let second = store
        .add_artifact(build_id, "reg.example/acme/app:latest", "sha256:aa", 1_001)
        .await
        .expect("artifact");
    assert_eq!(
        store.artifacts(build_id).await.expect("artifacts"),
        [first, second]
    );
    assert!(
        store
            .artifacts(build_id + 1)
            .await
            .expect("artifacts")
            .is_empty()
    );

    let stats = store.queue_stats().await.expect("stats");
    assert_eq!(
        (
            stats.pending_stages,
            stats.running_stages,
            stats.builds_total,
            stats.runners
        ),
        (2, 0, 1, 0)
    );
    store
        .register_runner("r", &BTreeMap::new(), 1, "0", "", 1)
        .await
        .expect("runner");
    store
        .lease_stage(stage_id, 1, 10_000, 1_000)
        .await
        .expect("lease")
        .expect("won");
    let stats = store.queue_stats().await.expect("stats");
    assert_eq!(
        (
            stats.pending_stages,
            stats.running_stages,
            stats.builds_total,
            stats.runners
        ),
        (1, 1, 1, 1)
    );
}

async fn reopen_runs_no_migration_twice(db: &TestDb) {
    let store = db.open().await;
    let applied = store.applied_migrations().await.expect("migrations");
    assert!(!applied.is_empty());
    assert!(applied.iter().any(|(name, _)| name == "0001_init"));
    let repo = store
        .create_repo(&new_repo("acme/app"))
        .await
        .expect("repo");
    drop(store);
    tokio::time::sleep(Duration::from_millis(5)).await;
    // Opened again, twice at once: nothing is applied again, nothing is lost.
    let (a, b) = tokio::join!(Store::open(&db.url), Store::open(&db.url));
    let (a, b) = (a.expect("reopen"), b.expect("reopen"));
    assert_eq!(a.applied_migrations().await.expect("migrations"), applied);
    assert_eq!(b.applied_migrations().await.expect("migrations"), applied);
    assert_eq!(a.repo(repo.id).await.expect("repo"), Some(repo));
    let mut conn = db.raw().await;
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM schema_migrations")
        .fetch_one(&mut conn)
        .await
        .expect("count");
    assert_eq!(count, applied.len() as i64);
}

async fn unknown_status_is_corrupt(db: &TestDb) {
    let (store, _repo_id, build_id, stage_id) = one_build(db).await;
    let mut conn = db.raw().await;
    sqlx::query("UPDATE builds SET status = 'exploded' WHERE id = $1")
        .bind(build_id)
        .execute(&mut conn)
        .await
        .expect("update");
    sqlx::query("UPDATE stages SET labels = 'not json' WHERE id = $1")
        .bind(stage_id)
        .execute(&mut conn)
        .await
        .expect("update");
    match store.build(build_id).await {
        Err(StoreError::Corrupt { what, message }) => {
            assert!(what.contains("builds.status"), "{what}");
            assert!(message.contains("exploded"), "{message}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(matches!(
        store.stage(stage_id).await,
        Err(StoreError::Corrupt { .. })
    ));
}

// ------------------------------------------------------------------------ engine-independent

#[tokio::test]
async fn open_refuses_unknown_schemes_naming_the_url() {
    let err = Store::open("mysql://root:hunter2@db.example/slipway")
        .await
        .expect_err("mysql is not supported");
    let text = err.to_string();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(
        text.contains("mysql://root:***@db.example/slipway"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "password hidden: {text}");

    let err = Store::open("slipway.db").await.expect_err("no scheme");
    assert!(err.to_string().contains("`slipway.db`"), "{err}");
}

#[tokio::test]
async fn open_reports_unreachable_databases_naming_the_url() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!(
        "sqlite://{}",
        dir.path().join("missing-dir/slipway.db").display()
    );
    let err = Store::open(&url)
        .await
        .expect_err("parent directory missing");
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains(&url), "{err}");

    // Port 1: nothing listens there.
    let err = Store::open("postgres://slipway:pw@127.0.0.1:1/slipway")
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("postgres://slipway:***@127.0.0.1:1/slipway"),
        "{err}"
    );
}

#[tokio::test]
async fn sqlite_creates_the_file_and_uses_wal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("new.db");
    let url = format!("sqlite://{}", path.display());
    let store = Store::open(&url).await.expect("open");
    assert_eq!(store.backend(), Backend::Sqlite);
    assert!(path.exists());
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&url).await.expect("raw");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .expect("journal mode");
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn sqlite_in_memory_works() {
    let store = Store::open("sqlite::memory:").await.expect("open");
    let repo = store.create_repo(&new_repo("mem/ory")).await.expect("repo");
    let store2 = store.clone();
    let (build, _) = store2
        .create_build(&new_build(repo.id, None), two_stages)
        .await
        .expect("build");
    assert_eq!(store.build(build.id).await.expect("build"), Some(build));
}

#[test]
fn test_database_urls() {
    assert_eq!(
        with_database("postgres://u:p@h:5432/postgres", "t1"),
        "postgres://u:p@h:5432/t1"
    );
    assert_eq!(
        with_database("postgres://u:p@h/postgres?sslmode=disable", "t1"),
        "postgres://u:p@h/t1?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h", "t1"), "postgres://h/t1");
}

fn channel_row(name: &str) -> ChannelRow {
    ChannelRow {
        id: 0,
        name: name.to_owned(),
        kind: "webhook".to_owned(),
        api_base: None,
        settings: BTreeMap::from([("method".to_owned(), "POST".to_owned())]),
        secrets: "sealed".to_owned(),
        secret_names: Vec::new(),
        template: Some("{{ build.number }}".to_owned()),
        repo: Some("acme/*".to_owned()),
        branch: None,
        environment: None,
        events: vec!["build.failure".to_owned()],
        created: 5,
    }
}

fn delivery(channel_id: i64, key: &str) -> NewDelivery {
    NewDelivery {
        channel_id,
        dedup_key: key.to_owned(),
        event: "build.failure".to_owned(),
        repo: "acme/app".to_owned(),
        build_number: Some(1),
        title: "acme/app #1 failure".to_owned(),
        message: "{}".to_owned(),
        template_error: None,
    }
}

async fn notifications_outbox_deliveries_and_attempts(db: &TestDb) {
    let (store, repo) = store_with_repo(db, "acme/app").await;
    let channel = store
        .add_channel(&channel_row("hook"))
        .await
        .expect("channel");
    assert_eq!(channel.settings["method"], "POST");
    assert_eq!(channel.events, ["build.failure"]);
    assert!(matches!(
        store.add_channel(&channel_row("hook")).await,
        Err(StoreError::Conflict {
            what: "channel",
            ..
        })
    ));
    let other = store
        .add_channel(&channel_row("other"))
        .await
        .expect("other");

    // Finishing a build leaves one outbox row, in the same transaction; finishing it again
    // changes nothing.
    let (build, _) = store
        .create_build(&new_build(repo.id, None), two_stages)
        .await
        .expect("build");
    assert!(store.notify_outbox(10).await.expect("outbox").is_empty());
    assert!(
        store
            .finish_build(build.id, Status::Failure, 100)
            .await
            .expect("finish")
    );
    assert!(
        !store
            .finish_build(build.id, Status::Success, 101)
            .await
            .expect("again")
    );
    let outbox = store.notify_outbox(10).await.expect("outbox");
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].build_id, Some(build.id));
    // A build that is over as it is created is owed one too.
    let (broken, _) = store
        .create_build(&new_build(repo.id, None), |_| CompiledBuild {
            status: Status::Error,
            error: Some("bad".to_owned()),
            context: json!({}),
            stages: Vec::new(),
        })
        .await
        .expect("broken");
    let outbox = store.notify_outbox(10).await.expect("outbox");
    assert_eq!(
        outbox.iter().map(|o| o.build_id).collect::<Vec<_>>(),
        [Some(build.id), Some(broken.id)]
    );
    // A deployment's event rides in the same outbox.
    let notice = DeployNotice {
        environment: "production".to_owned(),
        stack: "shop".to_owned(),
        revision: 7,
        status: "rolled_back".to_owned(),
        url: "https://shop.example.com".to_owned(),
        images: vec!["reg/shop@sha256:ab".to_owned()],
        repo: Some("acme/app".to_owned()),
        build_number: Some(1),
    };
    let deploy_row = store.notify_deploy(&notice).await.expect("deploy notice");
    let outbox = store.notify_outbox(10).await.expect("outbox");
    assert_eq!(outbox.len(), 3);
    assert_eq!((outbox[2].id, outbox[2].build_id), (deploy_row, None));
    assert_eq!(outbox[2].deploy.as_ref(), Some(&notice));

    // The fan-out inserts each delivery once by its key and removes the row.
    let woken = store
        .fan_out(
            outbox[0].id,
            &[delivery(channel.id, "k1"), delivery(other.id, "k2")],
        )
        .await
        .expect("fan out");
    assert_eq!(woken, [channel.id, other.id]);
    let again = store
        .fan_out(outbox[0].id, &[delivery(channel.id, "k1")])
        .await
        .expect("fan out again");
    assert!(again.is_empty(), "a key already there adds nothing");
    assert_eq!(store.notify_outbox(10).await.expect("outbox").len(), 2);

    let now = slipway_server::now_ms() + 1_000;
    let due = store
        .due_deliveries(channel.id, now, 10)
        .await
        .expect("due");
    assert_eq!(due.len(), 1);
    assert_eq!(
        (due[0].channel.as_str(), due[0].status.as_str()),
        ("hook", "pending")
    );
    // A failed attempt with a retry: pending, due later.
    let retry = NewAttempt {
        number: 1,
        at: now,
        latency_ms: 7,
        http_status: Some(500),
        ok: false,
        answer: "HTTP 500".to_owned(),
        merged: 1,
        status: "pending",
        next_at: now + 500,
    };
    store
        .record_attempt(&[due[0].id], &retry)
        .await
        .expect("record");
    assert!(
        store
            .due_deliveries(channel.id, now, 10)
            .await
            .expect("due")
            .is_empty()
    );
    assert_eq!(
        store.next_due(channel.id).await.expect("next"),
        Some(now + 500)
    );
    let delivered = NewAttempt {
        number: 2,
        at: now + 500,
        http_status: Some(200),
        ok: true,
        answer: "ok".to_owned(),
        status: "delivered",
        next_at: now + 500,
        ..retry
    };
    store
        .record_attempt(&[due[0].id], &delivered)
        .await
        .expect("record");
    assert_eq!(store.next_due(channel.id).await.expect("next"), None);
    let log = store.deliveries(Some(channel.id), 10).await.expect("log");
    assert_eq!(log.len(), 1);
    assert_eq!((log[0].status.as_str(), log[0].attempts), ("delivered", 2));
    assert_eq!(log[0].finished, Some(now + 507));
    assert_eq!(log[0].answer.as_deref(), Some("ok"));
    let attempts = store.attempts(log[0].id).await.expect("attempts");
    assert_eq!(
        attempts
            .iter()
            .map(|a| (a.number, a.http_status, a.ok))
            .collect::<Vec<_>>(),
        [(1, Some(500), false), (2, Some(200), true)]
    );
    assert_eq!(store.deliveries(None, 10).await.expect("all").len(), 2);
    let both = store
        .attempts_of(&[log[0].id, log[0].id + 1000])
        .await
        .expect("attempts of many");
    assert_eq!(
        both[&log[0].id], attempts,
        "the same attempts as one by one"
    );
    assert!(both[&(log[0].id + 1000)].is_empty());

    // The previous outcome of the branch, for fixed and broken.
    assert_eq!(
        store
            .previous_outcome(repo.id, "main", broken.number + 1)
            .await
            .expect("previous")
            .as_deref(),
        Some("error")
    );
    assert_eq!(
        store
            .previous_outcome(repo.id, "main", 1)
            .await
            .expect("none"),
        None
    );

    // Deleting a channel deletes its deliveries and their attempts.
    assert!(store.delete_channel(channel.id).await.expect("delete"));
    assert!(
        store
            .deliveries(Some(channel.id), 10)
            .await
            .expect("log")
            .is_empty()
    );
    assert!(
        store
            .attempts(log[0].id)
            .await
            .expect("attempts")
            .is_empty()
    );
    assert_eq!(store.channels().await.expect("channels").len(), 1);
    assert!(
        !store
            .delete_channel(channel.id)
            .await
            .expect("delete again")
    );
}

fn revision_of(image: &str, cause: &str) -> NewRevision {
    NewRevision {
        compose: "services:\n  web:\n    image: app\n".to_owned(),
        rancher: None,
        vars: BTreeMap::from([("TAG".to_owned(), "v1".to_owned())]),
        images: BTreeMap::from([("web".to_owned(), image.to_owned())]),
        refs: BTreeMap::from([("web".to_owned(), "app:v1".to_owned())]),
        cause: cause.to_owned(),
        build_id: None,
    }
}

async fn environments_stacks_and_revisions(db: &TestDb) {
    let store = db.open().await;
    let vars = BTreeMap::from([("REPLICAS".to_owned(), "2".to_owned())]);
    let prod = store
        .add_env("production", Some("example.com"), &vars)
        .await
        .expect("env");
    assert_eq!(prod.vars["REPLICAS"], "2");
    assert!(matches!(
        store.add_env("production", None, &BTreeMap::new()).await,
        Err(StoreError::Conflict {
            what: "environment",
            ..
        })
    ));
    store
        .add_env("qa", None, &BTreeMap::new())
        .await
        .expect("qa");
    assert_eq!(
        store
            .envs()
            .await
            .expect("envs")
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>(),
        ["production", "qa"]
    );
    store
        .put_env_secret(prod.id, "DB_PASSWORD", "sealed-1")
        .await
        .expect("secret");
    store
        .put_env_secret(prod.id, "DB_PASSWORD", "sealed-2")
        .await
        .expect("replace");
    let secrets = store.env_secrets(prod.id).await.expect("secrets");
    assert_eq!(secrets.len(), 1);
    assert_eq!(secrets[0].ciphertext, "sealed-2");

    let shop = store.ensure_stack(prod.id, "shop").await.expect("stack");
    assert_eq!(
        store.ensure_stack(prod.id, "shop").await.expect("again").id,
        shop.id
    );
    assert_eq!((shop.env.as_str(), shop.current), ("production", None));
    // Revision numbers from 1 without gaps, also when deploys race.
    let (ra, rb) = (
        revision_of("app@sha256:aa", "user:admin"),
        revision_of("app@sha256:bb", "build:acme/app#2"),
    );
    let (a, b) = tokio::join!(
        store.new_revision(shop.id, &ra),
        store.new_revision(shop.id, &rb)
    );
    let mut numbers = vec![a.expect("a").number, b.expect("b").number];
    numbers.sort();
    assert_eq!(numbers, [1, 2]);
    let first = store
        .revision(shop.id, 1)
        .await
        .expect("r1")
        .expect("there");
    assert_eq!(first.status, "pending");
    store
        .set_revision_status(first.id, "rolling", None, None)
        .await
        .expect("rolling");
    store
        .record_step(
            first.id,
            "batch_started",
            &json!({"service": "web", "batch": 1}),
        )
        .await
        .expect("step");
    store
        .record_step(first.id, "healthy", &json!({"container": "c1"}))
        .await
        .expect("step");
    let steps = store.rollout_steps(first.id).await.expect("steps");
    assert_eq!(
        steps.iter().map(|s| s.kind.as_str()).collect::<Vec<_>>(),
        ["batch_started", "healthy"]
    );
    assert_eq!(steps[0].detail["batch"], 1);
    assert_eq!(
        store
            .unfinished_revisions()
            .await
            .expect("unfinished")
            .len(),
        2
    );

    // Succeeding makes it current and tells the notifications in the same write.
    let notice = DeployNotice {
        environment: "production".to_owned(),
        stack: "shop".to_owned(),
        revision: 1,
        status: "succeeded".to_owned(),
        url: String::new(),
        images: vec!["app@sha256:aa".to_owned()],
        repo: None,
        build_number: None,
    };
    store
        .set_revision_status(first.id, "succeeded", Some("2 of 2 healthy"), Some(&notice))
        .await
        .expect("succeeded");
    let shop = store
        .stack(prod.id, "shop")
        .await
        .expect("stack")
        .expect("there");
    assert_eq!(shop.current, Some(1));
    let outbox = store.notify_outbox(10).await.expect("outbox");
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].deploy.as_ref(), Some(&notice));
    let second = store
        .revision(shop.id, 2)
        .await
        .expect("r2")
        .expect("there");
    store
        .set_revision_status(
            second.id,
            "rolled_back",
            Some("web never became healthy"),
            None,
        )
        .await
        .expect("rolled back");
    let shop = store
        .stack(prod.id, "shop")
        .await
        .expect("stack")
        .expect("there");
    assert_eq!(
        shop.current,
        Some(1),
        "a revision that failed never becomes current"
    );
    let history = store.revisions(shop.id, 10).await.expect("history");
    assert_eq!(
        history
            .iter()
            .map(|r| (r.number, r.status.as_str()))
            .collect::<Vec<_>>(),
        [(2, "rolled_back"), (1, "succeeded")]
    );
    assert_eq!(
        history[0].message.as_deref(),
        Some("web never became healthy")
    );
    assert!(history[0].finished.is_some());
    assert!(
        store
            .unfinished_revisions()
            .await
            .expect("unfinished")
            .is_empty()
    );

    // A build's page lists the revisions it triggered, newest first.
    let mut from_build = revision_of("app@sha256:cc", "build:acme/app#7");
    from_build.build_id = Some(4242);
    let r3 = store
        .new_revision(shop.id, &from_build)
        .await
        .expect("revision of a build");
    let r4 = store
        .new_revision(shop.id, &from_build)
        .await
        .expect("again");
    let of_build = store.revisions_of_build(4242).await.expect("of build");
    assert_eq!(
        of_build
            .iter()
            .map(|d| (
                d.env.as_str(),
                d.stack.as_str(),
                d.number,
                d.status.as_str()
            ))
            .collect::<Vec<_>>(),
        [
            ("production", "shop", r4.number, "pending"),
            ("production", "shop", r3.number, "pending")
        ]
    );
    assert!(
        store
            .revisions_of_build(4243)
            .await
            .expect("none")
            .is_empty()
    );

    // The newest revisions' images are the registry's roots.
    for i in 5..=14 {
        store
            .new_revision(
                shop.id,
                &revision_of(&format!("app@sha256:{i:02}"), "user:admin"),
            )
            .await
            .expect("revision");
    }
    let kept = store.kept_images(10).await.expect("kept");
    assert_eq!(kept.len(), 10, "{kept:?}");
    assert!(kept.contains(&"app@sha256:05".to_owned()));
    assert!(!kept.contains(&"app@sha256:aa".to_owned()));

    assert!(matches!(
        store.delete_env(prod.id, "production").await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(store.delete_stack(shop.id).await.expect("delete stack"));
    assert!(
        store
            .delete_env(prod.id, "production")
            .await
            .expect("delete env")
    );
    assert!(
        store
            .env_by_name("production")
            .await
            .expect("env")
            .is_none()
    );
}
