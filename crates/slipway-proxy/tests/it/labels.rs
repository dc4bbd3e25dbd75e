//! Label readers: Traefik v2/v3 and v1, Rancher's traefik.domain/alias, nginx-proxy and
//! Slipway's own labels, one workload (or a few) at a time.

use proptest::prelude::*;
use slipway_proxy::labels::{PublishedPort, Workload, WorkloadKind, read_all};
use slipway_proxy::route::{HealthProbe, PlainHttp, Scheme, Tls};
use slipway_proxy::{Diagnostic, Route};

fn workload(
    name: &str,
    labels: &[(&str, &str)],
    env: &[(&str, &str)],
    exposed: &[u16],
) -> Workload {
    Workload {
        name: name.to_owned(),
        kind: WorkloadKind::Container,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        environment: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        exposed_ports: exposed.to_vec(),
        published_ports: Vec::new(),
        addresses: vec!["172.18.0.5".to_owned()],
        task_addresses: None,
    }
}

fn read(ws: &[Workload]) -> (Vec<Route>, Vec<Diagnostic>) {
    let (set, d) = read_all(ws);
    (set.routes, d)
}

fn summary(r: &Route) -> (String, Vec<String>) {
    (
        r.key.to_string(),
        r.backends()
            .map(|b| format!("{}/{}", b.address, b.weight))
            .collect(),
    )
}

fn no_errors(d: &[Diagnostic]) {
    assert!(!d.iter().any(Diagnostic::is_error), "{d:#?}");
}

#[test]
fn traefik_v2_router_service_and_middlewares() {
    let w = workload(
        "shop",
        &[
            ("traefik.enable", "true"),
            (
                "traefik.http.routers.shop.rule",
                "Host(`shop.example.com`) && PathPrefix(`/api`)",
            ),
            ("traefik.http.routers.shop.entrypoints", "websecure"),
            ("traefik.http.routers.shop.tls.certresolver", "le"),
            ("traefik.http.routers.shop.priority", "9"),
            (
                "traefik.http.routers.shop.middlewares",
                "strip@docker,auth,hdrs",
            ),
            (
                "traefik.http.services.shop.loadbalancer.server.port",
                "8080",
            ),
            (
                "traefik.http.services.shop.loadbalancer.sticky.cookie.name",
                "shop_lb",
            ),
            (
                "traefik.http.middlewares.strip.stripprefix.prefixes",
                "/api",
            ),
            (
                "traefik.http.middlewares.auth.basicauth.users",
                "ann:$apr1$abcdefgh$b4Kt/lZ3yrTtt4CboU4c6/",
            ),
            (
                "traefik.http.middlewares.hdrs.headers.customrequestheaders.X-Script-Name",
                "shop",
            ),
            (
                "traefik.http.middlewares.hdrs.headers.customresponseheaders.X-Served-By",
                "slipway",
            ),
            ("traefik.http.middlewares.hdrs.headers.stsseconds", "600"),
        ],
        &[],
        &[8080, 9090],
    );
    let (routes, d) = read(&[w]);
    no_errors(&d);
    assert_eq!(routes.len(), 1, "{routes:#?}");
    let r = &routes[0];
    assert_eq!(
        summary(r),
        (
            "shop.example.com/api".into(),
            vec!["172.18.0.5:8080/1".into()]
        )
    );
    assert_eq!(r.tls, Tls::Acme);
    assert_eq!(r.priority, 9);
    // Only a websecure router: plain HTTP is redirected, as the entry point would.
    assert_eq!(r.options.http, PlainHttp::Redirect);
    assert_eq!(r.options.strip_prefixes, ["/api"]);
    assert!(
        r.options
            .basic_auth
            .as_ref()
            .expect("auth")
            .check("ann", "secret p4ss")
    );
    assert_eq!(r.options.request_headers["X-Script-Name"], "shop");
    assert_eq!(r.options.response_headers["X-Served-By"], "slipway");
    assert_eq!(r.options.hsts.as_ref().map(|h| h.max_age_secs), Some(600));
    assert_eq!(
        r.options.sticky.as_ref().map(|s| s.name.as_str()),
        Some("shop_lb")
    );
    assert_eq!(r.backend_sets[0].name, "shop");
    assert_eq!(r.source.to_string(), "labels of container shop");
}

#[test]
fn an_http_and_an_https_router_of_one_host_are_one_route() {
    // swarmprom's pattern; the redirect middleware is defined on another service.
    let app = workload(
        "grafana",
        &[
            ("traefik.enable", "true"),
            (
                "traefik.http.routers.g-http.rule",
                "Host(`grafana.example.com`)",
            ),
            ("traefik.http.routers.g-http.entrypoints", "http"),
            ("traefik.http.routers.g-http.middlewares", "https-redirect"),
            (
                "traefik.http.routers.g-https.rule",
                "Host(`grafana.example.com`)",
            ),
            ("traefik.http.routers.g-https.entrypoints", "https"),
            ("traefik.http.routers.g-https.tls", "true"),
            ("traefik.http.routers.g-https.middlewares", "g-auth"),
            (
                "traefik.http.middlewares.g-auth.basicauth.users",
                "admin:{SHA}vxwVaHCynNyI/Wtw62mLQM7jAhA=",
            ),
            (
                "traefik.http.services.grafana.loadbalancer.server.port",
                "3000",
            ),
        ],
        &[],
        &[],
    );
    let mut proxy = workload(
        "traefik",
        &[
            ("traefik.enable", "true"),
            (
                "traefik.http.routers.dashboard.rule",
                "Host(`traefik.example.com`)",
            ),
            ("traefik.http.routers.dashboard.service", "api@internal"),
            (
                "traefik.http.middlewares.https-redirect.redirectscheme.scheme",
                "https",
            ),
        ],
        &[],
        &[],
    );
    let (routes, d) = read(&[app.clone(), proxy.clone()]);
    // The dashboard is Traefik's own service: not routed, and said so.
    assert!(
        d.iter()
            .any(|d| d.is_error() && d.message.contains("api@internal")),
        "{d:#?}"
    );
    assert_eq!(routes.len(), 1, "{routes:#?}");
    let r = &routes[0];
    assert_eq!(summary(r).1, ["172.18.0.5:3000/1"]);
    assert_eq!(
        (r.tls.clone(), r.options.http),
        (Tls::Acme, PlainHttp::Redirect)
    );
    assert!(
        r.options
            .basic_auth
            .as_ref()
            .expect("auth")
            .check("admin", "secret p4ss")
    );
    // Without the middleware's definition, plain HTTP is served, with the HTTPS router's
    // authentication, and the missing middleware is a warning.
    // A disabled container's middlewares do not exist, as in Traefik.
    proxy.labels.insert("traefik.enable".into(), "false".into());
    let (routes, _) = read(&[app.clone(), proxy]);
    assert_eq!(routes[0].options.http, PlainHttp::Serve);
    let (routes, d) = read(&[app]);
    assert_eq!(routes[0].options.http, PlainHttp::Serve);
    assert!(routes[0].options.basic_auth.is_some());
    assert!(
        d.iter().any(|d| d.message.contains("https-redirect")),
        "{d:#?}"
    );
}

#[test]
fn a_traefik_workload_without_a_router_gets_the_default_rule() {
    let (routes, d) = read(&[workload(
        "My_App.1",
        &[("traefik.enable", "true")],
        &[],
        &[5000],
    )]);
    assert_eq!(
        summary(&routes[0]),
        ("my-app-1".into(), vec!["172.18.0.5:5000/1".into()])
    );
    no_errors(&d);
    // No port anywhere: 80, said out loud.
    let (routes, d) = read(&[workload("worker", &[("traefik.enable", "true")], &[], &[])]);
    assert_eq!(summary(&routes[0]).1, ["172.18.0.5:80/1"]);
    assert!(
        d.iter().any(|d| d.message.contains("assuming 80")),
        "{d:#?}"
    );
    // Several ports and none chosen: an error, no guess.
    let (routes, d) = read(&[workload(
        "multi",
        &[("traefik.enable", "true")],
        &[],
        &[80, 443],
    )]);
    assert!(routes.is_empty());
    assert!(
        d.iter()
            .any(|d| d.is_error() && d.message.contains("several ports")),
        "{d:#?}"
    );
}

#[test]
fn what_traefik_can_say_but_the_table_cannot_is_an_error_not_a_wider_route() {
    let (routes, d) = read(&[workload(
        "admin",
        &[
            (
                "traefik.http.routers.a.rule",
                "Host(`admin.example.com`) && ClientIP(`10.0.0.0/8`)",
            ),
            ("traefik.http.routers.b.rule", "Host(`b.example.com`)"),
            ("traefik.http.routers.b.middlewares", "only-office"),
            (
                "traefik.http.middlewares.only-office.ipallowlist.sourcerange",
                "10.0.0.0/8",
            ),
            ("traefik.http.routers.c.rule", "Host(`c.example.com`"),
            ("traefik.http.routers.d.rule", "Host(`d.example.com`)"),
            ("traefik.http.routers.d.service", "api@internal"),
        ],
        &[],
        &[80],
    )]);
    assert!(routes.is_empty(), "{routes:#?}");
    let msgs: Vec<String> = d
        .iter()
        .filter(|d| d.is_error())
        .map(ToString::to_string)
        .collect();
    assert_eq!(msgs.len(), 4, "{msgs:#?}");
    assert!(
        msgs[0].contains("container admin") && msgs[0].contains("ClientIP"),
        "{msgs:#?}"
    );
    assert!(msgs.iter().any(|m| m.contains("ipallowlist")), "{msgs:#?}");
    assert!(
        msgs.iter().any(|m| m.contains("does not parse")),
        "{msgs:#?}"
    );
    assert!(msgs.iter().any(|m| m.contains("api@internal")), "{msgs:#?}");
}

#[test]
fn traefik_enable_false_and_slipway_proxy_false_skip_everything() {
    for skip in [("traefik.enable", "false"), ("slipway.proxy", "false")] {
        let (routes, d) = read(&[workload(
            "web",
            &[
                skip,
                ("traefik.http.routers.w.rule", "Host(`w.com`)"),
                ("slipway.proxy.host", "w.com"),
            ],
            &[("VIRTUAL_HOST", "w.com")],
            &[80],
        )]);
        assert!(
            routes.is_empty() && d.is_empty(),
            "{skip:?}: {routes:#?} {d:#?}"
        );
    }
}

#[test]
fn traefik_v1_labels() {
    let (routes, d) = read(&[workload(
        "api",
        &[
            ("traefik.enable", "true"),
            (
                "traefik.frontend.rule",
                "Host:api.example.com,api2.example.com;PathPrefixStrip:/v1",
            ),
            ("traefik.port", "9000"),
            ("traefik.backend", "api-backend"),
            ("traefik.weight", "5"),
            ("traefik.frontend.entryPoints", "http,https"),
            (
                "traefik.frontend.headers.customRequestHeaders",
                "X-A:1||X-B:two",
            ),
            ("traefik.docker.network", "proxy"),
        ],
        &[],
        &[9000, 9001],
    )]);
    no_errors(&d);
    let got: Vec<_> = routes.iter().map(summary).collect();
    assert_eq!(
        got,
        [
            (
                "api.example.com/v1".to_owned(),
                vec!["172.18.0.5:9000/5".to_owned()]
            ),
            (
                "api2.example.com/v1".to_owned(),
                vec!["172.18.0.5:9000/5".to_owned()]
            ),
        ]
    );
    let r = &routes[0];
    assert_eq!(r.options.strip_prefixes, ["/v1"]);
    assert_eq!(r.backend_sets[0].name, "api-backend");
    assert_eq!(r.tls, Tls::Acme);
    assert_eq!(r.options.request_headers["X-B"], "two");
}

#[test]
fn traefik_v1_segments_route_one_port_each() {
    let (routes, d) = read(&[workload(
        "app",
        &[
            ("traefik.enable", "true"),
            ("traefik.domain", "example.com"),
            ("traefik.web.frontend.rule", "Host:app.example.com"),
            ("traefik.web.port", "80"),
            ("traefik.admin.frontend.rule", "Host:admin.example.com"),
            ("traefik.admin.port", "9000"),
            ("traefik.admin.frontend.auth.basic.users", "ann:hunter2"),
            ("traefik.api.port", "8080"),
            ("traefik.api.frontend.rule", "Host:api.example.com"),
        ],
        &[],
        &[80, 8080, 9000],
    )]);
    let got: Vec<_> = routes.iter().map(summary).collect();
    assert_eq!(
        got,
        [
            (
                "api.example.com".to_owned(),
                vec!["172.18.0.5:8080/1".to_owned()]
            ),
            (
                "app.example.com".to_owned(),
                vec!["172.18.0.5:80/1".to_owned()]
            ),
        ],
        "{d:#?}"
    );
    assert_eq!(routes[1].backend_sets[0].name, "app-web");
    assert_eq!(routes[1].origin.as_deref(), Some("segment web"));
    // The admin segment's plain password keeps it out, and the error names its label.
    let e = d.iter().find(|d| d.is_error()).expect("an error");
    assert_eq!(
        e.key.as_deref(),
        Some("traefik.admin.frontend.auth.basic.users"),
        "{e}"
    );
}

#[test]
fn rancher_traefik_domain_and_alias_of_seed_000() {
    // The seed's Drone server: traefik.enable, traefik.domain, traefik.port, traefik.alias.
    let drone = workload(
        "drone-server",
        &[
            ("traefik.enable", "true"),
            ("traefik.domain", "company.com"),
            ("traefik.port", "8000"),
            ("traefik.alias", "drone"),
        ],
        &[],
        &[80, 443, 8000],
    );
    let (routes, d) = read(&[drone]);
    no_errors(&d);
    assert_eq!(
        summary(&routes[0]),
        ("drone.company.com".into(), vec!["172.18.0.5:8000/1".into()])
    );
    // Without an alias the host is the workload's name under the domain.
    let (routes, _) = read(&[workload(
        "gitea",
        &[
            ("traefik.enable", "true"),
            ("traefik.domain", "company.com"),
            ("traefik.port", "3000"),
        ],
        &[],
        &[],
    )]);
    assert_eq!(summary(&routes[0]).0, "gitea.company.com");
}

#[test]
fn nginx_proxy_environment() {
    let w = workload(
        "site",
        &[],
        &[
            ("VIRTUAL_HOST", "site.example.com, *.site.example.com"),
            ("VIRTUAL_PORT", "8000"),
            ("VIRTUAL_PATH", "/blog"),
            ("VIRTUAL_PROTO", "https"),
            ("LETSENCRYPT_HOST", "site.example.com"),
            ("LETSENCRYPT_EMAIL", "ops@example.com"),
        ],
        &[8000, 8443],
    );
    let (routes, d) = read(&[w]);
    no_errors(&d);
    let got: Vec<_> = routes.iter().map(summary).collect();
    assert_eq!(
        got[0],
        (
            "site.example.com/blog".to_owned(),
            vec!["172.18.0.5:8000/1".to_owned()]
        )
    );
    assert_eq!(got[1].0, "*.site.example.com/blog");
    let (exact, wild) = (&routes[0], &routes[1]);
    // Certificates only for LETSENCRYPT_HOST; redirect and HSTS as nginx-proxy's default.
    assert_eq!(wild.tls, Tls::Off);
    assert_eq!(exact.tls, Tls::Acme);
    assert_eq!(exact.options.http, PlainHttp::Redirect);
    assert_eq!(
        exact.options.hsts.as_ref().map(|h| h.max_age_secs),
        Some(31_536_000)
    );
    assert_eq!(exact.options.acme_email.as_deref(), Some("ops@example.com"));
    assert_eq!(exact.backend_sets[0].backends[0].scheme, Scheme::Https);
    // HTTPS_METHOD=noredirect serves both; nohttp serves only HTTPS.
    for (method, http) in [("noredirect", PlainHttp::Serve), ("nohttp", PlainHttp::Off)] {
        let (routes, _) = read(&[workload(
            "s",
            &[],
            &[
                ("VIRTUAL_HOST", "a.com"),
                ("LETSENCRYPT_HOST", "a.com"),
                ("HTTPS_METHOD", method),
            ],
            &[3000],
        )]);
        assert_eq!(routes[0].options.http, http, "{method}");
        assert_eq!(
            summary(&routes[0]).1,
            ["172.18.0.5:3000/1"],
            "the single exposed port"
        );
    }
    // No VIRTUAL_PORT and several exposed ports: 80, as nginx-proxy does.
    let (routes, _) = read(&[workload(
        "s",
        &[],
        &[("VIRTUAL_HOST", "a.com")],
        &[3000, 80, 9000],
    )]);
    assert_eq!(summary(&routes[0]).1, ["172.18.0.5:80/1"]);
    let (routes, d) = read(&[workload("s", &[], &[("VIRTUAL_HOST", "~^a.*$")], &[80])]);
    assert!(
        routes.is_empty() && d[0].message.contains("regular-expression"),
        "{d:#?}"
    );
}

#[test]
fn slipway_labels_say_everything_the_file_can() {
    let stable = workload(
        "web-v1",
        &[
            ("slipway.proxy.host", "app.example.com"),
            ("slipway.proxy.path", "/shop"),
            ("slipway.proxy.port", "8080"),
            ("slipway.proxy.weight", "2"),
            ("slipway.proxy.set", "stable"),
            ("slipway.proxy.set_weight", "90"),
            ("slipway.proxy.tls", "acme"),
            ("slipway.proxy.http", "redirect"),
            ("slipway.proxy.priority", "3"),
            ("slipway.proxy.strip_prefix", "true"),
            ("slipway.proxy.sticky", "lb"),
            ("slipway.proxy.request_headers.X-Env", "prod"),
            ("slipway.proxy.health.path", "/healthz"),
            ("slipway.proxy.health.status", "204"),
            ("slipway.proxy.health.interval", "3s"),
            ("slipway.proxy.health.unhealthy_threshold", "2"),
        ],
        &[],
        &[8080],
    );
    let mut canary = stable.clone();
    canary.name = "web-v2".into();
    canary.addresses = vec!["172.18.0.6".into()];
    canary
        .labels
        .insert("slipway.proxy.set".into(), "canary".into());
    canary
        .labels
        .insert("slipway.proxy.set_weight".into(), "10".into());
    let (set, d) = read_all(&[stable, canary]);
    no_errors(&d);
    let table = slipway_proxy::RouteTable::build([set]);
    assert!(table.conflicts().is_empty(), "{:#?}", table.conflicts());
    let r = table
        .lookup("app.example.com", "/shop/cart")
        .expect("routed");
    let sets: Vec<(String, u32, Vec<String>)> = r
        .backend_sets
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                s.weight,
                s.backends
                    .iter()
                    .map(|b| format!("{}/{}", b.address, b.weight))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        sets,
        [
            ("stable".into(), 90, vec!["172.18.0.5:8080/2".into()]),
            ("canary".into(), 10, vec!["172.18.0.6:8080/2".into()]),
        ]
    );
    assert_eq!(
        (r.tls.clone(), r.options.http, r.priority),
        (Tls::Acme, PlainHttp::Redirect, 3)
    );
    assert_eq!(r.options.strip_prefixes, ["/shop"]);
    assert_eq!(
        r.options.sticky.as_ref().map(|s| s.name.as_str()),
        Some("lb")
    );
    let h = r.options.health_check.as_ref().expect("health");
    assert_eq!(
        h.probe,
        HealthProbe::Http {
            path: "/healthz".into(),
            status: Some(204)
        }
    );
    assert_eq!((h.interval.as_secs(), h.unhealthy_threshold), (3, 2));
}

#[test]
fn slipway_label_mistakes_are_errors_with_hints() {
    let (routes, d) = read(&[workload(
        "web",
        &[
            ("slipway.proxy.hots", "a.com"),
            ("slipway.proxy.port", "http"),
        ],
        &[],
        &[80],
    )]);
    assert!(routes.is_empty());
    let msgs: Vec<String> = d.iter().map(ToString::to_string).collect();
    assert!(
        msgs.iter()
            .any(|m| m.contains("`slipway.proxy.hots`") && m.contains("did you mean `host`?")),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("`slipway.proxy.port`: `http` is not a port")),
        "{msgs:#?}"
    );
}

#[test]
fn backends_are_the_network_address_else_the_published_port_else_the_name() {
    let mut w = workload(
        "web",
        &[
            ("slipway.proxy.host", "a.com"),
            ("slipway.proxy.port", "80"),
        ],
        &[],
        &[80],
    );
    w.addresses.clear();
    w.published_ports = vec![PublishedPort {
        target: 80,
        published: 8080,
        host_ip: Some("0.0.0.0".into()),
    }];
    assert_eq!(summary(&read(&[w.clone()]).0[0]).1, ["127.0.0.1:8080/1"]);
    w.published_ports.clear();
    w.kind = WorkloadKind::Service;
    let (routes, _) = read(&[w]);
    assert_eq!(summary(&routes[0]).1, ["web:80/1"]);
    assert_eq!(routes[0].source.to_string(), "labels of service web");
}

#[test]
fn a_wildcard_with_acme_is_an_error_whichever_convention() {
    let (routes, d) = read(&[workload(
        "web",
        &[
            (
                "traefik.http.routers.w.rule",
                "HostRegexp(`{sub:[a-z]+}.example.com`)",
            ),
            ("traefik.http.routers.w.tls.certresolver", "dns"),
        ],
        &[],
        &[80],
    )]);
    assert!(routes.is_empty(), "{routes:#?}");
    assert!(
        d.iter()
            .any(|d| d.is_error() && d.message.contains("wildcard")),
        "{d:#?}"
    );
    // With an uploaded certificate it is routed.
    let (routes, d) = read(&[workload(
        "web",
        &[
            ("slipway.proxy.host", "*.example.com"),
            ("slipway.proxy.tls", "star-cert"),
        ],
        &[],
        &[80],
    )]);
    no_errors(&d);
    assert_eq!(routes[0].tls, Tls::Certificate("star-cert".into()));
}

#[test]
fn one_key_from_two_conventions_of_one_workload_is_routed_once() {
    let (routes, d) = read(&[workload(
        "web",
        &[
            ("slipway.proxy.host", "a.com"),
            ("traefik.http.routers.w.rule", "Host(`a.com`)"),
        ],
        &[("VIRTUAL_HOST", "a.com")],
        &[80],
    )]);
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].origin.as_deref(), Some("slipway.proxy labels"));
    assert_eq!(
        d.iter().filter(|d| d.message.contains("routed by")).count(),
        2,
        "{d:#?}"
    );
}

fn label_key() -> impl Strategy<Value = String> {
    prop_oneof![
        "traefik\\.(enable|port|backend|weight|domain|alias|frontend\\.rule|frontend\\.entryPoints)",
        "traefik\\.http\\.(routers|services|middlewares)\\.[a-z]{1,3}\\.[a-z.]{1,30}",
        "slipway\\.proxy(\\.[a-z_.]{1,20})?",
        "[A-Z_]{1,14}",
        "\\PC{0,20}",
    ]
}

fn label_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "Host\\(`[a-z.]{1,12}`\\)( && PathPrefix\\(`/[a-z]{0,5}`\\))?",
        "Host:[a-z.,]{1,20}(;PathPrefix(Strip)?:/[a-z]{0,5})?",
        "[0-9]{1,6}",
        "(true|false|acme|off|redirect|https)",
        "[a-z:$./,{}*A-Z0-9]{0,30}",
        "\\PC{0,30}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn label_readers_never_panic(
        labels in prop::collection::btree_map(label_key(), label_value(), 0..10),
        env in prop::collection::btree_map(
            prop_oneof!["VIRTUAL_(HOST|PORT|PATH|PROTO|DEST)", "(LETSENCRYPT|ACME)_(HOST|EMAIL)", "HTTPS_METHOD", "HSTS", "CERT_NAME"],
            label_value(),
            0..5,
        ),
        exposed in prop::collection::vec(any::<u16>(), 0..3),
        name in "\\PC{0,16}",
        with_address in any::<bool>(),
        with_tasks in any::<bool>(),
    ) {
        let w = Workload {
            name,
            kind: WorkloadKind::Service,
            labels,
            environment: env,
            exposed_ports: exposed,
            published_ports: Vec::new(),
            addresses: if with_address { vec!["10.1.2.3".into()] } else { Vec::new() },
            task_addresses: with_tasks.then(|| vec!["10.1.2.4".into(), "10.1.2.5".into()]),
        };
        let (set, _) = read_all(&[w.clone(), w]);
        let _ = slipway_proxy::RouteTable::build([set]);
    }
}

#[test]
fn a_swarm_service_reached_at_its_tasks_has_one_backend_per_running_task() {
    let mut w = workload(
        "shop_web",
        &[
            ("traefik.enable", "true"),
            ("traefik.http.routers.w.rule", "Host(`shop.test`)"),
            ("traefik.http.services.w.loadbalancer.server.port", "8080"),
        ],
        &[("VIRTUAL_HOST", "np.test"), ("VIRTUAL_PORT", "80")],
        &[],
    );
    w.kind = WorkloadKind::Service;
    w.addresses = Vec::new();
    w.task_addresses = Some(vec!["10.0.1.3".into(), "10.0.1.4".into()]);
    let (set, diags) = read_all(std::slice::from_ref(&w));
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(set.routes.len(), 2);
    for r in &set.routes {
        let backends: Vec<String> = r.backends().map(|b| b.address.to_string()).collect();
        let port = if r.key.host.to_string() == "shop.test" {
            8080
        } else {
            80
        };
        assert_eq!(
            backends,
            vec![format!("10.0.1.3:{port}"), format!("10.0.1.4:{port}")]
        );
        assert_eq!(r.source.to_string(), "labels of service shop_web");
    }
    // No task runs (a restart, a scale to 0): the routes stay, with no backend (503).
    w.task_addresses = Some(Vec::new());
    let (set, _) = read_all(std::slice::from_ref(&w));
    assert_eq!(set.routes.len(), 2);
    assert!(set.routes.iter().all(|r| r.backends().next().is_none()));
}
