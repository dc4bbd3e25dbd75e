//! The generic JSON trigger.

use serde_json::{Value, json};
use slipway_server::webhook::{self, Parsed, Provider, WebhookError};
use slipway_spec::BuildEvent;

use crate::{KEY, build, headers, hmac_hex};

const SHA: &str = "4522cbcefc20728a5b72b3a86af35e608622c514";

fn trigger(body: &Value) -> Result<Parsed, WebhookError> {
    let body = serde_json::to_vec(body).expect("JSON");
    webhook::parse(
        Provider::Generic,
        &headers(&[("Idempotency-Key", "run-7")]),
        &body,
    )
}

fn malformed(body: &Value) -> String {
    match trigger(body) {
        Err(err @ WebhookError::Malformed { .. }) => err.to_string(),
        other => panic!("expected malformed, got {other:?}"),
    }
}

#[test]
fn the_documented_example_builds_a_custom_event() {
    let body = json!({
        "repo": "team/app",
        "ref": "refs/heads/main",
        "commit": SHA,
        "event": "custom",
        "before": "",
        "message": "deploy from nightly job",
        "link": "https://ci.example/run/7",
        "author": "nightly",
        "author_name": "", "author_email": "", "author_avatar": "",
        "clone_url": "",
        "params": {"TARGET": "staging", "REPLICAS": 2, "DRY_RUN": false, "UNSET": null}
    });
    let hook = build(trigger(&body));
    assert_eq!(hook.provider, Provider::Generic);
    assert_eq!(hook.event, BuildEvent::Custom);
    assert_eq!(hook.reference, "refs/heads/main");
    assert_eq!(hook.branch.as_deref(), Some("main"));
    assert_eq!(hook.commit, SHA);
    assert_eq!(hook.author, "nightly");
    assert_eq!(hook.message, "deploy from nightly job");
    assert_eq!(hook.clone_url, "");
    assert_eq!(hook.delivery_id.as_deref(), Some("run-7"));
    let params: Vec<(&str, &str)> = hook
        .params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        params,
        [
            ("DRY_RUN", "false"),
            ("REPLICAS", "2"),
            ("TARGET", "staging")
        ]
    );
    assert!(!hook.skip_ci());
    assert_eq!(
        hook.context().params.get("TARGET").map(String::as_str),
        Some("staging")
    );
}

#[test]
fn events_and_refs() {
    let hook = build(trigger(
        &json!({"repo": "a/b", "ref": "develop", "commit": SHA}),
    ));
    assert_eq!(
        (hook.event, hook.reference.as_str()),
        (BuildEvent::Custom, "refs/heads/develop")
    );
    let hook = build(trigger(
        &json!({"repo": "a/b", "ref": "develop", "commit": SHA, "event": "push",
        "message": "[skip ci]"}),
    ));
    assert_eq!(
        (hook.event, hook.branch.as_deref()),
        (BuildEvent::Push, Some("develop"))
    );
    assert!(hook.skip_ci());
    let hook = build(trigger(
        &json!({"repo": "a/b", "ref": "refs/tags/v1.2.3", "commit": SHA, "event": "tag"}),
    ));
    assert_eq!(
        (hook.event, hook.tag.as_deref(), hook.branch),
        (BuildEvent::Tag, Some("v1.2.3"), None)
    );
    let hook = build(trigger(
        &json!({"repo": "a/b", "ref": "refs/pull/4/head", "commit": SHA}),
    ));
    assert_eq!((hook.branch, hook.tag), (None, None));
}

#[test]
fn mistakes_are_named() {
    let cases = [
        (
            json!({"ref": "main", "commit": SHA}),
            "generic trigger payload has no `repo`",
        ),
        (json!({"repo": "a/b", "commit": SHA}), "has no `ref`"),
        (json!({"repo": "a/b", "ref": "main"}), "has no `commit`"),
        (
            json!({"repo": "a/b", "ref": "main", "commit": "abc"}),
            "`commit` = `abc`, which is not a commit sha",
        ),
        (
            json!({"repo": "a/b", "ref": "main", "commit": "0".repeat(40)}),
            "all zeros",
        ),
        (
            json!({"repo": "a/b", "ref": "../etc", "commit": SHA}),
            "not a valid git ref",
        ),
        (
            json!({"repo": "a/b", "ref": "a b", "commit": SHA}),
            "not a valid git ref",
        ),
        (
            json!({"repo": "a/b", "ref": "main", "commit": SHA, "event": "pull_request"}),
            "expected `custom`, `push` or `tag`",
        ),
        (
            json!({"repo": "a/b", "ref": "refs/tags/v1", "commit": SHA, "event": "push"}),
            "is not a branch",
        ),
        (
            json!({"repo": "a/b", "ref": "main", "commit": SHA, "event": "tag"}),
            "is not a tag",
        ),
        (
            json!({"repo": "a/b", "ref": "main", "commit": SHA, "message": 5}),
            "`message` as a number",
        ),
        (
            json!({"repo": "a/b", "ref": "main", "commit": SHA, "before": "xyz"}),
            "`before` = `xyz`",
        ),
        (
            json!({"repo": "a/b", "ref": "main", "commit": SHA, "params": [1]}),
            "`params` as an array",
        ),
        (
            json!({"repo": "a/b", "ref": "main", "commit": SHA, "params": {"1X": "v"}}),
            "parameter named `1X`",
        ),
        (
            json!({"repo": "a/b", "ref": "main", "commit": SHA, "params": {"A-B": "v"}}),
            "parameter named `A-B`",
        ),
        (
            json!({"repo": "a/b", "ref": "main", "commit": SHA, "params": {"X": {"y": 1}}}),
            "`params.X` as an object",
        ),
    ];
    for (body, needle) in cases {
        let message = malformed(&body);
        assert!(message.contains(needle), "{body}: {message}");
    }
}

#[test]
fn the_trigger_is_signed_and_names_its_repository() {
    let body = serde_json::to_vec(&json!({"repo": "team/app", "ref": "main", "commit": SHA}))
        .expect("JSON");
    assert_eq!(
        webhook::repository(Provider::Generic, &body),
        Ok(Some("team/app".to_owned()))
    );
    let signed = headers(&[(
        "X-Slipway-Signature",
        &format!("sha256={}", hmac_hex(KEY, &body)),
    )]);
    assert_eq!(
        webhook::verify(Provider::Generic, &signed, &body, KEY),
        Ok(())
    );
    assert_eq!(webhook::repository(Provider::Generic, b"{}"), Ok(None));
}
