//! Integration tests of the deployer, one binary, modules by subject: compose files read
//! with positions, Rancher files merged, plans of real stack files (the shared corpus and
//! the seeds' examples); the Docker target and rollouts through the real proxy.

mod corpus;
mod docker_env;
#[path = "../../../slipway-proxy/tests/it/engine_cli.rs"]
mod engine_cli;
mod examples;
mod plans;
mod positions;
mod rollout;
mod steer;
mod swarm;
mod target;

use std::collections::BTreeMap;
use std::path::PathBuf;

use slipway_deploy::compose::{Mode, Read, ReadOptions, read};

/// `../shared/SUB` beside the checkout, or `None` (with a message) when absent.
pub fn shared_dir(sub: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared")
        .join(sub);
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "skipping: {} not found (../shared is not beside this checkout)",
            dir.display()
        );
        None
    }
}

/// Reads `text` as `stack.yml` in lint mode.
pub fn lint(text: &str) -> Read {
    read(text, "stack.yml", &ReadOptions::default())
}

/// Reads `text` as `stack.yml` in strict mode with `vars`.
pub fn strict(text: &str, vars: &[(&str, &str)]) -> Read {
    let vars: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    read(
        text,
        "stack.yml",
        &ReadOptions {
            vars,
            mode: Mode::Strict,
            base_dir: None,
        },
    )
}

/// Every problem, rendered, for assertion messages.
pub fn rendered(r: &Read) -> String {
    r.problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
