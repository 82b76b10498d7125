//! The extractive question generator: picks the key sentences of a section,
//! asks about its concept and takes the expected answer from the text.

use std::collections::HashMap;

use crate::text;

/// A generated question with the answer the text supports.
#[derive(Clone, Debug, PartialEq)]
pub struct Question {
    pub question: String,
    pub expected_answer: String,
    /// 1 (introductory) to 5 (hard).
    pub difficulty: u8,
    /// Stems the grader looks for in an answer.
    pub key_terms: Vec<String>,
}

/// The generator's input: the concept's name, the text of its section, and
/// where the section sits in its book (0.0 first, 1.0 last).
pub struct Source<'a> {
    pub concept: &'a str,
    pub text: &'a str,
    pub book_position: f32,
}

/// Sentences shorter or longer than these word counts are not used as answers.
const MIN_WORDS: usize = 6;
const MAX_WORDS: usize = 70;
/// Upper bound on the expected answer's length in characters.
const MAX_ANSWER_CHARS: usize = 420;
const MAX_KEY_TERMS: usize = 8;

pub fn generate(source: &Source<'_>) -> Question {
    let concept_terms = text::terms(source.concept);
    let sentences: Vec<String> = text::sentences(source.text).into_iter().filter(|s| is_prose(s)).collect();

    let mut frequency: HashMap<String, f32> = HashMap::new();
    for term in text::terms(source.text) {
        *frequency.entry(term).or_default() += 1.0;
    }

    let mut ranked: Vec<(usize, f32)> =
        sentences.iter().enumerate().map(|(i, s)| (i, sentence_score(s, i, &concept_terms, &frequency))).collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));

    // The best sentence, plus the best of the next two that fits within
    // MAX_ANSWER_CHARS, kept in text order.
    let mut chosen: Vec<usize> = Vec::new();
    let mut length = 0;
    for &(index, _) in ranked.iter().take(3) {
        let len = sentences[index].len();
        if chosen.is_empty() || length + len <= MAX_ANSWER_CHARS {
            chosen.push(index);
            length += len;
        }
        if chosen.len() == 2 {
            break;
        }
    }
    chosen.sort_unstable();
    let expected_answer = if chosen.is_empty() {
        text::excerpt(&text::collapse_whitespace(source.text), MAX_ANSWER_CHARS)
    } else {
        chosen.iter().map(|&i| sentences[i].as_str()).collect::<Vec<_>>().join(" ")
    };
    let expected_answer = if expected_answer.is_empty() { source.concept.to_string() } else { expected_answer };

    Question {
        question: ask(source.concept, &sentences, &chosen),
        key_terms: key_terms(&expected_answer, &concept_terms),
        difficulty: difficulty(source, &sentences),
        expected_answer,
    }
}

/// Rejects code, tables and fragments: a prose sentence has enough words,
/// mostly letters, and is not mainly symbols.
fn is_prose(sentence: &str) -> bool {
    let words = sentence.split_whitespace().count();
    if !(MIN_WORDS..=MAX_WORDS).contains(&words) {
        return false;
    }
    let letters = sentence.chars().filter(|c| c.is_alphabetic()).count();
    let symbols = sentence.chars().filter(|c| "<>{}[]=$#;|\\".contains(*c)).count();
    letters * 10 >= sentence.len() * 6 && symbols * 20 < sentence.len()
}

fn sentence_score(sentence: &str, index: usize, concept: &[String], frequency: &HashMap<String, f32>) -> f32 {
    let terms = text::terms(sentence);
    if terms.is_empty() {
        return 0.0;
    }
    let concept_hits = concept.iter().filter(|c| terms.contains(c)).count() as f32;
    let centrality: f32 =
        terms.iter().map(|t| frequency.get(t).copied().unwrap_or(0.0).ln_1p()).sum::<f32>() / terms.len() as f32;
    let lower = sentence.to_lowercase();
    let defines =
        [" is ", " are ", " means ", " called ", " refers to ", " known as "].iter().any(|p| lower.contains(p));
    let early = 1.0 / (1.0 + index as f32 * 0.15);
    2.0 * concept_hits + centrality + if defines { 0.8 } else { 0.0 } + early
}

/// Phrases the question: "What is X?" when the key sentence defines the
/// concept, "What does f() do?" for a function, otherwise an open question
/// about the concept. The concept keeps the book's capitalisation.
fn ask(concept: &str, sentences: &[String], chosen: &[usize]) -> String {
    let concept_clean = concept.trim().trim_end_matches(['.', ':', '?']);
    let lower = concept_clean.to_lowercase();
    let first = chosen.first().and_then(|&i| sentences.get(i));
    if let Some(sentence) = first {
        let sentence_lower = sentence.to_lowercase();
        for verb in [" is ", " are "] {
            if let Some(at) = sentence_lower.find(verb) {
                let subject = &sentence_lower[..at];
                if subject.contains(&lower) && subject.split_whitespace().count() <= 6 {
                    return format!("What {} {concept_clean}, according to the text?", verb.trim());
                }
            }
        }
    }
    let function = concept_clean.split_whitespace().find(|w| w.ends_with("()") && w.len() > 2);
    if let Some(function) = function {
        return format!("What does {function} do, and when would you use it?");
    }
    format!("How does the text explain {concept_clean}, and why does it matter?")
}

/// Chooses up to eight distinct stems of the expected answer: the concept's
/// own terms first, then the most frequent and longest ones.
fn key_terms(answer: &str, concept: &[String]) -> Vec<String> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for term in text::terms(answer) {
        if term.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let count = counts.entry(term.clone()).or_default();
        if *count == 0 {
            order.push(term);
        }
        *count += 1;
    }
    let mut ranked: Vec<(String, f32)> = order
        .into_iter()
        .map(|t| {
            let bonus = if concept.contains(&t) { 3.0 } else { 0.0 };
            let score = bonus + counts[&t] as f32 + (t.len().min(10) as f32) / 10.0;
            (t, score)
        })
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked.into_iter().take(MAX_KEY_TERMS).map(|(t, _)| t).collect()
}

/// Rates a concept from 1 to 5 by where it sits in the book and how long
/// its sentences are.
fn difficulty(source: &Source<'_>, sentences: &[String]) -> u8 {
    let words: usize = sentences.iter().map(|s| s.split_whitespace().count()).sum();
    let average = if sentences.is_empty() { 15.0 } else { words as f32 / sentences.len() as f32 };
    let complexity = ((average - 10.0) / 20.0).clamp(0.0, 1.0);
    let position = source.book_position.clamp(0.0, 1.0);
    let raw = 1.0 + 4.0 * (0.6 * position + 0.4 * complexity);
    raw.round().clamp(1.0, 5.0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    const MISSING: &str = "In some cases the components of a vector may not be completely known. \
        When an element or value is not available or a missing value in the statistical sense, \
        a place within a vector may be reserved for it by assigning it the special value NA. \
        In general any operation on an NA becomes an NA. The function is.na(x) gives a logical \
        vector of the same size as x with value TRUE if and only if the corresponding element \
        in x is NA.";

    #[test]
    fn question_names_concept_and_answer_comes_from_text() {
        let q = generate(&Source { concept: "Missing values", text: MISSING, book_position: 0.1 });
        assert!(q.question.to_lowercase().contains("missing values"), "{}", q.question);
        assert!(q.expected_answer.contains("missing value"), "{}", q.expected_answer);
        assert!(MISSING.contains(q.expected_answer.split(". ").next().unwrap_or_default()));
        assert!((1..=5).contains(&q.difficulty));
        assert!(q.key_terms.contains(&"miss".to_string()), "{:?}", q.key_terms);
    }

    #[test]
    fn later_sections_are_harder() {
        let early = generate(&Source { concept: "Vectors", text: MISSING, book_position: 0.0 });
        let late = generate(&Source { concept: "Vectors", text: MISSING, book_position: 1.0 });
        assert!(late.difficulty > early.difficulty);
    }

    #[test]
    fn questions_keep_the_book_capitalisation() {
        let q = generate(&Source {
            concept: "Generator Expressions",
            text: "Some text about things that happen here.",
            book_position: 0.5,
        });
        assert_eq!(q.question, "How does the text explain Generator Expressions, and why does it matter?");
        let q = generate(&Source {
            concept: "The glm() function",
            text: "Some text about things that happen here.",
            book_position: 0.5,
        });
        assert_eq!(q.question, "What does glm() do, and when would you use it?");
        let q = generate(&Source {
            concept: "What Now?",
            text: "Some text about things that happen here.",
            book_position: 0.5,
        });
        assert_eq!(q.question, "How does the text explain What Now, and why does it matter?");
    }

    #[test]
    fn empty_text_still_gives_a_question() {
        let q = generate(&Source { concept: "Preface", text: "", book_position: 0.0 });
        assert_eq!(q.expected_answer, "Preface");
    }
}
