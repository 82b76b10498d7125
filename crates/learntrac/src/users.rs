//! `learntrac user`, `learntrac client` and `learntrac token-key`: the user
//! pool, the OAuth clients and the token-signing keys, administered on the
//! data directory.

use std::io::BufRead;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use learntrac_identity::password;
use learntrac_server::idp::admin::NewClient;
use learntrac_server::idp::pool::AdminAction;
use learntrac_server::keys::KeyType;
use learntrac_server::pages::format_time;
use learntrac_store::{Group, Store, User};

use crate::{DataArgs, observe, open_database, require_database, settings};

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user.
    Add {
        #[command(flatten)]
        data: DataArgs,
        #[arg(long)]
        email: String,
        /// Display name [default: the part of the email before '@'].
        #[arg(long)]
        name: Option<String>,
        /// Group to join: admins, instructors, students or operators; repeat for several.
        #[arg(long = "group", required = true)]
        groups: Vec<String>,
        /// Read the password from the first line of standard input.
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Set a user's password and sign the user out everywhere.
    SetPassword {
        #[command(flatten)]
        data: DataArgs,
        #[arg(long)]
        email: String,
        /// Read the new password from the first line of standard input.
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// List every user with groups and state.
    List {
        #[command(flatten)]
        data: DataArgs,
    },
    /// List a user's sign-ins, failures, token refreshes and other auth
    /// events, newest first.
    Events {
        #[command(flatten)]
        data: DataArgs,
        /// The user's email address.
        email: String,
        /// Maximum number of events to show.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Disable a user and end their sessions.
    Disable {
        #[command(flatten)]
        data: DataArgs,
        /// The user's email address.
        email: String,
    },
    /// Enable a disabled user again.
    Enable {
        #[command(flatten)]
        data: DataArgs,
        /// The user's email address.
        email: String,
    },
    /// Delete a user with their paths and answers.
    Delete {
        #[command(flatten)]
        data: DataArgs,
        /// The user's email address.
        email: String,
    },
    /// Replace a user's groups; their tokens and sessions end.
    Groups {
        #[command(flatten)]
        data: DataArgs,
        /// The user's email address.
        email: String,
        /// Group to belong to; repeat for several, or give none for no group.
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// Remove a user's password, end their sessions and mail them a reset code.
    ResetPassword {
        #[command(flatten)]
        data: DataArgs,
        /// The user's email address.
        email: String,
    },
    /// End every session and token of a user.
    SignOut {
        #[command(flatten)]
        data: DataArgs,
        /// The user's email address.
        email: String,
    },
    /// Lift the lockout after repeated failed sign-ins.
    Unlock {
        #[command(flatten)]
        data: DataArgs,
        /// The user's email address.
        email: String,
    },
    /// Turn off a user's TOTP and end their sessions, when they lost the
    /// authenticator and the recovery codes. They set it up again at the
    /// next sign-in if their group requires it.
    ResetMfa {
        #[command(flatten)]
        data: DataArgs,
        /// The user's email address.
        email: String,
    },
}

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Register an OAuth client. A confidential client's secret is printed once.
    Add {
        #[command(flatten)]
        data: DataArgs,
        /// The client id: letters, digits, '-', '_' or '.', with a letter.
        client_id: String,
        /// A display name [default: the client id].
        #[arg(long)]
        name: Option<String>,
        /// Give the client a secret (needed for client_credentials).
        #[arg(long)]
        confidential: bool,
        /// Grant it may use: authorization_code, refresh_token, client_credentials; repeat for several.
        #[arg(long = "grant", required = true)]
        grants: Vec<String>,
        /// Scope it may request: openid, email, profile, learntrac/api, learntrac/admin, learntrac/read, learntrac/write.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Address the code may be sent back to; repeat for several.
        #[arg(long = "redirect-uri")]
        redirect_uris: Vec<String>,
        /// Address /logout may return to; repeat for several.
        #[arg(long = "logout-uri")]
        logout_uris: Vec<String>,
    },
    /// List the registered clients with their grants, scopes and addresses.
    List {
        #[command(flatten)]
        data: DataArgs,
    },
    /// Delete a client and revoke its refresh tokens.
    Delete {
        #[command(flatten)]
        data: DataArgs,
        /// The client id.
        client_id: String,
    },
}

#[derive(Subcommand)]
pub enum TokenKeyCommand {
    /// Replace the token-signing key. The old key stays in the key set
    /// until the tokens it signed have expired. Running servers pick up the
    /// change within 30 seconds, or at once on SIGHUP.
    Rotate {
        #[command(flatten)]
        data: DataArgs,
        /// rs256 or es256.
        #[arg(long, default_value = "rs256")]
        algorithm: KeyType,
        /// Rotate even while the key retired last time still verifies live tokens.
        #[arg(long)]
        force: bool,
    },
    /// Show the key ids in the key set.
    Show {
        #[command(flatten)]
        data: DataArgs,
    },
}

async fn find(store: &Store, email: &str) -> Result<User> {
    match store.user_by_email(email).await? {
        Some(user) => Ok(user),
        None => bail!("no user has the email {email:?}; `learntrac user list` shows them"),
    }
}

pub async fn run_user(command: UserCommand) -> Result<()> {
    let (data, email, action) = match command {
        UserCommand::Add { data, email, name, groups, password_stdin: _ } => {
            return add_user(data, &email, name, &groups).await;
        }
        UserCommand::SetPassword { data, email, password_stdin: _ } => return set_password(data, &email).await,
        UserCommand::List { data } => return list(data).await,
        UserCommand::Events { data, email, limit } => return events(data, &email, limit).await,
        UserCommand::Disable { data, email } => (data, email, AdminAction::Disable),
        UserCommand::Enable { data, email } => (data, email, AdminAction::Enable),
        UserCommand::Delete { data, email } => (data, email, AdminAction::Delete),
        UserCommand::Groups { data, email, groups } => {
            let action = AdminAction::parse("groups", Some(&groups)).map_err(anyhow::Error::msg)?;
            (data, email, action)
        }
        UserCommand::ResetPassword { data, email } => (data, email, AdminAction::ForceReset),
        UserCommand::SignOut { data, email } => (data, email, AdminAction::SignOut),
        UserCommand::Unlock { data, email } => (data, email, AdminAction::Unlock),
        UserCommand::ResetMfa { data, email } => (data, email, AdminAction::ResetMfa),
    };
    let config = settings::resolve(&data)?;
    require_database(&config)?;
    let store = open_database(&config).await?;
    let user = find(&store, &email).await?;
    let mailer = mailer(&config)?;
    let now = learntrac_server::unix_now();
    let summary =
        learntrac_server::idp::pool::apply(&store, &mailer, &user, &action, "cli", config.identity.code_minutes, now)
            .await?;
    observe::record_cli_action(&config, action.audit_name(), &format!("user:{}", user.id), &summary).await;
    println!("{summary}");
    if action == AdminAction::ForceReset {
        println!("mail goes to {}", mailer.describe());
    }
    Ok(())
}

/// Opens the mailer of the settings, with the SMTP password from the secrets store.
fn mailer(config: &learntrac_server::ServerConfig) -> Result<learntrac_identity::mail::Mailer> {
    let store = learntrac_server::secrets::open_store(config, true)?;
    let secrets = learntrac_server::secrets::Secrets::new(store, config)?;
    learntrac_server::open_mailer(config, &secrets.role(learntrac_secrets::Role::Idp))
}

async fn list(data: DataArgs) -> Result<()> {
    let config = settings::resolve(&data)?;
    require_database(&config)?;
    let store = open_database(&config).await?;
    println!("{:<6} {:<32} {:<28} {:<10} {:<4} STATE", "ID", "EMAIL", "GROUPS", "VERIFIED", "MFA");
    for user in store.list_users().await? {
        let groups: Vec<&str> = user.groups.iter().map(|g| g.as_str()).collect();
        let failures = store.sign_in_failures(&user.email).await?;
        let state = if user.disabled {
            "disabled".to_string()
        } else if failures.locked_until > learntrac_server::unix_now() {
            format!("locked until {}", format_time(failures.locked_until))
        } else {
            "enabled".to_string()
        };
        println!(
            "{:<6} {:<32} {:<28} {:<10} {:<4} {state}",
            user.id,
            user.email,
            groups.join(","),
            if user.email_verified { "yes" } else { "no" },
            if user.mfa_secret.is_some() { "on" } else { "off" }
        );
    }
    Ok(())
}

async fn events(data: DataArgs, email: &str, limit: i64) -> Result<()> {
    let config = settings::resolve(&data)?;
    require_database(&config)?;
    let store = open_database(&config).await?;
    let user = find(&store, email).await?;
    let events = store.auth_events(user.id, limit.clamp(1, 10_000)).await?;
    if events.is_empty() {
        println!("no auth events for {}", user.email);
    }
    for event in events {
        println!(
            "{}  {:<26} {:<8} {:<24} client={} address={} agent={:?}",
            format_time(event.at),
            event.event,
            event.outcome,
            if event.reason.is_empty() { "-" } else { &event.reason },
            if event.client_id.is_empty() { "-" } else { &event.client_id },
            event.client_address,
            event.user_agent
        );
    }
    Ok(())
}

async fn add_user(data: DataArgs, email: &str, name: Option<String>, groups: &[String]) -> Result<()> {
    let email = email.trim().to_lowercase();
    learntrac_server::validate_email(&email).map_err(anyhow::Error::msg)?;
    let groups: Vec<Group> =
        groups.iter().map(|g| g.parse::<Group>().map_err(anyhow::Error::msg)).collect::<Result<_>>()?;
    let config = settings::resolve(&data)?;
    let secret = read_new_password(&config, &email)?;
    let store = open_database(&config).await?;
    let hash = password::hash(&secret)?;
    let name = name.unwrap_or_else(|| email.split('@').next().unwrap_or_default().to_string());
    let user = store.create_user(&email, &name, &hash, &groups, false, learntrac_server::unix_now()).await?;
    let group_names: Vec<&str> = groups.iter().map(|g| g.as_str()).collect();
    let details = format!("groups {}", group_names.join(", "));
    observe::record_cli_action(&config, "user.create", &format!("user:{}", user.id), &details).await;
    println!("created user {} ({}) in {}", user.email, user.id, group_names.join(", "));
    Ok(())
}

/// Reads a password from the first line of standard input and checks the policy.
fn read_new_password(config: &learntrac_server::ServerConfig, email: &str) -> Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("cannot read the password from standard input")?;
    let secret = line.trim_end_matches(['\n', '\r']).to_string();
    config
        .identity
        .password_policy
        .check(&secret, Some(email))
        .map_err(|problem| anyhow::anyhow!("{problem}; choose another password"))?;
    Ok(secret)
}

async fn set_password(data: DataArgs, email: &str) -> Result<()> {
    let config = settings::resolve(&data)?;
    let secret = read_new_password(&config, email)?;
    let store = open_database(&config).await?;
    let user = find(&store, email).await?;
    store.set_password(user.id, &password::hash(&secret)?).await?;
    store.sign_out_everywhere(user.id).await?;
    store.clear_sign_in_failures(&user.email, learntrac_server::unix_now()).await?;
    observe::record_cli_action(&config, "user.password_set", &format!("user:{}", user.id), "sessions revoked").await;
    println!("set the password of {}; existing sessions and tokens are revoked", user.email);
    Ok(())
}

pub async fn run_client(command: ClientCommand) -> Result<()> {
    match command {
        ClientCommand::Add { data, client_id, name, confidential, grants, scopes, redirect_uris, logout_uris } => {
            let config = settings::resolve(&data)?;
            let store = open_database(&config).await?;
            let new = NewClient { client_id, name, confidential, redirect_uris, logout_uris, grants, scopes };
            let (client, secret) =
                learntrac_server::idp::admin::register_client(&store, new, learntrac_server::unix_now())
                    .await
                    .map_err(|error| anyhow::anyhow!("{error}"))?;
            observe::record_cli_action(&config, "client.create", &format!("client:{}", client.client_id), "").await;
            println!("registered client {} ({})", client.client_id, client.grants.join(", "));
            if let Some(secret) = secret {
                println!("client secret (shown only now): {secret}");
            }
            Ok(())
        }
        ClientCommand::List { data } => {
            let config = settings::resolve(&data)?;
            require_database(&config)?;
            let store = open_database(&config).await?;
            for client in store.list_clients().await? {
                println!(
                    "{}  {}  grants={}  scopes={}  redirect={}  logout={}",
                    client.client_id,
                    if client.secret_hash.is_some() { "confidential" } else { "public" },
                    client.grants.join(","),
                    client.scopes.join(","),
                    client.redirect_uris.join(","),
                    client.logout_uris.join(",")
                );
            }
            Ok(())
        }
        ClientCommand::Delete { data, client_id } => {
            let config = settings::resolve(&data)?;
            require_database(&config)?;
            if client_id == learntrac_server::auth::CLI_CLIENT_ID {
                bail!("{client_id} is built in; switch its password grant off with password_grant = false");
            }
            let store = open_database(&config).await?;
            if !store.delete_client(&client_id).await? {
                bail!("no client {client_id:?}; `learntrac client list` shows them");
            }
            observe::record_cli_action(&config, "client.delete", &format!("client:{client_id}"), "").await;
            println!("deleted client {client_id} and revoked its refresh tokens");
            Ok(())
        }
    }
}

pub async fn run_token_key(command: TokenKeyCommand) -> Result<()> {
    match command {
        TokenKeyCommand::Rotate { data, algorithm, force } => {
            let config = settings::resolve(&data)?;
            let mut store = learntrac_server::secrets::open_store(&config, true)?;
            let keep = learntrac_server::key_keep_seconds(&config);
            let rotated =
                learntrac_server::keys::rotate(&mut store, algorithm, learntrac_server::unix_now(), keep, force)?;
            let details = format!("new {} retired {}", rotated.new_kid, rotated.retired_kid);
            observe::record_cli_action(&config, "secret.rotate_signing_key", "secret:token-signing-key", &details)
                .await;
            println!(
                "new signing key {} ({}); {} stays in the key set for {keep} seconds so its tokens keep working",
                rotated.new_kid,
                algorithm.name(),
                rotated.retired_kid
            );
            println!("running servers switch within 30 seconds, or at once on SIGHUP");
            Ok(())
        }
        TokenKeyCommand::Show { data } => {
            let config = settings::resolve(&data)?;
            let store = learntrac_server::secrets::open_store(&config, true)?;
            let secrets = learntrac_server::secrets::Secrets::new(store, &config)?;
            let keys = learntrac_server::keys::SigningKeys::load(
                &secrets.role(learntrac_secrets::Role::Idp),
                learntrac_server::unix_now(),
                learntrac_server::key_keep_seconds(&config),
            )?;
            for (index, key) in keys.verifying.iter().enumerate() {
                let role = if index == 0 { "signing" } else { "retired, still verifying" };
                println!("{}  {:?}  {role}", key.kid, key.algorithm);
            }
            Ok(())
        }
    }
}
