//! `learntrac backup …`: encrypted backups of a data directory.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use learntrac_secrets::KeyRing;
use learntrac_server::backup;

use crate::observe::record_cli_action;
use crate::{DataArgs, settings};

#[derive(Subcommand)]
pub enum BackupCommand {
    /// Write an encrypted snapshot of the database and the secrets store,
    /// safe to run while the server is running.
    Create {
        #[command(flatten)]
        data: DataArgs,
        /// The backup file to write.
        #[arg(long)]
        out: PathBuf,
        /// Replace `--out` if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Check a backup from end to end without restoring it, and print
    /// what it holds.
    Verify {
        #[command(flatten)]
        data: DataArgs,
        file: PathBuf,
    },
    /// Restore a backup into an empty data directory (and empty database)
    /// that has the master key the backup was made under.
    Restore {
        #[command(flatten)]
        data: DataArgs,
        file: PathBuf,
    },
}

pub async fn run(command: BackupCommand) -> Result<()> {
    match command {
        BackupCommand::Create { data, out, force } => {
            let config = settings::resolve(&data)?;
            let summary = backup::create(&config, &out, force, learntrac_server::unix_now()).await?;
            println!("wrote {}\n{summary}", out.display());
            let details = format!("{} rows, master key {}", summary.rows, summary.master_key_id);
            record_cli_action(&config, "backup.create", &out.display().to_string(), &details).await;
        }
        BackupCommand::Verify { data, file } => {
            let config = settings::resolve(&data)?;
            let keys = KeyRing::open(config.master_key.clone(), false)?;
            let summary = backup::verify(&file, &keys)?;
            println!("{} is intact\n{summary}", file.display());
        }
        BackupCommand::Restore { data, file } => {
            let config = settings::resolve(&data)?;
            let summary = backup::restore(&config, &file).await?;
            println!("restored {} into {}\n{summary}", file.display(), config.data_dir.display());
            let details = format!("{} rows from a backup made at {}", summary.rows, summary.created_at);
            record_cli_action(&config, "backup.restore", &file.display().to_string(), &details).await;
        }
    }
    Ok(())
}
