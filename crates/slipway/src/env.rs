//! `slipway env …`: environments (integration, qa, production, …) with their domain,
//! variables and secrets, through the REST API.

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::client::{ApiArgs, Client, print_json, value_or_stdin};

#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// Add an environment.
    Add {
        name: String,
        /// Its stacks' services are served at SERVICE.DOMAIN.
        #[arg(long)]
        domain: Option<String>,
        /// A variable stack files are interpolated with, K=V (repeatable).
        #[arg(long = "var", value_name = "K=V")]
        vars: Vec<String>,
    },
    /// List environments.
    Ls,
    /// An environment: domain, variables, secrets' names, stacks.
    Show { name: String },
    /// Delete an environment (refused while it has stacks).
    Rm { name: String },
    /// An environment's secrets: `secret add ENV NAME`, `secret ls ENV`, `secret rm ENV NAME`.
    Secret {
        #[command(subcommand)]
        command: EnvSecretCommand,
    },
    /// Deploy each successful build of a branch: `rule add ENV --repo R --branch B
    /// [--stack S] [--file F]`, `rule ls ENV`, `rule rm ENV ID`.
    Rule {
        #[command(subcommand)]
        command: EnvRuleCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum EnvRuleCommand {
    /// Each successful build of REPO's BRANCH (globs) deploys the repository's stack file at
    /// that commit, with the images the build pushed.
    Add {
        env: String,
        /// The git repository (with --branch) or the registry repository (with
        /// --image-tag), `owner/name` or a glob.
        #[arg(long)]
        repo: String,
        /// Each successful build of this branch (a glob) deploys.
        #[arg(
            long,
            required_unless_present = "image_tag",
            conflicts_with = "image_tag"
        )]
        branch: Option<String>,
        /// Each push of a tag matching this glob (`v*`) to the built-in registry deploys
        /// the stack's current file with that image.
        #[arg(long)]
        image_tag: Option<String>,
        /// The stack (default: the repository's name).
        #[arg(long)]
        stack: Option<String>,
        /// The stack file in the repository (default: compose.yaml, compose.yml,
        /// docker-compose.yaml, docker-compose.yml).
        #[arg(long)]
        file: Option<String>,
    },
    /// List an environment's rules.
    Ls { env: String },
    /// Delete a rule.
    Rm { env: String, id: i64 },
}

#[derive(Debug, Subcommand)]
pub enum EnvSecretCommand {
    /// Add or replace a secret (the value from --value or standard input).
    Add {
        env: String,
        name: String,
        #[arg(long)]
        value: Option<String>,
    },
    /// List secret names.
    Ls { env: String },
    /// Delete a secret.
    Rm { env: String, name: String },
}

fn vars(list: &[String]) -> Result<serde_json::Map<String, Value>> {
    let mut out = serde_json::Map::new();
    for item in list {
        let Some((k, v)) = item.split_once('=') else {
            bail!("--var `{item}` must be K=V");
        };
        out.insert(k.trim().to_owned(), Value::from(v));
    }
    Ok(out)
}

pub fn run(api: ApiArgs, command: EnvCommand) -> Result<ExitCode> {
    let client = Client::new(&api)?;
    match command {
        EnvCommand::Add {
            name,
            domain,
            vars: v,
        } => {
            let env = client.json(
                reqwest::Method::POST,
                "/api/envs",
                Some(json!({"name": name, "domain": domain, "vars": vars(&v)?})),
            )?;
            if api.json {
                print_json(&env);
            }
            eprintln!("environment {name} added");
        }
        EnvCommand::Ls => {
            let list = client.json(reqwest::Method::GET, "/api/envs", None)?;
            if api.json {
                print_json(&list);
            } else {
                for e in list.as_array().into_iter().flatten() {
                    println!(
                        "{}\t{}\t{} variables",
                        e["name"].as_str().unwrap_or_default(),
                        e["domain"].as_str().unwrap_or("-"),
                        e["vars"].as_object().map_or(0, |m| m.len())
                    );
                }
            }
        }
        EnvCommand::Show { name } => {
            let env = client.json(reqwest::Method::GET, &format!("/api/envs/{name}"), None)?;
            print_json(&env);
        }
        EnvCommand::Rm { name } => {
            client.json(reqwest::Method::DELETE, &format!("/api/envs/{name}"), None)?;
            eprintln!("environment {name} deleted");
        }
        EnvCommand::Rule { command } => match command {
            EnvRuleCommand::Add {
                env,
                repo,
                branch,
                image_tag,
                stack,
                file,
            } => {
                let rule = client.json(
                    reqwest::Method::POST,
                    &format!("/api/envs/{env}/rules"),
                    Some(
                        json!({"repo": repo, "branch": branch, "image_tag": image_tag,
                        "stack": stack, "file": file}),
                    ),
                )?;
                if api.json {
                    print_json(&rule);
                }
                let what = match (&branch, &image_tag) {
                    (Some(b), _) => format!("each successful build of {repo} {b}"),
                    (None, t) => format!("each push of {repo}:{}", t.as_deref().unwrap_or("")),
                };
                eprintln!(
                    "rule {}: {what} deploys {env}/{}",
                    rule["id"],
                    rule["stack"].as_str().unwrap_or_default()
                );
            }
            EnvRuleCommand::Ls { env } => {
                let list = client.json(
                    reqwest::Method::GET,
                    &format!("/api/envs/{env}/rules"),
                    None,
                )?;
                if api.json {
                    print_json(&list);
                } else {
                    for r in list.as_array().into_iter().flatten() {
                        let on = match r["image_tag"].as_str() {
                            Some(tag) => format!("push :{tag}"),
                            None => r["branch"].as_str().unwrap_or_default().to_owned(),
                        };
                        println!(
                            "{}\t{} {on}\t-> {}",
                            r["id"],
                            r["repo"].as_str().unwrap_or_default(),
                            r["stack"].as_str().unwrap_or_default()
                        );
                    }
                }
            }
            EnvRuleCommand::Rm { env, id } => {
                client.json(
                    reqwest::Method::DELETE,
                    &format!("/api/envs/{env}/rules/{id}"),
                    None,
                )?;
                eprintln!("rule {id} deleted from {env}");
            }
        },
        EnvCommand::Secret { command } => match command {
            EnvSecretCommand::Add { env, name, value } => {
                let value = value_or_stdin(value)?;
                client.json(
                    reqwest::Method::POST,
                    &format!("/api/envs/{env}/secrets"),
                    Some(json!({"name": name, "value": value})),
                )?;
                eprintln!("secret {name} saved for {env}");
            }
            EnvSecretCommand::Ls { env } => {
                let list = client.json(
                    reqwest::Method::GET,
                    &format!("/api/envs/{env}/secrets"),
                    None,
                )?;
                if api.json {
                    print_json(&list);
                } else {
                    for s in list.as_array().into_iter().flatten() {
                        println!("{}", s["name"].as_str().unwrap_or_default());
                    }
                }
            }
            EnvSecretCommand::Rm { env, name } => {
                client.json(
                    reqwest::Method::DELETE,
                    &format!("/api/envs/{env}/secrets/{name}"),
                    None,
                )?;
                eprintln!("secret {name} deleted from {env}");
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}
