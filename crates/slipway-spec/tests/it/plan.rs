//! `compile`: what a build runs, with conditions, variables and dependencies resolved.

use slipway_spec::plan::{PipelinePlan, RunOn, SecretEnv, StepPlan};
use slipway_spec::{BuildContext, BuildEvent, Plan, compile};

fn push(branch: &str) -> BuildContext {
    BuildContext {
        event: BuildEvent::Push,
        branch: branch.into(),
        commit: "cafebabe00112233445566778899aabbccddeeff".into(),
        repo: "acme/test".into(),
        author: "alice".into(),
        message: "fix things".into(),
        build_number: 14,
        ..BuildContext::default()
    }
}

fn plan(text: &str, ctx: &BuildContext) -> Plan {
    match compile(text, ctx) {
        Ok(c) => c.plan,
        Err(d) => panic!("compile failed: {d:#?}"),
    }
}

fn step<'a>(p: &'a PipelinePlan, name: &str) -> &'a StepPlan {
    p.steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step {name}"))
}

fn selected(p: &PipelinePlan) -> Vec<&str> {
    p.steps
        .iter()
        .filter(|s| !s.skipped)
        .map(|s| s.name.as_str())
        .collect()
}

#[test]
fn seed_harbor_pipeline_on_develop_and_master() {
    let Some(dir) = crate::shared_dir("examples") else {
        return;
    };
    let text = std::fs::read_to_string(dir.join("legacy-harbor-rancher-wechat.drone.yml"))
        .expect("readable");

    let develop = plan(&text, &push("develop"));
    let p = &develop.pipelines[0];
    assert_eq!(selected(p), ["build_step", "rancher", "report-deploy"]);
    let build = step(p, "build_step");
    assert_eq!(build.image, "plugins/docker");
    assert_eq!(
        build.environment["PLUGIN_REPO"],
        "harbor.company.com/registry/test"
    );
    assert_eq!(build.environment["PLUGIN_REGISTRY"], "harbor.company.com");
    assert_eq!(build.environment["PLUGIN_TAG"], "dev");
    assert_eq!(build.environment["PLUGIN_DOCKERFILE"], "Dockerfile");
    assert_eq!(
        build.environment["PLUGIN_MIRROR"],
        "https://registry.docker-cn.com"
    );
    let rancher = step(p, "rancher");
    assert_eq!(rancher.environment["PLUGIN_BATCH_SIZE"], "1");
    assert_eq!(rancher.environment["PLUGIN_CONFIRM"], "true");
    assert_eq!(
        rancher.environment["PLUGIN_SERVICE"],
        "rancher_stack/rancher_service"
    );
    assert_eq!(rancher.depends_on, ["build_step"]);
    let report = step(p, "report-deploy");
    assert_eq!(report.environment["PLUGIN_TITLE"], "test");
    assert_eq!(
        report.environment["PLUGIN_DESCRIPTION"],
        "Build sequence: 14 Deployment successful, well done alice!\nUpdated content: fix things\n"
    );
    assert_eq!(
        report.run_on,
        RunOn {
            success: true,
            failure: false
        }
    );
    assert!(report.secrets.contains(&SecretEnv {
        env: "PLUGIN_CORP_SECRET".into(),
        secret: "plugin_corp_secret".into()
    }));
    assert!(!report.environment.contains_key("PLUGIN_SECRETS"));

    let master = plan(&text, &push("master"));
    assert!(selected(&master.pipelines[0]).is_empty());
}

#[test]
fn seed_node_pipeline_publishes_only_on_master() {
    let Some(dir) = crate::shared_dir("examples") else {
        return;
    };
    let text = std::fs::read_to_string(dir.join("legacy-node.drone.yml")).expect("readable");
    assert_eq!(
        selected(&plan(&text, &push("master")).pipelines[0]),
        ["build", "publish"]
    );
    assert_eq!(
        selected(&plan(&text, &push("feature/x")).pipelines[0]),
        ["build"]
    );
}

#[test]
fn steps_run_in_file_order_without_depends_on() {
    let text = "kind: pipeline\nname: a\nsteps:\n- {name: a, image: x}\n- {name: b, image: x}\n- {name: c, image: x}\n";
    let p = plan(text, &push("main"));
    let deps: Vec<Vec<String>> = p.pipelines[0]
        .steps
        .iter()
        .map(|s| s.depends_on.clone())
        .collect();
    assert_eq!(deps, [vec![], vec!["a".to_owned()], vec!["b".to_owned()]]);
}

#[test]
fn depends_on_anywhere_makes_a_dag() {
    let text = "kind: pipeline\nname: a\nsteps:\n- {name: a, image: x}\n- {name: b, image: x}\n- {name: c, image: x, depends_on: [a, b, clone]}\n";
    let p = plan(text, &push("main"));
    let deps: Vec<Vec<String>> = p.pipelines[0]
        .steps
        .iter()
        .map(|s| s.depends_on.clone())
        .collect();
    assert_eq!(deps, [vec![], vec![], vec!["a".to_owned(), "b".to_owned()]]);
}

#[test]
fn legacy_groups_run_together() {
    let text = "pipeline:\n  a: {image: x}\n  b: {image: x, group: g}\n  c: {image: x, group: g}\n  d: {image: x}\n";
    let p = plan(text, &push("main"));
    let deps: Vec<Vec<String>> = p.pipelines[0]
        .steps
        .iter()
        .map(|s| s.depends_on.clone())
        .collect();
    assert_eq!(
        deps,
        [
            vec![],
            vec!["a".to_owned()],
            vec!["a".to_owned()],
            vec!["b".to_owned(), "c".to_owned()]
        ]
    );
}

#[test]
fn secrets_stay_out_of_the_environment() {
    let text = "\
kind: pipeline
name: a
environment:
  SHARED: {from_secret: shared}
steps:
  - name: s
    image: x
    environment:
      TOKEN: {from_secret: token}
      PLAIN: yes
    settings:
      password: {from_secret: pw}
      tags: [a, b, 1.10]
      build_args: {A: 1}
      list_of_maps: [{a: 1}]
";
    let p = plan(text, &push("main"));
    let s = step(&p.pipelines[0], "s");
    let names: Vec<(&str, &str)> = s
        .secrets
        .iter()
        .map(|x| (x.env.as_str(), x.secret.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("SHARED", "shared"),
            ("TOKEN", "token"),
            ("PLUGIN_PASSWORD", "pw")
        ]
    );
    for var in ["SHARED", "TOKEN", "PLUGIN_PASSWORD"] {
        assert!(
            !s.environment.contains_key(var),
            "{var} leaked into the environment"
        );
    }
    assert_eq!(s.environment["PLAIN"], "yes");
    assert_eq!(s.environment["PLUGIN_TAGS"], "a,b,1.10");
    assert_eq!(s.environment["PLUGIN_BUILD_ARGS"], r#"{"A":1}"#);
    assert_eq!(s.environment["PLUGIN_LIST_OF_MAPS"], r#"[{"a":1}]"#);
}

#[test]
fn drone_variables_and_semver() {
    let text = "kind: pipeline\nname: a\nsteps:\n- name: s\n  image: x:${DRONE_TAG##v}\n  commands: [\"echo ${DRONE_COMMIT_SHA:0:8}\"]\n";
    let ctx = BuildContext {
        event: BuildEvent::Tag,
        tag: Some("v1.2.3-rc.1+b5".into()),
        commit: "cafebabe00112233".into(),
        ..push("")
    };
    let p = plan(text, &ctx);
    let s = step(&p.pipelines[0], "s");
    assert_eq!(s.image, "x:1.2.3-rc.1+b5");
    assert_eq!(s.commands, ["echo cafebabe"]);
    let env = &s.environment;
    assert_eq!(env["DRONE_SEMVER_MAJOR"], "1");
    assert_eq!(env["DRONE_SEMVER_MINOR"], "2");
    assert_eq!(env["DRONE_SEMVER_PATCH"], "3");
    assert_eq!(env["DRONE_SEMVER_PRERELEASE"], "rc.1");
    assert_eq!(env["DRONE_SEMVER_BUILD"], "b5");
    assert_eq!(env["DRONE_SEMVER_SHORT"], "1.2.3");
    assert_eq!(env["DRONE_COMMIT_REF"], "");
    assert_eq!(env["DRONE_BUILD_EVENT"], "tag");
    assert_eq!(env["DRONE_STEP_NAME"], "s");
    assert_eq!(env["DRONE_STAGE_NAME"], "a");
    assert_eq!(env["DRONE_WORKSPACE"], "/drone/src");
    assert_eq!(env["CI_COMMIT_SHA"], "cafebabe00112233");
}

#[test]
fn trigger_include_exclude_and_globs() {
    let text = "\
kind: pipeline
name: rel
trigger:
  branch:
    include: [release/*, main]
    exclude: [release/old-*]
  event: [push, tag]
steps: [{name: s, image: x}]
";
    let skipped = |branch: &str, event: BuildEvent| {
        let ctx = BuildContext {
            event,
            ..push(branch)
        };
        plan(text, &ctx).pipelines[0].skipped
    };
    assert!(!skipped("main", BuildEvent::Push));
    assert!(!skipped("release/1.0", BuildEvent::Push));
    assert!(skipped("release/old-1", BuildEvent::Push), "exclude wins");
    assert!(
        skipped("release/1.0/x", BuildEvent::Push),
        "* does not cross /"
    );
    assert!(skipped("main", BuildEvent::PullRequest));
}

#[test]
fn when_conditions_on_every_field() {
    let text = "\
kind: pipeline
name: a
steps:
  - {name: by-ref, image: x, when: {ref: [refs/tags/v*]}}
  - {name: by-repo, image: x, when: {repo: [acme/*]}}
  - {name: by-target, image: x, when: {target: [production]}}
  - {name: by-instance, image: x, when: {instance: [ci.example.com]}}
  - {name: by-cron, image: x, when: {cron: [nightly]}}
  - {name: by-action, image: x, when: {action: [opened]}}
  - {name: by-paths, image: x, when: {paths: {include: [src/**]}}}
  - {name: on-failure, image: x, when: {status: [failure]}}
  - {name: always, image: x, when: {status: [success, failure]}}
";
    let ctx = BuildContext {
        event: BuildEvent::Promote,
        target: "production".into(),
        instance: "ci.example.com".into(),
        changed_files: Some(vec!["docs/readme.md".into()]),
        ..push("main")
    };
    let p = plan(text, &ctx);
    assert_eq!(
        selected(&p.pipelines[0]),
        [
            "by-repo",
            "by-target",
            "by-instance",
            "on-failure",
            "always"
        ]
    );
    assert_eq!(
        step(&p.pipelines[0], "on-failure").run_on,
        RunOn {
            success: false,
            failure: true
        }
    );
    assert_eq!(
        step(&p.pipelines[0], "always").run_on,
        RunOn {
            success: true,
            failure: true
        }
    );

    let ctx = BuildContext {
        changed_files: Some(vec!["src/a/b.rs".into()]),
        cron: "nightly".into(),
        action: "opened".into(),
        tag: Some("v2.0.0".into()),
        event: BuildEvent::Tag,
        ..push("main")
    };
    let p = plan(text, &ctx);
    assert_eq!(
        selected(&p.pipelines[0]),
        [
            "by-ref",
            "by-repo",
            "by-cron",
            "by-action",
            "by-paths",
            "on-failure",
            "always"
        ]
    );
}

#[test]
fn multi_line_values_stay_valid_yaml() {
    let text = "kind: pipeline\nname: a\nsteps:\n- name: s\n  image: x\n  environment:\n    MSG: ${DRONE_COMMIT_MESSAGE}\n    AFTER: kept\n";
    let ctx = BuildContext {
        message: "first line\nsecond: line\n".into(),
        ..push("main")
    };
    let p = plan(text, &ctx);
    let env = &step(&p.pipelines[0], "s").environment;
    assert_eq!(env["MSG"], "first line\nsecond: line\n");
    assert_eq!(env["AFTER"], "kept");
}

#[test]
fn params_substitute_and_reach_steps() {
    let text = "kind: pipeline\nname: a\nsteps:\n- {name: s, image: \"app:${VERSION=dev}\", commands: [\"echo $${HOME}\"]}\n";
    let mut ctx = push("main");
    assert_eq!(step(&plan(text, &ctx).pipelines[0], "s").image, "app:dev");
    ctx.params.insert("VERSION".into(), "1.4".into());
    let p = plan(text, &ctx);
    let s = step(&p.pipelines[0], "s");
    assert_eq!(s.image, "app:1.4");
    assert_eq!(s.environment["VERSION"], "1.4");
    assert_eq!(s.commands, ["echo ${HOME}"]);
}

#[test]
fn compile_refuses_files_with_errors() {
    let err = compile(
        "kind: pipeline\nname: a\nsteps:\n- {name: s}\n",
        &push("main"),
    )
    .expect_err("no image is an error");
    assert_eq!(err[0].line, 4);
    assert!(err[0].message.contains("has no `image`"));
}

#[test]
fn volumes_timeouts_and_flags() {
    let text = "\
kind: pipeline
name: a
timeout: 1h
volumes:
  - {name: cache, temp: {}}
  - {name: sock, host: {path: /var/run/docker.sock}}
steps:
  - name: s
    image: x
    timeout: 90s
    detach: true
    privileged: true
    failure: ignore
    pull: always
    user: \"1000\"
    volumes: [{name: cache, path: /cache}]
";
    let p = plan(text, &push("main"));
    let pipeline = &p.pipelines[0];
    assert_eq!(pipeline.timeout_secs, Some(3600));
    assert_eq!(pipeline.volumes.len(), 2);
    let s = step(pipeline, "s");
    assert_eq!(s.timeout_secs, Some(90));
    assert!(s.detach && s.privileged && s.failure_ignore);
    assert_eq!(s.user.as_deref(), Some("1000"));
    assert_eq!(s.volumes[0].path, "/cache");
    let json = serde_json::to_value(&p).expect("serializes");
    assert_eq!(json["pipelines"][0]["volumes"][1]["kind"], "host");
    assert_eq!(json["pipelines"][0]["steps"][0]["pull"], "always");
    assert_eq!(json["pipelines"][0]["type"], "docker");
}

#[test]
fn cache_volumes_in_the_plan() {
    let text = "\
kind: pipeline
name: a
volumes:
  - {name: deps, cache: {}}
  - {name: branch, cache: {key: \"${DRONE_BRANCH}\"}}
  - {name: tagged, cache: {key: \"${DRONE_TAG}\"}}
steps:
  - name: s
    image: x
    volumes:
      - {name: deps, path: /root/.cargo/registry}
      - {name: branch, path: /drone/src/node_modules}
";
    use slipway_spec::plan::VolumeSource;
    let p = plan(text, &push("feature/x"));
    let pipeline = &p.pipelines[0];
    let sources: Vec<(&str, &VolumeSource)> = pipeline
        .volumes
        .iter()
        .map(|v| (v.name.as_str(), &v.source))
        .collect();
    assert_eq!(
        sources,
        [
            ("deps", &VolumeSource::Cache { key: None }),
            (
                "branch",
                &VolumeSource::Cache {
                    key: Some("feature/x".into())
                }
            ),
            // An empty key (no tag on a push) is no key.
            ("tagged", &VolumeSource::Cache { key: None }),
        ]
    );
    let s = step(pipeline, "s");
    assert_eq!(s.volumes[1].name, "branch");
    assert_eq!(s.volumes[1].path, "/drone/src/node_modules");

    let json = serde_json::to_value(&p).expect("serializes");
    let volumes = &json["pipelines"][0]["volumes"];
    assert_eq!(
        volumes[0],
        serde_json::json!({"name": "deps", "kind": "cache"})
    );
    assert_eq!(
        volumes[1],
        serde_json::json!({"name": "branch", "kind": "cache", "key": "feature/x"})
    );
    // And back: a plan read from JSON (the runner's lease) is the same plan.
    let back: slipway_spec::Plan = serde_json::from_value(json).expect("deserializes");
    assert_eq!(back, p);
}
