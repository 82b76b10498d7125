use sqlx::Row;

use crate::{Result, Store};

#[derive(Clone, Debug, serde::Serialize)]
pub struct WikiPage {
    pub name: String,
    pub body: String,
    pub version: i64,
    pub updated_at: i64,
}

impl Store {
    pub async fn wiki_page(&self, name: &str) -> Result<Option<WikiPage>> {
        let row = sqlx::query("SELECT name, body, version, updated_at FROM wiki_pages WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(WikiPage {
                name: r.try_get("name")?,
                body: r.try_get("body")?,
                version: r.try_get("version")?,
                updated_at: r.try_get("updated_at")?,
            })
        })
        .transpose()
    }

    /// Creates a page or replaces its text, raising its version by one.
    pub async fn save_wiki_page(&self, name: &str, body: &str, author_id: Option<i64>, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO wiki_pages (name, body, version, author_id, updated_at) VALUES ($1, $2, 1, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET body = excluded.body, version = wiki_pages.version + 1, \
             author_id = excluded.author_id, updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(body)
        .bind(author_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn wiki_page_names(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT name FROM wiki_pages ORDER BY name").fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok(r.try_get("name")?)).collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::memory_store;

    #[tokio::test]
    async fn saving_raises_version() {
        let store = memory_store().await;
        store.save_wiki_page("WikiStart", "one", None, 1).await.expect("save");
        store.save_wiki_page("WikiStart", "two", None, 2).await.expect("save");
        let page = store.wiki_page("WikiStart").await.expect("load").expect("found");
        assert_eq!(page.body, "two");
        assert_eq!(page.version, 2);
        assert_eq!(store.wiki_page_names().await.expect("names"), ["WikiStart"]);
        assert!(store.wiki_page("Missing").await.expect("load").is_none());
    }
}
