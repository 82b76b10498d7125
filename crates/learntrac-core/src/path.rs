//! Plans a learning path: orders the concepts found for a goal as the
//! book teaches them and links each to the earlier concepts it builds on.

use crate::book::strip_number;
use crate::question::{self, Question};
use crate::text;

/// A section chosen for the path.
pub struct Candidate<'a> {
    pub section_id: i64,
    pub book_id: i64,
    /// Title of the section's book; a leading number ("5. Data Structures")
    /// orders the chapters of a book stored as one file per chapter.
    pub book_title: &'a str,
    /// Order of the section within its book.
    pub position: i64,
    /// `position` divided by the number of sections in the book.
    pub book_position: f32,
    pub heading: &'a str,
    pub text: &'a str,
}

#[derive(Clone, Debug)]
pub struct PlannedConcept {
    pub section_id: i64,
    pub concept: String,
    pub heading: String,
    pub question: Question,
    /// Indices of earlier concepts in the plan.
    pub prerequisites: Vec<usize>,
}

/// At most this many prerequisites are linked to one concept.
const MAX_PREREQUISITES: usize = 3;

/// Returns the number that starts a title such as "5. Data Structures" or
/// "12 Graphical procedures", if any.
fn leading_number(title: &str) -> Option<u32> {
    let digits: String = title.trim_start().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Orders `candidates` by book and position and generates each concept's
/// question. A concept depends on each earlier concept of the same book
/// whose name its text uses. One that uses none depends on the concept just
/// before it in the same book, so that the path reads as the book teaches.
pub fn plan(candidates: &mut [Candidate<'_>]) -> Vec<PlannedConcept> {
    // Books whose titles are numbered chapters sort by that number, so the
    // pages of a tutorial ingested in any order come out as it teaches them.
    candidates.sort_by_key(|c| (leading_number(c.book_title).unwrap_or(u32::MAX), c.book_id, c.position));
    let mut planned: Vec<PlannedConcept> = Vec::with_capacity(candidates.len());
    for (index, candidate) in candidates.iter().enumerate() {
        let concept = strip_number(candidate.heading).to_string();
        let text_terms = text::terms(candidate.text);

        let mut prerequisites: Vec<usize> = (0..index)
            .rev()
            .filter(|&j| candidates[j].book_id == candidate.book_id)
            .filter(|&j| {
                let earlier = text::terms(&planned[j].concept);
                !earlier.is_empty() && earlier.iter().all(|t| text_terms.contains(t))
            })
            .take(MAX_PREREQUISITES)
            .collect();
        if prerequisites.is_empty() && index > 0 && candidates[index - 1].book_id == candidate.book_id {
            prerequisites.push(index - 1);
        }
        prerequisites.sort_unstable();

        let question = question::generate(&question::Source {
            concept: &concept,
            text: candidate.text,
            book_position: candidate.book_position,
        });
        planned.push(PlannedConcept {
            section_id: candidate.section_id,
            concept,
            heading: candidate.heading.to_string(),
            question,
            prerequisites,
        });
    }
    planned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_book_and_links_prerequisites() {
        let mut candidates = vec![
            Candidate {
                section_id: 30,
                book_id: 1,
                book_title: "R",
                position: 30,
                book_position: 0.3,
                heading: "2.7 Index vectors",
                text: "Index vectors select elements of a vector; missing values can be excluded.",
            },
            Candidate {
                section_id: 10,
                book_id: 1,
                book_title: "R",
                position: 10,
                book_position: 0.1,
                heading: "2.1 Vectors",
                text: "A vector is an ordered collection of numbers.",
            },
            Candidate {
                section_id: 20,
                book_id: 1,
                book_title: "R",
                position: 20,
                book_position: 0.2,
                heading: "2.5 Missing values",
                text: "Elements of a vector may be NA, a missing value.",
            },
        ];
        let plan = plan(&mut candidates);
        let concepts: Vec<_> = plan.iter().map(|p| p.concept.as_str()).collect();
        assert_eq!(concepts, ["Vectors", "Missing values", "Index vectors"]);
        assert_eq!(plan[0].prerequisites, Vec::<usize>::new());
        assert_eq!(plan[1].prerequisites, [0]);
        assert_eq!(plan[2].prerequisites, [0, 1]);
    }

    #[test]
    fn numbered_chapter_books_follow_their_numbers() {
        let mut candidates = vec![
            Candidate {
                section_id: 1,
                book_id: 1,
                book_title: "9. Classes",
                position: 3,
                book_position: 0.5,
                heading: "9.10. Generator Expressions",
                text: "Generators.",
            },
            Candidate {
                section_id: 2,
                book_id: 2,
                book_title: "5. Data Structures",
                position: 2,
                book_position: 0.5,
                heading: "5.1.3. List Comprehensions",
                text: "Lists.",
            },
            Candidate {
                section_id: 3,
                book_id: 2,
                book_title: "5. Data Structures",
                position: 1,
                book_position: 0.5,
                heading: "5.1. More on Lists",
                text: "Lists.",
            },
        ];
        let plan = plan(&mut candidates);
        let headings: Vec<_> = plan.iter().map(|p| p.heading.as_str()).collect();
        assert_eq!(headings, ["5.1. More on Lists", "5.1.3. List Comprehensions", "9.10. Generator Expressions"]);
        assert_eq!(leading_number("An Introduction to R"), None);
        assert_eq!(leading_number("12 Graphical procedures"), Some(12));
    }
}
