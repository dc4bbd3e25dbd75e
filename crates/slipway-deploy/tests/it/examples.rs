//! The seeds' examples (`../shared/examples`): the go-auth stack with its Rancher file,
//! and the nginx-proxy-routed Swarm stack.

use std::time::Duration;

use slipway_deploy::compose::{
    Mode, Order, ReadOptions, Severity, load, merge_rancher, read, read_rancher,
};
use slipway_deploy::plan::{Environment, Plan};

use crate::{rendered, shared_dir};

fn strict_opts() -> ReadOptions {
    ReadOptions {
        mode: Mode::Strict,
        ..ReadOptions::default()
    }
}

#[test]
fn go_auth_with_its_rancher_file() {
    let Some(dir) = shared_dir("examples") else {
        return;
    };
    let compose_path = dir.join("go-auth.docker-compose.yml");
    let rancher_path = dir.join("go-auth.rancher-compose.yml");
    let r = load(&compose_path, Some(&rancher_path), &strict_opts()).expect("reads");
    assert!(!r.has_errors(), "{}", rendered(&r));
    let c = &r.compose;
    assert!(c.format_1);
    let names: Vec<&str> = c.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["Database", "Goauth"]);
    // The Rancher file names the services of the seed's later compose file
    // (auth-service, mysql-master, auth-lb), not these: each is reported, none applied.
    let shown = rancher_path.display().to_string();
    let warnings: Vec<String> = r
        .problems
        .iter()
        .filter(|p| p.file == shown && p.severity == Severity::Warning)
        .map(|p| format!("{}:{}: {}", p.line, p.col, p.message))
        .collect();
    let cf = compose_path.display();
    assert_eq!(
        warnings,
        [
            format!("1:1: Rancher service `auth-service` is not a service of {cf}: ignored"),
            format!("12:1: Rancher service `mysql-master` is not a service of {cf}: ignored"),
            format!("14:1: Rancher service `auth-lb` is not a service of {cf}: ignored"),
            "16:3: `default_cert` of Rancher is not supported: ignored".to_owned(),
        ]
    );
    let goauth = c.service("Goauth").expect("Goauth");
    assert_eq!(goauth.image.as_deref(), Some("go-auth"));
    assert_eq!(goauth.ports[0].raw, "9000:9000");
    assert_eq!(goauth.links[0].alias, "db");
    let plan = Plan::of(c, &Environment::named("integration"));
    // `links: [Database:db]`: the database answers to `db` too.
    assert_eq!(
        plan.service("Database").expect("db").networks[0].aliases,
        ["db"]
    );
    let db = plan.service("Database").expect("db");
    assert_eq!(db.environment.len(), 4);

    // With the service names the Rancher file was written for, its settings apply.
    let text = std::fs::read_to_string(&compose_path)
        .expect("read")
        .replace("Database:", "mysql-master:")
        .replace("Goauth:", "auth-service:")
        .replace("- Database:db", "- mysql-master:db");
    let mut r = read(&text, "docker-compose.yml", &strict_opts());
    let rtext = std::fs::read_to_string(&rancher_path).expect("read");
    let (rancher, mut problems) = read_rancher(&rtext, "rancher-compose.yml", &strict_opts());
    assert!(problems.iter().all(|p| !p.is_error()), "{problems:?}");
    let auth = &rancher["auth-service"];
    assert_eq!(auth.scale, Some(2));
    let hc = auth.health_check.as_ref().expect("health_check");
    assert_eq!(hc.port, Some(9000));
    assert_eq!(hc.request_line.as_deref(), Some("GET /health HTTP/1.0"));
    assert_eq!(hc.interval, Some(Duration::from_millis(2000)));
    assert_eq!(hc.response_timeout, Some(Duration::from_millis(2000)));
    assert_eq!(
        (hc.healthy_threshold, hc.unhealthy_threshold),
        (Some(2), Some(3))
    );
    assert_eq!(
        auth.upgrade_strategy.as_ref().and_then(|u| u.start_first),
        Some(true)
    );
    merge_rancher(&mut r.compose, &rancher, &mut problems);
    let unmatched: Vec<&str> = problems
        .iter()
        .filter(|p| p.message.contains("is not a service of"))
        .map(|p| p.message.as_str())
        .collect();
    assert_eq!(
        unmatched,
        ["Rancher service `auth-lb` is not a service of docker-compose.yml: ignored"]
    );
    let plan = Plan::of(&r.compose, &Environment::named("integration"));
    let svc = plan.service("auth-service").expect("auth-service");
    assert_eq!(svc.replicas, Some(2));
    assert_eq!(svc.strategy.order, Order::StartFirst);
    assert_eq!(svc.strategy.parallelism, 1);
    assert_eq!(svc.health_checks.len(), 1);
    let h = &svc.health_checks[0];
    assert_eq!((h.source.as_str(), h.kind.as_str()), ("rancher", "http"));
    assert_eq!(h.port, Some(9000));
    assert_eq!(
        (h.method.as_deref(), h.path.as_deref()),
        (Some("GET"), Some("/health"))
    );
    assert_eq!(h.interval, Some(Duration::from_secs(2)));
    assert_eq!(h.timeout, Some(Duration::from_secs(2)));
    assert_eq!((h.healthy_threshold, h.retries), (Some(2), Some(3)));
    let json = serde_json::to_value(&plan).expect("json");
    let js = &json["services"][1];
    assert_eq!(js["name"], "auth-service");
    assert_eq!(js["health_checks"][0]["interval"], "2s");
    assert_eq!(js["strategy"]["order"], "start-first");
    assert_eq!(js["update_config"]["order"], "start-first");
    assert_eq!(plan.service("mysql-master").expect("db").replicas, Some(1));
    assert_eq!(
        plan.service("mysql-master").expect("db").networks[0].aliases,
        ["db"]
    );
}

#[test]
fn swarm_app_stack_plans_as_written() {
    let Some(dir) = shared_dir("examples") else {
        return;
    };
    let path = dir.join("swarm-app-stack.yml");
    let r = load(&path, None, &strict_opts()).expect("reads");
    assert!(!r.has_errors(), "{}", rendered(&r));
    let env = Environment::named("production");
    let plan = Plan::of(&r.compose, &env);
    assert_eq!(plan.services.len(), 1);
    let b = &plan.services[0];
    assert_eq!(b.name, "backend");
    assert_eq!(b.image.as_deref(), Some("registry.example.com/app:latest"));
    assert_eq!((b.mode.as_str(), b.replicas), ("replicated", Some(1)));
    assert!(b.update_config.is_none());
    assert_eq!(b.strategy.order, Order::StartFirst);
    assert_eq!(b.strategy.parallelism, 1);
    let nets: Vec<&str> = b.networks.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(nets, ["nginx-net"]);
    let top: Vec<(&str, bool)> = plan
        .networks
        .iter()
        .map(|n| (n.name.as_str(), n.external))
        .collect();
    assert_eq!(top, [("nginx-net", true), ("backend", false)]);
    // nginx-proxy's variables, read by the proxy's reader.
    assert_eq!(b.routes.len(), 1, "{:?}", b.routes);
    let route = &b.routes[0];
    assert_eq!(
        (
            route.host.as_str(),
            route.port,
            route.tls.as_str(),
            route.source.as_str()
        ),
        ("test.example.com", 8000, "acme", "labels")
    );
    // No health check: TCP on the route's port, and a warning.
    assert_eq!(b.health_checks.len(), 1);
    assert_eq!(
        (b.health_checks[0].kind.as_str(), b.health_checks[0].port),
        ("tcp", Some(8000))
    );
    assert!(
        plan.warnings
            .iter()
            .any(|w| w
                == "service `backend` has no health check: a TCP check on port 8000 is assumed"),
        "{:?}",
        plan.warnings
    );
}
