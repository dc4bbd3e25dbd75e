//! The routes file: the issue's form, every documented key, and errors at FILE:LINE:COL.

use slipway_proxy::file::parse;
use slipway_proxy::route::{HealthProbe, PlainHttp, Scheme, Tls};

fn errors(text: &str) -> Vec<String> {
    match parse(text, "routes.yml") {
        Ok(set) => panic!("accepted: {set:?}"),
        Err(d) => d.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn the_issue_form_reads() {
    let text = r#"
routes:
  - host: app.example.com          # exact, or *.example.com
    path: /api                     # prefix, optional
    backends: ["127.0.0.1:9000", {address: "127.0.0.1:9001", weight: 3}]
    tls: acme                      # acme | off | the name of an uploaded certificate
  - host: "*.example.com"
    backends: [https://10.0.0.5:8443]
    tls: wildcard-cert
"#;
    let set = parse(text, "routes.yml").expect("valid");
    assert_eq!(set.routes.len(), 2);
    let r = &set.routes[0];
    assert_eq!(r.key.to_string(), "app.example.com/api");
    assert_eq!(r.tls, Tls::Acme);
    let b: Vec<(String, u32)> = r
        .backends()
        .map(|b| (b.address.to_string(), b.weight))
        .collect();
    assert_eq!(
        b,
        [("127.0.0.1:9000".into(), 1), ("127.0.0.1:9001".into(), 3)]
    );
    assert_eq!(r.origin.as_deref(), Some("routes.yml:3:5"));
    let w = &set.routes[1];
    assert!(w.key.host.is_wildcard());
    assert_eq!(w.tls, Tls::Certificate("wildcard-cert".into()));
    assert_eq!(w.backend_sets[0].backends[0].scheme, Scheme::Https);
}

#[test]
fn every_option_reads() {
    let text = r#"
routes:
  - host: shop.example.com
    path: /app
    priority: 7
    backend_sets:
      - {name: stable, weight: 90, backends: ["10.0.0.1:80", "10.0.0.2:80"]}
      - {name: canary, weight: 10, backends: [{address: "10.0.0.3:80", scheme: http}]}
    tls: acme
    http: redirect
    hsts: {max_age: 600, include_subdomains: true}
    request_headers: {X-From: slipway, X-Remove-Me: ""}
    response_headers: {X-Frame-Options: DENY}
    strip_prefix: true
    basic_auth:
      realm: shop
      users: ["ann:$apr1$abcdefgh$b4Kt/lZ3yrTtt4CboU4c6/"]
    sticky: {cookie: shop_lb, secure: true}
    health_check: {path: /healthz, status: 204, interval: 5s, timeout: 1s, healthy_threshold: 2, unhealthy_threshold: 4}
    acme_email: ops@example.com
  - host: tcp.example.com
    backends: ["10.0.0.9:5432"]
    health_check: {type: tcp, interval: 2s, timeout: 500ms}
"#;
    let set = parse(text, "routes.yml").expect("valid");
    let r = &set.routes[0];
    assert_eq!(r.priority, 7);
    assert_eq!(r.backend_sets.len(), 2);
    assert_eq!(r.backend_sets[1].weight, 10);
    assert_eq!(r.options.http, PlainHttp::Redirect);
    let hsts = r.options.hsts.as_ref().expect("hsts");
    assert_eq!((hsts.max_age_secs, hsts.include_subdomains), (600, true));
    assert_eq!(r.options.request_headers["X-Remove-Me"], "");
    assert_eq!(r.options.strip_prefixes, ["/app"]);
    let auth = r.options.basic_auth.as_ref().expect("auth");
    assert!(auth.check("ann", "secret p4ss"));
    assert!(!auth.check("ann", "wrong"));
    assert_eq!(auth.realm, "shop");
    let sticky = r.options.sticky.as_ref().expect("sticky");
    assert_eq!((sticky.name.as_str(), sticky.secure), ("shop_lb", true));
    let h = r.options.health_check.as_ref().expect("health");
    assert_eq!(
        h.probe,
        HealthProbe::Http {
            path: "/healthz".into(),
            status: Some(204)
        }
    );
    assert_eq!((h.healthy_threshold, h.unhealthy_threshold), (2, 4));
    assert_eq!(h.interval.as_secs(), 5);
    assert_eq!(r.options.acme_email.as_deref(), Some("ops@example.com"));
    let t = set.routes[1].options.health_check.as_ref().expect("tcp");
    assert_eq!(t.probe, HealthProbe::Tcp);
    // The JSON shows users, never their hashes.
    let json = serde_json::to_string(&set).expect("json");
    assert!(
        json.contains("ann (apr1)") && !json.contains("b4Kt"),
        "{json}"
    );
}

#[test]
fn unknown_keys_point_at_the_key_with_a_suggestion() {
    let e = errors("routes:\n  - host: a.com\n    backend: [\"127.0.0.1:1\"]\n");
    assert!(
        e.iter().any(|e| e.starts_with("routes.yml:3:5: error: unknown key `backend` in a route (hint: did you mean `backends`?)")),
        "{e:?}"
    );
    let e = errors("routes:\n  - host: a.com\n    backends: [{adress: \"127.0.0.1:1\"}]\n");
    assert!(
        e.iter()
            .any(|e| e.starts_with("routes.yml:3:17:") && e.contains("did you mean `address`?")),
        "{e:?}"
    );
    let e = errors("route: []\n");
    assert!(
        e[0].starts_with("routes.yml:1:1:") && e[0].contains("did you mean `routes`?"),
        "{e:?}"
    );
}

#[test]
fn bad_values_say_what_and_where() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "routes:\n  - host: a.com:8080\n    backends: [\"127.0.0.1:1\"]\n",
            "routes.yml:2:11:",
            "port",
        ),
        (
            "routes:\n  - host: http://a.com\n    backends: [\"127.0.0.1:1\"]\n",
            "routes.yml:2:11:",
            "URL",
        ),
        (
            "routes:\n  - host: a..com\n    backends: [\"127.0.0.1:1\"]\n",
            "routes.yml:2:11:",
            "empty label",
        ),
        (
            "routes:\n  - host: a.com\n    backends: [\"127.0.0.1\"]\n",
            "routes.yml:3:16:",
            "no port",
        ),
        (
            "routes:\n  - host: a.com\n    backends: [\"127.0.0.1:99999\"]\n",
            "routes.yml:3:16:",
            "not a port",
        ),
        (
            "routes:\n  - host: a.com\n    backends: [{address: \"1.2.3.4:80\", weight: -1}]\n",
            "routes.yml:3:48:",
            "weight",
        ),
        (
            "routes:\n  - host: a.com\n    backends: [{address: \"1.2.3.4:80\", weight: 1.5}]\n",
            "routes.yml:3:48:",
            "whole number",
        ),
        (
            "routes:\n  - host: a.com\n    path: api\n    backends: [\"1.2.3.4:80\"]\n",
            "routes.yml:3:11:",
            "start with `/`",
        ),
        (
            "routes:\n  - host: a.com\n    backends: []\n",
            "routes.yml:3:15:",
            "empty",
        ),
        (
            "routes:\n  - host: a.com\n",
            "routes.yml:2:5:",
            "no `backends`",
        ),
        (
            "routes:\n  - path: /x\n    backends: [\"1.2.3.4:80\"]\n",
            "routes.yml:2:5:",
            "needs a `host`",
        ),
        (
            "routes:\n  - host: \"*.a.com\"\n    backends: [\"1.2.3.4:80\"]\n    tls: acme\n",
            "routes.yml:4:10:",
            "wildcard",
        ),
        (
            "routes:\n  - host: a.com\n    backends: [\"1.2.3.4:80\"]\n    http: redirect\n",
            "routes.yml:4:11:",
            "needs TLS",
        ),
        (
            "routes:\n  - host: a.com\n    backends: [\"1.2.3.4:80\"]\n    basic_auth: [\"ann:hunter2\"]\n",
            "routes.yml:4:18:",
            "htpasswd",
        ),
        (
            "routes:\n  - host: a.com\n    backends: [\"1.2.3.4:80\"]\n    health_check: {interval: 10}\n",
            "routes.yml:4:19:",
            "health",
        ),
        (
            "routes:\n  - host: a.com\n    backends: [\"1.2.3.4:80\"]\n    health_check: {path: /h, interval: soon}\n",
            "routes.yml:4:40:",
            "duration",
        ),
        ("routes: [\n", "routes.yml:", "invalid YAML"),
    ];
    for (text, at, what) in cases {
        let e = errors(text);
        assert!(
            e.iter().any(|e| e.starts_with(at) && e.contains(what)),
            "{text:?}: wanted {at} … {what}, got {e:?}"
        );
    }
}

#[test]
fn duplicate_routes_name_the_first() {
    let e = errors(
        "routes:\n  - host: A.com\n    backends: [\"1.2.3.4:80\"]\n  - host: a.com\n    path: /\n    backends: [\"1.2.3.4:81\"]\n",
    );
    assert!(
        e.iter()
            .any(|e| e.starts_with("routes.yml:4:5:")
                && e.contains("duplicate route `a.com`: line 2")),
        "{e:?}"
    );
    let e = errors("routes:\n  - host: a.com\n    backends: [\"1.2.3.4:80\", \"1.2.3.4:80\"]\n");
    assert!(e.iter().any(|e| e.contains("listed twice")), "{e:?}");
}

#[test]
fn one_error_keeps_the_whole_file_out_and_an_empty_file_is_no_routes() {
    let e = errors(
        "routes:\n  - host: good.com\n    backends: [\"1.2.3.4:80\"]\n  - host: bad.com\n    backends: [\"nope\"]\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(parse("", "r.yml").expect("empty").routes.is_empty());
    assert!(parse("routes:\n", "r.yml").expect("null").routes.is_empty());
}

#[test]
fn load_reports_a_missing_file() {
    let e = slipway_proxy::file::load(std::path::Path::new("/nonexistent/routes.yml"))
        .expect_err("missing");
    assert!(
        e[0].to_string()
            .starts_with("/nonexistent/routes.yml: error: cannot read"),
        "{e:?}"
    );
}
