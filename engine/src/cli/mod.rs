//! Command-line parsing and dispatch.

mod ltx_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// strata: LTX replication, compaction and restore for SQLite (Litestream 0.5 compatible).
#[derive(Debug, Parser)]
#[command(name = "strata", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect and check LTX files.
    #[command(subcommand)]
    Ltx(ltx_cmd::LtxCommand),
}

/// Parses the command line, runs the command, and turns its outcome into an exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ltx(cmd) => ltx_cmd::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("strata: {e:#}");
            ExitCode::FAILURE
        }
    }
}
