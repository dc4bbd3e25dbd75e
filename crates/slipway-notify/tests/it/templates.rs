//! Templates: Drone variable names, the objects, errors with line and column, the default
//! message as fallback, Handlebars-style plugin templates.

use std::collections::BTreeMap;

use slipway_notify::Status;
use slipway_notify::template::{self, Context};

fn context() -> Context {
    let vars: BTreeMap<String, String> = [
        ("DRONE_REPO", "acme/app"),
        ("DRONE_BUILD_NUMBER", "42"),
        ("DRONE_BUILD_STATUS", "failure"),
        ("DRONE_COMMIT_SHA", "0123456789abcdef0123"),
        ("DRONE_BRANCH", "develop"),
        ("DRONE_COMMIT_AUTHOR", "octocat"),
        ("DRONE_COMMIT_MESSAGE", "Fix the login page\n\nLonger text."),
        ("DRONE_BUILD_LINK", "http://ci.example.com/acme/app/42"),
        ("DRONE_BUILD_STARTED", "1700000000"),
        ("DRONE_BUILD_FINISHED", "1700000095"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Context::from_drone_env(&vars)
}

#[test]
fn drone_variables_and_objects() {
    let text = template::render(
        "{{ DRONE_REPO_NAME }} #{{ DRONE_BUILD_NUMBER }} by {{ DRONE_COMMIT_AUTHOR }}: {{ build.status }} on {{ repo.full_name }}{{ nothing.here }}",
        &context(),
    )
    .expect("renders");
    assert_eq!(text, "app #42 by octocat: failure on acme/app");
}

#[test]
fn an_error_has_line_and_column_and_the_default_is_sent() {
    let source = "line one\n  {{ build.number | nosuchfilter }}\n";
    let error = template::render(source, &context()).expect_err("unknown filter");
    assert_eq!(error.line, 2);
    assert!(error.column >= 3, "{error}");
    assert!(error.to_string().contains("line 2, column"), "{error}");
    let syntax = template::render("ok\n{% if %}", &context()).expect_err("syntax");
    assert_eq!(syntax.line, 2);

    let (message, error) = template::render_or_default(Some(source), &context());
    assert!(error.is_some());
    assert_eq!(message.title, "acme/app #42 failure");
    assert_eq!(message.text, "Fix the login page");
    assert_eq!(message.status, Some(Status::Failure));
    assert!(
        message
            .fields
            .iter()
            .any(|f| f.name == "Commit" && f.value == "01234567 (develop)")
    );
    assert!(
        message
            .fields
            .iter()
            .any(|f| f.name == "Duration" && f.value == "1m35s")
    );
    assert_eq!(
        message.link.map(|l| l.url),
        Some("http://ci.example.com/acme/app/42".to_string())
    );
}

#[test]
fn handlebars_plugin_templates() {
    let source = "{{#success build.status}}build {{build.number}} succeeded{{else}}build {{build.number}} failed{{/success}} ({{truncate build.commit 8}}, {{uppercasefirst build.author}})";
    let converted = template::from_handlebars(source);
    let text = template::render(&converted, &context()).expect("renders");
    assert_eq!(text, "build 42 failed (01234567, Octocat)");
}

#[test]
fn extra_names_merge_over_the_context() {
    let extra = serde_json::json!({
        "commit": { "author": { "name": "Octo Cat", "email": "octo@example.com" } },
        "repo": { "fullName": "acme/app" },
    });
    let source = template::from_handlebars(
        "{{ commit.author.name }} <{{ commit.author.email }}> {{ repo.fullName }} {{ commit.branch }} {{ truncate commit.sha 8 }} {{ repo.name }}",
    );
    let text = template::render_with(&source, &context(), &extra).expect("renders");
    assert_eq!(
        text,
        "Octo Cat <octo@example.com> acme/app develop 01234567 app"
    );
    // Without the extra names `commit.author` is appleboy's text.
    let plain = template::render("{{ commit.author }}", &context()).expect("renders");
    assert_eq!(plain, "octocat");
}
