//! skopeo (Debian's) copying OCI images and indexes in and out of the registry.

use std::path::Path;
use std::process::Command;

use crate::support::{
    ADMIN_TOKEN, Docker, TestServer, assert_files_named_by_digest, client, run, sha256, text,
    unique,
};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn skopeo(args: &[&str]) -> String {
    let out = run(Command::new("skopeo").args(args));
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An OCI layout at `dir` holding the busybox test image as tag `v1`; returns the manifest.
fn oci_layout(dir: &Path) -> (String, Vec<u8>) {
    let docker = Docker::new();
    let archive = dir.join("image.tar");
    docker.ok(&[
        "save",
        "slipway-test/busybox:latest",
        "-o",
        archive.to_str().expect("utf-8 path"),
    ]);
    let layout = dir.join("layout");
    skopeo(&[
        "copy",
        &format!("docker-archive:{}", archive.display()),
        &format!("oci:{}:v1", layout.display()),
    ]);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("json");
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .expect("digest")
        .to_string();
    let hex = digest.trim_start_matches("sha256:");
    let manifest = std::fs::read(layout.join("blobs/sha256").join(hex)).expect("manifest blob");
    (digest, manifest)
}

fn write_blob(layout: &Path, data: &[u8]) -> String {
    let digest = sha256(data);
    std::fs::write(layout.join("blobs/sha256").join(digest.hex()), data).expect("write blob");
    digest.to_string()
}

#[test]
fn skopeo_copies_an_oci_image_in_and_out_byte_exact() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let (digest, manifest) = oci_layout(dir.path());
    let target = format!("docker://{}/skopeo/img-{}:v1", server.host(), unique());
    let creds = format!("admin:{ADMIN_TOKEN}");
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &format!("oci:{}:v1", dir.path().join("layout").display()),
        &target,
    ]);
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        &creds,
        &target,
    ]);
    assert_eq!(
        raw.as_bytes(),
        manifest.as_slice(),
        "manifest not stored byte-exact"
    );

    let back = dir.path().join("back");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        &creds,
        &target,
        &format!("oci:{}:v1", back.display()),
    ]);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(back.join("index.json")).expect("index.json"))
            .expect("json");
    assert_eq!(index["manifests"][0]["digest"], digest);
    assert_eq!(index["manifests"][0]["mediaType"], OCI_MANIFEST);
    // Every blob came back identical.
    assert_files_named_by_digest(&back.join("blobs/sha256"), "sha256");
}

#[test]
fn skopeo_copies_an_oci_index_with_two_manifests() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let (digest, manifest) = oci_layout(dir.path());
    let layout = dir.path().join("layout");
    // A second manifest: the same image with an annotation (a different digest).
    let mut second: serde_json::Value = serde_json::from_slice(&manifest).expect("manifest json");
    second["annotations"] = serde_json::json!({"org.example.variant": "arm64"});
    let second = serde_json::to_vec(&second).expect("json");
    let second_digest = write_blob(&layout, &second);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": digest, "size": manifest.len(),
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": second_digest, "size": second.len(),
             "platform": {"architecture": "arm64", "os": "linux"}},
        ],
    }))
    .expect("json");
    let index_digest = write_blob(&layout, &index);
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": OCI_INDEX, "digest": index_digest, "size": index.len(),
                       "annotations": {"org.opencontainers.image.ref.name": "multi"}}],
    });
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&top).expect("json"),
    )
    .expect("write index.json");

    let repo = format!("skopeo/index-{}", unique());
    let creds = format!("admin:{ADMIN_TOKEN}");
    skopeo(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &format!("oci:{}:multi", layout.display()),
        &format!("docker://{}/{repo}:multi", server.host()),
    ]);

    let http = client();
    let get = http
        .get(server.url(&format!("/v2/{repo}/manifests/multi")))
        .basic_auth("admin", Some(ADMIN_TOKEN))
        .header("accept", OCI_INDEX)
        .send()
        .expect("request");
    assert_eq!(get.status(), reqwest::StatusCode::OK);
    assert_eq!(crate::api::header(&get, "content-type"), OCI_INDEX);
    assert_eq!(
        crate::api::header(&get, "docker-content-digest"),
        index_digest
    );
    assert_eq!(get.bytes().expect("body").to_vec(), index);
    for child in [&digest, &second_digest] {
        let head = http
            .head(server.url(&format!("/v2/{repo}/manifests/{child}")))
            .basic_auth("admin", Some(ADMIN_TOKEN))
            .send()
            .expect("request");
        assert_eq!(
            head.status(),
            reqwest::StatusCode::OK,
            "child {child} missing"
        );
    }

    // And back out as an index.
    let back = dir.path().join("back");
    skopeo(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        "--src-creds",
        &creds,
        &format!("docker://{}/{repo}:multi", server.host()),
        &format!("oci:{}:multi", back.display()),
    ]);
    let top: serde_json::Value =
        serde_json::from_slice(&std::fs::read(back.join("index.json")).expect("index.json"))
            .expect("json");
    assert_eq!(top["manifests"][0]["digest"], index_digest);
}
