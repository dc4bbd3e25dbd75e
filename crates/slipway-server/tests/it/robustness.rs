//! Nothing panics, whatever the body and headers.

use proptest::prelude::*;
use serde_json::{Map, Value};
use slipway_server::webhook::{self, Provider};

use crate::KEY;

const PROVIDERS: [Provider; 4] = [
    Provider::GitHub,
    Provider::Gitea,
    Provider::GitLab,
    Provider::Generic,
];

/// Every header the module reads.
const HEADER_NAMES: &[&str] = &[
    "X-GitHub-Event",
    "X-Gitea-Event",
    "X-Forgejo-Event",
    "X-Gogs-Event",
    "X-Gitlab-Event",
    "X-Hub-Signature-256",
    "X-Gitea-Signature",
    "X-Forgejo-Signature",
    "X-Gogs-Signature",
    "X-Gitlab-Token",
    "X-Slipway-Signature",
    "X-GitHub-Delivery",
    "X-Gitea-Delivery",
    "Idempotency-Key",
    "X-Gitlab-Event-UUID",
    "X-Request-Id",
];

fn exercise(headers: &[(String, String)], body: &[u8]) {
    for provider in PROVIDERS {
        let _ = webhook::verify(provider, headers, body, KEY);
        let _ = webhook::repository(provider, body);
        let _ = webhook::delivery_id(provider, headers);
        if let Ok(webhook::Parsed::Build(hook)) = webhook::parse(provider, headers, body) {
            let _ = hook.skip_ci();
            let _ = hook.context().variables();
        }
    }
    let _ = Provider::detect(headers);
}

/// Header values: event names that exist, signatures of the right shape, and anything.
fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "push",
            "pull_request",
            "create",
            "delete",
            "ping",
            "Push Hook",
            "Tag Push Hook",
            "Merge Request Hook",
            "System Hook",
            "sha256=",
            "sha256=zz",
            "",
        ])
        .prop_map(str::to_owned),
        "(sha256=)?[0-9a-fA-F]{0,70}",
        any::<String>(),
    ]
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(
        (
            prop::sample::select(HEADER_NAMES).prop_map(str::to_owned),
            header_value(),
        ),
        0..8,
    )
}

/// JSON with the keys the parsers look for and values of every type, so that the
/// type-mismatch paths are reached.
fn jsonish() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(vec![
            "refs/heads/main",
            "refs/tags/v1",
            "refs/notes/x",
            "main",
            "refs/heads/..",
            "0000000000000000000000000000000000000000",
            "4522cbcefc20728a5b72b3a86af35e608622c514",
            "opened",
            "synchronize",
            "synchronized",
            "open",
            "update",
            "tag",
            "branch",
            "push",
            "merge_request",
            "[skip ci]",
            "",
            "é",
        ])
        .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    let keys = prop::sample::select(vec![
        "ref",
        "before",
        "after",
        "created",
        "deleted",
        "forced",
        "base_ref",
        "ref_type",
        "action",
        "number",
        "pull_request",
        "head",
        "base",
        "sha",
        "repo",
        "repository",
        "full_name",
        "clone_url",
        "head_commit",
        "commits",
        "id",
        "message",
        "author",
        "username",
        "object_kind",
        "object_attributes",
        "iid",
        "oldrev",
        "last_commit",
        "source_branch",
        "target_branch",
        "project",
        "path_with_namespace",
        "git_http_url",
        "checkout_sha",
        "commit",
        "event",
        "params",
        "source_project_id",
        "target_project_id",
    ]);
    leaf.prop_recursive(5, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((keys.clone(), inner), 0..8).prop_map(|pairs| {
                Value::Object(
                    pairs
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_and_headers_do_not_panic(body in prop::collection::vec(any::<u8>(), 0..512), headers in headers()) {
        exercise(&headers, &body);
    }

    #[test]
    fn arbitrary_json_does_not_panic(value in jsonish(), headers in headers()) {
        let body = serde_json::to_vec(&value).expect("serializable");
        exercise(&headers, &body);
    }
}

/// Deeply nested JSON is refused, not a stack overflow.
#[test]
fn deep_nesting_is_an_error() {
    let body = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let headers = [("X-GitHub-Event".to_owned(), "push".to_owned())];
    for provider in PROVIDERS {
        assert!(webhook::parse(provider, &headers, body.as_bytes()).is_err());
    }
}
