use learntrac_core::book::Book;
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
    /// Number of sections in the section's book.
    pub book_sections: i64,
}

/// A chunk to store: index of its section in `Book::sections`, text and embedding.
pub struct NewChunk {
    pub section: usize,
    pub body: String,
    pub embedding: Vec<u8>,
}

/// A stored chunk with what the search index needs.
pub struct StoredChunk {
    pub id: i64,
    pub book_id: i64,
    pub section_id: i64,
    pub book_title: String,
    pub heading: String,
    pub body: String,
    pub embedding: Vec<u8>,
}

impl Store {
    /// Stores a book, its sections and its chunks in one transaction.
    /// `content_hash` identifies the file; the same file twice is a
    /// [`StoreError::Conflict`](crate::StoreError::Conflict).
    pub async fn insert_book(
        &self,
        book: &Book,
        source_name: &str,
        content_hash: &str,
        chunks: &[NewChunk],
        created_by: Option<i64>,
        now: i64,
    ) -> Result<BookRecord> {
        let mut tx = self.pool.begin().await?;
        let book_id: i64 = sqlx::query(
            "INSERT INTO books (title, format, source_name, content_hash, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(&book.title)
        .bind(book.format.as_str())
        .bind(source_name)
        .bind(content_hash)
        .bind(created_by)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| conflict_or(e, || format!("a book with the same content as {source_name}")))?
        .try_get("id")?;

        let mut section_ids = Vec::with_capacity(book.sections.len());
        for (position, section) in book.sections.iter().enumerate() {
            let id: i64 = sqlx::query(
                "INSERT INTO sections (book_id, position, level, heading, body) VALUES ($1, $2, $3, $4, $5) RETURNING id",
            )
            .bind(book_id)
            .bind(position as i64)
            .bind(i64::from(section.level))
            .bind(&section.heading)
            .bind(&section.text)
            .fetch_one(&mut *tx)
            .await?
            .try_get("id")?;
            section_ids.push(id);
        }

        for (position, chunk) in chunks.iter().enumerate() {
            let Some(section_id) = section_ids.get(chunk.section) else {
                return Err(crate::StoreError::Corrupt(format!(
                    "chunk {position} names section {}, but the book has {}",
                    chunk.section,
                    section_ids.len()
                )));
            };
            sqlx::query(
                "INSERT INTO chunks (book_id, section_id, position, body, embedding) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(book_id)
            .bind(*section_id)
            .bind(position as i64)
            .bind(&chunk.body)
            .bind(&chunk.embedding)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;

        Ok(BookRecord {
            id: book_id,
            title: book.title.clone(),
            format: book.format.as_str().to_string(),
            source_name: source_name.to_string(),
            sections: section_ids.len() as i64,
            chunks: chunks.len() as i64,
            created_at: now,
        })
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
        sqlx::query("DELETE FROM chunks WHERE book_id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM sections WHERE book_id = $1").bind(id).execute(&mut *tx).await?;
        let deleted = sqlx::query("DELETE FROM books WHERE id = $1").bind(id).execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(deleted > 0)
    }

    /// Returns the number of chunks and the highest chunk id, which change
    /// whenever a book is added or removed.
    pub async fn chunk_watermark(&self) -> Result<(i64, i64)> {
        let row =
            sqlx::query("SELECT COUNT(*) AS n, COALESCE(MAX(id), 0) AS top FROM chunks").fetch_one(&self.pool).await?;
        Ok((row.try_get("n")?, row.try_get("top")?))
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

    /// Loads every chunk, for building the in-memory search index.
    pub async fn all_chunks(&self) -> Result<Vec<StoredChunk>> {
        let rows = sqlx::query(
            "SELECT c.id, c.book_id, c.section_id, b.title, s.heading, c.body, c.embedding \
             FROM chunks c JOIN sections s ON s.id = c.section_id JOIN books b ON b.id = c.book_id ORDER BY c.id",
        )
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
                    embedding: r.try_get("embedding")?,
                })
            })
            .collect()
    }
}

const SECTION_SELECT: &str = "SELECT s.id, s.book_id, s.position, s.level, s.heading, s.body, \
    (SELECT COUNT(*) FROM sections t WHERE t.book_id = s.book_id) AS book_sections FROM sections s";

fn section_from_row(row: &sqlx::any::AnyRow) -> Result<SectionRecord> {
    Ok(SectionRecord {
        id: row.try_get("id")?,
        book_id: row.try_get("book_id")?,
        position: row.try_get("position")?,
        level: row.try_get("level")?,
        heading: row.try_get("heading")?,
        body: row.try_get("body")?,
        book_sections: row.try_get("book_sections")?,
    })
}

#[cfg(test)]
mod tests {
    use learntrac_core::book::{Book, Format, Section};

    use super::*;
    use crate::testing::memory_store;

    #[tokio::test]
    async fn book_round_trip() {
        let store = memory_store().await;
        let book = Book {
            title: "Stats".into(),
            format: Format::Markdown,
            sections: vec![
                Section::new(1, "1 Mean", "The mean is an average."),
                Section::new(2, "1.1 Median", "The median is the middle."),
            ],
        };
        let chunks = vec![
            NewChunk { section: 0, body: "The mean is an average.".into(), embedding: vec![0, 0, 128, 63] },
            NewChunk { section: 1, body: "The median is the middle.".into(), embedding: vec![0, 0, 0, 0] },
        ];
        let record = store.insert_book(&book, "stats.md", "hash1", &chunks, None, 5).await.expect("insert");
        let again = store.insert_book(&book, "copy.md", "hash1", &chunks, None, 6).await;
        assert!(matches!(again, Err(crate::StoreError::Conflict(_))), "the same content twice");
        assert_eq!(record.sections, 2);
        let books = store.list_books().await.expect("list");
        assert_eq!(books.len(), 1);
        assert_eq!(books[0].chunks, 2);
        let stored = store.all_chunks().await.expect("chunks");
        assert_eq!(stored[1].heading, "1.1 Median");
        assert_eq!(stored[0].embedding, [0, 0, 128, 63]);
        let sections = store.book_sections(record.id).await.expect("sections");
        assert_eq!(sections[1].book_sections, 2);
        assert_eq!(sections[1].level, 2);

        assert!(store.delete_book(record.id).await.expect("delete"));
        assert!(!store.delete_book(record.id).await.expect("delete again"));
        assert!(store.all_chunks().await.expect("chunks").is_empty());
        assert!(store.list_books().await.expect("list").is_empty());
    }
}
