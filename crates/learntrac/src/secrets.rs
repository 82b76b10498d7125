//! `learntrac secret …`: the operator's commands for the secrets store.
//! They run with the operator's rights, not under the role policy.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use learntrac_secrets::MasterKey;

use crate::observe::{record_cli_action, record_with_store};
use crate::{DataArgs, settings};

#[derive(Subcommand)]
pub enum SecretCommand {
    /// Store a secret; the value is read from standard input (one trailing
    /// newline is removed), never from an argument.
    Put {
        #[command(flatten)]
        data: DataArgs,
        name: String,
    },
    /// Print a secret's value on standard output.
    Get {
        #[command(flatten)]
        data: DataArgs,
        name: String,
    },
    /// List the secrets with their creation and rotation times, without values.
    List {
        #[command(flatten)]
        data: DataArgs,
    },
    /// Delete a secret.
    Delete {
        #[command(flatten)]
        data: DataArgs,
        name: String,
    },
    /// Re-encrypt every secret under a new master key. With a key file,
    /// LearnTrac generates the new key; a key from LEARNTRAC_MASTER_KEY or
    /// master_key_command must be given with --new-key-file. Rerun it if
    /// it was interrupted.
    RotateMasterKey {
        #[command(flatten)]
        data: DataArgs,
        /// File with the new base64 key, mode 0600.
        #[arg(long)]
        new_key_file: Option<PathBuf>,
    },
}

pub async fn run(command: SecretCommand) -> Result<()> {
    let now = learntrac_server::unix_now();
    match command {
        SecretCommand::Put { data, name } => {
            learntrac_secrets::validate_name(&name)?;
            let value = read_value()?;
            let mut store = open(&data, true)?;
            let created = store.put(&name, &value, now)?;
            println!("{} secret {name}", if created { "stored" } else { "replaced" });
            let details = if created { "created" } else { "replaced" };
            record_cli_action(&settings::resolve(&data)?, "secret.put", &format!("secret:{name}"), details).await;
        }
        SecretCommand::Get { data, name } => {
            let value = open(&data, false)?.get(&name)?;
            println!("{}", value.expose());
        }
        SecretCommand::List { data } => {
            for info in open(&data, false)?.list() {
                println!(
                    "{}\tcreated_at={}\trotated_at={}\tmaster_key={}",
                    info.name, info.created_at, info.rotated_at, info.key_id
                );
            }
        }
        SecretCommand::Delete { data, name } => {
            open(&data, false)?.delete(&name)?;
            println!("deleted secret {name}");
            record_cli_action(&settings::resolve(&data)?, "secret.delete", &format!("secret:{name}"), "").await;
        }
        SecretCommand::RotateMasterKey { data, new_key_file } => {
            let new_key = new_key_file.as_deref().map(MasterKey::read_file).transpose()?;
            let config = settings::resolve(&data)?;
            // With the new key in the ring, a rerun of an interrupted rotation
            // can read the secrets it already moved.
            let mut store = learntrac_server::secrets::open_store_with_next(&config, false, new_key.clone())?;
            let rotation = store.rotate_master_key(new_key, |_| Ok(()))?;
            let details = format!(
                "{} secrets re-encrypted from master key {} to {}",
                rotation.reencrypted, rotation.old_key_id, rotation.new_key_id
            );
            // The store now uses the new key, which the source may not give
            // yet (an environment variable may still contain the old one).
            if let Err(error) = record_with_store(&config, store, "master_key.rotate", "master_key", &details).await {
                eprintln!("warning: the rotation was done, but its audit record was not written: {error:#}");
            }
            println!(
                "re-encrypted {} secret(s); master key {} replaced by {}",
                rotation.reencrypted, rotation.old_key_id, rotation.new_key_id
            );
            match rotation.previous_key_file {
                Some(path) => println!(
                    "the old key is kept in {}: move it to offline storage with the backups made under it, \
                     and delete it here",
                    path.display()
                ),
                None => println!(
                    "switch LEARNTRAC_MASTER_KEY or master_key_command to the new key before the next start, \
                     and keep the old key for the backups made under it"
                ),
            }
        }
    }
    Ok(())
}

/// Opens the store; `create` allows a new store and master key.
fn open(data: &DataArgs, create: bool) -> Result<learntrac_secrets::SecretStore> {
    let config = settings::resolve(data)?;
    learntrac_server::secrets::open_store(&config, create)
}

fn read_value() -> Result<String> {
    let mut value = String::new();
    std::io::stdin().read_to_string(&mut value).context("cannot read the secret from standard input")?;
    let value = value.strip_suffix('\n').map(|v| v.strip_suffix('\r').unwrap_or(v)).unwrap_or(&value).to_string();
    if value.is_empty() {
        bail!(
            "standard input is empty; pipe the secret's value in, for example `printf %s VALUE | learntrac secret put NAME`"
        );
    }
    Ok(value)
}
