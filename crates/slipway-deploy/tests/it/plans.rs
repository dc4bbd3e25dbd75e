//! Plans: secrets hidden, routes from the domain, `x-slipway` and labels, checks assumed.

use std::collections::BTreeMap;

use slipway_deploy::compose::{Mode, ReadOptions, Strategy, read};
use slipway_deploy::plan::{EnvValue, Environment, Plan};

use crate::rendered;

const STACK: &str = r#"
services:
  api:
    image: registry.example.com/api:1
    environment:
      DATABASE_URL: postgres://app:${DB_PASSWORD}@db/app
      MODE: ${MODE:-prod}
    expose: ["8080"]
    x-slipway:
      strategy: blue-green
      route: {path: /api, tls: none}
      bake: 5m
  web:
    image: registry.example.com/web:1
    labels:
      traefik.http.routers.web.rule: Host(`www.example.com`)
      traefik.http.routers.web.tls.certresolver: le
      traefik.http.services.web.loadbalancer.server.port: "3000"
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://localhost:3000/"]
  db:
    image: postgres:16
    expose: ["5432"]
"#;

#[test]
fn a_plan_hides_secrets_and_finds_every_route() {
    let env = Environment {
        name: "prod".to_owned(),
        domain: Some("example.com".to_owned()),
        variables: BTreeMap::new(),
        secrets: [("DB_PASSWORD".to_owned(), "hunter2".to_owned())].into(),
    };
    let r = read(
        STACK,
        "stack.yml",
        &ReadOptions {
            vars: env.interpolation_vars(),
            mode: Mode::Strict,
            base_dir: None,
        },
    );
    assert!(r.problems.is_empty(), "{}", rendered(&r));
    let plan = Plan::of(&r.compose, &env);
    let json = serde_json::to_string(&plan).expect("json");
    assert!(
        !json.contains("hunter2"),
        "a secret's value is printed: {json}"
    );

    let api = plan.service("api").expect("api");
    assert_eq!(
        api.environment["DATABASE_URL"],
        EnvValue::Secret {
            secret: vec!["DB_PASSWORD".to_owned()]
        }
    );
    assert_eq!(api.environment["MODE"], EnvValue::Plain("prod".to_owned()));
    assert_eq!(api.routes.len(), 1);
    let r0 = &api.routes[0];
    assert_eq!(
        (
            r0.host.as_str(),
            r0.path.as_deref(),
            r0.port,
            r0.tls.as_str(),
            r0.source.as_str()
        ),
        ("api.example.com", Some("/api"), 8080, "none", "x-slipway")
    );
    assert_eq!(api.strategy.kind, Strategy::BlueGreen);
    assert_eq!(api.strategy.bake, Some(std::time::Duration::from_secs(300)));
    assert_eq!(api.health_checks[0].source, "default");
    assert_eq!(api.health_checks[0].port, Some(8080));

    let web = plan.service("web").expect("web");
    let hosts: Vec<(&str, u16, &str, &str)> = web
        .routes
        .iter()
        .map(|r| (r.host.as_str(), r.port, r.tls.as_str(), r.source.as_str()))
        .collect();
    assert_eq!(hosts, [("www.example.com", 3000, "acme", "labels")]);
    assert_eq!(web.health_checks.len(), 1);
    assert_eq!(web.health_checks[0].source, "compose");

    // A database port is not HTTP: no domain route; a TCP check on its one port.
    let db = plan.service("db").expect("db");
    assert!(db.routes.is_empty(), "{:?}", db.routes);
    assert_eq!(db.health_checks[0].port, Some(5432));
    assert_eq!(
        plan.warnings
            .iter()
            .filter(|w| w.contains("has no health check"))
            .count(),
        2,
        "{:?}",
        plan.warnings
    );
}

#[test]
fn x_slipway_logs_become_the_collectors_labels_and_a_bad_pattern_is_placed() {
    use slipway_deploy::stack::service_specs;
    use slipway_deploy::target::{
        LABEL_LOGS_JSON, LABEL_LOGS_MULTILINE, LABEL_LOGS_MULTILINE_TIMEOUT,
    };

    let text = "services:\n  api:\n    image: api:1\n    expose: [\"8080\"]\n    x-slipway:\n      logs: {multiline: '^\\S', multiline_timeout: 2s, json: true}\n";
    let options = ReadOptions {
        vars: BTreeMap::new(),
        mode: Mode::Strict,
        base_dir: None,
    };
    let r = read(text, "stack.yml", &options);
    assert!(r.problems.is_empty(), "{}", rendered(&r));
    let env = Environment::named("prod");
    let plan = Plan::of(&r.compose, &env);
    let specs = service_specs(
        &r.compose,
        &plan,
        "prod",
        "app",
        "1",
        &BTreeMap::new(),
        false,
    )
    .expect("specs");
    let labels = &specs[0].template.labels;
    assert_eq!(labels[LABEL_LOGS_MULTILINE], "^\\S");
    assert_eq!(labels[LABEL_LOGS_MULTILINE_TIMEOUT], "2s");
    assert_eq!(labels[LABEL_LOGS_JSON], "true");

    let bad = text.replace("'^\\S'", "'(unclosed'");
    let r = read(&bad, "stack.yml", &options);
    let problems = rendered(&r);
    assert!(
        problems.contains("stack.yml:6:25")
            && problems.contains("`multiline` is not a regular expression"),
        "{problems}"
    );
}
