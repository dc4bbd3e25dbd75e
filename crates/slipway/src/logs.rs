//! `slipway logs …`: deployed services' logs from the server's collector, searched or
//! followed live, and the routes that forward them (`logs route add|ls|rm`).

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::client::{ApiArgs, Client, each_line, encode, print_json};

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// `ENV/STACK` or `ENV/STACK/SERVICE`.
    pub target: Option<String>,
    /// Keep printing new records as they are collected.
    #[arg(short, long)]
    pub follow: bool,
    /// From this long ago (`1h`, `30m`) or this time (`2026-12-07T10:00:00Z`).
    #[arg(long)]
    pub since: Option<String>,
    /// Up to this long ago or this time.
    #[arg(long)]
    pub until: Option<String>,
    /// Only records whose text (without colours) matches this regular expression.
    #[arg(long, value_name = "RE")]
    pub grep: Option<String>,
    /// Only the containers of this revision.
    #[arg(long, value_name = "N")]
    pub revision: Option<String>,
    /// Only this replica's containers.
    #[arg(long, value_name = "N")]
    pub replica: Option<u32>,
    /// Only `stdout` or `stderr`.
    #[arg(long)]
    pub stream: Option<String>,
    /// The last N records (default 100 without --since; all of them with it).
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub enum LogsCommand {
    /// Forward routes: `route add URI`, `route ls`, `route rm ID`.
    Route {
        #[command(subcommand)]
        command: RouteCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum RouteCommand {
    /// Forward every collected record (or those the filters pick) to URI, as logspout's
    /// `ROUTE_URIS`: `syslog+tcp://HOST:514`, `relp://HOST:2514`, `loki+http://HOST:3100`,
    /// `elasticsearch+http://HOST:9200/INDEX`, … with `?filter.name=…&filter.labels=…`.
    Add {
        uri: String,
        /// A filter option, `name=GLOB`, `id=PREFIX`, `labels=K:V[,K:V]` or
        /// `sources=stdout|stderr` (repeatable): the same as `?filter.KEY=VALUE`.
        #[arg(long = "filter", value_name = "KEY=VALUE")]
        filters: Vec<String>,
    },
    /// The routes with what each has not delivered yet.
    Ls,
    /// Stop forwarding to a route (its cursor is deleted with it).
    Rm { id: String },
}

pub fn run(api: ApiArgs, command: Option<LogsCommand>, args: LogsArgs) -> Result<ExitCode> {
    let client = Client::new(&api)?;
    match command {
        Some(LogsCommand::Route { command }) => route(&api, &client, command),
        None => show(&api, &client, args),
    }
}

fn show(api: &ApiArgs, client: &Client, args: LogsArgs) -> Result<ExitCode> {
    let Some(target) = args.target.as_deref() else {
        bail!("which logs? `slipway logs ENV/STACK[/SERVICE]` (or `slipway logs route ls`)");
    };
    let parts: Vec<&str> = target.split('/').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
        bail!("`{target}`: write ENV/STACK or ENV/STACK/SERVICE");
    }
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(service) = parts.get(2) {
        query.append_pair("service", service);
    }
    for (key, value) in [
        ("since", args.since.as_deref()),
        ("until", args.until.as_deref()),
        ("grep", args.grep.as_deref()),
        ("revision", args.revision.as_deref()),
        ("stream", args.stream.as_deref()),
    ] {
        if let Some(value) = value {
            query.append_pair(key, value);
        }
    }
    if let Some(replica) = args.replica {
        query.append_pair("replica", &replica.to_string());
    }
    if let Some(tail) = args.tail {
        query.append_pair("tail", &tail.to_string());
    }
    if args.follow {
        query.append_pair("follow", "1");
    }
    let path = format!(
        "/api/logs/{}/{}?{}",
        encode(parts[0]),
        encode(parts[1]),
        query.finish()
    );
    let resp = client.send(reqwest::Method::GET, &path, None)?;
    let colour = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let with_service = parts.len() == 2;
    each_line(resp, |text, out| {
        if api.json {
            writeln!(out, "{text}").context("writing the log")?;
        } else if !text.is_empty() {
            let record: Value = serde_json::from_str(text)
                .with_context(|| format!("the server sent a record that is not JSON: {text}"))?;
            writeln!(out, "{}", human(&record, with_service, colour)).context("writing the log")?;
        }
        Ok(true)
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `TIME SERVICE.REPLICA | LINE`, the service left out when only one is shown, stderr
/// marked.
fn human(r: &Value, with_service: bool, colour: bool) -> String {
    let time = r["time"].as_str().unwrap_or("");
    let mut who = String::new();
    if with_service {
        who.push_str(r["service"].as_str().unwrap_or("?"));
    }
    if let Some(replica) = r["replica"].as_u64() {
        if !who.is_empty() {
            who.push('.');
        }
        who.push_str(&replica.to_string());
    } else if who.is_empty() {
        who.push_str(r["container"].as_str().unwrap_or(""));
    }
    if r["revision"].is_string() {
        who.push_str(&format!(" r{}", r["revision"].as_str().unwrap_or("")));
    }
    let err = r["stream"].as_str() == Some("stderr");
    let bar = if err { "!" } else { "|" };
    let line = r["line"].as_str().unwrap_or("");
    if colour {
        let tint = if err { "31" } else { "36" };
        format!("\x1b[2m{time}\x1b[0m \x1b[{tint}m{who} {bar}\x1b[0m {line}")
    } else {
        format!("{time} {who} {bar} {line}")
    }
}

fn route(api: &ApiArgs, client: &Client, command: RouteCommand) -> Result<ExitCode> {
    match command {
        RouteCommand::Add { uri, filters } => {
            let mut uri = uri;
            for f in &filters {
                let Some((key, value)) = f.split_once('=') else {
                    bail!("--filter `{f}` must be KEY=VALUE (name, id, labels or sources)");
                };
                let sep = if uri.contains('?') { '&' } else { '?' };
                let pair = form_urlencoded::Serializer::new(String::new())
                    .append_pair(&format!("filter.{key}"), value)
                    .finish();
                uri = format!("{uri}{sep}{pair}");
            }
            let route = client.json(
                reqwest::Method::POST,
                "/api/log-routes",
                Some(json!({ "uri": uri })),
            )?;
            if api.json {
                print_json(&route);
            } else {
                println!(
                    "route {} added: {}",
                    route["id"].as_str().unwrap_or("?"),
                    route["uri"].as_str().unwrap_or("?")
                );
            }
        }
        RouteCommand::Ls => {
            let routes = client.json(reqwest::Method::GET, "/api/log-routes", None)?;
            if api.json {
                print_json(&routes);
                return Ok(ExitCode::SUCCESS);
            }
            let empty = Vec::new();
            let list = routes.as_array().unwrap_or(&empty);
            if list.is_empty() {
                println!("no routes: `slipway logs route add URI`, or --log-route on the server");
            }
            for r in list {
                let error = r["last_error"]
                    .as_str()
                    .map(|e| format!("  last error: {e}"))
                    .unwrap_or_default();
                let records = r["lag_records"]
                    .as_u64()
                    .map(|n| format!("{n} records, "))
                    .unwrap_or_default();
                println!(
                    "{}  {}  delivered {}  not yet delivered: {records}{} bytes{}{error}",
                    r["id"].as_str().unwrap_or("?"),
                    r["uri"].as_str().unwrap_or("?"),
                    r["delivered"].as_u64().unwrap_or(0),
                    r["lag_bytes"].as_u64().unwrap_or(0),
                    if r["configured"].as_bool() == Some(true) {
                        "  (--log-route)"
                    } else {
                        ""
                    },
                );
            }
        }
        RouteCommand::Rm { id } => {
            client.json(
                reqwest::Method::DELETE,
                &format!("/api/log-routes/{}", encode(&id)),
                None,
            )?;
            if !api.json {
                println!("route {id} removed");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
