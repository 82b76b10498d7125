//! Plans a learning path: orders the concepts found for a goal as the
//! book teaches them and links each to the earlier concepts it builds on,
//! from the book's order, the concept names a section's text uses, and
//! the sections it refers to explicitly ("see Section 2.5").

use std::collections::{BTreeSet, HashMap};

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
    /// Positions, within the same book, of the sections this one refers to
    /// explicitly ([`Section::references`](crate::book::Section::references));
    /// empty when unknown.
    pub references: &'a [i64],
}

#[derive(Clone, Debug)]
pub struct PlannedConcept {
    pub section_id: i64,
    pub concept: String,
    pub heading: String,
    pub question: Question,
    /// Indices of earlier concepts in the plan, ascending.
    pub prerequisites: Vec<usize>,
}

/// A learning path: concepts in the order to learn them.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Every concept comes after its prerequisites.
    pub concepts: Vec<PlannedConcept>,
    /// Explicit references rejected because following them would have made
    /// a concept a prerequisite of itself.
    pub rejected_references: usize,
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
/// A concept also depends on every planned section of its book that it
/// refers to explicitly, unless that would close a cycle of references. A
/// link from the book's order that would close a cycle with a reference
/// is dropped instead. A reference to a later section moves that section
/// (and what it needs) ahead of the one that refers to it.
pub fn plan(candidates: &mut [Candidate<'_>]) -> Plan {
    // Books whose titles are numbered chapters sort by that number, so the
    // pages of a tutorial ingested in any order come out as it teaches them.
    candidates.sort_by_key(|c| (leading_number(c.book_title).unwrap_or(u32::MAX), c.book_id, c.position));
    let mut planned: Vec<PlannedConcept> = Vec::with_capacity(candidates.len());
    // Links that follow from the book's order, added after the explicit
    // references, which win when the two would form a cycle.
    let mut from_order: Vec<Vec<usize>> = Vec::with_capacity(candidates.len());
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

        let question = question::generate(&question::Source {
            concept: &concept,
            text: candidate.text,
            book_position: candidate.book_position,
        });
        from_order.push(prerequisites);
        planned.push(PlannedConcept {
            section_id: candidate.section_id,
            concept,
            heading: candidate.heading.to_string(),
            question,
            prerequisites: Vec::new(),
        });
    }

    let rejected_references = add_references(candidates, &mut planned);
    for (index, links) in from_order.into_iter().enumerate() {
        for target in links {
            if !planned[index].prerequisites.contains(&target) && !depends_on(&planned, target, index) {
                planned[index].prerequisites.push(target);
            }
        }
    }
    let mut concepts = in_dependency_order(planned);
    for concept in &mut concepts {
        concept.prerequisites.sort_unstable();
    }
    Plan { concepts, rejected_references }
}

/// Adds each candidate's explicit references to planned sections of its
/// book as prerequisites, and returns how many were rejected because the
/// referenced concept already depends on the referring one.
fn add_references(candidates: &[Candidate<'_>], planned: &mut [PlannedConcept]) -> usize {
    let by_position: HashMap<(i64, i64), usize> =
        candidates.iter().enumerate().map(|(index, c)| ((c.book_id, c.position), index)).collect();
    let mut rejected = 0;
    for (index, candidate) in candidates.iter().enumerate() {
        for position in candidate.references {
            let Some(&target) = by_position.get(&(candidate.book_id, *position)) else {
                continue;
            };
            if target == index || planned[index].prerequisites.contains(&target) {
                continue;
            }
            if depends_on(planned, target, index) {
                rejected += 1;
                continue;
            }
            planned[index].prerequisites.push(target);
        }
    }
    rejected
}

/// Returns whether concept `from` needs concept `needed`, directly or
/// through other prerequisites.
fn depends_on(planned: &[PlannedConcept], from: usize, needed: usize) -> bool {
    let mut seen = vec![false; planned.len()];
    let mut stack = vec![from];
    while let Some(current) = stack.pop() {
        if current == needed {
            return true;
        }
        if std::mem::replace(&mut seen[current], true) {
            continue;
        }
        stack.extend(planned[current].prerequisites.iter().copied());
    }
    false
}

/// Reorders the concepts so that each follows its prerequisites, keeping
/// the given order wherever the prerequisites allow, and renumbers the
/// prerequisites to the new positions. The prerequisites must be acyclic.
fn in_dependency_order(planned: Vec<PlannedConcept>) -> Vec<PlannedConcept> {
    let count = planned.len();
    let mut waiting: Vec<usize> = planned.iter().map(|p| p.prerequisites.len()).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); count];
    for (index, concept) in planned.iter().enumerate() {
        for &prerequisite in &concept.prerequisites {
            dependents[prerequisite].push(index);
        }
    }
    let mut ready: BTreeSet<usize> = (0..count).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(count);
    while let Some(next) = ready.pop_first() {
        order.push(next);
        for &dependent in &dependents[next] {
            waiting[dependent] -= 1;
            if waiting[dependent] == 0 {
                ready.insert(dependent);
            }
        }
    }
    let mut new_index = vec![0; count];
    for (position, &old) in order.iter().enumerate() {
        new_index[old] = position;
    }
    let mut slots: Vec<Option<PlannedConcept>> = planned.into_iter().map(Some).collect();
    order
        .iter()
        .filter_map(|&old| slots[old].take())
        .map(|mut concept| {
            concept.prerequisites = concept.prerequisites.iter().map(|&p| new_index[p]).collect();
            concept
        })
        .collect()
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
                references: &[],
            },
            Candidate {
                section_id: 10,
                book_id: 1,
                book_title: "R",
                position: 10,
                book_position: 0.1,
                heading: "2.1 Vectors",
                text: "A vector is an ordered collection of numbers.",
                references: &[],
            },
            Candidate {
                section_id: 20,
                book_id: 1,
                book_title: "R",
                position: 20,
                book_position: 0.2,
                heading: "2.5 Missing values",
                text: "Elements of a vector may be NA, a missing value.",
                references: &[],
            },
        ];
        let plan = plan(&mut candidates).concepts;
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
                references: &[],
            },
            Candidate {
                section_id: 2,
                book_id: 2,
                book_title: "5. Data Structures",
                position: 2,
                book_position: 0.5,
                heading: "5.1.3. List Comprehensions",
                text: "Lists.",
                references: &[],
            },
            Candidate {
                section_id: 3,
                book_id: 2,
                book_title: "5. Data Structures",
                position: 1,
                book_position: 0.5,
                heading: "5.1. More on Lists",
                text: "Lists.",
                references: &[],
            },
        ];
        let plan = plan(&mut candidates).concepts;
        let headings: Vec<_> = plan.iter().map(|p| p.heading.as_str()).collect();
        assert_eq!(headings, ["5.1. More on Lists", "5.1.3. List Comprehensions", "9.10. Generator Expressions"]);
        assert_eq!(leading_number("An Introduction to R"), None);
        assert_eq!(leading_number("12 Graphical procedures"), Some(12));
    }

    fn candidate<'a>(position: i64, heading: &'a str, text: &'a str, references: &'a [i64]) -> Candidate<'a> {
        Candidate {
            section_id: position,
            book_id: 1,
            book_title: "Book",
            position,
            book_position: position as f32 / 10.0,
            heading,
            text,
            references,
        }
    }

    #[test]
    fn references_add_prerequisites() {
        let mut candidates = vec![
            candidate(1, "1 Arrays", "Arrays hold numbers.", &[]),
            candidate(2, "2 Lists", "Lists hold anything.", &[]),
            candidate(3, "3 Frames", "Frames combine columns; see Section 1.", &[1]),
        ];
        let plan = plan(&mut candidates);
        assert_eq!(plan.rejected_references, 0);
        assert_eq!(plan.concepts[2].prerequisites, [0, 1]);
    }

    #[test]
    fn forward_references_reorder_the_path() {
        // "Sums" refers ahead to "Limits", which needs only "Numbers".
        let mut candidates = vec![
            candidate(1, "1 Numbers", "Counting.", &[]),
            candidate(2, "2 Sums", "Adding; see Section 4.", &[4]),
            candidate(3, "3 Products", "Multiplying.", &[]),
            candidate(4, "4 Limits", "Limits of numbers.", &[]),
        ];
        let plan = plan(&mut candidates);
        let order: Vec<&str> = plan.concepts.iter().map(|c| c.heading.as_str()).collect();
        assert_eq!(plan.rejected_references, 0);
        assert_eq!(order, ["1 Numbers", "4 Limits", "2 Sums", "3 Products"]);
        assert_eq!(plan.concepts[2].prerequisites, [0, 1]);
    }

    #[test]
    fn cyclic_references_are_refused() {
        // Each section names the other; the second reference would close a cycle.
        let mut candidates = vec![
            candidate(1, "1 Sums", "Adding; see Section 2.", &[2]),
            candidate(2, "2 Limits", "Limits; see Section 1.", &[1]),
        ];
        let plan = plan(&mut candidates);
        let order: Vec<&str> = plan.concepts.iter().map(|c| c.heading.as_str()).collect();
        assert_eq!(plan.rejected_references, 1);
        assert_eq!(order, ["2 Limits", "1 Sums"]);
        assert_eq!(plan.concepts[1].prerequisites, [0]);
        assert!(plan.concepts[0].prerequisites.is_empty());
    }

    #[test]
    fn references_win_over_book_order() {
        // "Limits" follows "Sums" in the book, but "Sums" names it.
        let mut candidates =
            vec![candidate(1, "1 Sums", "Adding; see Section 2.", &[2]), candidate(2, "2 Limits", "Limits.", &[])];
        let plan = plan(&mut candidates);
        let order: Vec<&str> = plan.concepts.iter().map(|c| c.heading.as_str()).collect();
        assert_eq!(plan.rejected_references, 0);
        assert_eq!(order, ["2 Limits", "1 Sums"]);
        assert_eq!(plan.concepts[1].prerequisites, [0]);
    }

    #[test]
    fn every_concept_follows_its_prerequisites() {
        let mut candidates = vec![
            candidate(1, "1 Alpha", "Alpha.", &[4]),
            candidate(2, "2 Beta", "Alpha and beta.", &[]),
            candidate(3, "3 Gamma", "Gamma.", &[1]),
            candidate(4, "4 Delta", "Delta.", &[2]),
        ];
        let plan = plan(&mut candidates);
        for (index, concept) in plan.concepts.iter().enumerate() {
            assert!(concept.prerequisites.iter().all(|&p| p < index), "{index}: {:?}", concept.prerequisites);
        }
    }
}
