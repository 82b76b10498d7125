//! What the roles do with the domain: ingest books, search the library,
//! create learning paths and grade answers, with the visibility rules for
//! paths and tickets. HTTP handlers call these for anything beyond a plain
//! read; only the store runs SQL.

use anyhow::Context;
use learntrac_core::book::{Book, Format};
use learntrac_core::search::{Hit, Index, Passage, embedding_text};
use learntrac_core::{embed, grade, ingest, path};
use learntrac_store::{Answer, BookRecord, NewAnswer, NewChunk, NewTicket, PathRecord, Store, Ticket, TicketStatus};

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::{AppState, audit};

/// Most passages a search returns.
pub const MAX_PASSAGES: usize = 20;
/// Number of concepts in a new path when the request names none.
pub const DEFAULT_CONCEPTS: usize = 8;
/// Maximum `max_concepts` a request may ask for.
pub const MAX_CONCEPTS: usize = 20;
/// Minimum share of the goal's information (its terms weighted by rarity)
/// that a path's passage must contain, relative to the passage that contains
/// the most. A section that shares only a common word with the goal is left
/// out, while a broad goal still finds many sections.
const RELATIVE_COVERAGE: f32 = 0.4;
/// A path keeps passages whose relevance is at least this share of the best one's.
const RELATIVE_RELEVANCE: f32 = 0.5;
/// Maximum length of a goal or search query, in characters.
const MAX_GOAL_CHARS: usize = 500;

/// Builds the in-memory search index from every stored chunk.
pub async fn load_index(store: &Store) -> anyhow::Result<Index> {
    let contexts = section_contexts(&store.section_outline().await?);
    let chunks = store.all_chunks().await?;
    let mut index = Index::new();
    for chunk in chunks {
        let Some(embedding) = embed::from_bytes(&chunk.embedding) else {
            tracing::warn!(chunk_id = chunk.id, "stored embedding has an invalid length; chunk left out of the index");
            continue;
        };
        index.insert(
            Passage {
                chunk_id: chunk.id,
                book_id: chunk.book_id,
                section_id: chunk.section_id,
                book_title: chunk.book_title,
                heading: chunk.heading,
                context: contexts.get(&chunk.section_id).cloned().unwrap_or_default(),
                text: chunk.body,
            },
            embedding,
        );
    }
    tracing::info!(chunks = index.len(), "search index loaded");
    Ok(index)
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

/// Parses, chunks, embeds and stores a book, then adds it to the index.
pub async fn ingest_book(
    state: &AppState,
    bytes: Vec<u8>,
    file_name: &str,
    created_by: Option<i64>,
) -> ApiResult<BookRecord> {
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
    let content_hash = crate::sha256_hex_bytes(&bytes);
    let fallback_title = file_name.rsplit_once('.').map_or(file_name, |(stem, _)| stem).to_string();
    let (book, chunks) = tokio::task::spawn_blocking(move || parse_and_embed(&bytes, format, &fallback_title))
        .await
        .context("the ingestion task failed")?
        .map_err(|e| ApiError::bad_request("unreadable_book", format!("{file_name}: {e}")))?;
    if chunks.is_empty() {
        return Err(ApiError::bad_request("unreadable_book", format!("{file_name}: no text was found")));
    }
    let record = state.store.insert_book(&book, file_name, &content_hash, &chunks, created_by, state.now()).await?;
    reload_index(state).await?;
    tracing::info!(book_id = record.id, title = %record.title, sections = record.sections, chunks = record.chunks, "book ingested");
    let actor = created_by.map_or(audit::Actor::Cli, audit::Actor::User);
    let details = format!("{file_name}: {} sections, {} passages", record.sections, record.chunks);
    audit::record(state, actor, "book.create", &format!("book:{}", record.id), "success", &details).await;
    Ok(record)
}

/// Rebuilds the index from the store, which gives new chunks their stored ids.
async fn reload_index(state: &AppState) -> ApiResult<()> {
    let index = load_index(&state.store).await?;
    *state.index.write().unwrap_or_else(|p| p.into_inner()) = index;
    Ok(())
}

/// Deletes a book and removes its passages from the index; `actor_id` is
/// the user who asked.
pub async fn delete_book(state: &AppState, id: i64, actor_id: i64) -> ApiResult<()> {
    if !state.store.delete_book(id).await? {
        return Err(ApiError::NotFound(format!("book {id}")));
    }
    reload_index(state).await?;
    tracing::info!(book_id = id, "book deleted");
    audit::record(state, audit::Actor::User(actor_id), "book.delete", &format!("book:{id}"), "success", "").await;
    Ok(())
}

fn parse_and_embed(
    bytes: &[u8],
    format: Format,
    fallback_title: &str,
) -> Result<(Book, Vec<NewChunk>), ingest::IngestError> {
    let book = ingest::parse(bytes, format, fallback_title)?;
    let chunks = book
        .chunks()
        .into_iter()
        .map(|chunk| {
            let heading = &book.sections[chunk.section].heading;
            let vector = embed::embed(&embedding_text(&book.context(chunk.section), heading, &chunk.text));
            NewChunk { section: chunk.section, body: chunk.text, embedding: embed::to_bytes(&vector) }
        })
        .collect();
    Ok((book, chunks))
}

/// Checks a goal or search query and returns it trimmed.
pub fn validate_goal(goal: &str) -> ApiResult<&str> {
    let goal = goal.trim();
    if goal.is_empty() {
        return Err(ApiError::bad_request("invalid_query", "the query is empty; describe what you want to learn"));
    }
    if goal.chars().count() > MAX_GOAL_CHARS {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("the query is longer than {MAX_GOAL_CHARS} characters; shorten it"),
        ));
    }
    if learntrac_core::text::terms(goal).is_empty() {
        return Err(ApiError::bad_request("invalid_query", "the query has no searchable words; name the topic"));
    }
    Ok(goal)
}

/// Searches the library for passages about `query`.
pub fn search(state: &AppState, query: &str, limit: usize) -> ApiResult<Vec<Hit>> {
    let query = validate_goal(query)?;
    let index = state.index.read().unwrap_or_else(|p| p.into_inner());
    Ok(index.search(query, limit.clamp(1, MAX_PASSAGES), state.config.min_relevance))
}

/// Creates a path for `owner` from the passages found for `goal`: one
/// ticket per section found, at most `max_concepts`.
pub async fn create_path(
    state: &AppState,
    owner: &Principal,
    goal: &str,
    max_concepts: usize,
) -> ApiResult<PathRecord> {
    let goal = validate_goal(goal)?;
    if !(1..=MAX_CONCEPTS).contains(&max_concepts) {
        return Err(ApiError::bad_request(
            "invalid_max_concepts",
            format!("max_concepts must be from 1 to {MAX_CONCEPTS}"),
        ));
    }
    let hits = search(state, goal, MAX_PASSAGES)?;
    if hits.is_empty() {
        return Err(ApiError::bad_request(
            "nothing_found",
            "the library has no passage about this goal; ingest a book on the subject or rephrase the goal",
        ));
    }

    // Sections far below the best match are usually about something else
    // that shares a word with the goal.
    let floor = hits[0].relevance * RELATIVE_RELEVANCE;
    let coverage_floor = hits.iter().map(|h| h.coverage).fold(0.0, f32::max) * RELATIVE_COVERAGE;
    let mut section_ids: Vec<i64> = Vec::new();
    for hit in hits.iter().filter(|h| h.relevance >= floor && h.coverage >= coverage_floor) {
        if !section_ids.contains(&hit.passage.section_id) && section_ids.len() < max_concepts {
            section_ids.push(hit.passage.section_id);
        }
    }
    if section_ids.is_empty() {
        section_ids.push(hits[0].passage.section_id);
    }
    let mut sections = Vec::with_capacity(section_ids.len());
    for id in section_ids {
        if let Some(section) = state.store.section(id).await? {
            sections.push(section);
        }
    }
    let titles: std::collections::HashMap<i64, &str> =
        hits.iter().map(|h| (h.passage.book_id, h.passage.book_title.as_str())).collect();
    let mut candidates: Vec<path::Candidate<'_>> = sections
        .iter()
        .map(|s| path::Candidate {
            section_id: s.id,
            book_id: s.book_id,
            book_title: titles.get(&s.book_id).copied().unwrap_or_default(),
            position: s.position,
            book_position: s.position as f32 / s.book_sections.max(1) as f32,
            heading: &s.heading,
            text: &s.body,
            references: &[],
        })
        .collect();
    let planned = path::plan(&mut candidates).concepts;

    let subject = hits[0].passage.book_title.clone();
    let tickets: Vec<NewTicket> = planned
        .into_iter()
        .map(|p| NewTicket {
            section_id: Some(p.section_id),
            concept: p.concept,
            heading: p.heading,
            question: p.question.question,
            expected_answer: p.question.expected_answer,
            key_terms: p.question.key_terms,
            difficulty: p.question.difficulty,
            prerequisites: p.prerequisites,
        })
        .collect();
    let record = state.store.create_path(owner.user_id, goal, &subject, &tickets, state.now()).await?;
    tracing::info!(path_id = record.id, user_id = owner.user_id, tickets = record.tickets.len(), "path created");
    let details = format!("{} tickets", record.tickets.len());
    let target = format!("path:{}", record.id);
    audit::record(state, audit::Actor::User(owner.user_id), "path.create", &target, "success", &details).await;
    Ok(record)
}

/// Loads a path that `user` may see: their own, or any for staff.
pub async fn visible_path(state: &AppState, user: &Principal, id: i64) -> ApiResult<PathRecord> {
    match state.store.path(id).await? {
        Some(path) if path.owner_id == user.user_id || user.is_staff() => Ok(path),
        // Another learner's path is reported as missing, not as forbidden,
        // so that ids cannot be probed.
        _ => Err(ApiError::NotFound(format!("path {id}"))),
    }
}

/// Loads a ticket that `user` may see.
pub async fn visible_ticket(state: &AppState, user: &Principal, id: i64) -> ApiResult<Ticket> {
    match state.store.ticket(id).await? {
        Some(ticket) if ticket.owner_id == user.user_id || user.is_staff() => Ok(ticket),
        _ => Err(ApiError::NotFound(format!("ticket {id}"))),
    }
}

/// Grades and stores an answer by the ticket's owner.
/// Returns the stored answer, whether this answer reached mastery, and the
/// ticket's status after it.
pub async fn answer(
    state: &AppState,
    user: &Principal,
    ticket_id: i64,
    body: &str,
) -> ApiResult<(Answer, bool, TicketStatus)> {
    let ticket = visible_ticket(state, user, ticket_id).await?;
    if ticket.owner_id != user.user_id {
        return Err(ApiError::Forbidden("only the learner who owns this ticket can answer it".into()));
    }
    let graded = grade::grade(body, &ticket.expected_answer, &ticket.key_terms, &ticket.heading)
        .map_err(|e| ApiError::bad_request("invalid_answer", e.to_string()))?;
    let status = if graded.mastered() { TicketStatus::Mastered } else { TicketStatus::Studying };
    let stored = state
        .store
        .record_answer(&NewAnswer {
            ticket_id,
            user_id: user.user_id,
            body: body.trim(),
            // The grader already rounds to two decimals; this keeps them exact in f64.
            score: (f64::from(graded.score) * 100.0).round() / 100.0,
            feedback: &graded.feedback,
            suggestions: &graded.suggestions,
            status,
            now: state.now(),
        })
        .await?;
    // A mastered ticket stays mastered after a weaker answer.
    let final_status = if ticket.status == TicketStatus::Mastered { TicketStatus::Mastered } else { status };
    let details = format!("answer {} scored {:.2}", stored.id, stored.score);
    let target = format!("ticket:{ticket_id}");
    audit::record(state, audit::Actor::User(user.user_id), "answer.create", &target, "success", &details).await;
    Ok((stored, graded.mastered(), final_status))
}

/// Reloads the search index when another process (such as
/// `learntrac ingest`) adds or deletes books. Checks every 10 seconds; the
/// first check always reloads, so a book added while the server started is
/// not missed.
pub async fn watch_library(state: AppState) {
    let mut known = None;
    let mut interval = tokio::time::interval(std::time::Duration::from_secs(10));
    loop {
        interval.tick().await;
        let current = match state.store.chunk_watermark().await {
            Ok(current) => current,
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "cannot check the library for new books");
                continue;
            }
        };
        if Some(current) == known {
            continue;
        }
        match reload_index(&state).await {
            Ok(()) => known = Some(current),
            Err(error) => tracing::warn!(error = %error, "cannot reload the search index"),
        }
    }
}
