//! Real compose and stack files (`../shared/corpus/compose`, `../shared/examples`): the
//! routes their labels and environments imply, read without containers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use slipway_proxy::compose::{RoutesReport, routes_from, workloads};

fn shared(sub: &str) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared")
        .join(sub);
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "skipped: {} is absent (the shared corpus sits beside the repository)",
            dir.display()
        );
        None
    }
}

/// What the corpus's `${VAR?...}` need; a hash, so basic auth reads.
fn vars() -> BTreeMap<String, String> {
    [
        ("DOMAIN", "example.com"),
        ("ADMIN_USER", "admin"),
        ("HASHED_PASSWORD", "$apr1$abcdefgh$b4Kt/lZ3yrTtt4CboU4c6/"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn report(dir: &Path, file: &str) -> RoutesReport {
    let text = std::fs::read_to_string(dir.join(file)).expect("readable");
    routes_from(&text, file, &vars())
}

fn hosts_of(r: &RoutesReport, service: &str) -> BTreeSet<String> {
    let source = format!("labels of service {service}");
    r.routes
        .iter()
        .filter(|r| r.source.to_string() == source)
        .map(|r| r.key.to_string())
        .collect()
}

#[test]
fn every_corpus_file_yields_the_routes_its_expectations_imply() {
    let Some(dir) = shared("corpus/compose") else {
        return;
    };
    let expect: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("expect.json")).expect("expect.json"),
    )
    .expect("json");
    let files = expect.as_object().expect("a map of files");
    assert!(files.len() >= 13, "{} files", files.len());
    let mut with_routes = 0;
    for (file, e) in files {
        let text = std::fs::read_to_string(dir.join(file)).expect("readable");
        let (ws, d) = workloads(&text, file, &vars());
        assert!(!d.iter().any(|d| d.is_error()), "{file}: {d:#?}");
        let r = routes_from(&text, file, &vars());
        assert!(r.conflicts.is_empty(), "{file}: {:#?}", r.conflicts);
        let details = e["service_details"].as_object().expect("details");
        let mut expects_routes = false;
        for (service, s) in details {
            let w = ws
                .iter()
                .find(|w| &w.name == service)
                .unwrap_or_else(|| panic!("{file}: no service {service}"));
            // The reader saw what the corpus counted.
            let traefik = s["traefik_labels"].as_u64().unwrap_or(0);
            let read = w
                .labels
                .keys()
                .filter(|k| k.starts_with("traefik."))
                .count() as u64;
            assert_eq!(read, traefik, "{file} {service}: traefik labels");
            let published: BTreeSet<String> = w
                .published_ports
                .iter()
                .map(|p| p.published.to_string())
                .collect();
            let expected: BTreeSet<String> = s["published_ports"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(published, expected, "{file} {service}: published ports");
            let enabled = w.labels.get("traefik.enable").map(String::as_str) != Some("false");
            let hosts = hosts_of(&r, service);
            if traefik > 0 && enabled {
                assert!(
                    !hosts.is_empty(),
                    "{file} {service}: no route; {:#?}",
                    r.diagnostics
                );
                expects_routes = true;
            }
            if let Some(vh) = s["proxy_env"]["VIRTUAL_HOST"].as_str() {
                for h in vh.split(',') {
                    assert!(
                        hosts.contains(h.trim()),
                        "{file} {service}: {h} not in {hosts:?}"
                    );
                }
                expects_routes = true;
            }
            if traefik == 0 && s.get("proxy_env").is_none() {
                assert!(hosts.is_empty(), "{file} {service}: unexpected {hosts:?}");
            }
        }
        if expects_routes {
            with_routes += 1;
        } else {
            assert!(
                r.routes.is_empty(),
                "{file}: routes without labels: {:#?}",
                r.routes
            );
        }
    }
    assert!(with_routes >= 7, "only {with_routes} files with routes");
}

fn route<'a>(r: &'a RoutesReport, key: &str) -> &'a slipway_proxy::Route {
    r.routes
        .iter()
        .find(|x| x.key.to_string() == key)
        .unwrap_or_else(|| panic!("no route {key}: {:#?} {:#?}", r.routes, r.diagnostics))
}

fn backends(r: &slipway_proxy::Route) -> Vec<String> {
    r.backends().map(|b| b.address.to_string()).collect()
}

#[test]
fn concrete_routes_of_files_read_by_hand() {
    let Some(dir) = shared("corpus/compose") else {
        return;
    };
    use slipway_proxy::route::{PlainHttp, Tls};

    // Traefik v2 in deploy.labels, behind the websecure entry point; sticky `result`.
    let r = report(&dir, "BretFisher__dogvscat__stack-voting.yml");
    assert_eq!(backends(route(&r, "vote.dogvs.cat")), ["vote:80"]);
    let result = route(&r, "result.dogvs.cat");
    assert_eq!(
        (result.tls.clone(), result.options.http),
        (Tls::Acme, PlainHttp::Redirect)
    );
    assert!(result.options.sticky.is_some());
    // `worker` only says traefik.enable=true: Traefik's default rule, port 80 with a warning.
    assert_eq!(backends(route(&r, "worker")), ["worker:80"]);
    assert!(r.diagnostics.iter().any(
        |d| d.origin.as_deref() == Some("service worker") && d.message.contains("assuming 80")
    ));

    // Traefik v1 in deploy.labels.
    let r = report(&dir, "vegasbrianc__prometheus__docker-traefik-stack.yml");
    assert_eq!(
        backends(route(&r, "prometheus.localhost")),
        ["prometheus:9090"]
    );
    assert_eq!(backends(route(&r, "grafana.localhost")), ["grafana:3000"]);
    assert_eq!(
        route(&r, "grafana.localhost").backend_sets[0].name,
        "grafana"
    );

    // The v1 dashboard of dogvscat's proxy stack: its published port.
    let r = report(&dir, "BretFisher__dogvscat__stack-proxy-global.yml");
    assert_eq!(backends(route(&r, "traefik.dogvs.cat")), ["127.0.0.1:8080"]);

    // swarmprom: ${DOMAIN?...} interpolated; http and https routers make one route, with
    // the https router's basic auth and the http router's redirect.
    let r = report(&dir, "stefanprodan__swarmprom__docker-compose.traefik.yml");
    let am = route(&r, "alertmanager.example.com");
    assert_eq!(backends(am), ["alertmanager:9093"]);
    assert_eq!(am.tls, Tls::Acme);
    assert!(
        am.options
            .basic_auth
            .as_ref()
            .expect("auth")
            .check("admin", "secret p4ss")
    );
    assert_eq!(backends(route(&r, "grafana.example.com")), ["grafana:3000"]);
    assert!(
        route(&r, "grafana.example.com")
            .options
            .basic_auth
            .is_none()
    );

    // Traefik's own v3 example on a plain compose service.
    let r = report(
        &dir,
        "traefik__traefik__docs_content_user-guides_docker-compose_basic-example_docker-compose.yml",
    );
    assert_eq!(backends(route(&r, "whoami.localhost")), ["whoami:80"]);
    assert_eq!(route(&r, "whoami.localhost").tls, Tls::Off);

    // nginx-proxy's VIRTUAL_HOST.
    let r = report(
        &dir,
        "nginx-proxy__nginx-proxy__docker-compose-separate-containers.yml",
    );
    assert_eq!(backends(route(&r, "whoami.example")), ["whoami:80"]);
    assert_eq!(r.routes.len(), 1);
}

#[test]
fn a_required_variable_left_unset_is_an_error_at_its_line() {
    let Some(dir) = shared("corpus/compose") else {
        return;
    };
    let file = "stefanprodan__swarmprom__docker-compose.traefik.yml";
    let text = std::fs::read_to_string(dir.join(file)).expect("readable");
    let r = routes_from(&text, file, &BTreeMap::new());
    let d = r
        .diagnostics
        .iter()
        .find(|d| d.is_error())
        .expect("an error");
    assert_eq!(d.line, Some(94), "{d}");
    assert!(d.to_string().contains("Variable DOMAIN not set"), "{d}");
}

#[test]
fn the_seed_examples_with_proxy_settings() {
    let Some(dir) = shared("examples") else {
        return;
    };
    use slipway_proxy::route::{PlainHttp, Tls};
    let r = report(&dir, "swarm-app-stack.yml");
    let backend = route(&r, "test.example.com");
    assert_eq!(backends(backend), ["backend:8000"]);
    assert_eq!(
        (backend.tls.clone(), backend.options.http),
        (Tls::Acme, PlainHttp::Redirect)
    );
    assert_eq!(
        backend.options.acme_email.as_deref(),
        Some("ops@example.com")
    );
    // Every other example compose file reads; those without labels give no routes.
    for entry in std::fs::read_dir(&dir).expect("examples") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if !name.contains("compose") && !name.contains("stack") {
            continue;
        }
        let r = report(&dir, &name);
        let text = std::fs::read_to_string(&path).expect("readable");
        let labelled = text.contains("traefik.")
            || text.contains("VIRTUAL_HOST")
            || text.contains("slipway.proxy");
        assert_eq!(!r.routes.is_empty(), labelled, "{name}: {:#?}", r.routes);
    }
}
