//! `strata reset DB`: Litestream's `reset`, which clears a database's local replication
//! state (strata's staging directory beside it) so that the next replication starts with a
//! full copy, for a staging directory damaged or left by another setup. The database file
//! is not touched.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;

#[derive(Debug, Args)]
pub struct ResetArgs {
    /// The database whose local state is cleared.
    db: PathBuf,
    /// A config file (accepted as Litestream accepts it; strata's local state is always
    /// beside the database).
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Print what would be removed, and remove nothing.
    #[arg(long = "dry-run")]
    dry_run: bool,
    /// Use the config file as written: no $VAR expansion (Litestream's flag).
    #[arg(long = "no-expand-env")]
    no_expand_env: bool,
}

pub fn run(args: ResetArgs) -> anyhow::Result<ExitCode> {
    if let Some(config) = &args.config {
        // Read, so that a config that would not load is said now, as Litestream does.
        strata::config::Config::load(config, !args.no_expand_env)?;
    }
    let db = std::path::absolute(&args.db)?;
    if !db.exists() {
        bail!("database does not exist: {}", db.display());
    }
    // The staging directory is beside the file itself, as capture finds it (through links).
    let db =
        std::fs::canonicalize(&db).with_context(|| format!("cannot resolve {}", db.display()))?;
    let found = strata::capture::reset(&db, !args.dry_run)
        .with_context(|| format!("cannot reset the local state of {}", db.display()))?;
    let Some(found) = found else {
        println!("No local state to reset for {}", db.display());
        return Ok(ExitCode::SUCCESS);
    };
    if args.dry_run {
        println!(
            "Dry run: local strata state would be reset for: {}",
            db.display()
        );
        println!("Would remove: {}", found.dir.display());
        println!("Files that would be removed:");
        for file in &found.files {
            println!("  {}", file.display());
        }
        println!("No files were removed.");
    } else {
        println!("Resetting local strata state for: {}", db.display());
        println!(
            "Removed: {} ({} files)",
            found.dir.display(),
            found.files.len()
        );
        println!("Reset complete. Next replication sync will create a fresh snapshot.");
    }
    Ok(ExitCode::SUCCESS)
}
