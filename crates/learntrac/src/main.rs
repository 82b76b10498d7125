//! The `learntrac` command. `serve` runs every role in one process, and
//! `gateway`, `trac`, `api` and `idp` run one role each. The other
//! subcommands administer a data directory.

mod backups;
mod model;
mod observe;
mod progress;
mod secrets;
mod settings;
mod users;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use learntrac_identity::password;
use learntrac_server::pki::InternalTls;
use learntrac_server::{AppState, gateway};
use learntrac_store::Group;

#[derive(Parser)]
#[command(name = "learntrac", version, about = "Turns textbooks into question-based learning paths")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
pub struct DataArgs {
    /// Directory for the database, keys, certificates and settings.
    #[arg(long, env = "LEARNTRAC_DATA_DIR", default_value = "./learntrac-data")]
    pub data_dir: PathBuf,
    /// Database URL (sqlite://PATH or postgres://USER:PASSWORD@HOST/DB);
    /// default: SQLite in the data directory.
    #[arg(long, env = "LEARNTRAC_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with the trac, api and idp roles behind it.
    Serve(ServeArgs),
    /// Run the gateway alone, in front of roles in other processes listed
    /// under [gateway.upstreams] in learntrac.toml.
    Gateway(GatewayArgs),
    /// Run the trac role (wiki, tickets, roadmap pages) alone, for the gateway.
    Trac(RoleArgs),
    /// Run the api role (the JSON API) alone, for the gateway.
    Api(RoleArgs),
    /// Run the idp role (sign-in, tokens, keys) alone, for the gateway.
    Idp(RoleArgs),
    /// Manage the internal certificate authority between the gateway and the roles.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Manage users: add, list, disable, groups, reset, sign out, unlock, events.
    #[command(subcommand)]
    User(users::UserCommand),
    /// Register, list and delete OAuth clients.
    #[command(subcommand)]
    Client(users::ClientCommand),
    /// Rotate and show the token-signing keys.
    #[command(subcommand)]
    TokenKey(users::TokenKeyCommand),
    /// Install and show the sentence-embedding model (all-MiniLM-L6-v2).
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Add a textbook (PDF, HTML or Markdown) to the library.
    Ingest {
        #[command(flatten)]
        data: DataArgs,
        /// The file to ingest.
        file: PathBuf,
    },
    /// Manage the encrypted secrets store and its master key.
    #[command(subcommand)]
    Secret(secrets::SecretCommand),
    /// Create, verify and restore encrypted backups.
    #[command(subcommand)]
    Backup(backups::BackupCommand),
    /// Search the log files.
    #[command(subcommand)]
    Logs(observe::LogsCommand),
    /// Verify and list the audit trail.
    #[command(subcommand)]
    Audit(observe::AuditCommand),
    /// Summarise traffic from the gateway's access log.
    #[command(subcommand)]
    Metrics(observe::MetricsCommand),
    /// List the alerts that fired.
    #[command(subcommand)]
    Alerts(observe::AlertsCommand),
    /// Report each security control as pass, warn or fail; exits non-zero
    /// when any control fails.
    Check {
        #[command(flatten)]
        data: DataArgs,
    },
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Address for HTTPS [default: 127.0.0.1:8443].
    #[arg(long, env = "LEARNTRAC_HTTPS_LISTEN")]
    pub https_listen: Option<std::net::SocketAddr>,
    /// Address for plain HTTP, which only redirects to HTTPS [default: 127.0.0.1:8080].
    #[arg(long, env = "LEARNTRAC_HTTP_LISTEN")]
    pub http_listen: Option<std::net::SocketAddr>,
    /// The address users reach LearnTrac at, used as the token issuer
    /// [default: https://localhost:PORT].
    #[arg(long, env = "LEARNTRAC_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Refuse to start while a production check fails (development
    /// certificate, one-time passwords, loose key file, unverified remote
    /// database, development secrets); also `production = true` in learntrac.toml.
    #[arg(long, env = "LEARNTRAC_PRODUCTION", value_parser = clap::builder::BoolishValueParser::new())]
    pub production: bool,
    /// Address of the Prometheus metrics listener, or "off"
    /// [default: 127.0.0.1:9464].
    #[arg(long, env = "LEARNTRAC_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

#[derive(Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub internal: InternalTlsArgs,
}

#[derive(Args)]
pub struct RoleArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Address to accept the gateway's connections on.
    #[arg(long)]
    pub listen: std::net::SocketAddr,
    #[command(flatten)]
    pub internal: InternalTlsArgs,
}

/// The internal certificates; `learntrac pki init` writes the defaults.
#[derive(Args)]
pub struct InternalTlsArgs {
    /// The internal CA certificate [default: DATA_DIR/pki/ca.pem].
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// This process's certificate [default: DATA_DIR/pki/ROLE.pem].
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// This process's private key [default: DATA_DIR/pki/ROLE-key.pem].
    #[arg(long)]
    pub key: Option<PathBuf>,
}

impl InternalTlsArgs {
    fn resolve(&self, data_dir: &std::path::Path, name: &str) -> InternalTls {
        let defaults = InternalTls::in_dir(&learntrac_server::pki::default_dir(data_dir), name);
        InternalTls {
            ca: self.ca.clone().unwrap_or(defaults.ca),
            cert: self.cert.clone().unwrap_or(defaults.cert),
            key: self.key.clone().unwrap_or(defaults.key),
        }
    }
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create the internal CA, a client certificate for the gateway and a
    /// server certificate for each role, in DATA_DIR/pki.
    Init {
        #[command(flatten)]
        data: DataArgs,
        /// A host name or address the roles are reached at, besides
        /// localhost and the loopback addresses; repeat for several.
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Replace an existing CA and every certificate it issued.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Servers log to files as well, once their settings are known.
    if !matches!(
        cli.command,
        Command::Serve(_) | Command::Gateway(_) | Command::Trac(_) | Command::Api(_) | Command::Idp(_)
    ) {
        learntrac_server::logs::init_stderr();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args, None).await,
        Command::Gateway(args) => serve(args.serve, Some(args.internal)).await,
        Command::Trac(args) => serve_role("trac", args).await,
        Command::Api(args) => serve_role("api", args).await,
        Command::Idp(args) => serve_role("idp", args).await,
        Command::Pki(PkiCommand::Init { data, hosts, force }) => {
            let dir = learntrac_server::pki::default_dir(&data.data_dir);
            learntrac_server::ensure_data_dir(&data.data_dir)?;
            for path in learntrac_server::pki::init(&dir, &hosts, force)? {
                println!("wrote {}", path.display());
            }
            println!(
                "keep ca-key.pem offline once every certificate is issued; only the CA certificate is needed to verify"
            );
            Ok(())
        }
        Command::User(command) => users::run_user(command).await,
        Command::Client(command) => users::run_client(command).await,
        Command::TokenKey(command) => users::run_token_key(command).await,
        Command::Model(command) => model::run(command),
        Command::Ingest { data, file } => ingest(data, &file).await,
        Command::Secret(command) => secrets::run(command).await,
        Command::Backup(command) => backups::run(command).await,
        Command::Logs(command) => observe::logs(command),
        Command::Audit(command) => observe::audit(command).await,
        Command::Metrics(command) => observe::metrics(command),
        Command::Alerts(command) => observe::alerts(command).await,
        Command::Check { data } => observe::check(data).await,
    }
}

/// Runs the gateway: with `internal` unset (`learntrac serve`), every role
/// that has no upstream addresses runs in this process too.
async fn serve(args: ServeArgs, internal: Option<InternalTlsArgs>) -> Result<()> {
    let mut config = settings::resolve(&args.data)?;
    settings::apply_serve_args(&mut config, &args)?;
    // Every role without upstream addresses runs here, unless this is
    // `learntrac gateway`, which runs none; check the routes before
    // anything is created.
    let pki_dir = learntrac_server::pki::default_dir(&config.data_dir);
    let (local_roles, internal) = match &internal {
        Some(args) => (Vec::new(), Some(args.resolve(&config.data_dir, learntrac_server::pki::GATEWAY))),
        None => {
            let local: Vec<&str> = learntrac_server::gateway::settings::ROLES
                .iter()
                .copied()
                .filter(|role| !config.gateway.upstreams.contains_key(*role))
                .collect();
            (local, Some(InternalTls::in_dir(&pki_dir, learntrac_server::pki::GATEWAY)))
        }
    };
    config.gateway.check_served(&local_roles).map_err(anyhow::Error::msg)?;
    learntrac_server::ensure_data_dir(&config.data_dir)?;
    learntrac_server::logs::init_with_files(&config.logs)?;
    let listeners = gateway::Listeners::bind(config.https_listen, config.http_listen)?;
    let metrics_listener = match config.metrics_listen {
        Some(address) => Some(
            std::net::TcpListener::bind(address)
                .with_context(|| format!("cannot listen on {address} for metrics; set metrics_listen or \"off\""))?,
        ),
        None => None,
    };
    // Flag or environment, then the file, then the address actually bound
    // (which differs from the configured one for port 0).
    config.public_url = match settings::configured_public_url(&args)? {
        Some(url) => url,
        None => learntrac_server::config::default_public_url(listeners.https.local_addr()?),
    };

    let state = AppState::open(config).await?;
    state.watch_keys(KEY_CHECK);
    let index_model = state.index.read().unwrap_or_else(|p| p.into_inner()).model().to_string();
    tracing::info!(
        model = %state.embedder.id(),
        index_model = %index_model,
        identifier_bonus = format!("{:.2}", state.embedder.identifier_bonus()),
        "embedding model configured; search ranks by the index model's vectors"
    );
    if state.config.identity.smtp.is_none() {
        tracing::warn!(
            mail = %state.mailer.describe(),
            "no SMTP server is configured: sign-up and password-reset mail is written to a file; set [identity.smtp] in learntrac.toml"
        );
    }
    learntrac_server::audit::record_settings_change(&state).await;
    if state.config.production {
        check_production(&state).await?;
    } else {
        bootstrap_admin(&state).await?;
    }
    tokio::spawn(learntrac_server::library::watch_library(state.clone()));
    spawn_reembedding(&state);
    tokio::spawn(learntrac_server::alerts::watch_audit_chain(state.clone(), std::time::Duration::from_secs(600)));
    if let Some(listener) = metrics_listener {
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(error) = learntrac_server::metrics::serve(state, listener).await {
                tracing::error!(error = format!("{error:#}"), "the metrics listener stopped");
            }
        });
    }
    let gateway = gateway::Gateway::new(state, &local_roles, internal.as_ref())?;
    gateway::serve(gateway, listeners, shutdown_signal()).await
}

/// How often a server reads the token-signing keys again.
const KEY_CHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs one role on its own listener, for a gateway in another process.
async fn serve_role(role: &'static str, args: RoleArgs) -> Result<()> {
    let config = settings::resolve(&args.data)?;
    learntrac_server::ensure_data_dir(&config.data_dir)?;
    learntrac_server::logs::init_with_files(&config.logs)?;
    let internal = args.internal.resolve(&config.data_dir, role);
    let listener = std::net::TcpListener::bind(args.listen).with_context(|| {
        format!("cannot listen on {} for the {role} role; is another server using it?", args.listen)
    })?;
    let state = AppState::open(config).await?;
    state.watch_keys(KEY_CHECK);
    if state.config.production {
        check_production(&state).await?;
    }
    if role != "idp" {
        tokio::spawn(learntrac_server::library::watch_library(state.clone()));
    }
    // The API role takes uploads, so it also embeds the library again.
    if role == "api" {
        spawn_reembedding(&state);
    }
    learntrac_server::gateway::roles::serve(state, role, listener, &internal, shutdown_signal()).await
}

/// Fails with every problem that makes the setup unfit for production.
async fn check_production(state: &AppState) -> Result<()> {
    let problems =
        learntrac_server::production::problems(&state.config, state.secrets.store(), &state.store, state.now()).await;
    if problems.is_empty() {
        tracing::info!("production checks passed");
        return Ok(());
    }
    let list: Vec<String> = problems.iter().map(|problem| format!("  - {}", problem.message)).collect();
    anyhow::bail!("production mode cannot start because of {} problem(s):\n{}", problems.len(), list.join("\n"))
}

/// Opens the database for an operator's command, with the password from
/// the secrets store when one is configured.
pub async fn open_database(config: &learntrac_server::ServerConfig) -> Result<learntrac_store::Store> {
    let secret_store = learntrac_server::secrets::open_store(config, true)?;
    let url = learntrac_server::secrets::operator_database_url(config, &secret_store)?;
    let store = learntrac_store::Store::open_with(&url, &config.pool).await?;
    learntrac_server::restrict_sqlite_files(&config.database_url);
    Ok(store)
}

/// Fails unless the SQLite database of `config` exists, for commands that
/// only read and must not create an empty one on a mistyped path.
pub fn require_database(config: &learntrac_server::ServerConfig) -> Result<()> {
    if let Some(path) = learntrac_store::sqlite_file(&config.database_url)
        && !path.exists()
    {
        anyhow::bail!("no database at {}; check --data-dir and database_url", path.display());
    }
    Ok(())
}

/// Creates the first administrator on an empty user pool and prints its
/// one-time password on the terminal, never into the log.
async fn bootstrap_admin(state: &AppState) -> Result<()> {
    if state.store.count_users().await? > 0 {
        return Ok(());
    }
    let one_time = password::generate_one_time()?;
    let hash = password::hash(&one_time)?;
    let email = state.config.admin_email.clone();
    let user = state.store.create_user(&email, "Administrator", &hash, &[Group::Admins], true, state.now()).await?;
    let target = format!("user:{}", user.id);
    learntrac_server::audit::record(
        state,
        learntrac_server::audit::Actor::System,
        "user.create",
        &target,
        "success",
        "first administrator, groups admins",
    )
    .await;
    tracing::info!(email = %email, "created the first administrator; the one-time password was printed on standard error");
    eprintln!(
        "\n  LearnTrac created the administrator {email}\n  One-time password: {one_time}\n  Sign in at {}/login and choose a new password; this password is not shown again.\n",
        state.config.public_url
    );
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {},
            _ = terminate.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// Embeds, in the background, the passages the configured model has not
/// embedded yet; search uses the built-in embedder's vectors until it ends.
fn spawn_reembedding(state: &AppState) {
    let state = state.clone();
    tokio::spawn(async move {
        if let Err(error) = learntrac_server::library::reembed(&state).await {
            tracing::error!(error = format!("{error:#}"), "cannot embed the library with the configured model");
        }
    });
}

async fn ingest(data: DataArgs, file: &std::path::Path) -> Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let name = file.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let config = settings::resolve(&data)?;
    let state = AppState::open(config).await?;
    let bar = progress::Bar::new(&name);
    let job = learntrac_server::library::ingest_now(&state, bytes, &name, &|p| bar.show(p)).await;
    bar.finish();
    let job = job.map_err(|error| match error {
        // On the command line the whole cause is shown; there is no request id.
        learntrac_server::error::ApiError::Internal(inner) => inner,
        other => anyhow::anyhow!("{other}"),
    })?;
    match (job.state, job.book_id) {
        (learntrac_store::JobState::Succeeded, Some(book_id)) => {
            let books = state.store.list_books().await?;
            let book = books.iter().find(|b| b.id == book_id).context("the new book vanished")?;
            println!(
                "ingested {:?} as book {}: {} sections, {} passages, embedded by {}",
                book.title,
                book.id,
                book.sections,
                book.chunks,
                state.embedder.id()
            );
            Ok(())
        }
        _ => anyhow::bail!(
            "{name} was not ingested (job {} {}): {}",
            job.id,
            job.state.as_str(),
            job.error.as_deref().unwrap_or("no reason was recorded")
        ),
    }
}
