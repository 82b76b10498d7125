use sqlx::Row;

use crate::{Result, Store, conflict_or, sql};

#[derive(Clone, Debug, serde::Serialize)]
pub struct BookRecord {
    pub id: i64,
    pub title: String,
    pub format: String,
    pub source_name: String,
    pub sections: i64,
    pub chunks: i64,
    pub created_at: i64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct SectionRecord {
    pub id: i64,
    pub book_id: i64,
    pub position: i64,
    pub level: i64,
    pub heading: String,
    pub body: String,
    /// The PDF page the section starts on.
    pub page: Option<i64>,
    /// Positions, in the same book, of the sections this one refers to.
    pub references: Vec<i64>,
    /// Number of sections in the section's book.
    pub book_sections: i64,
}

/// A book to store: its title and format with its sections and passages.
pub struct NewBook<'a> {
    pub title: &'a str,
    pub format: &'a str,
    pub source_name: &'a str,
    /// SHA-256 of the file; the same file twice is refused.
    pub content_hash: &'a str,
    pub sections: Vec<NewSection>,
    pub chunks: Vec<NewChunk>,
    pub created_by: Option<i64>,
}

/// A section to store, in book order.
pub struct NewSection {
    pub level: i64,
    pub heading: String,
    pub body: String,
    pub page: Option<i64>,
    /// Positions of the sections it refers to.
    pub references: Vec<i64>,
}

/// A chunk to store: index of its section in [`NewBook::sections`], its
/// text and page, and its vectors, each with the model that made it.
pub struct NewChunk {
    pub section: usize,
    pub body: String,
    pub page: Option<i64>,
    pub vectors: Vec<(String, Vec<u8>)>,
}

/// A stored chunk with what the search index needs, and its vector by one model.
pub struct StoredChunk {
    pub id: i64,
    pub book_id: i64,
    pub section_id: i64,
    pub book_title: String,
    pub heading: String,
    pub body: String,
    pub page: Option<i64>,
    pub embedding: Vec<u8>,
}

/// A chunk's text as it is embedded, for embedding the library again.
pub struct ChunkText {
    pub id: i64,
    pub section_id: i64,
    pub heading: String,
    pub body: String,
}

impl Store {
    /// Stores a book, its sections, its chunks and their vectors in one
    /// transaction. The same file twice is a
    /// [`StoreError::Conflict`](crate::StoreError::Conflict).
    pub async fn insert_book(&self, book: &NewBook<'_>, now: i64) -> Result<BookRecord> {
        let mut tx = self.pool.begin().await?;
        let book_id: i64 = sqlx::query(
            "INSERT INTO books (title, format, source_name, content_hash, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(book.title)
        .bind(book.format)
        .bind(book.source_name)
        .bind(book.content_hash)
        .bind(book.created_by)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| conflict_or(e, || format!("a book with the same content as {}", book.source_name)))?
        .try_get("id")?;

        let mut section_ids = Vec::with_capacity(book.sections.len());
        for (position, section) in book.sections.iter().enumerate() {
            let refs = section.references.iter().map(i64::to_string).collect::<Vec<_>>().join(" ");
            let id: i64 = sqlx::query(
                "INSERT INTO sections (book_id, position, level, heading, body, page, refs) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            )
            .bind(book_id)
            .bind(position as i64)
            .bind(section.level)
            .bind(&section.heading)
            .bind(&section.body)
            .bind(section.page)
            .bind(refs)
            .fetch_one(&mut *tx)
            .await?
            .try_get("id")?;
            section_ids.push(id);
        }

        for (position, chunk) in book.chunks.iter().enumerate() {
            let Some(section_id) = section_ids.get(chunk.section) else {
                return Err(crate::StoreError::Corrupt(format!(
                    "chunk {position} names section {}, but the book has {}",
                    chunk.section,
                    section_ids.len()
                )));
            };
            let chunk_id: i64 = sqlx::query(
                "INSERT INTO chunks (book_id, section_id, position, body, page) VALUES ($1, $2, $3, $4, $5) \
                 RETURNING id",
            )
            .bind(book_id)
            .bind(*section_id)
            .bind(position as i64)
            .bind(&chunk.body)
            .bind(chunk.page)
            .fetch_one(&mut *tx)
            .await?
            .try_get("id")?;
            for (model, vector) in &chunk.vectors {
                sqlx::query("INSERT INTO chunk_vectors (chunk_id, model, vector) VALUES ($1, $2, $3)")
                    .bind(chunk_id)
                    .bind(model)
                    .bind(vector)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;

        Ok(BookRecord {
            id: book_id,
            title: book.title.to_string(),
            format: book.format.to_string(),
            source_name: book.source_name.to_string(),
            sections: section_ids.len() as i64,
            chunks: book.chunks.len() as i64,
            created_at: now,
        })
    }

    /// Returns the id of the book stored from a file with this SHA-256, if any.
    pub async fn book_with_hash(&self, content_hash: &str) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT id FROM books WHERE content_hash = $1")
            .bind(content_hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("id")).transpose()?)
    }

    pub async fn list_books(&self) -> Result<Vec<BookRecord>> {
        let rows = sqlx::query(
            "SELECT b.id, b.title, b.format, b.source_name, b.created_at, \
             (SELECT COUNT(*) FROM sections s WHERE s.book_id = b.id) AS sections, \
             (SELECT COUNT(*) FROM chunks c WHERE c.book_id = b.id) AS chunks \
             FROM books b ORDER BY b.id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(BookRecord {
                    id: r.try_get("id")?,
                    title: r.try_get("title")?,
                    format: r.try_get("format")?,
                    source_name: r.try_get("source_name")?,
                    sections: r.try_get("sections")?,
                    chunks: r.try_get("chunks")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// Returns the sections of one book in order.
    pub async fn book_sections(&self, book_id: i64) -> Result<Vec<SectionRecord>> {
        let rows = sqlx::query(sql(format!("{SECTION_SELECT} WHERE s.book_id = $1 ORDER BY s.position")))
            .bind(book_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(section_from_row).collect()
    }

    /// Returns the section at `position` in a book.
    pub async fn section_at(&self, book_id: i64, position: i64) -> Result<Option<SectionRecord>> {
        let row = sqlx::query(sql(format!("{SECTION_SELECT} WHERE s.book_id = $1 AND s.position = $2")))
            .bind(book_id)
            .bind(position)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(section_from_row).transpose()
    }

    pub async fn section(&self, id: i64) -> Result<Option<SectionRecord>> {
        let row =
            sqlx::query(sql(format!("{SECTION_SELECT} WHERE s.id = $1"))).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(section_from_row).transpose()
    }

    /// Deletes a book with its sections and chunks; tickets made from it
    /// keep their questions but lose the link to the section. Returns
    /// whether the book existed.
    pub async fn delete_book(&self, id: i64) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        // Store::open enables SQLite's foreign_keys pragma, but the dependent
        // rows are removed explicitly so that deleting does not depend on how
        // the file was opened.
        sqlx::query(
            "UPDATE tickets SET section_id = NULL WHERE section_id IN (SELECT id FROM sections WHERE book_id = $1)",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE jobs SET book_id = NULL WHERE book_id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM chunk_vectors WHERE chunk_id IN (SELECT id FROM chunks WHERE book_id = $1)")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM chunks WHERE book_id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM sections WHERE book_id = $1").bind(id).execute(&mut *tx).await?;
        let deleted = sqlx::query("DELETE FROM books WHERE id = $1").bind(id).execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(deleted > 0)
    }

    /// Returns the number of chunks, the highest chunk id and the number of
    /// vectors, which change whenever a book is added or removed or the
    /// library is embedded by another model.
    pub async fn chunk_watermark(&self) -> Result<(i64, i64, i64)> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, COALESCE(MAX(id), 0) AS top, (SELECT COUNT(*) FROM chunk_vectors) AS vectors \
             FROM chunks",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get("n")?, row.try_get("top")?, row.try_get("vectors")?))
    }

    /// Returns every section's id, book, level and heading in book order,
    /// for working out which chapter encloses which section.
    pub async fn section_outline(&self) -> Result<Vec<(i64, i64, i64, String)>> {
        let rows = sqlx::query("SELECT id, book_id, level, heading FROM sections ORDER BY book_id, position")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("book_id")?, r.try_get("level")?, r.try_get("heading")?)))
            .collect()
    }

    /// Loads every chunk that has a vector by `model`, with that vector,
    /// for building the in-memory search index.
    pub async fn indexed_chunks(&self, model: &str) -> Result<Vec<StoredChunk>> {
        let rows = sqlx::query(
            "SELECT c.id, c.book_id, c.section_id, b.title, s.heading, c.body, c.page, v.vector \
             FROM chunks c JOIN sections s ON s.id = c.section_id JOIN books b ON b.id = c.book_id \
             JOIN chunk_vectors v ON v.chunk_id = c.id AND v.model = $1 ORDER BY c.id",
        )
        .bind(model)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredChunk {
                    id: r.try_get("id")?,
                    book_id: r.try_get("book_id")?,
                    section_id: r.try_get("section_id")?,
                    book_title: r.try_get("title")?,
                    heading: r.try_get("heading")?,
                    body: r.try_get("body")?,
                    page: r.try_get("page")?,
                    embedding: r.try_get("vector")?,
                })
            })
            .collect()
    }

    /// Returns the number of chunks in the library and, for each model,
    /// the number of chunks it has embedded.
    pub async fn vector_coverage(&self) -> Result<(i64, Vec<(String, i64)>)> {
        let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM chunks").fetch_one(&self.pool).await?.try_get("n")?;
        let rows = sqlx::query("SELECT model, COUNT(*) AS n FROM chunk_vectors GROUP BY model ORDER BY model")
            .fetch_all(&self.pool)
            .await?;
        let models = rows.iter().map(|r| Ok((r.try_get("model")?, r.try_get("n")?))).collect::<Result<_>>()?;
        Ok((total, models))
    }

    /// Returns up to `limit` chunks that have no vector by `model` yet, in id order.
    pub async fn chunks_without_vector(&self, model: &str, limit: i64) -> Result<Vec<ChunkText>> {
        let rows = sqlx::query(
            "SELECT c.id, c.section_id, s.heading, c.body FROM chunks c JOIN sections s ON s.id = c.section_id \
             WHERE NOT EXISTS (SELECT 1 FROM chunk_vectors v WHERE v.chunk_id = c.id AND v.model = $1) \
             ORDER BY c.id LIMIT $2",
        )
        .bind(model)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ChunkText {
                    id: r.try_get("id")?,
                    section_id: r.try_get("section_id")?,
                    heading: r.try_get("heading")?,
                    body: r.try_get("body")?,
                })
            })
            .collect()
    }

    /// Stores vectors by `model` for existing chunks; a chunk deleted in
    /// the meantime is skipped.
    pub async fn put_vectors(&self, model: &str, vectors: &[(i64, Vec<u8>)]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for (chunk_id, vector) in vectors {
            sqlx::query(
                "INSERT INTO chunk_vectors (chunk_id, model, vector) SELECT id, $2, $3 FROM chunks WHERE id = $1 \
                 ON CONFLICT (chunk_id, model) DO UPDATE SET vector = excluded.vector",
            )
            .bind(chunk_id)
            .bind(model)
            .bind(vector)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes the vectors of every model not in `keep`; returns how many.
    pub async fn delete_other_vectors(&self, keep: &[&str]) -> Result<u64> {
        let (_, models) = self.vector_coverage().await?;
        let mut deleted = 0;
        for (model, _) in models.iter().filter(|(m, _)| !keep.contains(&m.as_str())) {
            deleted += sqlx::query("DELETE FROM chunk_vectors WHERE model = $1")
                .bind(model)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        Ok(deleted)
    }
}

const SECTION_SELECT: &str = "SELECT s.id, s.book_id, s.position, s.level, s.heading, s.body, s.page, s.refs, \
    (SELECT COUNT(*) FROM sections t WHERE t.book_id = s.book_id) AS book_sections FROM sections s";

fn section_from_row(row: &sqlx::any::AnyRow) -> Result<SectionRecord> {
    Ok(SectionRecord {
        id: row.try_get("id")?,
        book_id: row.try_get("book_id")?,
        position: row.try_get("position")?,
        level: row.try_get("level")?,
        heading: row.try_get("heading")?,
        body: row.try_get("body")?,
        page: row.try_get("page")?,
        references: row.try_get::<String, _>("refs")?.split_whitespace().filter_map(|p| p.parse().ok()).collect(),
        book_sections: row.try_get("book_sections")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::memory_store;

    fn stats_book(hash: &str) -> NewBook<'_> {
        let section = |level, heading: &str, body: &str, references| NewSection {
            level,
            heading: heading.into(),
            body: body.into(),
            page: Some(3),
            references,
        };
        let chunk = |section, body: &str, vector: Vec<u8>| NewChunk {
            section,
            body: body.into(),
            page: Some(3),
            vectors: vec![("m1".to_string(), vector)],
        };
        NewBook {
            title: "Stats",
            format: "markdown",
            source_name: "stats.md",
            content_hash: hash,
            sections: vec![
                section(1, "1 Mean", "The mean is an average.", vec![]),
                section(2, "1.1 Median", "The median is the middle, unlike the mean (see 1).", vec![0]),
            ],
            chunks: vec![
                chunk(0, "The mean is an average.", vec![0, 0, 128, 63]),
                chunk(1, "The median is the middle.", vec![0, 0, 0, 0]),
            ],
            created_by: None,
        }
    }

    #[tokio::test]
    async fn book_round_trip() {
        let store = memory_store().await;
        let record = store.insert_book(&stats_book("hash1"), 5).await.expect("insert");
        let again = store.insert_book(&stats_book("hash1"), 6).await;
        assert!(matches!(again, Err(crate::StoreError::Conflict(_))), "the same content twice");
        assert_eq!(store.book_with_hash("hash1").await.expect("hash"), Some(record.id));
        assert_eq!(record.sections, 2);
        let books = store.list_books().await.expect("list");
        assert_eq!(books.len(), 1);
        assert_eq!(books[0].chunks, 2);
        let stored = store.indexed_chunks("m1").await.expect("chunks");
        assert_eq!(stored[1].heading, "1.1 Median");
        assert_eq!(stored[0].embedding, [0, 0, 128, 63]);
        assert_eq!(stored[0].page, Some(3));
        assert!(store.indexed_chunks("m2").await.expect("chunks").is_empty(), "only the asked model's vectors");
        let sections = store.book_sections(record.id).await.expect("sections");
        assert_eq!(sections[1].book_sections, 2);
        assert_eq!(sections[1].level, 2);
        assert_eq!(sections[1].references, [0]);
        let first = store.section_at(record.id, 0).await.expect("section").expect("exists");
        assert_eq!(first.heading, "1 Mean");
        assert!(store.section_at(record.id, 2).await.expect("section").is_none());

        assert!(store.delete_book(record.id).await.expect("delete"));
        assert!(!store.delete_book(record.id).await.expect("delete again"));
        assert!(store.indexed_chunks("m1").await.expect("chunks").is_empty());
        assert!(store.list_books().await.expect("list").is_empty());
        assert_eq!(store.vector_coverage().await.expect("coverage"), (0, vec![]));
    }

    #[tokio::test]
    async fn new_model_replaces_old_vectors() {
        let store = memory_store().await;
        store.insert_book(&stats_book("hash2"), 5).await.expect("insert");
        let missing = store.chunks_without_vector("m2", 1).await.expect("missing");
        assert_eq!(missing.len(), 1, "the limit applies");
        store.put_vectors("m2", &[(missing[0].id, vec![1, 2, 3, 4]), (9999, vec![0; 4])]).await.expect("put");
        let missing = store.chunks_without_vector("m2", 10).await.expect("missing");
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].heading, "1.1 Median");
        store.put_vectors("m2", &[(missing[0].id, vec![5, 6, 7, 8])]).await.expect("put");
        assert_eq!(store.vector_coverage().await.expect("coverage"), (2, vec![("m1".into(), 2), ("m2".into(), 2)]));
        assert_eq!(store.delete_other_vectors(&["m2"]).await.expect("delete"), 2);
        assert_eq!(store.vector_coverage().await.expect("coverage"), (2, vec![("m2".into(), 2)]));
        assert_eq!(store.indexed_chunks("m2").await.expect("chunks")[1].embedding, [5, 6, 7, 8]);
    }
}
