//! The distribution API by hand over HTTP: uploads, manifests, tags, catalog, referrers,
//! deletes and error codes.

use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder, Response};
use slipway_registry::Digest;
use slipway_registry::digest::Algorithm;

use crate::support::{ADMIN_TOKEN, TestServer, assert_blobs_verified, client, sha256, unique};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

pub struct Api {
    pub server: TestServer,
    pub http: Client,
}

impl Api {
    pub fn new() -> Api {
        Api::with_server(TestServer::start())
    }

    pub fn with_server(server: TestServer) -> Api {
        Api {
            server,
            http: client(),
        }
    }

    pub fn req(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, self.server.url(path))
            .basic_auth("admin", Some(ADMIN_TOKEN))
    }

    pub fn send(&self, builder: RequestBuilder) -> Response {
        builder.send().expect("request")
    }

    /// POST then PUT with the whole blob.
    pub fn push_blob(&self, repo: &str, data: &[u8]) -> Digest {
        let digest = sha256(data);
        let start =
            self.send(self.req(reqwest::Method::POST, &format!("/v2/{repo}/blobs/uploads/")));
        assert_eq!(start.status(), StatusCode::ACCEPTED);
        let location = header(&start, "location");
        let put = self.send(
            self.req(reqwest::Method::PUT, &format!("{location}?digest={digest}"))
                .header("content-type", "application/octet-stream")
                .body(data.to_vec()),
        );
        assert_eq!(
            put.status(),
            StatusCode::CREATED,
            "{}",
            put.text().unwrap_or_default()
        );
        digest
    }

    /// An OCI image manifest over a config and one layer, pushed with its blobs.
    pub fn push_image(&self, repo: &str, reference: &str, seed: &str) -> (Digest, Vec<u8>) {
        let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":"{seed}"}}"#);
        let layer = format!("layer of {seed}").into_bytes();
        let config_digest = self.push_blob(repo, config.as_bytes());
        let layer_digest = self.push_blob(repo, &layer);
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}}]}}"#,
            config.len(),
            layer.len()
        );
        let digest = self.put_manifest(repo, reference, OCI_MANIFEST, manifest.as_bytes());
        (digest, manifest.into_bytes())
    }

    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Digest {
        let response = self.send(
            self.req(
                reqwest::Method::PUT,
                &format!("/v2/{repo}/manifests/{reference}"),
            )
            .header("content-type", media_type)
            .body(body.to_vec()),
        );
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{}",
            response.text().unwrap_or_default()
        );
        let digest = header(&response, "docker-content-digest");
        assert_eq!(digest, sha256(body).to_string());
        digest.parse().expect("digest")
    }
}

pub fn header(response: &Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header in {response:?}"))
        .to_str()
        .expect("ascii header")
        .to_string()
}

/// The `code` of the first error of a spec error body.
fn error_code(response: Response) -> String {
    let body: serde_json::Value = response.json().expect("error body is JSON");
    body["errors"][0]["code"]
        .as_str()
        .expect("errors[0].code")
        .to_string()
}

use reqwest::Method as M;

#[test]
fn monolithic_and_single_post_uploads_are_verified_and_linked() {
    let api = Api::new();
    let data = b"hello blob".to_vec();
    let digest = api.push_blob("mono/a", &data);
    let get = api.send(api.req(M::GET, &format!("/v2/mono/a/blobs/{digest}")));
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(header(&get, "docker-content-digest"), digest.to_string());
    assert_eq!(get.bytes().expect("body").to_vec(), data);

    // Single POST carrying the blob, sha512.
    let data2 = b"posted in one go".to_vec();
    let d512 = Digest::of(Algorithm::Sha512, &data2);
    let post = api.send(
        api.req(M::POST, &format!("/v2/mono/a/blobs/uploads/?digest={d512}"))
            .body(data2.clone()),
    );
    assert_eq!(post.status(), StatusCode::CREATED);
    assert_eq!(
        header(&post, "location"),
        format!("/v2/mono/a/blobs/{d512}")
    );
    let head = api.send(api.req(M::HEAD, &format!("/v2/mono/a/blobs/{d512}")));
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, "content-length"), data2.len().to_string());

    // A blob is only visible through repositories it was pushed or mounted into.
    let other = api.send(api.req(M::HEAD, &format!("/v2/mono/b/blobs/{digest}")));
    assert_eq!(other.status(), StatusCode::NOT_FOUND);

    // A range of a blob.
    let part = api.send(
        api.req(M::GET, &format!("/v2/mono/a/blobs/{digest}"))
            .header("range", "bytes=6-"),
    );
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.bytes().expect("body").as_ref(), b"blob");
    assert_blobs_verified(&api.server.root());
}

#[test]
fn wrong_digest_is_refused_and_leaves_nothing_behind() {
    let api = Api::new();
    let claimed = sha256(b"something else");
    let start = api.send(api.req(M::POST, "/v2/bad/digest/blobs/uploads/"));
    let location = header(&start, "location");
    let put = api.send(
        api.req(M::PUT, &format!("{location}?digest={claimed}"))
            .body(b"actual content".to_vec()),
    );
    assert_eq!(put.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(put), "DIGEST_INVALID");
    let head = api.send(api.req(M::HEAD, &format!("/v2/bad/digest/blobs/{claimed}")));
    assert_eq!(head.status(), StatusCode::NOT_FOUND);
    let actual = sha256(b"actual content");
    assert!(!api.server.registry.store().blob_path(&actual).exists());
    // The failed upload is gone.
    let status = api.send(api.req(M::GET, &location));
    assert_eq!(status.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(status), "BLOB_UPLOAD_UNKNOWN");
    let malformed = api.send(api.req(M::GET, "/v2/bad/digest/blobs/sha256:1234"));
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(malformed), "DIGEST_INVALID");
}

#[test]
fn chunked_upload_enforces_order_reports_status_and_cancels() {
    let api = Api::new();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let digest = sha256(&data);
    let start = api.send(api.req(M::POST, "/v2/chunks/x/blobs/uploads/"));
    assert_eq!(start.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&start, "range"), "0-0");
    let location = header(&start, "location");

    let chunk = |from: usize, to: usize| {
        api.send(
            api.req(M::PATCH, &location)
                .header("content-type", "application/octet-stream")
                .header("content-range", format!("{from}-{}", to - 1))
                .body(data[from..to].to_vec()),
        )
    };
    let first = chunk(0, 100_000);
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&first, "range"), "0-99999");

    // Out of order: a gap, then a repeat.
    let gap = chunk(150_000, 200_000);
    assert_eq!(gap.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&gap, "range"), "0-99999");
    let repeat = chunk(0, 100_000);
    assert_eq!(repeat.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    // Status.
    let status = api.send(api.req(M::GET, &location));
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&status, "range"), "0-99999");

    let second = chunk(100_000, 200_000);
    assert_eq!(second.status(), StatusCode::ACCEPTED);
    // Last chunk with the closing PUT.
    let put = api.send(
        api.req(M::PUT, &format!("{location}?digest={digest}"))
            .header("content-range", "200000-299999")
            .body(data[200_000..].to_vec()),
    );
    assert_eq!(put.status(), StatusCode::CREATED);
    let get = api.send(api.req(M::GET, &format!("/v2/chunks/x/blobs/{digest}")));
    assert_eq!(get.bytes().expect("body").to_vec(), data);

    // Cancel.
    let start = api.send(api.req(M::POST, "/v2/chunks/x/blobs/uploads/"));
    let location = header(&start, "location");
    let cancel = api.send(api.req(M::DELETE, &location));
    assert_eq!(cancel.status(), StatusCode::NO_CONTENT);
    let gone = api.send(api.req(M::PATCH, &location).body(b"x".to_vec()));
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(gone), "BLOB_UPLOAD_UNKNOWN");
}

#[test]
fn mount_needs_the_blob_in_a_readable_source_repository() {
    let api = Api::new();
    let digest = api.push_blob("src/repo", b"shared layer");
    let mount = api.send(api.req(
        M::POST,
        &format!("/v2/dst/repo/blobs/uploads/?mount={digest}&from=src/repo"),
    ));
    assert_eq!(mount.status(), StatusCode::CREATED);
    assert_eq!(header(&mount, "docker-content-digest"), digest.to_string());
    let head = api.send(api.req(M::HEAD, &format!("/v2/dst/repo/blobs/{digest}")));
    assert_eq!(head.status(), StatusCode::OK);

    // Unknown in the source: falls back to an upload session.
    let unknown = sha256(b"not pushed");
    let fallback = api.send(api.req(
        M::POST,
        &format!("/v2/dst/repo/blobs/uploads/?mount={unknown}&from=src/repo"),
    ));
    assert_eq!(fallback.status(), StatusCode::ACCEPTED);
    assert!(header(&fallback, "location").starts_with("/v2/dst/repo/blobs/uploads/"));

    // A robot of `ci/` may not mount from a repository it cannot read.
    let robot = api.send(
        api.http
            .post(api.server.url(&format!(
                "/v2/ci/mine/blobs/uploads/?mount={digest}&from=src/repo"
            )))
            .basic_auth("robot", Some(crate::support::ROBOT_TOKEN)),
    );
    assert_eq!(robot.status(), StatusCode::ACCEPTED);
    let head = api.send(api.req(M::HEAD, &format!("/v2/ci/mine/blobs/{digest}")));
    assert_eq!(head.status(), StatusCode::NOT_FOUND);
}

#[test]
fn manifests_are_stored_byte_exact_and_negotiated() {
    let api = Api::new();
    let repo = "man/app";
    let config = api.push_blob(repo, b"{}");
    let layer = api.push_blob(repo, b"layer");
    // Odd whitespace and key order: must come back exactly as sent.
    let body = format!(
        "{{\n  \"schemaVersion\": 2,\n  \"mediaType\": \"{DOCKER_MANIFEST}\",\n  \"config\": {{\"mediaType\": \"application/vnd.docker.container.image.v1+json\", \"size\": 2, \"digest\": \"{config}\"}},\n  \"layers\": [ {{\"mediaType\": \"application/vnd.docker.image.rootfs.diff.tar.gzip\", \"size\": 5, \"digest\": \"{layer}\"}} ]\n}}\n"
    );
    let digest = api.put_manifest(repo, "latest", DOCKER_MANIFEST, body.as_bytes());

    for reference in ["latest".to_string(), digest.to_string()] {
        let get = api.send(
            api.req(M::GET, &format!("/v2/{repo}/manifests/{reference}"))
                .header("accept", format!("{OCI_MANIFEST}, {DOCKER_MANIFEST}")),
        );
        assert_eq!(get.status(), StatusCode::OK);
        assert_eq!(header(&get, "content-type"), DOCKER_MANIFEST);
        assert_eq!(header(&get, "docker-content-digest"), digest.to_string());
        assert_eq!(get.bytes().expect("body").to_vec(), body.as_bytes());
    }
    let head = api.send(api.req(M::HEAD, &format!("/v2/{repo}/manifests/latest")));
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, "content-length"), body.len().to_string());
    assert_eq!(header(&head, "docker-content-digest"), digest.to_string());

    // A client that only takes OCI manifests does not get a Docker one.
    let refused = api.send(
        api.req(M::GET, &format!("/v2/{repo}/manifests/latest"))
            .header("accept", OCI_MANIFEST),
    );
    assert_eq!(refused.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(refused), "MANIFEST_UNKNOWN");

    // PUT by digest, and a digest that does not match the body.
    let by_digest = api.put_manifest(repo, &digest.to_string(), DOCKER_MANIFEST, body.as_bytes());
    assert_eq!(by_digest, digest);
    let wrong = api.send(
        api.req(M::PUT, &format!("/v2/{repo}/manifests/{}", sha256(b"x")))
            .header("content-type", DOCKER_MANIFEST)
            .body(body.clone()),
    );
    assert_eq!(wrong.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(wrong), "DIGEST_INVALID");
}

#[test]
fn invalid_manifests_and_names_get_the_spec_error_codes() {
    let api = Api::new();
    let missing = sha256(b"never pushed");
    let body = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{missing}","size":3}},"layers":[]}}"#
    );
    let put = api.send(
        api.req(M::PUT, "/v2/err/app/manifests/v1")
            .header("content-type", OCI_MANIFEST)
            .body(body),
    );
    assert_eq!(put.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(put), "MANIFEST_BLOB_UNKNOWN");

    let garbage = api.send(
        api.req(M::PUT, "/v2/err/app/manifests/v1")
            .header("content-type", OCI_MANIFEST)
            .body("{not json"),
    );
    assert_eq!(error_code(garbage), "MANIFEST_INVALID");

    let mismatch = api.send(
        api.req(M::PUT, "/v2/err/app/manifests/v1")
            .header("content-type", OCI_INDEX)
            .body(format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","manifests":[]}}"#
            )),
    );
    assert_eq!(error_code(mismatch), "MANIFEST_INVALID");

    let bad_name = api.send(api.req(M::GET, "/v2/Upper/Case/tags/list"));
    assert_eq!(bad_name.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(bad_name), "NAME_INVALID");

    let unknown = api.send(api.req(M::GET, "/v2/never/pushed/tags/list"));
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(unknown), "NAME_UNKNOWN");

    let no_manifest = api.send(api.req(M::GET, "/v2/never/pushed/manifests/latest"));
    assert_eq!(no_manifest.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(no_manifest), "MANIFEST_UNKNOWN");

    let no_blob = api.send(api.req(M::GET, &format!("/v2/never/pushed/blobs/{missing}")));
    assert_eq!(error_code(no_blob), "BLOB_UNKNOWN");
}

#[test]
fn tags_paginate_in_ascii_order_with_link_headers() {
    let api = Api::new();
    let repo = "pages/app";
    let (digest, _) = api.push_image(repo, "seed", "pages");
    let _ = digest;
    let names = ["b", "A", "a", "_z", "Z9", "1.0", "1.0-rc"];
    for tag in names {
        let (_, body) = api.push_image(repo, tag, "pages");
        let _ = body;
    }
    let mut expected: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    expected.push("seed".to_string());
    expected.sort();

    let mut seen = Vec::new();
    let mut next = format!("/v2/{repo}/tags/list?n=3");
    let mut pages = 0;
    loop {
        let response = api.send(api.req(M::GET, &next));
        assert_eq!(response.status(), StatusCode::OK);
        let link = response
            .headers()
            .get("link")
            .map(|l| l.to_str().expect("link").to_string());
        let body: serde_json::Value = response.json().expect("json");
        assert_eq!(body["name"], repo);
        let tags: Vec<String> = serde_json::from_value(body["tags"].clone()).expect("tags");
        assert!(tags.len() <= 3);
        seen.extend(tags);
        pages += 1;
        match link {
            Some(link) => {
                assert!(link.ends_with("; rel=\"next\""), "{link}");
                next = link
                    .trim_start_matches('<')
                    .split('>')
                    .next()
                    .expect("link target")
                    .to_string();
            }
            None => break,
        }
    }
    assert_eq!(seen, expected);
    assert_eq!(pages, expected.len().div_ceil(3));

    // `last` alone.
    let after: serde_json::Value = api
        .send(api.req(M::GET, &format!("/v2/{repo}/tags/list?last=a")))
        .json()
        .expect("json");
    let rest: Vec<String> = expected
        .iter()
        .filter(|t| t.as_str() > "a")
        .cloned()
        .collect();
    assert_eq!(after["tags"], serde_json::json!(rest));
}

#[test]
fn catalog_paginates_and_shows_only_what_the_caller_may_pull() {
    let api = Api::new();
    let mut repos: Vec<String> = ["ci/one", "ci/two", "team/a", "team/b/c", "z"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for repo in &repos {
        api.push_blob(repo, repo.as_bytes());
    }
    repos.sort();
    let mut seen = Vec::new();
    let mut last: Option<String> = None;
    loop {
        let path = match &last {
            Some(l) => format!("/v2/_catalog?n=2&last={l}"),
            None => "/v2/_catalog?n=2".to_string(),
        };
        let response = api.send(api.req(M::GET, &path));
        let has_link = response.headers().contains_key("link");
        let body: serde_json::Value = response.json().expect("json");
        let page: Vec<String> = serde_json::from_value(body["repositories"].clone()).expect("list");
        last = page.last().cloned();
        seen.extend(page);
        if !has_link {
            break;
        }
    }
    assert_eq!(seen, repos);

    let robot: serde_json::Value = api
        .http
        .get(api.server.url("/v2/_catalog"))
        .basic_auth("robot", Some(crate::support::ROBOT_TOKEN))
        .send()
        .expect("catalog")
        .json()
        .expect("json");
    assert_eq!(
        robot["repositories"],
        serde_json::json!(["ci/one", "ci/two"])
    );
}

#[test]
fn referrers_list_manifests_with_a_subject_and_filter_by_artifact_type() {
    let api = Api::new();
    let repo = "refs/app";
    let (subject, subject_body) = api.push_image(repo, "v1", "subject");
    let empty = api.push_blob(repo, b"{}");
    let mut referrers = Vec::new();
    for (i, artifact_type) in [
        "application/vnd.example.sbom",
        "application/vnd.example.sig",
    ]
    .iter()
    .enumerate()
    {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"{artifact_type}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{empty}","size":2}},"layers":[],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{subject}","size":{}}},"annotations":{{"n":"{i}"}}}}"#,
            subject_body.len()
        );
        let digest = sha256(body.as_bytes());
        let response = api.send(
            api.req(M::PUT, &format!("/v2/{repo}/manifests/{digest}"))
                .header("content-type", OCI_MANIFEST)
                .body(body.clone()),
        );
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(header(&response, "oci-subject"), subject.to_string());
        referrers.push((digest, artifact_type.to_string()));
    }
    let all = api.send(api.req(M::GET, &format!("/v2/{repo}/referrers/{subject}")));
    assert_eq!(all.status(), StatusCode::OK);
    assert_eq!(header(&all, "content-type"), OCI_INDEX);
    let index: serde_json::Value = all.json().expect("json");
    let listed: Vec<(String, String)> = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| {
            (
                m["digest"].as_str().expect("digest").to_string(),
                m["artifactType"]
                    .as_str()
                    .expect("artifactType")
                    .to_string(),
            )
        })
        .collect();
    let mut expected: Vec<(String, String)> = referrers
        .iter()
        .map(|(d, t)| (d.to_string(), t.clone()))
        .collect();
    expected.sort();
    let mut listed_sorted = listed.clone();
    listed_sorted.sort();
    assert_eq!(listed_sorted, expected);

    let filtered = api.send(api.req(
        M::GET,
        &format!("/v2/{repo}/referrers/{subject}?artifactType=application/vnd.example.sig"),
    ));
    assert_eq!(header(&filtered, "oci-filters-applied"), "artifactType");
    let index: serde_json::Value = filtered.json().expect("json");
    assert_eq!(index["manifests"].as_array().expect("list").len(), 1);
    assert_eq!(index["manifests"][0]["digest"], referrers[1].0.to_string());

    // Deleting a referrer removes it from the list.
    let delete = api.send(api.req(
        M::DELETE,
        &format!("/v2/{repo}/manifests/{}", referrers[0].0),
    ));
    assert_eq!(delete.status(), StatusCode::ACCEPTED);
    let index: serde_json::Value = api
        .send(api.req(M::GET, &format!("/v2/{repo}/referrers/{subject}")))
        .json()
        .expect("json");
    assert_eq!(index["manifests"].as_array().expect("list").len(), 1);

    // Unknown subject: an empty index, not an error.
    let none: serde_json::Value = api
        .send(api.req(
            M::GET,
            &format!("/v2/{repo}/referrers/{}", sha256(b"nothing")),
        ))
        .json()
        .expect("json");
    assert_eq!(none["manifests"], serde_json::json!([]));
}

#[test]
fn deletes_of_tags_manifests_and_blobs_emit_events() {
    let api = Api::new();
    let mut events = api.server.registry.subscribe();
    let repo = format!("del/app-{}", unique());
    let (digest, _) = api.push_image(&repo, "v1", "del");
    api.put_manifest(
        &repo,
        "v2",
        OCI_MANIFEST,
        &api.send(api.req(M::GET, &format!("/v2/{repo}/manifests/v1")))
            .bytes()
            .expect("body"),
    );

    let pushed = events.try_recv().expect("push event");
    assert_eq!(pushed.action, slipway_registry::EventAction::Push);
    assert_eq!(pushed.target.digest, digest);
    assert_eq!(pushed.target.tag.as_deref(), Some("v1"));
    assert_eq!(pushed.actor, "admin");

    // Tag delete leaves the manifest and the other tag.
    let del_tag = api.send(api.req(M::DELETE, &format!("/v2/{repo}/manifests/v1")));
    assert_eq!(del_tag.status(), StatusCode::ACCEPTED);
    let tags: serde_json::Value = api
        .send(api.req(M::GET, &format!("/v2/{repo}/tags/list")))
        .json()
        .expect("json");
    assert_eq!(tags["tags"], serde_json::json!(["v2"]));
    let by_digest = api.send(api.req(M::HEAD, &format!("/v2/{repo}/manifests/{digest}")));
    assert_eq!(by_digest.status(), StatusCode::OK);

    // Manifest delete removes it and its tags.
    let del = api.send(api.req(M::DELETE, &format!("/v2/{repo}/manifests/{digest}")));
    assert_eq!(del.status(), StatusCode::ACCEPTED);
    let gone = api.send(api.req(M::GET, &format!("/v2/{repo}/manifests/v2")));
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    let again = api.send(api.req(M::DELETE, &format!("/v2/{repo}/manifests/{digest}")));
    assert_eq!(again.status(), StatusCode::NOT_FOUND);

    let blob = api.push_blob(&repo, b"to delete");
    let del_blob = api.send(api.req(M::DELETE, &format!("/v2/{repo}/blobs/{blob}")));
    assert_eq!(del_blob.status(), StatusCode::ACCEPTED);
    let head = api.send(api.req(M::HEAD, &format!("/v2/{repo}/blobs/{blob}")));
    assert_eq!(head.status(), StatusCode::NOT_FOUND);

    let mut deletes = Vec::new();
    while let Ok(event) = events.try_recv() {
        if event.action == slipway_registry::EventAction::Delete {
            deletes.push(event);
        }
    }
    assert_eq!(deletes.len(), 3, "{deletes:?}");
    assert_eq!(deletes[0].target.tag.as_deref(), Some("v1"));
    assert_eq!(deletes[2].target.digest, blob);
}
