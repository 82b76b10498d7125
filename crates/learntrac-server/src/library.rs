//! The library: books ingested as background jobs, the search index over
//! their passages, and embedding the library again when the model changes.
//!
//! Every passage has a vector by the built-in embedder, which costs
//! microseconds, and one by the configured model. The index contains the
//! vectors of one model only: the configured one once every passage has
//! one, the built-in one until then. A model change therefore never
//! mixes models and never leaves search without an index.

use std::sync::Arc;

use anyhow::Context;
use learntrac_core::book::{Book, DEFAULT_OVERLAP_TOKENS, Format, Window, embedding_text};
use learntrac_core::search::{Hit, Index, Passage, Scoring};
use learntrac_core::{embed, ingest};
use learntrac_store::{
    BookRecord, JobKind, JobProgress, JobRecord, JobState, NewBook, NewChunk, NewJob, NewSection, Store, StoreError,
};

use crate::embedder::{BATCH, BUILTIN_MODEL, Embedder};
use crate::error::{ApiError, ApiResult};
use crate::{AppState, audit};

/// A job that has not reported for this long belongs to a process that
/// stopped, because a live one reports every [`HEARTBEAT_SECONDS`]. Such a
/// job is marked as failed.
const STALE_JOB_SECONDS: i64 = 30;
/// How often a live job records its progress, even while one step takes long.
const HEARTBEAT_SECONDS: u64 = 2;
/// The maximum number of ingestions queued or running at once, because
/// each keeps its file in memory.
const MAX_UNFINISHED_UPLOADS: i64 = 8;
/// The reason recorded for a stale job.
const INTERRUPTED: &str = "the server stopped before the job finished; upload the book again";

/// Builds the search index: from the configured model's vectors when every
/// passage has one, from the built-in embedder's otherwise.
pub async fn load_index(store: &Store, embedder: &Embedder) -> anyhow::Result<Index> {
    let (total, coverage) = store.vector_coverage().await?;
    let covered = |model: &str| coverage.iter().find(|(m, _)| m == model).map_or(0, |(_, n)| *n);
    let (model, scoring) = if covered(embedder.id()) >= total || covered(BUILTIN_MODEL) < total {
        (embedder.id().to_string(), embedder.scoring())
    } else {
        (BUILTIN_MODEL.to_string(), Scoring::Hybrid)
    };
    let contexts = section_contexts(&store.section_outline().await?);
    let chunks = store.indexed_chunks(&model).await?;
    // Building the index is CPU-bound (and builds a graph for a large
    // library), so it runs off the async threads while the old index serves.
    // NOTE: the whole index is rebuilt on every change of the library.
    tokio::task::spawn_blocking(move || build_index(&model, scoring, chunks, &contexts))
        .await
        .context("the index-building task failed")
}

fn build_index(
    model: &str,
    scoring: Scoring,
    chunks: Vec<learntrac_store::StoredChunk>,
    contexts: &std::collections::HashMap<i64, String>,
) -> Index {
    let mut index = Index::new(model, scoring);
    for chunk in chunks {
        let Some(embedding) = embed::from_bytes(&chunk.embedding) else {
            tracing::warn!(chunk_id = chunk.id, "stored embedding has an invalid length; chunk left out of the index");
            continue;
        };
        let inserted = index.insert(
            Passage {
                chunk_id: chunk.id,
                book_id: chunk.book_id,
                section_id: chunk.section_id,
                book_title: chunk.book_title,
                heading: chunk.heading,
                context: contexts.get(&chunk.section_id).cloned().unwrap_or_default(),
                text: chunk.body,
                page: chunk.page,
            },
            embedding,
        );
        if let Err(error) = inserted {
            tracing::warn!(chunk_id = chunk.id, model, error = %error, "stored embedding rejected; chunk left out of the index");
        }
    }
    tracing::info!(chunks = index.len(), model, "search index loaded");
    index
}

/// Maps each section id to the headings that enclose it, from the outline
/// in book order.
fn section_contexts(outline: &[(i64, i64, i64, String)]) -> std::collections::HashMap<i64, String> {
    let mut contexts = std::collections::HashMap::new();
    for book in outline.chunk_by(|a, b| a.1 == b.1) {
        let levels: Vec<u8> = book.iter().map(|s| s.2.clamp(1, 9) as u8).collect();
        for (i, section) in book.iter().enumerate() {
            let chain = learntrac_core::book::ancestors(&levels, i);
            let context = chain.iter().map(|&j| book[j].3.as_str()).collect::<Vec<_>>().join(" > ");
            contexts.insert(section.0, context);
        }
    }
    contexts
}

/// Rebuilds the index from the store, which gives new chunks their stored ids.
/// It records the library's watermark, read before loading, so that
/// [`watch_library`] rebuilds only for changes the index does not have.
pub async fn reload_index(state: &AppState) -> ApiResult<()> {
    let watermark = state.store.chunk_watermark().await?;
    let index = load_index(&state.store, &state.embedder).await?;
    *state.index.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(index);
    *state.index_watermark.lock().unwrap_or_else(|p| p.into_inner()) = Some(watermark);
    Ok(())
}

/// Passages found for a query, and the model whose vectors ranked them.
pub struct Found {
    pub model: String,
    pub scoring: Scoring,
    pub hits: Vec<Hit>,
}

/// Searches the library for passages about `query`.
pub async fn search(state: &AppState, query: &str, limit: usize) -> ApiResult<Found> {
    let query = crate::service::validate_goal(query)?;
    let index = state.index.read().unwrap_or_else(|p| p.into_inner()).clone();
    let embedder = if index.model() == BUILTIN_MODEL { Embedder::builtin() } else { state.embedder.clone() };
    let vector = embedder.embed_query(query).await.map_err(ApiError::Internal)?;
    let limit = limit.clamp(1, crate::service::MAX_PASSAGES);
    let min_relevance = state.config.min_relevance;
    let query = query.to_string();
    let (model, scoring) = (index.model().to_string(), index.scoring());
    let hits = tokio::task::spawn_blocking(move || index.search(&query, &vector, limit, min_relevance))
        .await
        .context("the search task failed")?;
    Ok(Found { model, scoring, hits })
}

/// Checks an upload's name and content before a job is made for it:
/// the format must be known and the file new to the library.
async fn check_upload(state: &AppState, bytes: &[u8], file_name: &str) -> ApiResult<(Format, String)> {
    if file_name.chars().any(char::is_control) || file_name.len() > 255 {
        return Err(ApiError::bad_request(
            "invalid_name",
            "the file name contains control characters or is longer than 255 bytes; rename the file".to_string(),
        ));
    }
    let format = Format::from_file_name(file_name).ok_or_else(|| {
        ApiError::bad_request(
            "unsupported_format",
            format!(
                "cannot tell the format of {file_name:?}; name the file .pdf, .html, .htm, .xhtml, .md or .markdown"
            ),
        )
    })?;
    let content_hash = crate::sha256_hex_bytes(bytes);
    // A job of a stopped process must not hold its file as a duplicate.
    state.store.fail_stale_jobs(INTERRUPTED, state.now() - STALE_JOB_SECONDS, state.now()).await?;
    if let Some(book_id) = state.store.book_with_hash(&content_hash).await? {
        return Err(ApiError::Conflict(format!(
            "{file_name} has the same content as book {book_id}; delete that book first (DELETE /api/v1/books/{book_id}) to ingest it again"
        )));
    }
    if let Some(job_id) = state.store.pending_job_with_hash(&content_hash).await? {
        return Err(ApiError::Conflict(format!("{file_name} is already being ingested by job {job_id}")));
    }
    if state.store.unfinished_jobs(JobKind::Ingest).await? >= MAX_UNFINISHED_UPLOADS {
        tracing::warn!(file_name, limit = MAX_UNFINISHED_UPLOADS, "upload rejected: too many books are being ingested");
        return Err(ApiError::TooManyRequests { retry_after: 30 });
    }
    Ok((format, content_hash))
}

/// An upload accepted for ingestion.
struct Upload {
    bytes: Vec<u8>,
    file_name: String,
    format: Format,
    content_hash: String,
    actor: audit::Actor,
}

impl Upload {
    /// Returns the user who added the book, if a user did.
    fn created_by(&self) -> Option<i64> {
        match self.actor {
            audit::Actor::User(id) => Some(id),
            _ => None,
        }
    }
}

/// Accepts a book for ingestion and starts a background job for it;
/// returns the queued job.
pub async fn submit_book(
    state: &AppState,
    bytes: Vec<u8>,
    file_name: &str,
    actor: audit::Actor,
) -> ApiResult<JobRecord> {
    let (format, content_hash) = check_upload(state, &bytes, file_name).await?;
    let upload = Upload { bytes, file_name: file_name.to_string(), format, content_hash, actor };
    let job = create_ingest_job(state, &upload).await?;
    let task_state = state.clone();
    let job_id = job.id;
    tokio::spawn(async move {
        // The job records its own outcome; this is for errors of the store itself.
        if let Err(error) = run_ingest(&task_state, job_id, upload, &|_| {}).await {
            tracing::error!(job_id, error = format!("{error:#}"), "ingestion job failed");
        }
    });
    Ok(job)
}

/// Ingests a book in the foreground, as `learntrac ingest` does, reporting
/// progress to `report`; the work is recorded as a job like an upload.
pub async fn ingest_now(
    state: &AppState,
    bytes: Vec<u8>,
    file_name: &str,
    report: &(dyn Fn(JobProgress) + Sync),
) -> ApiResult<JobRecord> {
    let (format, content_hash) = check_upload(state, &bytes, file_name).await?;
    let upload = Upload { bytes, file_name: file_name.to_string(), format, content_hash, actor: audit::Actor::Cli };
    let job = create_ingest_job(state, &upload).await?;
    run_ingest(state, job.id, upload, report).await?;
    state.store.job(job.id).await?.ok_or_else(|| ApiError::NotFound(format!("job {}", job.id)))
}

async fn create_ingest_job(state: &AppState, upload: &Upload) -> ApiResult<JobRecord> {
    let job = NewJob {
        kind: JobKind::Ingest,
        file_name: Some(&upload.file_name),
        content_hash: Some(&upload.content_hash),
        model: Some(state.embedder.id()),
        created_by: upload.created_by(),
    };
    let job = state.store.create_job(&job, state.now()).await?;
    tracing::info!(job_id = job.id, file_name = %upload.file_name, "ingestion job queued");
    Ok(job)
}

/// The reason a job ended early.
enum Stop {
    Cancelled,
    Failed(String),
}

/// Runs an ingestion job to its end and records the outcome on it.
async fn run_ingest(
    state: &AppState,
    job_id: i64,
    upload: Upload,
    report: &(dyn Fn(JobProgress) + Sync),
) -> anyhow::Result<()> {
    let heartbeat = Heartbeat::start(state, job_id);
    let _slot = state.job_slots.acquire().await.context("the job queue is closed")?;
    state.store.start_job(job_id, state.now()).await?;
    // A job cancelled while it waited ends here, before any parsing.
    let outcome = if heartbeat.report(JobProgress::default()).await {
        Err(Stop::Cancelled)
    } else {
        ingest_steps(state, job_id, &upload, report, &heartbeat).await
    };
    drop(heartbeat);
    let actor = upload.actor.clone();
    match outcome {
        Ok(record) => {
            // The index is rebuilt before the job reports success, so that a
            // client that saw the job succeed finds the book.
            if let Err(error) = reload_index(state).await {
                tracing::error!(job_id, error = %error, "cannot rebuild the search index; it is retried within seconds");
            }
            state.store.finish_job(job_id, JobState::Succeeded, Some(record.id), None, state.now()).await?;
            tracing::info!(job_id, book_id = record.id, title = %record.title, sections = record.sections, chunks = record.chunks, "book ingested");
            let details = format!("{}: {} sections, {} passages", upload.file_name, record.sections, record.chunks);
            audit::record(state, actor, "book.create", &format!("book:{}", record.id), "success", &details).await;
        }
        Err(Stop::Cancelled) => {
            state.store.finish_job(job_id, JobState::Cancelled, None, None, state.now()).await?;
            tracing::info!(job_id, file_name = %upload.file_name, "ingestion cancelled");
        }
        Err(Stop::Failed(reason)) => {
            state.store.finish_job(job_id, JobState::Failed, None, Some(&reason), state.now()).await?;
            tracing::warn!(job_id, file_name = %upload.file_name, reason = %reason, "ingestion failed");
            let details = format!("{}: {reason}", upload.file_name);
            audit::record(state, actor, "book.create", &format!("job:{job_id}"), "failure", &details).await;
        }
    }
    Ok(())
}

async fn ingest_steps(
    state: &AppState,
    job_id: i64,
    upload: &Upload,
    report: &(dyn Fn(JobProgress) + Sync),
    heartbeat: &Heartbeat,
) -> Result<BookRecord, Stop> {
    let fallback_title = upload.file_name.rsplit_once('.').map_or(upload.file_name.as_str(), |(s, _)| s).to_string();
    let bytes = upload.bytes.clone();
    let format = upload.format;
    let embedder = state.embedder.clone();
    let for_parser = embedder.clone();
    let shared = heartbeat.progress.clone();
    let cancelled = heartbeat.cancelled.clone();
    // Parsing and cutting into passages (which tokenizes every sentence)
    // are CPU-bound, so they run off the async threads. The heartbeat
    // records the pages read meanwhile.
    let mut parsing = tokio::task::spawn_blocking(move || {
        let pages = |done: usize, total: usize| {
            let mut progress = shared.lock().unwrap_or_else(|p| p.into_inner());
            (progress.pages_done, progress.pages_total) = (done as i64, total as i64);
            !cancelled.load(std::sync::atomic::Ordering::Relaxed)
        };
        let book = ingest::parse_reporting(&bytes, format, &fallback_title, &pages)?;
        let count = |text: &str| for_parser.count_tokens(text);
        let window = Window { max_tokens: for_parser.window(), count: &count, overlap_tokens: DEFAULT_OVERLAP_TOKENS };
        let chunks = book.chunks_within(&window);
        let texts: Vec<String> = chunks.iter().map(|c| book.embedding_text(c)).collect();
        Ok::<_, ingest::IngestError>((book, chunks, texts))
    });
    let parsed = loop {
        tokio::select! {
            parsed = &mut parsing => break parsed,
            () = tokio::time::sleep(std::time::Duration::from_millis(250)) => report(heartbeat.progress()),
        }
    };
    let (book, chunks, texts) = match parsed {
        Err(error) => return Err(Stop::Failed(format!("the parser stopped unexpectedly: {error}"))),
        Ok(Err(ingest::IngestError::Cancelled)) => return Err(Stop::Cancelled),
        Ok(Err(error)) => return Err(Stop::Failed(error.to_string())),
        Ok(Ok(parsed)) => parsed,
    };
    let pages = page_count(&book);
    if chunks.is_empty() {
        return Err(Stop::Failed("no text was found in the file".into()));
    }
    let mut progress =
        JobProgress { pages_done: pages, pages_total: pages, passages_done: 0, passages_total: chunks.len() as i64 };
    let mut vectors = Vec::with_capacity(texts.len());
    for batch in texts.chunks(BATCH) {
        if heartbeat.report(progress).await {
            return Err(Stop::Cancelled);
        }
        report(progress);
        let mut model = if embedder.is_builtin() {
            Vec::new()
        } else {
            embedder.embed_passages(batch.to_vec()).await.map_err(|e| Stop::Failed(format!("{e:#}")))?
        };
        for (i, text) in batch.iter().enumerate() {
            let mut stored = vec![(BUILTIN_MODEL.to_string(), embed::to_bytes(&embed::embed(text)))];
            if let Some(vector) = model.get_mut(i) {
                stored.push((embedder.id().to_string(), embed::to_bytes(vector)));
            }
            vectors.push(stored);
        }
        progress.passages_done = vectors.len() as i64;
    }
    if heartbeat.report(progress).await {
        return Err(Stop::Cancelled);
    }
    report(progress);
    let new_book = new_book(&book, upload, chunks, vectors);
    let record = state.store.insert_book(&new_book, state.now()).await;
    match record {
        Ok(record) => Ok(record),
        Err(StoreError::Conflict(what)) => Err(Stop::Failed(format!("{what} was ingested meanwhile"))),
        Err(error) => {
            tracing::error!(job_id, error = format!("{error:#}"), "cannot store an ingested book");
            Err(Stop::Failed("the book could not be stored; the server log has the cause".into()))
        }
    }
}

/// Returns the number of pages a PDF's text covers; 0 for other formats.
fn page_count(book: &Book) -> i64 {
    let pages = book.sections.iter().flat_map(|s| s.page.into_iter().chain(s.page_starts.iter().map(|p| p.page)));
    pages.max().map_or(0, i64::from)
}

/// Turns a parsed book and its embedded passages into what the store keeps.
fn new_book<'a>(
    book: &'a Book,
    upload: &'a Upload,
    chunks: Vec<learntrac_core::book::Chunk>,
    vectors: Vec<Vec<(String, Vec<u8>)>>,
) -> NewBook<'a> {
    NewBook {
        title: &book.title,
        format: book.format.as_str(),
        source_name: &upload.file_name,
        content_hash: &upload.content_hash,
        sections: book
            .sections
            .iter()
            .map(|s| NewSection {
                level: i64::from(s.level),
                heading: s.heading.clone(),
                body: s.text.clone(),
                page: s.page.map(i64::from),
                references: s.references.iter().map(|&r| r as i64).collect(),
            })
            .collect(),
        chunks: chunks
            .into_iter()
            .zip(vectors)
            .map(|(chunk, vectors)| NewChunk {
                section: chunk.section,
                body: chunk.text,
                page: chunk.page.map(i64::from),
                vectors,
            })
            .collect(),
        created_by: upload.created_by(),
    }
}

/// Keeps a job's row fresh while it works, so that it is not taken for
/// the job of a stopped process, and reads whether it was cancelled.
struct Heartbeat {
    state: AppState,
    job_id: i64,
    progress: Arc<std::sync::Mutex<JobProgress>>,
    /// Held while the row is written, so that an older figure never
    /// overwrites a newer one.
    writing: Arc<tokio::sync::Mutex<()>>,
    /// Set when the job's row shows a cancel request.
    cancelled: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeat {
    fn start(state: &AppState, job_id: i64) -> Heartbeat {
        let progress = Arc::new(std::sync::Mutex::new(JobProgress::default()));
        let writing = Arc::new(tokio::sync::Mutex::new(()));
        let cancelled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (shared, lock, stop) = (progress.clone(), writing.clone(), cancelled.clone());
        let task_state = state.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(std::time::Duration::from_secs(HEARTBEAT_SECONDS));
            loop {
                ticks.tick().await;
                let _writing = lock.lock().await;
                let now = *shared.lock().unwrap_or_else(|p| p.into_inner());
                match task_state.store.job_progress(job_id, now, task_state.now()).await {
                    Ok(requested) => stop.store(requested, std::sync::atomic::Ordering::Relaxed),
                    Err(error) => {
                        tracing::warn!(job_id, error = format!("{error:#}"), "cannot record a job's progress")
                    }
                }
            }
        });
        Heartbeat { state: state.clone(), job_id, progress, writing, cancelled, task }
    }

    /// Returns the progress last recorded.
    fn progress(&self) -> JobProgress {
        *self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records progress and returns whether a cancel was requested.
    async fn report(&self, progress: JobProgress) -> bool {
        let _writing = self.writing.lock().await;
        *self.progress.lock().unwrap_or_else(|p| p.into_inner()) = progress;
        match self.state.store.job_progress(self.job_id, progress, self.state.now()).await {
            Ok(cancelled) => cancelled,
            Err(error) => {
                tracing::warn!(job_id = self.job_id, error = format!("{error:#}"), "cannot record a job's progress");
                false
            }
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Asks a job to stop; an ingestion that stops stores nothing.
pub async fn cancel_job(state: &AppState, id: i64, actor: audit::Actor) -> ApiResult<JobRecord> {
    let job = state
        .store
        .request_job_cancel(id, state.now())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id}")))?;
    if job.state.is_finished() {
        return Err(ApiError::Conflict(format!("job {id} has already ended ({})", job.state.as_str())));
    }
    audit::record(state, actor, "job.cancel", &format!("job:{id}"), "success", "").await;
    Ok(job)
}

/// Deletes a book, removing its passages and their vectors from the store
/// and the index; other processes notice within [`WATCH_SECONDS`].
pub async fn delete_book(state: &AppState, id: i64, actor_id: i64) -> ApiResult<()> {
    if !state.store.delete_book(id).await? {
        return Err(ApiError::NotFound(format!("book {id}")));
    }
    reload_index(state).await?;
    tracing::info!(book_id = id, "book deleted");
    audit::record(state, audit::Actor::User(actor_id), "book.delete", &format!("book:{id}"), "success", "").await;
    Ok(())
}

/// Embeds every passage that has no vector by the configured model yet,
/// as a job, then switches the index to that model and drops the vectors
/// of other models except the built-in one's.
pub async fn reembed(state: &AppState) -> anyhow::Result<()> {
    if state.embedder.is_builtin() {
        return Ok(());
    }
    let model = state.embedder.id().to_string();
    let (total, coverage) = state.store.vector_coverage().await?;
    let done = coverage.iter().find(|(m, _)| *m == model).map_or(0, |(_, n)| *n);
    if done >= total {
        return Ok(());
    }
    if let Some(job) = state.store.pending_job(JobKind::Reembed).await? {
        tracing::info!(job_id = job.id, "the library is already being embedded again");
        return Ok(());
    }
    let job =
        NewJob { kind: JobKind::Reembed, file_name: None, content_hash: None, model: Some(&model), created_by: None };
    let job = state.store.create_job(&job, state.now()).await?;
    tracing::info!(job_id = job.id, model = %model, passages = total - done, "embedding the library with a new model");
    let _slot = state.job_slots.acquire().await.context("the job queue is closed")?;
    state.store.start_job(job.id, state.now()).await?;
    let heartbeat = Heartbeat::start(state, job.id);
    let mut progress = JobProgress { passages_done: done, passages_total: total, ..Default::default() };
    // Books added while the job runs are embedded by the new model when
    // they are ingested, so the outline read now covers every passage left.
    let contexts = section_contexts(&state.store.section_outline().await?);
    loop {
        if heartbeat.report(progress).await {
            state.store.finish_job(job.id, JobState::Cancelled, None, None, state.now()).await?;
            tracing::info!(
                job_id = job.id,
                "embedding the library again was cancelled; search keeps the built-in embedder"
            );
            return Ok(());
        }
        let pending = state.store.chunks_without_vector(&model, BATCH as i64).await?;
        if pending.is_empty() {
            break;
        }
        let texts: Vec<String> = pending
            .iter()
            .map(|c| embedding_text(contexts.get(&c.section_id).map_or("", String::as_str), &c.heading, &c.body))
            .collect();
        let vectors = match state.embedder.embed_passages(texts).await {
            Ok(vectors) => vectors,
            Err(error) => {
                let reason = format!("{error:#}");
                state.store.finish_job(job.id, JobState::Failed, None, Some(&reason), state.now()).await?;
                tracing::warn!(job_id = job.id, reason = %reason, "embedding the library again failed");
                return Ok(());
            }
        };
        let stored: Vec<(i64, Vec<u8>)> =
            pending.iter().zip(&vectors).map(|(c, v)| (c.id, embed::to_bytes(v))).collect();
        state.store.put_vectors(&model, &stored).await?;
        progress.passages_done = (progress.passages_done + stored.len() as i64).min(total);
    }
    drop(heartbeat);
    let dropped = state.store.delete_other_vectors(&[BUILTIN_MODEL, &model]).await?;
    reload_index(state).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    state.store.finish_job(job.id, JobState::Succeeded, None, None, state.now()).await?;
    tracing::info!(job_id = job.id, model = %model, dropped_vectors = dropped, "the library is embedded by the new model");
    Ok(())
}

/// How often the library is checked for changes by other processes.
pub const WATCH_SECONDS: u64 = 10;

/// Reloads the search index when another process (such as
/// `learntrac ingest`) adds or deletes books, and fails jobs whose process
/// stopped. A change this process made is already in the index.
pub async fn watch_library(state: AppState) {
    let mut interval = tokio::time::interval(std::time::Duration::from_secs(WATCH_SECONDS));
    loop {
        interval.tick().await;
        match state.store.fail_stale_jobs(INTERRUPTED, state.now() - STALE_JOB_SECONDS, state.now()).await {
            Ok(0) => {}
            Ok(count) => tracing::warn!(jobs = count, "jobs of a stopped process were marked as failed"),
            Err(error) => tracing::warn!(error = format!("{error:#}"), "cannot check for stale jobs"),
        }
        let current = match state.store.chunk_watermark().await {
            Ok(current) => current,
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "cannot check the library for new books");
                continue;
            }
        };
        if *state.index_watermark.lock().unwrap_or_else(|p| p.into_inner()) == Some(current) {
            continue;
        }
        if let Err(error) = reload_index(&state).await {
            tracing::warn!(error = %error, "cannot reload the search index");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every passage of the corpus books, as MiniLM reads it (headings
    /// included), fits its 256-token window, counted by its own tokenizer.
    #[test]
    fn corpus_passages_fit_the_minilm_window() {
        let (Some(model_dir), Some(corpus)) =
            (std::env::var_os("LEARNTRAC_MINILM_DIR"), std::env::var_os("LEARNTRAC_CORPUS"))
        else {
            assert!(
                std::env::var("LEARNTRAC_REQUIRE_MODEL").as_deref() != Ok("1"),
                "LEARNTRAC_REQUIRE_MODEL=1 but LEARNTRAC_MINILM_DIR or LEARNTRAC_CORPUS is not set"
            );
            eprintln!("skipped: set LEARNTRAC_MINILM_DIR and LEARNTRAC_CORPUS");
            return;
        };
        let model = learntrac_embed::MiniLm::load(std::path::Path::new(&model_dir)).expect("model");
        let corpus = std::path::PathBuf::from(corpus);
        let mut files = vec![corpus.join("R-intro.pdf"), corpus.join("derivations.pdf")];
        let mut chapters: Vec<_> = std::fs::read_dir(corpus.join("python-tutorial"))
            .expect("python-tutorial")
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .collect();
        chapters.sort();
        files.extend(chapters);
        for file in files {
            let name = file.file_name().expect("name").to_string_lossy().to_string();
            let bytes = std::fs::read(&file).expect("read");
            let book = ingest::parse(&bytes, Format::from_file_name(&name).expect("format"), &name).expect("parse");
            let count = |text: &str| model.token_count(text);
            let window =
                Window { max_tokens: model.max_tokens(), count: &count, overlap_tokens: DEFAULT_OVERLAP_TOKENS };
            let chunks = book.chunks_within(&window);
            assert!(!chunks.is_empty(), "{name}");
            for chunk in &chunks {
                let tokens = model.token_count(&book.embedding_text(chunk));
                assert!(tokens <= model.max_tokens(), "{name}: a passage of {tokens} tokens: {:?}", chunk.text);
            }
        }
    }
}
