//! `slipway stack lint` and `slipway stack plan` as a user runs them (no engine needed).

use serde_json::Value;

use crate::{slipway, text};

#[test]
fn stack_lint_prints_file_line_col_and_exits_1_on_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("stack.yml");
    std::fs::write(
        &file,
        "services:\n  web:\n    imagee: nginx\n    ports:\n      - \"80:http\"\n",
    )
    .expect("write");
    let out = slipway()
        .args(["stack", "lint"])
        .arg(&file)
        .output()
        .expect("runs");
    let (stdout, _) = text(&out);
    let shown = file.display();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            format!("{shown}:2:3: error: service `web` has no `image`"),
            format!(
                "{shown}:3:5: warning: unknown key `imagee` in service `web`: ignored (did you mean `image`?)"
            ),
            format!(
                "{shown}:5:9: error: port `80:http`: `http` is not a port (1-65535) (write `[HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL]`, e.g. `8080:80`)"
            ),
        ]
    );
}

#[test]
fn stack_lint_passes_a_clean_file_and_reads_the_rancher_file_beside_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("docker-compose.yml");
    std::fs::write(&file, "services:\n  web:\n    image: nginx\n").expect("write");
    let out = slipway()
        .args(["stack", "lint"])
        .arg(&file)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert!(out.stdout.is_empty(), "{:?}", text(&out));

    let rancher = dir.path().join("rancher-compose.yml");
    std::fs::write(&rancher, "web:\n  scale: many\n").expect("write");
    let out = slipway()
        .args(["stack", "lint"])
        .arg(&file)
        .output()
        .expect("runs");
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert_eq!(
        stdout.trim_end(),
        format!(
            "{}:2:10: error: `scale` must be a whole number, not `many`",
            rancher.display()
        )
    );
}

#[test]
fn stack_plan_json_has_services_routes_checks_and_strategy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("docker-compose.yml");
    std::fs::write(
        &file,
        "services:\n  web:\n    image: \"registry.example.com/web:${TAG:?set TAG}\"\n    ports: [\"8080:80\"]\n    deploy:\n      replicas: 3\n      update_config: {parallelism: 2, order: stop-first}\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("rancher-compose.yml"),
        "web:\n  health_check:\n    port: 80\n    request_line: GET /healthz HTTP/1.1\n    interval: 5000\n",
    )
    .expect("write");
    let out = slipway()
        .args(["stack", "plan"])
        .arg(&file)
        .args([
            "--env",
            "prod",
            "--domain",
            "example.com",
            "--var",
            "TAG=1.2",
            "--json",
        ])
        .output()
        .expect("runs");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "plan failed: {stderr}");
    let plan: Value = serde_json::from_str(&stdout).expect("plan --json prints JSON");
    assert_eq!(plan["schema"], 1);
    assert_eq!(plan["environment"], "prod");
    let web = &plan["services"][0];
    assert_eq!(web["name"], "web");
    assert_eq!(web["image"], "registry.example.com/web:1.2");
    assert_eq!(web["replicas"], 3);
    assert_eq!(web["ports"][0]["published"], "8080");
    assert_eq!(web["ports"][0]["target"], "80");
    assert_eq!(web["routes"][0]["host"], "web.example.com");
    assert_eq!(web["routes"][0]["port"], 80);
    assert_eq!(
        web["routes"][0]["tls"], "none",
        "ACME only when the route asks"
    );
    assert_eq!(web["routes"][0]["source"], "domain");
    assert_eq!(web["health_checks"][0]["kind"], "http");
    assert_eq!(web["health_checks"][0]["path"], "/healthz");
    assert_eq!(web["health_checks"][0]["interval"], "5s");
    assert_eq!(web["strategy"]["kind"], "rolling");
    assert_eq!(web["strategy"]["order"], "stop-first");
    assert_eq!(web["strategy"]["parallelism"], 2);
    assert_eq!(web["networks"][0]["name"], "default");

    // Without the required variable: no plan, the error at its position, exit 2.
    let out = slipway()
        .args(["stack", "plan"])
        .arg(&file)
        .arg("--json")
        .output()
        .expect("runs");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "{}:3:38: error: required variable `TAG` is not set: set TAG",
            file.display()
        )),
        "{stderr}"
    );
}
