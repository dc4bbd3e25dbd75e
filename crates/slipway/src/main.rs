//! The `slipway` binary: flags and output only; the work is done by the library crates.

mod build_args;
mod client;
mod env;
mod exec;
mod lint;
mod logs;
mod notify;
mod plan;
mod printer;
mod proxy;
mod registry;
mod secrets_file;
mod stack;
mod stack_deploy;
mod up;

// The proxy and the server allocate per request (headers, bodies' frames): mimalloc's
// thread-local free lists cost a fraction of glibc malloc's locking and consolidation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "slipway",
    version,
    about = "git push to production URL, in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a pipeline file; prints FILE:LINE:COL: error|warning: message.
    Lint(lint::LintArgs),
    /// Show what would run for an event, with conditions evaluated and variables substituted.
    Plan(plan::PlanArgs),
    /// Run the repository's pipelines on the local Docker engine, like `drone exec`.
    Exec(exec::ExecArgs),
    /// Serve the built-in image registry (OCI Distribution, `docker login/push/pull`) alone.
    Registry(registry::RegistryArgs),
    /// Start everything on one port: server, UI, webhooks, registry and a runner.
    Up(up::UpArgs),
    /// Start the server without a runner (runners join with `slipway runner`).
    Server(up::ServerArgs),
    /// Run stages for a server: `slipway runner --server URL --token T`.
    Runner(up::RunnerArgs),
    /// Repositories: `repo add NAME --clone-url URL`, `repo ls`, `repo set NAME --registry-paths …`.
    Repo {
        #[command(flatten)]
        api: client::ApiArgs,
        #[command(subcommand)]
        command: client::RepoCommand,
    },
    /// Repository secrets: `secret add REPO NAME`, `secret ls REPO`, `secret rm REPO NAME`.
    Secret {
        #[command(flatten)]
        api: client::ApiArgs,
        #[command(subcommand)]
        command: client::SecretCommand,
    },
    /// Environments: `env add NAME [--domain D] [--var K=V]…`, `ls`, `show`, `rm`,
    /// `secret add|ls|rm`.
    Env {
        #[command(flatten)]
        api: client::ApiArgs,
        #[command(subcommand)]
        command: env::EnvCommand,
    },
    /// Notification channels: `notify add NAME --kind KIND …`, `ls`, `show`, `test`, `rm`,
    /// `log [NAME]`, `kinds`.
    Notify {
        #[command(flatten)]
        api: client::ApiArgs,
        #[command(subcommand)]
        command: notify::NotifyCommand,
    },
    /// Registry garbage collection and retention on a running server (`--dry-run` lists).
    Gc {
        #[command(flatten)]
        api: client::ApiArgs,
        #[command(flatten)]
        args: client::GcArgs,
    },
    /// API tokens: `token add NAME [--robot NAMESPACE]`, `token ls`, `token rm ID`.
    Token {
        #[command(flatten)]
        api: client::ApiArgs,
        #[command(subcommand)]
        command: client::TokenCommand,
    },
    /// The edge proxy: `--http ADDR [--routes FILE]` serves plain HTTP; `routes-from
    /// COMPOSE_FILE [--json]`, `check ROUTES_FILE` read routes.
    #[command(args_conflicts_with_subcommands = true)]
    Proxy {
        #[command(subcommand)]
        command: Option<proxy::ProxyCommand>,
        #[command(flatten)]
        serve: proxy::ServeArgs,
    },
    /// Compose stacks: `stack lint FILE [--rancher FILE]`, `stack plan FILE [--env NAME]
    /// [--domain D] [--var K=V]... [--json]`.
    Stack {
        #[command(subcommand)]
        command: stack::StackCommand,
    },
    /// Service logs: `logs ENV/STACK[/SERVICE] [-f] [--since 1h] [--grep RE]
    /// [--revision N]`, and forward routes: `logs route add URI`, `ls`, `rm ID`.
    #[command(args_conflicts_with_subcommands = true)]
    Logs {
        #[command(flatten)]
        api: client::ApiArgs,
        #[command(subcommand)]
        command: Option<logs::LogsCommand>,
        #[command(flatten)]
        args: logs::LogsArgs,
    },
    /// Builds: `ls`, `show`, `logs [-f]`, `run`, `restart`, `cancel`, `promote`.
    Build {
        #[command(flatten)]
        api: client::ApiArgs,
        #[command(subcommand)]
        command: client::BuildCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Long-running services say what they do (builds, leases, runners) unless told
    // otherwise; one-shot commands only warn.
    let serving = matches!(
        cli.command,
        Command::Up(_)
            | Command::Server(_)
            | Command::Runner(_)
            | Command::Registry(_)
            | Command::Proxy { command: None, .. }
    );
    // sqlx logs every statement at info.
    init_tracing(if serving { "info,sqlx=warn" } else { "warn" });
    let result = match cli.command {
        Command::Lint(args) => lint::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Exec(args) => exec::run(args),
        Command::Registry(args) => registry::run(args),
        Command::Up(args) => up::up(args),
        Command::Server(args) => up::server(args),
        Command::Runner(args) => up::runner(args),
        Command::Repo { api, command } => client::repo(api, command),
        Command::Secret { api, command } => client::secret(api, command),
        Command::Build { api, command } => client::build(api, command),
        Command::Token { api, command } => client::token(api, command),
        Command::Gc { api, args } => client::gc(api, args),
        Command::Notify { api, command } => notify::run(api, command),
        Command::Env { api, command } => env::run(api, command),
        Command::Logs { api, command, args } => logs::run(api, command, args),
        Command::Proxy { command, serve } => proxy::run(command, serve),
        Command::Stack { command } => stack::run(command),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Logs go to stderr so stdout stays data; `RUST_LOG` tunes them; NO_COLOR is honoured.
fn init_tracing(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(printer::use_color(&std::io::stderr()))
        .with_target(false)
        .init();
}
