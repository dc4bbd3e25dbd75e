//! Authentication and authorisation over HTTP: challenges, the token endpoint, scopes,
//! namespaces, anonymous pull, pipeline tokens, bearer tokens that end with their
//! credential and are never a password, path patterns.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::blocking::Response;
use slipway_registry::{Action, Principal, RepoPattern, Scope};

use crate::api::header;
use crate::support::{
    ADMIN_TOKEN, READER_TOKEN, ROBOT_TOKEN, Revocable, TestServer, client, sha256,
};

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
        "static:robot",
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
    // Never as a password: a bearer token is no `docker login` credential.
    let basic = http
        .get(server.url(&format!("/v2/ci/app/blobs/{digest}")))
        .basic_auth("pipeline", Some(&token))
        .send()
        .expect("request");
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
    let other = http
        .post(server.url("/v2/ci/other/blobs/uploads/"))
        .bearer_auth(&token)
        .send()
        .expect("request");
    assert_eq!(other.status(), StatusCode::UNAUTHORIZED);

    let expired = server.registry.issue_token(
        "pipeline-43",
        "static:robot",
        Vec::new(),
        Duration::from_secs(1),
    );
    std::thread::sleep(Duration::from_millis(2100));
    let late = http
        .get(server.url("/v2/"))
        .bearer_auth(&expired)
        .send()
        .expect("request");
    assert_eq!(late.status(), StatusCode::UNAUTHORIZED);
}

/// The `message` of the first error of a registry error body.
fn message(response: Response) -> String {
    let body: serde_json::Value = response.json().expect("json");
    body["errors"][0]["message"]
        .as_str()
        .expect("message")
        .to_string()
}

/// A registry whose `robot` account (pull and push below `ci/`) can be revoked.
fn revocable_server() -> (TestServer, Arc<Revocable>) {
    let auth = Arc::new(Revocable::default());
    auth.add("robot", ROBOT_TOKEN, Principal::robot("robot", "ci"));
    auth.add("admin", ADMIN_TOKEN, Principal::admin("admin"));
    let server = TestServer::start_with_auth(|_| {}, auth.clone());
    (server, auth)
}

#[test]
fn a_bearer_token_dies_with_the_credential_that_earned_it() {
    let (server, auth) = revocable_server();
    let http = client();
    let bearer = token_string(token(
        &server,
        Some(("robot", ROBOT_TOKEN)),
        &["repository:ci/app:pull,push"],
    ));
    let blob = b"before the revocation";
    let digest = sha256(blob);
    let push = http
        .post(server.url(&format!("/v2/ci/app/blobs/uploads/?digest={digest}")))
        .bearer_auth(&bearer)
        .body(blob.to_vec())
        .send()
        .expect("request");
    assert_eq!(push.status(), StatusCode::CREATED);
    let pull = http
        .get(server.url(&format!("/v2/ci/app/blobs/{digest}")))
        .bearer_auth(&bearer)
        .send()
        .expect("request");
    assert_eq!(pull.status(), StatusCode::OK);

    auth.revoke(ROBOT_TOKEN);

    // The token has not expired, yet neither pull nor push works any more: 401 with a
    // challenge saying the token is invalid, and a message saying why.
    let pull = http
        .get(server.url(&format!("/v2/ci/app/blobs/{digest}")))
        .bearer_auth(&bearer)
        .send()
        .expect("request");
    assert_eq!(pull.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(param(&challenge(&pull), "error"), Some("invalid_token"));
    assert!(message(pull).contains("revoked"));
    let push = http
        .post(server.url("/v2/ci/app/blobs/uploads/"))
        .bearer_auth(&bearer)
        .send()
        .expect("request");
    assert_eq!(push.status(), StatusCode::UNAUTHORIZED);
    let manifest = http
        .put(server.url("/v2/ci/app/manifests/latest"))
        .bearer_auth(&bearer)
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body("{}")
        .send()
        .expect("request");
    assert_eq!(manifest.status(), StatusCode::UNAUTHORIZED);
    // Nor does the revoked password buy a new token.
    let again = token(
        &server,
        Some(("robot", ROBOT_TOKEN)),
        &["repository:ci/app:pull"],
    );
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED);

    // Another credential's tokens are untouched.
    let admin = token_string(token(
        &server,
        Some(("admin", ADMIN_TOKEN)),
        &["repository:ci/app:pull"],
    ));
    let pull = http
        .get(server.url(&format!("/v2/ci/app/blobs/{digest}")))
        .bearer_auth(&admin)
        .send()
        .expect("request");
    assert_eq!(pull.status(), StatusCode::OK);
}

#[test]
fn a_bearer_token_is_never_a_password() {
    let (server, _auth) = revocable_server();
    let http = client();
    let bearer = token_string(token(
        &server,
        Some(("robot", ROBOT_TOKEN)),
        &["repository:ci/app:pull,push"],
    ));
    // GET /v2/token with the bearer token as the Basic password: refused, with a hint.
    let exchange = token(
        &server,
        Some(("robot", &bearer)),
        &["repository:ci/app:pull,push"],
    );
    assert_eq!(exchange.status(), StatusCode::UNAUTHORIZED);
    assert!(message(exchange).contains("not a password"));
    // The OAuth2 password grant.
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "password")
        .append_pair("service", "slipway-registry")
        .append_pair("username", "robot")
        .append_pair("password", &bearer)
        .append_pair("scope", "repository:ci/app:pull,push")
        .finish();
    let grant = http
        .post(server.url("/v2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .expect("request");
    assert_eq!(grant.status(), StatusCode::UNAUTHORIZED);
    // The bearer token itself at the token endpoint.
    let as_bearer = http
        .get(server.url("/v2/token?service=slipway-registry&scope=repository:ci/app:pull"))
        .bearer_auth(&bearer)
        .send()
        .expect("request");
    assert_eq!(as_bearer.status(), StatusCode::UNAUTHORIZED);
    // As Basic credentials on the API itself.
    let basic = http
        .post(server.url("/v2/ci/app/blobs/uploads/"))
        .basic_auth("robot", Some(&bearer))
        .send()
        .expect("request");
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
    assert!(message(basic).contains("not a password"));
}

#[test]
fn a_token_naming_no_credential_is_refused() {
    let server = TestServer::start();
    // A token as an older version signed it: same key, a subject, no credential.
    let key = std::fs::read(server.root().join("token.key")).expect("token key");
    let signer = slipway_registry::token::TokenSigner::new(key, "slipway", "slipway-registry");
    let scope = Scope {
        kind: "repository".into(),
        name: "ci/app".into(),
        actions: vec![Action::Pull, Action::Push],
    };
    let (old, _) = signer.issue("robot", None, vec![scope.clone()], Duration::from_secs(60));
    let response = client()
        .post(server.url("/v2/ci/app/blobs/uploads/"))
        .bearer_auth(&old)
        .send()
        .expect("request");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(message(response).contains("names no credential"));
    // A credential the authenticator never handed out is refused alike.
    let (forged, _) = signer.issue(
        "robot",
        Some("static:ghost"),
        vec![scope],
        Duration::from_secs(60),
    );
    let response = client()
        .post(server.url("/v2/ci/app/blobs/uploads/"))
        .bearer_auth(&forged)
        .send()
        .expect("request");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[test]
fn path_patterns_cover_a_path_and_below_it_only() {
    let patterns = ["team/app", "team/shared-*"].map(|p| RepoPattern::parse_path(p).expect(p));
    let auth = Arc::new(Revocable::default());
    auth.add(
        "pipeline",
        "pipeline-secret",
        Principal::pusher("pipeline", patterns.to_vec()),
    );
    let server = TestServer::start_with_auth(|_| {}, auth);
    let http = client();
    let blob = b"layer";
    let digest = sha256(blob);
    for (repo, allowed) in [
        ("team/app", true),
        ("team/app/sub", true),
        ("team/shared-lib", true),
        ("team/shared-lib/x", true),
        ("team/apple", false),
        ("team/other", false),
        ("team/shared", false),
        ("other/x", false),
        ("other/team/app", false),
    ] {
        let bearer = token_string(token(
            &server,
            Some(("pipeline", "pipeline-secret")),
            &[&format!("repository:{repo}:pull,push")],
        ));
        let push = http
            .post(server.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
            .bearer_auth(&bearer)
            .body(blob.to_vec())
            .send()
            .expect("request");
        if allowed {
            assert_eq!(push.status(), StatusCode::CREATED, "push to {repo}");
        } else {
            assert_eq!(push.status(), StatusCode::FORBIDDEN, "push to {repo}");
            let text = message(push);
            assert!(
                text.contains(&format!("may not push `{repo}`")),
                "{repo}: {text}"
            );
        }
    }
}

#[test]
fn path_patterns_are_validated_with_a_reason() {
    for ok in [
        "team/app",
        "team/shared-*",
        "team/*/cache",
        "a.b/c_d-e",
        "team",
    ] {
        assert!(RepoPattern::parse_path(ok).is_ok(), "{ok}");
    }
    for (bad, reason) in [
        ("", "empty"),
        ("*", "owner"),
        ("*/app", "owner"),
        ("team/", "empty segment"),
        ("team//app", "empty segment"),
        ("/team/app", "empty segment"),
        ("Team/app", "`T`"),
        ("team/app:tag", "`:`"),
        ("team/../x", "`..`"),
    ] {
        let e = RepoPattern::parse_path(bad).expect_err(bad);
        let text = e.to_string();
        assert!(text.contains(reason), "{bad}: {text}");
        assert!(
            text.contains("e.g. `team/shared-*`"),
            "{bad}: no hint: {text}"
        );
    }
}

/// A pattern of many `*` against a long name that almost matches answers at once: matching
/// is linear in the stars, not exponential (a repository's `registry_paths` is checked on
/// every registry request of its pipelines).
#[test]
fn path_patterns_with_many_stars_match_in_bounded_time() {
    let pattern = format!("team/{}*b", "*a".repeat(16));
    let pattern = RepoPattern::parse_path(&pattern).expect("a valid pattern");
    let name = format!("team/{}", "a".repeat(200));
    let (tx, rx) = std::sync::mpsc::channel();
    let matcher = pattern.clone();
    std::thread::spawn(move || {
        let _ = tx.send(matcher.matches(&name));
    });
    let matched = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("the match answered within 5 s");
    assert!(!matched, "no `b` in the name");
    // And the stars still mean what they did.
    for (pattern, repo, expected) in [
        ("team/*a*b", "team/xaxb", true),
        ("team/*a*b", "team/xaxb/below", true),
        ("team/*a*b", "team/xaxbx", false),
        ("team/a*", "team/a", true),
        ("team/*-*", "team/x-", true),
        ("team/*-*", "team/x", false),
        ("team/**x", "team/yx", true),
        ("team/*/cache", "team/app/cache", true),
        ("team/*/cache", "team/app/x/cache", false),
    ] {
        let p = RepoPattern::parse_path(pattern).expect(pattern);
        assert_eq!(p.matches(repo), expected, "{pattern} ~ {repo}");
    }
}
