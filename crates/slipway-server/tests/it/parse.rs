//! Deliveries written here: what is built, what is ignored and why, and the errors (400)
//! for bodies a host would not send.

use serde_json::{Value, json};
use slipway_server::webhook::{self, Headers, Parsed, Provider, WebhookError};
use slipway_spec::BuildEvent;

use crate::{build, headers, ignored};

const SHA: &str = "4522cbcefc20728a5b72b3a86af35e608622c514";
const OLD: &str = "9836a96a253cce25d17988fcf41b8c4205cf779f";
const ZERO: &str = "0000000000000000000000000000000000000000";

fn parse(provider: Provider, event: &str, body: &Value) -> Result<Parsed, WebhookError> {
    let header = match provider {
        Provider::GitHub => "X-GitHub-Event",
        Provider::Gitea => "X-Gitea-Event",
        Provider::GitLab => "X-Gitlab-Event",
        Provider::Generic => "X-Unused",
    };
    let body = serde_json::to_vec(body).expect("serializable");
    webhook::parse(provider, &headers(&[(header, event)]), &body)
}

fn malformed(parsed: Result<Parsed, WebhookError>) -> String {
    match parsed {
        Err(err @ WebhookError::Malformed { .. }) => {
            assert_eq!(err.status(), 400);
            err.to_string()
        }
        other => panic!("expected a malformed body, got {other:?}"),
    }
}

/// A GitHub-shaped push (GitHub and Gitea).
fn push(reference: &str, after: &str, message: &str) -> Value {
    json!({
        "ref": reference,
        "before": OLD,
        "after": after,
        "compare": "https://example.com/compare",
        "head_commit": {
            "id": after,
            "message": message,
            "url": "https://example.com/commit",
            "author": {"name": "Jane Doe", "email": "jane@example.com", "username": "jane"}
        },
        "pusher": {"name": "jane", "email": "jane@example.com"},
        "sender": {"login": "jane", "avatar_url": "https://example.com/jane.png"},
        "repository": {
            "full_name": "team/app",
            "clone_url": "https://example.com/team/app.git",
            "html_url": "https://example.com/team/app",
            "default_branch": "main"
        }
    })
}

fn pull_request(action: &str) -> Value {
    json!({
        "action": action,
        "number": 7,
        "pull_request": {
            "number": 7,
            "title": "Add a feature [skip ci]",
            "html_url": "https://example.com/team/app/pull/7",
            "user": {"login": "jane", "avatar_url": "https://example.com/jane.png"},
            "head": {"ref": "feature", "sha": SHA, "repo": {"full_name": "jane/app"}},
            "base": {"ref": "main", "sha": OLD, "repo": {"full_name": "team/app"}}
        },
        "sender": {"login": "jane"},
        "repository": {"full_name": "team/app", "clone_url": "https://example.com/team/app.git"}
    })
}

fn gitlab_push(kind: &str, reference: &str, after: &str) -> Value {
    json!({
        "object_kind": kind,
        "before": OLD,
        "after": after,
        "ref": reference,
        "checkout_sha": if after == ZERO { Value::Null } else { after.into() },
        "user_username": "jane",
        "user_name": "Jane Doe",
        "project": {
            "path_with_namespace": "group/sub/app",
            "git_http_url": "https://gitlab.example.com/group/sub/app.git",
            "web_url": "https://gitlab.example.com/group/sub/app"
        },
        "commits": [{"id": after, "message": "Fix it [CI SKIP]\n", "author": {"name": "Jane", "email": "j@example.com"}}]
    })
}

fn merge_request(action: &str, oldrev: Option<&str>) -> Value {
    let mut attributes = json!({
        "iid": 3,
        "action": action,
        "source_branch": "feature",
        "target_branch": "main",
        "title": "Feature",
        "url": "https://gitlab.example.com/group/app/-/merge_requests/3",
        "source_project_id": 1,
        "target_project_id": 2,
        "last_commit": {"id": SHA, "message": "m", "author": {"name": "J", "email": "j@example.com"}}
    });
    if let Some(oldrev) = oldrev {
        attributes["oldrev"] = oldrev.into();
    }
    json!({
        "object_kind": "merge_request",
        "user": {"username": "jane", "name": "Jane"},
        "project": {"path_with_namespace": "group/app", "git_http_url": "https://gitlab.example.com/group/app.git"},
        "object_attributes": attributes
    })
}

#[test]
fn github_push_builds_a_branch() {
    let hook = build(parse(
        Provider::GitHub,
        "push",
        &push("refs/heads/main", SHA, "Update"),
    ));
    assert_eq!(hook.event, BuildEvent::Push);
    assert_eq!(hook.branch.as_deref(), Some("main"));
    assert_eq!(hook.tag, None);
    assert_eq!(hook.commit, SHA);
    assert_eq!(hook.before, OLD);
    assert_eq!(hook.action, "");
    assert_eq!(hook.author, "jane");
    assert_eq!(hook.author_name, "Jane Doe");
    assert_eq!(hook.author_email, "jane@example.com");
    assert_eq!(hook.author_avatar, "https://example.com/jane.png");
    assert_eq!(hook.link, "https://example.com/compare");
    assert_eq!(hook.repo_link, "https://example.com/team/app");
    assert_eq!(hook.default_branch, "main");
    assert!(!hook.skip_ci());
    assert_eq!(hook.delivery_id, None);
}

#[test]
fn pushes_that_delete_or_touch_other_refs_are_ignored() {
    for provider in [Provider::GitHub, Provider::Gitea] {
        let reason = ignored(parse(provider, "push", &push("refs/heads/gone", ZERO, "")));
        assert!(reason.contains("deletes `refs/heads/gone`"), "{reason}");
        let reason = ignored(parse(
            provider,
            "push",
            &push("refs/notes/commits", SHA, ""),
        ));
        assert!(reason.contains("not a branch or a tag"), "{reason}");
    }
    let mut deleted = push("refs/heads/gone", SHA, "");
    deleted["deleted"] = true.into();
    ignored(parse(Provider::GitHub, "push", &deleted));
    let reason = ignored(parse(
        Provider::GitLab,
        "Push Hook",
        &gitlab_push("push", "refs/heads/x", ZERO),
    ));
    assert!(reason.contains("deletes"), "{reason}");
    ignored(parse(
        Provider::GitLab,
        "Tag Push Hook",
        &gitlab_push("tag_push", "refs/tags/v1", ZERO),
    ));
}

#[test]
fn gitea_tags_build_once_from_the_push_not_the_create() {
    let mut body = push("refs/tags/v1.0.0", SHA, "Release");
    body["before"] = ZERO.into();
    body.as_object_mut().expect("object").remove("compare");
    body["compare_url"] = "https://gitea.example.com/compare".into();
    let hook = build(parse(Provider::Gitea, "push", &body));
    assert_eq!(hook.event, BuildEvent::Tag);
    assert_eq!(hook.tag.as_deref(), Some("v1.0.0"));
    assert_eq!(hook.branch, None);
    assert_eq!(hook.reference, "refs/tags/v1.0.0");
    assert_eq!(hook.action, "created");
    assert_eq!(hook.link, "https://gitea.example.com/compare");

    let create = json!({"ref": "v1.0.0", "ref_type": "tag", "sha": SHA,
        "repository": {"full_name": "team/app", "clone_url": "https://example.com/team/app.git"}});
    let reason = ignored(parse(Provider::Gitea, "create", &create));
    assert!(reason.contains("push to `refs/tags/v1.0.0`"), "{reason}");
    let reason = ignored(parse(Provider::GitHub, "create", &create));
    assert!(reason.contains("GitHub's push"), "{reason}");
}

#[test]
fn github_tags_take_the_branch_from_base_ref() {
    let mut body = push("refs/tags/v2", SHA, "Release");
    body["base_ref"] = "refs/heads/release".into();
    body["created"] = true.into();
    let hook = build(parse(Provider::GitHub, "push", &body));
    assert_eq!(
        (hook.event, hook.branch.as_deref()),
        (BuildEvent::Tag, Some("release"))
    );
    assert_eq!(hook.action, "created");
}

#[test]
fn pull_request_actions() {
    for (provider, action) in [
        (Provider::GitHub, "opened"),
        (Provider::GitHub, "synchronize"),
        (Provider::GitHub, "reopened"),
        (Provider::Gitea, "opened"),
        (Provider::Gitea, "synchronized"),
        (Provider::Gitea, "reopened"),
    ] {
        let hook = build(parse(provider, "pull_request", &pull_request(action)));
        assert_eq!(hook.event, BuildEvent::PullRequest);
        assert_eq!(hook.action, action);
        assert_eq!(hook.reference, "refs/pull/7/head");
        assert_eq!(hook.branch.as_deref(), Some("main"));
        assert_eq!(
            (hook.source_branch.as_str(), hook.target_branch.as_str()),
            ("feature", "main")
        );
        assert_eq!(hook.pull_request, Some(7));
        assert_eq!(hook.source_repo, "jane/app");
        assert!(hook.from_fork);
        // `[skip ci]` in a PR title does not skip it.
        assert!(!hook.skip_ci());
    }
    for (provider, action) in [
        (Provider::GitHub, "closed"),
        (Provider::GitHub, "labeled"),
        (Provider::GitHub, "edited"),
        (Provider::GitHub, "assigned"),
        (Provider::Gitea, "closed"),
        (Provider::Gitea, "label_updated"),
    ] {
        let reason = ignored(parse(provider, "pull_request", &pull_request(action)));
        assert!(reason.contains(&format!("`{action}`")), "{reason}");
    }
    // The same repository: not a fork. Missing head repository: treated as one.
    let mut same = pull_request("opened");
    same["pull_request"]["head"]["repo"]["full_name"] = "Team/App".into();
    assert!(!build(parse(Provider::GitHub, "pull_request", &same)).from_fork);
    same["pull_request"]["head"]["repo"] = Value::Null;
    assert!(build(parse(Provider::GitHub, "pull_request", &same)).from_fork);
    // The number may only be inside `pull_request`.
    let mut inner = pull_request("opened");
    inner.as_object_mut().expect("object").remove("number");
    assert_eq!(
        build(parse(Provider::Gitea, "pull_request", &inner)).pull_request,
        Some(7)
    );
}

#[test]
fn gitlab_merge_request_actions() {
    for (action, oldrev) in [("open", None), ("reopen", None), ("update", Some(OLD))] {
        let hook = build(parse(
            Provider::GitLab,
            "Merge Request Hook",
            &merge_request(action, oldrev),
        ));
        assert_eq!(hook.event, BuildEvent::PullRequest);
        assert_eq!(hook.reference, "refs/merge-requests/3/head");
        assert_eq!(hook.commit, SHA);
        assert_eq!(hook.action, action);
        assert!(hook.from_fork, "project ids differ");
    }
    let reason = ignored(parse(
        Provider::GitLab,
        "Merge Request Hook",
        &merge_request("update", None),
    ));
    assert!(reason.contains("without `oldrev`"), "{reason}");
    ignored(parse(
        Provider::GitLab,
        "Merge Request Hook",
        &merge_request("update", Some("")),
    ));
    for action in ["close", "merge", "approved", "unapproved"] {
        let reason = ignored(parse(
            Provider::GitLab,
            "Merge Request Hook",
            &merge_request(action, None),
        ));
        assert!(reason.contains(action), "{reason}");
    }
}

#[test]
fn gitlab_pushes_tags_and_system_hooks() {
    let hook = build(parse(
        Provider::GitLab,
        "Push Hook",
        &gitlab_push("push", "refs/heads/main", SHA),
    ));
    assert_eq!(hook.repo, "group/sub/app");
    assert_eq!(hook.branch.as_deref(), Some("main"));
    assert_eq!(hook.author, "jane");
    assert!(hook.skip_ci(), "[CI SKIP] in any case");

    let tag = build(parse(
        Provider::GitLab,
        "Tag Push Hook",
        &gitlab_push("tag_push", "refs/tags/v1", SHA),
    ));
    assert_eq!(
        (tag.event, tag.tag.as_deref(), tag.branch.as_deref()),
        (BuildEvent::Tag, Some("v1"), None)
    );
    assert!(!tag.skip_ci(), "tags always build");

    let system = build(parse(
        Provider::GitLab,
        "System Hook",
        &gitlab_push("push", "refs/heads/main", SHA),
    ));
    assert_eq!(system.commit, SHA);
    let reason = ignored(parse(
        Provider::GitLab,
        "System Hook",
        &json!({"object_kind": "user_create"}),
    ));
    assert!(reason.contains("user_create"), "{reason}");
}

#[test]
fn skip_ci_markers() {
    for (message, skip) in [
        ("Fix typo [ci skip]", true),
        ("[skip ci] docs", true),
        ("Docs [Skip CI]", true),
        ("Skip CI", false),
        ("[skip-ci]", false),
        ("", false),
    ] {
        let hook = build(parse(
            Provider::GitHub,
            "push",
            &push("refs/heads/main", SHA, message),
        ));
        assert_eq!(hook.skip_ci(), skip, "{message}");
    }
    let tag = build(parse(
        Provider::GitHub,
        "push",
        &push("refs/tags/v1", SHA, "chore(release): 1.0.0 [skip ci]"),
    ));
    assert!(!tag.skip_ci());
}

#[test]
fn unsupported_events_are_ignored_with_a_reason() {
    let body = json!({"zen": "Design for failure.", "hook_id": 1});
    assert_eq!(
        ignored(parse(Provider::GitHub, "ping", &body)),
        "ping: nothing to build"
    );
    let reason = ignored(parse(Provider::GitHub, "issues", &body));
    assert!(
        reason.contains("`issues`") && reason.contains("push, pull_request"),
        "{reason}"
    );
    ignored(parse(Provider::GitHub, "delete", &body));
    ignored(parse(Provider::GitHub, "release", &body));
    ignored(parse(Provider::Gitea, "issue_comment", &body));
    ignored(parse(Provider::Gitea, "pull_request_approved", &body));
    let reason = ignored(parse(Provider::GitLab, "Note Hook", &body));
    assert!(reason.contains("Note Hook"), "{reason}");
    ignored(parse(Provider::GitLab, "Pipeline Hook", &body));
}

#[test]
fn missing_event_header_is_a_bad_request() {
    for provider in [Provider::GitHub, Provider::Gitea, Provider::GitLab] {
        let none: [(&str, &str); 0] = [];
        let err = webhook::parse(provider, &none, b"{}").expect_err("no event header");
        assert!(matches!(err, WebhookError::MissingEvent { .. }), "{err:?}");
        assert_eq!(err.status(), 400);
    }
}

#[test]
fn bodies_that_are_not_json_name_the_position() {
    let h = headers(&[("X-GitHub-Event", "push")]);
    let err = webhook::parse(
        Provider::GitHub,
        &h,
        b"{\"ref\": \"refs/heads/main\",\n oops}",
    )
    .expect_err("not JSON");
    assert_eq!(err.status(), 400);
    assert!(err.to_string().contains("line 2 column"), "{err}");
    let err = webhook::parse(Provider::GitHub, &h, b"payload=%7B%7D").expect_err("form");
    assert!(err.to_string().contains("application/json"), "{err}");
    let err = webhook::parse(Provider::GitHub, &h, b"[1, 2]").expect_err("array");
    assert!(
        err.to_string().contains("an array, expected a JSON object"),
        "{err}"
    );
    let err = webhook::parse(Provider::GitHub, &h, b"").expect_err("empty");
    assert_eq!(err.status(), 400);
    assert!(webhook::repository(Provider::GitHub, b"nope").is_err());
}

#[test]
fn missing_fields_are_named_by_their_path() {
    let mut body = push("refs/heads/main", SHA, "m");
    body.as_object_mut().expect("object").remove("after");
    let message = malformed(parse(Provider::GitHub, "push", &body));
    assert!(
        message.contains("GitHub push payload has no `after`"),
        "{message}"
    );

    let mut body = push("refs/heads/main", SHA, "m");
    body["after"] = 42.into();
    let message = malformed(parse(Provider::Gitea, "push", &body));
    assert!(
        message.contains("`after` as a number, expected a string"),
        "{message}"
    );

    let message = malformed(parse(
        Provider::GitHub,
        "push",
        &push("refs/heads/main", "abc123", "m"),
    ));
    assert!(
        message.contains("`after` = `abc123`, which is not a commit sha"),
        "{message}"
    );

    let message = malformed(parse(Provider::GitHub, "push", &push("main", SHA, "m")));
    assert!(message.contains("not a valid git ref"), "{message}");

    let mut body = push("refs/heads/main", SHA, "m");
    body["repository"]
        .as_object_mut()
        .expect("object")
        .remove("clone_url");
    let message = malformed(parse(Provider::GitHub, "push", &body));
    assert!(message.contains("`repository.clone_url`"), "{message}");

    let mut body = pull_request("opened");
    body["pull_request"]["head"]
        .as_object_mut()
        .expect("object")
        .remove("sha");
    let message = malformed(parse(Provider::GitHub, "pull_request", &body));
    assert!(
        message.contains("GitHub pull_request payload has no `pull_request.head.sha`"),
        "{message}"
    );

    let mut body = pull_request("opened");
    body["number"] = (-1).into();
    let message = malformed(parse(Provider::GitHub, "pull_request", &body));
    assert!(
        message.contains("`number` as a number, expected a positive integer"),
        "{message}"
    );

    let mut body = gitlab_push("push", "refs/heads/main", SHA);
    body.as_object_mut().expect("object").remove("project");
    let message = malformed(parse(Provider::GitLab, "Push Hook", &body));
    assert!(
        message.contains("`project.path_with_namespace`"),
        "{message}"
    );

    let mut body = merge_request("open", None);
    body["object_attributes"]
        .as_object_mut()
        .expect("object")
        .remove("iid");
    let message = malformed(parse(Provider::GitLab, "Merge Request Hook", &body));
    assert!(
        message.contains("GitLab merge request payload has no `object_attributes.iid`"),
        "{message}"
    );
}

#[test]
fn delivery_ids() {
    let body = serde_json::to_vec(&push("refs/heads/main", SHA, "m")).expect("JSON");
    type Case<'a> = (Provider, &'a [(&'a str, &'a str)], Option<&'a str>);
    let cases: &[Case] = &[
        (
            Provider::GitHub,
            &[
                ("X-GitHub-Event", "push"),
                ("X-GitHub-Delivery", "72d3162e-cc78"),
            ],
            Some("72d3162e-cc78"),
        ),
        (
            Provider::Gitea,
            &[("X-Gitea-Event", "push"), ("X-Gitea-Delivery", "g-1")],
            Some("g-1"),
        ),
        (
            Provider::Gitea,
            &[
                ("X-Forgejo-Event", "push"),
                ("X-Forgejo-Delivery", "f-1"),
                ("X-GitHub-Delivery", "f-1"),
            ],
            Some("f-1"),
        ),
        (
            Provider::GitHub,
            &[("X-GitHub-Event", "push"), ("X-GitHub-Delivery", "  ")],
            None,
        ),
    ];
    for (provider, pairs, want) in cases {
        let hook = build(webhook::parse(*provider, &headers(pairs), &body));
        assert_eq!(hook.delivery_id.as_deref(), *want, "{pairs:?}");
    }
    let gitlab = headers(&[
        ("X-Gitlab-Event-UUID", "uuid-1"),
        ("Idempotency-Key", "key-1"),
    ]);
    assert_eq!(
        webhook::delivery_id(Provider::GitLab, &gitlab).as_deref(),
        Some("key-1")
    );
    let gitlab = headers(&[("x-gitlab-event-uuid", "uuid-1")]);
    assert_eq!(
        webhook::delivery_id(Provider::GitLab, &gitlab).as_deref(),
        Some("uuid-1")
    );
    let generic = headers(&[("X-Request-Id", "r-1")]);
    assert_eq!(
        webhook::delivery_id(Provider::Generic, &generic).as_deref(),
        Some("r-1")
    );
    let long = "x".repeat(201);
    let too_long = headers(&[("X-GitHub-Delivery", long.as_str())]);
    assert_eq!(webhook::delivery_id(Provider::GitHub, &too_long), None);
}

#[test]
fn providers_are_detected_from_headers() {
    let detect = |pairs: &[(&str, &str)]| Provider::detect(&headers(pairs));
    // Gitea also sends X-GitHub-Event.
    assert_eq!(
        detect(&[("X-GitHub-Event", "push"), ("X-Gitea-Event", "push")]),
        Some(Provider::Gitea)
    );
    assert_eq!(
        detect(&[("x-forgejo-event", "push")]),
        Some(Provider::Gitea)
    );
    assert_eq!(
        detect(&[("X-GitHub-Event", "push")]),
        Some(Provider::GitHub)
    );
    assert_eq!(
        detect(&[("X-Gitlab-Event", "Push Hook")]),
        Some(Provider::GitLab)
    );
    assert_eq!(
        detect(&[("X-Slipway-Signature", "sha256=00")]),
        Some(Provider::Generic)
    );
    assert_eq!(detect(&[("Content-Type", "application/json")]), None);
    for provider in [
        Provider::GitHub,
        Provider::Gitea,
        Provider::GitLab,
        Provider::Generic,
    ] {
        assert_eq!(Provider::parse(provider.as_str()), Some(provider));
    }
    assert_eq!(Provider::parse("Forgejo"), Some(Provider::Gitea));
    assert_eq!(
        webhook::event_name(
            Provider::Gitea,
            &headers(&[
                ("X-GitHub-Event", "pull_request"),
                ("X-Gitea-Event", "push")
            ])
        ),
        Some("push")
    );
}

#[test]
fn headers_are_read_case_insensitively_from_any_list() {
    let array = [
        ("Content-Type", "application/json"),
        ("X-GitHub-Event", "push"),
    ];
    assert_eq!(array.header("x-github-event"), Some("push"));
    assert_eq!(array.as_slice().header("X-GITHUB-EVENT"), Some("push"));
    let owned = headers(&array);
    assert_eq!(owned.header("content-type"), Some("application/json"));
    let by_ref: &dyn Headers = &&owned;
    assert_eq!(by_ref.header("missing"), None);
}

#[test]
fn hooks_become_build_contexts() {
    let hook = build(parse(
        Provider::GitHub,
        "pull_request",
        &pull_request("synchronize"),
    ));
    let ctx = hook.context();
    assert_eq!(ctx.event, BuildEvent::PullRequest);
    assert_eq!(ctx.branch, "main");
    assert_eq!(ctx.pull_request, Some(7));
    assert_eq!(ctx.source_branch, "feature");
    assert_eq!(ctx.action, "synchronize");
    assert_eq!(ctx.trigger, "@hook");
    let vars = ctx.variables();
    assert_eq!(vars.get("DRONE_COMMIT_SHA").map(String::as_str), Some(SHA));
    assert_eq!(
        vars.get("DRONE_BUILD_EVENT").map(String::as_str),
        Some("pull_request")
    );
    assert_eq!(vars.get("DRONE_REPO").map(String::as_str), Some("team/app"));
}

#[test]
fn errors_say_what_and_map_to_statuses() {
    let cases = [
        (WebhookError::NoSecret, 401),
        (
            WebhookError::MissingSignature {
                provider: Provider::GitHub,
                header: "X-Hub-Signature-256",
            },
            401,
        ),
        (
            WebhookError::MalformedSignature {
                header: "X-Hub-Signature-256",
                reason: "r".into(),
            },
            401,
        ),
        (
            WebhookError::BadSignature {
                header: "X-Hub-Signature-256",
            },
            401,
        ),
        (
            WebhookError::MissingEvent {
                provider: Provider::GitLab,
                expected: "`X-Gitlab-Event`",
            },
            400,
        ),
        (
            WebhookError::Malformed {
                message: "m".into(),
            },
            400,
        ),
    ];
    for (err, status) in cases {
        assert_eq!(err.status(), status, "{err}");
        assert!(!err.to_string().is_empty());
    }
    let err = WebhookError::MissingEvent {
        provider: Provider::GitLab,
        expected: "`X-Gitlab-Event`",
    };
    assert_eq!(
        err.to_string(),
        "the GitLab delivery has no event header (expected `X-Gitlab-Event`)"
    );
}
