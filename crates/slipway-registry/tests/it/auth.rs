//! Authentication and authorisation over HTTP: challenges, the token endpoint, scopes,
//! namespaces, anonymous pull, pipeline tokens.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::blocking::Response;
use slipway_registry::{Action, RepoPattern, Scope};

use crate::api::header;
use crate::support::{ADMIN_TOKEN, READER_TOKEN, ROBOT_TOKEN, TestServer, client, sha256};

/// The parameters of a `Bearer k="v",…` challenge.
fn challenge(response: &Response) -> Vec<(String, String)> {
    let value = header(response, "www-authenticate");
    let params = value.strip_prefix("Bearer ").expect("Bearer challenge");
    params
        .split("\",")
        .map(|p| {
            let (k, v) = p.split_once('=').expect("k=v");
            (k.to_string(), v.trim_matches('"').to_string())
        })
        .collect()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn code(response: Response) -> String {
    let body: serde_json::Value = response.json().expect("json");
    body["errors"][0]["code"]
        .as_str()
        .expect("code")
        .to_string()
}

fn token(server: &TestServer, user: Option<(&str, &str)>, scopes: &[&str]) -> Response {
    let mut url = server.url("/v2/token?service=slipway-registry");
    for s in scopes {
        url.push_str(&format!("&scope={s}"));
    }
    let mut req = client().get(url);
    if let Some((u, p)) = user {
        req = req.basic_auth(u, Some(p));
    }
    req.send().expect("token request")
}

fn token_string(response: Response) -> String {
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = response.json().expect("json");
    assert!(body["expires_in"].as_u64().expect("expires_in") > 0);
    body["token"].as_str().expect("token").to_string()
}

#[test]
fn base_endpoint_challenges_and_accepts_valid_credentials() {
    let server = TestServer::start();
    let http = client();
    let anonymous = http.get(server.url("/v2/")).send().expect("request");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        header(&anonymous, "docker-distribution-api-version"),
        "registry/2.0"
    );
    let params = challenge(&anonymous);
    assert_eq!(
        param(&params, "realm"),
        Some(server.url("/v2/token").as_str())
    );
    assert_eq!(param(&params, "service"), Some("slipway-registry"));

    let bad = http
        .get(server.url("/v2/"))
        .basic_auth("admin", Some("wrong"))
        .send()
        .expect("request");
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    assert!(bad.headers().contains_key("www-authenticate"));
    assert_eq!(code(bad), "UNAUTHORIZED");

    let good = http
        .get(server.url("/v2/"))
        .basic_auth("admin", Some(ADMIN_TOKEN))
        .send()
        .expect("request");
    assert_eq!(good.status(), StatusCode::OK);

    let bad_token = token(&server, Some(("admin", "wrong")), &[]);
    assert_eq!(bad_token.status(), StatusCode::UNAUTHORIZED);
    let forged = http
        .get(server.url("/v2/"))
        .bearer_auth("eyJhbGciOiJIUzI1NiJ9.e30.AAAA")
        .send()
        .expect("request");
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
}

#[test]
fn bearer_tokens_carry_the_granted_scopes_only() {
    let server = TestServer::start();
    let http = client();
    let blob = b"scoped";
    let digest = sha256(blob);

    // Anonymous push: 401 with the scope to ask for.
    let anonymous = http
        .post(server.url("/v2/ci/app/blobs/uploads/"))
        .send()
        .expect("request");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let params = challenge(&anonymous);
    assert_eq!(param(&params, "scope"), Some("repository:ci/app:pull,push"));

    // The robot gets push on ci/app but nothing on team/app.
    let robot = token_string(token(
        &server,
        Some(("robot", ROBOT_TOKEN)),
        &[
            "repository:ci/app:pull,push",
            "repository:team/app:pull,push",
        ],
    ));
    let upload = http
        .post(server.url(&format!("/v2/ci/app/blobs/uploads/?digest={digest}")))
        .bearer_auth(&robot)
        .body(blob.to_vec())
        .send()
        .expect("request");
    assert_eq!(upload.status(), StatusCode::CREATED);
    let denied = http
        .post(server.url("/v2/team/app/blobs/uploads/"))
        .bearer_auth(&robot)
        .send()
        .expect("request");
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    assert_eq!(code(denied), "DENIED");

    // A repository the token never asked for: challenge again with insufficient_scope.
    let unasked = http
        .get(server.url("/v2/ci/other/tags/list"))
        .bearer_auth(&robot)
        .send()
        .expect("request");
    assert_eq!(unasked.status(), StatusCode::UNAUTHORIZED);
    let params = challenge(&unasked);
    assert_eq!(param(&params, "error"), Some("insufficient_scope"));
    assert_eq!(param(&params, "scope"), Some("repository:ci/other:pull"));

    // A pull-only user asking for push gets pull only: push is 403.
    let reader = token_string(token(
        &server,
        Some(("reader", READER_TOKEN)),
        &["repository:ci/app:pull,push"],
    ));
    let read = http
        .head(server.url(&format!("/v2/ci/app/blobs/{digest}")))
        .bearer_auth(&reader)
        .send()
        .expect("request");
    assert_eq!(read.status(), StatusCode::OK);
    let write = http
        .post(server.url("/v2/ci/app/blobs/uploads/"))
        .bearer_auth(&reader)
        .send()
        .expect("request");
    assert_eq!(write.status(), StatusCode::FORBIDDEN);

    // Basic credentials work directly too, with the same permissions.
    let basic = http
        .post(server.url("/v2/team/app/blobs/uploads/"))
        .basic_auth("robot", Some(ROBOT_TOKEN))
        .send()
        .expect("request");
    assert_eq!(basic.status(), StatusCode::FORBIDDEN);
    assert_eq!(code(basic), "DENIED");
}

#[test]
fn anonymous_pull_is_per_repository() {
    let server =
        TestServer::start_with(|c| c.anonymous_pull = vec![RepoPattern::parse("public/*")]);
    let http = client();
    let digest = sha256(b"open");
    for repo in ["public/app", "private/app"] {
        let r = http
            .post(server.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
            .basic_auth("admin", Some(ADMIN_TOKEN))
            .body(b"open".to_vec())
            .send()
            .expect("request");
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let public = http
        .get(server.url(&format!("/v2/public/app/blobs/{digest}")))
        .send()
        .expect("request");
    assert_eq!(public.status(), StatusCode::OK);
    let private = http
        .get(server.url(&format!("/v2/private/app/blobs/{digest}")))
        .send()
        .expect("request");
    assert_eq!(private.status(), StatusCode::UNAUTHORIZED);
    // An anonymous token gets pull on the public repository only, never push.
    let anon = token_string(token(
        &server,
        None,
        &[
            "repository:public/app:pull,push",
            "repository:private/app:pull",
        ],
    ));
    let push = http
        .post(server.url("/v2/public/app/blobs/uploads/"))
        .bearer_auth(&anon)
        .send()
        .expect("request");
    assert_eq!(push.status(), StatusCode::UNAUTHORIZED);
    let pull_private = http
        .get(server.url(&format!("/v2/private/app/blobs/{digest}")))
        .bearer_auth(&anon)
        .send()
        .expect("request");
    assert_eq!(pull_private.status(), StatusCode::UNAUTHORIZED);
}

#[test]
fn pipeline_tokens_push_to_their_repository_only_and_expire() {
    let server = TestServer::start();
    let http = client();
    let token = server.registry.issue_token(
        "pipeline-42",
        vec![Scope {
            kind: "repository".into(),
            name: "ci/app".into(),
            actions: vec![Action::Pull, Action::Push],
        }],
        Duration::from_secs(60),
    );
    let digest = sha256(b"from ci");
    let ok = http
        .post(server.url(&format!("/v2/ci/app/blobs/uploads/?digest={digest}")))
        .bearer_auth(&token)
        .body(b"from ci".to_vec())
        .send()
        .expect("request");
    assert_eq!(ok.status(), StatusCode::CREATED);
    // Also as a `docker login` password.
    let basic = http
        .get(server.url(&format!("/v2/ci/app/blobs/{digest}")))
        .basic_auth("pipeline", Some(&token))
        .send()
        .expect("request");
    assert_eq!(basic.status(), StatusCode::OK);
    let other = http
        .post(server.url("/v2/ci/other/blobs/uploads/"))
        .bearer_auth(&token)
        .send()
        .expect("request");
    assert_eq!(other.status(), StatusCode::UNAUTHORIZED);

    let expired = server
        .registry
        .issue_token("pipeline-43", Vec::new(), Duration::from_secs(1));
    std::thread::sleep(Duration::from_millis(2100));
    let late = http
        .get(server.url("/v2/"))
        .bearer_auth(&expired)
        .send()
        .expect("request");
    assert_eq!(late.status(), StatusCode::UNAUTHORIZED);
}
