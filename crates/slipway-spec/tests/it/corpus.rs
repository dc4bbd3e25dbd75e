//! Every real-world `.drone.yml` of `../shared/corpus/pipelines` against its `expect.json`.

use serde_json::Value;
use slipway_spec::model::{ConfigDocument, Format};
use slipway_spec::parse::parse;
use slipway_spec::{BuildContext, BuildEvent};

use crate::shared_dir;

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn corpus_pipelines_parse_as_expected() {
    let Some(dir) = shared_dir("corpus/pipelines") else {
        return;
    };
    let expect: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("expect.json")).expect("expect.json readable"),
    )
    .expect("expect.json is JSON");
    let files = expect.as_object().expect("expect.json is an object");
    assert!(files.len() >= 32, "corpus has {} files", files.len());
    let mut failures = Vec::new();
    for (file, exp) in files {
        let text = std::fs::read_to_string(dir.join(file)).expect("corpus file readable");
        let mut fail = |msg: String| failures.push(format!("{file}: {msg}"));

        let diags = slipway_spec::lint(&text);
        for d in diags.iter().filter(|d| d.is_error()) {
            fail(format!("lint error {}:{}: {}", d.line, d.col, d.message));
        }

        let (config, _) = parse(&text);
        let format = match config.format {
            Format::V1 => "1.x",
            Format::Legacy => "legacy",
        };
        if Some(format) != exp["format"].as_str() {
            fail(format!("format {format}, expected {}", exp["format"]));
        }
        let pipelines: Vec<_> = config.pipelines().collect();
        if Some(pipelines.len() as u64) != exp["pipelines_count"].as_u64() {
            fail(format!(
                "{} pipelines, expected {}",
                pipelines.len(),
                exp["pipelines_count"]
            ));
        }
        let others: Vec<String> = config
            .documents
            .iter()
            .filter_map(|d| match d {
                ConfigDocument::Other { kind, .. } => Some(kind.clone()),
                ConfigDocument::Pipeline(_) => None,
            })
            .collect();
        if others != strings(exp.get("other_documents")) {
            fail(format!(
                "other documents {others:?}, expected {}",
                exp["other_documents"]
            ));
        }
        let expected = exp["pipelines"].as_array().cloned().unwrap_or_default();
        for (p, e) in pipelines.iter().zip(&expected) {
            if Some(p.name.as_str()) != e["name"].as_str() {
                fail(format!("pipeline `{}`, expected {}", p.name, e["name"]));
            }
            if let Some(implicit) = e.get("name_implicit").and_then(Value::as_bool)
                && implicit != p.name_implicit
            {
                fail(format!(
                    "pipeline `{}` name_implicit {}",
                    p.name, p.name_implicit
                ));
            }
            if let Some(ty) = e["type"].as_str()
                && ty != p.kind.as_str()
            {
                fail(format!(
                    "pipeline `{}` type {}, expected {ty}",
                    p.name,
                    p.kind.as_str()
                ));
            }
            let steps: Vec<String> = p.steps.iter().map(|s| s.name.clone()).collect();
            if steps != strings(e.get("steps")) {
                fail(format!(
                    "pipeline `{}` steps {steps:?}, expected {}",
                    p.name, e["steps"]
                ));
            }
            let services: Vec<String> = p.services.iter().map(|s| s.name.clone()).collect();
            if services != strings(e.get("services")) {
                fail(format!(
                    "pipeline `{}` services {services:?}, expected {:?}",
                    p.name,
                    e.get("services")
                ));
            }
            let deps: Vec<String> = p.depends_on.iter().map(|d| d.name.clone()).collect();
            if deps != strings(e.get("depends_on")) {
                fail(format!(
                    "pipeline `{}` depends_on {deps:?}, expected {:?}",
                    p.name,
                    e.get("depends_on")
                ));
            }
            if p.clone_steps != strings(e.get("clone_steps")) {
                fail(format!(
                    "pipeline `{}` clone steps {:?}, expected {:?}",
                    p.name,
                    p.clone_steps,
                    e.get("clone_steps")
                ));
            }
            if let Some(groups) = e.get("groups").and_then(Value::as_object) {
                for (group, members) in groups {
                    let got: Vec<String> = p
                        .steps
                        .iter()
                        .filter(|s| s.group.as_deref() == Some(group))
                        .map(|s| s.name.clone())
                        .collect();
                    if got != strings(Some(members)) {
                        fail(format!("group `{group}` has {got:?}, expected {members}"));
                    }
                }
            }
        }

        // Every file compiles for an ordinary push, and matrices expand as Drone does.
        let ctx = BuildContext {
            event: BuildEvent::Push,
            branch: "master".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            repo: "octo/demo".into(),
            build_number: 7,
            ..BuildContext::default()
        };
        match slipway_spec::compile(&text, &ctx) {
            Err(diags) => fail(format!("compile failed: {diags:?}")),
            Ok(compiled) => {
                let want = exp
                    .get("matrix_size")
                    .and_then(Value::as_u64)
                    .or(exp["pipelines_count"].as_u64());
                if Some(compiled.plan.pipelines.len() as u64) != want {
                    fail(format!(
                        "compiled {} pipelines, expected {want:?}",
                        compiled.plan.pipelines.len()
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn legacy_matrix_keeps_versions_as_written() {
    let Some(dir) = shared_dir("corpus/pipelines") else {
        return;
    };
    let text = std::fs::read_to_string(dir.join("go-xorm__xorm.drone.yml")).expect("readable");
    let ctx = BuildContext {
        branch: "master".into(),
        ..BuildContext::default()
    };
    let plan = slipway_spec::compile(&text, &ctx).expect("compiles").plan;
    let names: Vec<&str> = plan.pipelines.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["matrix-1", "matrix-2", "matrix-3"]);
    let images: Vec<&str> = plan
        .pipelines
        .iter()
        .map(|p| {
            p.steps
                .iter()
                .find(|s| s.name == "build")
                .map(|s| s.image.as_str())
                .expect("build step")
        })
        .collect();
    assert_eq!(images, ["golang:1.10", "golang:1.11", "golang:1.12"]);
    // Any runner of the platform may take a combination: its values are environment, not
    // labels a runner would need to have.
    for p in &plan.pipelines {
        let labels: Vec<&str> = p.labels.keys().map(String::as_str).collect();
        assert_eq!(labels, ["arch", "os"], "{}", p.name);
    }
}

#[test]
fn json_flow_documents_parse() {
    let Some(dir) = shared_dir("corpus/pipelines") else {
        return;
    };
    let text = std::fs::read_to_string(dir.join("drone-plugins__drone-webhook.drone.yml"))
        .expect("readable");
    let (config, diags) = parse(&text);
    assert!(!diags.iter().any(|d| d.is_error()), "{diags:?}");
    assert!(config.pipelines().count() >= 8);
}
