//! Problems point at the line and column at fault; values read as Compose reads them.

use slipway_deploy::compose::{
    Command, Condition, FailureAction, HealthTest, Order, PortRange, Severity, Strategy,
    VolumeKind, parse_duration,
};

use crate::{lint, rendered, strict};

fn only(r: &slipway_deploy::compose::Read, severity: Severity) -> Vec<String> {
    r.problems
        .iter()
        .filter(|p| p.severity == severity)
        .map(ToString::to_string)
        .collect()
}

#[test]
fn a_bad_port_is_an_error_at_its_entry() {
    let r = lint("services:\n  web:\n    image: nginx\n    ports:\n      - \"80:http\"\n");
    assert_eq!(
        only(&r, Severity::Error),
        [
            "stack.yml:5:9: error: port `80:http`: `http` is not a port (1-65535) (write `[HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL]`, e.g. `8080:80`)"
        ],
        "{}",
        rendered(&r)
    );
}

#[test]
fn build_is_refused_at_its_key() {
    // A deploy refuses it; lint (any compose file) warns.
    let r = strict("services:\n  app:\n    build: ./app\n", &[]);
    assert_eq!(
        only(&r, Severity::Error),
        [
            "stack.yml:3:5: error: service `app`: `build: ./app` is refused: images come from pipelines; build and push the image in a pipeline and name it in `image:`"
        ],
    );
    let r = lint("services:\n  app:\n    build: ./app\n");
    assert!(!r.has_errors(), "{}", rendered(&r));
    assert_eq!(
        only(&r, Severity::Warning),
        [
            "stack.yml:3:5: warning: service `app`: `build: ./app` is refused: images come from pipelines; build and push the image in a pipeline and name it in `image:`"
        ],
    );
    // Beside an image, it is only ignored.
    let r = lint("services:\n  app:\n    image: app:1\n    build:\n      context: .\n");
    assert!(!r.has_errors(), "{}", rendered(&r));
    assert_eq!(
        only(&r, Severity::Warning),
        [
            "stack.yml:4:5: warning: service `app`: `build` is ignored: images come from pipelines; `image` is deployed"
        ]
    );
}

#[test]
fn a_missing_required_variable_is_an_error_at_its_dollar() {
    let text = "services:\n  web:\n    image: \"nginx:${TAG:?set TAG}\"\n";
    let r = strict(text, &[]);
    assert_eq!(
        only(&r, Severity::Error),
        ["stack.yml:3:19: error: required variable `TAG` is not set: set TAG"]
    );
    // The non-colon form with the corpus' message, in a plain scalar further right.
    let r = strict(
        "services:\n  web:\n    image: nginx\n    labels:\n      - traefik.frontend.rule=Host:g.${DOMAIN?Variable DOMAIN not set}\n",
        &[],
    );
    assert_eq!(
        only(&r, Severity::Error),
        ["stack.yml:5:38: error: required variable `DOMAIN` is not set: Variable DOMAIN not set"]
    );
    // Lint has no environment: a warning, and the value reads as the name.
    let r = lint(text);
    assert!(!r.has_errors(), "{}", rendered(&r));
    assert_eq!(
        only(&r, Severity::Warning),
        [
            "stack.yml:3:19: warning: required variable `TAG` is not set: set TAG (a deploy fails without it; lint reads it as `tag`)"
        ]
    );
    assert_eq!(r.compose.services[0].image.as_deref(), Some("nginx:tag"));
    // Set: no problem at all.
    let r = strict(text, &[("TAG", "1.27")]);
    assert!(r.problems.is_empty(), "{}", rendered(&r));
    assert_eq!(r.compose.services[0].image.as_deref(), Some("nginx:1.27"));
}

#[test]
fn an_unknown_key_is_a_warning_with_a_suggestion() {
    let r = lint("services:\n  web:\n    imagee: nginx\n    image: nginx\n");
    assert!(!r.has_errors(), "{}", rendered(&r));
    assert_eq!(
        only(&r, Severity::Warning),
        [
            "stack.yml:3:5: warning: unknown key `imagee` in service `web`: ignored (did you mean `image`?)"
        ]
    );
    let r = lint("version: \"3.7\"\nservices:\n  web:\n    image: nginx\n    tty: true\n");
    assert_eq!(
        only(&r, Severity::Warning),
        [
            "stack.yml:1:1: warning: `version` is obsolete and ignored (the compose specification reads every version alike)",
            "stack.yml:5:5: warning: `tty` is not supported in service `web`: ignored",
        ]
    );
}

#[test]
fn a_bad_duration_is_an_error_at_its_value() {
    let r = lint(
        "services:\n  web:\n    image: nginx\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n      interval: 10 seconds\n",
    );
    assert_eq!(
        only(&r, Severity::Error),
        [
            "stack.yml:6:17: error: `healthcheck.interval`: `10 seconds` is not a duration (write e.g. `10s`, `1m30s`, `500ms`)"
        ]
    );
    let r = lint("services:\n  web:\n    image: nginx\n    stop_grace_period: 30\n");
    assert_eq!(
        only(&r, Severity::Error),
        [
            "stack.yml:4:24: error: `stop_grace_period`: `30` has no unit (write e.g. `30s` for seconds)"
        ]
    );
    assert_eq!(
        parse_duration("1m30s").ok(),
        Some(std::time::Duration::from_secs(90))
    );
    assert_eq!(
        parse_duration("1.5s").ok(),
        Some(std::time::Duration::from_millis(1500))
    );
}

#[test]
fn interpolation_forms_as_compose_has_them() {
    let text = "services:\n  web:\n    image: nginx\n    environment:\n      A: ${SET}\n      B: ${UNSET:-d1}\n      C: ${EMPTY:-d2}\n      D: ${EMPTY-d3}\n      E: ${SET:+alt}\n      F: ${UNSET:+alt}\n      G: $$SET\n      H: ${SET:?x}\n      I: ${SET?x}\n      J: $SET/x\n";
    let r = strict(text, &[("SET", "v"), ("EMPTY", "")]);
    assert!(r.problems.is_empty(), "{}", rendered(&r));
    let env: Vec<(String, Option<String>)> = r.compose.services[0]
        .environment
        .iter()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect();
    let want = [
        ("A", "v"),
        ("B", "d1"),
        ("C", "d2"),
        ("D", ""),
        ("E", "alt"),
        ("F", ""),
        ("G", "$SET"),
        ("H", "v"),
        ("I", "v"),
        ("J", "v/x"),
    ];
    assert_eq!(
        env,
        want.iter()
            .map(|(k, v)| ((*k).to_owned(), Some((*v).to_owned())))
            .collect::<Vec<_>>()
    );
    let r = strict(
        "services:\n  web:\n    image: \"a:${EMPTY:?empty!}\"\n",
        &[("EMPTY", "")],
    );
    assert_eq!(
        only(&r, Severity::Error),
        ["stack.yml:3:15: error: required variable `EMPTY` is not set: empty!"]
    );
    // `?` without the colon accepts an empty value.
    let r = strict(
        "services:\n  web:\n    image: \"a:${EMPTY?unset}b\"\n",
        &[("EMPTY", "")],
    );
    assert!(!r.has_errors(), "{}", rendered(&r));
    assert_eq!(r.compose.services[0].image.as_deref(), Some("a:b"));
}

#[test]
fn the_keys_users_have() {
    let text = r#"
x-common: &common
  restart: unless-stopped
  labels:
    team: web
services:
  web:
    <<: *common
    image: registry.example.com/web:1
    command: ["serve", "--port", "8080"]
    entrypoint: /bin/entry
    environment:
      - MODE=prod
      - FROM_VARS
    ports:
      - "8080:80"
      - "127.0.0.1:9229:9229/udp"
      - "9000-9002:9000-9002"
      - "3000"
      - target: 443
        published: 8443
        protocol: tcp
        mode: host
    expose: ["7000", "7100-7101/tcp"]
    deploy:
      mode: replicated
      replicas: 3
      labels: [APP=VOTING]
      update_config:
        parallelism: 2
        delay: 10s
        order: stop-first
        failure_action: pause
        monitor: 30s
        max_failure_ratio: 0.2
      rollback_config: {parallelism: 1, order: start-first, failure_action: continue}
      resources:
        limits: {cpus: "0.5", memory: 512M}
        reservations: {cpus: 0.25, memory: 128M}
      restart_policy: {condition: on-failure, delay: 5s, max_attempts: 3, window: 120s}
      placement:
        constraints: [node.role == manager]
    volumes:
      - data:/data
      - ./conf:/etc/conf:ro
      - /tmp/x
      - type: bind
        source: /var/run/docker.sock
        target: /var/run/docker.sock
        read_only: true
      - type: volume
        source: nfs
        target: /mnt
    networks:
      front:
        aliases: [www]
      back: {}
    depends_on:
      db:
        condition: service_healthy
      migrate:
        condition: service_completed_successfully
    healthcheck:
      test: curl -f http://localhost/
      interval: 15s
      timeout: 5s
      retries: 4
      start_period: 1m
    stop_grace_period: 1m30s
    stop_signal: SIGINT
    user: "1000:1000"
    working_dir: /app
    secrets:
      - db_password
      - source: api_key
        target: api
        mode: 0440
    configs: [app_conf]
    x-team: web
    x-slipway:
      strategy: canary
      steps: [{weight: 10, pause: 2m}, {weight: 50}]
      bake: 10m
      max_error_rate: 0.05
      route: {host: app.example.com, path: /api, port: 8080, tls: none}
      keep_old: 1h
  db:
    image: postgres:16
    healthcheck:
      test: ["CMD-SHELL", "pg_isready"]
  migrate:
    image: registry.example.com/web:1
    healthcheck:
      disable: true
networks:
  front: {}
  back:
    driver: overlay
    attachable: true
  outside:
    external: true
volumes:
  data: {}
  nfs:
    driver: local
    driver_opts:
      type: nfs
      o: addr=10.0.0.1,rw
      device: ":/exports/data"
secrets:
  db_password: {file: ./db_password.txt}
  api_key: {environment: API_KEY}
configs:
  app_conf: {external: true}
"#;
    let r = strict(text, &[("FROM_VARS", "fv")]);
    assert!(!r.has_errors(), "{}", rendered(&r));
    let c = &r.compose;
    let web = c.service("web").expect("web");
    assert_eq!(web.restart.as_deref(), Some("unless-stopped"));
    assert_eq!(web.labels.get("team").map(String::as_str), Some("web"));
    assert_eq!(
        web.command,
        Some(Command::Exec(vec![
            "serve".into(),
            "--port".into(),
            "8080".into()
        ]))
    );
    assert_eq!(web.entrypoint, Some(Command::Shell("/bin/entry".into())));
    let env: Vec<_> = web
        .environment
        .iter()
        .map(|e| (e.name.as_str(), e.value.as_deref()))
        .collect();
    assert_eq!(env, [("MODE", Some("prod")), ("FROM_VARS", Some("fv"))]);
    let ports: Vec<_> = web
        .ports
        .iter()
        .map(|p| {
            (
                p.published.map(|p| p.to_string()),
                p.target.to_string(),
                p.protocol.as_str(),
                p.host_ip.as_deref(),
                p.mode.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            (Some("8080".into()), "80".into(), "tcp", None, None),
            (
                Some("9229".into()),
                "9229".into(),
                "udp",
                Some("127.0.0.1"),
                None
            ),
            (
                Some("9000-9002".into()),
                "9000-9002".into(),
                "tcp",
                None,
                None
            ),
            (None, "3000".into(), "tcp", None, None),
            (Some("8443".into()), "443".into(), "tcp", None, Some("host")),
        ]
    );
    assert_eq!(
        web.expose,
        [
            PortRange::single(7000),
            PortRange {
                start: 7100,
                end: 7101
            }
        ]
    );
    let d = &web.deploy;
    assert_eq!(
        (d.mode.as_deref(), d.replicas),
        (Some("replicated"), Some(3))
    );
    assert_eq!(d.labels.get("APP").map(String::as_str), Some("VOTING"));
    let uc = d.update_config.as_ref().expect("update_config");
    assert_eq!(uc.parallelism, Some(2));
    assert_eq!(uc.delay, Some(std::time::Duration::from_secs(10)));
    assert_eq!(uc.order, Some(Order::StopFirst));
    assert_eq!(uc.failure_action, Some(FailureAction::Pause));
    assert_eq!(uc.monitor, Some(std::time::Duration::from_secs(30)));
    assert_eq!(uc.max_failure_ratio, Some(0.2));
    let rc = d.rollback_config.as_ref().expect("rollback_config");
    assert_eq!(rc.failure_action, Some(FailureAction::Continue));
    let res = d.resources.as_ref().expect("resources");
    let limits = res.limits.as_ref().expect("limits");
    assert_eq!((limits.cpus, limits.memory), (Some(0.5), Some(512 << 20)));
    assert_eq!(
        res.reservations.as_ref().and_then(|r| r.memory),
        Some(128 << 20)
    );
    let rp = d.restart_policy.as_ref().expect("restart_policy");
    assert_eq!(rp.max_attempts, Some(3));
    assert_eq!(
        d.placement,
        Some(serde_json::json!({"constraints": ["node.role == manager"]}))
    );
    let vols: Vec<_> = web
        .volumes
        .iter()
        .map(|v| {
            (
                v.kind,
                v.source.as_deref(),
                v.target.as_str(),
                v.read_only,
                v.is_bind(),
            )
        })
        .collect();
    assert_eq!(
        vols,
        [
            (VolumeKind::Volume, Some("data"), "/data", false, false),
            (VolumeKind::Bind, Some("./conf"), "/etc/conf", true, true),
            (VolumeKind::Volume, None, "/tmp/x", false, false),
            (
                VolumeKind::Bind,
                Some("/var/run/docker.sock"),
                "/var/run/docker.sock",
                true,
                true
            ),
            (VolumeKind::Volume, Some("nfs"), "/mnt", false, false),
        ]
    );
    assert_eq!(web.networks[0].aliases, ["www"]);
    let deps: Vec<_> = web
        .depends_on
        .iter()
        .map(|d| (d.service.as_str(), d.condition))
        .collect();
    assert_eq!(
        deps,
        [
            ("db", Condition::ServiceHealthy),
            ("migrate", Condition::ServiceCompletedSuccessfully)
        ]
    );
    let h = web.healthcheck.as_ref().expect("healthcheck");
    assert_eq!(
        h.test,
        Some(HealthTest::CmdShell("curl -f http://localhost/".into()))
    );
    assert_eq!(
        (h.retries, h.start_period),
        (Some(4), Some(std::time::Duration::from_secs(60)))
    );
    assert_eq!(
        web.stop_grace_period,
        Some(std::time::Duration::from_secs(90))
    );
    assert_eq!(web.stop_signal.as_deref(), Some("SIGINT"));
    assert_eq!(web.user.as_deref(), Some("1000:1000"));
    assert_eq!(web.working_dir.as_deref(), Some("/app"));
    assert_eq!(web.secrets[1].mode, Some(0o440));
    assert_eq!(web.secrets[1].target.as_deref(), Some("api"));
    assert_eq!(web.configs[0].source, "app_conf");
    assert_eq!(
        web.extensions.get("x-team"),
        Some(&serde_json::json!("web"))
    );
    let x = web.slipway.as_ref().expect("x-slipway");
    assert_eq!(x.strategy, Some(Strategy::Canary));
    assert_eq!(x.steps.len(), 2);
    assert_eq!(x.steps[0].pause, Some(std::time::Duration::from_secs(120)));
    assert_eq!(x.max_error_rate, Some(0.05));
    let route = x.route.as_ref().expect("route");
    assert_eq!(
        (
            route.host.as_deref(),
            route.path.as_deref(),
            route.port,
            route.tls
        ),
        (
            Some("app.example.com"),
            Some("/api"),
            Some(8080),
            Some(false)
        )
    );
    assert_eq!(x.keep_old, Some(std::time::Duration::from_secs(3600)));
    let db = c.service("db").expect("db");
    assert_eq!(
        db.healthcheck.as_ref().and_then(|h| h.test.clone()),
        Some(HealthTest::CmdShell("pg_isready".into()))
    );
    let migrate = c.service("migrate").expect("migrate");
    assert!(
        migrate
            .healthcheck
            .as_ref()
            .is_some_and(|h| h.disable && h.test.is_none())
    );
    // Top level.
    let back = &c.networks[1];
    assert_eq!(
        (back.driver.as_deref(), back.attachable),
        (Some("overlay"), true)
    );
    assert!(c.networks[2].external);
    let nfs = &c.volumes[1];
    assert_eq!(nfs.driver_opts.get("type").map(String::as_str), Some("nfs"));
    assert_eq!(
        nfs.driver_opts.get("o").map(String::as_str),
        Some("addr=10.0.0.1,rw")
    );
    assert_eq!(
        nfs.driver_opts.get("device").map(String::as_str),
        Some(":/exports/data")
    );
    assert_eq!(c.secrets[0].file.as_deref(), Some("./db_password.txt"));
    assert_eq!(c.secrets[1].environment.as_deref(), Some("API_KEY"));
    assert!(c.configs[0].external);
    assert!(c.extensions.contains_key("x-common"));
}

#[test]
fn references_to_undeclared_things_are_errors() {
    let r = lint(
        "services:\n  web:\n    image: nginx\n    networks: [nope]\n    depends_on: [ghost]\n    volumes: [\"vol:/v\"]\n",
    );
    assert_eq!(
        only(&r, Severity::Error),
        [
            "stack.yml:2:3: error: service `web` depends on `ghost`, which is not a service of this file",
            "stack.yml:2:3: error: service `web` uses network `nope`, which is not declared under the top-level `networks:`",
            "stack.yml:2:3: error: service `web` mounts volume `vol`, which is not declared under the top-level `volumes:`",
        ]
    );
}

#[test]
fn env_file_is_read_relative_to_the_stack_and_environment_wins() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("conf")).expect("mkdir");
    std::fs::write(dir.path().join("conf/app.env"), "A=from-file\nB=file\n").expect("write");
    let stack = dir.path().join("stack.yml");
    std::fs::write(
        &stack,
        "services:\n  web:\n    image: nginx\n    environment:\n      B: inline\n    env_file: conf/app.env\n",
    )
    .expect("write");
    let r = slipway_deploy::compose::load(&stack, None, &Default::default()).expect("reads");
    assert!(!r.has_errors(), "{}", rendered(&r));
    let env: Vec<_> = r.compose.services[0]
        .environment
        .iter()
        .map(|e| (e.name.as_str(), e.value.as_deref()))
        .collect();
    assert_eq!(env, [("A", Some("from-file")), ("B", Some("inline"))]);
}
