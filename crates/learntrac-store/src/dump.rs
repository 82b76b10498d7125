//! A consistent export of every table as a stream of records, and the
//! import of such a stream into an empty database, for backups.
//!
//! The export reads all tables inside one transaction (REPEATABLE READ on
//! PostgreSQL, a read transaction on SQLite), so it is a snapshot even
//! while the server keeps writing. Rows keep their ids, so references
//! between tables stay valid.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyTypeInfoKind;
use sqlx::{Column, Row, ValueRef};

use crate::{Backend, Result, Store, StoreError, sql};

/// Every table with its sort key, parents before the tables that refer to
/// them. A test checks that the list matches the schema.
pub const TABLES: &[(&str, &str)] = &[
    ("users", "id"),
    ("refresh_tokens", "id"),
    ("revoked_tokens", "jti"),
    ("books", "id"),
    ("sections", "id"),
    ("chunks", "id"),
    ("chunk_vectors", "chunk_id, model"),
    ("milestones", "id"),
    ("paths", "id"),
    ("tickets", "id"),
    ("ticket_prerequisites", "ticket_id, prerequisite_id"),
    ("answers", "id"),
    ("wiki_pages", "name"),
    ("audit_log", "seq"),
    ("audit_head", "id"),
    ("alerts", "id"),
    ("known_addresses", "user_id, address"),
    ("recovery_codes", "id"),
    ("mailed_codes", "user_id, purpose"),
    ("sign_in_failures", "email"),
    ("auth_events", "id"),
    ("sessions", "id_hash"),
    ("oauth_clients", "client_id"),
    ("authorization_codes", "code_hash"),
    ("jobs", "id"),
];

/// Tables whose rows the migrations create; an import replaces them, and
/// they do not count when checking that a database is empty.
const SEEDED_TABLES: &[&str] = &["audit_head"];

const PAGE: i64 = 500;

/// One record of an export.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DumpLine {
    /// Starts a table; the rows that follow hold values for `columns`.
    Table {
        name: String,
        columns: Vec<String>,
    },
    Row {
        values: Vec<DumpValue>,
    },
    /// Ends the export; `rows` counts every row of every table.
    End {
        rows: u64,
    },
}

/// A column value. A null keeps its column's type, which PostgreSQL needs
/// to bind it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DumpValue {
    Int(i64),
    Float(f64),
    Text(String),
    /// Base64.
    Blob(String),
    /// A null of the named kind: `int`, `float`, `text` or `blob`.
    Null(String),
}

impl Store {
    /// The highest migration applied, which an import must match.
    pub async fn schema_version(&self) -> Result<i64> {
        let row = sqlx::query("SELECT MAX(version) AS v FROM _sqlx_migrations").fetch_one(&self.pool).await?;
        Ok(row.try_get::<Option<i64>, _>("v")?.unwrap_or(0))
    }

    /// Returns true when no table contains a row.
    pub async fn is_empty(&self) -> Result<bool> {
        for (table, _) in TABLES.iter().filter(|(table, _)| !SEEDED_TABLES.contains(table)) {
            let row = sqlx::query(sql(format!("SELECT COUNT(*) AS n FROM {table}"))).fetch_one(&self.pool).await?;
            if row.try_get::<i64, _>("n")? > 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Passes every table and row to `sink`, ending with [`DumpLine::End`].
    pub async fn export(&self, mut sink: impl FnMut(DumpLine) -> std::io::Result<()>) -> Result<u64> {
        let write_failed = |error: std::io::Error| StoreError::Corrupt(format!("cannot write the export: {error}"));
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
        }

        let mut total = 0u64;
        for (table, order) in TABLES {
            let mut columns_sent = false;
            let mut offset = 0i64;
            loop {
                let rows = sqlx::query(sql(format!("SELECT * FROM {table} ORDER BY {order} LIMIT $1 OFFSET $2")))
                    .bind(PAGE)
                    .bind(offset)
                    .fetch_all(&mut *tx)
                    .await?;
                if !columns_sent {
                    // An empty table still gets its header, from the
                    // first page's columns or none at all.
                    let columns = rows
                        .first()
                        .map(|row| row.columns().iter().map(|c| c.name().to_string()).collect())
                        .unwrap_or_default();
                    sink(DumpLine::Table { name: (*table).to_string(), columns }).map_err(write_failed)?;
                    columns_sent = true;
                }
                for row in &rows {
                    sink(DumpLine::Row { values: row_values(row)? }).map_err(write_failed)?;
                }
                total += rows.len() as u64;
                if (rows.len() as i64) < PAGE {
                    break;
                }
                offset += PAGE;
            }
        }
        tx.commit().await?;
        sink(DumpLine::End { rows: total }).map_err(write_failed)?;
        Ok(total)
    }

    /// Inserts an export into this database, which must be empty, in one
    /// transaction: on any error nothing is kept. Returns the row count.
    pub async fn import(&self, lines: impl Iterator<Item = std::io::Result<DumpLine>>) -> Result<u64> {
        if !self.is_empty().await? {
            return Err(StoreError::NotEmpty);
        }
        let mut tx = self.pool.begin().await?;
        for table in SEEDED_TABLES {
            sqlx::query(sql(format!("DELETE FROM {table}"))).execute(&mut *tx).await?;
        }
        let mut insert: Option<(String, usize)> = None;
        let mut total = 0u64;
        let mut ended = false;

        for line in lines {
            let line = line.map_err(|error| StoreError::InvalidExport(error.to_string()))?;
            match line {
                DumpLine::Table { name, columns } => {
                    if !TABLES.iter().any(|(table, _)| *table == name) {
                        return Err(StoreError::InvalidExport(format!("the export names an unknown table {name:?}")));
                    }
                    if columns.iter().any(|c| !c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_')) {
                        return Err(StoreError::InvalidExport(format!("the export names an invalid column of {name}")));
                    }
                    let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
                    let statement =
                        format!("INSERT INTO {name} ({}) VALUES ({})", columns.join(", "), placeholders.join(", "));
                    insert = Some((statement, columns.len()));
                }
                DumpLine::Row { values } => {
                    let Some((statement, width)) = &insert else {
                        return Err(StoreError::InvalidExport("the export has a row before any table".into()));
                    };
                    if values.len() != *width {
                        return Err(StoreError::InvalidExport(format!(
                            "a row has {} values for {width} columns",
                            values.len()
                        )));
                    }
                    let mut query = sqlx::query(sql(statement.clone()));
                    for value in values {
                        query = bind_value(query, value)?;
                    }
                    query.execute(&mut *tx).await?;
                    total += 1;
                }
                DumpLine::End { rows } => {
                    if rows != total {
                        return Err(StoreError::InvalidExport(format!("the export ends after {total} of {rows} rows")));
                    }
                    ended = true;
                    break;
                }
            }
        }
        if !ended {
            return Err(StoreError::InvalidExport("the export ends before its last record".into()));
        }

        if self.backend == Backend::Postgres {
            // Explicit ids do not advance the sequences behind BIGSERIAL.
            for (table, order) in TABLES.iter().filter(|(_, order)| *order == "id") {
                sqlx::query(sql(format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', '{order}'), \
                     COALESCE((SELECT MAX({order}) FROM {table}), 0) + 1, false)"
                )))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(total)
    }
}

fn row_values(row: &sqlx::any::AnyRow) -> Result<Vec<DumpValue>> {
    let mut values = Vec::with_capacity(row.columns().len());
    for (index, column) in row.columns().iter().enumerate() {
        let kind = column.type_info().kind();
        let raw = row.try_get_raw(index)?;
        let value_kind = if raw.is_null() { kind } else { raw.type_info().kind() };
        let value = match (raw.is_null(), value_kind) {
            (true, kind) => DumpValue::Null(kind_name(kind).to_string()),
            (false, AnyTypeInfoKind::Bool) => DumpValue::Int(i64::from(row.try_get::<bool, _>(index)?)),
            (false, AnyTypeInfoKind::SmallInt | AnyTypeInfoKind::Integer | AnyTypeInfoKind::BigInt) => {
                DumpValue::Int(row.try_get::<i64, _>(index)?)
            }
            (false, AnyTypeInfoKind::Real | AnyTypeInfoKind::Double) => DumpValue::Float(row.try_get::<f64, _>(index)?),
            (false, AnyTypeInfoKind::Text) => DumpValue::Text(row.try_get::<String, _>(index)?),
            (false, AnyTypeInfoKind::Blob) => DumpValue::Blob(STANDARD.encode(row.try_get::<Vec<u8>, _>(index)?)),
            (false, AnyTypeInfoKind::Null) => {
                return Err(StoreError::Corrupt(format!("column {} has no type", column.name())));
            }
        };
        values.push(value);
    }
    Ok(values)
}

fn kind_name(kind: AnyTypeInfoKind) -> &'static str {
    match kind {
        AnyTypeInfoKind::Real | AnyTypeInfoKind::Double => "float",
        AnyTypeInfoKind::Blob => "blob",
        AnyTypeInfoKind::Bool | AnyTypeInfoKind::SmallInt | AnyTypeInfoKind::Integer | AnyTypeInfoKind::BigInt => "int",
        AnyTypeInfoKind::Text | AnyTypeInfoKind::Null => "text",
    }
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

fn bind_value(query: AnyQuery<'_>, value: DumpValue) -> Result<AnyQuery<'_>> {
    Ok(match value {
        DumpValue::Int(v) => query.bind(v),
        DumpValue::Float(v) => query.bind(v),
        DumpValue::Text(v) => query.bind(v),
        DumpValue::Blob(v) => {
            let bytes =
                STANDARD.decode(v).map_err(|_| StoreError::InvalidExport("a blob value is not base64".into()))?;
            query.bind(bytes)
        }
        DumpValue::Null(kind) => match kind.as_str() {
            "int" => query.bind(None::<i64>),
            "float" => query.bind(None::<f64>),
            "blob" => query.bind(None::<Vec<u8>>),
            "text" => query.bind(None::<String>),
            other => return Err(StoreError::InvalidExport(format!("a null has the unknown kind {other:?}"))),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Group;
    use crate::testing::memory_store;

    #[tokio::test]
    async fn tables_list_matches_schema() {
        let store = memory_store().await;
        let rows = sqlx::query(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite_%' AND name <> '_sqlx_migrations' ORDER BY name",
        )
        .fetch_all(&store.pool)
        .await
        .expect("tables");
        let mut schema: Vec<String> = rows.iter().map(|r| r.try_get("name").expect("name")).collect();
        let mut listed: Vec<String> = TABLES.iter().map(|(t, _)| (*t).to_string()).collect();
        schema.sort();
        listed.sort();
        assert_eq!(schema, listed, "every table must be in TABLES, or backups miss it");
    }

    async fn export_lines(store: &Store) -> Vec<DumpLine> {
        let mut lines = Vec::new();
        store
            .export(|line| {
                lines.push(line);
                Ok(())
            })
            .await
            .expect("export");
        lines
    }

    #[tokio::test]
    async fn export_import_round_trip() {
        let source = memory_store().await;
        let user =
            source.create_user("ann@example.org", "Ann", "hash", &[Group::Students], false, 5).await.expect("user");
        source.save_wiki_page("WikiStart", "text", Some(user.id), 6).await.expect("page");
        source.save_wiki_page("Other", "no author", None, 7).await.expect("page");
        let lines = export_lines(&source).await;
        // Three rows of data and the seeded audit head.
        assert!(matches!(lines.last(), Some(DumpLine::End { rows: 4 })));

        let target = memory_store().await;
        let rows = target.import(lines.clone().into_iter().map(Ok)).await.expect("import");
        assert_eq!(rows, 4);
        assert_eq!(export_lines(&target).await, lines);

        let again = target.import(lines.into_iter().map(Ok)).await;
        assert!(again.is_err(), "a database with data must be refused");
    }

    #[tokio::test]
    async fn import_without_end_keeps_nothing() {
        let source = memory_store().await;
        source.create_user("bob@example.org", "Bob", "hash", &[Group::Students], false, 5).await.expect("user");
        let mut lines = export_lines(&source).await;
        lines.pop();

        let target = memory_store().await;
        assert!(target.import(lines.into_iter().map(Ok)).await.is_err());
        assert!(target.is_empty().await.expect("count"));
    }
}
