//! LearnTrac's storage layer. The same SQL runs on SQLite (the embedded
//! default) and PostgreSQL through sqlx's `Any` driver: placeholders are
//! `$1`, `$2` …, times are Unix seconds and flags are 0 or 1. Only this
//! crate runs SQL.

mod alerts;
mod audit;
mod dump;
mod identity;
mod jobs;
mod learning;
mod library;
mod users;
mod wiki;

pub use alerts::{AlertRecord, Raised};
pub use audit::{AuditEntry, AuditFilter, AuditRecord, AuditVerification};
pub use dump::{DumpLine, DumpValue, TABLES};
pub use identity::{
    AuthEvent, ClientRecord, CodeCheck, CodeRecord, CodeUse, FailureState, NewRefreshToken, RefreshGrant,
    RefreshOutcome, SessionRecord, SessionStage,
};
pub use jobs::{JobKind, JobProgress, JobRecord, JobState, NewJob};
pub use learning::{Answer, NewAnswer, NewTicket, PathRecord, PathSummary, Ticket, TicketStatus};
pub use library::{BookRecord, ChunkText, NewBook, NewChunk, NewSection, SectionRecord, StoredChunk};
pub use users::{Group, User};
pub use wiki::WikiPage;

use std::str::FromStr;

use sqlx::AnyPool;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};

/// The kind of database server a URL points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Stable code for operators: `LT-DB-URL`.
    #[error("LT-DB-URL: database URL {url:?} is not supported; use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl { url: String },
    /// Stable code: `LT-DB-CONNECT`.
    #[error("LT-DB-CONNECT: cannot connect to the database")]
    Connect(#[source] sqlx::Error),
    /// Stable code: `LT-DB-MIGRATE`.
    #[error("LT-DB-MIGRATE: database migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("{0} already exists")]
    Conflict(String),
    #[error("database query failed")]
    Query(#[source] sqlx::Error),
    #[error("stored value is invalid: {0}")]
    Corrupt(String),
    /// Stable code: `LT-DB-NOT-EMPTY`.
    #[error("LT-DB-NOT-EMPTY: the database already holds LearnTrac data; restore into an empty database")]
    NotEmpty,
    /// An export that cannot be imported: cut off, damaged or of another schema.
    #[error("the export is invalid: {0}")]
    InvalidExport(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> StoreError {
        StoreError::Query(error)
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A pool of connections to the LearnTrac database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Size and timeouts of the connection pool.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolSettings {
    /// Maximum open connections; `None` for the backend's default (4 on
    /// SQLite, 16 on PostgreSQL).
    pub max_connections: Option<u32>,
    /// How long a query waits for a free connection before it fails.
    pub acquire_timeout: std::time::Duration,
    /// How long an unused connection stays open.
    pub idle_timeout: std::time::Duration,
}

impl Default for PoolSettings {
    fn default() -> PoolSettings {
        PoolSettings {
            max_connections: None,
            acquire_timeout: std::time::Duration::from_secs(10),
            idle_timeout: std::time::Duration::from_secs(600),
        }
    }
}

impl Store {
    /// Connects to `url` with the default pool settings; see [`Store::open_with`].
    pub async fn open(url: &str) -> Result<Store> {
        Store::open_with(url, &PoolSettings::default()).await
    }

    /// Connects to `url` (`sqlite://…` or `postgres://…`), creating a
    /// missing SQLite file, and applies pending migrations. A PostgreSQL
    /// URL may ask for TLS with `sslmode=verify-full&sslrootcert=CA_FILE`.
    pub async fn open_with(url: &str, pool_settings: &PoolSettings) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl { url: redact_url(url) });
        };

        let options = AnyConnectOptions::from_str(url).map_err(StoreError::Connect)?;
        let pool = match backend {
            Backend::Sqlite => {
                // One writer at a time: SQLite serialises writes anyway, and a
                // small pool avoids "database is locked" under load.
                // A local file cannot go stale, so connections are not
                // tested with an extra query before each use.
                AnyPoolOptions::new()
                    .max_connections(pool_settings.max_connections.unwrap_or(4))
                    .acquire_timeout(pool_settings.acquire_timeout)
                    .idle_timeout(pool_settings.idle_timeout)
                    .test_before_acquire(false)
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            sqlx::query("PRAGMA foreign_keys = ON").execute(&mut *conn).await?;
                            sqlx::query("PRAGMA busy_timeout = 5000").execute(&mut *conn).await?;
                            sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
                            sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut *conn).await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await
            }
            Backend::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(pool_settings.max_connections.unwrap_or(16))
                    .acquire_timeout(pool_settings.acquire_timeout)
                    .idle_timeout(pool_settings.idle_timeout)
                    .connect_with(options)
                    .await
            }
        }
        .map_err(StoreError::Connect)?;

        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        // sqlx locks PostgreSQL migrations itself, but not SQLite's, so two
        // processes opening a new file at once take a file lock instead.
        let lock = match backend {
            Backend::Sqlite => sqlite_migration_lock(url),
            Backend::Postgres => None,
        };

        let migrated = migrator.run(&pool).await.map_err(StoreError::Migrate);
        drop(lock);
        migrated?;
        Ok(Store { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Runs a trivial query, for health checks.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The server a PostgreSQL URL connects to, read by the same parser that
/// connects, so that repeated parameters, `hostaddr` and `PG…` environment variables
/// count as they do for the connection.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresTarget {
    /// The address connected to: `hostaddr` if given, else the host name.
    pub host: String,
    /// A Unix socket, a loopback name or a loopback address.
    pub local: bool,
    /// `sslmode` is `verify-full` or `verify-ca`.
    pub verified_tls: bool,
}

/// Reads the connection target of a `postgres://` URL; `None` for other URLs.
pub fn postgres_target(url: &str) -> Result<Option<PostgresTarget>> {
    use sqlx::ConnectOptions;
    use sqlx::postgres::{PgConnectOptions, PgSslMode};
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Ok(None);
    }
    let options = PgConnectOptions::from_str(url).map_err(StoreError::Connect)?;
    let lossy = options.to_url_lossy();
    let hostaddr = lossy.query_pairs().find(|(key, _)| key == "hostaddr").map(|(_, value)| value.to_string());
    let host = hostaddr.unwrap_or_else(|| options.get_host().to_string());
    let loopback = host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    let local = options.get_socket().is_some() || host.starts_with('/') || host == "localhost" || loopback;
    let verified_tls = matches!(options.get_ssl_mode(), PgSslMode::VerifyFull | PgSslMode::VerifyCa);
    Ok(Some(PostgresTarget { host, local, verified_tls }))
}

/// Returns the file a `sqlite:` URL names, or `None` for other URLs and
/// for in-memory databases.
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    let in_memory = path.is_empty() || path.starts_with("file:") || path.contains(":memory:");
    (!in_memory).then(|| std::path::PathBuf::from(path))
}

/// Locks `DATABASE-migrate.lock` beside a SQLite file until the returned
/// file is dropped. Returns `None` for in-memory databases, and when the
/// lock file cannot be created, so that the migration then runs unlocked.
fn sqlite_migration_lock(url: &str) -> Option<std::fs::File> {
    let path = sqlite_file(url)?;
    let mut options = std::fs::OpenOptions::new();
    options.create(true).truncate(false).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let lock = options.open(format!("{}-migrate.lock", path.display())).ok()?;
    lock.lock().ok()?;
    Some(lock)
}

/// Hides the password in a database URL so that it can be logged.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// Marks SQL assembled only from this crate's constant fragments as safe;
/// values always go through bind parameters.
fn sql(query: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(query)
}

/// Turns a unique-constraint violation into [`StoreError::Conflict`] naming `what`.
fn conflict_or(error: sqlx::Error, what: impl FnOnce() -> String) -> StoreError {
    if let sqlx::Error::Database(db) = &error {
        if db.is_unique_violation() {
            return StoreError::Conflict(what());
        }
    }
    StoreError::Query(error)
}

#[cfg(test)]
pub(crate) mod testing {
    use super::Store;

    /// Opens a fresh, migrated in-memory SQLite store.
    pub async fn memory_store() -> Store {
        // Each connection to ":memory:" would be a separate database, and
        // a shared cache keeps one per name.
        let name = format!(
            "sqlite:file:test{}?mode=memory&cache=shared",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
        );
        match Store::open(&name).await {
            Ok(store) => store,
            Err(e) => unreachable!("in-memory store failed to open: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_password() {
        assert_eq!(redact_url("postgres://lt:secret@db/lt"), "postgres://lt:***@db/lt");
        assert_eq!(redact_url("sqlite://data/lt.db"), "sqlite://data/lt.db");
    }

    #[tokio::test]
    async fn unsupported_url_is_named() {
        let Err(error) = Store::open("mysql://x").await else {
            unreachable!("mysql should be rejected");
        };
        assert!(error.to_string().contains("mysql://x"));
    }
}
