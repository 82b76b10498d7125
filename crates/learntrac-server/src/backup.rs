//! Encrypted backups of a data directory: the database, read as one
//! consistent snapshot while the server runs, and the secrets store.
//!
//! The file is an encrypted stream (see `learntrac_secrets::stream`) of
//! JSON lines: a `backup` line naming the backend and schema version, a
//! `file` line per data-directory file, then the database export. The
//! master key is not in the backup; restoring needs the key it names.
//! Configuration (`learntrac.toml`) and TLS files are not included either.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use learntrac_secrets::stream::{Decryptor, Encryptor};
use learntrac_secrets::{KeyRing, SecretStore};
use learntrac_store::{Backend, DumpLine, Store};
use serde::{Deserialize, Serialize};

use crate::{ServerConfig, secrets};

const FORMAT: u32 = 1;

/// Data-directory files a backup carries.
const FILES: &[&str] = &[SecretStore::FILE_NAME];

#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum MetaLine {
    Backup { format: u32, backend: String, schema_version: i64, created_at: i64, learntrac_version: String },
    File { name: String, data: String },
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum Line {
    Meta(MetaLine),
    Data(DumpLine),
}

/// The contents of a backup, from reading all of it.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    pub created_at: i64,
    pub master_key_id: String,
    pub backend: String,
    pub schema_version: i64,
    /// File name to size in bytes.
    pub files: BTreeMap<String, usize>,
    /// Table name to row count and the SHA-256 of its rows, so that two
    /// backups of the same data compare equal.
    pub tables: BTreeMap<String, (u64, String)>,
    pub rows: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "created_at: {} (Unix seconds)", self.created_at)?;
        writeln!(f, "master key: {}", self.master_key_id)?;
        writeln!(f, "database: {} schema version {}, {} rows", self.backend, self.schema_version, self.rows)?;
        for (name, size) in &self.files {
            writeln!(f, "file {name}: {size} bytes")?;
        }
        for (name, (rows, digest)) in &self.tables {
            writeln!(f, "table {name}: {rows} rows, sha256 {digest}")?;
        }
        Ok(())
    }
}

fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    }
}

/// Writes an encrypted backup of the data directory of `config` to `out`.
/// The file appears only once complete; a failed run leaves no file.
/// An existing `out` is replaced only when `overwrite` is true. `out` may
/// be inside the data directory only under `backup_dir`, so that it cannot
/// replace the master key, the secrets store or a TLS key.
pub async fn create(config: &ServerConfig, out: &Path, overwrite: bool, now: i64) -> Result<Summary> {
    check_output_path(config, out, overwrite)?;
    let secret_store = secrets::open_store(config, false)?;
    if secret_store.keys().next().is_some() {
        bail!("a master-key rotation is unfinished; run `learntrac secret rotate-master-key` again before a backup");
    }
    if let Some(path) = learntrac_store::sqlite_file(&config.database_url)
        && !path.exists()
    {
        bail!("no database at {}; check --data-dir and database_url", path.display());
    }
    let database_url = secrets::operator_database_url(config, &secret_store)?;
    let store = Store::open_with(&database_url, &config.pool).await?;

    let (partial, file) = private_file_beside(out)?;
    let mut result = write_backup(config, &secret_store, &store, file, now).await;
    store.close().await;
    if result.is_ok() {
        result = std::fs::rename(&partial, out).with_context(|| format!("cannot move the backup to {}", out.display()));
    }
    if let Err(error) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(error);
    }
    verify(out, secret_store.keys())
}

fn check_output_path(config: &ServerConfig, out: &Path, overwrite: bool) -> Result<()> {
    if out.is_dir() || out.as_os_str().to_string_lossy().ends_with('/') {
        bail!("--out {} is a directory; name the backup file, such as {}/learntrac.ltb", out.display(), out.display());
    }
    let parent = match out.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent =
        parent.canonicalize().with_context(|| format!("the directory of --out {} does not exist", out.display()))?;
    if let Ok(data_dir) = config.data_dir.canonicalize()
        && parent.starts_with(&data_dir)
    {
        // Only a backup directory below the data directory makes a path
        // in it acceptable; one that contains the data directory does not.
        let in_backup_dir = config.backup_dir.canonicalize().is_ok_and(|backup_dir| {
            backup_dir != data_dir && backup_dir.starts_with(&data_dir) && parent.starts_with(&backup_dir)
        });
        if !in_backup_dir {
            bail!(
                "--out {} is inside the data directory, among the files it must not replace; \
                 write backups to backup_dir ({}) or outside the data directory",
                out.display(),
                config.backup_dir.display()
            );
        }
    }
    // A dangling link counts as existing too.
    if out.symlink_metadata().is_ok() && !overwrite {
        bail!("{} already exists; choose another name, or add --force to replace it", out.display());
    }
    Ok(())
}

async fn write_backup(
    config: &ServerConfig,
    secret_store: &SecretStore,
    store: &Store,
    file: File,
    now: i64,
) -> Result<()> {
    let mut encryptor = Encryptor::new(BufWriter::new(file), secret_store.keys().encrypting(), now)?;
    let meta = MetaLine::Backup {
        format: FORMAT,
        backend: backend_name(store.backend()).to_string(),
        schema_version: store.schema_version().await?,
        created_at: now,
        learntrac_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    write_line(&mut encryptor, &meta)?;
    for name in FILES {
        let path = config.data_dir.join(name);
        if path.exists() {
            let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            write_line(&mut encryptor, &MetaLine::File { name: (*name).to_string(), data: STANDARD.encode(bytes) })?;
        }
    }
    store.export(|line| write_line(&mut encryptor, &line)).await.context("cannot export the database")?;

    let writer = encryptor.finish().context("cannot finish the backup")?;
    let file = writer.into_inner().map_err(|error| error.into_error()).context("cannot write the backup")?;
    file.sync_all().context("cannot sync the backup")?;
    Ok(())
}

fn write_line(out: &mut impl Write, value: &impl Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

/// Creates a new file beside `out` with a random name, mode 0600, failing
/// rather than opening anything already there (a file, or a link another
/// user planted).
fn private_file_beside(out: &Path) -> Result<(PathBuf, File)> {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{}.partial", crate::random_token(6)));
    let path = out.with_file_name(name);
    let file = private_file(&path)?;
    Ok((path, file))
}

fn private_file(path: &Path) -> Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).with_context(|| format!("cannot create {}", path.display()))
}

/// Opens a backup and returns its decrypted lines.
fn open_lines(
    path: &Path,
    keys: &KeyRing,
) -> Result<(learntrac_secrets::stream::Header, impl Iterator<Item = std::io::Result<String>> + use<>)> {
    let file = File::open(path).with_context(|| format!("cannot open the backup {}", path.display()))?;
    let (header, decryptor) = Decryptor::new(BufReader::new(file), keys)?;
    Ok((header, BufReader::new(decryptor).lines()))
}

fn parse_line(text: &str) -> std::io::Result<Line> {
    serde_json::from_str(text).map_err(|error| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("the backup contains an invalid record: {error}"))
    })
}

/// Decrypts and checks the whole backup without restoring it.
pub fn verify(path: &Path, keys: &KeyRing) -> Result<Summary> {
    if !path.is_file() {
        bail!("{} is not a file; name a backup file", path.display());
    }
    let (header, lines) = open_lines(path, keys)?;
    let mut summary =
        Summary { created_at: header.created_at, master_key_id: header.master_key_id, ..Summary::default() };
    let mut table: Option<(String, u64, aws_lc_rs::digest::Context)> = None;
    let mut ended = false;
    let mut first = true;

    for text in lines {
        let text = text?;
        if ended {
            bail!("the backup contains records after the end of the database export");
        }
        let line = parse_line(&text)?;
        match (first, line) {
            (true, Line::Meta(MetaLine::Backup { format, backend, schema_version, .. })) => {
                if format != FORMAT {
                    bail!("the backup has format {format}, but this LearnTrac reads format {FORMAT}");
                }
                summary.backend = backend;
                summary.schema_version = schema_version;
            }
            (true, _) => bail!("the backup does not start with its description"),
            (false, Line::Meta(MetaLine::File { name, data })) => {
                if !FILES.contains(&name.as_str()) {
                    bail!("the backup contains an unexpected file {name:?}");
                }
                let size = STANDARD.decode(data).context("a file in the backup is not base64")?.len();
                summary.files.insert(name, size);
            }
            (false, Line::Meta(MetaLine::Backup { .. })) => bail!("the backup contains a second description"),
            (false, Line::Data(DumpLine::Table { name, .. })) => {
                finish_table(&mut summary, table.take());
                table = Some((name, 0, aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256)));
            }
            (false, Line::Data(DumpLine::Row { .. })) => {
                let Some((_, rows, digest)) = table.as_mut() else { bail!("the backup has a row before any table") };
                *rows += 1;
                digest.update(text.as_bytes());
                digest.update(b"\n");
            }
            (false, Line::Data(DumpLine::End { rows })) => {
                finish_table(&mut summary, table.take());
                summary.rows = summary.tables.values().map(|(count, _)| count).sum();
                if rows != summary.rows {
                    bail!("the backup's export ends after {} of {rows} rows", summary.rows);
                }
                ended = true;
            }
        }
        first = false;
    }
    if !ended {
        bail!("the backup ends before the end of the database export");
    }
    Ok(summary)
}

fn finish_table(summary: &mut Summary, table: Option<(String, u64, aws_lc_rs::digest::Context)>) {
    if let Some((name, rows, digest)) = table {
        let hex = digest.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
        summary.tables.insert(name, (rows, hex));
    }
}

/// Restores a backup into the empty data directory of `config`. The whole
/// file is checked before anything is written, the database import is one
/// transaction, and a restore that fails removes the files it wrote.
pub async fn restore(config: &ServerConfig, path: &Path) -> Result<Summary> {
    crate::ensure_data_dir(&config.data_dir)?;
    for name in FILES {
        let existing = config.data_dir.join(name);
        if existing.exists() {
            bail!(
                "{} already exists; restore into an empty data directory (only the master key and learntrac.toml may be there)",
                existing.display()
            );
        }
    }
    let keys = KeyRing::open(config.master_key.clone(), false)
        .context("restoring needs the master key the backup was made under")?;
    let summary = verify(path, &keys)?;

    // A SQLite database that the restore creates is removed with the other
    // files it wrote if the restore fails.
    let mut written = Vec::new();
    if let Some(database) = learntrac_store::sqlite_file(&config.database_url)
        && !database.exists()
    {
        for suffix in ["", "-wal", "-shm", "-migrate.lock"] {
            written.push(PathBuf::from(format!("{}{suffix}", database.display())));
        }
    }
    let result = restore_checked(config, path, keys, &summary, &mut written).await;
    if result.is_err() {
        for file in written {
            let _ = std::fs::remove_file(file);
        }
    }
    result.map(|()| summary)
}

async fn restore_checked(
    config: &ServerConfig,
    path: &Path,
    keys: KeyRing,
    summary: &Summary,
    written: &mut Vec<PathBuf>,
) -> Result<()> {
    let (_, lines) = open_lines(path, &keys)?;
    let mut records = lines.map(|text| text.and_then(|text| parse_line(&text)));
    let mut first_data = None;
    for record in records.by_ref() {
        match record? {
            Line::Meta(MetaLine::File { name, data }) => {
                let target = config.data_dir.join(&name);
                let bytes = STANDARD.decode(data).context("a file in the backup is not base64")?;
                let mut file = private_file(&target)?;
                file.write_all(&bytes).with_context(|| format!("cannot write {}", target.display()))?;
                file.sync_all().with_context(|| format!("cannot sync {}", target.display()))?;
                written.push(target);
            }
            Line::Meta(MetaLine::Backup { .. }) => {}
            Line::Data(line) => {
                first_data = Some(line);
                break;
            }
        }
    }

    // The restored secrets store may hold the database password.
    let secret_store = SecretStore::open(&config.data_dir, keys)?;
    let database_url = secrets::operator_database_url(config, &secret_store)?;
    let store = Store::open_with(&database_url, &config.pool).await?;
    let backend = backend_name(store.backend());
    if backend != summary.backend {
        bail!("the backup is of a {} database, but this data directory uses {backend}", summary.backend);
    }
    let schema_version = store.schema_version().await?;
    if schema_version != summary.schema_version {
        bail!(
            "the backup has schema version {}, but this LearnTrac creates version {schema_version}; \
             restore with the LearnTrac version that made the backup",
            summary.schema_version
        );
    }
    let data_lines = first_data.into_iter().map(Ok).chain(records.map(|record| match record? {
        Line::Data(line) => Ok(line),
        Line::Meta(_) => {
            Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "a file record follows the database"))
        }
    }));
    let imported = store.import(data_lines).await;
    store.close().await;
    imported.context("cannot import the database")?;
    Ok(())
}
