use sqlx::Row;

use crate::{Result, Store, StoreError, sql};

/// The ticket workflow: new -> studying -> mastered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TicketStatus {
    New,
    Studying,
    Mastered,
}

impl TicketStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TicketStatus::New => "new",
            TicketStatus::Studying => "studying",
            TicketStatus::Mastered => "mastered",
        }
    }

    fn parse(value: &str) -> Result<TicketStatus> {
        match value {
            "new" => Ok(TicketStatus::New),
            "studying" => Ok(TicketStatus::Studying),
            "mastered" => Ok(TicketStatus::Mastered),
            other => Err(StoreError::Corrupt(format!("ticket status {other:?}"))),
        }
    }
}

/// A ticket to create; `prerequisites` are indices of earlier tickets in
/// the same batch.
pub struct NewTicket {
    pub section_id: Option<i64>,
    pub concept: String,
    pub heading: String,
    pub question: String,
    pub expected_answer: String,
    pub key_terms: Vec<String>,
    pub difficulty: u8,
    pub prerequisites: Vec<usize>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Ticket {
    pub id: i64,
    pub path_id: i64,
    pub owner_id: i64,
    pub section_id: Option<i64>,
    pub position: i64,
    pub concept: String,
    pub heading: String,
    pub question: String,
    pub expected_answer: String,
    pub key_terms: Vec<String>,
    pub difficulty: i64,
    pub status: TicketStatus,
    pub prerequisites: Vec<i64>,
    pub milestone: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct PathRecord {
    pub id: i64,
    pub owner_id: i64,
    pub goal: String,
    pub milestone_id: i64,
    pub milestone: String,
    pub created_at: i64,
    pub tickets: Vec<Ticket>,
}

/// One row of a roadmap: a path with its progress counts.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PathSummary {
    pub id: i64,
    pub owner_id: i64,
    pub owner_email: String,
    pub goal: String,
    pub milestone: String,
    pub created_at: i64,
    pub total: i64,
    pub studying: i64,
    pub mastered: i64,
}

pub struct NewAnswer<'a> {
    pub ticket_id: i64,
    pub user_id: i64,
    pub body: &'a str,
    pub score: f64,
    pub feedback: &'a str,
    pub suggestions: &'a [String],
    pub status: TicketStatus,
    pub now: i64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Answer {
    pub id: i64,
    pub ticket_id: i64,
    pub user_id: i64,
    pub answer: String,
    pub score: f64,
    pub feedback: String,
    pub suggestions: Vec<String>,
    pub created_at: i64,
}

/// Lists are stored as text, one item per line, so that both databases
/// store them the same way.
fn encode_list(items: &[String]) -> String {
    items.iter().map(|s| s.replace('\n', " ")).collect::<Vec<_>>().join("\n")
}

fn decode_list(value: &str) -> Vec<String> {
    value.lines().filter(|l| !l.is_empty()).map(str::to_string).collect()
}

const TICKET_SELECT: &str = "SELECT t.id, t.path_id, t.owner_id, t.section_id, t.position, t.concept, t.heading, \
    t.question, t.expected_answer, t.key_terms, t.difficulty, t.status, t.created_at, t.updated_at, m.name AS milestone \
    FROM tickets t JOIN paths p ON p.id = t.path_id JOIN milestones m ON m.id = p.milestone_id";

fn ticket_from_row(row: &sqlx::any::AnyRow) -> Result<Ticket> {
    Ok(Ticket {
        id: row.try_get("id")?,
        path_id: row.try_get("path_id")?,
        owner_id: row.try_get("owner_id")?,
        section_id: row.try_get("section_id")?,
        position: row.try_get("position")?,
        concept: row.try_get("concept")?,
        heading: row.try_get("heading")?,
        question: row.try_get("question")?,
        expected_answer: row.try_get("expected_answer")?,
        key_terms: decode_list(&row.try_get::<String, _>("key_terms")?),
        difficulty: row.try_get("difficulty")?,
        status: TicketStatus::parse(&row.try_get::<String, _>("status")?)?,
        prerequisites: Vec::new(),
        milestone: row.try_get("milestone")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl Store {
    /// Creates a milestone named `subject`, a path and its tickets with
    /// their prerequisite links, all in one transaction.
    pub async fn create_path(
        &self,
        owner_id: i64,
        goal: &str,
        subject: &str,
        tickets: &[NewTicket],
        now: i64,
    ) -> Result<PathRecord> {
        let mut tx = self.pool.begin().await?;
        let milestone_id: i64 =
            sqlx::query("INSERT INTO milestones (name, description, created_at) VALUES ($1, $2, $3) RETURNING id")
                .bind(subject)
                .bind(goal)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?
                .try_get("id")?;
        let path_id: i64 = sqlx::query(
            "INSERT INTO paths (owner_id, goal, milestone_id, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(owner_id)
        .bind(goal)
        .bind(milestone_id)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?
        .try_get("id")?;

        let mut ids: Vec<i64> = Vec::with_capacity(tickets.len());
        for (position, ticket) in tickets.iter().enumerate() {
            let id: i64 = sqlx::query(
                "INSERT INTO tickets (path_id, owner_id, section_id, position, concept, heading, question, \
                 expected_answer, key_terms, difficulty, status, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'new', $11, $11) RETURNING id",
            )
            .bind(path_id)
            .bind(owner_id)
            .bind(ticket.section_id)
            .bind(position as i64)
            .bind(&ticket.concept)
            .bind(&ticket.heading)
            .bind(&ticket.question)
            .bind(&ticket.expected_answer)
            .bind(encode_list(&ticket.key_terms))
            .bind(i64::from(ticket.difficulty))
            .bind(now)
            .fetch_one(&mut *tx)
            .await?
            .try_get("id")?;
            for &prerequisite in &ticket.prerequisites {
                let Some(&prerequisite_id) = ids.get(prerequisite) else {
                    return Err(StoreError::Corrupt(format!(
                        "ticket {position} names prerequisite {prerequisite}, which is not an earlier ticket"
                    )));
                };
                sqlx::query("INSERT INTO ticket_prerequisites (ticket_id, prerequisite_id) VALUES ($1, $2)")
                    .bind(id)
                    .bind(prerequisite_id)
                    .execute(&mut *tx)
                    .await?;
            }
            ids.push(id);
        }
        tx.commit().await?;

        self.path(path_id).await?.ok_or_else(|| StoreError::Corrupt(format!("path {path_id} vanished after insert")))
    }

    /// Loads a path with its tickets in order.
    pub async fn path(&self, id: i64) -> Result<Option<PathRecord>> {
        let Some(row) = sqlx::query(
            "SELECT p.id, p.owner_id, p.goal, p.milestone_id, p.created_at, m.name FROM paths p \
             JOIN milestones m ON m.id = p.milestone_id WHERE p.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let rows = sqlx::query(sql(format!("{TICKET_SELECT} WHERE t.path_id = $1 ORDER BY t.position")))
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        let mut tickets = rows.iter().map(ticket_from_row).collect::<Result<Vec<_>>>()?;
        let links = sqlx::query(
            "SELECT l.ticket_id, l.prerequisite_id FROM ticket_prerequisites l JOIN tickets t ON t.id = l.ticket_id \
             WHERE t.path_id = $1 ORDER BY l.prerequisite_id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        for link in &links {
            let ticket_id: i64 = link.try_get("ticket_id")?;
            let prerequisite_id: i64 = link.try_get("prerequisite_id")?;
            if let Some(ticket) = tickets.iter_mut().find(|t| t.id == ticket_id) {
                ticket.prerequisites.push(prerequisite_id);
            }
        }
        Ok(Some(PathRecord {
            id: row.try_get("id")?,
            owner_id: row.try_get("owner_id")?,
            goal: row.try_get("goal")?,
            milestone_id: row.try_get("milestone_id")?,
            milestone: row.try_get("name")?,
            created_at: row.try_get("created_at")?,
            tickets,
        }))
    }

    /// Lists paths with progress counts: one owner's, or everyone's when
    /// `owner_id` is `None`. Newest first.
    pub async fn path_summaries(&self, owner_id: Option<i64>) -> Result<Vec<PathSummary>> {
        let rows = sqlx::query(
            "SELECT p.id, p.owner_id, u.email, p.goal, m.name, p.created_at, \
             (SELECT COUNT(*) FROM tickets t WHERE t.path_id = p.id) AS total, \
             (SELECT COUNT(*) FROM tickets t WHERE t.path_id = p.id AND t.status = 'studying') AS studying, \
             (SELECT COUNT(*) FROM tickets t WHERE t.path_id = p.id AND t.status = 'mastered') AS mastered \
             FROM paths p JOIN milestones m ON m.id = p.milestone_id JOIN users u ON u.id = p.owner_id \
             WHERE ($1 IS NULL OR p.owner_id = $1) ORDER BY p.id DESC",
        )
        .bind(owner_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PathSummary {
                    id: r.try_get("id")?,
                    owner_id: r.try_get("owner_id")?,
                    owner_email: r.try_get("email")?,
                    goal: r.try_get("goal")?,
                    milestone: r.try_get("name")?,
                    created_at: r.try_get("created_at")?,
                    total: r.try_get("total")?,
                    studying: r.try_get("studying")?,
                    mastered: r.try_get("mastered")?,
                })
            })
            .collect()
    }

    /// Loads one ticket with its prerequisites.
    pub async fn ticket(&self, id: i64) -> Result<Option<Ticket>> {
        let Some(row) =
            sqlx::query(sql(format!("{TICKET_SELECT} WHERE t.id = $1"))).bind(id).fetch_optional(&self.pool).await?
        else {
            return Ok(None);
        };
        let mut ticket = ticket_from_row(&row)?;
        let links = sqlx::query(
            "SELECT prerequisite_id FROM ticket_prerequisites WHERE ticket_id = $1 ORDER BY prerequisite_id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        for link in &links {
            ticket.prerequisites.push(link.try_get("prerequisite_id")?);
        }
        Ok(Some(ticket))
    }

    /// Stores a graded answer and moves the ticket to the status it earned,
    /// in one transaction. A mastered ticket stays mastered.
    pub async fn record_answer(&self, answer: &NewAnswer<'_>) -> Result<Answer> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "INSERT INTO answers (ticket_id, user_id, body, score, feedback, suggestions, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(answer.ticket_id)
        .bind(answer.user_id)
        .bind(answer.body)
        .bind(answer.score)
        .bind(answer.feedback)
        .bind(encode_list(answer.suggestions))
        .bind(answer.now)
        .fetch_one(&mut *tx)
        .await?;
        let id: i64 = row.try_get("id")?;
        sqlx::query("UPDATE tickets SET status = $1, updated_at = $2 WHERE id = $3 AND status <> 'mastered'")
            .bind(answer.status.as_str())
            .bind(answer.now)
            .bind(answer.ticket_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Answer {
            id,
            ticket_id: answer.ticket_id,
            user_id: answer.user_id,
            answer: answer.body.to_string(),
            score: answer.score,
            feedback: answer.feedback.to_string(),
            suggestions: answer.suggestions.to_vec(),
            created_at: answer.now,
        })
    }

    /// Lists every answer to a ticket, oldest first.
    pub async fn answers(&self, ticket_id: i64) -> Result<Vec<Answer>> {
        let rows = sqlx::query(
            "SELECT id, ticket_id, user_id, body, score, feedback, suggestions, created_at FROM answers \
             WHERE ticket_id = $1 ORDER BY id",
        )
        .bind(ticket_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Answer {
                    id: r.try_get("id")?,
                    ticket_id: r.try_get("ticket_id")?,
                    user_id: r.try_get("user_id")?,
                    answer: r.try_get("body")?,
                    score: r.try_get("score")?,
                    feedback: r.try_get("feedback")?,
                    suggestions: decode_list(&r.try_get::<String, _>("suggestions")?),
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Group;
    use crate::testing::memory_store;

    fn new_ticket(concept: &str, prerequisites: Vec<usize>) -> NewTicket {
        NewTicket {
            section_id: None,
            concept: concept.into(),
            heading: concept.into(),
            question: format!("What is {concept}?"),
            expected_answer: "An answer.".into(),
            key_terms: vec!["answer".into(), "term".into()],
            difficulty: 2,
            prerequisites,
        }
    }

    #[tokio::test]
    async fn path_tickets_and_answers() {
        let store = memory_store().await;
        let user = store.create_user("l@x.org", "L", "h", &[Group::Students], false, 0).await.expect("user");
        let path = store
            .create_path(user.id, "learn R", "R", &[new_ticket("Vectors", vec![]), new_ticket("NA", vec![0])], 1)
            .await
            .expect("path");
        assert_eq!(path.tickets.len(), 2);
        assert_eq!(path.tickets[1].prerequisites, [path.tickets[0].id]);
        assert_eq!(path.tickets[0].key_terms, ["answer", "term"]);
        assert_eq!(path.milestone, "R");

        let ticket = path.tickets[1].id;
        let suggestions = vec!["Reread it.".to_string()];
        for (score, status) in
            [(0.3, TicketStatus::Studying), (0.9, TicketStatus::Mastered), (0.1, TicketStatus::Studying)]
        {
            store
                .record_answer(&NewAnswer {
                    ticket_id: ticket,
                    user_id: user.id,
                    body: "some words here",
                    score,
                    feedback: "ok",
                    suggestions: &suggestions,
                    status,
                    now: 2,
                })
                .await
                .expect("answer");
        }
        let answers = store.answers(ticket).await.expect("answers");
        assert_eq!(answers.len(), 3);
        assert_eq!(answers[0].suggestions, suggestions);
        let stored = store.ticket(ticket).await.expect("ticket").expect("found");
        assert_eq!(stored.status, TicketStatus::Mastered, "mastery is kept after a weaker answer");

        let summaries = store.path_summaries(Some(user.id)).await.expect("summaries");
        assert_eq!(summaries[0].mastered, 1);
        assert_eq!(summaries[0].total, 2);
        assert!(store.path_summaries(Some(user.id + 1)).await.expect("other").is_empty());
        assert_eq!(store.path_summaries(None).await.expect("all").len(), 1);
    }
}
