//! Tokenising, stemming and sentence splitting shared by the embedding,
//! the lexical index, the question generator and the grader.

use std::ops::Range;

/// English function words that carry no topic. Sorted, for binary search.
const STOPWORDS: &[&str] = &[
    "a",
    "about",
    "above",
    "after",
    "again",
    "all",
    "also",
    "am",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "by",
    "can",
    "could",
    "did",
    "do",
    "does",
    "doing",
    "done",
    "down",
    "during",
    "each",
    "either",
    "etc",
    "few",
    "for",
    "from",
    "further",
    "get",
    "gets",
    "had",
    "has",
    "have",
    "having",
    "he",
    "her",
    "here",
    "hers",
    "him",
    "his",
    "how",
    "i",
    "if",
    "in",
    "into",
    "is",
    "it",
    "its",
    "itself",
    "just",
    "know",
    "learn",
    "like",
    "made",
    "make",
    "many",
    "may",
    "me",
    "might",
    "more",
    "most",
    "much",
    "must",
    "my",
    "need",
    "no",
    "nor",
    "not",
    "now",
    "of",
    "off",
    "on",
    "once",
    "one",
    "only",
    "or",
    "other",
    "our",
    "out",
    "over",
    "own",
    "same",
    "see",
    "she",
    "should",
    "so",
    "some",
    "such",
    "than",
    "that",
    "the",
    "their",
    "them",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "through",
    "to",
    "too",
    "under",
    "understand",
    "until",
    "up",
    "us",
    "use",
    "used",
    "uses",
    "using",
    "very",
    "want",
    "was",
    "way",
    "we",
    "well",
    "were",
    "what",
    "when",
    "where",
    "which",
    "while",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "within",
    "without",
    "would",
    "you",
    "your",
];

/// Returns whether `word` (lower case) is a stopword.
pub fn is_stopword(word: &str) -> bool {
    STOPWORDS.binary_search(&word).is_ok()
}

/// Splits `text` into lower-case words of letters and digits. Apostrophes
/// inside a word are dropped ("don't" becomes "dont"); every other
/// character separates words.
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for ch in text.chars() {
        if ch.is_alphanumeric() {
            current.extend(ch.to_lowercase());
        } else if (ch == '\'' || ch == '\u{2019}') && !current.is_empty() {
            continue;
        } else if !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Reduces an English word to a stem by stripping common inflections, so
/// that "values", "valued" and "value" meet. It is deliberately light: the
/// same stem for the same word matters more here than linguistic accuracy.
pub fn stem(word: &str) -> String {
    let w = word;
    if w.len() <= 3 || !w.is_ascii() {
        return w.to_string();
    }
    for (suffix, replacement) in [
        ("ational", "ate"),
        ("ization", "ize"),
        ("fulness", "ful"),
        ("iveness", "ive"),
        ("ations", "ate"),
        ("ation", "ate"),
        ("ies", "y"),
        ("ied", "y"),
        ("sses", "ss"),
        ("ing", ""),
        ("ed", ""),
        ("es", "e"),
        ("ly", ""),
        ("s", ""),
    ] {
        if let Some(base) = w.strip_suffix(suffix) {
            if base.len() < 3 || (suffix == "s" && (base.ends_with('s') || base.ends_with('u'))) {
                continue;
            }
            let mut stemmed = format!("{base}{replacement}");
            // "running" -> "runn" -> "run": undo a doubled final consonant.
            if (suffix == "ing" || suffix == "ed") && stemmed.len() > 3 {
                let bytes = stemmed.as_bytes();
                let last = bytes[bytes.len() - 1];
                if last == bytes[bytes.len() - 2] && !b"aeiouls".contains(&last) {
                    stemmed.pop();
                }
            }
            return stemmed;
        }
    }
    w.to_string()
}

/// Returns the stems of the words of `text` that are not stopwords and
/// contain at least one letter or are at least two characters long.
pub fn terms(text: &str) -> Vec<String> {
    words(text)
        .into_iter()
        .filter(|w| !is_stopword(w))
        .filter(|w| w.len() > 1 || w.chars().all(char::is_alphabetic))
        .map(|w| stem(&w))
        .collect()
}

/// Splits prose into sentences at '.', '!' or '?' followed by white space
/// and an upper-case letter, digit or quote. Abbreviations such as "e.g."
/// and "i.e." do not end a sentence.
pub fn sentences(text: &str) -> Vec<String> {
    sentence_spans(text).into_iter().map(|span| collapse_whitespace(&text[span])).collect()
}

/// Returns the byte ranges of the sentences of `text`, split as
/// [`sentences`] splits them, without the white space around them.
pub fn sentence_spans(text: &str) -> Vec<Range<usize>> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let byte_at = |i: usize| chars.get(i).map_or(text.len(), |&(byte, _)| byte);
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < chars.len() {
        if matches!(chars[i].1, '.' | '!' | '?') {
            let mut j = i + 1;
            while j < chars.len() && matches!(chars[j].1, ')' | '"' | '\'' | '\u{201d}') {
                j += 1;
            }
            let spaced = j < chars.len() && chars[j].1.is_whitespace();
            let mut k = j;
            while k < chars.len() && chars[k].1.is_whitespace() {
                k += 1;
            }
            let next_starts = k >= chars.len()
                || chars[k].1.is_uppercase()
                || chars[k].1.is_ascii_digit()
                || matches!(chars[k].1, '"' | '\u{201c}' | '(');
            let word_before: String = chars[start..i]
                .iter()
                .rev()
                .map(|&(_, c)| c)
                .take_while(|c| !c.is_whitespace())
                .collect::<String>()
                .chars()
                .rev()
                .collect();
            let abbreviation = matches!(
                word_before.to_lowercase().as_str(),
                "e.g" | "i.e" | "etc" | "vs" | "cf" | "fig" | "eq" | "mr" | "dr" | "no"
            );
            if (spaced || j >= chars.len()) && next_starts && !abbreviation {
                push_span(&mut out, text, byte_at(start)..byte_at(j));
                start = k;
                i = k;
                continue;
            }
        }
        i += 1;
    }
    push_span(&mut out, text, byte_at(start)..text.len());
    out
}

/// Adds `span` to `out` without the white space at its ends, unless
/// nothing else is left.
fn push_span(out: &mut Vec<Range<usize>>, text: &str, span: Range<usize>) {
    let part = &text[span.clone()];
    let trimmed_start = part.trim_start();
    let start = span.start + (part.len() - trimmed_start.len());
    let end = start + trimmed_start.trim_end().len();
    if start < end {
        out.push(start..end);
    }
}

/// Returns the byte ranges of the white-space-separated words of `text`.
pub fn word_spans(text: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = None;
    for (index, ch) in text.char_indices() {
        match (ch.is_whitespace(), start) {
            (true, Some(begin)) => {
                out.push(begin..index);
                start = None;
            }
            (false, None) => start = Some(index),
            _ => {}
        }
    }
    if let Some(begin) = start {
        out.push(begin..text.len());
    }
    out
}

/// Replaces the Latin typographic ligatures (U+FB00 to U+FB06, "ﬁ", "ﬂ",
/// "ﬀ", "ﬃ", "ﬄ", "ﬅ", "ﬆ") with the letters they join, so that words
/// typeset with them match words typed without.
pub fn expand_ligatures(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '\u{fb00}' => out.push_str("ff"),
            '\u{fb01}' => out.push_str("fi"),
            '\u{fb02}' => out.push_str("fl"),
            '\u{fb03}' => out.push_str("ffi"),
            '\u{fb04}' => out.push_str("ffl"),
            '\u{fb05}' | '\u{fb06}' => out.push_str("st"),
            _ => out.push(ch),
        }
    }
    out
}

/// Returns whether `text` contains one of the ligatures that
/// [`expand_ligatures`] replaces.
pub fn has_ligature(text: &str) -> bool {
    text.chars().any(|c| ('\u{fb00}'..='\u{fb06}').contains(&c))
}

/// Returns the words of `query` that look like code rather than prose:
/// names with `_`, `.`, brackets or mixed case (`str.format`, `__init__`,
/// `isinstance()`, `NaN`), but not numbers or all-capital acronyms, and operators of two or more signs
/// (`:=`, `**`, `{}`). Surrounding quotes, backticks and sentence punctuation are
/// dropped, and so are call brackets, so that `range()` matches `range(10)`.
pub fn identifiers(query: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for word in query.split_whitespace() {
        let word = word.trim_matches(|c: char| matches!(c, '"' | '\'' | '`' | '?' | '!' | ',' | ';' | '“' | '”'));
        let word = word.strip_suffix("()").unwrap_or(word);
        let word = word.strip_suffix('.').unwrap_or(word);
        let letters = word.chars().filter(|c| c.is_alphanumeric()).count();
        let has_letter = word.chars().any(char::is_alphabetic);
        let code_like = if letters == 0 {
            word.chars().count() >= 2 && word.chars().all(|c| "!%&*+-/:<=>@^|~{}[]".contains(c))
        } else if !has_letter {
            // Numbers such as 0.1 or 3.14 are prose.
            false
        } else {
            let mixed_case = word.chars().skip(1).any(char::is_uppercase) && word.chars().any(char::is_lowercase);
            word.chars().any(|c| "_.()[]{}:=<>".contains(c)) || mixed_case
        };
        if code_like && !found.iter().any(|f| f == word) {
            found.push(word.to_string());
        }
    }
    found
}

/// Estimates how many tokens a WordPiece tokenizer such as BERT's makes of
/// `text`: one per run of letters and digits plus one for every further 8
/// characters of the run, one per other visible character, and 2 for
/// `[CLS]` and `[SEP]`. It serves callers without the model's tokenizer.
/// NOTE: an estimate; rare words and formulas can take more tokens.
pub fn estimate_tokens(text: &str) -> usize {
    let mut tokens = 2;
    let mut run = 0usize;
    for ch in text.chars() {
        if ch.is_alphanumeric() {
            run += 1;
            continue;
        }
        if run > 0 {
            tokens += 1 + (run - 1) / 8;
            run = 0;
        }
        if !ch.is_whitespace() {
            tokens += 1;
        }
    }
    if run > 0 {
        tokens += 1 + (run - 1) / 8;
    }
    tokens
}

/// Replaces every run of white space with one space and trims the ends.
pub fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Returns at most `max` characters of `text`, cut at a word boundary and
/// marked with an ellipsis when cut.
pub fn excerpt(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let cut: String = text.chars().take(max).collect();
    let end = cut.rfind(char::is_whitespace).unwrap_or(cut.len());
    format!("{}…", cut[..end].trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_code_like_words() {
        assert_eq!(identifiers("what does the walrus operator := do?"), [":="]);
        assert_eq!(identifiers("how does `str.format()` fill in {} placeholders"), ["str.format", "{}"]);
        assert_eq!(identifiers("what is __name__ for, and isNaN?"), ["__name__", "isNaN"]);
        assert_eq!(identifiers("How do I sort a list. Then what?"), Vec::<String>::new());
        assert_eq!(identifiers("round 0.1 in MATLAB or SQL"), Vec::<String>::new(), "numbers and acronyms");
    }

    #[test]
    fn stopwords_are_sorted() {
        assert!(STOPWORDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn stem_joins_inflections() {
        assert_eq!(stem("values"), stem("value"));
        assert_eq!(stem("handles"), stem("handle"));
        assert_eq!(stem("running"), "run");
        assert_eq!(stem("missing"), "miss");
        assert_eq!(stem("class"), "class");
        assert_eq!(stem("status"), "status");
    }

    #[test]
    fn terms_drop_stopwords() {
        assert_eq!(terms("How does R handle the missing values?"), ["r", "handle", "miss", "value"]);
    }

    #[test]
    fn sentences_respect_abbreviations() {
        let text = "R has vectors, e.g. numbers. Missing values are NA. Is that so? Yes.";
        assert_eq!(sentences(text), ["R has vectors, e.g. numbers.", "Missing values are NA.", "Is that so?", "Yes."]);
    }

    #[test]
    fn sentence_spans_skip_white_space() {
        let text = "  One here.  Two\nthere. ";
        let spans: Vec<&str> = sentence_spans(text).into_iter().map(|span| &text[span]).collect();
        assert_eq!(spans, ["One here.", "Two\nthere."]);
    }

    #[test]
    fn word_spans_find_words() {
        let text = " a  bc\td ";
        let words: Vec<&str> = word_spans(text).into_iter().map(|span| &text[span]).collect();
        assert_eq!(words, ["a", "bc", "d"]);
    }

    #[test]
    fn ligatures_are_expanded() {
        assert_eq!(
            expand_ligatures("e\u{fb03}cient \u{fb01}nd \u{fb02}ow o\u{fb00} \u{fb04}"),
            "efficient find flow off ffl"
        );
        assert!(has_ligature("di\u{fb00}er"));
        assert!(!has_ligature("differ"));
    }

    #[test]
    fn token_estimate_counts_words_and_marks() {
        assert_eq!(estimate_tokens(""), 2);
        assert_eq!(estimate_tokens("Missing values."), 5);
        assert_eq!(estimate_tokens("internationalization"), 5);
    }

    #[test]
    fn excerpt_cuts_at_word() {
        assert_eq!(excerpt("one two three", 9), "one two…");
        assert_eq!(excerpt("short", 9), "short");
    }
}
