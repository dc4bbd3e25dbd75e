//! Garbage collection and retention against a live registry.

use std::path::Path;
use std::time::{Duration, SystemTime};

use reqwest::Method as M;
use reqwest::StatusCode;
use slipway_registry::{Digest, GcOptions, RepoPattern, RetentionRule};

use crate::api::Api;

/// Sets the modification time of every file under `dir` to `age` ago.
fn age_files(dir: &Path, age: Duration) {
    let when = SystemTime::now() - age;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            age_files(&path, age);
        } else {
            std::fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(when))
                .expect("set mtime");
        }
    }
}

/// Rewrites `pushed_at` of every manifest record of `repo` to `age` ago.
fn age_manifests(root: &Path, repo: &str, age: Duration) {
    let when = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        - age.as_secs();
    let dir = root
        .join("repositories")
        .join(repo)
        .join("_manifests/revisions/sha256");
    for entry in std::fs::read_dir(dir).expect("revisions") {
        let path = entry.expect("entry").path();
        let mut meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        meta["pushed_at"] = serde_json::json!(when);
        std::fs::write(&path, serde_json::to_vec(&meta).expect("json")).expect("write");
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn dry_run_lists_and_a_run_frees_only_unreferenced_old_blobs() {
    let api = Api::new();
    let root = api.server.root();
    let (manifest, _) = api.push_image("gc/app", "v1", "kept");
    let orphan = api.push_blob("gc/app", b"nobody refers to me");
    age_files(&root.join("blobs"), Duration::from_secs(7200));
    let fresh = api.push_blob("gc/app", b"just pushed, manifest still to come");

    let rt = runtime();
    let dry = rt
        .block_on(api.server.registry.collect_garbage(GcOptions {
            dry_run: true,
            ..GcOptions::default()
        }))
        .expect("dry run");
    assert!(dry.dry_run);
    let listed: Vec<_> = dry.blobs.iter().map(|(d, _)| d.clone()).collect();
    assert_eq!(listed, vec![orphan.clone()]);
    assert_eq!(dry.freed_bytes, b"nobody refers to me".len() as u64);
    assert!(
        api.server.registry.store().blob_path(&orphan).exists(),
        "dry run deleted"
    );

    let real = rt
        .block_on(api.server.registry.collect_garbage(GcOptions::default()))
        .expect("gc");
    assert_eq!(real.blobs, dry.blobs);
    let head = api.send(api.req(M::HEAD, &format!("/v2/gc/app/blobs/{orphan}")));
    assert_eq!(head.status(), StatusCode::NOT_FOUND);
    // Young blob and everything the tagged image needs are still there.
    let head = api.send(api.req(M::HEAD, &format!("/v2/gc/app/blobs/{fresh}")));
    assert_eq!(head.status(), StatusCode::OK);
    let get = api.send(api.req(M::GET, "/v2/gc/app/manifests/v1"));
    assert_eq!(get.status(), StatusCode::OK);
    let body: serde_json::Value = get.json().expect("json");
    for blob in [&body["config"], &body["layers"][0]] {
        let digest = blob["digest"].as_str().expect("digest");
        let head = api.send(api.req(M::HEAD, &format!("/v2/gc/app/blobs/{digest}")));
        assert_eq!(
            head.status(),
            StatusCode::OK,
            "{digest} of the kept image was deleted"
        );
    }
    let again = api.send(api.req(M::HEAD, &format!("/v2/gc/app/manifests/{manifest}")));
    assert_eq!(again.status(), StatusCode::OK);
}

#[test]
fn retention_keeps_the_last_tags_and_drops_old_untagged_manifests() {
    let api = Api::new();
    let root = api.server.root();
    let repo = "ret/app";
    let mut digests = Vec::new();
    for i in 1..=5 {
        let (d, _) = api.push_image(repo, &format!("pr-{i}"), &format!("seed-{i}"));
        digests.push(d);
    }
    let (latest, _) = api.push_image(repo, "latest", "seed-latest");
    // Tags pushed in order, one minute apart; everything else is old.
    let tags = root.join("repositories").join(repo).join("_manifests/tags");
    for i in 1..=5u64 {
        let when = SystemTime::now() - Duration::from_secs(600 - i * 60);
        std::fs::File::options()
            .write(true)
            .open(tags.join(format!("pr-{i}")))
            .and_then(|f| f.set_modified(when))
            .expect("mtime");
    }
    age_manifests(&root, repo, Duration::from_secs(3 * 86400));
    age_files(&root.join("blobs"), Duration::from_secs(3 * 86400));

    let options = GcOptions {
        retention: vec![RetentionRule {
            repositories: RepoPattern::parse("ret/*"),
            tag_pattern: "pr-*".to_string(),
            keep_last: Some(2),
            untagged_older_than: Some(Duration::from_secs(86400)),
        }],
        ..GcOptions::default()
    };
    let rt = runtime();
    let dry = rt
        .block_on(api.server.registry.collect_garbage(GcOptions {
            dry_run: true,
            ..options.clone()
        }))
        .expect("dry run");
    let dropped: Vec<&str> = dry.tags.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(dropped, vec!["pr-1", "pr-2", "pr-3"]);
    let mut dropped_manifests: Vec<_> = dry.manifests.iter().map(|(_, d)| d.clone()).collect();
    dropped_manifests.sort();
    let mut expected: Vec<_> = digests[..3].to_vec();
    expected.sort();
    assert_eq!(dropped_manifests, expected);
    // Each dropped image frees its manifest, config and layer.
    assert_eq!(dry.blobs.len(), 9, "{:?}", dry.blobs);
    let listed: serde_json::Value = api
        .send(api.req(M::GET, &format!("/v2/{repo}/tags/list")))
        .json()
        .expect("json");
    assert_eq!(
        listed["tags"].as_array().expect("tags").len(),
        6,
        "dry run changed tags"
    );
    // A root (what a kept deploy revision runs) stays, with everything it refers to.
    let rooted = rt
        .block_on(api.server.registry.collect_garbage(GcOptions {
            dry_run: true,
            roots: vec![(repo.to_string(), digests[0].clone())],
            ..options.clone()
        }))
        .expect("dry run with a root");
    assert_eq!(rooted.manifests.len(), 2, "{:?}", rooted.manifests);
    assert!(!rooted.manifests.iter().any(|(_, d)| *d == digests[0]));
    assert_eq!(rooted.blobs.len(), 6, "{:?}", rooted.blobs);

    let report = rt
        .block_on(api.server.registry.collect_garbage(options))
        .expect("gc");
    assert_eq!(report.tags, dry.tags);
    assert_eq!(report.blobs.len(), 9);
    let listed: serde_json::Value = api
        .send(api.req(M::GET, &format!("/v2/{repo}/tags/list")))
        .json()
        .expect("json");
    assert_eq!(
        listed["tags"],
        serde_json::json!(["latest", "pr-4", "pr-5"])
    );
    for gone in &digests[..3] {
        let r = api.send(api.req(M::HEAD, &format!("/v2/{repo}/manifests/{gone}")));
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    for kept in [&digests[3], &digests[4], &latest] {
        let r = api.send(api.req(M::GET, &format!("/v2/{repo}/manifests/{kept}")));
        assert_eq!(r.status(), StatusCode::OK);
        let body: serde_json::Value = r.json().expect("json");
        let layer = body["layers"][0]["digest"].as_str().expect("digest");
        let blob = api.send(api.req(M::GET, &format!("/v2/{repo}/blobs/{layer}")));
        assert_eq!(blob.status(), StatusCode::OK);
    }
}

#[test]
fn abandoned_uploads_are_removed_and_active_ones_kept() {
    let api = Api::new();
    let root = api.server.root();
    let start = |_: ()| {
        let r = api.send(api.req(M::POST, "/v2/up/app/blobs/uploads/"));
        let location = crate::api::header(&r, "location");
        let patch = api.send(api.req(M::PATCH, &location).body(vec![7u8; 1000]));
        assert_eq!(patch.status(), StatusCode::ACCEPTED);
        location
    };
    let old = start(());
    age_files(&root.join("uploads"), Duration::from_secs(3 * 86400));
    let recent = start(());
    let report = runtime()
        .block_on(api.server.registry.collect_garbage(GcOptions::default()))
        .expect("gc");
    assert_eq!(report.uploads.len(), 1);
    assert!(old.ends_with(&report.uploads[0]));
    let gone = api.send(api.req(M::GET, &old));
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    let alive = api.send(api.req(M::GET, &recent));
    assert_eq!(alive.status(), StatusCode::NO_CONTENT);
    assert_eq!(crate::api::header(&alive, "range"), "0-999");
}

/// Sets the modification time of `path` to `age` ago.
fn age_file(path: &Path, age: Duration) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(SystemTime::now() - age))
        .unwrap_or_else(|e| panic!("set mtime of {}: {e}", path.display()));
}

fn image_manifest(config: (&Digest, usize), layer: (&Digest, usize)) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}]}}"#,
        config.0, config.1, layer.0, layer.1
    )
}

/// Garbage collection running in a loop while clients push. Each push uploads a config
/// and a layer, makes them look older than the grace period (as if pushed long ago and
/// left unreferenced: what a client finds with HEAD and does not upload again), then puts
/// the manifest while runs are sweeping. A chunked upload spans many runs; its last chunk
/// was written "long ago" too when it is committed. Every manifest push that succeeded
/// must find all its blobs afterwards; a push may instead be refused with
/// `MANIFEST_BLOB_UNKNOWN` (the client uploads again), never accepted over a deleted blob.
/// Without the protected set (or with it only covering runs that started before the
/// push's check), the sweep deletes blobs that a run's mark phase did not yet see
/// referenced, and this test fails.
#[test]
fn gc_racing_pushes_never_deletes_blobs_of_uploads_or_of_manifests_pushed_during_the_run() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const PUSHERS: usize = 3;
    const PER_PUSHER: usize = 40;
    let api = Api::new();
    let root = api.server.root();
    let store = api.server.registry.store().clone();
    let repo = "race/app";
    // Decoys nothing will refer to: the runs must really be deleting.
    let decoys: Vec<_> = (0..10)
        .map(|i| api.push_blob(repo, format!("decoy {i}").as_bytes()))
        .collect();
    age_files(&root.join("blobs"), Duration::from_secs(7200));

    // An upload in flight across the runs: first chunk now, the rest after them.
    let upload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let upload_digest = crate::support::sha256(&upload);
    let start = api.send(api.req(M::POST, &format!("/v2/{repo}/blobs/uploads/")));
    let location = crate::api::header(&start, "location");
    let upload_id = crate::api::header(&start, "docker-upload-uuid");
    let first = api.send(
        api.req(M::PATCH, &location)
            .header("content-range", "0-99999")
            .body(upload[..100_000].to_vec()),
    );
    assert_eq!(first.status(), StatusCode::ACCEPTED);

    let stop = AtomicBool::new(false);
    let runs = AtomicUsize::new(0);
    let swept = std::sync::Mutex::new(Vec::new());
    // (tag, config, layer, status, body)
    let outcomes = std::sync::Mutex::new(Vec::new());
    /// Stops the runs however the pushing side ends (a failed assertion included).
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    std::thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        scope.spawn(|| {
            let rt = runtime();
            while !stop.load(Ordering::SeqCst) {
                let report = rt
                    .block_on(api.server.registry.collect_garbage(GcOptions::default()))
                    .expect("gc");
                runs.fetch_add(1, Ordering::SeqCst);
                swept
                    .lock()
                    .expect("lock")
                    .extend(report.blobs.into_iter().map(|(d, _)| d));
            }
        });
        let pushers: Vec<_> = (0..PUSHERS)
            .map(|p| {
                let (api, store, outcomes) = (&api, &store, &outcomes);
                scope.spawn(move || {
                    for i in p * PER_PUSHER..(p + 1) * PER_PUSHER {
                        let config = format!(r#"{{"os":"linux","n":{i}}}"#).into_bytes();
                        let layer = format!("layer {i} ").repeat(40).into_bytes();
                        let (c, l) = (api.push_blob(repo, &config), api.push_blob(repo, &layer));
                        age_file(&store.blob_path(&c), Duration::from_secs(7200));
                        age_file(&store.blob_path(&l), Duration::from_secs(7200));
                        let manifest = image_manifest((&c, config.len()), (&l, layer.len()));
                        let tag = format!("t{i}");
                        let response = api.send(
                            api.req(M::PUT, &format!("/v2/{repo}/manifests/{tag}"))
                                .header(
                                    "content-type",
                                    "application/vnd.oci.image.manifest.v1+json",
                                )
                                .body(manifest),
                        );
                        let status = response.status();
                        let body = response.text().unwrap_or_default();
                        let blobs = vec![(c, config), (l, layer)];
                        outcomes
                            .lock()
                            .expect("lock")
                            .push((tag, blobs, status, body));
                    }
                })
            })
            .collect();
        // The upload gets its last chunk while the runs go on; that chunk is "old" by the
        // time the upload is closed (a slow client), and the manifest follows the commit.
        let second = api.send(
            api.req(M::PATCH, &location)
                .header("content-range", "100000-299999")
                .body(upload[100_000..].to_vec()),
        );
        assert_eq!(second.status(), StatusCode::ACCEPTED);
        for pusher in pushers {
            pusher.join().expect("pusher");
        }
        age_file(
            &root.join("uploads").join(&upload_id).join("data"),
            Duration::from_secs(7200),
        );
        let put = api.send(api.req(M::PUT, &format!("{location}?digest={upload_digest}")));
        assert_eq!(put.status(), StatusCode::CREATED, "upload lost during GC");
        let config = br#"{"os":"linux","uploaded":true}"#.to_vec();
        let c = api.push_blob(repo, &config);
        let manifest = image_manifest((&c, config.len()), (&upload_digest, upload.len()));
        let put = api.send(
            api.req(M::PUT, &format!("/v2/{repo}/manifests/uploaded"))
                .header("content-type", "application/vnd.oci.image.manifest.v1+json")
                .body(manifest),
        );
        let (status, body) = (put.status(), put.text().unwrap_or_default());
        assert_eq!(
            status,
            StatusCode::CREATED,
            "the committed upload was swept: {body}"
        );
        let blobs = vec![(c, config), (upload_digest.clone(), upload.clone())];
        outcomes
            .lock()
            .expect("lock")
            .push(("uploaded".to_string(), blobs, status, body));
    });
    // One more run with nothing in flight: whatever is referenced now must survive it too.
    runtime()
        .block_on(api.server.registry.collect_garbage(GcOptions::default()))
        .expect("final gc");

    let runs = runs.into_inner();
    let swept = swept.into_inner().expect("lock");
    let outcomes = outcomes.into_inner().expect("lock");
    assert!(runs >= 2, "only {runs} runs overlapped the pushes");
    for decoy in &decoys {
        assert!(
            swept.contains(decoy),
            "decoy {decoy} survived: the runs deleted nothing"
        );
    }
    let (mut accepted, mut refused) = (0, 0);
    for (tag, blobs, status, body) in &outcomes {
        if *status == StatusCode::BAD_REQUEST && body.contains("MANIFEST_BLOB_UNKNOWN") {
            refused += 1;
            continue;
        }
        assert_eq!(*status, StatusCode::CREATED, "push of {tag}: {body}");
        accepted += 1;
        let get = api.send(api.req(M::GET, &format!("/v2/{repo}/manifests/{tag}")));
        assert_eq!(get.status(), StatusCode::OK, "manifest {tag} gone");
        for (digest, data) in blobs {
            let blob = api.send(api.req(M::GET, &format!("/v2/{repo}/blobs/{digest}")));
            assert_eq!(
                blob.status(),
                StatusCode::OK,
                "blob {digest} of accepted manifest {tag} was deleted by a concurrent run \
                 ({runs} runs, {accepted} accepted and {refused} refused so far)"
            );
            assert_eq!(&blob.bytes().expect("body").to_vec(), data);
        }
    }
    assert!(accepted > 1, "every push was refused: {outcomes:?}");
    eprintln!("{runs} runs; {accepted} manifests accepted, {refused} refused (blob swept first)");
    crate::support::assert_blobs_verified(&root);
}
