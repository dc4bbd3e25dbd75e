//! Every real delivery of `../shared/corpus/webhooks` against its `meta.json`.

use std::collections::BTreeMap;

use serde_json::Value;
use slipway_server::webhook::{self, Hook, Parsed, Provider};

use crate::{Case, corpus};

/// Our choice for each `"either"` case (Drone and Woodpecker disagree): `true` builds.
/// Gitea tags build from the push to `refs/tags/…` and not from `create` (Drone's way);
/// a GitLab merge request `update` without `oldrev` is an edit and is ignored
/// (Woodpecker's way). A new "either" case must be added here, with its reason.
const EITHER: &[(&str, bool)] = &[
    ("gitea/create_tag", false),
    ("gitea/create_tag_2", false),
    ("gitlab/merge_request_edited", false),
];

fn parse(case: &Case, event_header: &str) -> Result<Parsed, webhook::WebhookError> {
    let headers = [
        (event_header, case.event_header.as_str()),
        (delivery_header(case.provider), "delivery-1"),
    ];
    webhook::parse(case.provider, &headers, &case.body)
}

fn delivery_header(provider: Provider) -> &'static str {
    match provider {
        Provider::GitHub => "X-GitHub-Delivery",
        Provider::Gitea => "X-Gitea-Delivery",
        Provider::GitLab => "X-Gitlab-Event-UUID",
        Provider::Generic => "X-Request-Id",
    }
}

/// Every field of `expect` that names a value, compared with the hook.
fn compare(hook: &Hook, expect: &Value, fail: &mut dyn FnMut(String)) {
    let mut check = |field: &str, got: Value| {
        if let Some(want) = expect.get(field)
            && *want != got
        {
            fail(format!("{field}: got {got}, expected {want}"));
        }
    };
    let opt = |v: &Option<String>| v.clone().map_or(Value::Null, Value::String);
    check("event", hook.event.as_str().into());
    check("action", hook.action.clone().into());
    check("ref", hook.reference.clone().into());
    check("commit", hook.commit.clone().into());
    check("branch", opt(&hook.branch));
    check("tag", opt(&hook.tag));
    check("source_branch", hook.source_branch.clone().into());
    check("target_branch", hook.target_branch.clone().into());
    check(
        "pr_number",
        hook.pull_request.map_or(Value::Null, Value::from),
    );
    check("repo", hook.repo.clone().into());
    check("clone_url", hook.clone_url.clone().into());
    if hook.delivery_id.as_deref() != Some("delivery-1") {
        fail(format!("delivery id {:?}", hook.delivery_id));
    }
}

#[test]
fn corpus_deliveries_parse_as_expected() {
    let Some(cases) = corpus() else {
        return;
    };
    assert!(cases.len() >= 33, "corpus has {} cases", cases.len());
    let mut failures = Vec::new();
    // (provider, repo, tag) → cases that built it: a tag is built once.
    let mut tags: BTreeMap<(String, String, String), Vec<String>> = BTreeMap::new();
    for case in &cases {
        let mut fail = |msg: String| failures.push(format!("{}: {msg}", case.name));
        let parsed = parse(case, &case.header_name);
        let want_build = match &case.expect["build"] {
            Value::Bool(b) => *b,
            Value::String(s) if s == "either" => {
                match EITHER.iter().find(|(name, _)| *name == case.name) {
                    Some((_, choice)) => *choice,
                    None => {
                        fail("an \"either\" case with no documented choice in EITHER".into());
                        continue;
                    }
                }
            }
            other => {
                fail(format!("expect.build is {other}"));
                continue;
            }
        };
        match (&parsed, want_build) {
            (Ok(Parsed::Build(hook)), true) => {
                compare(hook, &case.expect, &mut fail);
                if let Some(tag) = &hook.tag {
                    tags.entry((
                        hook.provider.as_str().into(),
                        hook.repo.clone(),
                        tag.clone(),
                    ))
                    .or_default()
                    .push(case.name.clone());
                }
            }
            (Ok(Parsed::Ignored { reason }), false) => {
                if reason.is_empty() {
                    fail("ignored without a reason".into());
                }
            }
            (Ok(Parsed::Build(hook)), false) => fail(format!(
                "built {} {} at {}, expected to be ignored",
                hook.event.as_str(),
                hook.reference,
                hook.commit
            )),
            (Ok(Parsed::Ignored { reason }), true) => {
                fail(format!("ignored ({reason}), expected a build"))
            }
            (Err(e), _) => fail(format!("error: {e}")),
        }

        // Forgejo sends the same bodies under its own header name.
        if case.provider == Provider::Gitea {
            let forgejo = parse(case, "X-Forgejo-Event");
            if forgejo.as_ref().ok() != parsed.as_ref().ok() {
                fail(format!("as Forgejo: {forgejo:?}"));
            }
        }
        // The repository is found before the signature is checked.
        match webhook::repository(case.provider, &case.body) {
            Ok(Some(repo)) if Some(repo.as_str()) == case.expect["repo"].as_str() => {}
            other => fail(format!("repository(): {other:?}")),
        }
    }
    for ((provider, repo, tag), names) in &tags {
        if names.len() > 1 {
            failures.push(format!("{provider} {repo} tag {tag} built by {names:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every real body of a build becomes a `BuildContext` with the same facts.
#[test]
fn corpus_builds_make_contexts() {
    let Some(cases) = corpus() else {
        return;
    };
    for case in &cases {
        if let Ok(Parsed::Build(hook)) = parse(case, &case.header_name) {
            let ctx = hook.context();
            assert_eq!(ctx.event, hook.event, "{}", case.name);
            assert_eq!(ctx.commit, hook.commit, "{}", case.name);
            assert_eq!(ctx.reference, hook.reference, "{}", case.name);
            assert_eq!(ctx.repo, hook.repo, "{}", case.name);
            assert!(!hook.message.is_empty(), "{}: no message", case.name);
            assert!(!hook.author.is_empty(), "{}: no author", case.name);
        }
    }
}
