//! `slipway repo …`, `slipway secret …` and `slipway build …`: the REST API from the
//! command line. Data goes to stdout (JSON with `--json`), messages to stderr.

use std::collections::BTreeMap;
use std::io::{BufRead, Read};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The server's URL.
    #[arg(
        long,
        env = "SLIPWAY_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// An admin token.
    #[arg(long, env = "SLIPWAY_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print JSON for scripts.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Add a repository; prints the webhook URL and secret to paste into the git host.
    Add {
        /// `owner/name`, as the git host names it.
        name: String,
        #[arg(long)]
        clone_url: String,
        /// github, gitea (also Forgejo, Gogs), gitlab or generic.
        #[arg(long, default_value = "github")]
        provider: String,
        /// The pipeline file (default: .slipway.yml, then .drone.yml).
        #[arg(long)]
        config_path: Option<String>,
        #[arg(long)]
        default_branch: Option<String>,
        /// Trust the repository's pushes, tags and manual runs: host volumes, privileged
        /// steps, `docker.sock`, exec pipelines (on runners started with --allow-exec) and
        /// publishing images to the registry. Pull requests never get these.
        #[arg(long)]
        trusted: bool,
        /// Cancel pending builds of a branch superseded by a newer push.
        #[arg(long)]
        auto_cancel: bool,
        /// At most this many stages of the repository run at once (0: no limit).
        #[arg(long, default_value_t = 0)]
        max_running: i64,
        /// Commit statuses: the host's API base URL (e.g. https://api.github.com).
        #[arg(long)]
        status_url: Option<String>,
        /// Commit statuses: an API token of the host.
        #[arg(long, env = "SLIPWAY_STATUS_TOKEN", hide_env_values = true)]
        status_token: Option<String>,
    },
    /// List repositories.
    Ls,
    /// Change a repository's settings; only the options given change.
    Set {
        /// `owner/name`.
        name: String,
        /// Registry paths a pipeline's token may push to besides the repository's own
        /// (`owner/name` and below it): comma-separated patterns, `*` within a segment
        /// (`team/shared-*,team/tools`); replaces the list, `""` clears it.
        #[arg(long, value_name = "PATTERNS")]
        registry_paths: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Add or replace a secret (the value from --value or standard input).
    Add {
        repo: String,
        name: String,
        #[arg(long)]
        value: Option<String>,
        /// Give it to pull-request builds too.
        #[arg(long)]
        allow_pull_request: bool,
    },
    /// List secret names.
    Ls { repo: String },
    /// Delete a secret.
    Rm { repo: String, name: String },
}

/// `slipway gc`: the registry's garbage collection and retention, run by the server.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// List what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep only the N most recently pushed tags (matching --tags) of each repository.
    #[arg(long)]
    pub keep_last: Option<usize>,
    /// Tags --keep-last applies to (`*`, `?` wildcards).
    #[arg(long, default_value = "*")]
    pub tags: String,
    /// Repositories the rule applies to: `*`, `team/*` or a name.
    #[arg(long, default_value = "*")]
    pub repos: String,
    /// Also delete untagged manifests pushed longer ago than this (e.g. 7d, 12h).
    #[arg(long, value_parser = parse_age)]
    pub untagged_older_than: Option<u64>,
    /// Keep unreferenced blobs younger than this (default the server's: 1h). A short grace
    /// may sweep the layers of a push whose manifest has not arrived yet (that push then
    /// fails and uploads them again).
    #[arg(long, value_parser = parse_age)]
    pub blob_grace: Option<u64>,
}

/// `90`, `30s`, `10m`, `12h`, `7d` as seconds.
fn parse_age(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not an age (e.g. 7d, 12h, 30m)");
    if let Some(days) = text.strip_suffix('d') {
        return days.parse::<u64>().map(|d| d * 86_400).map_err(|_| bad());
    }
    slipway_spec::parse::parse_duration(text).ok_or_else(bad)
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token; prints its secret once.
    Add {
        name: String,
        /// A registry robot: may only pull and push below this namespace.
        #[arg(long, conflicts_with = "scope")]
        robot: Option<String>,
        /// `admin` (the default), `runner`, `pull` (registry pull of any repository, for a
        /// deploy host), or `paths:PATTERN,…` (registry pull and push of those paths and
        /// below them).
        #[arg(long)]
        scope: Option<String>,
    },
    /// List tokens (names and scopes; secrets are not kept).
    Ls,
    /// Revoke a token by id.
    Rm { id: i64 },
}

#[derive(Debug, Subcommand)]
pub enum BuildCommand {
    /// List builds, newest first.
    Ls {
        repo: String,
        #[arg(long, default_value_t = 25)]
        limit: i64,
    },
    /// One build with its stages and steps.
    Show { repo: String, number: i64 },
    /// A step's log (every step of the build without --step); -f follows it live.
    Logs {
        repo: String,
        number: i64,
        /// Stage number (default 1).
        #[arg(long, default_value_t = 1)]
        stage: i64,
        #[arg(long)]
        step: Option<String>,
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Run the pipeline for a branch, tag or commit, with parameters.
    Run {
        repo: String,
        #[arg(long)]
        branch: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        #[arg(long)]
        commit: Option<String>,
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
    },
    /// Build the same commit again.
    Restart { repo: String, number: i64 },
    /// Stop a build.
    Cancel { repo: String, number: i64 },
    /// Promote a finished build to a target (promote event, DRONE_DEPLOY_TO).
    Promote {
        repo: String,
        number: i64,
        #[arg(long)]
        target: String,
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
    },
}

/// `slipway proxy routes`: one line a route, then its backends indented.
pub fn proxy_routes(api: ApiArgs) -> Result<ExitCode> {
    let client = Client::new(&api)?;
    let status = client.json(reqwest::Method::GET, "/api/proxy/routes", None)?;
    if api.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    for r in status["routes"].as_array().into_iter().flatten() {
        let cert = &r["tls"]["certificate"];
        let tls = match (cert["present"].as_bool(), cert["last_error"].as_str()) {
            (_, Some(err)) => format!("{} (error: {err})", text(&r["tls"]["mode"])),
            (Some(true), _) => format!(
                "{} (until {})",
                text(&r["tls"]["mode"]),
                text(&cert["not_after"])
            ),
            _ => text(&r["tls"]["mode"]),
        };
        println!(
            "{}{}  tls={tls}  ({})",
            text(&r["host"]),
            text(&r["path"]),
            text(&r["source"])
        );
        for b in r["backends"].as_array().into_iter().flatten() {
            println!(
                "  {}  {}  weight {}  {} in flight",
                text(&b["address"]),
                text(&b["state"]),
                b["weight"],
                b["in_flight"]
            );
        }
    }
    for c in status["conflicts"].as_array().into_iter().flatten() {
        eprintln!("conflict: {c}");
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) struct Client {
    base: String,
    token: String,
    http: reqwest::blocking::Client,
}

impl Client {
    pub(crate) fn new(args: &ApiArgs) -> Result<Client> {
        let Some(token) = args.token.clone() else {
            bail!(
                "no token: pass --token or set SLIPWAY_TOKEN (the admin token `slipway up` printed)"
            );
        };
        let http = reqwest::blocking::Client::builder()
            .timeout(None)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("making the HTTP client")?;
        Ok(Client {
            base: args.server.trim_end_matches('/').to_owned(),
            token,
            http,
        })
    }

    pub(crate) fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<reqwest::blocking::Response> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        } else if method != reqwest::Method::GET {
            req = req.header(reqwest::header::CONTENT_LENGTH, "0");
        }
        let resp = req
            .send()
            .with_context(|| format!("{method} {url}: is the server running?"))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().unwrap_or_default();
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or(text);
            bail!("{method} {url}: {status}: {message}");
        }
        Ok(resp)
    }

    pub(crate) fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let resp = self.send(method, path, body)?;
        if resp.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        resp.json()
            .with_context(|| format!("reading the answer of {url}"))
    }
}

fn params(list: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for p in list {
        let Some((k, v)) = p.split_once('=') else {
            bail!("--param `{p}` must be KEY=VALUE");
        };
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

/// A secret's value: the one given, else standard input less one trailing newline.
pub(crate) fn value_or_stdin(value: Option<String>) -> Result<String> {
    if let Some(v) = value {
        return Ok(v);
    }
    let mut v = String::new();
    std::io::stdin()
        .read_to_string(&mut v)
        .context("reading the secret's value from standard input")?;
    Ok(v.strip_suffix('\n').map(str::to_owned).unwrap_or(v))
}

pub(crate) fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub fn repo(api: ApiArgs, command: RepoCommand) -> Result<ExitCode> {
    let client = Client::new(&api)?;
    match command {
        RepoCommand::Add {
            name,
            clone_url,
            provider,
            config_path,
            default_branch,
            trusted,
            auto_cancel,
            max_running,
            status_url,
            status_token,
        } => {
            let repo = client.json(
                reqwest::Method::POST,
                "/api/repos",
                Some(
                    json!({"name": name, "clone_url": clone_url, "provider": provider,
                    "config_path": config_path, "default_branch": default_branch,
                    "trusted": trusted, "auto_cancel": auto_cancel, "max_running": max_running,
                    "status_url": status_url, "status_token": status_token}),
                ),
            )?;
            if api.json {
                print_json(&repo);
            } else {
                println!("added {}", repo["name"].as_str().unwrap_or_default());
                println!(
                    "webhook URL:    {}",
                    repo["webhook_url"].as_str().unwrap_or_default()
                );
                println!(
                    "webhook secret: {}",
                    repo["webhook_secret"].as_str().unwrap_or_default()
                );
                println!("content type:   application/json; events: push, tag, pull request");
            }
        }
        RepoCommand::Set {
            name,
            registry_paths,
        } => {
            let mut settings = serde_json::Map::new();
            if let Some(list) = registry_paths {
                let paths: Vec<&str> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .collect();
                settings.insert("registry_paths".into(), json!(paths));
            }
            if settings.is_empty() {
                bail!("nothing to change: give a setting (e.g. --registry-paths 'team/shared-*')");
            }
            let repo = client.json(
                reqwest::Method::PATCH,
                &format!("/api/repos/{name}"),
                Some(Value::Object(settings)),
            )?;
            if api.json {
                print_json(&repo);
            } else {
                let paths: Vec<&str> = repo["registry_paths"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                println!("updated {name}");
                println!(
                    "registry paths: {} and below{}",
                    repo["name"].as_str().unwrap_or(&name),
                    if paths.is_empty() {
                        String::new()
                    } else {
                        format!(", {}", paths.join(", "))
                    }
                );
            }
        }
        RepoCommand::Ls => {
            let repos = client.json(reqwest::Method::GET, "/api/repos", None)?;
            if api.json {
                print_json(&repos);
            } else {
                for r in repos.as_array().into_iter().flatten() {
                    println!(
                        "{}\t{}\t{}",
                        r["name"].as_str().unwrap_or_default(),
                        r["provider"].as_str().unwrap_or_default(),
                        r["clone_url"].as_str().unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn secret(api: ApiArgs, command: SecretCommand) -> Result<ExitCode> {
    let client = Client::new(&api)?;
    match command {
        SecretCommand::Add {
            repo,
            name,
            value,
            allow_pull_request,
        } => {
            let value = value_or_stdin(value)?;
            client.json(
                reqwest::Method::POST,
                &format!("/api/repos/{repo}/secrets"),
                Some(
                    json!({"name": name, "value": value, "allow_pull_request": allow_pull_request}),
                ),
            )?;
            eprintln!("secret {name} saved for {repo}");
        }
        SecretCommand::Ls { repo } => {
            let list = client.json(
                reqwest::Method::GET,
                &format!("/api/repos/{repo}/secrets"),
                None,
            )?;
            if api.json {
                print_json(&list);
            } else {
                for s in list.as_array().into_iter().flatten() {
                    let pr = if s["allow_pull_request"].as_bool() == Some(true) {
                        "\tpull requests too"
                    } else {
                        ""
                    };
                    println!("{}{pr}", s["name"].as_str().unwrap_or_default());
                }
            }
        }
        SecretCommand::Rm { repo, name } => {
            client.json(
                reqwest::Method::DELETE,
                &format!("/api/repos/{repo}/secrets/{name}"),
                None,
            )?;
            eprintln!("secret {name} deleted from {repo}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn gc(api: ApiArgs, args: GcArgs) -> Result<ExitCode> {
    let client = Client::new(&api)?;
    let mut rules = Vec::new();
    if args.keep_last.is_some() || args.untagged_older_than.is_some() {
        rules.push(json!({"repositories": args.repos, "tags": args.tags,
            "keep_last": args.keep_last, "untagged_older_than_secs": args.untagged_older_than}));
    }
    let report = client.json(
        reqwest::Method::POST,
        "/api/registry/gc",
        Some(json!({"dry_run": args.dry_run, "rules": rules, "blob_grace_secs": args.blob_grace})),
    )?;
    if api.json {
        print_json(&report);
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    for tag in report["tags"].as_array().into_iter().flatten() {
        println!("{verb} tag {}", tag.as_str().unwrap_or_default());
    }
    for m in report["manifests"].as_array().into_iter().flatten() {
        println!("{verb} manifest {}", m.as_str().unwrap_or_default());
    }
    let blobs = report["blobs"].as_array().map_or(0, Vec::len);
    let freed = report["freed_bytes"].as_u64().unwrap_or(0);
    println!("{verb} {blobs} blobs, {freed} bytes");
    Ok(ExitCode::SUCCESS)
}

pub fn token(api: ApiArgs, command: TokenCommand) -> Result<ExitCode> {
    let client = Client::new(&api)?;
    match command {
        TokenCommand::Add { name, robot, scope } => {
            let scope = match (robot, scope) {
                (Some(ns), _) => format!("robot:{ns}"),
                (None, Some(scope)) => scope,
                (None, None) => "admin".to_owned(),
            };
            let token = client.json(
                reqwest::Method::POST,
                "/api/tokens",
                Some(json!({"name": name, "scope": scope})),
            )?;
            if api.json {
                print_json(&token);
            } else {
                println!("{}", token["token"].as_str().unwrap_or_default());
                eprintln!("token {name} ({scope}) made; its secret is shown only now");
            }
        }
        TokenCommand::Ls => {
            let tokens = client.json(reqwest::Method::GET, "/api/tokens", None)?;
            if api.json {
                print_json(&tokens);
            } else {
                for t in tokens.as_array().into_iter().flatten() {
                    println!(
                        "{}\t{}\t{}",
                        t["id"],
                        t["name"].as_str().unwrap_or_default(),
                        t["scope"].as_str().unwrap_or_default()
                    );
                }
            }
        }
        TokenCommand::Rm { id } => {
            client.json(reqwest::Method::DELETE, &format!("/api/tokens/{id}"), None)?;
            eprintln!("token {id} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn build_line(b: &Value) -> String {
    let message = b["message"].as_str().unwrap_or_default();
    format!(
        "#{}\t{}\t{}\t{}\t{}\t{}",
        b["number"],
        b["status"].as_str().unwrap_or_default(),
        b["event"].as_str().unwrap_or_default(),
        b["reference"].as_str().unwrap_or_default(),
        b["commit"]
            .as_str()
            .unwrap_or_default()
            .get(..8)
            .unwrap_or_default(),
        message.lines().next().unwrap_or_default()
    )
}

fn print_build(api: &ApiArgs, b: &Value) {
    if api.json {
        print_json(b);
        return;
    }
    println!("{}", build_line(b));
    if let Some(error) = b["error"].as_str() {
        println!("  error: {error}");
    }
    for stage in b["stages"].as_array().into_iter().flatten() {
        println!(
            "  stage {} {}: {}",
            stage["number"],
            stage["name"].as_str().unwrap_or_default(),
            stage["status"].as_str().unwrap_or_default()
        );
        for step in stage["steps"].as_array().into_iter().flatten() {
            let code = step["exit_code"]
                .as_i64()
                .map(|c| format!(" (exit {c})"))
                .unwrap_or_default();
            println!(
                "    {}: {}{code}",
                step["name"].as_str().unwrap_or_default(),
                step["status"].as_str().unwrap_or_default()
            );
        }
    }
}

pub fn build(api: ApiArgs, command: BuildCommand) -> Result<ExitCode> {
    let client = Client::new(&api)?;
    match command {
        BuildCommand::Ls { repo, limit } => {
            let builds = client.json(
                reqwest::Method::GET,
                &format!("/api/repos/{repo}/builds?limit={limit}"),
                None,
            )?;
            if api.json {
                print_json(&builds);
            } else {
                for b in builds.as_array().into_iter().flatten() {
                    println!("{}", build_line(b));
                }
            }
        }
        BuildCommand::Show { repo, number } => {
            let b = client.json(
                reqwest::Method::GET,
                &format!("/api/repos/{repo}/builds/{number}"),
                None,
            )?;
            print_build(&api, &b);
        }
        BuildCommand::Logs {
            repo,
            number,
            stage,
            step,
            follow,
        } => {
            let steps: Vec<String> = match step {
                Some(s) => vec![s],
                None => {
                    let b = client.json(
                        reqwest::Method::GET,
                        &format!("/api/repos/{repo}/builds/{number}"),
                        None,
                    )?;
                    b["stages"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|s| s["number"].as_i64() == Some(stage))
                        .flat_map(|s| s["steps"].as_array().cloned().unwrap_or_default())
                        .filter_map(|s| s["name"].as_str().map(str::to_owned))
                        .collect()
                }
            };
            for name in steps {
                let path = format!(
                    "/api/repos/{repo}/builds/{number}/logs/{stage}/{}",
                    encode(&name)
                );
                if follow {
                    follow_log(&client, &format!("{path}/stream"))?;
                } else {
                    let text = client
                        .send(reqwest::Method::GET, &path, None)?
                        .text()
                        .context("reading the log")?;
                    print!("{text}");
                }
            }
        }
        BuildCommand::Run {
            repo,
            branch,
            tag,
            commit,
            params: p,
        } => {
            let b = client.json(
                reqwest::Method::POST,
                &format!("/api/repos/{repo}/builds"),
                Some(
                    json!({"branch": branch, "tag": tag, "commit": commit, "params": params(&p)?}),
                ),
            )?;
            print_build(&api, &b);
        }
        BuildCommand::Restart { repo, number } => {
            let b = client.json(
                reqwest::Method::POST,
                &format!("/api/repos/{repo}/builds/{number}/restart"),
                None,
            )?;
            print_build(&api, &b);
        }
        BuildCommand::Cancel { repo, number } => {
            let b = client.json(
                reqwest::Method::POST,
                &format!("/api/repos/{repo}/builds/{number}/cancel"),
                None,
            )?;
            print_build(&api, &b);
        }
        BuildCommand::Promote {
            repo,
            number,
            target,
            params: p,
        } => {
            let b = client.json(
                reqwest::Method::POST,
                &format!("/api/repos/{repo}/builds/{number}/promote"),
                Some(json!({"target": target, "params": params(&p)?})),
            )?;
            print_build(&api, &b);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A name in a path segment.
pub(crate) fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Prints a log stream's lines until its `end`.
fn follow_log(client: &Client, path: &str) -> Result<()> {
    #[derive(serde::Deserialize)]
    struct Message {
        kind: String,
        #[serde(default)]
        line: String,
        #[serde(default)]
        lines: Vec<String>,
    }
    let resp = client.send(reqwest::Method::GET, path, None)?;
    each_line(resp, |line, out| {
        if let Some(data) = line.strip_prefix("data:")
            && let Ok(m) = serde_json::from_str::<Message>(data.trim_start())
        {
            match m.kind.as_str() {
                "line" => writeln!(out, "{}", m.line).context("writing the log")?,
                "lines" => {
                    for line in &m.lines {
                        writeln!(out, "{line}").context("writing the log")?;
                    }
                }
                "end" => return Ok(false),
                _ => {}
            }
        }
        Ok(true)
    })
}

/// Gives each line of `resp` (without its line break) to `each` with standard output,
/// until the answer ends or `each` says `false`. Output is buffered and flushed whenever
/// no more input is waiting, so a live tail stays live without a write per line.
pub(crate) fn each_line(
    resp: reqwest::blocking::Response,
    mut each: impl FnMut(&str, &mut dyn std::io::Write) -> Result<bool>,
) -> Result<()> {
    use std::io::Write;
    let mut reader = std::io::BufReader::with_capacity(1 << 16, resp);
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).context("reading the stream")? == 0 {
            break;
        }
        if !each(line.trim_end_matches(['\n', '\r']), &mut out)? {
            break;
        }
        if reader.buffer().is_empty() {
            out.flush().context("writing the output")?;
        }
    }
    out.flush().context("writing the output")?;
    Ok(())
}
