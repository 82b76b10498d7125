//! The knowledge graph as SVG: one node per concept, an arrow from each
//! prerequisite to the concept that needs it, coloured by status.

use std::fmt::Write;

use learntrac_store::{Ticket, TicketStatus};

use crate::pages::escape;

const NODE_WIDTH: i64 = 220;
const NODE_HEIGHT: i64 = 54;
const COLUMN_GAP: i64 = 70;
const ROW_GAP: i64 = 24;
const MARGIN: i64 = 20;

/// Fill colour of a node: grey for new, orange for studying, green for mastered.
pub fn status_colour(status: TicketStatus) -> &'static str {
    match status {
        TicketStatus::New => "#c8c8c8",
        TicketStatus::Studying => "#f5a623",
        TicketStatus::Mastered => "#4caf50",
    }
}

/// Lays the concepts out in columns by prerequisite depth (a concept sits
/// one column right of its deepest prerequisite) and draws them.
pub fn svg(tickets: &[Ticket]) -> String {
    let mut depth: Vec<usize> = vec![0; tickets.len()];
    // Prerequisites always come earlier in a path, so one pass in order suffices.
    for (i, ticket) in tickets.iter().enumerate() {
        for prerequisite in &ticket.prerequisites {
            if let Some(j) = tickets[..i].iter().position(|t| t.id == *prerequisite) {
                depth[i] = depth[i].max(depth[j] + 1);
            }
        }
    }
    let columns = depth.iter().max().map_or(0, |d| d + 1);
    let mut rows_used = vec![0i64; columns.max(1)];
    let mut positions: Vec<(i64, i64)> = Vec::with_capacity(tickets.len());
    for &d in &depth {
        let x = MARGIN + d as i64 * (NODE_WIDTH + COLUMN_GAP);
        let y = MARGIN + rows_used[d] * (NODE_HEIGHT + ROW_GAP);
        rows_used[d] += 1;
        positions.push((x, y));
    }
    let width = MARGIN * 2 + columns.max(1) as i64 * (NODE_WIDTH + COLUMN_GAP) - COLUMN_GAP;
    let height = MARGIN * 2 + rows_used.iter().max().copied().unwrap_or(1).max(1) * (NODE_HEIGHT + ROW_GAP) - ROW_GAP;

    let mut out = String::new();
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" xmlns:xlink=\"http://www.w3.org/1999/xlink\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"Knowledge graph\" font-family=\"sans-serif\" font-size=\"13\">\
         <defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"8\" markerHeight=\"8\" orient=\"auto-start-reverse\">\
         <path d=\"M 0 0 L 10 5 L 0 10 z\" fill=\"#555\"/></marker></defs>"
    );
    for (i, ticket) in tickets.iter().enumerate() {
        for prerequisite in &ticket.prerequisites {
            let Some(j) = tickets.iter().position(|t| t.id == *prerequisite) else {
                continue;
            };
            let (x1, y1) = (positions[j].0 + NODE_WIDTH, positions[j].1 + NODE_HEIGHT / 2);
            let (x2, y2) = (positions[i].0, positions[i].1 + NODE_HEIGHT / 2);
            let _ = write!(
                out,
                "<line class=\"prerequisite\" data-from=\"{}\" data-to=\"{}\" x1=\"{x1}\" y1=\"{y1}\" x2=\"{x2}\" y2=\"{y2}\" stroke=\"#555\" stroke-width=\"1.5\" marker-end=\"url(#arrow)\"/>",
                tickets[j].id, ticket.id
            );
        }
    }
    for (ticket, (x, y)) in tickets.iter().zip(&positions) {
        let label = learntrac_core::text::excerpt(&ticket.concept, 28);
        let _ = write!(
            out,
            "<a href=\"/ticket/{id}\" xlink:href=\"/ticket/{id}\"><g class=\"concept\" data-ticket=\"{id}\" data-status=\"{status}\">\
             <title>{title} ({status})</title>\
             <rect x=\"{x}\" y=\"{y}\" width=\"{NODE_WIDTH}\" height=\"{NODE_HEIGHT}\" rx=\"8\" fill=\"{fill}\" stroke=\"#333\"/>\
             <text x=\"{tx}\" y=\"{ty}\" text-anchor=\"middle\">{label}</text>\
             <text x=\"{tx}\" y=\"{ty2}\" text-anchor=\"middle\" font-size=\"11\">#{id} · {status}</text></g></a>",
            id = ticket.id,
            status = ticket.status.as_str(),
            title = escape(&ticket.heading),
            fill = status_colour(ticket.status),
            tx = x + NODE_WIDTH / 2,
            ty = y + 23,
            ty2 = y + 41,
            label = escape(&label),
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(id: i64, concept: &str, status: TicketStatus, prerequisites: Vec<i64>) -> Ticket {
        Ticket {
            id,
            path_id: 1,
            owner_id: 1,
            section_id: None,
            position: id,
            concept: concept.into(),
            heading: concept.into(),
            question: String::new(),
            expected_answer: String::new(),
            key_terms: vec![],
            difficulty: 1,
            status,
            prerequisites,
            milestone: String::new(),
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn nodes_are_coloured_links_and_arrows_follow_prerequisites() {
        let tickets = vec![
            ticket(1, "Vectors", TicketStatus::Mastered, vec![]),
            ticket(2, "Missing <values>", TicketStatus::Studying, vec![1]),
            ticket(3, "Factors", TicketStatus::New, vec![]),
        ];
        let svg = svg(&tickets);
        assert!(svg.contains("href=\"/ticket/2\""));
        assert!(svg.contains("fill=\"#4caf50\""), "mastered is green");
        assert!(svg.contains("fill=\"#f5a623\""), "studying is orange");
        assert!(svg.contains("fill=\"#c8c8c8\""), "new is grey");
        assert!(svg.contains("data-from=\"1\" data-to=\"2\""));
        assert_eq!(svg.matches("class=\"prerequisite\"").count(), 1);
        assert!(svg.contains("Missing &lt;values&gt;"), "labels are escaped");
    }
}
