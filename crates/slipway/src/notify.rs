//! `slipway notify …`: notification channels and their delivery log, through the REST API.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::client::{ApiArgs, Client, print_json};

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Add a channel. Settings per kind are listed by `slipway notify kinds`.
    Add {
        name: String,
        /// wechat-work, wechat-work-robot, dingtalk, feishu, slack, discord, teams,
        /// telegram, webhook or email.
        #[arg(long)]
        kind: String,
        /// The webhook URL (robots, Slack, Discord, Teams, webhook): stored sealed.
        #[arg(long)]
        url: Option<String>,
        /// A credential, NAME=VALUE (repeatable): stored sealed, never shown.
        #[arg(long = "secret", value_name = "NAME=VALUE")]
        secrets: Vec<String>,
        /// A plain setting, NAME=VALUE (repeatable), e.g. `--set corp_id=ww12 --set agent_id=1000002`.
        #[arg(long = "set", value_name = "NAME=VALUE")]
        settings: Vec<String>,
        /// Replaces the service's API base (self-hosted Feishu/Lark, a WeChat Work proxy).
        #[arg(long)]
        api_base: Option<String>,
        /// Repositories, a glob (`acme/*`).
        #[arg(long)]
        repo: Option<String>,
        /// Branches, a glob.
        #[arg(long)]
        branch: Option<String>,
        /// Deploy environments, a glob (deploy events only).
        #[arg(long = "env")]
        environment: Option<String>,
        /// An event to send (repeatable; default all): build.success, build.failure,
        /// build.error, build.fixed, build.broken, build.killed, deploy.*, build.*.
        #[arg(long = "on", value_name = "EVENT")]
        events: Vec<String>,
        /// A minijinja template for the message text (Drone's variable names).
        #[arg(long)]
        template: Option<PathBuf>,
    },
    /// List channels.
    Ls,
    /// A channel's settings (credentials by name only).
    Show { name: String },
    /// Send a test message now; exits 1 when the service refused it.
    Test { name: String },
    /// Delete a channel and its delivery log.
    Rm { name: String },
    /// Deliveries, newest first, with every attempt.
    Log {
        /// Only this channel's.
        name: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// The settings each kind reads.
    Kinds,
}

fn pairs(list: &[String], flag: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in list {
        let Some((k, v)) = item.split_once('=') else {
            bail!("{flag} `{item}` must be NAME=VALUE");
        };
        out.insert(k.trim().to_owned(), v.to_owned());
    }
    Ok(out)
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

pub fn run(api: ApiArgs, command: NotifyCommand) -> Result<ExitCode> {
    if let NotifyCommand::Kinds = command {
        for kind in slipway_notify::Kind::ALL {
            println!("{kind}");
            for spec in slipway_notify::settings::specs(kind) {
                let how = if spec.secret { "--secret" } else { "--set" };
                let required = if spec.required { " (required)" } else { "" };
                println!("  {how} {}=…{required}\t{}", spec.name, spec.help);
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let client = Client::new(&api)?;
    match command {
        NotifyCommand::Add {
            name,
            kind,
            url,
            secrets,
            settings,
            api_base,
            repo,
            branch,
            environment,
            events,
            template,
        } => {
            let mut secrets = pairs(&secrets, "--secret")?;
            if let Some(url) = url {
                secrets.insert("url".into(), url);
            }
            let template = match template {
                Some(path) => Some(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("reading the template {}", path.display()))?,
                ),
                None => None,
            };
            let body = json!({
                "name": name, "kind": kind, "api_base": api_base,
                "settings": pairs(&settings, "--set")?, "secrets": secrets,
                "template": template, "repo": repo, "branch": branch,
                "environment": environment, "events": events,
            });
            let channel = client.json(reqwest::Method::POST, "/api/notify/channels", Some(body))?;
            if api.json {
                print_json(&channel);
            }
            if let Some(error) = channel["template_error"].as_str() {
                eprintln!(
                    "warning: the template does not render ({error}); the default message is sent until it is fixed"
                );
            }
            eprintln!("channel {name} added");
        }
        NotifyCommand::Ls => {
            let list = client.json(reqwest::Method::GET, "/api/notify/channels", None)?;
            if api.json {
                print_json(&list);
            } else {
                for c in list.as_array().into_iter().flatten() {
                    let events: Vec<&str> = c["events"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    println!(
                        "{}\t{}\t{}\t{}",
                        text(&c["name"]),
                        text(&c["kind"]),
                        c["repo"].as_str().unwrap_or("*"),
                        if events.is_empty() {
                            "all events".to_owned()
                        } else {
                            events.join(",")
                        }
                    );
                }
            }
        }
        NotifyCommand::Show { name } => {
            let c = client.json(
                reqwest::Method::GET,
                &format!("/api/notify/channels/{name}"),
                None,
            )?;
            print_json(&c);
        }
        NotifyCommand::Test { name } => {
            let r = client.json(
                reqwest::Method::POST,
                &format!("/api/notify/channels/{name}/test"),
                None,
            )?;
            if let Some(error) = r["template_error"].as_str() {
                eprintln!("template error: {error} (the default message was sent instead)");
            }
            if api.json {
                print_json(&r);
            }
            if r["ok"].as_bool() == Some(true) {
                eprintln!(
                    "{name}: delivered ({} ms): {}",
                    r["latency_ms"],
                    text(&r["answer"])
                );
            } else {
                eprintln!("{name}: not delivered: {}", text(&r["answer"]));
                return Ok(ExitCode::from(1));
            }
        }
        NotifyCommand::Rm { name } => {
            client.json(
                reqwest::Method::DELETE,
                &format!("/api/notify/channels/{name}"),
                None,
            )?;
            eprintln!("channel {name} deleted");
        }
        NotifyCommand::Log { name, limit } => {
            let mut path = format!("/api/notify/deliveries?limit={limit}");
            if let Some(name) = &name {
                path.push_str(&format!("&channel={name}"));
            }
            let list = client.json(reqwest::Method::GET, &path, None)?;
            if api.json {
                print_json(&list);
            } else {
                for d in list.as_array().into_iter().flatten() {
                    println!(
                        "{}\t{}\t{}\t{} #{}\t{}\tattempts {}\t{}",
                        d["id"],
                        text(&d["channel"]),
                        text(&d["event"]),
                        text(&d["repo"]),
                        d["build_number"],
                        text(&d["status"]),
                        d["attempts"],
                        d["answer"].as_str().unwrap_or("")
                    );
                    if let Some(error) = d["template_error"].as_str() {
                        println!("\ttemplate error: {error}");
                    }
                }
            }
        }
        NotifyCommand::Kinds => {}
    }
    Ok(ExitCode::SUCCESS)
}
