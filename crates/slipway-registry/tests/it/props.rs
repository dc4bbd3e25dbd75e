//! Property tests of what parses untrusted input: manifests, `Content-Range`, `Range`,
//! digests, repository names. Nothing may panic, and what is valid must round-trip.

use proptest::prelude::*;
use slipway_registry::Digest;
use slipway_registry::digest::Algorithm;
use slipway_registry::manifest::{self, Kind};
use slipway_registry::name::{RepoName, valid_tag};
use slipway_registry::range::{ContentRange, resolve_request_range};

fn digest_strategy() -> impl Strategy<Value = Digest> {
    (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(long, data)| {
        let alg = if long {
            Algorithm::Sha512
        } else {
            Algorithm::Sha256
        };
        Digest::of(alg, &data)
    })
}

fn descriptor(media_type: &str, digest: &Digest, size: u64) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": digest.to_string(), "size": size})
}

/// Arbitrary JSON, a few levels deep, with manifest-like keys likely.
fn json_strategy() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        "[a-z0-9:./+-]{0,20}".prop_map(serde_json::Value::String),
        Just(serde_json::json!(2)),
        Just(serde_json::json!(manifest::OCI_MANIFEST)),
        Just(serde_json::json!(manifest::DOCKER_MANIFEST_LIST)),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            proptest::collection::vec(
                (
                    prop_oneof![
                        Just("schemaVersion".to_string()),
                        Just("mediaType".to_string()),
                        Just("config".to_string()),
                        Just("layers".to_string()),
                        Just("manifests".to_string()),
                        Just("subject".to_string()),
                        Just("digest".to_string()),
                        Just("size".to_string()),
                        "[a-z]{1,8}",
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn manifest_parse_never_panics_on_bytes(body in proptest::collection::vec(any::<u8>(), 0..512),
                                            ct in proptest::option::of("[ -~]{0,60}")) {
        let _ = manifest::parse(&body, ct.as_deref());
    }

    #[test]
    fn manifest_parse_never_panics_on_json(value in json_strategy(),
                                           ct in proptest::option::of(prop_oneof![
                                               Just(manifest::OCI_MANIFEST.to_string()),
                                               Just(manifest::OCI_INDEX.to_string()),
                                               Just(manifest::DOCKER_MANIFEST.to_string()),
                                               Just("application/json".to_string())])) {
        let body = serde_json::to_vec(&value).expect("json");
        let _ = manifest::parse(&body, ct.as_deref());
    }

    #[test]
    fn image_manifests_round_trip(config in digest_strategy(),
                                  layers in proptest::collection::vec((digest_strategy(), 0u64..1 << 40), 0..6),
                                  subject in proptest::option::of(digest_strategy()),
                                  docker in any::<bool>(),
                                  with_header in any::<bool>()) {
        let media_type = if docker { manifest::DOCKER_MANIFEST } else { manifest::OCI_MANIFEST };
        let mut value = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config, 7),
            "layers": layers.iter().map(|(d, s)| descriptor("application/vnd.oci.image.layer.v1.tar", d, *s)).collect::<Vec<_>>(),
        });
        if let Some(s) = &subject {
            value["subject"] = descriptor(manifest::OCI_MANIFEST, s, 1);
        }
        let body = serde_json::to_vec_pretty(&value).expect("json");
        let parsed = manifest::parse(&body, with_header.then_some(media_type)).expect("valid manifest");
        prop_assert_eq!(parsed.kind, Kind::Image);
        prop_assert_eq!(parsed.media_type.as_str(), media_type);
        let mut expected = vec![config.clone()];
        expected.extend(layers.iter().map(|(d, _)| d.clone()));
        let got: Vec<Digest> = parsed.blobs.iter().map(|b| b.digest.clone()).collect();
        prop_assert_eq!(got, expected);
        let sizes: Vec<u64> = parsed.blobs.iter().skip(1).map(|b| b.size).collect();
        prop_assert_eq!(sizes, layers.iter().map(|(_, s)| *s).collect::<Vec<_>>());
        prop_assert_eq!(parsed.subject.map(|s| s.digest), subject);
        prop_assert_eq!(parsed.artifact_type.as_deref(), Some("application/vnd.oci.image.config.v1+json"));
    }

    #[test]
    fn indexes_round_trip(children in proptest::collection::vec(digest_strategy(), 0..8), docker in any::<bool>()) {
        let media_type = if docker { manifest::DOCKER_MANIFEST_LIST } else { manifest::OCI_INDEX };
        let value = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": children.iter().map(|d| {
                let mut v = descriptor(manifest::OCI_MANIFEST, d, 10);
                v["platform"] = serde_json::json!({"os": "linux", "architecture": "amd64"});
                v
            }).collect::<Vec<_>>(),
        });
        let parsed = manifest::parse(&serde_json::to_vec(&value).expect("json"), None).expect("valid index");
        prop_assert_eq!(parsed.kind, Kind::Index);
        prop_assert_eq!(parsed.media_type.as_str(), media_type);
        prop_assert!(parsed.blobs.is_empty());
        let got: Vec<Digest> = parsed.manifests.into_iter().map(|m| m.digest).collect();
        prop_assert_eq!(got, children);
    }

    #[test]
    fn content_range_never_panics(text in "[ -~]{0,40}") {
        if let Ok(range) = ContentRange::parse(&text) {
            prop_assert!(range.start <= range.end);
            prop_assert!(range.byte_count() > 0);
        }
    }

    #[test]
    fn content_range_round_trips(start in any::<u64>(), len in 0u64..u64::MAX, form in 0..4usize) {
        let end = start.saturating_add(len);
        let text = match form {
            0 => format!("{start}-{end}"),
            1 => format!("bytes {start}-{end}/*"),
            2 => format!("bytes {start}-{end}/{}", end.saturating_add(1)),
            _ => format!("bytes={start}-{end}"),
        };
        let range = ContentRange::parse(&text).expect("valid range");
        prop_assert_eq!(range, ContentRange { start, end });
        prop_assert_eq!(ContentRange::parse(&range.to_string()).expect("display parses"), range);
    }

    #[test]
    fn backwards_ranges_are_refused(start in 1u64.., back in 1u64..) {
        let end = start.saturating_sub(back);
        prop_assume!(end < start);
        let text = format!("{start}-{end}");
        prop_assert!(ContentRange::parse(&text).is_err());
    }

    #[test]
    fn request_ranges_stay_inside_the_blob(text in "bytes=[0-9]{0,6}-[0-9]{0,6}", size in 0u64..2_000_000) {
        if let Some(Ok(range)) = resolve_request_range(&text, size) {
            prop_assert!(range.start <= range.end);
            prop_assert!(range.end < size);
        }
    }

    #[test]
    fn digests_round_trip_and_junk_is_refused(d in digest_strategy(), junk in "[ -~]{0,80}") {
        let text = d.to_string();
        prop_assert_eq!(text.parse::<Digest>().expect("valid digest"), d);
        if let Ok(parsed) = junk.parse::<Digest>() {
            prop_assert_eq!(parsed.to_string(), junk);
        }
    }

    #[test]
    fn repository_names_accept_the_grammar(parts in proptest::collection::vec("[a-z0-9]{1,5}((\\.|_|__|-{1,3})[a-z0-9]{1,5}){0,2}", 1..5)) {
        let name = parts.join("/");
        prop_assume!(name.len() <= 255);
        let parsed = RepoName::parse(&name).expect("valid name");
        prop_assert_eq!(parsed.as_str(), name.as_str());
    }

    #[test]
    fn accepted_names_and_tags_are_safe_path_components(text in "[ -~]{0,40}") {
        if RepoName::parse(&text).is_some() {
            prop_assert!(!text.starts_with('/') && !text.ends_with('/'));
            prop_assert!(!text.split('/').any(|p| p.is_empty() || p == "." || p == ".." || p.starts_with('_') || p.starts_with('.')));
        }
        if valid_tag(&text) {
            prop_assert!(!text.contains('/') && !text.starts_with('.') && !text.starts_with('-'));
        }
    }
}
