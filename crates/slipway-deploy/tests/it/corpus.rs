//! Every file of `../shared/corpus/compose` lints without errors (a `build:` without an
//! image is a warning there) and reads and plans as its `expect.json` says; planned for a
//! deploy (strict), each `build:` without an image is refused.

use std::collections::BTreeMap;

use serde_json::Value;
use slipway_deploy::compose::{Compose, Mode, ReadOptions, Service, load};
use slipway_deploy::plan::{Environment, Plan};

use crate::{rendered, shared_dir};

fn vars() -> BTreeMap<String, String> {
    [
        ("DOMAIN", "example.test"),
        ("ADMIN_USER", "admin"),
        ("HASHED_PASSWORD", "$apr1$x$y"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

/// The errors a file is expected to have when planned for a deploy: the refusal of each
/// `build:` without an image.
fn expected_errors(expect: &Value, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let details = expect["service_details"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for name in expect["services"].as_array().into_iter().flatten() {
        let name = name.as_str().unwrap_or_default();
        let d = &details[name];
        if let Some(b) = d["build"].as_str()
            && d["image"].is_null()
        {
            assert!(text.contains("build:"), "{name}");
            out.push(format!(
                "service `{name}`: `build: {b}` is refused: images come from pipelines; build and push the image in a pipeline and name it in `image:`"
            ));
        }
    }
    out.sort();
    out
}

fn errors(r: &slipway_deploy::compose::Read) -> Vec<String> {
    let mut e: Vec<String> = r
        .problems
        .iter()
        .filter(|p| p.is_error())
        .map(|p| p.message.clone())
        .collect();
    e.sort();
    e
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            s.as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| s.to_string())
        })
        .collect()
}

fn check_service(file: &str, s: &Service, d: &Value) {
    let at = format!("{file}: service {}", s.name);
    assert_eq!(s.image.as_deref(), d["image"].as_str(), "{at}: image");
    assert_eq!(s.build.as_deref(), d["build"].as_str(), "{at}: build");
    let ports = d["ports"].as_array().cloned().unwrap_or_default();
    assert_eq!(s.ports.len(), ports.len(), "{at}: ports");
    for (p, e) in s.ports.iter().zip(&ports) {
        assert_eq!(
            p.raw,
            e["raw"].as_str().unwrap_or_else(|| &p.raw),
            "{at}: raw"
        );
        assert_eq!(
            p.published.map(|x| x.to_string()).as_deref(),
            e["published"].as_str(),
            "{at}: published {}",
            p.raw
        );
        assert_eq!(
            Some(p.target.to_string().as_str()),
            e["target"].as_str(),
            "{at}: target"
        );
        assert_eq!(
            Some(p.protocol.as_str()),
            e["protocol"].as_str(),
            "{at}: protocol"
        );
        assert_eq!(p.host_ip.as_deref(), e["host_ip"].as_str(), "{at}: host_ip");
        assert_eq!(p.mode.as_deref(), e["mode"].as_str(), "{at}: mode");
    }
    let published: Vec<String> = s
        .ports
        .iter()
        .filter_map(|p| p.published.map(|x| x.to_string()))
        .collect();
    assert_eq!(
        published,
        strs(&d["published_ports"]),
        "{at}: published_ports"
    );
    assert_eq!(
        Some(s.labels.len() as u64),
        d["labels_count"].as_u64(),
        "{at}: labels"
    );
    assert_eq!(
        Some(s.deploy.labels.len() as u64),
        d["deploy_labels_count"].as_u64(),
        "{at}: deploy labels"
    );
    let traefik = s
        .labels
        .keys()
        .chain(s.deploy.labels.keys())
        .filter(|k| k.starts_with("traefik."))
        .count() as u64;
    assert_eq!(
        traefik,
        d["traefik_labels"].as_u64().unwrap_or(0),
        "{at}: traefik labels"
    );
    assert_eq!(
        s.deploy.replicas.map(u64::from),
        d["replicas"].as_u64(),
        "{at}: replicas"
    );
    assert_eq!(
        s.deploy.mode.as_deref(),
        d["deploy_mode"].as_str(),
        "{at}: mode"
    );
    match d.get("update_config") {
        None => assert!(s.deploy.update_config.is_none(), "{at}: update_config"),
        Some(e) => {
            let uc = serde_json::to_value(s.deploy.update_config.as_ref()).expect("json");
            let e = e.as_object().cloned().unwrap_or_default();
            assert_eq!(uc.as_object().map(|o| o.len()), Some(e.len()), "{at}: {uc}");
            for (k, v) in e {
                assert_eq!(uc[&k], v, "{at}: update_config.{k}");
            }
        }
    }
    assert_eq!(
        s.healthcheck.is_some(),
        d["healthcheck"].as_bool().unwrap_or(false),
        "{at}: healthcheck"
    );
    match d.get("depends_on") {
        None => assert!(s.depends_on.is_empty(), "{at}: depends_on"),
        Some(Value::Array(list)) => {
            assert!(!s.depends_on_long, "{at}");
            let names: Vec<&str> = s.depends_on.iter().map(|x| x.service.as_str()).collect();
            assert_eq!(names, strs(&Value::Array(list.clone())), "{at}: depends_on");
        }
        Some(Value::Object(map)) => {
            assert!(s.depends_on_long, "{at}");
            let mut got: Vec<(String, String)> = s
                .depends_on
                .iter()
                .map(|x| (x.service.clone(), x.condition.as_str().to_owned()))
                .collect();
            let want: Vec<(String, String)> = map
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            // A JSON object has no order: compare as sets.
            got.sort();
            assert_eq!(got, want, "{at}: depends_on");
        }
        Some(other) => panic!("{at}: depends_on {other}"),
    }
    let nets: Vec<String> = s.networks.iter().map(|n| n.name.clone()).collect();
    assert_eq!(nets, strs(&d["networks"]), "{at}: networks");
    assert_eq!(s.profiles, strs(&d["profiles"]), "{at}: profiles");
    if let Some(pe) = d["proxy_env"].as_object() {
        for (k, v) in pe {
            let got = s
                .environment
                .iter()
                .find(|e| &e.name == k)
                .and_then(|e| e.value.clone());
            assert_eq!(got.as_deref(), v.as_str(), "{at}: {k}");
        }
    }
}

fn check_plan(file: &str, c: &Compose, plan: &Plan, expect: &Value) {
    let names: Vec<String> = plan.services.iter().map(|s| s.name.clone()).collect();
    assert_eq!(names, strs(&expect["services"]), "{file}: plan services");
    for s in &plan.services {
        let at = format!("{file}: plan of {}", s.name);
        let d = &expect["service_details"][&s.name];
        assert_eq!(s.image.as_deref(), d["image"].as_str(), "{at}");
        if d["deploy_mode"] == "global" {
            assert_eq!((s.mode.as_str(), s.replicas), ("global", None), "{at}");
        } else {
            assert_eq!(s.mode, "replicated", "{at}");
            assert_eq!(
                s.replicas,
                Some(d["replicas"].as_u64().unwrap_or(1) as u32),
                "{at}"
            );
        }
        let want_nets = match strs(&d["networks"]) {
            n if n.is_empty() => vec!["default".to_owned()],
            n => n,
        };
        let nets: Vec<String> = s.networks.iter().map(|n| n.name.clone()).collect();
        assert_eq!(nets, want_nets, "{at}: networks");
        let published: Vec<String> = s
            .ports
            .iter()
            .filter_map(|p| p.published.map(|x| x.to_string()))
            .collect();
        assert_eq!(published, strs(&d["published_ports"]), "{at}: ports");
        let mut deps: Vec<&str> = s.depends_on.iter().map(|x| x.service.as_str()).collect();
        let want_deps: Vec<String> = match &d["depends_on"] {
            Value::Object(m) => {
                deps.sort();
                m.keys().cloned().collect()
            }
            v => strs(v),
        };
        assert_eq!(deps, want_deps, "{at}: depends_on");
        if let Some(uc) = d.get("update_config") {
            if let Some(p) = uc["parallelism"].as_u64() {
                assert_eq!(u64::from(s.strategy.parallelism), p, "{at}: parallelism");
            }
            if let Some(fa) = uc["failure_action"].as_str() {
                let got = serde_json::to_value(s.strategy.failure_action).expect("json");
                assert_eq!(got, fa, "{at}: failure_action");
            }
            if let Some(delay) = uc["delay"].as_str() {
                let got = serde_json::to_value(&s.strategy).expect("json");
                assert_eq!(got["delay"], delay, "{at}: delay");
            }
        } else {
            assert_eq!(s.strategy.parallelism, 1, "{at}: default parallelism");
            assert_eq!(
                serde_json::to_value(s.strategy.order).expect("json"),
                "start-first",
                "{at}: default order"
            );
        }
        if d["healthcheck"] == true {
            assert_eq!(s.health_checks[0].source, "compose", "{at}: health");
        }
        assert!(
            !s.health_checks.is_empty()
                || plan
                    .warnings
                    .iter()
                    .any(|w| w.contains(&format!("service `{}`", s.name))),
            "{at}: no check and no warning"
        );
        if let Some(vh) = d["proxy_env"]["VIRTUAL_HOST"].as_str() {
            assert!(
                s.routes
                    .iter()
                    .any(|r| r.host == vh && r.source == "labels"),
                "{at}: VIRTUAL_HOST route: {:?}",
                s.routes
            );
        }
        let traefik_enabled = !c.service(&s.name).is_some_and(|svc| {
            svc.labels
                .get("traefik.enable")
                .or(svc.deploy.labels.get("traefik.enable"))
                .is_some_and(|v| v == "false")
        });
        if d["traefik_labels"].as_u64().unwrap_or(0) > 0 && traefik_enabled {
            assert!(
                s.routes.iter().any(|r| r.source == "labels"),
                "{at}: Traefik labels but no route; warnings {:?}",
                plan.warnings
            );
        }
    }
    let top: Vec<String> = c.networks.iter().map(|n| n.name.clone()).collect();
    assert_eq!(top, strs(&expect["top_level_networks"]), "{file}: networks");
    let vols: Vec<String> = plan.volumes.iter().map(|n| n.name.clone()).collect();
    assert_eq!(vols, strs(&expect["top_level_volumes"]), "{file}: volumes");
    let secrets: Vec<String> = plan.secrets.iter().map(|n| n.name.clone()).collect();
    assert_eq!(
        secrets,
        strs(&expect["top_level_secrets"]),
        "{file}: secrets"
    );
}

#[test]
fn every_corpus_file_lints_and_plans_as_expected() {
    let Some(dir) = shared_dir("corpus/compose") else {
        return;
    };
    let expect: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("expect.json")).expect("expect.json"),
    )
    .expect("expect.json is JSON");
    let expect = expect.as_object().expect("a map of files");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus dir") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if !(name.ends_with(".yml") || name.ends_with(".yaml")) {
            continue;
        }
        seen += 1;
        let e = expect
            .get(&name)
            .unwrap_or_else(|| panic!("{name} is not in expect.json"));
        let text = std::fs::read_to_string(&path).expect("read");
        let want_errors = expected_errors(e, &text);

        // Lint: no environment.
        let r = load(&path, None, &ReadOptions::default()).expect("reads");
        assert!(errors(&r).is_empty(), "{name} (lint):\n{}", rendered(&r));
        for refusal in &want_errors {
            assert!(
                r.problems
                    .iter()
                    .any(|p| !p.is_error() && &p.message == refusal),
                "{name} (lint): no warning `{refusal}`"
            );
        }
        let c = &r.compose;
        assert_eq!(
            c.version.as_deref(),
            e["version"].as_str(),
            "{name}: version"
        );
        let names: Vec<String> = c.services.iter().map(|s| s.name.clone()).collect();
        assert_eq!(names, strs(&e["services"]), "{name}: services");
        for s in &c.services {
            check_service(&name, s, &e["service_details"][&s.name]);
        }
        // `expect.json` counts `${…}` of the whole text, comments too; the reader those
        // of values. Every one it saw is expected, and every other is commented out.
        let want_interp = strs(&e["interpolation"]);
        for x in &c.interpolations {
            assert!(
                want_interp.contains(x),
                "{name}: unexpected interpolation {x}"
            );
        }
        for x in want_interp.iter().filter(|x| !c.interpolations.contains(x)) {
            assert!(
                text.lines().filter(|l| l.contains(x.as_str())).all(|l| l
                    .find('#')
                    .is_some_and(|h| h < l.find(x.as_str()).unwrap_or(0))),
                "{name}: {x} is used but was not seen"
            );
        }
        assert!(
            !c.interpolations.is_empty() || want_interp.is_empty(),
            "{name}"
        );
        let ext: Vec<String> = c.extensions.keys().cloned().collect();
        assert_eq!(ext, strs(&e["extension_fields"]), "{name}: x- fields");
        if e["yaml_anchors_or_merge_keys"] == true {
            // The merged keys reached every service that has `<<:` (dogvscat merges
            // `logging`, which Slipway ignores with a warning naming the service).
            let merged = r
                .problems
                .iter()
                .filter(|p| {
                    p.message
                        .starts_with("`logging` is not supported in service")
                })
                .count();
            let merges = text.matches("<<: *").count();
            assert!(
                merges > 0 && merged == merges,
                "{name}: {merged} of {merges} merges seen"
            );
            assert!(
                !r.problems.iter().any(|p| p.message.contains("`<<`")),
                "{name}"
            );
        }

        // Plan: the variables a deploy would give; `DOMAIN` etc. are required there.
        let opts = ReadOptions {
            vars: vars(),
            mode: Mode::Strict,
            base_dir: None,
        };
        let r = load(&path, None, &opts).expect("reads");
        let mut want = want_errors.clone();
        if name.starts_with("vegasbrianc") {
            // Its env_file is not part of the corpus: a deploy must refuse.
            want.push(format!(
                "env_file `./grafana/config.monitoring` cannot be read ({}): No such file or directory (os error 2)",
                dir.join("./grafana/config.monitoring").display()
            ));
            want.sort();
        }
        assert_eq!(errors(&r), want, "{name} (strict):\n{}", rendered(&r));
        let env = Environment {
            name: "test".to_owned(),
            domain: Some("example.test".to_owned()),
            variables: vars(),
            secrets: BTreeMap::new(),
        };
        let plan = Plan::of(&r.compose, &env);
        check_plan(&name, &r.compose, &plan, e);
        // The JSON has the documented top-level shape.
        let json = serde_json::to_value(&plan).expect("json");
        for key in [
            "schema",
            "file",
            "environment",
            "domain",
            "services",
            "networks",
            "volumes",
            "secrets",
            "configs",
            "warnings",
        ] {
            assert!(json.get(key).is_some(), "{name}: plan JSON lacks `{key}`");
        }
    }
    assert_eq!(seen, expect.len(), "every expected file was read");
    assert_eq!(seen, 13);
}

#[test]
fn a_required_variable_of_the_corpus_fails_a_deploy_with_its_message() {
    let Some(dir) = shared_dir("corpus/compose") else {
        return;
    };
    let path = dir.join("stefanprodan__swarmprom__docker-compose.traefik.yml");
    let opts = ReadOptions {
        mode: Mode::Strict,
        ..ReadOptions::default()
    };
    let r = load(&path, None, &opts).expect("reads");
    let domain: Vec<&str> = r
        .problems
        .iter()
        .filter(|p| p.is_error() && p.message.contains("DOMAIN"))
        .map(|p| p.message.as_str())
        .collect();
    assert!(!domain.is_empty(), "{}", rendered(&r));
    assert!(
        domain
            .iter()
            .all(|m| *m == "required variable `DOMAIN` is not set: Variable DOMAIN not set"),
        "{domain:?}"
    );
}
