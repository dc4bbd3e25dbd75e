//! Garbage collection and retention against a live registry.

use std::path::Path;
use std::time::{Duration, SystemTime};

use reqwest::Method as M;
use reqwest::StatusCode;
use slipway_registry::{GcOptions, RepoPattern, RetentionRule};

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
