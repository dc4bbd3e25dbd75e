//! The deployer through a real `slipway up`: environments, their variables and secrets.

use serde_json::json;

use super::server::{ADMIN, api, start_up};
use super::{slipway, text};

#[test]
fn environments_with_domain_variables_and_secrets() {
    let data = tempfile::tempdir().expect("data dir");
    let up = start_up(data.path(), &[]);
    let env = api(
        &up,
        &[
            "env",
            "add",
            "production",
            "--domain",
            "Example.COM.",
            "--var",
            "REPLICAS=3",
            "--var",
            "TAG=v1",
        ],
    );
    assert_eq!(env["domain"], "example.com");
    assert_eq!(env["vars"], json!({"REPLICAS": "3", "TAG": "v1"}));
    api(&up, &["env", "add", "qa"]);
    let out = slipway()
        .args([
            "env",
            "secret",
            "add",
            "production",
            "DB_PASSWORD",
            "--value",
            "s3cr3t-value",
        ])
        .args(["--server", &up.url, "--token", ADMIN])
        .output()
        .expect("slipway runs");
    assert!(out.status.success(), "{}", text(&out).1);
    let shown = api(&up, &["env", "show", "production"]);
    assert_eq!(shown["secrets"][0]["name"], "DB_PASSWORD", "{shown}");
    assert!(!shown.to_string().contains("s3cr3t-value"), "{shown}");
    let listed = api(&up, &["env", "ls"]);
    let names: Vec<&str> = listed
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(names, ["production", "qa"]);

    // Refusals say what is wrong and change nothing.
    for (args, says) in [
        (
            vec!["env", "add", "Prod Env"],
            "environment name `Prod Env`",
        ),
        (vec!["env", "add", "production"], "already exists"),
        (
            vec!["env", "add", "x", "--var", "1BAD=v"],
            "variable `1BAD`",
        ),
        (
            vec![
                "env",
                "secret",
                "add",
                "production",
                "bad-name",
                "--value",
                "v",
            ],
            "secret `bad-name`",
        ),
        (vec!["env", "show", "nowhere"], "no environment `nowhere`"),
    ] {
        let out = slipway()
            .args(&args)
            .args(["--server", &up.url, "--token", ADMIN])
            .output()
            .expect("slipway runs");
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert_eq!(api(&up, &["env", "ls"]).as_array().map(Vec::len), Some(2));
    let out = slipway()
        .args(["env", "rm", "qa", "--server", &up.url, "--token", ADMIN])
        .output()
        .expect("slipway runs");
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(api(&up, &["env", "ls"]).as_array().map(Vec::len), Some(1));
}
