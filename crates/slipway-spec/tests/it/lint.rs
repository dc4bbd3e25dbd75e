//! `lint`: every problem with the line and column it points at.

use slipway_spec::{Severity, lint};

fn rendered(text: &str) -> Vec<String> {
    lint(text).iter().map(|d| d.render("f.yml")).collect()
}

#[test]
fn unknown_keys_are_warnings_with_position_and_hint() {
    let text = "kind: pipeline\nname: a\nstpes: []\nsteps:\n  - name: s\n    image: x\n    comands: [ls]\n";
    assert_eq!(
        rendered(text),
        [
            "f.yml:3:1: warning: unknown key `stpes` in pipeline `a` (did you mean `steps`?)",
            "f.yml:7:5: warning: unknown key `comands` in step `s` (did you mean `commands`?)",
        ]
    );
}

#[test]
fn graph_errors_point_at_the_step() {
    let text = "\
kind: pipeline
name: a
steps:
  - name: one
    image: x
    depends_on: [two]
  - name: two
    image: x
    depends_on: [one, nope]
  - name: one
    image: x
";
    let out = rendered(text);
    assert!(
        out.contains(&"f.yml:9:23: error: step `two` depends on unknown step `nope`".to_owned()),
        "{out:#?}"
    );
    assert!(
        out.iter()
            .any(|l| l.starts_with("f.yml:10:5: error: duplicate step name `one`")),
        "{out:#?}"
    );
    assert!(
        out.iter()
            .any(|l| l.contains("cycle: `one` → `two` → `one`")),
        "{out:#?}"
    );
}

#[test]
fn pipeline_cycles_and_unknown_dependencies() {
    let text = "\
kind: pipeline
name: a
depends_on: [b]
steps: [{name: s, image: x}]
---
kind: pipeline
name: b
depends_on: [a, c]
steps: [{name: s, image: x}]
";
    let out = rendered(text);
    assert!(
        out.iter()
            .any(|l| l.contains("pipeline `b` depends on unknown pipeline `c`")),
        "{out:#?}"
    );
    assert!(
        out.iter()
            .any(|l| l.contains("pipelines depend on each other in a cycle")),
        "{out:#?}"
    );
}

#[test]
fn yaml_syntax_error_has_position() {
    let out = lint("kind: pipeline\nsteps:\n  - name: a\n   image: [x\n");
    let first = out.first().expect("a problem");
    assert_eq!(first.severity, Severity::Error);
    assert!(first.line >= 3, "{first:?}");
    assert!(first.message.starts_with("invalid YAML"), "{first:?}");
}

#[test]
fn substitution_syntax_error_has_position() {
    let out = rendered("kind: pipeline\nname: a\nsteps:\n  - name: s\n    image: x:${TAG\n");
    assert!(
        out.iter().any(|l| l.starts_with("f.yml:5:14: error:")),
        "{out:#?}"
    );
}

#[test]
fn wrong_types_are_errors() {
    let out = rendered(
        "kind: pipeline\nname: a\nsteps:\n  - name: s\n    image: [x]\n    detach: maybe\n    pull: sometimes\n",
    );
    assert!(
        out.contains(&"f.yml:5:12: error: image must be text, found a list".to_owned()),
        "{out:#?}"
    );
    assert!(
        out.contains(&"f.yml:6:13: error: detach must be true or false".to_owned()),
        "{out:#?}"
    );
    assert!(
        out.iter()
            .any(|l| l.starts_with("f.yml:7:11: error: pull must be")),
        "{out:#?}"
    );
}

#[test]
fn command_with_colon_space_gets_a_hint() {
    let out = rendered(
        "kind: pipeline\nname: a\nsteps:\n  - name: s\n    image: x\n    commands:\n      - echo a: b\n",
    );
    assert!(
        out.iter()
            .any(|l| l.starts_with("f.yml:7:9: error: commands: this entry is a mapping")),
        "{out:#?}"
    );
}

#[test]
fn other_document_kinds_are_kept_not_rejected() {
    let text = "kind: pipeline\nname: a\nsteps: [{name: s, image: x}]\n---\nkind: secret\nname: token\nget: {path: p, name: n}\n---\nkind: signature\nhmac: abc\n";
    assert!(lint(text).is_empty(), "{:?}", lint(text));
    let (config, _) = slipway_spec::parse::parse(text);
    assert_eq!(config.documents.len(), 3);
}

#[test]
fn seed_pipelines_lint_clean() {
    let Some(dir) = crate::shared_dir("examples") else {
        return;
    };
    for name in [
        "legacy-harbor-rancher-wechat.drone.yml",
        "legacy-node.drone.yml",
    ] {
        let text = std::fs::read_to_string(dir.join(name)).expect("readable");
        let out = lint(&text);
        assert!(out.is_empty(), "{name}: {out:#?}");
    }
}

#[test]
fn a_thousand_steps_lint_clean() {
    let mut text = String::from("kind: pipeline\nname: big\nsteps:\n");
    for i in 0..1000 {
        text.push_str(&format!(
            "  - name: step-{i}\n    image: busybox\n    commands: [\"echo {i}\"]\n"
        ));
    }
    assert!(lint(&text).is_empty());
}

#[test]
fn exec_pipelines_need_commands_not_images() {
    let out = rendered("kind: pipeline\ntype: exec\nname: a\nsteps:\n  - name: s\n");
    assert_eq!(
        out,
        [
            "f.yml:5:5: error: step `s` has no `commands` (an exec pipeline runs commands on the host)"
        ]
    );
}

#[test]
fn cache_volumes_lint_clean_and_unknown_cache_keys_are_warnings() {
    let text = "\
kind: pipeline
name: a
volumes:
  - name: deps
    cache: {}
  - name: cargo
    cache: {key: main, kee: x}
  - name: npm
    cache:
steps:
  - name: s
    image: x
    volumes: [{name: deps, path: /root/.cargo/registry}]
";
    assert_eq!(
        rendered(text),
        ["f.yml:7:24: warning: unknown key `kee` in cache of volume `cargo` (did you mean `key`?)"]
    );
}

#[test]
fn bad_cache_volumes_are_errors_with_position() {
    let text = "\
kind: pipeline
name: a
volumes:
  - {name: two, temp: {}, cache: {}}
  - {name: listed, cache: [x]}
  - {name: keyed, cache: {key: [a, b]}}
  - {name: odd, cache: {path: /x}}
steps: [{name: s, image: x}]
";
    assert_eq!(
        rendered(text),
        [
            "f.yml:4:5: error: volume `two` must have exactly one of `temp`, `host` or `cache`",
            "f.yml:5:27: error: cache of volume `listed` must be a mapping, found a list",
            "f.yml:6:32: error: cache key of volume `keyed` must be text, found a list",
            "f.yml:7:25: warning: unknown key `path` in cache of volume `odd` (the only key is `key`)",
        ]
    );
}

#[test]
fn cache_volumes_need_a_docker_pipeline() {
    let text = "\
kind: pipeline
type: exec
name: host
volumes:
  - name: deps
    cache: {}
steps:
  - name: s
    commands: [ls]
    volumes: [{name: deps, path: /deps}]
";
    let diags = lint(text);
    let errors: Vec<String> = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.render("f.yml"))
        .collect();
    assert_eq!(
        errors,
        [
            "f.yml:5:5: error: volume `deps`: cache volumes need a docker pipeline (pipeline `host` is `type: exec`, whose steps run on the host)"
        ]
    );
}
