//! `console`: parses the command line and configuration, and serves the plant console
//! until SIGTERM or Ctrl-C; `console hash-password` makes a password hash for
//! `access.users`.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use console::config::{CliOverrides, ConsoleConfig};
use console::Console;
use service::run::Runtime;

/// The plant console: overview, device history, alerts and the pipeline, live in a
/// browser, on one port (default 8080), beside /metrics, /livez and /readyz.
///
/// Configuration: built-in defaults, then the TOML file (see console/config/console.toml),
/// then DATABASE_URL, REDIS_URL and KAFKA_BROKERS, then CONSOLE_* environment variables
/// (`__` between levels, e.g. CONSOLE_ACCESS__VIEWING=login), then the flags below.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (optional).
    #[arg(short, long, env = "CONSOLE_CONFIG")]
    config: Option<PathBuf>,
    /// PostgreSQL URL (overrides database.url).
    #[arg(long)]
    database_url: Option<String>,
    /// Redis URL (overrides redis.url).
    #[arg(long)]
    redis_url: Option<String>,
    /// Kafka bootstrap servers, for the alert records (overrides kafka.brokers).
    #[arg(long)]
    kafka_brokers: Option<String>,
    /// Address of the pages and of /metrics, /livez, /readyz (overrides http.listen).
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Check the configuration, print it (passwords hidden) and exit.
    #[arg(long)]
    check_config: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read a password from standard input (one line) and print its argon2 hash, for a
    /// user's `password_hash` in access.users.
    HashPassword,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::HashPassword) = cli.command {
        return hash_password();
    }
    let overrides = CliOverrides {
        database_url: cli.database_url,
        redis_url: cli.redis_url,
        kafka_brokers: cli.kafka_brokers,
        http_listen: cli.http_listen,
    };
    service::run::main(
        "console",
        cli.config.as_deref(),
        cli.check_config,
        |file| ConsoleConfig::load(file, &overrides),
        Runtime::MultiThread,
        |config| async {
            Console::start(config)
                .await?
                .run_until(service::shutdown_signal())
                .await
        },
    )
}

fn hash_password() -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
        eprintln!("console hash-password: cannot read standard input: {e}");
        return ExitCode::FAILURE;
    }
    let password = line.trim_end_matches(['\n', '\r']);
    if password.chars().count() < 8 {
        eprintln!("console hash-password: the password must have at least 8 characters");
        return ExitCode::from(2);
    }
    match console::auth::hash_password(password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("console hash-password: {e}");
            ExitCode::FAILURE
        }
    }
}
