//! `slipway lint` and `slipway plan` as a user runs them.

use serde_json::Value;

use crate::{shared_dir, slipway, text};

#[test]
fn lint_prints_file_line_col_and_exits_1_on_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join(".drone.yml");
    std::fs::write(
        &file,
        "kind: pipeline\nname: a\nsteps:\n  - name: s\n    imagee: x\n",
    )
    .expect("write");
    let out = slipway().arg("lint").arg(&file).output().expect("runs");
    let (stdout, _) = text(&out);
    let shown = file.display();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("{shown}:4:5: error: step `s` has no `image`")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "{shown}:5:5: warning: unknown key `imagee` in step `s` (did you mean `image`?)"
        )),
        "{stdout}"
    );
}

#[test]
fn lint_finds_the_default_file_and_passes_clean_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join(".drone.yml"),
        "kind: pipeline\nname: a\nsteps: [{name: s, image: x}]\n",
    )
    .expect("write");
    let out = slipway()
        .arg("lint")
        .current_dir(dir.path())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert!(out.stdout.is_empty());
}

#[test]
fn lint_without_a_file_says_where_it_looked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = slipway()
        .arg("lint")
        .current_dir(dir.path())
        .output()
        .expect("runs");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("looked for .slipway.yml and .drone.yml"),
        "{stderr}"
    );
}

fn plan_json(file: &std::path::Path, args: &[&str]) -> Value {
    let out = slipway()
        .arg("plan")
        .arg(file)
        .args(args)
        .arg("--json")
        .output()
        .expect("runs");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "plan failed: {stderr}");
    serde_json::from_str(&stdout).expect("plan --json prints JSON")
}

fn selected(plan: &Value) -> Vec<String> {
    plan["pipelines"][0]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|s| s["skipped"] == false)
        .map(|s| s["name"].as_str().expect("name").to_owned())
        .collect()
}

#[test]
fn plan_of_the_harbor_seed_for_develop_and_master() {
    let Some(dir) = shared_dir("examples") else {
        return;
    };
    let file = dir.join("legacy-harbor-rancher-wechat.drone.yml");
    let develop = plan_json(
        &file,
        &[
            "--event",
            "push",
            "--branch",
            "develop",
            "--commit",
            "abc123",
            "--repo",
            "acme/test",
        ],
    );
    assert_eq!(
        selected(&develop),
        ["build_step", "rancher", "report-deploy"]
    );
    let steps = &develop["pipelines"][0]["steps"];
    assert_eq!(
        steps[0]["environment"]["PLUGIN_REPO"],
        "harbor.company.com/registry/test"
    );
    assert_eq!(steps[0]["environment"]["PLUGIN_TAG"], "dev");
    assert_eq!(
        steps[1]["environment"]["PLUGIN_DOCKER_IMAGE"],
        "harbor.company.com/registry/test:dev"
    );
    assert_eq!(steps[2]["environment"]["PLUGIN_TITLE"], "test");
    assert_eq!(steps[2]["depends_on"][0], "rancher");
    for key in ["name", "type", "skipped", "depends_on", "steps"] {
        assert!(
            develop["pipelines"][0].get(key).is_some(),
            "pipeline field {key}"
        );
    }
    for key in [
        "name",
        "image",
        "commands",
        "environment",
        "depends_on",
        "skipped",
    ] {
        assert!(steps[0].get(key).is_some(), "step field {key}");
    }

    let master = plan_json(
        &file,
        &[
            "--event", "push", "--branch", "master", "--commit", "abc123",
        ],
    );
    assert!(selected(&master).is_empty());
}

#[test]
fn plan_substitutes_tag_and_params() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join(".drone.yml");
    std::fs::write(
        &file,
        "kind: pipeline\nname: a\ntrigger: {event: [tag]}\nsteps:\n- name: s\n  image: app:${DRONE_TAG##v}-${FLAVOR}\n",
    )
    .expect("write");
    let plan = plan_json(
        &file,
        &[
            "--event",
            "tag",
            "--tag",
            "v2.1.0",
            "--param",
            "FLAVOR=slim",
        ],
    );
    assert_eq!(plan["pipelines"][0]["skipped"], false);
    assert_eq!(plan["pipelines"][0]["steps"][0]["image"], "app:2.1.0-slim");
    assert_eq!(
        plan["pipelines"][0]["steps"][0]["environment"]["DRONE_SEMVER_MINOR"],
        "1"
    );
    let push = plan_json(&file, &["--event", "push", "--branch", "main"]);
    assert_eq!(push["pipelines"][0]["skipped"], true);
}

#[test]
fn plan_refuses_a_broken_file_with_positions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("p.yml");
    std::fs::write(
        &file,
        "kind: pipeline\nname: a\nsteps:\n- {name: s, image: x, depends_on: [ghost]}\n",
    )
    .expect("write");
    let out = slipway().arg("plan").arg(&file).output().expect("runs");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("p.yml:4:36: error: step `s` depends on unknown step `ghost`"),
        "{stderr}"
    );
}
