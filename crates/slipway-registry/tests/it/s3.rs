//! The S3 blob backend (feature `s3`) against a real S3 server in-process: `s3s` with the
//! `s3s-fs` filesystem backend on 127.0.0.1, with SigV4 authentication switched on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Method as M;
use reqwest::StatusCode;
use slipway_registry::digest::Algorithm;
use slipway_registry::storage::StorageConfig;
use slipway_registry::storage::s3::S3Config;
use slipway_registry::storage::sigv4::Signer;
use slipway_registry::{Digest, GcOptions};

use crate::api::{Api, header};
use crate::support::{ADMIN_TOKEN, Docker, TestServer, text, unique};

const ACCESS_KEY: &str = "slipway-test-access";
const SECRET_KEY: &str = "slipway-test-secret-0123456789";
const BUCKET: &str = "registry-bucket";

/// An S3 server (`s3s-fs`) on its own thread; stopped when dropped.
pub struct S3Server {
    pub endpoint: String,
    pub dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl S3Server {
    pub fn start() -> S3Server {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join(BUCKET)).expect("bucket dir");
        let root = dir.path().to_path_buf();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, mut shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let fs = s3s_fs::FileSystem::new(&root).expect("s3s-fs");
                let mut builder = s3s::service::S3ServiceBuilder::new(fs);
                builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
                let service = builder.build();
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                addr_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("send addr");
                let http = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                loop {
                    let socket = tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok((socket, _)) => socket,
                            Err(_) => continue,
                        },
                        _ = &mut shutdown_rx => break,
                    };
                    let conn = http
                        .serve_connection(hyper_util::rt::TokioIo::new(socket), service.clone())
                        .into_owned();
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
            });
        });
        let addr = addr_rx.recv().expect("S3 server address");
        S3Server {
            endpoint: format!("http://{addr}"),
            dir,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        }
    }

    /// A backend config for this server, keys under `prefix/`.
    pub fn config(&self, prefix: &str) -> S3Config {
        S3Config::from_url(
            &format!(
                "s3://{BUCKET}/{prefix}?endpoint={}&region=us-east-1",
                self.endpoint
            ),
            ACCESS_KEY,
            SECRET_KEY,
        )
        .expect("storage URL")
    }

    /// Where `s3s-fs` keeps the object of `digest` under `prefix/`.
    pub fn object(&self, prefix: &str, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.dir
            .path()
            .join(BUCKET)
            .join(prefix)
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A registry whose blobs live in `s3` under `prefix/`.
fn registry_on(s3: &S3Server, prefix: &str, tune: impl FnOnce(&mut S3Config)) -> Api {
    let mut config = s3.config(prefix);
    tune(&mut config);
    Api::with_server(TestServer::start_with(|c| {
        c.storage = StorageConfig::S3(config);
    }))
}

/// Files under `dir`, recursively (the registry's local `blobs/` must stay empty).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn error_code(response: reqwest::blocking::Response) -> String {
    let body: serde_json::Value = response.json().expect("error body is JSON");
    body["errors"][0]["code"]
        .as_str()
        .expect("errors[0].code")
        .to_string()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn signer_matches_the_aws_documentation_example() {
    // "Example: GET Object" of the SigV4 header-based authentication documentation.
    let signer = Signer::new(
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "us-east-1",
    );
    let url = reqwest::Url::parse("https://examplebucket.s3.amazonaws.com/test.txt").expect("url");
    let auth = signer.authorization(
        "GET",
        &url,
        &[("range", "bytes=0-9")],
        slipway_registry::storage::sigv4::EMPTY_SHA256,
        "20130524T000000Z",
    );
    assert_eq!(
        auth,
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
         SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
         Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    );
}

#[test]
fn storage_urls_parse_and_bad_ones_say_why() {
    let c = S3Config::from_url(
        "s3://images/ci/registry/?endpoint=http://127.0.0.1:9000&region=eu-west-1",
        "ak",
        "sk",
    )
    .expect("parse");
    assert_eq!(c.bucket, "images");
    assert_eq!(c.prefix, "ci/registry/");
    assert_eq!(c.endpoint, "http://127.0.0.1:9000");
    assert_eq!(c.region, "eu-west-1");
    assert!(!format!("{c:?}").contains("\"sk\""), "secret in Debug");

    let aws = S3Config::from_url("s3://images", "ak", "sk").expect("parse");
    assert_eq!(aws.prefix, "");
    assert_eq!(aws.endpoint, "https://s3.us-east-1.amazonaws.com");

    for (url, why) in [
        ("http://images", "s3://"),
        ("s3:///prefix", "bucket"),
        ("s3://images?endpont=http://x", "endpont"),
        ("s3://images?endpoint=ftp://x", "endpoint"),
    ] {
        let e = S3Config::from_url(url, "ak", "sk").expect_err(url);
        assert!(e.to_string().contains(why), "{url}: {e}");
    }
    let e = S3Config::from_url("s3://images", "", "").expect_err("no keys");
    assert!(e.to_string().contains("AWS_ACCESS_KEY_ID"), "{e}");
}

#[test]
fn s3_push_and_pull_of_an_image_through_the_registry_api() {
    let s3 = S3Server::start();
    let api = registry_on(&s3, "reg", |_| {});
    let (digest, manifest) = api.push_image("s3/app", "v1", "s3-image");

    let get = api.send(api.req(M::GET, "/v2/s3/app/manifests/v1"));
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(header(&get, "docker-content-digest"), digest.to_string());
    assert_eq!(
        get.bytes().expect("body").to_vec(),
        manifest,
        "not byte-exact"
    );

    let body: serde_json::Value = serde_json::from_slice(&manifest).expect("json");
    let config = serde_json::json!({"architecture":"amd64","os":"linux","seed":"s3-image"});
    for (blob, expected) in [
        (&body["config"], config.to_string().into_bytes()),
        (&body["layers"][0], b"layer of s3-image".to_vec()),
    ] {
        let d: Digest = blob["digest"]
            .as_str()
            .expect("digest")
            .parse()
            .expect("digest");
        let get = api.send(api.req(M::GET, &format!("/v2/s3/app/blobs/{d}")));
        assert_eq!(get.status(), StatusCode::OK);
        assert_eq!(get.bytes().expect("body").to_vec(), expected);
        assert!(s3.object("reg", &d).is_file(), "{d} is not in the bucket");
    }
    assert!(
        s3.object("reg", &digest).is_file(),
        "manifest not in the bucket"
    );
    let local = files_under(&api.server.root().join("blobs"));
    assert!(local.is_empty(), "blob content on local disk: {local:?}");

    // Mount into a second repository works from the bucket too.
    let layer = body["layers"][0]["digest"].as_str().expect("digest");
    let mount = api.send(api.req(
        M::POST,
        &format!("/v2/s3/other/blobs/uploads/?mount={layer}&from=s3/app"),
    ));
    assert_eq!(mount.status(), StatusCode::CREATED);
}

#[test]
fn s3_blob_round_trip_is_byte_exact_single_put_and_multipart() {
    let s3 = S3Server::start();
    // Multipart from 5 MiB on, 5 MiB parts: a 12 MiB blob goes up in three parts.
    let api = registry_on(&s3, "", |c| {
        c.multipart_threshold = 5 * 1024 * 1024;
        c.part_size = 5 * 1024 * 1024;
    });
    let repo = "rt/blob";
    let big: Vec<u8> = (0..12 * 1024 * 1024 + 123)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let digest = Digest::sha256_of(&big);
    // Chunked upload: two PATCHes, then PUT.
    let start = api.send(api.req(M::POST, &format!("/v2/{repo}/blobs/uploads/")));
    let location = header(&start, "location");
    let half = big.len() / 2;
    let p1 = api.send(
        api.req(M::PATCH, &location)
            .header("content-range", format!("0-{}", half - 1))
            .body(big[..half].to_vec()),
    );
    assert_eq!(p1.status(), StatusCode::ACCEPTED);
    let p2 = api.send(
        api.req(M::PATCH, &location)
            .header("content-range", format!("{half}-{}", big.len() - 1))
            .body(big[half..].to_vec()),
    );
    assert_eq!(p2.status(), StatusCode::ACCEPTED);
    let put = api.send(api.req(M::PUT, &format!("{location}?digest={digest}")));
    assert_eq!(
        put.status(),
        StatusCode::CREATED,
        "{}",
        put.text().unwrap_or_default()
    );
    assert_eq!(
        std::fs::read(s3.object("", &digest)).expect("object"),
        big,
        "object in the bucket differs"
    );

    let head = api.send(api.req(M::HEAD, &format!("/v2/{repo}/blobs/{digest}")));
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, "content-length"), big.len().to_string());
    let get = api.send(api.req(M::GET, &format!("/v2/{repo}/blobs/{digest}")));
    assert_eq!(get.status(), StatusCode::OK);
    let got = get.bytes().expect("body");
    assert!(got.as_ref() == big.as_slice(), "blob read back differs");
    let range = api.send(
        api.req(M::GET, &format!("/v2/{repo}/blobs/{digest}"))
            .header("range", "bytes=5242870-5242889"),
    );
    assert_eq!(range.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        range.bytes().expect("body").as_ref(),
        &big[5_242_870..5_242_890]
    );

    // A small sha512 blob (single PUT, unsigned payload) and an empty one.
    let small = b"sha512 content in one PUT".to_vec();
    let d512 = Digest::of(Algorithm::Sha512, &small);
    let post = api.send(
        api.req(M::POST, &format!("/v2/{repo}/blobs/uploads/?digest={d512}"))
            .body(small.clone()),
    );
    assert_eq!(post.status(), StatusCode::CREATED);
    let get = api.send(api.req(M::GET, &format!("/v2/{repo}/blobs/{d512}")));
    assert_eq!(get.bytes().expect("body").to_vec(), small);
    let empty = api.push_blob(repo, b"");
    let get = api.send(api.req(M::GET, &format!("/v2/{repo}/blobs/{empty}")));
    assert_eq!(get.status(), StatusCode::OK);
    assert!(get.bytes().expect("body").is_empty());

    // A wrong digest is refused before anything reaches the bucket.
    let wrong = Digest::sha256_of(b"something else");
    let post = api.send(
        api.req(
            M::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={wrong}"),
        )
        .body(small.clone()),
    );
    assert_eq!(post.status(), StatusCode::BAD_REQUEST);
    assert!(!s3.object("", &wrong).exists());
    assert!(!s3.object("", &Digest::sha256_of(&small)).exists());
}

#[test]
fn s3_missing_blob_is_blob_unknown() {
    let s3 = S3Server::start();
    let api = registry_on(&s3, "missing", |_| {});
    let never = Digest::sha256_of(b"never pushed");
    let get = api.send(api.req(M::GET, &format!("/v2/miss/app/blobs/{never}")));
    assert_eq!(get.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(get), "BLOB_UNKNOWN");

    // Linked in the repository but gone from the bucket (deleted behind our back): the
    // bucket's 404 becomes BLOB_UNKNOWN, for GET and HEAD.
    let digest = api.push_blob("miss/app", b"soon gone from the bucket");
    std::fs::remove_file(s3.object("missing", &digest)).expect("remove object");
    let get = api.send(api.req(M::GET, &format!("/v2/miss/app/blobs/{digest}")));
    assert_eq!(get.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(get), "BLOB_UNKNOWN");
    let head = api.send(api.req(M::HEAD, &format!("/v2/miss/app/blobs/{digest}")));
    assert_eq!(head.status(), StatusCode::NOT_FOUND);
    // And a manifest referring to it is refused.
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{digest}","size":25}},"layers":[]}}"#
    );
    let put = api.send(
        api.req(M::PUT, "/v2/miss/app/manifests/v1")
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(manifest),
    );
    assert_eq!(put.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(put), "MANIFEST_BLOB_UNKNOWN");
}

#[test]
fn s3_garbage_collection_deletes_unreferenced_blobs_from_the_bucket() {
    let s3 = S3Server::start();
    let api = registry_on(&s3, "gc", |_| {});
    let (manifest, body) = api.push_image("gc/s3", "v1", "kept in s3");
    let orphan_data = b"nobody refers to me, in s3";
    let orphan = api.push_blob("gc/s3", orphan_data);
    assert!(s3.object("gc", &orphan).is_file());
    // Last-modified times have one-second resolution: let them fall behind the run's start.
    std::thread::sleep(Duration::from_millis(1100));
    let options = GcOptions {
        blob_grace: Duration::ZERO,
        ..GcOptions::default()
    };
    let rt = runtime();
    let dry = rt
        .block_on(api.server.registry.collect_garbage(GcOptions {
            dry_run: true,
            ..options.clone()
        }))
        .expect("dry run");
    assert_eq!(dry.blobs, vec![(orphan.clone(), orphan_data.len() as u64)]);
    assert!(s3.object("gc", &orphan).is_file(), "dry run deleted");

    let report = rt
        .block_on(api.server.registry.collect_garbage(options))
        .expect("gc");
    assert_eq!(report.blobs, dry.blobs);
    assert!(
        !s3.object("gc", &orphan).exists(),
        "orphan still in the bucket"
    );
    let head = api.send(api.req(M::HEAD, &format!("/v2/gc/s3/blobs/{orphan}")));
    assert_eq!(head.status(), StatusCode::NOT_FOUND);

    // The tagged image is whole: manifest, config and layer still in the bucket.
    let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
    for d in [
        manifest.to_string(),
        json["config"]["digest"].as_str().expect("d").to_string(),
        json["layers"][0]["digest"].as_str().expect("d").to_string(),
    ] {
        let d: Digest = d.parse().expect("digest");
        assert!(s3.object("gc", &d).is_file(), "{d} was deleted");
    }
    let get = api.send(api.req(M::GET, "/v2/gc/s3/manifests/v1"));
    assert_eq!(get.bytes().expect("body").to_vec(), body);
}

#[test]
fn docker_push_rmi_pull_with_blobs_in_s3() {
    let s3 = S3Server::start();
    let api = registry_on(&s3, "docker", |_| {});
    let server = &api.server;
    let docker = Docker::new();
    let id = unique();
    let local = format!("slipway-reg-test/{id}:s3");
    let sums = docker.build_image(&local, 2, 200_000);
    let login = docker.login(&server.host(), "admin", ADMIN_TOKEN);
    assert!(login.status.success(), "{}", text(&login));
    let remote = format!("{}/s3/app-{id}:v1", server.host());
    docker.owns(&remote);
    docker.ok(&["tag", &local, &remote]);
    let push = docker.ok(&["push", &remote]);
    assert!(push.contains("digest: sha256:"), "push output: {push}");
    docker.ok(&["rmi", &remote, &local]);
    docker.ok(&["pull", &remote]);
    let after = docker.ok(&["run", "--rm", &remote]);
    assert_eq!(after, sums, "layers differ after the round trip through S3");
    let local_blobs = files_under(&server.root().join("blobs"));
    assert!(
        local_blobs.is_empty(),
        "blob content on local disk: {local_blobs:?}"
    );
}
