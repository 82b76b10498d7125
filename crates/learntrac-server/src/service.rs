//! The roles' work on the domain: creating learning paths and grading
//! answers, with the visibility rules for paths and tickets (the library
//! and search are in [`crate::library`]). HTTP handlers call these for
//! anything beyond a plain read; only the store runs SQL.

use learntrac_core::search::Scoring;
use learntrac_core::{grade, path};
use learntrac_store::{Answer, NewAnswer, NewTicket, PathRecord, Ticket, TicketStatus};

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
    if learntrac_core::text::terms(goal).is_empty() && learntrac_core::text::identifiers(goal).is_empty() {
        return Err(ApiError::bad_request("invalid_query", "the query has no searchable words; name the topic"));
    }
    Ok(goal)
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
    let found = crate::library::search(state, goal, MAX_PASSAGES).await?;
    let hits = found.hits;
    if hits.is_empty() {
        return Err(ApiError::bad_request(
            "nothing_found",
            "the library has no passage about this goal; ingest a book on the subject or rephrase the goal",
        ));
    }

    // Sections far below the best match are usually about something else
    // that shares a word with the goal.
    let floor = hits[0].relevance * RELATIVE_RELEVANCE;
    // A sentence-embedding model finds sections that put the goal in other
    // words, so only the built-in embedder's hits must contain its terms.
    let hybrid = found.scoring == Scoring::Hybrid;
    let coverage_floor =
        if hybrid { hits.iter().map(|h| h.coverage).fold(0.0, f32::max) * RELATIVE_COVERAGE } else { 0.0 };
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
    // A section that a chosen one names ("see Section 2.5") joins the path
    // as its prerequisite, even when the search did not find it.
    let mut next = 0;
    while next < sections.len() && sections.len() < max_concepts {
        let (book_id, references) = (sections[next].book_id, sections[next].references.clone());
        for position in references {
            if sections.len() >= max_concepts {
                break;
            }
            if sections.iter().any(|s| s.book_id == book_id && s.position == position) {
                continue;
            }
            if let Some(section) = state.store.section_at(book_id, position).await? {
                sections.push(section);
            }
        }
        next += 1;
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
            references: &s.references,
        })
        .collect();
    let plan = path::plan(&mut candidates);
    if plan.rejected_references > 0 {
        tracing::info!(
            references = plan.rejected_references,
            "cross-references that would make prerequisites circular were left out of the path"
        );
    }
    let planned = plan.concepts;

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
