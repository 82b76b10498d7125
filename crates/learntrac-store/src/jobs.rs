//! Background jobs on the library: ingesting an uploaded book and
//! embedding the library again with another model. A job's row is its
//! whole state, so any process can report on it and ask it to stop.

use sqlx::Row;

use crate::{Result, Store};

/// The kind of work a job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Ingest,
    Reembed,
}

/// The stage a job has reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Ingest => "ingest",
            JobKind::Reembed => "reembed",
        }
    }

    fn parse(value: &str) -> Result<JobKind> {
        Ok(match value {
            "ingest" => JobKind::Ingest,
            "reembed" => JobKind::Reembed,
            other => return Err(crate::StoreError::Corrupt(format!("unknown job kind {other:?}"))),
        })
    }
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    fn parse(value: &str) -> Result<JobState> {
        Ok(match value {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            other => return Err(crate::StoreError::Corrupt(format!("unknown job state {other:?}"))),
        })
    }

    /// Returns whether the job has ended, well or not.
    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct JobRecord {
    pub id: i64,
    pub kind: JobKind,
    pub state: JobState,
    pub file_name: Option<String>,
    pub model: Option<String>,
    pub pages_done: i64,
    pub pages_total: i64,
    pub passages_done: i64,
    pub passages_total: i64,
    /// The book an ingestion made.
    pub book_id: Option<i64>,
    /// The reason the job failed.
    pub error: Option<String>,
    pub cancel_requested: bool,
    pub created_by: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A job to create.
pub struct NewJob<'a> {
    pub kind: JobKind,
    pub file_name: Option<&'a str>,
    pub content_hash: Option<&'a str>,
    pub model: Option<&'a str>,
    pub created_by: Option<i64>,
}

/// How far a running job has come.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JobProgress {
    pub pages_done: i64,
    pub pages_total: i64,
    pub passages_done: i64,
    pub passages_total: i64,
}

const JOB_COLUMNS: &str = "id, kind, state, file_name, model, pages_done, pages_total, passages_done, \
    passages_total, book_id, error, cancel_requested, created_by, created_at, updated_at";

impl Store {
    /// Creates a queued job.
    pub async fn create_job(&self, job: &NewJob<'_>, now: i64) -> Result<JobRecord> {
        let id: i64 = sqlx::query(
            "INSERT INTO jobs (kind, state, file_name, content_hash, model, created_by, created_at, updated_at) \
             VALUES ($1, 'queued', $2, $3, $4, $5, $6, $6) RETURNING id",
        )
        .bind(job.kind.as_str())
        .bind(job.file_name)
        .bind(job.content_hash)
        .bind(job.model)
        .bind(job.created_by)
        .bind(now)
        .fetch_one(&self.pool)
        .await?
        .try_get("id")?;
        self.job(id).await?.ok_or_else(|| crate::StoreError::Corrupt(format!("job {id} vanished")))
    }

    pub async fn job(&self, id: i64) -> Result<Option<JobRecord>> {
        let row = sqlx::query(crate::sql(format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Returns the latest `limit` jobs, newest first.
    pub async fn list_jobs(&self, limit: i64) -> Result<Vec<JobRecord>> {
        let rows = sqlx::query(crate::sql(format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY id DESC LIMIT $1")))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Returns the id of an unfinished ingestion of a file with this SHA-256.
    pub async fn pending_job_with_hash(&self, content_hash: &str) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT id FROM jobs WHERE content_hash = $1 AND state IN ('queued', 'running') ORDER BY id LIMIT 1",
        )
        .bind(content_hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get("id")).transpose()?)
    }

    /// Returns the unfinished job of `kind`, if any.
    pub async fn pending_job(&self, kind: JobKind) -> Result<Option<JobRecord>> {
        let row = sqlx::query(crate::sql(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE kind = $1 AND state IN ('queued', 'running') ORDER BY id LIMIT 1"
        )))
        .bind(kind.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Counts the unfinished jobs of `kind`.
    pub async fn unfinished_jobs(&self, kind: JobKind) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM jobs WHERE kind = $1 AND state IN ('queued', 'running')")
            .bind(kind.as_str())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Marks a queued job as running.
    pub async fn start_job(&self, id: i64, now: i64) -> Result<()> {
        sqlx::query("UPDATE jobs SET state = 'running', updated_at = $2 WHERE id = $1 AND state = 'queued'")
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a running job's progress and returns whether a cancel was
    /// requested.
    pub async fn job_progress(&self, id: i64, progress: JobProgress, now: i64) -> Result<bool> {
        let row = sqlx::query(
            "UPDATE jobs SET pages_done = $2, pages_total = $3, passages_done = $4, passages_total = $5, \
             updated_at = $6 WHERE id = $1 RETURNING cancel_requested",
        )
        .bind(id)
        .bind(progress.pages_done)
        .bind(progress.pages_total)
        .bind(progress.passages_done)
        .bind(progress.passages_total)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get::<i64, _>("cancel_requested")).transpose()?.unwrap_or(1) != 0)
    }

    /// Ends a job with `state`, and `error` as the reason of a failure.
    pub async fn finish_job(
        &self,
        id: i64,
        state: JobState,
        book_id: Option<i64>,
        error: Option<&str>,
        now: i64,
    ) -> Result<()> {
        sqlx::query("UPDATE jobs SET state = $2, book_id = $3, error = $4, updated_at = $5 WHERE id = $1")
            .bind(id)
            .bind(state.as_str())
            .bind(book_id)
            .bind(error)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Asks an unfinished job to stop. Returns the job as it is now, or
    /// None when there is no such job.
    pub async fn request_job_cancel(&self, id: i64, now: i64) -> Result<Option<JobRecord>> {
        sqlx::query(
            "UPDATE jobs SET cancel_requested = 1, updated_at = $2 WHERE id = $1 AND state IN ('queued', 'running')",
        )
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        self.job(id).await
    }

    /// Marks as failed every unfinished job that has not reported since
    /// `stale_before`: its process stopped. Returns how many.
    pub async fn fail_stale_jobs(&self, reason: &str, stale_before: i64, now: i64) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE jobs SET state = 'failed', error = $1, updated_at = $2 \
             WHERE state IN ('queued', 'running') AND updated_at < $3",
        )
        .bind(reason)
        .bind(now)
        .bind(stale_before)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

fn job_from_row(row: &sqlx::any::AnyRow) -> Result<JobRecord> {
    Ok(JobRecord {
        id: row.try_get("id")?,
        kind: JobKind::parse(&row.try_get::<String, _>("kind")?)?,
        state: JobState::parse(&row.try_get::<String, _>("state")?)?,
        file_name: row.try_get("file_name")?,
        model: row.try_get("model")?,
        pages_done: row.try_get("pages_done")?,
        pages_total: row.try_get("pages_total")?,
        passages_done: row.try_get("passages_done")?,
        passages_total: row.try_get("passages_total")?,
        book_id: row.try_get("book_id")?,
        error: row.try_get("error")?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::memory_store;

    #[tokio::test]
    async fn job_lifecycle() {
        let store = memory_store().await;
        let new = NewJob {
            kind: JobKind::Ingest,
            file_name: Some("r.pdf"),
            content_hash: Some("abc"),
            model: None,
            created_by: None,
        };
        let job = store.create_job(&new, 10).await.expect("create");
        assert_eq!(job.state, JobState::Queued);
        assert_eq!(store.pending_job_with_hash("abc").await.expect("pending"), Some(job.id));
        assert_eq!(store.pending_job(JobKind::Ingest).await.expect("pending").map(|j| j.id), Some(job.id));
        assert!(store.pending_job(JobKind::Reembed).await.expect("pending").is_none());
        assert_eq!(store.unfinished_jobs(JobKind::Ingest).await.expect("count"), 1);
        store.start_job(job.id, 11).await.expect("start");
        let progress = JobProgress { pages_done: 2, pages_total: 4, passages_done: 0, passages_total: 9 };
        assert!(!store.job_progress(job.id, progress, 12).await.expect("progress"));
        let requested = store.request_job_cancel(job.id, 13).await.expect("cancel").expect("job");
        assert!(requested.cancel_requested);
        assert_eq!(requested.pages_done, 2);
        assert!(store.job_progress(job.id, progress, 14).await.expect("progress"), "the runner sees the request");
        store.finish_job(job.id, JobState::Cancelled, None, None, 15).await.expect("finish");
        assert_eq!(store.pending_job_with_hash("abc").await.expect("pending"), None);
        assert!(store.request_job_cancel(404, 16).await.expect("cancel").is_none());

        let other = store.create_job(&new, 20).await.expect("create");
        assert_eq!(store.fail_stale_jobs("stopped", 20, 21).await.expect("fail"), 0, "reported recently");
        assert_eq!(store.fail_stale_jobs("stopped", 21, 21).await.expect("fail"), 1);
        let failed = store.job(other.id).await.expect("job").expect("exists");
        assert_eq!((failed.state, failed.error.as_deref()), (JobState::Failed, Some("stopped")));
        assert_eq!(store.list_jobs(10).await.expect("list").len(), 2);
    }
}
