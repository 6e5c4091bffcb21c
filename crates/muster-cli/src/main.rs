//! `muster`: the command-line client for Muster. It speaks through `muster-client` only.
//!
//! Layout: [`cli`] (clap types), [`output`] (tables and JSON), one file per command group
//! ([`kv`], [`txn`], [`lease`], [`registry`], [`cluster`]). Errors print as one line on stderr:
//! `error: …`.
//!
//! Exit codes (for scripts):
//! - 0: success.
//! - 1: an error (unreachable cluster, server error, watch compacted, …).
//! - 2: usage error (bad flags or arguments).
//! - 3: the request was fine but its condition did not hold: key/lease/instance not found,
//!   nothing deleted, txn compare failed, a kept-alive lease lost.
//! - 4: a write's outcome is unknown — it may or may not have been applied (the connection
//!   broke or the leader changed, and it was not safe to repeat it).

mod cli;
mod cluster;
mod kv;
mod lease;
mod output;
mod registry;
mod txn;

use std::process::ExitCode;

use clap::Parser;
use muster_client::{Client, ClientError, ClientOptions, TlsOptions};

use cli::{Cli, Command};

/// Exit codes.
pub const EXIT_ERROR: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_NOT_FOUND: u8 = 3;
pub const EXIT_UNKNOWN_OUTCOME: u8 = 4;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Bad arguments that clap could not catch.
    #[error("{0}")]
    Usage(String),
    /// Something asked for does not exist (message printed).
    #[error("{0}")]
    NotFound(String),
    /// The result is already printed; only the exit code remains.
    #[error("")]
    Quiet(u8),
    /// The watch can no longer continue.
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::NotFound(_) => EXIT_NOT_FOUND,
            CliError::Quiet(code) => *code,
            CliError::Failed(_) => EXIT_ERROR,
            CliError::Client(e) if e.is_not_found() => EXIT_NOT_FOUND,
            CliError::Client(e) if e.outcome_unknown() => EXIT_UNKNOWN_OUTCOME,
            CliError::Client(ClientError::InvalidEndpoint { .. }) => EXIT_USAGE,
            CliError::Client(_) => EXIT_ERROR,
        }
    }
}

pub type Result<T> = std::result::Result<T, CliError>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = e.to_string();
            if !msg.is_empty() {
                eprintln!("error: {}", msg.replace('\n', " "));
            }
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let options = ClientOptions {
        call_timeout: cli.timeout,
        attempt_timeout: cli.timeout.min(ClientOptions::default().attempt_timeout),
        tls: match &cli.cacert {
            Some(ca) => Some(TlsOptions::from_files(
                ca,
                cli.cert.as_deref(),
                cli.key.as_deref(),
            )?),
            None => None,
        },
        ..ClientOptions::default()
    };
    let client = Client::connect(&cli.endpoints, options).await?;
    let f = cli.output;
    match cli.command {
        Command::Kv(c) => kv::run(&client, f, c).await,
        Command::Lease(c) => lease::run(&client, f, c).await,
        Command::Registry(c) => registry::run(&client, f, c).await,
        Command::Cluster(c) => cluster::run(&client, f, c).await,
    }
}

/// Resolves when the user interrupts (Ctrl-C); never when signals are unavailable.
pub async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}
