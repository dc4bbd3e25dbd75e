//! `slipway stack deploy|ls|show|history|rollback|rm`: the server's deployer from the
//! command line. Data goes to stdout (JSON with `--json`); a followed rollout prints each
//! step to stderr as it happens.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::client::{Client, print_json};
use crate::stack::{ApiOnly, DeployArgs, RollbackArgs, StackRef};

fn split_target(target: &str) -> Result<(&str, &str)> {
    match target.split_once('/') {
        Some((env, stack)) if !env.is_empty() && !stack.is_empty() && !stack.contains('/') => {
            Ok((env, stack))
        }
        _ => bail!("`{target}` is not ENV/STACK (e.g. production/shop)"),
    }
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// One recorded step as a line: `web: container web-3-1 healthy at 172.18.0.5:80`.
fn step_line(step: &Value) -> String {
    slipway_deploy::stack::step_line(&step["detail"])
}

/// Follows revision `number` until it ends, printing steps; whether it succeeded.
fn follow(client: &Client, env: &str, stack: &str, number: i64) -> Result<bool> {
    let mut printed = 0;
    loop {
        let revision = client.json(
            reqwest::Method::GET,
            &format!("/api/stacks/{env}/{stack}/revisions/{number}"),
            None,
        )?;
        let steps = revision["steps"].as_array().cloned().unwrap_or_default();
        for step in steps.iter().skip(printed) {
            eprintln!("{}", step_line(step));
        }
        printed = steps.len();
        let status = text(&revision["status"]);
        if ["succeeded", "failed", "rolled_back", "paused"].contains(&status) {
            let message = revision["message"].as_str().unwrap_or("");
            eprintln!(
                "{env}/{stack} revision {number}: {status}{}",
                if message.is_empty() {
                    String::new()
                } else {
                    format!(": {message}")
                }
            );
            return Ok(status == "succeeded");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn deploy(args: DeployArgs) -> Result<ExitCode> {
    let (env, stack) = split_target(&args.target)?;
    let mut images = BTreeMap::new();
    for item in &args.images {
        let Some((service, image)) = item.split_once('=') else {
            bail!("--image `{item}` must be SERVICE=REF");
        };
        images.insert(service.trim().to_owned(), image.trim().to_owned());
    }
    let body = match (&args.file, &args.repo) {
        (Some(path), _) => {
            let compose = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let rancher_path = args.rancher.clone().or_else(|| {
                let beside = path.parent()?.join("rancher-compose.yml");
                beside.is_file().then_some(beside)
            });
            let rancher = match &rancher_path {
                Some(p) => Some(
                    std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?,
                ),
                None => None,
            };
            let file = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "compose.yaml".to_owned());
            json!({"compose": compose, "file": file, "rancher": rancher, "images": images,
                "allow_bind_mounts": args.trusted})
        }
        (None, Some(repo)) => json!({"repo": repo, "build": args.build, "commit": args.commit,
            "file": args.path, "images": images, "allow_bind_mounts": args.trusted}),
        (None, None) => bail!("give -f FILE or --repo REPO"),
    };
    let client = Client::new(&args.api)?;
    let revision = client.json(
        reqwest::Method::POST,
        &format!("/api/stacks/{env}/{stack}"),
        Some(body),
    )?;
    finish(&client, env, stack, &revision, args.wait, args.api.json)
}

fn finish(
    client: &Client,
    env: &str,
    stack: &str,
    revision: &Value,
    wait: bool,
    json: bool,
) -> Result<ExitCode> {
    let number = revision["number"].as_i64().unwrap_or_default();
    eprintln!("{env}/{stack}: revision {number} recorded, rolling out");
    let ok = if wait {
        follow(client, env, stack, number)?
    } else {
        true
    };
    if json {
        let revision = client.json(
            reqwest::Method::GET,
            &format!("/api/stacks/{env}/{stack}/revisions/{number}"),
            None,
        )?;
        print_json(&revision);
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn ls(args: ApiOnly) -> Result<ExitCode> {
    let client = Client::new(&args.api)?;
    let list = client.json(reqwest::Method::GET, "/api/stacks", None)?;
    if args.api.json {
        print_json(&list);
        return Ok(ExitCode::SUCCESS);
    }
    for s in list.as_array().into_iter().flatten() {
        let latest = &s["latest"];
        println!(
            "{}/{}\tcurrent {}\tlatest {} {}",
            text(&s["stack"]["env"]),
            text(&s["stack"]["name"]),
            s["stack"]["current"]
                .as_i64()
                .map_or("-".to_owned(), |n| n.to_string()),
            latest["number"],
            text(&latest["status"])
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn show(args: StackRef) -> Result<ExitCode> {
    let (env, stack) = split_target(&args.target)?;
    let client = Client::new(&args.api)?;
    let shown = client.json(
        reqwest::Method::GET,
        &format!("/api/stacks/{env}/{stack}"),
        None,
    )?;
    if args.api.json {
        print_json(&shown);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{env}/{stack}: current revision {}",
        shown["stack"]["current"]
            .as_i64()
            .map_or("-".to_owned(), |n| n.to_string())
    );
    if let Some(current) = shown["revisions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["number"] == shown["stack"]["current"])
    {
        for (service, image) in current["images"].as_object().into_iter().flatten() {
            println!("  {service}\t{}", text(image));
        }
    }
    let rollout = &shown["rollout"];
    if rollout.is_object() {
        let newest = shown["revisions"][0]["number"].as_i64().unwrap_or_default();
        let held = if rollout["paused"] == true {
            " (paused: `slipway stack resume`, `promote` or `abort`)"
        } else {
            ""
        };
        println!("  rolling out revision {newest}{held}");
    }
    for c in shown["containers"].as_array().into_iter().flatten() {
        println!(
            "  {}\t{}\trevision {}\t{}\t{}",
            text(&c["service"]),
            text(&c["name"]),
            text(&c["revision"]),
            text(&c["state"]),
            text(&c["health"])
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn history(args: StackRef) -> Result<ExitCode> {
    let (env, stack) = split_target(&args.target)?;
    let client = Client::new(&args.api)?;
    let list = client.json(
        reqwest::Method::GET,
        &format!("/api/stacks/{env}/{stack}/revisions"),
        None,
    )?;
    if args.api.json {
        print_json(&list);
        return Ok(ExitCode::SUCCESS);
    }
    for r in list.as_array().into_iter().flatten() {
        println!(
            "{}\t{}\t{}\t{}",
            r["number"],
            text(&r["status"]),
            text(&r["cause"]),
            r["message"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn rollback(args: RollbackArgs) -> Result<ExitCode> {
    let (env, stack) = split_target(&args.target)?;
    let client = Client::new(&args.api)?;
    let revision = client.json(
        reqwest::Method::POST,
        &format!("/api/stacks/{env}/{stack}/rollback"),
        Some(json!({"to": args.to})),
    )?;
    finish(&client, env, stack, &revision, args.wait, args.api.json)
}

/// `stack pause|resume|promote|abort`: `command` asked of the running rollout.
pub fn steer(args: StackRef, command: &str) -> Result<ExitCode> {
    let (env, stack) = split_target(&args.target)?;
    let client = Client::new(&args.api)?;
    let asked = client.json(
        reqwest::Method::POST,
        &format!("/api/stacks/{env}/{stack}/rollout/{command}"),
        None,
    )?;
    if args.api.json {
        print_json(&asked);
    } else {
        let r = &asked["rollout"];
        let state = if r["aborted"] == true {
            "aborting: the old revision goes back"
        } else if r["promoted"] == true {
            "promoted: finishing now"
        } else if r["paused"] == true {
            "paused: `slipway stack resume` lets it go on"
        } else {
            "running"
        };
        eprintln!("rollout of {env}/{stack}: {state}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn rm(args: StackRef) -> Result<ExitCode> {
    let (env, stack) = split_target(&args.target)?;
    let client = Client::new(&args.api)?;
    let done = client.json(
        reqwest::Method::DELETE,
        &format!("/api/stacks/{env}/{stack}"),
        None,
    )?;
    eprintln!(
        "stack {env}/{stack} removed ({} containers)",
        done["removed_containers"]
    );
    Ok(ExitCode::SUCCESS)
}

pub fn webhook(args: StackRef) -> Result<ExitCode> {
    let (env, stack) = split_target(&args.target)?;
    let client = Client::new(&args.api)?;
    let made = client.json(
        reqwest::Method::POST,
        &format!("/api/stacks/{env}/{stack}/webhook"),
        None,
    )?;
    if args.api.json {
        print_json(&made);
    } else {
        println!("{}", text(&made["url"]));
    }
    Ok(ExitCode::SUCCESS)
}
