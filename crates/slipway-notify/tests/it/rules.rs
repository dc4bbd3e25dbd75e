//! Events from build outcomes, and rules matching them.

use slipway_notify::rules::{Event, Rule, glob, parse_events};
use slipway_notify::template::{Context, Deploy};

fn context(repo: &str, branch: &str) -> Context {
    let mut context = Context::default();
    context.repo.full_name = repo.into();
    context.build.branch = branch.into();
    context
}

#[test]
fn fixed_and_broken_follow_the_previous_outcome() {
    assert_eq!(Event::for_build("success", None), vec![Event::BuildSuccess]);
    assert_eq!(
        Event::for_build("success", Some("failure")),
        vec![Event::BuildSuccess, Event::BuildFixed]
    );
    assert_eq!(
        Event::for_build("success", Some("error")),
        vec![Event::BuildSuccess, Event::BuildFixed]
    );
    assert_eq!(
        Event::for_build("failure", Some("success")),
        vec![Event::BuildFailure, Event::BuildBroken]
    );
    assert_eq!(
        Event::for_build("failure", Some("failure")),
        vec![Event::BuildFailure]
    );
    assert_eq!(
        Event::for_build("killed", Some("success")),
        vec![Event::BuildKilled]
    );
    assert_eq!(Event::for_build("running", None), vec![]);
    assert_eq!(
        Event::for_deploy("rolled_back"),
        Some(Event::DeployRolledBack)
    );
    assert_eq!(Event::for_deploy("pending"), None);
}

#[test]
fn event_names_and_wildcards() {
    let events = parse_events(&[
        "build.failure".into(),
        "deploy.*".into(),
        "build.failure".into(),
    ])
    .expect("known");
    assert_eq!(
        events,
        vec![
            Event::BuildFailure,
            Event::DeployStarted,
            Event::DeploySucceeded,
            Event::DeployFailed,
            Event::DeployRolledBack
        ]
    );
    assert_eq!(parse_events(&["build.*".into()]).expect("known").len(), 6);
    let error = parse_events(&["build.failed".into()]).expect_err("unknown");
    assert!(error.to_string().contains("unknown event `build.failed`"));
    for event in Event::ALL {
        assert_eq!(event.as_str().parse::<Event>(), Ok(event));
    }
}

#[test]
fn rules_filter_by_repo_branch_environment_and_event() {
    let rule = Rule {
        repo: Some("acme/*".into()),
        branch: Some("release-?.*".into()),
        environment: None,
        events: vec![Event::BuildFailure, Event::BuildFixed],
    };
    assert!(rule.matches(Event::BuildFailure, &context("acme/app", "release-1.2")));
    assert!(!rule.matches(Event::BuildSuccess, &context("acme/app", "release-1.2")));
    assert!(!rule.matches(Event::BuildFailure, &context("other/app", "release-1.2")));
    assert!(!rule.matches(Event::BuildFailure, &context("acme/app", "main")));

    let everything = Rule::default();
    assert!(everything.matches(Event::DeployStarted, &context("x/y", "")));

    let production = Rule {
        environment: Some("prod*".into()),
        ..Rule::default()
    };
    let mut deploy = context("acme/app", "main");
    assert!(!production.matches(Event::BuildSuccess, &deploy));
    deploy.deploy = Some(Deploy {
        environment: "production".into(),
        ..Deploy::default()
    });
    assert!(production.matches(Event::DeploySucceeded, &deploy));
    deploy.deploy = Some(Deploy {
        environment: "staging".into(),
        ..Deploy::default()
    });
    assert!(!production.matches(Event::DeploySucceeded, &deploy));
}

#[test]
fn globs() {
    assert!(glob("*", ""));
    assert!(glob("a*b*c", "axxbyyc"));
    assert!(!glob("a*b*c", "axxbyy"));
    assert!(glob("feature/*", "feature/x/y"));
    assert!(!glob("main", "main2"));
    assert!(glob("v?.*", "v1.20"));
    // No exponential blow-up on a pattern of many stars.
    let text = "a".repeat(200);
    assert!(!glob(&format!("{}b", "a*".repeat(30)), &text));
}
