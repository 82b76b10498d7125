//! The rubric grader: an answer's score is its similarity to the expected
//! answer plus its coverage of the expected answer's key terms.

use crate::{embed, text};

/// Score at or above which a concept counts as mastered.
pub const MASTERY: f32 = 0.8;
/// Answers with fewer words than this are rejected, not graded.
pub const MIN_ANSWER_WORDS: usize = 3;
/// Answers longer than this many characters are rejected.
pub const MAX_ANSWER_CHARS: usize = 10_000;

const SIMILARITY_WEIGHT: f32 = 0.5;
const COVERAGE_WEIGHT: f32 = 0.5;
/// Share of function words ("the", "is", "of" …) from which an answer
/// counts as prose. English prose has roughly 30 to 50 percent; a list of
/// keywords has almost none, and earns proportionally less coverage credit.
const PROSE_FUNCTION_WORDS: f32 = 0.2;

#[derive(Clone, Debug, PartialEq)]
pub struct Grade {
    /// 0.0 to 1.0.
    pub score: f32,
    pub feedback: String,
    pub suggestions: Vec<String>,
}

impl Grade {
    pub fn mastered(&self) -> bool {
        self.score >= MASTERY
    }
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum AnswerError {
    #[error("the answer is empty; write a sentence or two in your own words")]
    Empty,
    #[error("the answer has {words} word(s); write at least {MIN_ANSWER_WORDS} words so it can be graded")]
    TooShort { words: usize },
    #[error("the answer has {chars} characters; the limit is {MAX_ANSWER_CHARS}")]
    TooLong { chars: usize },
}

/// Checks an answer's size before it is graded or stored.
pub fn validate(answer: &str) -> Result<(), AnswerError> {
    let trimmed = answer.trim();
    if trimmed.is_empty() {
        return Err(AnswerError::Empty);
    }
    let chars = trimmed.chars().count();
    if chars > MAX_ANSWER_CHARS {
        return Err(AnswerError::TooLong { chars });
    }
    let words = text::words(trimmed).len();
    if words < MIN_ANSWER_WORDS {
        return Err(AnswerError::TooShort { words });
    }
    Ok(())
}

/// Returns 1.0 for prose and less for a list of keywords, by the share of
/// function words in the answer.
fn prose_factor(answer: &str) -> f32 {
    let words = text::words(answer);
    if words.is_empty() {
        return 0.0;
    }
    let function_words = words.iter().filter(|w| text::is_stopword(w)).count() as f32;
    (function_words / words.len() as f32 / PROSE_FUNCTION_WORDS).min(1.0)
}

/// Returns the word of `text` whose stem is `stem`, so that suggestions
/// show "raised" rather than the stem "rais".
fn surface_word(stem: &str, text: &str) -> String {
    text::words(text).into_iter().find(|w| text::stem(w) == stem).unwrap_or_else(|| stem.to_string())
}

/// Grades `answer` against `expected` and its `key_terms` (stems), naming
/// the section to reread in the suggestions.
pub fn grade(answer: &str, expected: &str, key_terms: &[String], section: &str) -> Result<Grade, AnswerError> {
    validate(answer)?;

    let similarity = embed::cosine(&embed::embed(answer), &embed::embed(expected)).clamp(0.0, 1.0);
    let answer_terms = text::terms(answer);
    let missing: Vec<&String> = key_terms.iter().filter(|t| !answer_terms.contains(t)).collect();
    let coverage = if key_terms.is_empty() { similarity } else { 1.0 - missing.len() as f32 / key_terms.len() as f32 };
    let score = (SIMILARITY_WEIGHT * similarity + COVERAGE_WEIGHT * coverage * prose_factor(answer)).clamp(0.0, 1.0);
    let score = (score * 100.0).round() / 100.0;

    let feedback = if score >= MASTERY {
        "Mastered: your answer matches the text and covers its key ideas.".to_string()
    } else if score >= 0.5 && !key_terms.is_empty() {
        format!(
            "Partly right: your answer touches the topic but misses {} of the {} key ideas.",
            missing.len(),
            key_terms.len()
        )
    } else if score >= 0.5 {
        "Partly right: your answer touches the topic but is not yet close to what the text says.".to_string()
    } else {
        "Not yet: your answer does not match what the text says about this concept.".to_string()
    };

    let mut suggestions = Vec::new();
    if score < MASTERY {
        if !missing.is_empty() {
            let listed: Vec<String> = missing.iter().take(4).map(|t| surface_word(t, expected)).collect();
            suggestions.push(format!("Cover these ideas from the text: {}.", listed.join(", ")));
        }
        if !section.is_empty() {
            suggestions.push(format!("Reread \"{section}\" and answer in your own words."));
        }
    }
    Ok(Grade { score, feedback, suggestions })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::question::{Source, generate};

    const TEXT: &str = "When an element or value is not available or a missing value in the statistical \
        sense, a place within a vector may be reserved for it by assigning it the special value NA. \
        In general any operation on an NA becomes an NA.";

    #[test]
    fn expected_answer_scores_high() {
        let q = generate(&Source { concept: "Missing values", text: TEXT, book_position: 0.2 });
        let g = grade(&q.expected_answer, &q.expected_answer, &q.key_terms, "2.5 Missing values").expect("grade");
        assert!(g.score >= 0.9, "{g:?}");
        assert!(g.mastered());
        assert!(g.suggestions.is_empty());
    }

    #[test]
    fn unrelated_answer_scores_low() {
        let q = generate(&Source { concept: "Missing values", text: TEXT, book_position: 0.2 });
        let g = grade(
            "Photosynthesis converts sunlight into chemical energy inside the chloroplasts of green plants.",
            &q.expected_answer,
            &q.key_terms,
            "2.5 Missing values",
        )
        .expect("grade");
        assert!(g.score <= 0.2, "{g:?}");
        assert!(!g.mastered());
        assert!(!g.suggestions.is_empty());
    }

    #[test]
    fn keyword_lists_do_not_master() {
        let q = generate(&Source { concept: "Missing values", text: TEXT, book_position: 0.2 });
        let salad = q.key_terms.join(" ") + " vector element special value statistical sense";
        let g = grade(&salad, &q.expected_answer, &q.key_terms, "2.5 Missing values").expect("grade");
        assert!(g.score < MASTERY, "{g:?}");
    }

    #[test]
    fn suggestions_name_words_not_stems() {
        let g = grade(
            "Plants need water and light to grow well.",
            TEXT,
            &["miss".to_string(), "available".to_string()],
            "2.5",
        )
        .expect("grade");
        assert!(g.suggestions[0].contains("missing"), "{g:?}");
    }

    #[test]
    fn short_answers_are_rejected() {
        assert_eq!(validate("   "), Err(AnswerError::Empty));
        assert_eq!(validate("NA value"), Err(AnswerError::TooShort { words: 2 }));
        assert!(validate(&"word ".repeat(3000)).is_err());
        assert!(validate("R marks missing values as NA").is_ok());
    }
}
